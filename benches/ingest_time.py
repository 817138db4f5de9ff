"""Time an ingest to its settled state: `sift-dev-1m`'s first ROWS rows, with the `img` and `rnd`
attributes of `filtered_search.py`, put over Flight into a fresh `quiver serve` in 10k-row
batches (each acknowledgement awaited), then `wait-for-indexing` (index builds and merges).
Prints the put time, the time until indexing is done, and the segments it ended with.

    .bench-venvs/qdrant/bin/python benches/ingest_time.py --quiver target/release/quiver \
        --data /work/data/sift-dev-1m [--rows 1000000] [--workdir DIR]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import read_u8bin  # noqa: E402
import filtered_search as fs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    base = read_u8bin(os.path.join(args.data, "base.u8bin"), args.rows)
    attrs, _ = fs.sift_cases(args.data, len(base), 10)
    work = args.workdir or tempfile.mkdtemp(prefix="quiver-ingest-")
    try:
        data = os.path.join(work, "db")
        shutil.rmtree(data, ignore_errors=True)
        p, uri = fs.start(args.quiver, data)
        try:
            t0 = time.perf_counter()
            fs.put(uri, base, attrs)
            t_put = time.perf_counter() - t0
            fs.action(uri, "wait-for-indexing", {"dataset": "f"})
            t_all = time.perf_counter() - t0
            st = fs.action(uri, "stats", {"name": "f"})[0]
        finally:
            fs.stop(p)
        print(f"put {t_put:.0f} s, indexed after {t_all:.0f} s; segments {st['segments']}, "
              f"indexed {st['indexed_segments']}, rows {st['rows']}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
