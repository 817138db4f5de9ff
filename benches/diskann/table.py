#!/usr/bin/env python3
"""Merges the JSON lines of compare.sh into Markdown: build time and RAM per implementation, then
recall@k / QPS / mean IOs / latency per list size side by side, and Quiver's ratios at the first list
size where each implementation reaches recall 0.95."""
import json
import sys

rows = [json.loads(l) for f in sys.argv[1:] for l in open(f) if l.strip().startswith("{")]
impls = []
for r in rows:
    if r["impl"] not in impls:
        impls.append(r["impl"])
builds = {r["impl"]: r for r in rows if "build_seconds" in r}
search = [r for r in rows if "list_size" in r]

print("| implementation | build s | build peak RSS MiB | search peak RSS MiB |")
print("|---|---|---|---|")
for i in impls:
    b = builds.get(i, {})
    s = [r for r in search if r["impl"] == i]
    rss = max((r.get("max_rss_bytes") or 0) for r in s) if s else 0
    print(f"| {i} | {b.get('build_seconds', '–')} | {b.get('build_max_rss_bytes', 0) / 2**20:.0f} | {rss / 2**20:.0f} |")

print("\n| L | " + " | ".join(f"{i} recall / QPS / IOs / mean µs" for i in impls) + " |")
print("|---|" + "---|" * len(impls))
for L in sorted({r["list_size"] for r in search}):
    cells = []
    for i in impls:
        r = next((r for r in search if r["impl"] == i and r["list_size"] == L), None)
        if r is None:
            cells.append("–")
            continue
        ios = r.get("mean_ios", r.get("mean_n_ios", "–"))
        p50 = r.get("mean_us", "–")
        cells.append(f"{r['recall_at_k']:.4f} / {r['qps']:.0f} / {ios if isinstance(ios, str) else f'{ios:.1f}'} / {p50 if isinstance(p50, str) else f'{p50:.0f}'}")
    print(f"| {L} | " + " | ".join(cells) + " |")

print()
first = {}
for i in impls:
    ok = sorted((r for r in search if r["impl"] == i and r["recall_at_k"] >= 0.95), key=lambda r: r["list_size"])
    if ok:
        first[i] = ok[0]
for i in impls:
    if i == "quiver" or i not in first or "quiver" not in first:
        continue
    q, p = first["quiver"], first[i]
    print(f"- at recall@k ≥ 0.95: quiver L={q['list_size']} {q['qps']:.0f} QPS vs {i} L={p['list_size']} {p['qps']:.0f} QPS "
          f"(ratio {q['qps'] / p['qps']:.2f}×)")
