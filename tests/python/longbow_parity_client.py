"""Longbow's clients against `quiver serve` (tests/flight_longbow_parity.rs), with the exact
ticket and action bodies Longbow's SDK (longbowclientsdk/src/longbow/client.py) and scripts
(scripts/ops_test.py, scripts/perf_test.py) send. Each check names the incompatibility it pins:

  string_filters   Longbow sends every filter value as a string ("value": "100" on an integer
                   column); it must be converted to the column's type, and one that does not
                   parse refused naming the column, the value and the type
  duplicate_ids    an id twice in one batch is accepted and the last row wins (as in Longbow)
  string_widths    a collection made from utf8 columns takes large_string ones (pandas 3) and
                   the reverse; values read back unchanged
  hybrid_keys      text_query / alpha must not silently return pure vector results
  readiness        check_readiness is BUSY while rows wait in memory; wait-for-indexing returns
                   only when nothing waits; then READY
  search_by_id     VectorSearchByID answers Longbow's {ids, scores} JSON, ids as ints or strings
  exchange_search  DoExchange with the VectorSearch (or search) command and query rows
  integer_vectors  int16..uint64 vectors stored exactly as float32, or refused by value
  namespaces       CreateNamespace without a dimension refused saying why; Longbow-only
                   actions Unimplemented by name, not listed
  schema_evolution a put with a new column adds it (earlier rows null); a changed type is
                   still refused
  tenant_filters   the SDK's filters on a string tenant column of an indexed collection, each
                   tenant asked once (answered from the segment's label index: stats say so),
                   equal brute force; a tenant absent is an empty result, not an error

    longbow_parity_client.py URI

Exits non-zero (with the reason) on any mismatch; numpy is the brute-force oracle.
"""
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

D = 16


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def vectors(v):
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), type=pa.float32()), D)


def put(client, name, columns):
    t = pa.table(columns)
    # The SDK's _upload_batch: one DoPut per table, then one read of the acknowledgement.
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(name), t.schema)
    writer.write_table(t)
    writer.done_writing()
    reader.read()
    writer.close()


def do_get(client, ticket):
    return client.do_get(fl.Ticket(json.dumps(ticket).encode())).read_all()


def action(client, kind, body):
    got = client.do_action(fl.Action(kind, json.dumps(body).encode()))
    return [json.loads(r.body.to_pybytes()) for r in got]


def expect_error(what, f, words):
    try:
        f()
    except (fl.FlightError, pa.ArrowException) as e:
        text = str(e)
        for w in words:
            if w not in text:
                fail(f"{what}: the error lacks {w!r}: {text}")
        return text
    fail(f"{what}: no error")


def brute(ids, vecs, q, k, keep):
    d = ((vecs - q) ** 2).sum(axis=1)
    order = [i for i in np.argsort(d, kind="stable") if keep(i)]
    return [int(ids[i]) for i in order[:k]]


