"""A collection that fits its RAM budget: Quiver's disk index with a shared sector cache against
Qdrant Edge holding the same vectors in memory (issue 21's in-budget comparison), same run.

    .bench-venvs/qdrant/bin/python benches/cache_vs_qdrant.py --data /work/data/sift-dev-1m \
        [--rows 100000] [--queries 1000] [--threads 2] [--rounds 3] [--cache 1GiB] \
        [--memory-budget-mib 1024]

Needs `cargo build --release --bin quiver --example budget_search -p quiver -p quiver-engine`
and a venv with `qdrant-edge-py` and numpy
(`python3 -m venv .bench-venvs/qdrant && .bench-venvs/qdrant/bin/pip install qdrant-edge-py numpy`).
Steps:
1. The first `--rows` base rows (uint8 SIFT) and `--queries` queries; exact ground truth over
   those rows (numpy).
2. `quiver build` (R 64, L 100, 32 PQ bytes); Qdrant Edge: a shard (Euclid, f32 vectors in
   memory, HNSW m 16, ef_construct 100), points upserted in batches of 10,000, `optimize()`.
3. Rounds, interleaved: `quiver search` with `--threads T` over list sizes, with no sector cache
   and with `--cache` bytes of it (a first pass at the largest list size warms it and is not
   scored), under `/usr/bin/time` for its peak RSS; then Qdrant Edge over hnsw_ef values with
   T Python threads (its search releases the GIL).
4. The engine as its users embed it (`engine/examples/budget_search.rs`): the same rows put in
   10k-row batches into a database under `--memory-budget-mib`, indexed; each round opens it
   under that budget, warms the cache with one pass (not scored), sweeps the list sizes on T
   threads, and reports its peak RSS (`VmHWM`) and what the engine counts (structures, cache).
Prints medians, and QPS at recall@10 0.95 interpolated on each curve, as ratios.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchlib import at_recall, exact_ground_truth, on_threads, read_u8bin, write_u8bin

K = 10


def quiver_sweep(binary, index, qfile, gtfile, list_sizes, threads, cache):
    cmd = [binary, "search", "--index", index, "--queries", qfile, "--ground-truth", gtfile,
           "--threads", str(threads), "--json"]
    if cache:
        # The first (largest) list size warms the cache; its figures are dropped.
        cmd += ["--sector-cache", cache, "--list-sizes",
                ",".join(map(str, [max(list_sizes)] + list_sizes))]
    else:
        cmd += ["--list-sizes", ",".join(map(str, list_sizes))]
    p = subprocess.run(["/usr/bin/time", "-f", "maxrss_kib %M"] + cmd, capture_output=True,
                       text=True, check=True)
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.strip().startswith("{")]
    if cache:
        rows = rows[1:]
    rss = int(re.search(r"maxrss_kib (\d+)", p.stderr).group(1)) / 1024
    return {r["list_size"]: (r["qps"], r["recall_at_k"], r["mean_ios"]) for r in rows}, rss


def engine_ingest(binary, db, bfile, rows, budget_mib):
    p = subprocess.run([binary, "ingest", db, bfile, "--rows", str(rows), "--budget-mib",
                        str(budget_mib)], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def engine_sweep(binary, db, qfile, gtfile, list_sizes, threads, budget_mib):
    p = subprocess.run([binary, "search", db, qfile, gtfile, "--budget-mib", str(budget_mib),
                        "--threads", str(threads), "--list-sizes",
                        ",".join(map(str, list_sizes))],
                       capture_output=True, text=True, check=True)
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.strip().startswith("{")]
    curve = {r["list_size"]: (r["qps"], r["recall_at_k"], r["mean_ios"]) for r in lines[:-1]}
    return curve, lines[-1]


def qdrant_build(path, base):
    import qdrant_edge as q
    cfg = q.EdgeConfig(vectors=q.EdgeVectorParams(size=base.shape[1], distance=q.Distance.Euclid),
                       hnsw_config=q.HnswIndexConfig(m=16, ef_construct=100,
                                                     full_scan_threshold=10_000))
    shard = q.EdgeShard.create(path, cfg)
    f = base.astype(np.float32)
    for start in range(0, len(f), 10_000):
        pts = [q.Point(int(i), f[i].tolist()) for i in range(start, min(start + 10_000, len(f)))]
        shard.update(q.UpdateOperation.upsert_points(pts))
    shard.optimize()
    return shard


def qdrant_sweep(shard, queries, gt, efs, threads):
    import qdrant_edge as q
    qf = [x.astype(np.float32).tolist() for x in queries]
    out = {}
    for ef in efs:
        reqs = [q.SearchRequest(query=q.Query.Nearest(v), limit=K,
                                params=q.SearchParams(hnsw_ef=ef)) for v in qf]

        def run(part):
            return {i: [p.id for p in shard.search(reqs[i])]
                    for i in range(part, len(reqs), threads)}

        res, secs = on_threads(run, threads)
        hits = sum(len(set(res[i]) & set(gt[i][:K].tolist())) for i in range(len(qf)))
        out[ef] = (len(qf) / secs, hits / (K * len(qf)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", default="1GiB")
    ap.add_argument("--list-sizes", default="10,15,20,30,50,75")
    ap.add_argument("--efs", default="16,24,32,48,64,96,128")
    ap.add_argument("--engine", default="target/release/examples/budget_search")
    ap.add_argument("--memory-budget-mib", type=int, default=1024)
    args = ap.parse_args()
    list_sizes = [int(x) for x in args.list_sizes.split(",")]
    efs = [int(x) for x in args.efs.split(",")]
    base = read_u8bin(os.path.join(args.data, "base.u8bin"), args.rows)
    queries = read_u8bin(os.path.join(args.data, "query.u8bin"), args.queries)
    gt = exact_ground_truth(base, queries, 100)
    work = tempfile.mkdtemp(prefix="quiver-cache-vs-qdrant-")
    bfile, qfile, gtfile = (os.path.join(work, n) for n in ("base.u8bin", "q.u8bin", "gt.ivecs"))
    write_u8bin(bfile, base)
    write_u8bin(qfile, queries)
    np.hstack([np.full((len(gt), 1), gt.shape[1], np.int32), gt]).tofile(gtfile)

    index = os.path.join(work, "index")
    t0 = time.perf_counter()
    subprocess.run([args.quiver, "build", "--input", bfile, "--metric", "l2", "--out", index],
                   check=True, capture_output=True)
    t_quiver = time.perf_counter() - t0
    t0 = time.perf_counter()
    shard = qdrant_build(os.path.join(work, "qdrant"), base)
    t_qdrant = time.perf_counter() - t0
    db = os.path.join(work, "db")
    ingest = engine_ingest(args.engine, db, bfile, args.rows, args.memory_budget_mib)
    print(f"build: quiver {t_quiver:.0f} s, qdrant edge {t_qdrant:.0f} s, engine ingest "
          f"{ingest}", file=sys.stderr)

    cold, warm, qd, rss_cold, rss_warm, eng, eng_mem = [], [], [], [], [], [], []
    for rnd in range(args.rounds):
        c, rc = quiver_sweep(args.quiver, index, qfile, gtfile, list_sizes, args.threads, None)
        w, rw = quiver_sweep(args.quiver, index, qfile, gtfile, list_sizes, args.threads,
                             args.cache)
        e, em = engine_sweep(args.engine, db, qfile, gtfile, list_sizes, args.threads,
                             args.memory_budget_mib)
        d = qdrant_sweep(shard, queries, gt, efs, args.threads)
        cold.append(c), warm.append(w), qd.append(d), rss_cold.append(rc), rss_warm.append(rw)
        eng.append(e), eng_mem.append(em)
        print(f"round {rnd}: " + ", ".join(f"L{ls} {c[ls][0]:.0f}/{w[ls][0]:.0f}"
                                           for ls in list_sizes)
              + " | engine " + ", ".join(f"L{ls} {e[ls][0]:.0f}" for ls in list_sizes)
              + f" {em}"
              + " | " + ", ".join(f"ef{ef} {d[ef][0]:.0f}" for ef in efs), file=sys.stderr)
    shard.close()

    med = lambda runs, key, i: statistics.median(r[key][i] for r in runs)  # noqa: E731
    print(f"rows={len(base)} queries={len(queries)} threads={args.threads} k={K} "
          f"rounds={args.rounds} (medians); peak RSS of quiver search: no cache "
          f"{statistics.median(rss_cold):.0f} MiB, {args.cache} cache "
          f"{statistics.median(rss_warm):.0f} MiB")
    print("| L | quiver, no cache: QPS | recall | mean IOs | quiver, cache: QPS | recall "
          "| mean IOs |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for ls in list_sizes:
        print(f"| {ls} | {med(cold, ls, 0):.0f} | {med(cold, ls, 1):.3f} | "
              f"{med(cold, ls, 2):.1f} | {med(warm, ls, 0):.0f} | {med(warm, ls, 1):.3f} | "
              f"{med(warm, ls, 2):.1f} |")
    print(f"\nengine under a {args.memory_budget_mib} MiB budget: ingest {ingest}; peak RSS of "
          f"the searching process {statistics.median(m['vm_hwm_kib'] for m in eng_mem) / 1024:.0f}"
          f" MiB; structures {eng_mem[-1]['structures'] / 2**20:.1f} MiB, sector cache "
          f"{eng_mem[-1]['sector_cache'] / 2**20:.1f} of "
          f"{eng_mem[-1]['sector_cache_capacity'] / 2**20:.1f} MiB")
    print("| L | engine QPS | recall | mean IOs |")
    print("|---:|---:|---:|---:|")
    for ls in list_sizes:
        print(f"| {ls} | {med(eng, ls, 0):.0f} | {med(eng, ls, 1):.3f} | {med(eng, ls, 2):.1f} |")
    print("\n| hnsw_ef | Qdrant Edge QPS | recall |")
    print("|---:|---:|---:|")
    for ef in efs:
        print(f"| {ef} | {med(qd, ef, 0):.0f} | {med(qd, ef, 1):.3f} |")
    c95 = at_recall([(med(cold, ls, 0), med(cold, ls, 1)) for ls in list_sizes])
    w95 = at_recall([(med(warm, ls, 0), med(warm, ls, 1)) for ls in list_sizes])
    q95 = at_recall([(med(qd, ef, 0), med(qd, ef, 1)) for ef in efs])
    e95 = at_recall([(med(eng, ls, 0), med(eng, ls, 1)) for ls in list_sizes])
    print(f"\nat recall 0.95: quiver no cache {c95:.0f} QPS, with cache {w95:.0f} QPS "
          f"({w95 / c95:.2f}x), engine under its budget {e95:.0f} QPS, qdrant edge {q95:.0f} "
          f"QPS; over qdrant: no cache {c95 / q95:.2f}, cache {w95 / q95:.2f}, engine "
          f"{e95 / q95:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
