"""Flight benchmark: `quiver serve` driven by a pyarrow client over loopback, side by side with a
pyarrow in-memory Flight server (the wire's ceiling on this machine: no durability, no storage).

    python benches/flight_bench.py --quiver target/release/quiver \
        --base /work/data/sift-dev-1m/base.u8bin --rows 500000 --rounds 3

Measures, per round (medians reported):
- DoPut: durable MB/s of 128-d f32 vectors + uint64 ids: 1 stream whose client reads each
  batch's acknowledgement before sending the next, 1 stream that sends every batch and then
  reads the acknowledgements (pyarrow's `write_table` usage), and 4 concurrent streams of the
  first kind (the server acknowledges a batch only once it is in the WAL);
- DoGet scan MB/s of the whole collection (adaptive chunking), once the put's flush and merges
  are done;
- search QPS over Flight (one client, sequential DoGet tickets) on an indexed collection, and
  the same queries in-process (`engine/examples/search_dir.rs`) for the Flight overhead;
- the server's CPU-seconds per GB put (1 stream, each ack awaited) and per GB scanned, from
  `/proc/PID/stat` (the machine-independent figure: the client shares these cores);
- with `--latency`: acknowledgement latency p50/p99 of 1k, 10k and 50k-row batches on 1 and 4
  streams (each ack awaited), into a server that indexes as it goes (builds and merges run
  meanwhile), and the same through the in-memory server.
MB = 10^6 bytes of Arrow buffers (ids + vectors).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl


def load_base(path, rows):
    with open(path, "rb") as f:
        n, d = np.frombuffer(f.read(8), dtype=np.uint32)
        dtype = np.uint8 if path.endswith(".u8bin") else np.float32
        rows = min(rows, int(n))
        data = np.frombuffer(f.read(rows * int(d) * np.dtype(dtype).itemsize), dtype=dtype)
    return data.reshape(rows, int(d)).astype(np.float32)


def table_of(vecs, start=0):
    n, d = vecs.shape
    col = pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel(), pa.float32()), d)
    return pa.table({"id": pa.array(np.arange(start, start + n, dtype=np.uint64)), "vector": col})


def nbytes(t):
    return sum(c.nbytes for c in t.columns)


class MemoryServer(fl.FlightServerBase):
    """The peer: a pyarrow Flight server keeping tables in memory (Longbow-style, no WAL)."""

    def __init__(self, location):
        super().__init__(location)
        self.tables = {}
        self.lock = threading.Lock()

    def do_put(self, context, descriptor, reader, writer):
        name = descriptor.path[0].decode()
        batches = []
        for chunk in reader:
            batches.append(chunk.data)
            writer.write(pa.py_buffer(json.dumps({"rows": chunk.data.num_rows}).encode()))
        with self.lock:
            self.tables.setdefault(name, []).extend(batches)

    def do_get(self, context, ticket):
        name = ticket.ticket.decode()
        with self.lock:
            t = pa.Table.from_batches(self.tables[name])
        return fl.RecordBatchStream(t)


def start_quiver(binary, data, extra):
    p = subprocess.Popen([binary, "serve", "--data", data, "--listen", "127.0.0.1:0", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env={**os.environ, "RUST_LOG": "warn"})
    line = p.stdout.readline().strip()
    assert line.startswith("listening on grpc://"), line
    return p, line.split("listening on ")[1]


def stop(p):
    p.terminate()
    p.wait(timeout=600)


def put(uri, name, table, streams, batch_rows, wait_each=True, latencies=None):
    """DoPut `table` split over `streams` concurrent streams; returns seconds until the last ack.

    `wait_each`: read each batch's acknowledgement before sending the next (one batch in flight
    per stream); otherwise stream every batch, then close, which returns once the server has
    answered the whole stream (every acknowledgement is sent only after durability).
    `latencies` (with `wait_each`): a list that gains each batch's send-to-acknowledgement
    time in milliseconds."""
    parts = []
    per = (table.num_rows + streams - 1) // streams
    for s in range(streams):
        parts.append(table.slice(s * per, per))
    errors = []

    def one(part):
        try:
            c = fl.FlightClient(uri)
            w, r = c.do_put(fl.FlightDescriptor.for_path(name), part.schema)
            acks = 0
            for b in part.to_batches(max_chunksize=batch_rows):
                sent = time.perf_counter()
                w.write_batch(b)
                if wait_each:
                    r.read()  # the acknowledgement: durable before it is sent
                    acks += 1
                    if latencies is not None:
                        latencies.append((time.perf_counter() - sent) * 1000)
            if not wait_each:
                w.done_writing()
                while r.read() is not None:
                    acks += 1
            w.close()
            assert acks == len(part.to_batches(max_chunksize=batch_rows)), acks
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def cpu_seconds(pid):
    """User + system CPU time of process `pid` so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency_table(args, vecs, work):
    """p50/p99 acknowledgement latency by batch size and streams, Quiver and the peer."""
    rows = min(len(vecs), args.latency_rows)
    print(f"\nacknowledgement latency, {rows} rows a run, ms (p50 / p99):")
    print("| batch rows | streams | Quiver (indexing on) | pyarrow in-memory server |")
    print("|---:|---:|---:|---:|")
    for batch_rows in (1_000, 10_000, 50_000):
        for streams in (1, 4):
            cells = []
            for side in ("quiver", "peer"):
                table = table_of(vecs[:rows])
                if side == "quiver":
                    d = os.path.join(work, f"lat-{batch_rows}-{streams}")
                    p, uri = start_quiver(args.quiver, d, args.quiver_args.split())
                    lat = []
                    put(uri, "lat", table, streams, batch_rows, latencies=lat)
                    stop(p)
                    shutil.rmtree(d)
                else:
                    srv = MemoryServer("grpc://127.0.0.1:0")
                    uri = f"grpc://127.0.0.1:{srv.port}"
                    threading.Thread(target=srv.serve, daemon=True).start()
                    lat = []
                    put(uri, "lat", table, streams, batch_rows, latencies=lat)
                    srv.shutdown()
                cells.append(f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f}")
            print(f"| {batch_rows:,} | {streams} | {cells[0]} | {cells[1]} |", flush=True)


