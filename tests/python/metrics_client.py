"""Drives `quiver serve --metrics-listen` for tests/serve_metrics.rs: puts rows (and one refused
batch), searches, then checks the metrics two ways: its own scrape of /metrics, parsed, and —
when a Prometheus server's address is given — Prometheus's HTTP API after it scraped the server.
The counters must equal what was sent: rows ingested, searches run, errors by code.

    metrics_client.py FLIGHT_URI METRICS_ADDR [PROMETHEUS_ADDR]

Exits non-zero (with the reason) on any mismatch.
"""
import json
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

D, BATCHES, ROWS, SEARCHES = 16, 3, 1000, 20


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def put(client, name, ids, v):
    col = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), type=pa.float32()), D)
    t = pa.table({"id": pa.array(ids, pa.uint64()), "vector": col})
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(name), t.schema)
    writer.write_table(t)
    writer.done_writing()
    reader.read()
    writer.close()


def scrape(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        kind = r.headers.get("Content-Type", "")
        if "openmetrics-text" not in kind:
            fail(f"/metrics content type {kind!r}")
        text = r.read().decode()
    if not text.rstrip().endswith("# EOF"):
        fail("the exposition does not end with # EOF")
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def expect(samples, name, want, at_least=False):
    got = samples.get(name)
    if got is None:
        fail(f"{name} is missing; have {sorted(k for k in samples if k.startswith(name[:12]))}")
    if (got < want) if at_least else (got != want):
        fail(f"{name} = {got}, expected {'at least ' if at_least else ''}{want}")


def check_adapter_series(samples):
    """Every series deploy/prometheus-adapter.yaml's rules name is one the server exports."""
    import os
    import re
    import yaml
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "deploy", "prometheus-adapter.yaml")) as f:
        config = yaml.safe_load(yaml.safe_load(f)["data"]["config.yaml"])
    exported = {name.split("{")[0] for name in samples}
    for rule in config["rules"]:
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"].strip("'")).group(0)
        if series not in exported:
            fail(f"the adapter rule names {series}, which the server does not export")


def prometheus_value(addr, query):
    url = f"http://{addr}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        fail(f"Prometheus answered {body}")
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def main():
    uri, metrics_addr = sys.argv[1], sys.argv[2]
    prometheus = sys.argv[3] if len(sys.argv) > 3 else None
    client = fl.FlightClient(uri)
    rng = np.random.default_rng(3)
    v = rng.standard_normal((BATCHES * ROWS, D)).astype(np.float32)
    for b in range(BATCHES):
        put(client, "m", np.arange(b * ROWS, (b + 1) * ROWS), v[b * ROWS:(b + 1) * ROWS])
    bad = v[:2].copy()
    bad[1, 3] = np.nan
    try:
        put(client, "m", np.arange(2), bad)
        fail("a NaN batch was accepted")
    except pa.ArrowInvalid:
        pass
    for i in range(SEARCHES):
        t = {"search": {"dataset": "m", "vector": v[i].tolist(), "k": 5}}
        got = client.do_get(fl.Ticket(json.dumps(t).encode())).read_all()
        if got.column("id")[0].as_py() != i:
            fail(f"search {i} did not find its own row first")
    s = scrape(metrics_addr)
    sent = float(BATCHES * ROWS)
    expect(s, 'quiver_ingest_rows_total{collection="m"}', sent)
    expect(s, 'quiver_ingest_bytes_total{collection="m"}', sent * D * 4, at_least=True)
    expect(s, "quiver_put_ack_seconds_count", float(BATCHES))
    expect(s, 'quiver_searches_total{collection="m"}', float(SEARCHES))
    expect(s, 'quiver_search_seconds_count{collection="m"}', float(SEARCHES))
    expect(s, 'quiver_collection_rows{collection="m"}', sent)
    expect(s, 'quiver_errors_total{method="do_put",code="InvalidArgument"}', 1.0)
    expect(s, "quiver_wal_records_total", float(BATCHES), at_least=True)
    expect(s, "quiver_wal_sync_seconds_count", 1.0, at_least=True)
    expect(s, 'quiver_wal_sync_seconds_bucket{le="+Inf"}', s["quiver_wal_sync_seconds_count"])
    expect(s, "quiver_process_resident_memory_bytes", 1 << 20, at_least=True)
    for path in ["/live", "/ready"]:
        with urllib.request.urlopen(f"http://{metrics_addr}{path}", timeout=10) as r:
            if r.status != 200 or r.read().strip() != b"ok":
                fail(f"{path}: {r.status}")
    check_adapter_series(s)
    print(f"scrape ok: {len(s)} samples; /live and /ready answer ok; adapter series exported")
    if prometheus is None:
        return
    # Prometheus scrapes every second; wait for a scrape taken after the writes.
    deadline = time.time() + 90
    query = 'quiver_ingest_rows_total{collection="m"}'
    while True:
        got = prometheus_value(prometheus, query)
        if got == sent:
            break
        if time.time() > deadline:
            fail(f"Prometheus has {query} = {got}, expected {sent}")
        time.sleep(0.5)
    searches = prometheus_value(prometheus, 'sum(quiver_searches_total{collection="m"})')
    if searches != float(SEARCHES):
        fail(f"Prometheus has {searches} searches, expected {SEARCHES}")
    up = prometheus_value(prometheus, 'up{job="quiver"}')
    if up != 1.0:
        fail(f"Prometheus says up = {up}")
    print("prometheus ok")


if __name__ == "__main__":
    main()
