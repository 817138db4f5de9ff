"""Engine search against its own index: a SIFT set ingested through Flight versus `quiver search`
on one index built from the same file, in the same run (issue 19's benchmark).

    target/pyenv/bin/python benches/engine_search.py --data /work/data/sift-dev-1m \
        [--rows 1000000] [--list-sizes 20,30,50,75,100] [--threads 2] [--queries 2000] \
        [--rounds 3] [--delete-frac 0.1] [--busy-list-size 50] [--busy-rows 30000] \
        [--sector-cache-mb 0] [--batch 0]

Build first: `cargo build --release --bin quiver`. Steps:
1. `quiver serve` (release) on a fresh directory; the base rows are put with pyarrow in batches of
   10,000 (uint8 vectors, uint64 ids); `wait-for-indexing`; `stats`.
2. `quiver build` of the same base file with the same defaults (R 64, L 100, PQ bytes dim/4).
3. Rounds, interleaved: a sweep of list sizes over Flight (T client threads, k = 10), then the
   same sweep with `quiver search --threads T`. Recall@10 counts the returned ids among the ground truth's 10 nearest, as `quiver search` does.
   With `--batch N`, each round also sweeps over Flight with N queries per DoExchange call
   (`VectorSearch`, the batched search form Longbow's benchmark uses).
4. `--delete-frac` of the rows (random ids) are deleted over Flight, the deletions flushed, and
   the Flight sweep repeated, with recall against the ground truth restricted to live rows.
5. Busy (last, as it adds rows): at list size `--busy-list-size`, 30 s of idle Flight searches,
   then (`--floor-hogs N`) 20 s of them beside N pure CPU loops in another process at the
   background's nice value — the contention floor: what any background work of that much CPU
   costs the searches on this machine, with nothing shared but the cores —
   then the same searches repeated while a writer puts `--busy-rows` new rows in `--busy-flushes` flushed parts (each flush makes
   a segment; once there are 4 the merge starts) and waits for indexing; latency percentiles of
   the searches that ran in that window against the idle ones (recall is not scored there: the
   new rows are not in the ground truth).
Mean I/Os per query through the engine come from the server's `stats` (`index_reads /
searches`), sampled around each list size's run.
With `--rows` under the file's size, the ground truth is recomputed exactly (numpy) over those
rows.
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

from benchlib import at_recall, exact_ground_truth, read_u8bin, read_vecs

K = 10


def start_quiver(binary, data, cache_mb, nice, background_threads=0, log=None, idle=True):
    extra = ["--background-threads", str(background_threads)] if background_threads else []
    extra += [] if idle else ["--no-background-idle"]
    err = open(log, "w") if log else subprocess.DEVNULL
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info")) if log else None
    p = subprocess.Popen([binary, "serve", "--data", data, "--listen", "127.0.0.1:0",
                          "--sector-cache-mb", str(cache_mb), "--background-nice", str(nice)]
                         + extra, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    line = p.stdout.readline().strip()
    assert line.startswith("listening on "), line
    return p, line.split("listening on ", 1)[1]


def put(uri, name, base, batch_rows, ids=None):
    """Puts `base` as collection `name`; ids 0.. as u64 unless `ids` (an Arrow array) says."""
    c = fl.FlightClient(uri)
    if ids is None:
        ids = pa.array(np.arange(len(base), dtype=np.uint64))
    vec = pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), base.shape[1])
    t = pa.table({"id": ids, "vector": vec})
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


def engine_reads(uri, name):
    st = action(uri, "stats", {"name": name})[0]
    return st.get("index_reads", 0), st.get("searches", 0)


def run_parts(run, threads):
    """Runs `run(part)` for each of `threads` parts at once, each returning ({query: result},
    [latency s]): the results merged, the latencies joined, and the seconds it took."""
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as ex:
        parts = list(ex.map(run, range(threads)))
    secs = time.perf_counter() - t0
    res, lat = {}, []
    for r, l in parts:
        res.update(r)
        lat += l
    return res, lat, secs


def flight_sweep(uri, name, queries, gt_ids, list_sizes, threads, live=None):
    """Per list size: (qps, recall, p50 ms, p99 ms, mean index reads per query)."""
    clients = [fl.FlightClient(uri) for _ in range(threads)]
    out = {}
    for ls in list_sizes:
        reads0, searches0 = engine_reads(uri, name)
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

        res, lat, secs = run_parts(run, threads)
        hits = 0
        for i in range(len(queries)):
            # As `quiver search` counts: returned ids among the k nearest (of the live rows).
            want = gt_ids[i][:K] if live is None else [x for x in gt_ids[i] if live[x]][:K]
            hits += len(set(res[i][0].tolist()) & set(int(x) for x in want))
        lat = np.array(lat) * 1e3
        reads1, searches1 = engine_reads(uri, name)
        out[ls] = (len(queries) / secs, hits / (K * len(queries)),
                   float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
                   (reads1 - reads0) / max(searches1 - searches0, 1))
    return out


def exchange_search(client, name, queries, ls):
    """One DoExchange search of `queries` (a 2-d array) at list size `ls`: their ids in order."""
    qv = pa.FixedSizeListArray.from_arrays(pa.array(queries.astype(np.float32).ravel()),
                                           queries.shape[1])
    n = len(queries)
    t = pa.table({"dataset": [name] * n, "query_vector": qv,
                  "k": pa.array([K] * n, pa.int32()), "ef": pa.array([ls] * n, pa.int32())})
    writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(b"VectorSearch"))
    writer.begin(t.schema)
    writer.write_table(t)
    writer.done_writing()
    ids = reader.read_all().column("id").to_numpy()
    writer.close()
    assert len(ids) == K * n, (len(ids), n)  # every query has k live rows to return
    return ids.reshape(n, K)


def flight_batch_sweep(uri, name, queries, gt_ids, list_sizes, threads, batch):
    """As `flight_sweep`, but each client thread sends `batch` queries per DoExchange call.
    Per list size: (qps, recall, p50 ms, p99 ms of a call)."""
    clients = [fl.FlightClient(uri) for _ in range(threads)]
    parts = [range(s, min(s + batch, len(queries))) for s in range(0, len(queries), batch)]
    out = {}
    for ls in list_sizes:
        def run(t):
            res, lat = {}, []
            for j in range(t, len(parts), threads):
                t0 = time.perf_counter()
                got = exchange_search(clients[t], name, queries[parts[j].start:parts[j].stop], ls)
                lat.append(time.perf_counter() - t0)
                for i, row in zip(parts[j], got):
                    res[i] = row
            return res, lat

        res, lat, secs = run_parts(run, threads)
        hits = sum(len(set(res[i].tolist()) & set(int(x) for x in gt_ids[i][:K]))
                   for i in range(len(queries)))
        lat = np.array(lat) * 1e3
        out[ls] = (len(queries) / secs, hits / (K * len(queries)),
                   float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))
    return out


def busy_run(uri, name, queries, ls, threads, stop):
    """Searches (cycling through `queries`) until `stop` is set: (latencies ms, seconds)."""
    clients = [fl.FlightClient(uri) for _ in range(threads)]
    tickets = [json.dumps({"search": {"dataset": name, "vector": q.tolist(), "k": K,
                                      "list_size": ls}}).encode() for q in queries]

    def run(part):
        c, lat, i = clients[part], [], part
        while not stop.is_set():
            t0 = time.perf_counter()
            c.do_get(fl.Ticket(tickets[i % len(tickets)])).read_all()
            lat.append(time.perf_counter() - t0)
            i += threads
        return lat

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as ex:
        parts = list(ex.map(run, range(threads)))
    return np.array([x for p in parts for x in p]) * 1e3, time.perf_counter() - t0


HOG = "import time\nend = time.time() + {secs}\nwhile time.time() < end: pass\n"


def floor_run(uri, name, queries, ls, threads, hogs, nice, secs=20.0):
    """Latency while `hogs` pure CPU loops run in another process at `nice` (no I/O, no memory,
    nothing shared with the server but the cores): the least any background work of that much
    CPU costs searches on this machine. (latencies ms, seconds), or None without hogs."""
    import threading
    if hogs == 0:
        return None
    procs = [subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c",
                               HOG.format(secs=secs + 1)]) for _ in range(hogs)]
    time.sleep(0.5)
    stop = threading.Event()
    timer = threading.Timer(secs - 0.5, stop.set)
    timer.start()
    lat, took = busy_run(uri, name, queries, ls, threads, stop)
    for p in procs:
        p.wait()
    return lat, took


def busy_phase(uri, name, base, queries, ls, threads, rows, flushes, hogs=0, hog_nice=10):
    """Idle latency at list size `ls`; with `hogs`, latency beside that many CPU loops in another
    process (`floor_run`); then latency while `rows` new rows are put in `flushes` flushed parts
    and indexed (flushes, index builds and a merge)."""
    import threading
    idle_stop = threading.Event()
    timer = threading.Timer(30.0, idle_stop.set)
    timer.start()
    idle, idle_secs = busy_run(uri, name, queries, ls, threads, idle_stop)
    rng = np.random.default_rng(11)
    picks = rng.choice(len(base), rows, replace=True)
    noise = rng.integers(-3, 4, size=(rows, base.shape[1]))
    fresh = np.clip(base[picks].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    floor = floor_run(uri, name, queries, ls, threads, hogs, hog_nice)
    before = action(uri, "stats", {"name": name})[0]
    stop = threading.Event()
    timeline = {}

    def writer():
        t0 = time.perf_counter()
        c = fl.FlightClient(uri)
        for part, chunk in enumerate(np.array_split(np.arange(rows), flushes)):
            ids = pa.array(len(base) + 10_000_000 + chunk.astype(np.uint64))
            vec = pa.FixedSizeListArray.from_arrays(pa.array(fresh[chunk].ravel()),
                                                    base.shape[1])
            t = pa.table({"id": ids, "vector": vec})
            w, r = c.do_put(fl.FlightDescriptor.for_path(name), t.schema)
            for b in t.to_batches(max_chunksize=10_000):
                w.write_batch(b)
                r.read()
            w.done_writing()
            w.close()
            action(uri, "flush", {})
            timeline[f"flush {part + 1}"] = time.perf_counter() - t0
        action(uri, "wait-for-indexing", {"dataset": name})
        timeline["indexed"] = time.perf_counter() - t0
        stop.set()

    wt = threading.Thread(target=writer)
    wt.start()
    busy, busy_secs = busy_run(uri, name, queries, ls, threads, stop)
    wt.join()
    after = action(uri, "stats", {"name": name})[0]
    # Idle again, over the segments the writes left (and the merges made of them).
    after_stop = threading.Event()
    timer = threading.Timer(20.0, after_stop.set)
    timer.start()
    settled, settled_secs = busy_run(uri, name, queries, ls, threads, after_stop)
    pct = lambda a, p: float(np.percentile(a, p))  # noqa: E731
    summary = lambda a, secs: (len(a) / secs, pct(a, 50), pct(a, 99), len(a))  # noqa: E731
    return {
        "idle": (len(idle) / idle_secs, pct(idle, 50), pct(idle, 99), len(idle)),
        "floor": summary(*floor) if floor else None,
        "busy": (len(busy) / busy_secs, pct(busy, 50), pct(busy, 99), len(busy)),
        "after": (len(settled) / settled_secs, pct(settled, 50), pct(settled, 99),
                  len(settled)),
        "busy_secs": busy_secs, "timeline": timeline,
        "segments": (before.get("segments"), after.get("segments")),
    }


def quiver_sweep(binary, index, queries_file, gt_file, list_sizes, threads, cache_mb):
    cache = ["--sector-cache", f"{cache_mb}MiB"] if cache_mb else []
    out = subprocess.run([binary, "search", "--index", index, "--queries", queries_file,
                          "--ground-truth", gt_file, "--list-sizes",
                          ",".join(map(str, list_sizes)), "--threads", str(threads), "--json"]
                         + cache, capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        j = json.loads(line)
        res[j["list_size"]] = j
    return res


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
    ap.add_argument("--busy-list-size", type=int, default=50)
    ap.add_argument("--background-nice", type=int, default=10)
    ap.add_argument("--background-threads", type=int, default=0,
                    help="threads of the server's index builds and merges (0: one per core)")
    ap.add_argument("--no-background-idle", action="store_true",
                    help="the server's builds and merges at their nice value, not in the "
                         "paced idle scheduling class")
    ap.add_argument("--server-log", default=None, help="file for the server's log (RUST_LOG)")
    ap.add_argument("--busy-only", action="store_true",
                    help="ingest, then only the busy phase (no build, sweeps or deletions)")
    ap.add_argument("--sector-cache-mb", type=int, default=0,
                    help="sector cache of both sides (0: every node read from disk)")
    ap.add_argument("--batch", type=int, default=0,
                    help="also sweep over Flight with this many queries per DoExchange call "
                         "(the batched search form; 0: single-query DoGets only)")
    ap.add_argument("--busy-rows", type=int, default=30_000)
    ap.add_argument("--busy-flushes", type=int, default=3)
    ap.add_argument("--floor-hogs", type=int, default=0,
                    help="before the busy phase, 20 s of searches beside this many pure CPU "
                         "loops in another process at --background-nice: the contention floor")
    args = ap.parse_args()
    list_sizes = [int(x) for x in args.list_sizes.split(",")]
    base_file = os.path.join(args.data, "base.u8bin")
    base = read_u8bin(base_file, args.rows)
    queries = read_u8bin(os.path.join(args.data, "query.u8bin"), args.queries)
    gt_ids = read_vecs(os.path.join(args.data, "groundtruth.l2.ivecs"), np.int32)[: len(queries)]
    work = args.workdir or tempfile.mkdtemp(prefix="quiver-engine-search-")
    full = read_u8bin(base_file, None).shape[0]
    if len(base) < full:
        gt_ids = exact_ground_truth(base, queries, 100)
        base_file = os.path.join(work, "base.u8bin")
        with open(base_file, "wb") as f:
            f.write(np.array(base.shape, dtype=np.uint32).tobytes())
            f.write(base.tobytes())
    qfile = os.path.join(work, "queries.u8bin")
    with open(qfile, "wb") as f:
        f.write(np.array(queries.shape, dtype=np.uint32).tobytes())
        f.write(queries.tobytes())
    gtfile = os.path.join(work, "gt.ivecs")
    d = gt_ids.shape[1]
    np.hstack([np.full((len(gt_ids), 1), d, np.int32), gt_ids]).tofile(gtfile)

    data = os.path.join(work, "db")
    p, uri = start_quiver(args.quiver, data, args.sector_cache_mb, args.background_nice,
                          args.background_threads, args.server_log,
                          idle=not args.no_background_idle)
    t0 = time.perf_counter()
    put(uri, "sift", base, 10_000)
    t_put = time.perf_counter() - t0
    action(uri, "wait-for-indexing", {"dataset": "sift"})
    t_index = time.perf_counter() - t0
    stats = action(uri, "stats", {"name": "sift"})[0]
    print(f"ingest {len(base)} rows: put {t_put:.0f} s, indexed after {t_index:.0f} s; "
          f"segments {stats.get('segments')}, indexed {stats.get('indexed_segments')}",
          file=sys.stderr)

    if args.busy_only:
        busy = busy_phase(uri, "sift", base, queries, args.busy_list_size, args.threads,
                          args.busy_rows, args.busy_flushes, args.floor_hogs, args.background_nice)
        print(json.dumps(busy))
        p.terminate()
        p.wait()
        return
    index = os.path.join(work, "index")
    t0 = time.perf_counter()
    subprocess.run([args.quiver, "build", "--input", base_file, "--metric", "l2", "--out", index],
                   check=True, capture_output=True)
    print(f"quiver build: {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    eng, cli = {ls: [] for ls in list_sizes}, {ls: [] for ls in list_sizes}
    bat = {ls: [] for ls in list_sizes}
    for rnd in range(args.rounds):
        e = flight_sweep(uri, "sift", queries, gt_ids, list_sizes, args.threads)
        if args.batch:
            b = flight_batch_sweep(uri, "sift", queries, gt_ids, list_sizes, args.threads,
                                   args.batch)
            for ls in list_sizes:
                bat[ls].append(b[ls])
        c = quiver_sweep(args.quiver, index, qfile, gtfile, list_sizes, args.threads,
                         args.sector_cache_mb)
        for ls in list_sizes:
            eng[ls].append(e[ls])
            cli[ls].append((c[ls]["qps"], c[ls]["recall_at_k"], c[ls]["mean_ios"]))
        print(f"round {rnd}: " + ", ".join(
            f"L{ls} {e[ls][0]:.0f}/{c[ls]['qps']:.0f}"
            + (f" batched {bat[ls][-1][0]:.0f}" if args.batch else "")
            for ls in list_sizes), file=sys.stderr)

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
    busy = busy_phase(uri, "sift", base, queries, args.busy_list_size, args.threads,
                      args.busy_rows, args.busy_flushes, args.floor_hogs, args.background_nice)
    print(f"busy: {busy}", file=sys.stderr)
    p.terminate()
    p.wait()

    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    print(f"rows={len(base)} queries={len(queries)} threads={args.threads} k={K} "
          f"rounds={args.rounds} (medians)")
    print("| L | engine over Flight QPS | recall | p50 ms | p99 ms | quiver search QPS | recall "
          "| mean IOs | engine mean IOs | QPS ratio | engine, {:.0%} deleted: QPS | recall | p99 ms "
          "| mean IOs |".format(args.delete_frac))
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ls in list_sizes:
        eq, er, e50, e99, eio = (med(eng[ls], i) for i in range(5))
        cq, cr, cio = (med(cli[ls], i) for i in range(3))
        dq, dr, _, d99, dio = (med(dele[ls], i) for i in range(5))
        print(f"| {ls} | {eq:.0f} | {er:.3f} | {e50:.2f} | {e99:.2f} | {cq:.0f} | {cr:.3f} | "
              f"{cio:.1f} | {eio:.1f} | {eq / cq:.2f} | {dq:.0f} | {dr:.3f} | {d99:.2f} | "
              f"{dio:.1f} |")
    (iq, i50, i99, inn), (bq, b50, b99, bn) = busy["idle"], busy["busy"]
    print(f"\nL {args.busy_list_size}, {args.threads} threads: idle {iq:.0f} QPS p50 {i50:.2f} "
          f"p99 {i99:.2f} ms ({inn} searches); during {args.busy_rows} puts in "
          f"{args.busy_flushes} flushes, index builds and merges ({busy['busy_secs']:.0f} s, "
          f"segments {busy['segments'][0]} -> {busy['segments'][1]}, {busy['timeline']}): "
          f"{bq:.0f} QPS p50 {b50:.2f} p99 {b99:.2f} ms ({bn} searches); p99 ratio "
          f"{b99 / i99:.2f}")
    if busy["floor"]:
        fq, f50, f99, fn = busy["floor"]
        print(f"contention floor ({args.floor_hogs} CPU loops in another process at nice "
              f"{args.background_nice}): {fq:.0f} QPS p50 {f50:.2f} p99 {f99:.2f} ms ({fn} "
              f"searches); p99 ratio {f99 / i99:.2f}")
    if args.batch:
        print(f"\nbatched: {args.batch} queries per DoExchange call, {args.threads} client "
              "threads")
        print("| L | engine over Flight, batched QPS | recall | call p50 ms | call p99 ms "
              "| quiver search QPS | QPS ratio |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for ls in list_sizes:
            bq, br, b50, b99 = (med(bat[ls], i) for i in range(4))
            cq = med(cli[ls], 0)
            print(f"| {ls} | {bq:.0f} | {br:.3f} | {b50:.1f} | {b99:.1f} | {cq:.0f} | "
                  f"{bq / cq:.2f} |")
    e95 = at_recall([(med(eng[ls], 0), med(eng[ls], 1)) for ls in list_sizes])
    c95 = at_recall([(med(cli[ls], 0), med(cli[ls], 1)) for ls in list_sizes])
    d95 = at_recall([(med(dele[ls], 0), med(dele[ls], 1)) for ls in list_sizes])
    print(f"\nat recall 0.95: engine {e95:.0f} QPS, quiver search {c95:.0f} QPS, "
          f"ratio {e95 / c95:.2f}; with deletions {d95:.0f} QPS ({d95 / e95:.2f} of no-delete)")
    if args.batch:
        b95 = at_recall([(med(bat[ls], 0), med(bat[ls], 1)) for ls in list_sizes])
        print(f"at recall 0.95, batched ({args.batch} a call): engine {b95:.0f} QPS, "
              f"ratio {b95 / c95:.2f}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