def check_string_filters(client, rng):
    n = 2000
    ids = np.arange(n, dtype=np.int64)
    v = rng.standard_normal((n, D)).astype(np.float32)
    price = (np.arange(n) % 97).astype(np.float64) / 4
    active = np.arange(n) % 3 == 0
    put(client, "lb_filters", {"id": ids, "vector": vectors(v), "price": price,
                               "active": pa.array(active)})
    cases = [  # (Longbow filters, the rows that pass)
        ([{"field": "id", "op": "lt", "value": "100"}], ids < 100),
        ([{"field": "id", "operator": ">=", "value": "1990"}], ids >= 1990),  # ops_test form
        ([{"field": "price", "op": "le", "value": "2.5"}], price <= 2.5),
        ([{"field": "active", "op": "eq", "value": "true"},
          {"field": "id", "op": "lt", "value": "300"}], active & (ids < 300)),
    ]
    def check(filters, passing, queries):
        for q in queries:
            # The SDK's search(): {"search": {"dataset", "vector", "k", "filters"}}.
            t = {"search": {"dataset": "lb_filters", "vector": q.tolist(), "k": 10,
                            "filters": filters}}
            got = do_get(client, t).column("id").to_pylist()
            want = brute(ids, v, q, 10, lambda i: passing[i])
            if got != want:
                fail(f"search with {filters}: got {got}, brute force {want}")
        # The SDK's download_arrow(): {"name", "filters"}.
        got = do_get(client, {"name": "lb_filters", "filters": filters}).column("id").to_pylist()
        if sorted(got) != [int(i) for i in ids[passing]]:
            fail(f"scan with {filters}: {len(got)} rows, expected {int(passing.sum())}")

    for filters, passing in cases:
        noise = rng.standard_normal((5, D)).astype(np.float32) * 0.1
        check(filters, passing, v[rng.integers(n, size=5)] + noise)
    # Quiver's nested form (docs/flight.md) beside Longbow's list: OR, NOT, IN, null tests.
    nested = [
        ([{"or": [{"field": "id", "op": "<", "value": 50},
                  {"field": "price", "op": ">=", "value": "23.5"}]}],
         (ids < 50) | (price >= 23.5)),
        ([{"not": {"field": "id", "op": "in", "value": list(range(0, 2000, 2))}},
          {"field": "active", "op": "=", "value": True}], (ids % 2 == 1) & active),
        ([{"and": [{"field": "price", "op": "is_not_null"},
                   {"not": {"or": [{"field": "id", "op": ">", "value": 100},
                                   {"field": "active", "op": "=", "value": False}]}}]}],
         (ids <= 100) & active),
    ]
    for filters, passing in nested:
        check(filters, passing, [v[int(np.flatnonzero(passing)[0])]])
    bad = {"search": {"dataset": "lb_filters", "vector": [0.0] * D, "k": 1,
                      "filters": [{"field": "id", "op": "lt", "value": "ten"}]}}
    expect_error("an unparsable value", lambda: do_get(client, bad),
                 ['"id"', '"ten"', "Int64"])


def check_tenant_filters(client, rng):
    n = 6000  # over the engine's min_index_rows (4096): the segment gets an index
    ids = np.arange(n, dtype=np.int64)
    v = rng.standard_normal((n, D)).astype(np.float32)
    tenant = np.array([f"tenant-{i * 7 % 30}" for i in range(n)])
    active = np.arange(n) % 4 != 0
    put(client, "lb_tenants", {"id": ids, "vector": vectors(v), "tenant": pa.array(tenant),
                               "active": pa.array(active)})
    if action(client, "wait-for-indexing", {"name": "lb_tenants"})[0]["status"] != "complete":
        fail("wait-for-indexing on lb_tenants")
    before = action(client, "stats", {"name": "lb_tenants"})[0]["filter_rows"]
    cases = [([{"field": "tenant", "op": "eq", "value": f"tenant-{t}"}], tenant == f"tenant-{t}")
             for t in range(30)]
    cases.append(([{"field": "tenant", "op": "eq", "value": "tenant-3"},
                   {"field": "active", "op": "eq", "value": "true"}],
                  (tenant == "tenant-3") & active))
    cases.append(([{"field": "tenant", "op": "in", "value": ["tenant-1", "tenant-2"]}],
                  (tenant == "tenant-1") | (tenant == "tenant-2")))
    for filters, passing in cases:
        q = v[int(rng.integers(n))] + rng.standard_normal(D).astype(np.float32) * 0.1
        # A list longer than the rows that pass: each is ranked exactly.
        t = {"search": {"dataset": "lb_tenants", "vector": q.tolist(), "k": 10,
                        "list_size": 1000, "filters": filters}}
        got = do_get(client, t).column("id").to_pylist()
        want = brute(ids, v, q, 10, lambda i: passing[i])
        if got != want:
            fail(f"search with {filters}: got {got}, brute force {want}")
    after = action(client, "stats", {"name": "lb_tenants"})[0]["filter_rows"]
    if after["label_index"] - before["label_index"] < 30:
        fail(f"tenant filters not answered from the label index: {before} -> {after}")
    t = {"search": {"dataset": "lb_tenants", "vector": v[0].tolist(), "k": 10,
                    "filters": [{"field": "tenant", "op": "eq", "value": "nobody"}]}}
    if do_get(client, t).num_rows != 0:
        fail("a tenant that does not exist returned rows")


