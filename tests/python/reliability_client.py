"""pyarrow.flight probes of `quiver serve` for defects a hostile or unlucky user found
(tests/flight_reliability.rs starts the server with --max-message-mb 1 and passes its pid).

    reliability_client.py URI SERVER_PID

Each check prints its name and exits non-zero with the reason on failure:
  reserved   attribute names Quiver uses in results (_distance, score, distance) are refused
  float32    a float32 column storing 0.1 matches `= 0.1` and `<= 0.1`; a 1e20 vector is refused
  get        get of absent ids, or of none, after a flush returns an empty table
  scan       a scan of 5 MB works when messages are limited to 1 MiB
  exchange   DoExchange ingest from pyarrow (descriptor alone in the first message)
  echo       a 10 KiB collection or action name does not overflow the client's metadata limit
  utf8       a descriptor path that is not UTF-8 is INVALID_ARGUMENT, not INTERNAL
  stream     VectorSearch of many large results streams: the server's peak RSS grows by far
             less than the results' total size
"""
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

D = 64


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def table(ids, vecs, **attrs):
    cols = {"id": pa.array(np.asarray(ids, dtype=np.uint64)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), vecs.shape[1])}
    cols.update(attrs)
    return pa.table(cols)


def put(client, name, t):
    w, r = client.do_put(fl.FlightDescriptor.for_path(name), t.schema)
    w.write_table(t, max_chunksize=2000)  # each message under the server's 1 MiB limit
    w.done_writing()
    r.read()
    w.close()


def expect_error(what, fn, kinds, words):
    try:
        fn()
    except kinds as e:
        text = str(e)
        for w in words:
            if w not in text:
                fail(f"{what}: error lacks {w!r}: {text[:300]}")
        return text
    except Exception as e:  # noqa: BLE001 - the wrong kind of error is the failure reported
        fail(f"{what}: expected {kinds}, got {type(e).__name__}: {str(e)[:300]}")
    fail(f"{what}: no error")


def get(client, ticket):
    return client.do_get(fl.Ticket(json.dumps(ticket).encode())).read_all()


def action(client, kind, body):
    return [r.body.to_pybytes() for r in client.do_action(fl.Action(kind, json.dumps(body).encode()))]


def check_reserved(client, rng):
    for col in ["_distance", "score", "distance"]:
        v = rng.standard_normal((4, D)).astype(np.float32)
        t = table(range(4), v, **{col: pa.array(np.ones(4, dtype=np.float32))})
        expect_error(f"attribute {col}", lambda: put(client, "reserved_" + col.strip("_"), t),
                     (pa.ArrowInvalid,), ["reserved", col])


def check_float32(client, rng):
    v = rng.standard_normal((3, D)).astype(np.float32)
    price = pa.array(np.array([0.1, 0.2, 0.3], dtype=np.float32))
    put(client, "prices", table([1, 2, 3], v, price=price))
    for op, want in [("=", [1]), ("<=", [1]), ("<", []), (">", [2, 3])]:
        t = {"search": {"dataset": "prices", "vector": v[0].tolist(), "k": 3,
                        "filters": [{"field": "price", "op": op, "value": 0.1}]}}
        got = sorted(get(client, t).column("id").to_pylist())
        if got != want:
            fail(f"price {op} 0.1: got ids {got}, expected {want}")
    huge = v.copy()
    huge[0, 3] = 1e20
    expect_error("a 1e20 vector", lambda: put(client, "prices", table([9, 10, 11], huge)),
                 (pa.ArrowInvalid,), ["largest magnitude"])
    got = get(client, {"get": {"dataset": "prices", "ids": [9, 10, 11]}})
    if got.num_rows != 0:
        fail("a refused batch left rows behind")


def check_get_after_flush(client, rng):
    v = rng.standard_normal((50, D)).astype(np.float32)
    put(client, "gets", table(range(50), v))
    action(client, "flush", {})
    for ids, want in [([], []), ([1000, 1001], []), ([1000, 7], [7])]:
        got = get(client, {"get": {"dataset": "gets", "ids": ids}})
        if got.column("id").to_pylist() != want:
            fail(f"get {ids}: got {got.column('id').to_pylist()}, expected {want}")


