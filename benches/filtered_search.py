"""Filtered search through `quiver serve` at several selectivities (issue 22), two binaries side
by side on the same data directory.

    target/pyenv/bin/python benches/filtered_search.py --data /work/data/sift-dev-1m \
        --rows 200000 --queries 200 --quiver target/release/quiver --baseline OLD_BINARY \
        [--list-sizes 50,100] [--rounds 2] [--threads 2] [--sector-cache-mb 0]

Puts the first `--rows` base rows of a `.u8bin` set over Flight with two attributes: `img`, the
row's source image id (`base_img_ids.npy`: rows of one image are alike, so a filter on images
is correlated with the vectors, as labels are in practice), and `rnd`, uniform in 0..999 and
unrelated to them. Waits for indexing, stops the server, then for `--rounds` rounds starts each
binary in turn on the same directory and runs every query unfiltered and with each filter
(`rnd < t` and `img < t`, for 0.1%, 1%, 10% and 50% of the rows) at each list size, 2 client threads. Recall@10
is against numpy brute force over the rows that pass. Prints one JSON line per (round, binary,
filter, L): QPS, recall, mean sector reads per query and the plan counters; then a table of
medians over the rounds.
"""
import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import read_u8bin  # noqa: E402
from engine_search import action  # noqa: E402

K = 10
FRACTIONS = (0.001, 0.01, 0.1, 0.5)


def start(binary, data, cache_mb=None):
    cache = [] if cache_mb is None else ["--sector-cache-mb", str(cache_mb)]
    p = subprocess.Popen([binary, "serve", "--data", data, "--listen", "127.0.0.1:0"] + cache,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline().strip()
    assert line.startswith("listening on "), line
    return p, line.split("listening on ", 1)[1]


def stop(p):
    p.terminate()
    p.wait()


def put(uri, base, img, rnd, batch_rows=10_000):
    c = fl.FlightClient(uri)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), base.shape[1])
    t = pa.table({"id": pa.array(np.arange(len(base), dtype=np.uint64)), "vector": vec,
                  "img": pa.array(img.astype(np.int64)), "rnd": pa.array(rnd.astype(np.int64))})
    w, r = c.do_put(fl.FlightDescriptor.for_path("f"), t.schema)
    for b in t.to_batches(max_chunksize=batch_rows):
        w.write_batch(b)
        r.read()
    w.done_writing()
    w.close()


def filters(img, rnd):
    """(name, column, threshold, mask of passing rows) for each fraction and column."""
    out = [("none (100%)", None, None, np.ones(len(img), dtype=bool))]
    for f in FRACTIONS:
        t = int(round(f * 1000))
        out.append((f"rnd<{t} ({f:.1%})", "rnd", t, rnd < t))
        ti = int(np.sort(img)[int(f * len(img))])
        out.append((f"img<{ti} ({(img < ti).mean():.1%})", "img", ti, img < ti))
    return out


def truth(base, queries, mask):
    rows = np.flatnonzero(mask)
    sub = base[rows].astype(np.float32)
    gt = []
    for q in queries.astype(np.float32):
        d = ((sub - q) ** 2).sum(axis=1)
        take = min(K, len(rows))
        gt.append(set(rows[np.argpartition(d, take - 1)[:take]].tolist()) if take else set())
    return gt


def sweep(uri, queries, column, threshold, gt, list_size, threads):
    filters = [{"field": column, "op": "<", "value": threshold}] if column else []
    tickets = [json.dumps({"search": {
        "dataset": "f", "vector": q.tolist(), "k": K, "list_size": list_size,
        "filters": filters}}).encode() for q in queries]
    clients = [fl.FlightClient(uri) for _ in range(threads)]
    before = action(uri, "stats", {"name": "f"})[0]

    def run(part):
        got = {}
        for i in range(part, len(tickets), threads):
            got[i] = clients[part].do_get(fl.Ticket(tickets[i])).read_all().column("id").to_pylist()
        return got

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as ex:
        parts = list(ex.map(run, range(threads)))
    secs = time.perf_counter() - t0
    got = {}
    for p in parts:
        got.update(p)
    after = action(uri, "stats", {"name": "f"})[0]
    hits = sum(len(gt[i] & set(got[i])) for i in range(len(queries)))
    wanted = sum(len(g) for g in gt)
    searches = max(after["searches"] - before["searches"], 1)
    return {
        "qps": round(len(queries) / secs, 1),
        "recall": round(hits / max(wanted, 1), 4),
        "reads": round((after["index_reads"] - before["index_reads"]) / searches, 1),
        "walks": after.get("filtered_walks", 0) - before.get("filtered_walks", 0),
        "ranked": after.get("filtered_ranked", 0) - before.get("filtered_ranked", 0),
        "scans": after.get("filtered_scans", 0) - before.get("filtered_scans", 0),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--baseline", help="a second binary, run in turn on the same directory")
    ap.add_argument("--list-sizes", default="50,100")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sector-cache-mb", type=int, default=None,
                    help="the servers' sector cache (default: quiver serve's); 0 reads every "
                         "node from disk, so `reads` counts every sector a query needs")
    args = ap.parse_args()
    base = read_u8bin(os.path.join(args.data, "base.u8bin"), args.rows)
    queries = read_u8bin(os.path.join(args.data, "query.u8bin"), args.queries)
    img = np.load(os.path.join(args.data, "base_img_ids.npy"))[: args.rows]
    rnd = np.random.default_rng(22).integers(0, 1000, args.rows)
    work = tempfile.mkdtemp(prefix="quiver-filtered-")
    data = os.path.join(work, "db")
    try:
        p, uri = start(args.quiver, data)
        put(uri, base, img, rnd)
        action(uri, "wait-for-indexing", {"dataset": "f"})
        st = action(uri, "stats", {"name": "f"})[0]
        stop(p)
        print(json.dumps({"rows": st["rows"], "segments": st["segments"],
                          "indexed_segments": st["indexed_segments"]}), flush=True)
        cases = [(n, col, t, truth(base, queries, m)) for n, col, t, m in filters(img, rnd)]
        binaries = [("quiver", args.quiver)] + ([("baseline", args.baseline)] if args.baseline else [])
        results = {}
        for rnd_i in range(args.rounds):
            for label, binary in binaries:
                p, uri = start(binary, data, args.sector_cache_mb)
                try:
                    for name, col, t, gt in cases:
                        for ls in (int(x) for x in args.list_sizes.split(",")):
                            r = sweep(uri, queries, col, t, gt, ls, args.threads)
                            results.setdefault((label, name, ls), []).append(r)
                            print(json.dumps({"round": rnd_i, "binary": label, "filter": name,
                                              "L": ls, **r}), flush=True)
                finally:
                    stop(p)
        print("\n| filter | L | " + " | ".join(
            f"{b} recall / QPS / reads / walks:ranked:scans" for b, _ in binaries) + " |")
        print("|---|---:|" + "---|" * len(binaries))
        for name, _, _, _ in cases:
            for ls in (int(x) for x in args.list_sizes.split(",")):
                cells = []
                for b, _ in binaries:
                    rs = results[(b, name, ls)]
                    med = {k: float(np.median([r[k] for r in rs])) for k in ("qps", "recall", "reads")}
                    cells.append(f"{med['recall']:.4f} / {med['qps']:.0f} / {med['reads']:.1f} / "
                                 f"{rs[0]['walks']}:{rs[0]['ranked']}:{rs[0]['scans']}")
                print(f"| {name} | {ls} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