def check_duplicate_ids(client, rng):
    v = rng.standard_normal((6, D)).astype(np.float32)
    ids = np.array([1, 2, 1, 3, 2, 1], dtype=np.int64)
    put(client, "lb_dups", {"id": ids, "vector": vectors(v), "tag": [f"r{i}" for i in range(6)]})
    got = do_get(client, {"get": {"dataset": "lb_dups", "ids": [1, 2, 3]}})
    if got.column("id").to_pylist() != [1, 2, 3]:
        fail(f"get after a batch with repeated ids: {got.column('id').to_pylist()}")
    if got.column("tag").to_pylist() != ["r5", "r4", "r3"]:
        fail(f"the last row of each id must win: {got.column('tag').to_pylist()}")
    stored = np.asarray(got.column("vector").combine_chunks().flatten()).reshape(-1, D)
    if not np.array_equal(stored, v[[5, 4, 3]]):
        fail("the stored vectors are not the last rows'")
    scan = do_get(client, {"name": "lb_dups"})
    if scan.num_rows != 3:
        fail(f"a scan returned {scan.num_rows} rows for 3 ids")


def check_string_widths(client, rng):
    for first, second in [(pa.string(), pa.large_string()), (pa.large_string(), pa.string())]:
        name = f"lb_{first}_{second}".replace(" ", "")
        v = rng.standard_normal((4, D)).astype(np.float32)
        put(client, name, {"id": pa.array([1, 2], pa.uint64()), "vector": vectors(v[:2]),
                           "category": pa.array(["a", None], first)})
        put(client, name, {"id": pa.array([3, 4], pa.uint64()), "vector": vectors(v[2:]),
                           "category": pa.array(["c", "d"], second)})
        got = do_get(client, {"get": {"dataset": name, "ids": [1, 2, 3, 4]}})
        if got.column("category").to_pylist() != ["a", None, "c", "d"]:
            fail(f"{first} then {second}: {got.column('category').to_pylist()}")
        if got.schema.field("category").type != first:
            fail(f"stored as {got.schema.field('category').type}, created as {first}")


def check_hybrid_keys(client):
    base = {"dataset": "lb_filters", "vector": [0.0] * D, "k": 3}
    for extra, key in [({"text_query": "red shoes"}, "text_query"),
                       ({"text_query": "red", "alpha": 0.5}, "text_query"),
                       ({"alpha": 0.3}, "alpha"),
                       ({"graph_alpha": 0.5}, "graph_alpha")]:
        t = {"search": dict(base, **extra)}
        text = expect_error(f"search with {extra}", lambda: do_get(client, t),
                            [key, "hybrid"])
        if "unimplemented" not in text.lower():
            fail(f"{extra}: expected Unimplemented, got {text}")
        expect_error(f"VectorSearch with {extra}",
                     lambda: list(client.do_action(
                         fl.Action("VectorSearch", json.dumps(dict(base, **extra)).encode()))),
                     [key])
    # Keys that do not change the answer are still tolerated.
    t = {"search": dict(base, local_only=True, alpha=1.0, text_query="")}
    if do_get(client, t).num_rows != 3:
        fail("a search with neutral Longbow keys failed")


def check_readiness(client, rng):
    n = 5000  # over the engine's min_index_rows (4096): the flushed rows get an index
    v = rng.standard_normal((n, D)).astype(np.float32)
    put(client, "lb_ready", {"id": np.arange(n, dtype=np.int64), "vector": vectors(v)})
    status = action(client, "check_readiness", {"name": "lb_ready"})[0]["status"]
    if status != "BUSY":
        fail(f"check_readiness right after a put: {status}, expected BUSY (rows in memory)")
    done = action(client, "wait-for-indexing", {"name": "lb_ready"})[0]
    if done["status"] != "complete":
        fail(f"wait-for-indexing: {done}")
    stats = action(client, "stats", {"name": "lb_ready"})[0]
    if stats["memtable_rows"] != 0 or stats["indexed_segments"] != stats["segments"]:
        fail(f"wait-for-indexing returned with work left: {stats}")
    status = action(client, "check_readiness", {"name": "lb_ready"})[0]["status"]
    if status != "READY":
        fail(f"check_readiness after wait-for-indexing: {status}")


