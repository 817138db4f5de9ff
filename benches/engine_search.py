"""Engine search against its own index: a SIFT set ingested through Flight versus `quiver search`
on one index built from the same file, in the same run (issue 19's benchmark).

    target/pyenv/bin/python benches/engine_search.py --data /work/data/sift-dev-1m \
        [--rows 1000000] [--list-sizes 20,30,50,75,100] [--threads 2] [--queries 2000] \
        [--rounds 3] [--delete-frac 0.1]

Build first: `cargo build --release --bin quiver`. Steps:
1. `quiver serve` (release) on a fresh directory; the base rows are put with pyarrow in batches of
   10,000 (uint8 vectors, uint64 ids); `wait-for-indexing`; `stats`.
2. `quiver build` of the same base file with the same defaults (R 64, L 100, PQ bytes dim/4).
3. Rounds, interleaved: a sweep of list sizes over Flight (T client threads, k = 10), then the
   same sweep with `quiver search --threads T`. Recall@10 counts a hit when its distance is at
   Recall@10 counts the returned ids among the ground truth's 10 nearest, as `quiver search` does.
4. `--delete-frac` of the rows (random ids) are deleted over Flight, the deletions flushed, and
   the Flight sweep repeated, with recall against the ground truth restricted to live rows.
Prints medians per list size and the QPS ratio at equal list size and at recall 0.95
(interpolated on each side's curve).
"""
import argparse
import concurrent.futures as cf
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

K = 10


def read_u8bin(path, rows=None):
    with open(path, "rb") as f:
        n, d = np.frombuffer(f.read(8), dtype=np.uint32)
        n = n if rows is None else min(n, rows)
        return np.frombuffer(f.read(int(n) * int(d)), dtype=np.uint8).reshape(int(n), int(d))


def read_vecs(path, dtype):
    raw = np.fromfile(path, dtype=np.int32)
    d = raw[0]
    return raw.reshape(-1, d + 1)[:, 1:].view(dtype)


def start_quiver(binary, data):
    p = subprocess.Popen([binary, "serve", "--data", data, "--listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline().strip()
    assert line.startswith("listening on "), line
    return p, line.split("listening on ", 1)[1]


def put(uri, name, base, batch_rows):
    c = fl.FlightClient(uri)
    ids = np.arange(len(base), dtype=np.uint64)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), base.shape[1])
    t = pa.table({"id": pa.array(ids), "vector": vec})
    w, r = c.do_put(fl.FlightDescriptor.for_path(name), t.schema)
    for b in t.to_batches(max_chunksize=batch_rows):
        w.write_batch(b)
        r.read()
    w.done_writing()
    w.close()


def action(uri, kind, body):
    c = fl.FlightClient(uri)
    return [json.loads(r.body.to_pybytes() or b"{}")
            for r in c.do_action(fl.Action(kind, json.dumps(body).encode()))]


def flight_sweep(uri, name, queries, gt_ids, list_sizes, threads, live=None):
    """Per list size: (qps, recall, p50 ms, p99 ms)."""
    clients = [fl.FlightClient(uri) for _ in range(threads)]
    out = {}
    for ls in list_sizes:
        tickets = [json.dumps({"search": {"dataset": name, "vector": q.tolist(), "k": K,
                                          "list_size": ls}}).encode() for q in queries]

        def run(part):
            c = clients[part]
            res, lat = {}, []
            for i in range(part, len(tickets), threads):
                t0 = time.perf_counter()
                tab = c.do_get(fl.Ticket(tickets[i])).read_all()
                lat.append(time.perf_counter() - t0)
                res[i] = (tab.column("id").to_numpy(), tab.column("distance").to_numpy())
            return res, lat

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(threads) as ex:
            parts = list(ex.map(run, range(threads)))
        secs = time.perf_counter() - t0
        res, lat = {}, []
        for r, l in parts:
            res.update(r)
            lat += l
        hits = 0
        for i in range(len(queries)):
            # As `quiver search` counts: returned ids among the k nearest (of the live rows).
            want = gt_ids[i][:K] if live is None else [x for x in gt_ids[i] if live[x]][:K]
            hits += len(set(res[i][0].tolist()) & set(int(x) for x in want))
        lat = np.array(lat) * 1e3
        out[ls] = (len(queries) / secs, hits / (K * len(queries)),
                   float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))
    return out


