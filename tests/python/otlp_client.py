"""An OTLP/gRPC trace receiver (the official OpenTelemetry protobuf service, via grpcio) and a
pyarrow client that sends W3C trace context, for tests/serve_tracing.rs.

Protocol on stdin/stdout: prints `otlp PORT` once the receiver listens; reads the Flight URI of
a `quiver serve` exporting to it; puts rows, flushes and searches with a `traceparent` header;
prints `done`; reads a line (the server has been stopped, flushing its spans); then checks the
spans received: the server's call spans continue the client's trace (same trace id, parented on
the client's span), and the engine's spans nest under them (insert and its WAL wait under the
DoPut, the search and a segment it read under the DoGet). Exits non-zero with the reason.
"""
import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.flight as fl
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

SPANS = []
LOCK = threading.Lock()


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        with LOCK:
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    SPANS.extend(ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def fail(msg):
    print("FAIL:", msg, file=sys.stderr, flush=True)
    sys.exit(1)


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"otlp {port}", flush=True)
    uri = sys.stdin.readline().strip()

    trace_id, span_id = os.urandom(16), os.urandom(8)
    parent = f"00-{trace_id.hex()}-{span_id.hex()}-01"
    opts = fl.FlightCallOptions(headers=[(b"traceparent", parent.encode())])
    client = fl.FlightClient(uri)
    rng = np.random.default_rng(5)
    v = rng.standard_normal((2000, 8)).astype(np.float32)
    t = pa.table({"id": pa.array(range(2000), pa.uint64()),
                  "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), 8)})
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("t"), t.schema, options=opts)
    writer.write_table(t)
    writer.done_writing()
    reader.read()
    writer.close()
    list(client.do_action(fl.Action("flush", b"{}"), options=opts))
    ticket = fl.Ticket(json.dumps({"search": {"dataset": "t", "vector": v[3].tolist(), "k": 5}}).encode())
    got = client.do_get(ticket, options=opts).read_all()
    if got.column("id")[0].as_py() != 3:
        fail("the search did not find its own row")
    print("done", flush=True)
    sys.stdin.readline()

    deadline = time.time() + 20
    while True:
        with LOCK:
            spans = [s for s in SPANS if s.trace_id == trace_id]
        names = {s.name for s in spans}
        if {"do_put", "insert", "wal_wait", "do_get", "search", "segment"} <= names:
            break
        if time.time() > deadline:
            with LOCK:
                seen = sorted({s.name for s in SPANS})
            fail(f"spans of the client's trace: {sorted(names)}; all spans: {seen}")
        time.sleep(0.2)
    by_id = {s.span_id: s for s in spans}

    def ancestors(s):
        out = []
        while s.parent_span_id in by_id:
            s = by_id[s.parent_span_id]
            out.append(s.name)
        return out, s.parent_span_id

    for name in ["do_put", "do_get", "do_action"]:
        calls = [s for s in spans if s.name == name]
        if not calls or any(s.parent_span_id != span_id for s in calls):
            fail(f"{name}: not a child of the client's span {span_id.hex()}")
    checks = {"insert": "do_put", "wal_wait": "do_put", "search": "do_get", "segment": "search"}
    for child, under in checks.items():
        for s in (s for s in spans if s.name == child):
            chain, _ = ancestors(s)
            if under not in chain:
                fail(f"{child} is under {chain}, not under {under}")
    print(f"tracing ok: {len(spans)} spans in the client's trace: {sorted(names)}")
    server.stop(0)


if __name__ == "__main__":
    main()