def check_search_by_id(client, rng):
    n = 500
    ids = np.arange(n, dtype=np.int64)
    v = rng.integers(-40, 40, size=(n, D)).astype(np.float32)
    put(client, "lb_byid", {"id": ids, "vector": vectors(v)})
    for qid in [0, 17, 499]:
        # The SDK's search_by_id sends the id as given; perf_test --test-id-search as a string;
        # ops_test similar as an int.
        for sent in [qid, str(qid)]:
            got = action(client, "VectorSearchByID", {"dataset": "lb_byid", "id": sent, "k": 5})[0]
            want = brute(ids, v, v[qid], 5, lambda i: True)
            d = np.sqrt(((v[want] - v[qid]) ** 2).sum(axis=1))
            if [int(i) for i in got["ids"]] != want and not np.allclose(
                    sorted(got["distances"]), sorted(d), atol=1e-4):
                fail(f"VectorSearchByID {sent!r}: got {got['ids']}, brute force {want}")
            if len(got["scores"]) != 5 or got["distances"][0] > 1e-6:
                fail(f"VectorSearchByID {sent!r}: the row itself must come first: {got}")
    expect_error("an absent id", lambda: action(client, "VectorSearchByID",
                                                {"dataset": "lb_byid", "id": "9999", "k": 5}),
                 ["9999", "lb_byid"])


def check_exchange_search(client, rng):
    n = 500
    ids = np.arange(n, dtype=np.int64)
    v = rng.standard_normal((n, D)).astype(np.float32)
    put(client, "lb_xsearch", {"id": ids, "vector": vectors(v)})
    for command, list_type in [(b"VectorSearch", pa.list_(pa.float32(), D)),
                               (b"search", pa.list_(pa.float32(), D)),
                               (b"VectorSearch", pa.list_(pa.float32()))]:
        queries = v[rng.integers(n, size=3)] + 0.01
        # benchmark_comprehensive.py's form: query_vector, k (int32), dataset; one row a query.
        if isinstance(list_type, pa.FixedSizeListType):
            qv = pa.FixedSizeListArray.from_arrays(pa.array(queries.reshape(-1)), type=list_type)
        else:
            qv = pa.array([q.tolist() for q in queries], type=list_type)
        table = pa.table({"query_vector": qv, "k": pa.array([4, 4, 4], pa.int32()),
                          "dataset": ["lb_xsearch"] * 3})
        writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(command))
        writer.begin(table.schema)
        writer.write_table(table)
        writer.done_writing()
        got = reader.read_all()
        writer.close()
        want = sum((brute(ids, v, q, 4, lambda i: True) for q in queries), [])
        if got.column("id").to_pylist() != want:
            fail(f"DoExchange {command}: got {got.column('id').to_pylist()}, brute force {want}")
    # ops_test's "fetch" command is not a form Quiver has: refused, naming the accepted ones.
    def fetch():
        writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(b"fetch"))
        t = pa.table({"data": ["ping"]})
        writer.begin(t.schema)
        writer.write_table(t)
        writer.done_writing()
        reader.read_all()
    expect_error("DoExchange fetch", fetch, ["ingest", "VectorSearch"])


def check_integer_vectors(client, rng):
    for t in [pa.int16(), pa.int32(), pa.int64(), pa.uint16(), pa.uint32(), pa.uint64()]:
        name = f"lb_int_{t}"
        v = rng.integers(0, 3000, size=(50, D))
        col = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), type=t), D)
        t_ = pa.table({"id": np.arange(50, dtype=np.int64), "vector": col})
        writer, reader = client.do_put(fl.FlightDescriptor.for_path(name), t_.schema)
        writer.write_table(t_)
        writer.done_writing()
        ack = json.loads(reader.read().to_pybytes())
        writer.close()
        if ack.get("element_type") != "float32":
            fail(f"{t}: the ack does not say what the vectors are stored as: {ack}")
        got = do_get(client, {"get": {"dataset": name, "ids": list(range(50))}})
        stored = np.asarray(got.column("vector").combine_chunks().flatten()).reshape(-1, D)
        if not np.array_equal(stored, v.astype(np.float32)):
            fail(f"{t}: the stored values differ from those sent")
        q = v[3].astype(np.float32)
        t2 = {"search": {"dataset": name, "vector": q.tolist(), "k": 1}}
        if do_get(client, t2).column("id").to_pylist() != [3]:
            fail(f"{t}: a search for row 3's vector")
    big = np.full((1, D), 1 << 25, dtype=np.int64)
    col = pa.FixedSizeListArray.from_arrays(pa.array(big.reshape(-1)), D)
    expect_error("an integer float32 cannot hold", lambda: put(
        client, "lb_int_int64", {"id": np.array([99], dtype=np.int64), "vector": col}),
        ["33554432", "2^24"])


