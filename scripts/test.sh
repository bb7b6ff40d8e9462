#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, lints, then unit, property, storage,
# cluster, turmoil and end-to-end tests.
#
# Tests of the session store and of SQL code talk to real Redis and PostgreSQL. This script
# installs (Debian/Ubuntu, apt) and starts them when they are missing, and uses them when they
# already run on 127.0.0.1:6379 and 127.0.0.1:5432. As root it also installs iptables, which the
# network-fault tests use. It installs Rust with rustup if cargo is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

say() { printf '\n==> %s\n' "$*"; }

apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

ensure_rust() {
  if command -v cargo >/dev/null 2>&1; then return; fi
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
    return
  fi
  say "installing Rust (rustup)"
  command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
  command -v cc >/dev/null 2>&1 || apt_install build-essential
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
  export PATH="$HOME/.cargo/bin:$PATH"
}

ensure_postgres() {
  if command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "postgres: using the server on 127.0.0.1:5432"
    return
  fi
  if ! ls -d /etc/postgresql/*/main >/dev/null 2>&1; then
    say "installing PostgreSQL"
    apt_install postgresql
    local ver
    ver=$(ls /etc/postgresql | sort -V | tail -1)
    # Test servers only: trust local TCP connections, as the test databases are throwaway.
    echo "host all all 127.0.0.1/32 trust" | $SUDO tee -a "/etc/postgresql/$ver/main/pg_hba.conf" >/dev/null
  fi
  local ver
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  say "starting PostgreSQL $ver"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 60); do
    pg_isready -h 127.0.0.1 -p 5432 -q && return
    sleep 0.5
  done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
  exit 1
}

ensure_redis() {
  if command -v redis-cli >/dev/null 2>&1 && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; then
    echo "redis: using the server on 127.0.0.1:6379"
    return
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    say "installing Redis"
    apt_install redis-server
  fi
  say "starting Redis"
  $SUDO mkdir -p /var/lib/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /var/lib/redis
  for _ in $(seq 1 40); do
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ] && return
    sleep 0.25
  done
  echo "Redis did not come up on 127.0.0.1:6379" >&2
  exit 1
}

ensure_iptables() {
  # The network-fault tests (a node in a namespace of its own, cut off with iptables) run only as
  # root; they say so and skip otherwise, so only root needs the tool.
  if [ "$(id -u)" -ne 0 ] || command -v iptables >/dev/null 2>&1; then return; fi
  say "installing iptables (network-fault tests)"
  apt_install iptables || echo "iptables could not be installed: the network-fault tests will skip" >&2
}

ensure_rust
ensure_iptables
ensure_postgres
ensure_redis
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"

say "cargo fmt --check"
cargo fmt --all -- --check

say "release binaries (walletd, walletctl, sim, rng-beacon): the one build the demo, the end-to-end tests and the simulator share"
# The same selection as the README's demo command (`cargo run --release --bin walletd`, which
# resolves features over the whole workspace), so neither rebuilds after the other.
cargo build --release --workspace --bins

say "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

say "cargo test"
cargo test --workspace

say "simulation: a bounded sweep of 100 seeds across every scenario"
# Release: a simulated run is about 20 times faster optimized, which pays for the build.
target/release/sim sweep --seeds 0..100 --scenario all --out target/sim-crashes

say "simulation: 20 seeds with the shards' state on disk (fjall stores)"
target/release/sim sweep --seeds 0..20 --scenario all --state disk --out target/sim-crashes

say "all tests passed"
