"""Filtered search through `quiver serve` at several selectivities (issue 22): two binaries side
by side on the same data directory, the engine in-process, and Qdrant Edge as the peer.

    .bench-venvs/qdrant/bin/python benches/filtered_search.py --data /work/data/sift-dev-1m \
        --rows 200000 --queries 200 --quiver target/release/quiver [--baseline OLD_BINARY] \
        [--dataset sift|fashion] [--list-sizes 50,100] [--rounds 2] [--threads 2] \
        [--sector-cache-mb 0] [--engine target/release/examples/filtered_dir] \
        [--engine-baseline OLD_FILTERED_DIR] [--warm] [--no-flight] \
        [--qdrant --efs 16,32,64,128] [--keep DIR] [--label-graphs grp,band] \
        [--engine-no-label-graphs]

Puts the first `--rows` base rows of a `.u8bin` set over Flight with integer attributes, waits
for indexing and stops the server. `--dataset sift` (sift-dev-1m): `img`, the row's source
image id (rows of one image are alike, so a filter on images is correlated with the vectors,
as labels are in practice) and `rnd`, uniform in 0..999 and unrelated to them; filters
`rnd < t` and `img < t` for 0.1%, 1%, 10% and 50% of the rows, and `rnd = i mod 1000` for
query i (a new value each query, as tenants are); and two label columns of ten values, 10%
each, `grp = rnd / 100` (unrelated) and `band`, the image ids cut in tenths (correlated),
filtered to `= i mod 10` for query i. `--label-graphs grp,band` creates the collection with
those declared label columns first (a graph per value in each indexed segment), and
`--engine-no-label-graphs` runs `--engine` a second time without them (the other plans, in
the same run). `--dataset fashion` (fashion-mnist-784):
`label`, the image's class, filtered to the query's own class and to the next class (10%
each; the second's rows are far from the query), and `rnd < t` for 1% and 10%.

Then for `--rounds` rounds, interleaved: each binary in turn is started on the same
directory and runs every query unfiltered and with each filter at each list size on
`--threads` client threads; with `--engine`, the engine in-process
(`engine/examples/filtered_dir`: no Flight, no pyarrow client, the like-for-like peer of
Qdrant Edge, also in-process) on the same directory and threads, and with `--engine-baseline`
an older build of it in turn (`--warm`: each reads every index into its sector cache first;
`--no-flight`: the in-process sides and Qdrant only); with `--qdrant` (a Python with
`qdrant-edge-py` and pyarrow, e.g. `.bench-venvs/qdrant/bin/python`), Qdrant Edge: a shard of
the same rows (f32, Euclid, HNSW m 16, ef_construct 100, its default full_scan_threshold of
10,000 KB), the attributes as integer payloads with range indexes created before the points
go in (so its HNSW adds its per-payload-block links), optimized; each filter as a
`FieldCondition` range (equality as `[v, v]`) at each `--efs` value. Its planner, like ours,
picks an exact search of the matching points or a filtered graph search by cardinality.

Recall@10 is against numpy brute force over the rows that pass. Prints one JSON line per
(round, side, filter, L): QPS, recall, and for the binaries mean sector reads per query and
the plan counters; then tables of medians, and per filter the QPS at recall@10 0.95 of each
side (interpolated on its curve; where every point is above 0.95, the fastest such point)
with the ratios. `--keep DIR` keeps the database and the shard in DIR and reuses them when
run again with the same DIR, data and rows.
"""
import argparse
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
from benchlib import at_recall, on_threads, read_u8bin, write_u8bin  # noqa: E402
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


def put(uri, base, attrs, batch_rows=10_000):
    c = fl.FlightClient(uri)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), base.shape[1])
    cols = {"id": pa.array(np.arange(len(base), dtype=np.uint64)), "vector": vec}
    cols.update({name: pa.array(v.astype(np.int64)) for name, v in attrs.items()})
    t = pa.table(cols)
    w, r = c.do_put(fl.FlightDescriptor.for_path("f"), t.schema)
    for b in t.to_batches(max_chunksize=batch_rows):
        w.write_batch(b)
        r.read()
    w.done_writing()
    w.close()


