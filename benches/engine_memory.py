"""What `quiver serve` holds per row after ingest and indexing, and at its peak (issue 21).

    target/pyenv/bin/python benches/engine_memory.py --data /work/data/sift-dev-1m \
        [--rows 200000] [--index-build-budget-mb 0] [--sector-cache-mb 0] [--string-ids]
        [--id-bytes 16]

Build first: `cargo build --release --bin quiver`. Starts the server on a fresh directory, puts
the first `--rows` base rows (uint8, u64 ids) with pyarrow in 10,000-row batches, waits for
indexing, then prints one JSON line: the time to indexed, `stats().resident_bytes` (total and
per row, by structure) and the server's `VmRSS` / `VmHWM` from `/proc/PID/status`.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pyarrow as pa

from benchlib import read_u8bin
from engine_search import action, put


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--index-build-budget-mb", type=int, default=0)
    ap.add_argument("--sector-cache-mb", type=int, default=0)
    ap.add_argument("--string-ids", action="store_true",
                    help='string ids ("doc-", padding, and 12 digits) instead of u64')
    ap.add_argument("--id-bytes", type=int, default=16,
                    help="bytes of each string id (at least 16)")
    args = ap.parse_args()
    base = read_u8bin(os.path.join(args.data, "base.u8bin"), args.rows)
    work = tempfile.mkdtemp(prefix="quiver-engine-memory-")
    p = subprocess.Popen([args.quiver, "serve", "--data", os.path.join(work, "db"),
                          "--listen", "127.0.0.1:0",
                          "--sector-cache-mb", str(args.sector_cache_mb),
                          "--index-build-budget-mb", str(args.index_build_budget_mb)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = p.stdout.readline().strip()
        assert line.startswith("listening on "), line
        uri = line.split("listening on ", 1)[1]
        t0 = time.perf_counter()
        ids = None
        if args.string_ids:
            pad = "x" * max(0, args.id_bytes - 16)
            ids = pa.array([f"doc-{pad}{i:012d}" for i in range(len(base))])
        put(uri, "sift", base, 10_000, ids)
        action(uri, "wait-for-indexing", {"dataset": "sift"})
        secs = time.perf_counter() - t0
        st = action(uri, "stats", {"name": "sift"})[0]
        with open(f"/proc/{p.pid}/status") as f:
            proc = {k: v.strip() for k, v in (x.split(":", 1) for x in f if x.startswith("Vm"))}
        r = st["resident_bytes"]
        print(json.dumps({
            "rows": st["rows"], "segments": st["segments"], "indexed_after_s": round(secs),
            "index_build_budget_mb": args.index_build_budget_mb,
            "ids": f"string of {max(16, args.id_bytes)} bytes" if args.string_ids else "u64",
            "resident_bytes": r,
            "resident_bytes_per_row": {k: round(v / st["rows"], 1) for k, v in r.items()},
            "VmRSS": proc["VmRSS"], "VmHWM": proc["VmHWM"],
        }))
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
