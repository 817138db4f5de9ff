#!/usr/bin/env bash
# Search-only rerun of an existing compare.sh result directory: ROUNDS rounds, each running Quiver,
# the C++ DiskANN and the Rust DiskANN one after another on the same list sizes, so that the shared
# machine's drift hits all three alike. Prints the median QPS per implementation and list size.
#   benches/diskann/interleave.sh DATASET_DIR [list sizes] [rounds]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
ds=$(cd "$1" && pwd); lists=${2:-10,30,50}; rounds=${3:-3}; name=$(basename "$ds")
THREADS=${THREADS:-2}; W=${W:-4}; K=${K:-10}; METRIC=${METRIC:-l2}
VENVS=${VENVS:-$root/.bench-venvs}; RESULTS=${RESULTS:-$root/diskann-results/$name}
queries=$(ls "$ds"/query.* | head -1); gt=$ds/groundtruth.$METRIC.ivecs
out=$RESULTS/interleave.jsonl; : > "$out"
for r in $(seq "$rounds"); do
  "$root/target/release/quiver" search --index "$RESULTS/quiver-index" --queries "$queries" --ground-truth "$gt" \
    --k "$K" --list-sizes "$lists" --beam-width "$W" --threads "$THREADS" --json 2>/dev/null \
    | sed 's/^{/{"impl":"quiver",/' >> "$out"
  for impl in cpp rust; do
    "$VENVS/diskann-$impl/bin/python" "$here/peer.py" --impl $impl --base "$(ls "$ds"/base.* | head -1)" \
      --queries "$queries" --gt "$gt" --out "$RESULTS/diskann-$impl-index" --metric "$METRIC" \
      --R 0 --L 0 --pq-bytes 0 --threads "$THREADS" --beam-width "$W" --list-sizes "$lists" --k "$K" \
      --phase search 2>/dev/null | grep '^{' >> "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
impls = sorted({r["impl"] for r in rows}, key=["quiver", "cpp", "rust"].index)
print("| L | " + " | ".join(f"{i} median QPS (runs)" for i in impls) + " | quiver / cpp | quiver / rust |")
print("|---|" + "---|" * (len(impls) + 2))
for L in sorted({r["list_size"] for r in rows}):
    med = {}
    cells = []
    for i in impls:
        q = [r["qps"] for r in rows if r["impl"] == i and r["list_size"] == L]
        rec = [r["recall_at_k"] for r in rows if r["impl"] == i and r["list_size"] == L][0]
        med[i] = statistics.median(q)
        cells.append(f"{med[i]:.0f} ({', '.join(f'{x:.0f}' for x in q)}), recall {rec:.3f}")
    print(f"| {L} | " + " | ".join(cells) + f" | {med['quiver'] / med['cpp']:.2f}× | {med['quiver'] / med['rust']:.2f}× |")
PY
