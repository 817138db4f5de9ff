"""Overhead of Prometheus metrics on the hot paths: `quiver serve` with `--metrics-listen` against
the same binary without it, in interleaved rounds (off/on, then on/off, ...), each on a fresh data
directory. While metrics are on, a scraper reads /metrics every second, as Prometheus would.

    python benches/metrics_overhead.py --quiver target/release/quiver \
        --base /work/data/sift-dev-1m/base.u8bin --rows 200000 --queries 2000 --rounds 4

Per round and mode:
- durable DoPut MB/s: one stream, each batch's acknowledgement read before the next is sent
  (10k-row batches of 128-d float32 vectors and uint64 ids);
- search QPS over Flight: one client, sequential DoGet search tickets (k = 10) on the indexed
  collection (after `wait-for-indexing`), queries drawn from the base rows.
Reports each mode's median and the ratio on/off (target: within 3%).

With `--baseline OLD`, both modes run without metrics and "off" is the binary OLD: the cost of
what the newer binary added with tracing off (its spans are disabled at their call sites).
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import pyarrow.flight as fl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flight_bench import load_base, nbytes, put, start_quiver, stop, table_of  # noqa: E402


def start(binary, data, metrics):
    p, uri = start_quiver(binary, data, ["--metrics-listen", "127.0.0.1:0"] if metrics else [])
    metrics_addr = None
    if metrics:
        line = p.stdout.readline().strip()
        assert line.startswith("metrics on http://"), line
        metrics_addr = line.split("http://")[1]
    return p, uri, metrics_addr


def scraper(addr, stop_event, counts):
    while not stop_event.wait(1.0):
        with urllib.request.urlopen(addr, timeout=10) as r:
            r.read()
        counts.append(1)


def one_round(args, vecs, table, metrics):
    work = tempfile.mkdtemp(dir=args.workdir)
    binary = args.quiver
    if args.baseline:
        binary = args.quiver if metrics else args.baseline
        metrics = False
    try:
        p, uri, metrics_addr = start(binary, os.path.join(work, "db"), metrics)
        stop_event, scrapes = threading.Event(), []
        t = None
        if metrics_addr:
            t = threading.Thread(target=scraper,
                                 args=(f"http://{metrics_addr}", stop_event, scrapes))
            t.start()
        seconds = put(uri, "bench", table, 1, args.batch_rows, wait_each=True)
        put_mbs = nbytes(table) / seconds / 1e6
        c = fl.FlightClient(uri)
        body = json.dumps({"name": "bench"}).encode()
        list(c.do_action(fl.Action("wait-for-indexing", body)))
        tickets = [fl.Ticket(json.dumps({"search": {"dataset": "bench", "k": 10,
                                                    "vector": vecs[i * 7 % len(vecs)].tolist()}}).encode())
                   for i in range(args.queries)]
        for tk in tickets[:50]:  # warm the connection and caches alike in both modes
            c.do_get(tk).read_all()
        t0 = time.perf_counter()
        for tk in tickets:
            c.do_get(tk).read_all()
        qps = len(tickets) / (time.perf_counter() - t0)
        stop_event.set()
        if t:
            t.join()
        stop(p)
        return put_mbs, qps, len(scrapes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--base", required=True)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch-rows", type=int, default=10_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--baseline", default=None,
                    help="compare --quiver against this binary, both without metrics")
    args = ap.parse_args()
    vecs = load_base(args.base, args.rows)
    table = table_of(vecs)
    results = {False: [], True: []}
    for r in range(args.rounds):
        order = [False, True] if r % 2 == 0 else [True, False]
        for metrics in order:
            put_mbs, qps, scrapes = one_round(args, vecs, table, metrics)
            results[metrics].append((put_mbs, qps))
            mode = "on " if metrics else "off"
            print(f"round {r} metrics {mode}: DoPut {put_mbs:7.1f} MB/s, search {qps:7.1f} QPS"
                  f"{f', {scrapes} scrapes' if metrics else ''}", flush=True)
    med = {m: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for m, v in results.items()}
    print(f"\nmedians over {args.rounds} rounds, {args.rows} rows, {args.queries} queries:")
    print("| metrics | durable DoPut MB/s | search QPS |")
    print("|---|---|---|")
    names = {False: "baseline" if args.baseline else "off", True: "new" if args.baseline else "on"}
    for m in (False, True):
        print(f"| {names[m]} | {med[m][0]:.1f} | {med[m][1]:.1f} |")
    print(f"| on / off | {med[True][0] / med[False][0]:.3f} | {med[True][1] / med[False][1]:.3f} |")


if __name__ == "__main__":
    main()