def same(n, cond):
    """One condition for all `n` queries."""
    return [cond] * n


def sift_cases(data, rows, nq):
    """`img`, the row's source image id (`base_img_ids.npy`: rows of one image are alike, so a
    filter on images is correlated with the vectors, as labels are in practice), and `rnd`,
    uniform in 0..999 and unrelated to them; `rnd < t` and `img < t` for 0.1%, 1%, 10% and 50%
    of the rows, and `rnd = i mod 1000` for query i (0.1%, a new value each query, as tenants
    are: no segment has seen the filter before)."""
    img = np.load(os.path.join(data, "base_img_ids.npy"))[:rows]
    rnd = np.random.default_rng(22).integers(0, 1000, rows)
    cases = [("none (100%)", same(nq, None))]
    for f in FRACTIONS:
        t = int(round(f * 1000))
        cases.append((f"rnd<{t} ({f:.1%})", same(nq, ("rnd", "<", t))))
        ti = int(np.sort(img)[int(f * rows)])
        cases.append((f"img<{ti} ({(img < ti).mean():.1%})", same(nq, ("img", "<", ti))))
    cases.append(("rnd=each (0.1%, new each query)", [("rnd", "=", i % 1000) for i in range(nq)]))
    # Ten labels of 10% each: `grp` unrelated to the vectors, `band` a tenth of the images
    # (correlated); query i asks for label i mod 10, mostly not the one its neighbours hold.
    grp = rnd // 100
    band = np.searchsorted(np.quantile(img, np.linspace(0.1, 0.9, 9)), img, side="right")
    cases.append(("grp=each (10%)", [("grp", "=", i % 10) for i in range(nq)]))
    cases.append(("band=each (10%)", [("band", "=", i % 10) for i in range(nq)]))
    return {"img": img, "rnd": rnd, "grp": grp, "band": band}, cases


def fashion_cases(data, rows, nq):
    """`label`, the image's class (0..9, 10% each), and `rnd` as for SIFT: the query's own
    class (its neighbours are mostly of it), the next class (the matching rows are far from
    the query: the hard case for a graph walk), and `rnd < t` for 1% and 10%."""
    label = np.load(os.path.join(data, "base_labels.npy"))[:rows].astype(np.int64)
    own = np.load(os.path.join(data, "query_labels.npy"))[:nq].astype(np.int64)
    rnd = np.random.default_rng(22).integers(0, 1000, rows)
    cases = [("none (100%)", same(nq, None)),
             ("label=own (10%)", [("label", "=", int(c)) for c in own]),
             ("label=next (10%)", [("label", "=", int((c + 1) % 10)) for c in own]),
             ("rnd<10 (1.0%)", same(nq, ("rnd", "<", 10))),
             ("rnd<100 (10.0%)", same(nq, ("rnd", "<", 100)))]
    return {"label": label, "rnd": rnd}, cases


def passes(attrs, cond):
    if cond is None:
        return np.ones(len(next(iter(attrs.values()))), dtype=bool)
    col, op, value = cond
    return attrs[col] < value if op == "<" else attrs[col] == value


def truth(base, queries, attrs, conds):
    """Each query's true k nearest among the rows that pass its condition."""
    gt = []
    for q, cond in zip(queries.astype(np.float32), conds):
        rows = np.flatnonzero(passes(attrs, cond))
        d = ((base[rows].astype(np.float32) - q) ** 2).sum(axis=1)
        take = min(K, len(rows))
        gt.append(set(rows[np.argpartition(d, take - 1)[:take]].tolist()) if take else set())
    return gt


def recall(gt, got):
    """Recall@k of `got` ({query: ids}) against the true sets `gt`."""
    hits = sum(len(gt[i] & set(got[i])) for i in range(len(gt)))
    return round(hits / max(sum(len(g) for g in gt), 1), 4)


