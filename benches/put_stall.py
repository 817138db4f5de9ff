"""Acknowledgement latency of puts while another collection's segments are indexed (issue 26).

    python benches/put_stall.py --quiver target/release/quiver \
        --base /work/data/sift-dev-1m/base.u8bin --rows 600000

Starts `quiver serve` on a fresh directory, puts `--rows` 128-d f32 rows into collection `a`
(10k-row batches, each acknowledgement awaited) and flushes, which starts `a`'s index builds;
then puts as many rows into `b` the same way while they run, timing each batch from send to
acknowledgement. Prints `a`'s put+flush time and `b`'s batch latencies (p50, p99, max, and any
over 200 ms). Before puts stopped waiting for index builds, a put waited 158 s here.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow.flight as fl

sys.path.insert(0, os.path.dirname(__file__))
import flight_bench as fb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--base", required=True)
    ap.add_argument("--rows", type=int, default=600_000)
    args = ap.parse_args()
    vecs = fb.load_base(args.base, args.rows)
    work = tempfile.mkdtemp(prefix="quiver-put-stall-")
    p, uri = fb.start_quiver(args.quiver, os.path.join(work, "db"), [])
    try:
        c = fl.FlightClient(uri)
        t0 = time.perf_counter()
        fb.put(uri, "a", fb.table_of(vecs), 1, 10_000, True)
        list(c.do_action(fl.Action("flush", b"")))
        print(f"a: put and flush of {len(vecs)} rows in {time.perf_counter() - t0:.1f} s")
        tb = fb.table_of(vecs, start=10**9)
        w, r = c.do_put(fl.FlightDescriptor.for_path("b"), tb.schema)
        lat = []
        t1 = time.perf_counter()
        for b in tb.to_batches(max_chunksize=10_000):
            s = time.perf_counter()
            w.write_batch(b)
            r.read()
            lat.append((time.perf_counter() - s) * 1000)
        w.close()
        lat = np.array(lat)
        print(f"b: {len(lat)} batches in {time.perf_counter() - t1:.1f} s; acknowledgement ms "
              f"p50 {np.median(lat):.0f} p99 {np.percentile(lat, 99):.0f} max {lat.max():.0f}")
        print("over 200 ms:", [round(x) for x in lat if x > 200])
    finally:
        fb.stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
