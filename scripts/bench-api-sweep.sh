#!/usr/bin/env bash
# How the wallet API's cost grows (issue 17): throughput and p99 against clients, shards and
# players (to 1M, in memory and on disk), one benchmark run per point, then the plots (SVG and
# PNG) under docs/bench/.
# Usage: scripts/bench-api-sweep.sh [seconds per run, default 4]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-4}"
# cargo bench runs the benchmark in its package directory, so paths are absolute.
csv="$PWD/docs/bench/api-sweep.csv"
mkdir -p docs/bench
rm -f "$csv"
cargo bench -j2 --workspace --bench api --no-run
bench() { cargo bench -j2 --workspace --bench api -- --secs "$secs" --no-pg --rates 0 --csv "$csv" "$@"; }
bench --sweep clients --clients 1,4,16,64,256,1024,4096 --batch 100 --batch-clients 1,4,16,64
for s in 1 2 4 8 16; do bench --sweep shards --shards "$s" --clients 256 --batch 0; done
for p in 10000 100000 1000000; do bench --sweep players --players "$p" --clients 256 --batch 0; done
# The same with the retained state on disk (accounts stay in memory). 10M players are left out:
# one run takes about 8 minutes and 9 GB on disk state (BENCHMARKS.md, "Memory between
# checkpoints"); in memory it has not been tried.
for p in 10000 100000 1000000; do bench --sweep players --players "$p" --clients 256 --batch 0 --state disk; done
cargo bench -j2 --workspace --bench api -- --plot "$csv" --plot-out "$PWD/docs/bench"