def quiver_sweep(binary, index, queries_file, gt_file, list_sizes, threads, nq):
    out = subprocess.run([binary, "search", "--index", index, "--queries", queries_file,
                          "--ground-truth", gt_file, "--list-sizes",
                          ",".join(map(str, list_sizes)), "--threads", str(threads), "--json"],
                         capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        j = json.loads(line)
        res[j["list_size"]] = j
    return res


def at_recall(curve, target=0.95):
    """QPS at `target` recall, interpolated between the list sizes that bracket it."""
    pts = sorted((r, q) for q, r in curve)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1:
            return q0 + (q1 - q0) * (target - r0) / max(r1 - r0, 1e-9)
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--list-sizes", default="20,30,50,75,100")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delete-frac", type=float, default=0.1)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    list_sizes = [int(x) for x in args.list_sizes.split(",")]
    base_file = os.path.join(args.data, "base.u8bin")
    base = read_u8bin(base_file, args.rows)
    queries = read_u8bin(os.path.join(args.data, "query.u8bin"), args.queries)
    if args.rows is not None and args.rows < 1_000_000:
        sys.exit("ground truth covers the whole base file: use all rows")
    gt_ids = read_vecs(os.path.join(args.data, "groundtruth.l2.ivecs"), np.int32)[: len(queries)]
    work = args.workdir or tempfile.mkdtemp(prefix="quiver-engine-search-")
    qfile = os.path.join(work, "queries.u8bin")
    with open(qfile, "wb") as f:
        f.write(np.array(queries.shape, dtype=np.uint32).tobytes())
        f.write(queries.tobytes())
    gtfile = os.path.join(work, "gt.ivecs")
    d = gt_ids.shape[1]
    np.hstack([np.full((len(gt_ids), 1), d, np.int32), gt_ids]).tofile(gtfile)

    data = os.path.join(work, "db")
    p, uri = start_quiver(args.quiver, data)
    t0 = time.perf_counter()
    put(uri, "sift", base, 10_000)
    t_put = time.perf_counter() - t0
    action(uri, "wait-for-indexing", {"dataset": "sift"})
    t_index = time.perf_counter() - t0
    stats = action(uri, "stats", {"name": "sift"})[0]
    print(f"ingest {len(base)} rows: put {t_put:.0f} s, indexed after {t_index:.0f} s; "
          f"segments {stats.get('segments')}, indexed {stats.get('indexed_segments')}",
          file=sys.stderr)

    index = os.path.join(work, "index")
    t0 = time.perf_counter()
    subprocess.run([args.quiver, "build", "--input", base_file, "--metric", "l2", "--out", index],
                   check=True, capture_output=True)
    print(f"quiver build: {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    eng, cli = {ls: [] for ls in list_sizes}, {ls: [] for ls in list_sizes}
    for rnd in range(args.rounds):
        e = flight_sweep(uri, "sift", queries, gt_ids, list_sizes, args.threads)
        c = quiver_sweep(args.quiver, index, qfile, gtfile, list_sizes, args.threads,
                         len(queries))
        for ls in list_sizes:
            eng[ls].append(e[ls])
            cli[ls].append((c[ls]["qps"], c[ls]["recall_at_k"], c[ls]["mean_ios"]))
        print(f"round {rnd}: " + ", ".join(
            f"L{ls} {e[ls][0]:.0f}/{c[ls]['qps']:.0f}" for ls in list_sizes), file=sys.stderr)

    rng = np.random.default_rng(5)
    doomed = rng.choice(len(base), int(len(base) * args.delete_frac), replace=False)
    for chunk in np.array_split(doomed, max(1, len(doomed) // 10_000)):
        action(uri, "delete", {"dataset": "sift", "ids": [int(x) for x in chunk]})
    action(uri, "flush", {})
    live = np.ones(len(base), dtype=bool)
    live[doomed] = False
    dele = {ls: [] for ls in list_sizes}
    for _ in range(args.rounds):
        e = flight_sweep(uri, "sift", queries, gt_ids, list_sizes, args.threads, live)
        for ls in list_sizes:
            dele[ls].append(e[ls])
    p.terminate()
    p.wait()

    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    print(f"rows={len(base)} queries={len(queries)} threads={args.threads} k={K} "
          f"rounds={args.rounds} (medians)")
    print("| L | engine over Flight QPS | recall | p50 ms | p99 ms | quiver search QPS | recall "
          "| mean IOs | QPS ratio | engine, {:.0%} deleted: QPS | recall | p99 ms |"
          .format(args.delete_frac))
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ls in list_sizes:
        eq, er, e50, e99 = (med(eng[ls], i) for i in range(4))
        cq, cr, cio = (med(cli[ls], i) for i in range(3))
        dq, dr, _, d99 = (med(dele[ls], i) for i in range(4))
        print(f"| {ls} | {eq:.0f} | {er:.3f} | {e50:.2f} | {e99:.2f} | {cq:.0f} | {cr:.3f} | "
              f"{cio:.1f} | {eq / cq:.2f} | {dq:.0f} | {dr:.3f} | {d99:.2f} |")
    e95 = at_recall([(med(eng[ls], 0), med(eng[ls], 1)) for ls in list_sizes])
    c95 = at_recall([(med(cli[ls], 0), med(cli[ls], 1)) for ls in list_sizes])
    d95 = at_recall([(med(dele[ls], 0), med(dele[ls], 1)) for ls in list_sizes])
    print(f"\nat recall 0.95: engine {e95:.0f} QPS, quiver search {c95:.0f} QPS, "
          f"ratio {e95 / c95:.2f}; with deletions {d95:.0f} QPS ({d95 / e95:.2f} of no-delete)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
