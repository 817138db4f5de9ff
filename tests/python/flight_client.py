"""pyarrow.flight client for the end-to-end test of `quiver serve` (tests/flight_pyarrow.rs).

    flight_client.py write  URI STATE_DIR   # put, search, scan, delete; saves what it expects
    flight_client.py verify URI STATE_DIR   # after a restart: everything acknowledged is there

Uses only what a Longbow user's script uses: FlightClient.do_put with a FixedSizeList<float32>
vector column and string ids, JSON tickets for DoGet, DoAction with JSON bodies. Exits non-zero
(with the reason) on any mismatch.
"""
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

N, D, K = 3000, 128, 10
NAME = "pyarrow_e2e"


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def search(client, q, k=K):
    t = {"search": {"dataset": NAME, "vector": q.tolist(), "k": k, "columns": ["group"],
                    "local_only": True}}  # a Longbow key that changes nothing: ignored
    return client.do_get(fl.Ticket(json.dumps(t).encode())).read_all()


def brute(ids, vecs, q, k=K):
    d = ((vecs - q) ** 2).sum(axis=1)
    order = np.argsort(d, kind="stable")[:k]
    return [ids[i] for i in order]


def check_search(client, ids, vecs, rng, rounds=20):
    for r in range(rounds):
        q = vecs[rng.integers(len(ids))] + rng.standard_normal(D).astype(np.float32) * 0.05
        got = search(client, q)
        want = brute(ids, vecs, q)
        if got.column("id").to_pylist() != want:
            fail(f"search {r}: got {got.column('id').to_pylist()}, brute force {want}")
        if got.schema.names[:3] != ["id", "score", "distance"]:
            fail(f"search columns {got.schema.names}")


def check_scan(client, ids, vecs, groups):
    t = client.do_get(fl.Ticket(NAME.encode())).read_all()
    if t.num_rows != len(ids):
        fail(f"scan returned {t.num_rows} rows, expected {len(ids)}")
    got_ids = t.column("id").to_pylist()
    order = np.argsort(np.array(got_ids, dtype=object))
    want_order = np.argsort(np.array(ids, dtype=object))
    got_vecs = np.asarray(t.column("vector").combine_chunks().flatten()).reshape(-1, D)
    got_groups = np.asarray(t.column("group"))
    for a, b in zip(order, want_order):
        if got_ids[a] != ids[b]:
            fail(f"scan id {got_ids[a]} != {ids[b]}")
        if not np.array_equal(got_vecs[a], vecs[b]):
            fail(f"scan vector of {ids[b]} differs")
        if got_groups[a] != groups[b]:
            fail(f"scan group of {ids[b]} differs")


def write(uri, state):
    client = fl.FlightClient(uri)
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((N, D)).astype(np.float32)
    ids = [f"doc-{i:05d}" for i in range(N)]
    groups = np.arange(N, dtype=np.int64) % 7
    vec_col = pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel(), pa.float32()), D)
    table = pa.table({"id": pa.array(ids, pa.string()), "vector": vec_col, "group": groups})
    schema = table.schema.with_metadata({"longbow.metric": "euclidean"})
    table = table.replace_schema_metadata(schema.metadata)

    writer, reader = client.do_put(fl.FlightDescriptor.for_path(NAME), table.schema)
    acked = 0
    for i, batch in enumerate(table.to_batches(max_chunksize=1000)):
        writer.write_batch(batch)
        ack = json.loads(reader.read().to_pybytes())
        if ack["rows"] != batch.num_rows or ack["collection"] != NAME:
            fail(f"ack {ack} for a batch of {batch.num_rows}")
        acked += ack["rows"]
        if i == 1:  # half in a Parquet segment, half in memory
            list(client.do_action(fl.Action("flush", b"")))
    writer.close()
    if acked != N:
        fail(f"acknowledged {acked} rows of {N}")

    check_search(client, ids, vecs, rng)
    check_scan(client, ids, vecs, groups)

    # Delete: Longbow's one-id form (the id as a string) and Quiver's list form.
    deleted = [ids[i] for i in rng.choice(N, 60, replace=False)]
    for d in deleted[:5]:
        list(client.do_action(fl.Action("delete", json.dumps({"dataset": NAME, "id": d}).encode())))
    body = json.dumps({"dataset": NAME, "ids": deleted[5:]}).encode()
    list(client.do_action(fl.Action("delete", body)))
    keep = np.array([i not in set(deleted) for i in ids])
    live_ids = [i for i, k in zip(ids, keep) if k]
    check_scan(client, live_ids, vecs[keep], groups[keep])
    for d in deleted[:10]:
        q = vecs[ids.index(d)]
        if d in search(client, q).column("id").to_pylist():
            fail(f"deleted id {d} came back from a search")
    check_search(client, live_ids, vecs[keep], rng)

    info = client.get_flight_info(fl.FlightDescriptor.for_path(NAME))
    if info.total_records != len(live_ids):
        fail(f"GetFlightInfo says {info.total_records} rows, expected {len(live_ids)}")
    np.savez(f"{state}/expected.npz", ids=np.array(live_ids), vecs=vecs[keep], groups=groups[keep])
    print(f"ok: wrote {N}, deleted {len(deleted)}")


def verify(uri, state):
    client = fl.FlightClient(uri)
    e = np.load(f"{state}/expected.npz")
    ids = [str(i) for i in e["ids"]]
    check_scan(client, ids, e["vecs"], e["groups"])
    check_search(client, ids, e["vecs"], np.random.default_rng(8))
    print(f"ok: {len(ids)} rows after restart")


if __name__ == "__main__":
    phase, uri, state = sys.argv[1:4]
    {"write": write, "verify": verify}[phase](uri, state)
