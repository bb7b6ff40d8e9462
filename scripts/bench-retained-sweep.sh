#!/usr/bin/env bash
# How the state machine's cost grows with history (issue 18): apply rate and resident memory
# against retained ids, in memory and on disk (checkpoints on another thread, as the node
# writes them), one benchmark process per point, then the plots (SVG and PNG) under docs/bench/.
# Usage: scripts/bench-retained-sweep.sh [largest retained ids on disk, default 30000000]
# (100000000 takes about 20 minutes on a 2-core machine and 14 GB of disk.)
set -euo pipefail
cd "$(dirname "$0")/.."
largest="${1:-30000000}"
# cargo bench runs the benchmark in its package directory, so paths are absolute.
csv="$PWD/docs/bench/retained-sweep.csv"
tmp="${TMPDIR:-/tmp}"
mkdir -p docs/bench
rm -f "$csv"
cargo bench -j2 --workspace --bench apply_rate --no-run
bench() { cargo bench -j2 --workspace --bench apply_rate -- --ops 1000000 --csv "$csv" "$@"; }
for n in 1000000 3000000 10000000; do bench --state memory --retain "$n"; done
for n in 1000000 3000000 10000000 30000000 100000000; do
  [ "$n" -le "$largest" ] || break
  bench --state disk --dir "$tmp" --checkpoint-every 100000 --retain "$n"
done
cargo bench -j2 --workspace --bench apply_rate -- --plot "$csv" --plot-out "$PWD/docs/bench"
