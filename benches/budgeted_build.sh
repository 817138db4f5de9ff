#!/usr/bin/env bash
# Issue 20's benchmark: Quiver's budgeted build under a hard memory cap, side by side in one run
# with Quiver's own unbudgeted build and the C++ DiskANN's budgeted build (`diskannpy==0.7.0`,
# `build_memory_maximum` = the same budget, under the same cap, given the file's path so Python
# does not hold the data). Same R, L, alpha, PQ bytes and threads everywhere; each index is then
# searched (O_DIRECT, beam width 4) over the same list sizes.
#
#   benches/budgeted_build.sh DATASET_DIR BUDGET CAP [list sizes]
#   e.g. benches/budgeted_build.sh /work/data/sift-f32 96MiB 128MiB
#
# DATASET_DIR holds base.fbin (or .u8bin), query.* and groundtruth.l2.ivecs. Runs need root (the
# cap is a memory cgroup: scripts/capped.py). Environment: R (64), L (100), ALPHA (1.2), PQ (32),
# THREADS (2), W (4), K (10), METRIC (l2; or cosine, with groundtruth.cos.ivecs), VENVS
# (./.bench-venvs), RESULTS (./budget-results/NAME), SKIP_DISKANN, SKIP_UNBUDGETED (keep the
# unbudgeted results of an earlier run in RESULTS), SKIP_QUIVER (only DiskANN's build; Quiver's results
# of an earlier run in RESULTS are kept).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
ds=$(cd "$1" && pwd); budget=$2; cap=$3
lists=${4:-10,20,30,50,75,100}
name=$(basename "$ds")
R=${R:-64}; L=${L:-100}; ALPHA=${ALPHA:-1.2}; PQ=${PQ:-32}; THREADS=${THREADS:-2}; W=${W:-4}; K=${K:-10}
METRIC=${METRIC:-l2}
VENVS=${VENVS:-$root/.bench-venvs}
RESULTS=${RESULTS:-$root/budget-results/$name}
base=$( (ls "$ds"/base.fbin "$ds"/base.u8bin 2>/dev/null || true) | head -1)
queries=$( (ls "$ds"/query.fbin "$ds"/query.u8bin 2>/dev/null || true) | head -1)
gt=$ds/groundtruth.$([ "$METRIC" = cosine ] && echo cos || echo "$METRIC").ivecs
mkdir -p "$RESULTS"
. "$here/diskann/common.sh"
capped=$root/scripts/capped.py
q=$root/target/release/quiver
(cd "$root" && cargo build --release -q --bin quiver)
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
common=(--metric "$METRIC" --max-degree "$R" --list-size "$L" --alpha "$ALPHA" --pq-bytes "$PQ" --threads "$THREADS")

runs="budgeted unbudgeted"; [ -n "${SKIP_UNBUDGETED:-}" ] && runs=budgeted
[ -n "${SKIP_QUIVER:-}" ] && runs=
for run in $runs; do
  echo "== quiver $run" >&2
  rm -rf "$RESULTS/quiver-$run"
  drop
  if [ $run = budgeted ]; then
    python3 "$capped" --json --limit "$cap" -- "$q" build --input "$base" --out "$RESULTS/quiver-$run" \
      "${common[@]}" --ram-budget "$budget" > "$RESULTS/quiver-$run-build.txt" 2> "$RESULTS/quiver-$run-build.err"
  else
    python3 "$capped" --json --limit 64GiB -- "$q" build --input "$base" --out "$RESULTS/quiver-$run" \
      "${common[@]}" > "$RESULTS/quiver-$run-build.txt" 2> "$RESULTS/quiver-$run-build.err"
  fi
  drop
  "$q" search --index "$RESULTS/quiver-$run" --queries "$queries" --ground-truth "$gt" --k "$K" \
    --list-sizes "$lists" --beam-width "$W" --threads "$THREADS" --json > "$RESULTS/quiver-$run-search.jsonl"
done

if [ -z "${SKIP_DISKANN:-}" ]; then
  echo "== diskann-cpp budgeted" >&2
  py=$(venv diskann-cpp "diskannpy==0.7.0")
  gb=$(python3 -c "import sys; sys.path.insert(0, '$root/scripts'); import capped; print(capped.parse_size('$budget') / 2**30)")
  rm -rf "$RESULTS/diskann-cpp"
  args=(--impl cpp --base "$base" --queries "$queries" --gt "$gt" --out "$RESULTS/diskann-cpp"
        --metric "$METRIC" --R "$R" --L "$L" --alpha "$ALPHA" --pq-bytes "$PQ" --threads "$THREADS"
        --beam-width "$W" --list-sizes "$lists" --k "$K")
  drop
  python3 "$capped" --json --limit "$cap" -- "$py" "$here/diskann/peer.py" "${args[@]}" --phase build \
    --build-memory-gb "$gb" > "$RESULTS/diskann-cpp-build.jsonl" 2> "$RESULTS/diskann-cpp-build.err" || true
  if ! ls "$RESULTS/diskann-cpp"/*disk.index >/dev/null 2>&1; then
    # Killed under the cap: build again without one, to see its time and real peak at this budget.
    echo "== diskann-cpp budgeted, no cap" >&2
    rm -rf "$RESULTS/diskann-cpp"
    drop
    python3 "$capped" --json --limit 64GiB -- "$py" "$here/diskann/peer.py" "${args[@]}" --phase build \
      --build-memory-gb "$gb" > "$RESULTS/diskann-cpp-uncapped-build.jsonl" 2> "$RESULTS/diskann-cpp-uncapped-build.err" || true
  fi
  drop
  if ls "$RESULTS/diskann-cpp"/*disk.index >/dev/null 2>&1; then
    "$py" "$here/diskann/peer.py" "${args[@]}" --phase search > "$RESULTS/diskann-cpp-search.jsonl" || true
  fi
fi
python3 "$here/budgeted_table.py" "$RESULTS"
