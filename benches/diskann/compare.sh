#!/usr/bin/env bash
# Quiver vs DiskANN (C++ `diskannpy==0.7.0`, Rust `diskannpy-rust`) side by side on one dataset,
# same R, L, alpha, PQ bytes, threads and beam width, O_DIRECT on all three. Prints JSON lines into
# RESULTS (default: ./diskann-results/NAME) and a Markdown table to stdout.
#
#   benches/diskann/compare.sh DATASET_DIR [list sizes]
#
# DATASET_DIR is a folder made by ../shared/datasets/make.sh (base.*, query.*, groundtruth.l2.ivecs).
# Environment: R (64), L (100), ALPHA (1.2), PQ (32), THREADS (2), W (4), CACHE (0), K (10),
# METRIC (l2), VENVS (./.bench-venvs: created on first use with pip).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ds=$(cd "$1" && pwd)
lists=${2:-10,20,30,50,75,100,150}
name=$(basename "$ds")
R=${R:-64}; L=${L:-100}; ALPHA=${ALPHA:-1.2}; PQ=${PQ:-32}; THREADS=${THREADS:-2}; W=${W:-4}
CACHE=${CACHE:-0}; K=${K:-10}; METRIC=${METRIC:-l2}
VENVS=${VENVS:-$root/.bench-venvs}
RESULTS=${RESULTS:-$root/diskann-results/$name}
base=$(ls "$ds"/base.* | head -1); queries=$(ls "$ds"/query.* | head -1); gt=$ds/groundtruth.$METRIC.ivecs
mkdir -p "$RESULTS"

. "$here/common.sh"

echo "== quiver" >&2
(cd "$root" && cargo build --release -q)
q=$root/target/release/quiver
/usr/bin/time -v "$q" build --input "$base" --metric "$METRIC" --out "$RESULTS/quiver-index" \
  --max-degree "$R" --list-size "$L" --alpha "$ALPHA" --pq-bytes "$PQ" --threads "$THREADS" \
  > "$RESULTS/quiver-build.txt" 2> "$RESULTS/quiver-build.time"
secs=$(grep -oP 'total \K[0-9.]+' "$RESULTS/quiver-build.txt")
echo "{\"impl\":\"quiver\",\"build_seconds\":$secs,\"build_max_rss_bytes\":$(rss "$RESULTS/quiver-build.time")}" > "$RESULTS/quiver.jsonl"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
/usr/bin/time -v "$q" search --index "$RESULTS/quiver-index" --queries "$queries" --ground-truth "$gt" \
  --k "$K" --list-sizes "$lists" --beam-width "$W" --threads "$THREADS" --cache-nodes "$CACHE" --json \
  > "$RESULTS/quiver-search.jsonl" 2> "$RESULTS/quiver-search.time"
sed "s/^{/{\"impl\":\"quiver\",\"max_rss_bytes\":$(rss "$RESULTS/quiver-search.time"),/" "$RESULTS/quiver-search.jsonl" >> "$RESULTS/quiver.jsonl"

for impl in cpp rust; do
  echo "== diskann-$impl" >&2
  pkg=$([ $impl = cpp ] && echo "diskannpy==0.7.0" || echo "diskannpy-rust")
  py=$(venv "diskann-$impl" "$pkg")
  rm -rf "$RESULTS/diskann-$impl-index"
  args=(--impl $impl --base "$base" --queries "$queries" --gt "$gt" --out "$RESULTS/diskann-$impl-index"
        --metric "$METRIC" --R "$R" --L "$L" --alpha "$ALPHA" --pq-bytes "$PQ" --threads "$THREADS"
        --beam-width "$W" --list-sizes "$lists" --k "$K" --cache-nodes "$CACHE")
  "$py" "$here/peer.py" "${args[@]}" --phase build > "$RESULTS/diskann-$impl.jsonl"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  "$py" "$here/peer.py" "${args[@]}" --phase search >> "$RESULTS/diskann-$impl.jsonl"
done
python3 "$here/table.py" "$RESULTS"/quiver.jsonl "$RESULTS"/diskann-cpp.jsonl "$RESULTS"/diskann-rust.jsonl