def check_scan_small_messages(client, rng):
    n = 20_000
    v = rng.standard_normal((n, D)).astype(np.float32)
    put(client, "big", table(range(n), v))
    t = client.do_get(fl.Ticket(b"big")).read_all()
    if t.num_rows != n:
        fail(f"scan returned {t.num_rows} of {n} rows with 1 MiB messages")
    got = np.asarray(t.column("vector").combine_chunks().flatten()).reshape(-1, D)
    order = np.argsort(np.asarray(t.column("id")))
    if not np.array_equal(got[order], v):
        fail("scan vectors differ")
    return v


def check_exchange(client, rng):
    v = rng.standard_normal((30, D)).astype(np.float32)
    t = table(range(100, 130), v)
    writer, reader = client.do_exchange(fl.FlightDescriptor.for_path("ingest", "xchg"))
    acks = []
    with writer:
        writer.begin(t.schema)
        for b in t.to_batches(max_chunksize=10):
            writer.write_batch(b)
            chunk = reader.read_chunk()
            acks.append(json.loads(chunk.app_metadata.to_pybytes()))
        writer.done_writing()
    if len(acks) != 3:
        fail(f"DoExchange: {len(acks)} acknowledgements for 3 batches: {acks}")
    got = get(client, {"get": {"dataset": "xchg", "ids": list(range(100, 130))}})
    if sorted(got.column("id").to_pylist()) != list(range(100, 130)):
        fail("DoExchange rows missing")


def check_echo(client):
    long_name = "n" * 10_240
    t = {"search": {"dataset": long_name, "vector": [0.0] * D, "k": 1}}
    text = expect_error("a 10 KiB collection name", lambda: get(client, t),
                        (fl.FlightError, pa.ArrowException), ["no collection"])
    if "metadata size" in text or len(text) > 4096:
        fail(f"the echoed name overflowed: {text[:200]}")
    text = expect_error("a 10 KiB action name", lambda: action(client, long_name, {}),
                        (pa.ArrowInvalid,), ["unknown action"])
    if len(text) > 4096:
        fail("the echoed action name was not cut")


def check_utf8(client):
    d = fl.FlightDescriptor.for_path(b"\xff\xfe")
    expect_error("a non-UTF-8 path", lambda: client.get_flight_info(d), (pa.ArrowInvalid,), [])


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    fail("no VmHWM")


def vector_search(client, body):
    return client.do_action(fl.Action("VectorSearch", json.dumps(body).encode()))


def check_streamed_results(client, pid, v):
    # One result larger than a message (10,000 rows of 64 floats > 1 MiB) is refused by name.
    body = {"dataset": "big", "vectors": [v[0].tolist()], "k": 10_000, "include_vectors": True}
    expect_error("a result over the message limit", lambda: list(vector_search(client, body)),
                 (pa.ArrowException,), ["query 0", "over the message limit"])
    k = 3000  # about 0.8 MiB per result
    queries = [v[i].tolist() for i in range(150)]
    before = peak_rss_kib(pid)
    body = {"dataset": "big", "vectors": queries, "k": k, "include_vectors": True}
    total = 0
    for i, r in enumerate(vector_search(client, body)):
        t = pa.ipc.open_stream(r.body.to_pybytes()).read_all()
        if t.num_rows != k or t.column("id")[0].as_py() != i:
            fail(f"query {i}: {t.num_rows} rows, first id {t.column('id')[0]}")
        total += r.body.size
    grown = (peak_rss_kib(pid) - before) * 1024
    if total < 100 << 20:
        fail(f"results total only {total} bytes; the check needs more")
    if grown > total // 3:
        fail(f"peak RSS grew by {grown >> 20} MiB for {total >> 20} MiB of results: not streamed")
    print(f"stream: {total >> 20} MiB of results, server peak RSS +{grown >> 20} MiB")


def main():
    uri, pid = sys.argv[1], int(sys.argv[2])
    client = fl.FlightClient(uri)
    rng = np.random.default_rng(7)
    check_reserved(client, rng)
    print("reserved ok")
    check_float32(client, rng)
    print("float32 ok")
    check_get_after_flush(client, rng)
    print("get ok")
    v = check_scan_small_messages(client, rng)
    print("scan ok")
    check_exchange(client, rng)
    print("exchange ok")
    check_echo(client)
    print("echo ok")
    check_utf8(client)
    print("utf8 ok")
    check_streamed_results(client, pid, v)
    print("all ok")


if __name__ == "__main__":
    main()
