"""pyarrow.flight client for tests/flight_roundtrip.rs: every vector element type and id type
put through DoPut and read back through a DoGet scan, compared byte for byte.

    roundtrip_client.py write  URI STATE_DIR  # create, put, scan; saves what it expects
    roundtrip_client.py verify URI STATE_DIR  # after a kill -9: scan again, put one more batch

Most batches take the path that logs the received IPC message as it is; three cases take the
re-encoding path on purpose: float64 vectors into a float32 collection (converted on the
server), a zstd-compressed IPC stream, and ids sent as int32 into an int64 collection.
Exits non-zero (with the reason) on any mismatch.
"""
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

D = 8
VECTOR_TYPES = {"f32": pa.float32(), "f16": pa.float16(), "u8": pa.uint8(), "i8": pa.int8()}
ID_TYPES = {"u64": pa.uint64(), "i64": pa.int64(), "str": pa.string()}


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def ids_of(kind, start, n):
    raw = np.arange(start, start + n)
    if kind == "str":
        return pa.array([f"doc-{i:06d}" for i in raw], pa.string())
    if kind == "i64":
        return pa.array(raw - 500, pa.int64())  # negative ids too
    return pa.array(raw, pa.uint64())


def vectors_of(elem, seed, n):
    rng = np.random.default_rng(seed)
    if pa.types.is_integer(elem):
        info = np.iinfo(elem.to_pandas_dtype())
        values = rng.integers(info.min, info.max + 1, n * D).astype(elem.to_pandas_dtype())
    else:
        values = rng.standard_normal(n * D).astype(elem.to_pandas_dtype())
    return pa.FixedSizeListArray.from_arrays(pa.array(values, elem), D)


def table_of(id_kind, elem, start, n, seed, id_type=None):
    ids = ids_of(id_kind, start, n)
    if id_type is not None:
        ids = ids.cast(id_type)
    notes = pa.array([None if i % 7 == 0 else f"note {i}" for i in range(start, start + n)])
    score = pa.array(np.linspace(0, 1, n), pa.float64())
    return pa.table({"id": ids, "vector": vectors_of(elem, seed, n), "note": notes,
                     "weight": score})


def put(client, name, table, batch_rows, compression=None):
    options = None
    if compression:
        options = fl.FlightCallOptions(
            write_options=pa.ipc.IpcWriteOptions(compression=compression))
    desc = fl.FlightDescriptor.for_path(name)
    writer, reader = client.do_put(desc, table.schema, options=options)
    for batch in table.to_batches(max_chunksize=batch_rows):
        writer.write_batch(batch)
        ack = json.loads(reader.read().to_pybytes())
        if ack.get("rows") != batch.num_rows or ack.get("lsn") is None:
            fail(f"{name}: acknowledgement {ack} for {batch.num_rows} rows")
    writer.close()


def sorted_by_id(table):
    return table.sort_by([("id", "ascending")])


def check(client, name, expected):
    got = sorted_by_id(client.do_get(fl.Ticket(name.encode())).read_all())
    want = sorted_by_id(expected)
    if got.num_rows != want.num_rows:
        fail(f"{name}: scan returned {got.num_rows} rows, expected {want.num_rows}")
    for column in ["id", "note", "weight"]:
        if not got.column(column).combine_chunks().equals(want.column(column).combine_chunks()):
            fail(f"{name}: column {column} differs from what was put")
    got_v = got.column("vector").combine_chunks()
    want_v = want.column("vector").combine_chunks()
    if got_v.type.value_type != want_v.type.value_type or got_v.type.list_size != D:
        fail(f"{name}: vector type {got_v.type}, put {want_v.type}")
    got_bytes = np.asarray(got_v.flatten()).tobytes()
    want_bytes = np.asarray(want_v.flatten()).tobytes()
    if got_bytes != want_bytes:
        fail(f"{name}: vector bytes differ from what was put")


def cases():
    """(collection, id kind, element type, put compression, id type sent, vectors sent)."""
    out = [(f"rt_{v}_{i}", i, e, None, None, None)
           for v, e in VECTOR_TYPES.items() for i in ID_TYPES]
    out.append(("rt_zstd_stream", "u64", pa.float32(), "zstd", None, None))
    out.append(("rt_narrow_ids", "i64", pa.float32(), None, pa.int32(), None))
    out.append(("rt_f64_vectors", "u64", pa.float32(), None, None, pa.float64()))
    return out


def put_case(client, case, start, seed):
    name, id_kind, elem, compression, sent_id_type, sent_elem = case
    expected = table_of(id_kind, elem, start, 300, seed)
    sent = expected
    if sent_id_type is not None:
        sent = sent.set_column(0, "id", sent.column("id").cast(sent_id_type))
    if sent_elem is not None:
        cast = pa.list_(pa.field("item", sent_elem), D)
        sent = sent.set_column(1, "vector", sent.column("vector").cast(cast))
    put(client, name, sent, 128, compression)
    return expected


def run(uri, state, phase):
    client = fl.FlightClient(uri)
    for n, case in enumerate(cases()):
        name = case[0]
        path = os.path.join(state, name + ".arrow")
        if phase == "write":
            # Create the collection with its element type first (a float64 stream would
            # otherwise create a float32 collection of its own, which is what is wanted too).
            expected = put_case(client, case, 0, n)
        else:
            with pa.ipc.open_file(path) as f:
                expected = f.read_all()
            check(client, name, expected)  # what recovery left
            more = put_case(client, case, 10_000 + expected.num_rows, 100 + n + expected.num_rows)
            expected = pa.concat_tables([expected, more])
        check(client, name, expected)
        with pa.ipc.new_file(path, expected.schema) as f:
            f.write_table(expected)
    print(f"{phase}: {len(cases())} collections round-tripped byte for byte")


if __name__ == "__main__":
    run(sys.argv[2], sys.argv[3], sys.argv[1])