def sweep(uri, queries, conds, gt, list_size, threads):
    def filters(cond):
        return [] if cond is None else [{"field": cond[0], "op": cond[1], "value": cond[2]}]

    tickets = [json.dumps({"search": {
        "dataset": "f", "vector": q.tolist(), "k": K, "list_size": list_size,
        "filters": filters(cond)}}).encode() for q, cond in zip(queries, conds)]
    clients = [fl.FlightClient(uri) for _ in range(threads)]
    before = action(uri, "stats", {"name": "f"})[0]

    def run(part):
        got = {}
        for i in range(part, len(tickets), threads):
            got[i] = clients[part].do_get(fl.Ticket(tickets[i])).read_all().column("id").to_pylist()
        return got

    got, secs = on_threads(run, threads)
    after = action(uri, "stats", {"name": "f"})[0]
    searches = max(after["searches"] - before["searches"], 1)
    return {
        "qps": round(len(queries) / secs, 1),
        "recall": recall(gt, got),
        "reads": round((after["index_reads"] - before["index_reads"]) / searches, 1),
        "walks": after.get("filtered_walks", 0) - before.get("filtered_walks", 0),
        "ranked": after.get("filtered_ranked", 0) - before.get("filtered_ranked", 0),
        "scans": after.get("filtered_scans", 0) - before.get("filtered_scans", 0),
    }


def qdrant_shard(path, base, attrs):
    """Qdrant Edge's shard of the same rows, the attributes as range-indexed integer payloads;
    loaded when `path` holds a finished one already."""
    import qdrant_edge as q
    if os.path.exists(path + ".ready"):
        return q.EdgeShard.load(path)
    shutil.rmtree(path, ignore_errors=True)
    cfg = q.EdgeConfig(vectors=q.EdgeVectorParams(size=base.shape[1], distance=q.Distance.Euclid),
                       hnsw_config=q.HnswIndexConfig(m=16, ef_construct=100,
                                                     full_scan_threshold=10_000))
    shard = q.EdgeShard.create(path, cfg)
    for field in attrs:
        shard.update(q.UpdateOperation.create_field_index(
            field, q.IntegerIndexParams(lookup=False, range=True)))
    f = base.astype(np.float32)
    for start in range(0, len(f), 10_000):
        pts = [q.Point(int(i), f[i].tolist(), {k: int(v[i]) for k, v in attrs.items()})
               for i in range(start, min(start + 10_000, len(f)))]
        shard.update(q.UpdateOperation.upsert_points(pts))
    shard.optimize()
    shard.flush()
    open(path + ".ready", "w").close()
    return shard


def qdrant_sweep(shard, queries, conds, gt, ef, threads):
    import qdrant_edge as q

    def flt(cond):
        if cond is None:
            return None
        col, op, value = cond
        # Equality as the closed range [v, v]: the same rows, through the range index.
        rng = (q.RangeFloat(gte=float(value), lte=float(value)) if op == "="
               else q.RangeFloat(lt=float(value)))
        return q.Filter(must=[q.FieldCondition(key=col, range=rng)])

    reqs = [q.SearchRequest(query=q.Query.Nearest(v.astype(np.float32).tolist()), limit=K,
                            filter=flt(cond), params=q.SearchParams(hnsw_ef=ef))
            for v, cond in zip(queries, conds)]

    def run(part):
        return {i: [p.id for p in shard.search(reqs[i])] for i in range(part, len(reqs), threads)}

    got, secs = on_threads(run, threads)
    return {"qps": round(len(queries) / secs, 1), "recall": recall(gt, got)}


