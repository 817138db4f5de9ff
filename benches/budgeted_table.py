#!/usr/bin/env python3
"""Summarises a benches/budgeted_build.sh run: one Markdown table of builds (time, peak resident,
cgroup peak, OOM kills) and one of searches (recall, QPS, mean I/Os per list size), with the
budgeted Quiver build's ratios to the unbudgeted one and to DiskANN's.

    python3 benches/budgeted_table.py RESULTS_DIR
"""
import json
import os
import re
import sys


def last_json(path):
    """The capped.py report: the last JSON line of a stderr file."""
    if not os.path.exists(path):
        return None
    lines = [l for l in open(path) if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def jsonl(path):
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.startswith("{")]


def main():
    d = sys.argv[1]
    mib = lambda b: "–" if b is None else f"{b / 1048576:.1f}"
    print("| build | seconds | peak resident MiB | cgroup peak MiB | limit MiB | OOM kills | status |")
    print("|---|---:|---:|---:|---:|---:|---|")
    seconds = {}
    for name, err in [("quiver budgeted", "quiver-budgeted-build.err"),
                      ("quiver unbudgeted", "quiver-unbudgeted-build.err"),
                      ("diskann-cpp budgeted", "diskann-cpp-build.err"),
                      ("diskann-cpp budgeted, no cap", "diskann-cpp-uncapped-build.err")]:
        r = last_json(os.path.join(d, err))
        if r is None:
            continue
        seconds[name] = r["seconds"]
        limit = r["limit_bytes"] if r["limit_bytes"] < 1 << 40 else None
        print(f"| {name} | {r['seconds']:.0f} | {mib(r['peak_rss_bytes'])} | {mib(r['cgroup_peak_bytes'])} "
              f"| {mib(limit)} | {r['oom_kills']} | exit {r['status']} |")
    txt = os.path.join(d, "quiver-budgeted-build.txt")
    if os.path.exists(txt):
        for line in open(txt):
            if line.startswith(("plan:", "time:", "memory:")):
                print(f"\n`{line.strip()}`")
    if "quiver budgeted" in seconds and "quiver unbudgeted" in seconds:
        print(f"\nbudgeted / unbudgeted build time: {seconds['quiver budgeted'] / seconds['quiver unbudgeted']:.2f}×")
    for peer in ("diskann-cpp budgeted", "diskann-cpp budgeted, no cap"):
        if "quiver budgeted" in seconds and peer in seconds:
            print(f"budgeted Quiver / {peer} build time: {seconds['quiver budgeted'] / seconds[peer]:.2f}×")
    runs = {"quiver budgeted": jsonl(os.path.join(d, "quiver-budgeted-search.jsonl")),
            "quiver unbudgeted": jsonl(os.path.join(d, "quiver-unbudgeted-search.jsonl")),
            "diskann-cpp budgeted": [r for r in jsonl(os.path.join(d, "diskann-cpp-search.jsonl")) if "list_size" in r]}
    print("\n| L | " + " | ".join(f"{n} recall | QPS | IOs" for n in runs if runs[n]) + " |")
    print("|---:|" + "---:|---:|---:|" * sum(1 for n in runs if runs[n]))
    sizes = sorted({r["list_size"] for rs in runs.values() for r in rs})
    for l in sizes:
        cells = []
        for n, rs in runs.items():
            if not rs:
                continue
            r = next((x for x in rs if x["list_size"] == l), None)
            cells.append("– | – | –" if r is None else
                         f"{r['recall_at_k']:.4f} | {r['qps']:.0f} | {r.get('mean_ios', float('nan')):.1f}")
        print(f"| {l} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