def scan(uri, ticket):
    c = fl.FlightClient(uri)
    t0 = time.perf_counter()
    rows, size = 0, 0
    for chunk in c.do_get(fl.Ticket(ticket)):
        rows += chunk.data.num_rows
        size += sum(col.nbytes for col in chunk.data.columns)
    return time.perf_counter() - t0, rows, size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--search-dir", default="target/release/examples/search_dir")
    ap.add_argument("--base", required=True)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--search-rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=10_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-peer", action="store_true", help="skip the peer (quick iterations)")
    ap.add_argument("--no-search", action="store_true", help="skip the search part")
    ap.add_argument("--quiver-args", default="", help="extra `quiver serve` flags for the puts")
    ap.add_argument("--latency", action="store_true",
                    help="also the acknowledgement latency table (1k/10k/50k-row batches, 1 and 4 "
                         "streams)")
    ap.add_argument("--latency-rows", type=int, default=200_000)
    ap.add_argument("--no-throughput", action="store_true", help="skip the MB/s table")
    args = ap.parse_args()

    vecs = load_base(args.base, args.rows)
    table = table_of(vecs)
    mb = nbytes(table) / 1e6
    work = args.workdir or tempfile.mkdtemp(prefix="quiver-flight-bench-")
    keys = ["q_put1", "q_puts", "q_put4", "q_scan", "m_put1", "m_puts", "m_put4", "m_scan"]
    results = {k: [] for k in keys}
    cpu_put, cpu_scan = [], []  # server CPU-seconds per GB
    for rnd in range(0 if args.no_throughput else args.rounds):
        # Quiver: durable puts (indexing off, to measure the write path), then a scan.
        for streams, key, wait in [(1, "q_put1", True), (1, "q_puts", False), (4, "q_put4", True)]:
            d = os.path.join(work, f"q{rnd}-{key}")
            p, uri = start_quiver(args.quiver, d, ["--no-index", *args.quiver_args.split()])
            cpu0 = cpu_seconds(p.pid)
            secs = put(uri, "bench", table, streams, args.batch_rows, wait)
            results[key].append(mb / secs)
            if key == "q_put1":
                cpu_put.append((cpu_seconds(p.pid) - cpu0) / (mb / 1000))
            if key == "q_put1":
                # Scan a settled collection: the put's last flush and merges done, so the scan
                # does not share the two cores with them.
                c = fl.FlightClient(uri)
                list(c.do_action(fl.Action("flush", b"")))
                list(c.do_action(fl.Action("wait-for-indexing", b'{"dataset": "bench"}')))
                cpu0 = cpu_seconds(p.pid)
                secs, rows, size = scan(uri, b"bench")
                assert rows == table.num_rows, rows
                results["q_scan"].append(size / 1e6 / secs)
                cpu_scan.append((cpu_seconds(p.pid) - cpu0) / (size / 1e9))
            stop(p)
            shutil.rmtree(d)
        # The peer: pyarrow's in-memory Flight server.
        peer = [(1, "m_put1", True), (1, "m_puts", False), (4, "m_put4", True)]
        for streams, key, wait in [] if args.no_peer else peer:
            srv = MemoryServer("grpc://127.0.0.1:0")
            uri = f"grpc://127.0.0.1:{srv.port}"
            threading.Thread(target=srv.serve, daemon=True).start()
            secs = put(uri, "bench", table, streams, args.batch_rows, wait)
            results[key].append(mb / secs)
            if key == "m_put1":
                secs, rows, size = scan(uri, b"bench")
                results["m_scan"].append(size / 1e6 / secs)
            srv.shutdown()
        print(f"round {rnd}: " + ", ".join(f"{k}={v[-1]:.0f}" for k, v in results.items() if v),
              file=sys.stderr)

    if not args.no_throughput:
        med = {k: statistics.median(v) if v else float("nan") for k, v in results.items()}
        print(f"rows={table.num_rows} dim={vecs.shape[1]} MB={mb:.1f} rounds={args.rounds}")
        print("| | Quiver (durable) MB/s | pyarrow in-memory server MB/s | ratio |")
        print("|---|---:|---:|---:|")
        for label, q, m in [("DoPut, 1 stream, each ack awaited", "q_put1", "m_put1"),
                            ("DoPut, 1 stream, streamed", "q_puts", "m_puts"),
                            ("DoPut, 4 streams, each ack awaited", "q_put4", "m_put4"),
                            ("DoGet scan", "q_scan", "m_scan")]:
            print(f"| {label} | {med[q]:.0f} | {med[m]:.0f} | {med[q] / med[m]:.2f} |")
        print(f"\nQuiver server CPU-seconds per GB: put (1 stream, acks awaited; until the last "
              f"acknowledgement, with the WAL and the flushes and merges that ran meanwhile) "
              f"{statistics.median(cpu_put):.2f}, scan {statistics.median(cpu_scan):.2f}")
    if args.latency:
        latency_table(args, vecs, work)

    if args.no_search:
        return
    # Search: an indexed collection; QPS over Flight vs the same engine in-process.
    d = os.path.join(work, "search")
    svecs = vecs[: args.search_rows]
    p, uri = start_quiver(args.quiver, d, ["--memtable-mb", "16"])
    put(uri, "s", table_of(svecs), 1, args.batch_rows)
    c = fl.FlightClient(uri)
    list(c.do_action(fl.Action("flush", b"")))
    list(c.do_action(fl.Action("wait-for-indexing", b'{"dataset": "s"}')))
    rng = np.random.default_rng(3)
    qs = svecs[rng.choice(len(svecs), args.queries, replace=False)] + \
        rng.standard_normal((args.queries, svecs.shape[1])).astype(np.float32)
    tickets = [json.dumps({"search": {"dataset": "s", "vector": q.tolist(), "k": 10,
                                      "list_size": 64}}).encode() for q in qs]
    flight_qps = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for t in tickets:
            c.do_get(fl.Ticket(t)).read_all()
        flight_qps.append(len(tickets) / (time.perf_counter() - t0))
    stop(p)
    qfile = os.path.join(work, "queries.fbin")
    with open(qfile, "wb") as f:
        f.write(np.array(qs.shape, dtype=np.uint32).tobytes())
        f.write(qs.astype(np.float32).tobytes())
    out = subprocess.run([args.search_dir, d, "s", qfile, "10", "64", str(args.rounds)],
                         capture_output=True, text=True, check=True).stdout
    inproc = statistics.median(float(x) for x in out.split())
    fq = statistics.median(flight_qps)
    print(f"\nsearch ({args.search_rows} rows, k=10, L=64, one client, sequential):")
    print(f"| over Flight QPS | in-process QPS | ratio |\n|---:|---:|---:|")
    print(f"| {fq:.0f} | {inproc:.0f} | {fq / inproc:.2f} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
