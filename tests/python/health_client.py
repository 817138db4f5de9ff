"""Drives tests/serve_health.rs: `health_client.py FLIGHT_URI METRICS_ADDR FILLER_PATH`.

Checks that /live and /ready answer 200 on a healthy server, fills the server's (small) disk
with FILLER_PATH, puts rows until the WAL cannot reserve its next segment, and checks that the
put that failed said why, that /live and /ready now answer 503 naming the failure, and that a
later put is refused too. Prints one line per check; exits non-zero on the first failure.
"""
import errno
import os
import sys
import urllib.error
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

uri, metrics, filler = sys.argv[1], sys.argv[2], sys.argv[3]
DIM = 32
ROWS = 4096  # 512 KiB of vectors a batch: a 1 MiB WAL segment rotates every two or three


def health(path):
    try:
        with urllib.request.urlopen(f"http://{metrics}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def put(client, batch):
    rng = np.random.default_rng(batch)
    v = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    ids = np.arange(batch * ROWS, (batch + 1) * ROWS, dtype=np.uint64)
    t = pa.table({"id": pa.array(ids),
                  "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), DIM)})
    w, r = client.do_put(fl.FlightDescriptor.for_path("c"), t.schema)
    w.write_table(t)
    w.done_writing()
    r.read()
    w.close()


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


client = fl.FlightClient(uri)
put(client, 0)
for path in ("/live", "/ready"):
    code, body = health(path)
    check(code == 200, f"{path} answers 200 on a healthy server (got {code} {body!r})")

# Fill the disk: the WAL's current segment is reserved, its next one cannot be.
fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
chunk = b"\x5a" * (64 << 10)
try:
    while True:
        os.write(fd, chunk)
except OSError as e:
    check(e.errno == errno.ENOSPC, f"the disk filled up ({e})")
finally:
    os.close(fd)

failure = None
for batch in range(1, 64):
    try:
        put(client, batch)
    except (fl.FlightError, pa.ArrowException) as e:
        failure = str(e)
        break
check(failure is not None, "a put failed once the WAL could not reserve its next segment")
check("space" in failure.lower(), f"the failed put says the disk is full: {failure[:300]!r}")

for path in ("/live", "/ready"):
    code, body = health(path)
    check(code == 503, f"{path} answers 503 once the database is poisoned (got {code})")
    check("poisoned" in body and "space" in body.lower(),
          f"{path} names the failure: {body.strip()[:300]!r}")

try:
    put(client, 100)
    refused = None
except (fl.FlightError, pa.ArrowException) as e:
    refused = str(e)
check(refused is not None, f"a later put is refused: {(refused or '')[:200]!r}")
