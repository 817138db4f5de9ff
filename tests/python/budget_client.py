"""pyarrow.flight client for the out-of-core test of `quiver serve --memory-budget`
(tests/serve_memory_budget.rs).

    budget_client.py URI ROWS DIM BATCH_ROWS

Puts ROWS seeded float vectors of DIM dimensions (ids 0..ROWS as u64) in BATCH_ROWS-row batches,
waits until every row is indexed, then searches 100 queries at list size 100 and compares each
answer with numpy brute force over every row. Prints one JSON line: rows, raw bytes, segments,
indexed segments, recall@10. Exits non-zero (with the reason) if the server loses a row or
answers short.

The vectors lie near a 16-dimensional subspace (clusters in 16 dimensions, mapped up by one
random matrix, plus a little noise in every dimension): like real embeddings, their intrinsic
dimension is far below DIM, which is what a graph index relies on. Isotropic clusters in
hundreds of dimensions have no such structure, and no graph index reaches a useful recall on
them.
"""
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

K, QUERIES, LIST_SIZE, LATENT = 10, 100, 100, 16
NAME = "budget"


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def vectors(rows, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (64, LATENT))
    latent = centres[rng.integers(0, len(centres), rows)] + rng.normal(0, 1, (rows, LATENT))
    lift = rng.normal(0, 1 / np.sqrt(LATENT), (LATENT, dim))
    return (latent @ lift + rng.normal(0, 0.05, (rows, dim))).astype(np.float32)


def action(client, kind, body):
    return [json.loads(r.body.to_pybytes() or b"{}")
            for r in client.do_action(fl.Action(kind, json.dumps(body).encode()))]


def put(client, base, batch_rows):
    ids = pa.array(np.arange(len(base), dtype=np.uint64))
    vec = pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), base.shape[1])
    table = pa.table({"id": ids, "vector": vec})
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(NAME), table.schema)
    for batch in table.to_batches(max_chunksize=batch_rows):
        writer.write_batch(batch)
        reader.read()  # the acknowledgement: the batch is durable
    writer.done_writing()
    writer.close()


def main():
    uri, rows, dim, batch_rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    base = vectors(rows, dim, 21)
    client = fl.FlightClient(uri)
    put(client, base, batch_rows)
    action(client, "wait-for-indexing", {"dataset": NAME})
    stats = action(client, "stats", {"name": NAME})[0]
    if stats["rows"] != rows:
        fail(f"the server holds {stats['rows']} rows, {rows} were acknowledged")
    rng = np.random.default_rng(22)
    queries = base[rng.choice(rows, QUERIES, replace=False)] + rng.normal(0, 0.1, (QUERIES, dim))
    hits = 0
    for q in queries.astype(np.float32):
        ticket = {"search": {"dataset": NAME, "vector": q.tolist(), "k": K, "list_size": LIST_SIZE}}
        got = client.do_get(fl.Ticket(json.dumps(ticket).encode())).read_all()
        if got.num_rows != K:
            fail(f"a search returned {got.num_rows} rows, asked for {K}")
        d = ((base - q) ** 2).sum(axis=1)
        want = set(np.argpartition(d, K)[:K].tolist())
        hits += len(want & set(got.column("id").to_pylist()))
    print(json.dumps({
        "rows": stats["rows"], "raw_bytes": base.nbytes, "segments": stats["segments"],
        "indexed_segments": stats["indexed_segments"], "recall_at_10": hits / (K * QUERIES),
    }))


if __name__ == "__main__":
    main()
