#!/usr/bin/env bash
# Build time, Quiver against DiskANN, in interleaved rounds: each round builds Quiver and then
# every peer in PEERS (default: rust, the faster DiskANN) with the same R, L, alpha, PQ bytes and
# threads, so that the shared machine's drift hits them alike. Prints every run and the medians
# (with peak RSS) as a Markdown table. The indexes go to RESULTS/build-rounds/ and are overwritten.
#
#   benches/diskann/build_rounds.sh DATASET_DIR [rounds]
#
# Environment: R (64), L (100), ALPHA (1.2), PQ (32), THREADS (2), METRIC (l2), PASSES (1),
# PEERS ("rust"; "cpp rust" adds the C++ DiskANN), VENVS (./.bench-venvs, created on first use).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
ds=$(cd "$1" && pwd); rounds=${2:-3}; name=$(basename "$ds")
R=${R:-64}; L=${L:-100}; ALPHA=${ALPHA:-1.2}; PQ=${PQ:-32}; THREADS=${THREADS:-2}
METRIC=${METRIC:-l2}; PASSES=${PASSES:-1}; PEERS=${PEERS:-rust}
VENVS=${VENVS:-$root/.bench-venvs}; RESULTS=${RESULTS:-$root/diskann-results/$name}
base=$(ls "$ds"/base.* | head -1); queries=$(ls "$ds"/query.* | head -1)
gt=$ds/groundtruth.$METRIC.ivecs
work=$RESULTS/build-rounds; mkdir -p "$work"; out=$work/builds.jsonl; : > "$out"

. "$here/common.sh"
(cd "$root" && cargo build --release -q --bin quiver)

for r in $(seq "$rounds"); do
  echo "== round $r: quiver" >&2
  rm -rf "$work/quiver-index"
  /usr/bin/time -v "$root/target/release/quiver" build --input "$base" --metric "$METRIC" \
    --out "$work/quiver-index" --max-degree "$R" --list-size "$L" --alpha "$ALPHA" --pq-bytes "$PQ" \
    --threads "$THREADS" --passes "$PASSES" > "$work/quiver-build.txt" 2> "$work/quiver-build.time"
  secs=$(grep -oP 'total \K[0-9.]+' "$work/quiver-build.txt")
  echo "{\"impl\":\"quiver\",\"round\":$r,\"build_seconds\":$secs,\"build_max_rss_bytes\":$(rss "$work/quiver-build.time")}" >> "$out"
  for impl in $PEERS; do
    echo "== round $r: diskann-$impl" >&2
    pkg=$([ "$impl" = cpp ] && echo "diskannpy==0.7.0" || echo "diskannpy-rust")
    py=$(venv "diskann-$impl" "$pkg")
    rm -rf "$work/diskann-$impl-index"
    "$py" "$here/peer.py" --impl "$impl" --base "$base" --queries "$queries" --gt "$gt" \
      --out "$work/diskann-$impl-index" --metric "$METRIC" --R "$R" --L "$L" --alpha "$ALPHA" \
      --pq-bytes "$PQ" --threads "$THREADS" --beam-width 4 --list-sizes 10 --k 10 --phase build \
      2>/dev/null | grep '^{' | sed "s/^{/{\"round\":$r,/" >> "$out"
  done
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
impls = [i for i in ["quiver", "cpp", "rust"] if any(r["impl"] == i for r in rows)]
med = {i: statistics.median(r["build_seconds"] for r in rows if r["impl"] == i) for i in impls}
print("| implementation | median build s (runs) | median peak RSS MiB | quiver / this |")
print("|---|---|---|---|")
for i in impls:
    runs = [r["build_seconds"] for r in rows if r["impl"] == i]
    rss = statistics.median(r["build_max_rss_bytes"] for r in rows if r["impl"] == i) / 2**20
    print(f"| {i} | {med[i]:.1f} ({', '.join(f'{x:.1f}' for x in runs)}) | {rss:.0f} | "
          f"{med['quiver'] / med[i]:.2f}× |")
PY
