"""Growing a disk index (`quiver grow`) against rebuilding it (`quiver build`), side by side.

An index of the first `--base` rows of a real set is built; then, for each added count in
`--added`, the index is grown by the next rows, and an index of all of those rows is built
from scratch. Both are searched with the exact ground truth of the combined rows. Reports time,
recall and QPS at each list size, and the grown/rebuilt ratios. Runs are interleaved (grow,
build, grow, build) over `--rounds`; medians are printed.

    target/pyenv/bin/python benches/grow_vs_build.py --data /work/data/sift-dev-1m \
        --base 200000 --added 2000,20000 --rounds 2
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchlib import exact_ground_truth, read_u8bin, write_u8bin


def run(cmd):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return out.stdout, time.perf_counter() - t0


def sweep(binary, index, queries, gt, list_sizes):
    out, _ = run([binary, "search", "--index", index, "--queries", queries, "--ground-truth", gt,
                  "--list-sizes", ",".join(map(str, list_sizes)), "--threads", "2", "--json"])
    res = {}
    for line in out.splitlines():
        if line.strip().startswith("{"):
            j = json.loads(line)
            res[j["list_size"]] = (j["recall_at_k"], j["qps"], j["mean_ios"])
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--data", required=True)
    ap.add_argument("--base", type=int, default=200_000)
    ap.add_argument("--added", default="2000,20000")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--list-sizes", default="10,15,20,30,50")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    added = [int(x) for x in args.added.split(",")]
    list_sizes = [int(x) for x in args.list_sizes.split(",")]
    work = args.workdir or tempfile.mkdtemp(prefix="quiver-grow-")
    src = os.path.join(args.data, "base.u8bin")
    rows = read_u8bin(src, args.base + max(added))
    queries = read_u8bin(os.path.join(args.data, "query.u8bin"), args.queries)
    qfile = os.path.join(work, "queries.u8bin")
    write_u8bin(qfile, queries)
    base_file = os.path.join(work, "base.u8bin")
    write_u8bin(base_file, rows[: args.base])
    all_file = os.path.join(work, "all.u8bin")
    write_u8bin(all_file, rows)
    base_index = os.path.join(work, "base-index")
    _, t_base = run([args.quiver, "build", "--input", base_file, "--metric", "l2",
                     "--out", base_index])
    print(f"base index of {args.base} rows built in {t_base:.0f} s", file=sys.stderr)

    for a in added:
        n = args.base + a
        part = os.path.join(work, f"rows-{n}.u8bin")
        write_u8bin(part, rows[:n])
        gt = exact_ground_truth(rows[:n], queries, 100)
        gt_file = os.path.join(work, f"gt-{n}.ivecs")
        np.hstack([np.full((len(gt), 1), gt.shape[1], np.int32), gt]).tofile(gt_file)
        times = {"grow": [], "build": []}
        curves = {}
        for r in range(args.rounds):
            for kind in ("grow", "build"):
                out_dir = os.path.join(work, f"{kind}-{n}")
                subprocess.run(["rm", "-rf", out_dir], check=True)
                if kind == "grow":
                    cmd = [args.quiver, "grow", "--index", base_index, "--add", all_file,
                           "--add-skip", str(args.base), "--add-rows", str(a), "--out", out_dir]
                else:
                    cmd = [args.quiver, "build", "--input", part, "--metric", "l2",
                           "--out", out_dir]
                out, t = run(cmd)
                times[kind].append(t)
                phases = re.findall(r"time: .*", out)
                print(f"{kind} +{a} round {r + 1}: {t:.1f} s; {phases[-1] if phases else ''}",
                      file=sys.stderr)
                if r == 0:
                    curves[kind] = sweep(args.quiver, out_dir, qfile, gt_file, list_sizes)
        tg, tb = statistics.median(times["grow"]), statistics.median(times["build"])
        print(f"\n{args.base} + {a} rows: grow {tg:.1f} s, rebuild {tb:.1f} s "
              f"(grow / rebuild {tg / tb:.2f})")
        print("| L | grown recall | QPS | mean IOs | rebuilt recall | QPS | mean IOs |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for ls in list_sizes:
            g, b = curves["grow"][ls], curves["build"][ls]
            print(f"| {ls} | {g[0]:.3f} | {g[1]:.0f} | {g[2]:.1f} | {b[0]:.3f} | {b[1]:.0f} "
                  f"| {b[2]:.1f} |")


if __name__ == "__main__":
    main()
