"""Helpers the Python benchmarks share: vector files, exact ground truth, interpolation, threads."""
import concurrent.futures as cf
import time

import numpy as np


def read_u8bin(path, rows=None):
    """The first `rows` rows (all if None) of a `.u8bin` file as an (n, d) uint8 array."""
    with open(path, "rb") as f:
        n, d = np.frombuffer(f.read(8), dtype=np.uint32)
        n = n if rows is None else min(n, rows)
        return np.frombuffer(f.read(int(n) * int(d)), dtype=np.uint8).reshape(int(n), int(d))


def write_u8bin(path, a):
    with open(path, "wb") as f:
        f.write(np.array(a.shape, dtype=np.uint32).tobytes())
        f.write(a.tobytes())


def read_vecs(path, dtype):
    """An `.ivecs` / `.fvecs` file as an (n, d) array of `dtype`."""
    raw = np.fromfile(path, dtype=np.int32)
    d = raw[0]
    return raw.reshape(-1, d + 1)[:, 1:].view(dtype)


def exact_ground_truth(base, queries, k):
    """The `k` nearest base rows of each query by L2, exactly (float64 for the norms)."""
    b = base.astype(np.float32)
    norms = (b.astype(np.float64) ** 2).sum(1)
    out = []
    for q in queries.astype(np.float32):
        d = norms - 2.0 * (b @ q).astype(np.float64)
        top = np.argpartition(d, k)[:k]
        out.append(top[np.argsort(d[top], kind="stable")])
    return np.array(out, dtype=np.int32)


def at_recall(curve, target=0.95):
    """QPS at `target` recall from (qps, recall) points, interpolated between the two that
    bracket it; NaN if none do."""
    pts = sorted((r, q) for q, r in curve)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1:
            return q0 + (q1 - q0) * (target - r0) / max(r1 - r0, 1e-9)
    return float("nan")


def on_threads(run, threads):
    """Runs `run(part)` for each of `threads` parts at once: their {query: ids} merged, and the
    seconds it took."""
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as ex:
        parts = list(ex.map(run, range(threads)))
    secs = time.perf_counter() - t0
    got = {}
    for p in parts:
        got.update(p)
    return got, secs
