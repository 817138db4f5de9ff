#!/usr/bin/env python3
"""Builds and searches a DiskANN disk index with the same parameters as Quiver, printing one JSON
object per list size (the same fields as `quiver search --json`).

Run inside a venv holding exactly one of the two DiskANN packages (they share the module name
`diskannpy`): `diskannpy==0.7.0` (the C++ DiskANN) or `diskannpy-rust` (the Rust rewrite).

    python peer.py --impl cpp|rust --base B.u8bin --queries Q.u8bin --gt GT.ivecs --out DIR \
        --metric l2 --R 64 --L 100 --alpha 1.2 --pq-bytes 32 --threads 2 --beam-width 4 \
        --list-sizes 10,20,50,100 [--cache-nodes 0] [--phase build|search|both] [--build-memory-gb 16]
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import diskannpy as dap


def read_bin(path):
    n, d = np.fromfile(path, dtype=np.uint32, count=2)
    dtype = {".u8bin": np.uint8, ".i8bin": np.int8, ".fbin": np.float32}[os.path.splitext(path)[1]]
    return np.fromfile(path, dtype=dtype, offset=8).reshape(int(n), int(d)), dtype


def read_ivecs(path):
    raw = np.fromfile(path, dtype=np.int32)
    k = raw[0]
    return raw.reshape(-1, k + 1)[:, 1:]


def main():
    ap = argparse.ArgumentParser()
    for a, t in [("--impl", str), ("--base", str), ("--queries", str), ("--gt", str), ("--out", str),
                 ("--metric", str), ("--R", int), ("--L", int), ("--alpha", float), ("--pq-bytes", int),
                 ("--threads", int), ("--beam-width", int), ("--list-sizes", str), ("--k", int),
                 ("--cache-nodes", int), ("--phase", str), ("--build-memory-gb", float)]:
        ap.add_argument(a, type=t)
    ap.set_defaults(k=10, cache_nodes=0, phase="both", alpha=1.2, build_memory_gb=16.0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    n, dim = (int(x) for x in np.fromfile(args.base, dtype=np.uint32, count=2))
    dtype = read_bin(args.queries)[1]

    if args.phase in ("build", "both"):
        t = time.time()
        if args.impl == "cpp":
            # diskannpy 0.7 sizes the in-RAM PQ from a search-memory budget: chunks = floor(budget / n).
            budget_gb = (args.pq_bytes + 0.5) * n / 2**30
            dap.build_disk_index(data=args.base, distance_metric=args.metric, index_directory=args.out,
                                 complexity=args.L, graph_degree=args.R, search_memory_maximum=budget_gb,
                                 build_memory_maximum=args.build_memory_gb, num_threads=args.threads, pq_disk_bytes=0,
                                 vector_dtype=dtype)
        else:
            dap.build_disk_index(data=args.base, distance_metric=args.metric, index_directory=args.out,
                                 complexity=args.L, graph_degree=args.R, build_memory_maximum=args.build_memory_gb,
                                 num_threads=args.threads, alpha=args.alpha, num_of_pq_chunks=args.pq_bytes,
                                 vector_dtype=dtype)
        print(json.dumps({"impl": args.impl, "build_seconds": round(time.time() - t, 1),
                          "build_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}),
              flush=True)

    if args.phase in ("search", "both"):
        queries, _ = read_bin(args.queries)
        gt = read_ivecs(args.gt)[:, : args.k]
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if args.impl == "cpp":
            index = dap.StaticDiskIndex(index_directory=args.out, num_threads=args.threads,
                                        num_nodes_to_cache=args.cache_nodes)
        else:
            index = dap.StaticDiskIndex(index_directory=args.out, num_threads=args.threads,
                                        beam_width=args.beam_width, num_nodes_to_cache=args.cache_nodes)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        for L in [int(x) for x in args.list_sizes.split(",")]:
            t = time.time()
            if args.impl == "cpp":
                res = index.batch_search(queries, k_neighbors=args.k, complexity=L,
                                         num_threads=args.threads, beam_width=args.beam_width)
                ids, stats = res[0], {}
            else:
                res = index.batch_search(queries, k_neighbors=args.k, complexity=L, num_threads=args.threads)
                ids, stats = res.identifiers, dict(res.search_stats or {})
            wall = time.time() - t
            hits = sum(len(set(ids[i][: args.k].tolist()) & set(gt[i].tolist())) for i in range(len(queries)))
            out = {"impl": args.impl, "list_size": L, "k": args.k,
                   "recall_at_k": round(hits / (len(queries) * args.k), 4),
                   "qps": round(len(queries) / wall, 1),
                   "ram_bytes_after_load": rss1 - rss0 if rss1 > rss0 else None,
                   "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
            # diskannpy-rust reports per-batch means; keep the comparable ones under Quiver's names.
            for theirs, ours in (("mean_ios", "mean_ios"), ("mean_hops", "mean_hops"),
                                 ("mean_latency", "mean_us"), ("mean_comps", "mean_distances")):
                if theirs in stats:
                    out[ours] = stats[theirs]
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
