#!/usr/bin/env python3
"""Turns divan's tree output (stdin) into Markdown tables of medians with ratios to the scalar tier.

Usage: cargo bench -p quiver-simd --bench kernels | python3 scripts/divan_table.py
Each benchmark is `group / parameter / tier`; per tier the median time per item (ns per distance,
or ns per PQ code) and its speed-up over scalar (scalar time / tier time, higher is better).
"""
import re
import sys

UNITS = {"ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
ITEMS = {"item/s": 1.0, "Kitem/s": 1e3, "Mitem/s": 1e6, "Gitem/s": 1e9}

def main():
    rows = {}  # (group, param) -> {tier: ns per item}
    path = []
    pending = None
    for line in sys.stdin:
        m = re.match(r"^([│ ]*)[├╰]─ (\S+)\s*(.*)$", line.rstrip("\n"))
        if m:
            depth = len(m.group(1)) // 3
            path = path[:depth] + [m.group(2)]
            cells = [c.strip() for c in m.group(3).split("│")]
            pending = tuple(path) if len(cells) >= 3 and cells[0] else None
            continue
        if pending is not None:
            # the throughput line under a result: fastest │ slowest │ median │ mean
            cells = [c.strip() for c in line.strip().lstrip("│ ").split("│")]
            if len(cells) >= 3:
                v, unit = cells[2].split()
                rate = float(v) * ITEMS[unit]
                group, param, tier = pending[0], pending[1], pending[2]
                rows.setdefault((group, param), {})[tier] = 1e9 / rate
            pending = None
    tiers = ["scalar", "avx2", "avx512", "avx512-novnni", "neon"]
    present = [t for t in tiers if any(t in r for r in rows.values())]
    groups = []
    for g, _ in rows:
        if g not in groups:
            groups.append(g)
    for g in groups:
        print(f"\n**{g}** (median ns per item; × = speed-up over scalar)\n")
        print("| param | " + " | ".join(present) + " |")
        print("|---|" + "---|" * len(present))
        params = sorted({p for (gg, p) in rows if gg == g}, key=lambda s: int(s) if s.isdigit() else s)
        for p in params:
            r = rows[(g, p)]
            base = r.get("scalar")
            cells = []
            for t in present:
                if t not in r:
                    cells.append("–")
                elif t == "scalar" or base is None:
                    cells.append(f"{r[t]:.2f}")
                else:
                    cells.append(f"{r[t]:.2f} ({base / r[t]:.1f}×)")
            print(f"| {p} | " + " | ".join(cells) + " |")

main()