def check_namespaces_and_longbow_only_actions(client):
    # The SDK's create_namespace: {"name", "overwrite"} with no dimension.
    expect_error("CreateNamespace without a dimension", lambda: action(
        client, "CreateNamespace", {"name": "lb_ns", "overwrite": False}), ["dim", "DoPut"])
    got = action(client, "ListNamespaces", {})[0]
    if "lb_byid" not in got["namespaces"] or got["count"] != len(got["namespaces"]):
        fail(f"ListNamespaces: {got}")
    listed = {a.type for a in client.list_actions()}
    for name, body in [("add-edge", {"dataset": "lb_byid", "subject": 1, "predicate": "p",
                                     "object": 2, "weight": 1.0}),
                       ("traverse-graph", {"dataset": "lb_byid", "start": 1, "max_hops": 2}),
                       ("GetGraphStats", {"dataset": "lb_byid"}),
                       ("cluster-status", {}),
                       ("MeshIdentity", {})]:
        text = expect_error(name, lambda: action(client, name, body), [name, "Longbow"])
        if "unimplemented" not in text.lower():
            fail(f"{name}: expected Unimplemented, got {text}")
        if name in listed:
            fail(f"ListActions lists {name}, which Quiver does not provide")
    text = expect_error("a made-up action", lambda: action(client, "frobnicate", {}),
                        ["frobnicate", "ListActions"])
    if "unimplemented" in text.lower():
        fail(f"an unknown action is not Unimplemented: {text}")


def check_schema_evolution(client, rng):
    v = rng.standard_normal((6, D)).astype(np.float32)
    put(client, "lb_evolve", {"id": pa.array([1, 2], pa.uint64()), "vector": vectors(v[:2]),
                              "tag": ["a", "b"]})
    action(client, "flush", {})  # one row set in a segment written before the column existed
    put(client, "lb_evolve", {"id": pa.array([3], pa.uint64()), "vector": vectors(v[2:3]),
                              "tag": ["c"]})
    # A put with a new column adds it, nullable: the earlier rows read null in it.
    put(client, "lb_evolve", {"id": pa.array([4, 5], pa.uint64()), "vector": vectors(v[3:5]),
                              "tag": ["d", "e"], "color": ["red", None]})
    # A later put may leave it out.
    put(client, "lb_evolve", {"id": pa.array([6], pa.uint64()), "vector": vectors(v[5:6]),
                              "tag": ["f"]})
    got = do_get(client, {"get": {"dataset": "lb_evolve", "ids": [1, 2, 3, 4, 5, 6]}})
    if got.column("color").to_pylist() != [None, None, None, "red", None, None]:
        fail(f"the added column: {got.column('color').to_pylist()}")
    t = {"search": {"dataset": "lb_evolve", "vector": v[3].tolist(), "k": 6,
                    "filters": [{"field": "color", "op": "eq", "value": "red"}],
                    "columns": ["color"]}}
    if do_get(client, t).column("id").to_pylist() != [4]:
        fail("a filter on the added column")
    stats = action(client, "stats", {"name": "lb_evolve"})[0]
    if [a["name"] for a in stats["attributes"]] != ["tag", "color"]:
        fail(f"the schema after the put: {stats['attributes']}")
    # A changed type is still refused, and nothing of the batch is stored.
    expect_error("a changed type", lambda: put(
        client, "lb_evolve", {"id": pa.array([7], pa.uint64()), "vector": vectors(v[:1]),
                              "tag": pa.array([7], pa.int32())}), ["tag"])
    if do_get(client, {"get": {"dataset": "lb_evolve", "ids": [7]}}).num_rows != 0:
        fail("a refused batch left a row behind")


def main():
    client = fl.FlightClient(sys.argv[1])
    rng = np.random.default_rng(11)
    check_string_filters(client, rng)
    print("string filters ok")
    check_tenant_filters(client, rng)
    print("tenant filters ok")
    check_duplicate_ids(client, rng)
    print("duplicate ids ok")
    check_string_widths(client, rng)
    print("string widths ok")
    check_hybrid_keys(client)
    print("hybrid keys ok")
    check_readiness(client, rng)
    print("readiness ok")
    check_search_by_id(client, rng)
    print("search by id ok")
    check_exchange_search(client, rng)
    print("DoExchange search ok")
    check_integer_vectors(client, rng)
    print("integer vectors ok")
    check_namespaces_and_longbow_only_actions(client)
    print("namespaces and Longbow-only actions ok")
    check_schema_evolution(client, rng)
    print("schema evolution ok")


if __name__ == "__main__":
    main()