def engine_sweep(binary, data, queries_file, cases_file, list_sizes, threads, cache_mb,
                 warm=False, extra=()):
    """The engine in-process (`engine/examples/filtered_dir`): {(case, L): (qps, ids)}; with
    `warm`, every index read into the sector cache first (`Database::warm_sector_cache`)."""
    cmd = [binary, data, "f", queries_file, "--threads", str(threads), "--list-sizes",
           ",".join(map(str, list_sizes)), "--cases", cases_file] + (["--warm"] if warm else [])
    cmd += list(extra)
    if cache_mb is not None:
        cmd += ["--sector-cache-mb", str(cache_mb)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    got = {}
    for line in out.splitlines():
        r = json.loads(line)
        got[(r["case"], r["L"])] = (r["qps"], r["ids"])
    return got


def qps_at(points, target=0.95):
    """QPS at `target` recall on a (qps, recall) curve: interpolated where two points bracket
    it, else the fastest point at or above it (NaN if none reaches it)."""
    q = at_recall(points, target)
    if q == q:
        return q
    above = [qps for qps, r in points if r >= target]
    return max(above) if above else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--dataset", choices=("sift", "fashion"), default="sift",
                    help="the attributes and filters: sift-dev-1m's (image ids, random) or "
                         "fashion-mnist-784's (class labels, random)")
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
    ap.add_argument("--qdrant", action="store_true", help="Qdrant Edge as the filtered peer")
    ap.add_argument("--efs", default="16,32,64,128", help="Qdrant Edge's hnsw_ef values")
    ap.add_argument("--engine", help="engine/examples/filtered_dir: the engine in-process too")
    ap.add_argument("--engine-baseline",
                    help="a second filtered_dir (an older build), run in turn in-process")
    ap.add_argument("--warm", action="store_true",
                    help="the in-process sides read every index into the sector cache first, "
                         "so that they, like Qdrant, answer from memory from the first query")
    ap.add_argument("--no-flight", action="store_true",
                    help="skip the searches over Flight (the in-process sides and Qdrant only)")
    ap.add_argument("--keep", help="keep the database (and shard) here; reuse them if present")
    ap.add_argument("--label-graphs", default="",
                    help="label columns declared when the collection is created (comma-separated)")
    ap.add_argument("--engine-no-label-graphs", action="store_true",
                    help="run --engine a second time with no label graph used (the other paths)")
    args = ap.parse_args()
    base = read_u8bin(os.path.join(args.data, "base.u8bin"), args.rows)
    queries = read_u8bin(os.path.join(args.data, "query.u8bin"), args.queries)
    make_cases = sift_cases if args.dataset == "sift" else fashion_cases
    attrs, named = make_cases(args.data, len(base), len(queries))
    work = args.keep or tempfile.mkdtemp(prefix="quiver-filtered-")
    data = os.path.join(work, "db")
    list_sizes = [int(x) for x in args.list_sizes.split(",")]
    efs = [int(x) for x in args.efs.split(",")]
    try:
        p, uri = start(args.quiver, data)
        done = os.path.join(work, f"indexed-{args.rows}")
        if os.path.exists(done):
            print(f"reusing {data}", file=sys.stderr)
        else:
            t0 = time.perf_counter()
            if args.label_graphs:
                action(uri, "create_collection", {
                    "name": "f", "dim": base.shape[1], "element_type": "uint8",
                    "attributes": [{"name": n, "type": "int64", "nullable": False} for n in attrs],
                    "label_graphs": args.label_graphs.split(",")})
            put(uri, base, attrs)
            action(uri, "wait-for-indexing", {"dataset": "f"})
            print(f"quiver: put and indexed in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            open(done, "w").close()
        st = action(uri, "stats", {"name": "f"})[0]
        stop(p)
        assert st["rows"] == len(base), (st["rows"], len(base))
        print(json.dumps({"rows": st["rows"], "segments": st["segments"],
                          "indexed_segments": st["indexed_segments"]}), flush=True)
        shard = None
        if args.qdrant:
            t0 = time.perf_counter()
            shard = qdrant_shard(os.path.join(work, "qdrant"), base, attrs)
            print(f"qdrant edge: shard ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        cases = [(n, conds, truth(base, queries, attrs, conds)) for n, conds in named]
        binaries = [("quiver", args.quiver)] + ([("baseline", args.baseline)] if args.baseline else [])
        queries_file = os.path.join(work, "queries.u8bin")
        write_u8bin(queries_file, queries)
        cases_file = os.path.join(work, "cases.jsonl")
        with open(cases_file, "w") as f:
            for name, conds, _ in cases:
                f.write(json.dumps({"name": name, "conditions": conds}) + "\n")
        results = {}
        if args.no_flight:
            binaries = []
        engines = [("engine", args.engine)] if args.engine else []
        engines += [("engine-baseline", args.engine_baseline)] if args.engine_baseline else []
        if args.engine_no_label_graphs:
            engines.append(("engine-no-labels", args.engine))
        for round_i in range(args.rounds):
            for label, binary in binaries:
                p, uri = start(binary, data, args.sector_cache_mb)
                try:
                    for name, conds, gt in cases:
                        for ls in list_sizes:
                            r = sweep(uri, queries, conds, gt, ls, args.threads)
                            results.setdefault((label, name, ls), []).append(r)
                            print(json.dumps({"round": round_i, "binary": label, "filter": name,
                                              "L": ls, **r}), flush=True)
                finally:
                    stop(p)
            for label, engine in engines:
                no_labels = ["--label-graph-min-rows", str(2**32)] if label == "engine-no-labels" else []
                got = engine_sweep(engine, data, queries_file, cases_file, list_sizes,
                                   args.threads, args.sector_cache_mb, args.warm, no_labels)
                for name, _, gt in cases:
                    for ls in list_sizes:
                        qps, ids = got[(name, ls)]
                        r = {"qps": qps, "recall": recall(gt, dict(enumerate(ids)))}
                        results.setdefault((label, name, ls), []).append(r)
                        print(json.dumps({"round": round_i, "binary": f"{label} (in-process)",
                                          "filter": name, "L": ls, **r}), flush=True)
            if shard is not None:
                for name, conds, gt in cases:
                    for ef in efs:
                        r = qdrant_sweep(shard, queries, conds, gt, ef, args.threads)
                        results.setdefault(("qdrant", name, ef), []).append(r)
                        print(json.dumps({"round": round_i, "binary": "qdrant", "filter": name,
                                          "ef": ef, **r}), flush=True)
        if shard is not None:
            shard.close()
        med = lambda rs, k: float(np.median([r[k] for r in rs]))  # noqa: E731
        if binaries:
            print("\n| filter | L | " + " | ".join(
                f"{b} recall / QPS / reads / walks:ranked:scans" for b, _ in binaries) + " |")
            print("|---|---:|" + "---|" * len(binaries))
            for name, _, _ in cases:
                for ls in list_sizes:
                    cells = []
                    for b, _ in binaries:
                        rs = results[(b, name, ls)]
                        cells.append(f"{med(rs, 'recall'):.4f} / {med(rs, 'qps'):.0f} / "
                                     f"{med(rs, 'reads'):.1f} / "
                                     f"{rs[0]['walks']}:{rs[0]['ranked']}:{rs[0]['scans']}")
                    print(f"| {name} | {ls} | " + " | ".join(cells) + " |")
        ours = [b for b, _ in binaries]
        def curve(side, title, knob, steps):
            print(f"\n| filter | {knob} | {title} recall / QPS |")
            print("|---|---:|---|")
            for name, _, _ in cases:
                for x in steps:
                    rs = results[(side, name, x)]
                    print(f"| {name} | {x} | {med(rs, 'recall'):.4f} / {med(rs, 'qps'):.0f} |")

        for label, _ in engines:
            curve(label, f"{label} in-process", "L", list_sizes)
            ours.append(label)
        sides = list(ours)
        if shard is not None:
            curve("qdrant", "Qdrant Edge", "hnsw_ef", efs)
            sides.append("qdrant")
        # Ratios: the new binary against the baseline, and each of ours against Qdrant Edge.
        ratios = [("quiver", "baseline")] if args.baseline and binaries else []
        ratios += [("engine", e) for e, _ in engines[1:]]
        ratios += [(b, "qdrant") for b in ours] if shard is not None else []
        print("\n| filter | " + " | ".join(f"{b}: QPS at recall 0.95" for b in sides)
              + "".join(f" | {a} / {b}" for a, b in ratios) + " |")
        print("|---|" + "---:|" * (len(sides) + len(ratios)))
        for name, _, _ in cases:
            at = {}
            for b in sides:
                steps = efs if b == "qdrant" else list_sizes
                at[b] = qps_at([(med(results[(b, name, x)], "qps"),
                                 med(results[(b, name, x)], "recall")) for x in steps])
            print(f"| {name} | " + " | ".join(f"{at[b]:.0f}" for b in sides)
                  + "".join(f" | {at[a] / at[b]:.2f}" for a, b in ratios) + " |")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
