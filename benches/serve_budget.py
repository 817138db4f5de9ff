"""`quiver serve --memory-budget` ingesting several times its budget over Flight (issue 21).

    target/pyenv/bin/python benches/serve_budget.py --memory-budget-mib 24 \
        [--data /work/data/sift-dev-1m --rows 200000 --f32] | [--dim 256 --rows 100000] \
        [--batch-rows 2000] [--cgroup-mib 0] [--quiver target/release/quiver]

Starts the server on a fresh directory (optionally inside a memory cgroup with a hard limit,
v2 or v1, as `scripts/capped.py` makes it),
puts the rows with pyarrow in `--batch-rows` batches, waits for indexing, measures recall@10
and QPS (2 client threads) at L = 50 and 100 for 200 queries against numpy brute force, and prints one JSON line: rows,
raw MB and its ratio to the budget, durable ingest rows/s, seconds to indexed, recall, the
server's `VmHWM` and `VmRSS`, and `stats().resident_bytes` per row. With `--data`, the base rows
of a `.u8bin` set (`--f32` widens them to float, four times the bytes); without, seeded
clustered synthetic float vectors of `--dim` dimensions. Exits non-zero if the server dies (an
OOM kill under the cgroup).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import read_u8bin  # noqa: E402
from engine_search import action, flight_sweep, put  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from capped import Cgroup  # noqa: E402

K = 10


def clustered(rows, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (max(16, rows // 500), dim)).astype(np.float32)
    pick = rng.integers(0, len(centres), rows)
    return centres[pick] + rng.normal(0, 1, (rows, dim)).astype(np.float32)


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (x.split(":", 1) for x in f if x.startswith("Vm"))}


def trace_rss(pid, path, t0, stop):
    with open(path, "w") as out:
        while not stop.is_set():
            try:
                with open(f"/proc/{pid}/status") as f:
                    st = {k: v for k, v in (x.split(":", 1) for x in f)}
            except OSError:
                return
            fields = [kib(st[k]) for k in ("VmRSS", "RssAnon", "RssFile")]
            out.write(f"{time.perf_counter() - t0:.2f} {fields[0]} {fields[1]} {fields[2]}\n")
            out.flush()
            time.sleep(0.05)


def kib(text):
    return int(text.split()[0])


def truth(base, queries):
    """The K nearest base rows of each query, nearest first (numpy brute force, L2)."""
    out = []
    for q in queries:
        d = ((base.astype(np.float32) - q.astype(np.float32)) ** 2).sum(axis=1)
        near = np.argpartition(d, K)[:K]
        out.append(near[np.argsort(d[near])].tolist())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--memory-budget-mib", type=int, required=True)
    ap.add_argument("--data")
    ap.add_argument("--f32", action="store_true")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--batch-rows", type=int, default=2000)
    ap.add_argument("--cgroup-mib", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the data directory and server log")
    ap.add_argument("--extra", default="", help="more `quiver serve` flags, space separated")
    ap.add_argument("--rss-trace", help="write the server's VmRSS, RssAnon and RssFile (KiB) every "
                    "50 ms to this file, one 'seconds rss anon file' line each, to find what peaks")
    args = ap.parse_args()
    if args.data:
        base = read_u8bin(os.path.join(args.data, "base.u8bin"), args.rows)
        if args.f32:
            base = base.astype(np.float32)
    else:
        base = clustered(args.rows, args.dim, 7)
    if args.data:
        queries = read_u8bin(os.path.join(args.data, "query.u8bin"), args.queries).astype(base.dtype)
    else:
        pick = np.random.default_rng(11).choice(len(base), args.queries, replace=False)
        noise = np.random.default_rng(12).normal(0, 2, (args.queries, base.shape[1]))
        queries = (base[pick] + noise).astype(base.dtype)
    stop_trace = threading.Event()
    work = tempfile.mkdtemp(prefix="quiver-serve-budget-")
    cmd = [args.quiver, "serve", "--data", os.path.join(work, "db"), "--listen", "127.0.0.1:0",
           "--memory-budget", f"{args.memory_budget_mib}MiB"] + args.extra.split()
    cgroup = None
    if args.cgroup_mib:
        # A hard cap in a fresh memory cgroup, v2 or v1, swap disallowed (scripts/capped.py).
        cgroup = Cgroup(args.cgroup_mib << 20)
        cmd = ["sh", "-c", f'echo $$ > {cgroup.procs_file()} && exec "$@"', "sh"] + cmd
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(os.path.join(work, "server.log"), "w"), text=True)
    try:
        line = p.stdout.readline().strip()
        assert line.startswith("listening on "), line
        uri = line.split("listening on ", 1)[1]
        t0 = time.perf_counter()
        if args.rss_trace:
            threading.Thread(target=trace_rss, args=(p.pid, args.rss_trace, t0, stop_trace),
                             daemon=True).start()
        put(uri, "v", base, args.batch_rows)
        ingest_s = time.perf_counter() - t0
        hwm_after_ingest = kib(proc_status(p.pid)["VmHWM"])
        action(uri, "wait-for-indexing", {"dataset": "v"})
        indexed_s = time.perf_counter() - t0
        st = action(uri, "stats", {"name": "v"})[0]
        # Recall and QPS at L = 50 and 100 on 2 client threads (`engine_search.flight_sweep`).
        sweep = flight_sweep(uri, "v", queries, truth(base, queries), [50, 100], 2)
        rec = {ls: round(r[1], 4) for ls, r in sweep.items()}
        qps = {ls: round(r[0]) for ls, r in sweep.items()}
        p99 = {ls: round(r[3], 2) for ls, r in sweep.items()}
        proc = proc_status(p.pid)
        rows = st["rows"]
        r = st["resident_bytes"]
        raw = base.nbytes
        print(json.dumps({
            "rows": rows, "dim": base.shape[1], "dtype": str(base.dtype),
            "raw_mb": round(raw / 1e6, 1),
            "budget_mib": args.memory_budget_mib,
            "raw_over_budget": round(raw / (args.memory_budget_mib << 20), 2),
            "cgroup_mib": args.cgroup_mib,
            "ingest_rows_per_s": round(rows / ingest_s), "ingest_mb_per_s": round(raw / 1e6 / ingest_s, 1),
            "indexed_after_s": round(indexed_s, 1),
            "segments": st["segments"], "indexed_segments": st["indexed_segments"],
            "recall_at_10": rec, "qps_2_threads": qps, "p99_ms": p99,
            "VmHWM_mib": round(kib(proc["VmHWM"]) / 1024, 1),
            "VmHWM_after_ingest_mib": round(hwm_after_ingest / 1024, 1),
            "VmRSS_mib": round(kib(proc["VmRSS"]) / 1024, 1),
            "resident_bytes_per_row": {k: round(v / rows, 1) for k, v in r.items()},
            "sector_cache": st.get("sector_cache"),
            "cgroup_peak_mib": round(cgroup.peak() / 2**20, 1) if cgroup and cgroup.peak() else None,
            "oom_kills": cgroup.oom_kills() if cgroup else None,
        }))
    finally:
        stop_trace.set()
        p.terminate()
        code = p.wait()
        if code in (0, -15) and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"server log kept in {work}/server.log", file=sys.stderr)
        if cgroup:
            if code not in (0, -15):
                print(f"cgroup: peak {cgroup.peak()} bytes, OOM kills {cgroup.oom_kills()}",
                      file=sys.stderr)
            cgroup.remove()  # the kernel empties the group shortly after the exit
        if code not in (0, -15):
            print(f"server exited with {code}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
