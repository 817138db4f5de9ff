"""LanceDB (embedded) doing the out-of-core headline's job (issue 21), as its users would.

    scripts/capped.py --limit 128MiB --json -- VENV/bin/python benches/lancedb_peer.py \
        --data /work/data/sift-dev-1m --rows 1000000 --batch-rows 10000

(VENV holds `lancedb`, `pyarrow` and `numpy` from PyPI; run without `scripts/capped.py` for the
uncapped comparison.) The rows of `base.u8bin` are read a batch at a time through a memory map,
widened to float32 (the headline's 512 MB for 1M rows) and added to a LanceDB table one Arrow
batch per `add` (each a commit, as a Flight DoPut batch is acknowledged durable); then an IVF-PQ
index is built (32 sub-vectors, 32 bytes a row as Quiver's codes; √n partitions), and the first
`--queries` queries are searched on 2 threads at several `nprobes` (refine factor 1 and 4),
scored against the set's exact ground truth. Prints one JSON line: seconds to ingest and to
index, rows/s, the process's own peak (`ru_maxrss`), and recall@10 and QPS per setting.
"""
import argparse
import concurrent.futures as cf
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import lancedb
import numpy as np
import pyarrow as pa

K = 10


def u8bin(path):
    n, dim = np.fromfile(path, dtype=np.int32, count=2)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=8, shape=(int(n), int(dim)))


def batches(base, rows, batch_rows):
    dim = base.shape[1]
    for start in range(0, rows, batch_rows):
        chunk = np.asarray(base[start:min(rows, start + batch_rows)], dtype=np.float32)
        ids = pa.array(np.arange(start, start + len(chunk), dtype=np.uint64))
        vec = pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), dim)
        yield pa.Table.from_arrays([ids, vec], names=["id", "vector"])


def ivecs(path, count):
    raw = np.fromfile(path, dtype=np.int32)
    width = raw[0] + 1
    return raw.reshape(-1, width)[:count, 1:]


def sweep(table, queries, truth, nprobes, refine, threads=2):
    def one(q):
        got = (table.search(q).nprobes(nprobes).refine_factor(refine).limit(K)
               .select(["id"]).to_arrow())
        return got.column("id").to_pylist()

    one(queries[0])  # the first search opens the index
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as ex:
        results = list(ex.map(one, queries))
    secs = time.perf_counter() - t0
    hits = sum(len(set(r) & set(t[:K].tolist())) for r, t in zip(results, truth))
    return {"nprobes": nprobes, "refine_factor": refine, "qps": round(len(queries) / secs),
            "recall_at_10": round(hits / (K * len(queries)), 4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-rows", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--partitions", type=int, default=0, help="IVF partitions (0: sqrt(rows))")
    args = ap.parse_args()
    base = u8bin(os.path.join(args.data, "base.u8bin"))
    rows = min(args.rows, len(base))
    queries = np.asarray(u8bin(os.path.join(args.data, "query.u8bin"))[:args.queries],
                         dtype=np.float32)
    if rows == len(base):
        truth = ivecs(os.path.join(args.data, "groundtruth.l2.ivecs"), args.queries)
    else:  # the set's truth is for every row: recompute over the first `rows`
        b = np.asarray(base[:rows], dtype=np.float32)
        truth = np.stack([np.argsort(((b - q) ** 2).sum(axis=1))[:K] for q in queries])
        del b
    work = tempfile.mkdtemp(prefix="lancedb-peer-")
    try:
        db = lancedb.connect(os.path.join(work, "db"))
        t0 = time.perf_counter()
        table = None
        for t in batches(base, rows, args.batch_rows):
            if table is None:
                table = db.create_table("v", data=t)
            else:
                table.add(t)
            done = table.count_rows()
            if done % 100_000 == 0:  # progress, for a run the cap kills
                print(f"{time.perf_counter() - t0:.1f} s: {done} rows added", file=sys.stderr,
                      flush=True)
        ingest_s = time.perf_counter() - t0
        partitions = args.partitions or max(1, int(np.sqrt(rows)))
        t1 = time.perf_counter()
        table.create_index(metric="l2", vector_column_name="vector", index_type="IVF_PQ",
                           num_partitions=partitions, num_sub_vectors=32)
        index_s = time.perf_counter() - t1
        print(f"index built in {index_s:.1f} s", file=sys.stderr, flush=True)
        results = [sweep(table, queries, truth, p, r)
                   for r in (1, 4) for p in (10, 20, 40, 80)]
        print(json.dumps({
            "peer": f"lancedb {lancedb.__version__}", "rows": table.count_rows(),
            "batch_rows": args.batch_rows, "partitions": partitions,
            "ingest_s": round(ingest_s, 1), "ingest_rows_per_s": round(rows / ingest_s),
            "index_s": round(index_s, 1), "ingest_to_indexed_s": round(ingest_s + index_s, 1),
            "maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "searches": results,
        }), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
