//! Replicated commit throughput and latency on a 3-node loopback cluster with fsync on.
//!
//! `cargo bench -p raft-ledger --bench replicated -- [--clients 1,64,1024] [--secs 10] [--shards 4]
//! [--state memory|disk] [--snapshot-every N] [--install]`
//!
//! Three real nodes run in this process, each with its own data directory, write-ahead log and
//! fsync, talking gRPC over loopback. Clients are tasks that send bets through the node API (the
//! same path `walletd client` uses). Two kinds of run:
//!
//! - **closed loop**, per client count: each client sends its next bet as soon as the previous
//!   is acknowledged. Reports the achieved rate and the latency of every acknowledged write.
//! - **open loop** at half of the best closed-loop rate: bets are sent on a fixed schedule
//!   whatever happens, and latency is measured from the scheduled send time, so a stall shows
//!   up as latency instead of silently lowering the offered load (no coordinated omission).
//! - with `--install`, the open loop at the first rate twice more: with node 3 stopped (the
//!   leaders snapshot and purge their logs past it meanwhile), and while node 3, started again
//!   from its directory, catches up by installing the leaders' snapshots. The difference between
//!   the two is what receiving, sending and installing snapshots costs the commit path.

// Floats here are rates and durations for the report, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use ledger_core::{Amount, Command, Currency, Outcome, PlayerId, RoundId, TxId};
use raft_ledger::api::ShardStatus;
use raft_ledger::client::{ClientOptions, LedgerClient};
use raft_ledger::net::env::Listener;
use raft_ledger::node::{LedgerNode, NodeConfig, NodeEnv};
use raft_ledger::raft::{NodeId, NodeInfo};
use tokio::sync::Mutex;

#[derive(Parser)]
struct Args {
    /// Closed-loop client counts to run.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    clients: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Shards (each node hosts a replica of every shard).
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Skip the open-loop run.
    #[arg(long)]
    no_open_loop: bool,
    /// Open-loop rates to run (ops/s); default: half of the best closed-loop rate.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Where each shard keeps its retained ids and rounds: memory, or disk (fjall, issue 18).
    #[arg(long, default_value = "memory", value_parser = ["memory", "disk"])]
    state: String,
    /// A snapshot (on disk: a checkpoint) every this many log entries (the node's default
    /// unless given).
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// AppendEntries in flight per follower and shard (`NodeConfig::appends_in_flight`; 1:
    /// unary calls, more: an ordered stream); the node's default unless given.
    #[arg(long)]
    appends_in_flight: Option<usize>,
    /// After the other runs: the open loop with node 3 stopped, then while it restarts and
    /// catches up by snapshot (each node keeps only 100 entries after a snapshot, so a stopped
    /// node falls behind the logs quickly).
    #[arg(long)]
    install: bool,
    #[arg(long, hide = true)]
    bench: bool,
}

struct Report {
    name: String,
    offered: Option<f64>,
    achieved: f64,
    errors: u64,
    hist: Histogram<u64>,
}

impl Report {
    fn print_with_elections(&self, before: &[u64], after: &[u64]) {
        self.print();
        let elections: u64 = before.iter().zip(after).map(|(b, a)| a - b).sum();
        if elections > 0 {
            println!("{:<24} {elections} leader election(s) during the run", "");
        }
    }

    fn print(&self) {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<24} {:>10} {:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}",
            self.name,
            self.offered.map_or("-".to_string(), |o| format!("{o:.0}")),
            self.achieved,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            self.hist.max() as f64 / 1000.0,
            self.errors
        );
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

fn bet(player: &PlayerId, n: u64) -> Command {
    Command::Bet {
        tx: TxId::new(format!("{player}-{n}")).expect("tx id"),
        player: player.clone(),
        round: RoundId::new(format!("r{n}")).expect("round id"),
        currency: Currency::new("EUR").expect("EUR"),
        amount: Amount::new(1).expect("amount"),
    }
}

async fn setup_players(client: Arc<LedgerClient>, n: usize) -> Vec<PlayerId> {
    let eur = Currency::new("EUR").expect("EUR");
    let players: Vec<PlayerId> = (0..n).map(|i| PlayerId::new(format!("bench-{i}")).expect("player")).collect();
    let tasks = players.chunks(64).map(|chunk| {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        tokio::spawn(async move {
            for p in chunk {
                let open = Command::OpenAccount {
                    tx: TxId::new(format!("open-{p}")).unwrap(),
                    player: p.clone(),
                    currency: eur,
                };
                client.submit(open).await.expect("open");
                let dep = Command::Deposit {
                    tx: TxId::new(format!("dep-{p}")).unwrap(),
                    player: p.clone(),
                    currency: eur,
                    amount: Amount::new(1_000_000_000).unwrap(),
                };
                client.submit(dep).await.expect("deposit");
            }
        })
    });
    for t in tasks.collect::<Vec<_>>() {
        t.await.expect("setup task");
    }
    players
}

async fn closed_loop(client: Arc<LedgerClient>, players: &[PlayerId], clients: usize, secs: u64) -> Report {
    let seq = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let total = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, seq, total, errors) = (client.clone(), seq.clone(), total.clone(), errors.clone());
        let player = players[c % players.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                match client.submit(bet(&player, n)).await {
                    // A duplicate is the original receipt of a retried batch that had applied.
                    Ok(Outcome::Applied(_) | Outcome::Duplicate(_)) => {
                        hist.record(t0.elapsed().as_micros().max(1) as u64).expect("record")
                    }
                    other => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("error: {other:?}");
                        }
                    }
                }
            }
            total.lock().await.add(&hist).expect("merge");
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let hist = Arc::try_unwrap(total).expect("sole owner").into_inner();
    Report {
        name: format!("closed loop, {clients} clients"),
        offered: None,
        achieved: hist.len() as f64 / elapsed,
        errors: errors.load(Ordering::Relaxed),
        hist,
    }
}

async fn open_loop(client: Arc<LedgerClient>, players: &[PlayerId], rate: f64, secs: u64) -> Report {
    let hist = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let count = (rate * secs as f64) as u64;
    let mut tasks = Vec::with_capacity(count as usize);
    for n in 0..count {
        let scheduled = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, hist, errors) = (client.clone(), hist.clone(), errors.clone());
        let player = players[(n as usize) % players.len()].clone();
        tasks.push(tokio::spawn(async move {
            match client.submit(bet(&player, 1_000_000_000 + n)).await {
                Ok(Outcome::Applied(_) | Outcome::Duplicate(_)) => {
                    let us = scheduled.elapsed().as_micros().max(1) as u64;
                    hist.lock().await.record(us).expect("record");
                    if us > 100_000 {
                        let sent_at_ms = (scheduled - start).as_millis() as u64;
                        tracing::warn!(target: "timeline", sent_at_ms, took_ms = us / 1000, "slow call");
                    }
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("request task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let hist = Arc::try_unwrap(hist).expect("sole owner").into_inner();
    Report {
        name: "open loop, fixed rate".to_string(),
        offered: Some(rate),
        achieved: hist.len() as f64 / elapsed,
        errors: errors.load(Ordering::Relaxed),
        hist,
    }
}

/// Reports (target `timeline`, level warn) every moment the runtime woke a 1 ms timer more than
/// 10 ms late: then no worker was free, so every task waited, whatever it was waiting for.
/// With `RUST_LOG=timeline=warn` beside the slow calls, this tells a stalled runtime from a
/// stalled pipeline (a call slow while timers fire on time waited for IO or a peer).
async fn watch_for_stalls() {
    let tick = Duration::from_millis(1);
    loop {
        let before = Instant::now();
        tokio::time::sleep(tick).await;
        let late = before.elapsed().saturating_sub(tick);
        if late > Duration::from_millis(10) {
            tracing::warn!(target: "timeline", late_ms = late.as_millis() as u64, "runtime stalled");
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Only when asked for: its thousand wake-ups a second are load on the runtime measured.
    if tracing::enabled!(target: "timeline", tracing::Level::WARN) {
        tokio::spawn(watch_for_stalls());
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, _) = raft_ledger::net::member::ClusterKey::generate();
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    let mut configs = Vec::new();
    let mut members = BTreeMap::new();
    let mut listeners = Vec::new();
    for id in 1..=3u64 {
        let listener = Listener::bind_tcp("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        members.insert(id as NodeId, NodeInfo::new(addr, format!("r{id}"), format!("z{id}")));
        listeners.push(listener);
    }
    for (listener, (id, info)) in listeners.into_iter().zip(members.clone()) {
        let mut config = NodeConfig::new(id, info, tmp.path().join(format!("node-{id}")), args.shards);
        if args.state == "disk" {
            config.state = raft_ledger::node::StateStorage::Disk { cache_bytes: 64 << 20 };
        }
        if let Some(every) = args.snapshot_every {
            config.snapshot_every = every;
        }
        if let Some(n) = args.appends_in_flight {
            config.appends_in_flight = n;
        }
        if args.install {
            config.logs_kept_after_snapshot = 100;
        }
        configs.push(config.clone());
        let node = LedgerNode::start(config, NodeEnv::production(key.clone())).await.expect("node");
        let serving = node.clone();
        servers.push(tokio::spawn(async move {
            let _ = serving.serve(listener).await;
        }));
        nodes.push(node);
    }
    nodes[0].bootstrap(&members).await.expect("bootstrap");
    let addrs: Vec<String> = members.values().map(|m| m.addr.clone()).collect();
    let client = Arc::new(LedgerClient::connect(addrs, ClientOptions::new(key.clone())).await.expect("client"));
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let players = setup_players(client.clone(), max_clients.max(64)).await;

    println!(
        "replicated commit: 3 nodes on loopback, fsync on, {} shards, state in {}, snapshot every {} entries, {} cores, {} s per run",
        args.shards,
        args.state,
        nodes[0].config().snapshot_every,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.secs
    );
    println!(
        "{:<24} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "run", "offered/s", "achieved/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "errors"
    );
    let terms = |nodes: &[LedgerNode]| per_shard(&nodes[0], |s| s.term);
    let mut best: f64 = 0.0;
    for clients in &args.clients {
        let before = terms(&nodes);
        let r = closed_loop(client.clone(), &players, *clients, args.secs).await;
        best = best.max(r.achieved);
        r.print_with_elections(&before, &terms(&nodes));
    }
    let rates = if args.rates.is_empty() { vec![(best / 2.0).floor().max(1.0)] } else { args.rates.clone() };
    if !args.no_open_loop && best > 0.0 {
        for rate in &rates {
            let before = terms(&nodes);
            let r = open_loop(client.clone(), &players, *rate, args.secs).await;
            r.print_with_elections(&before, &terms(&nodes));
        }
    }
    if args.install && best > 0.0 {
        // Node 3 is the last: the runs need it gone, and its server with it (a node on disk
        // holds its store's lease until every handle to it is dropped).
        let (node3, server3) = (nodes.pop().expect("node 3"), servers.pop().expect("server 3"));
        let restarted =
            install_runs(client.clone(), &players, rates[0], args.secs, &nodes, (node3, server3, configs.pop()), &key)
                .await;
        nodes.push(restarted);
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

/// One figure of each shard's status on `node`, in shard order.
fn per_shard(node: &LedgerNode, figure: impl Fn(&ShardStatus) -> u64) -> Vec<u64> {
    node.status().shards.iter().map(figure).collect()
}

/// The open loop with node 3 stopped, then while node 3 restarts and catches up by snapshot;
/// returns the restarted node.
async fn install_runs(
    client: Arc<LedgerClient>,
    players: &[PlayerId],
    rate: f64,
    secs: u64,
    nodes: &[LedgerNode],
    (node3, server3, config): (LedgerNode, tokio::task::JoinHandle<()>, Option<NodeConfig>),
    key: &raft_ledger::net::member::ClusterKey,
) -> LedgerNode {
    let applied = |node: &LedgerNode| per_shard(node, |s| s.applied.unwrap_or(0));
    let stopped_at = applied(&node3);
    node3.shutdown().await;
    drop(node3);
    let _ = server3.await;
    // Let the shards node 3 led elect new leaders first: the runs measure snapshots, not failover.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = per_shard(&nodes[0], |s| s.term);
    let down = open_loop(client.clone(), players, rate, secs).await;
    let after = per_shard(&nodes[0], |s| s.term);
    Report { name: "open loop, node 3 down".into(), ..down }.print_with_elections(&before, &after);
    // A shard needs a snapshot when both live replicas purged their logs past node 3's point.
    let purged_at = |node: &LedgerNode| per_shard(node, |s| s.purged.unwrap_or(0));
    let purged: Vec<u64> = purged_at(&nodes[0]).into_iter().zip(purged_at(&nodes[1])).map(|(a, b)| a.min(b)).collect();
    let needs_snapshot = purged.iter().zip(&stopped_at).filter(|(p, s)| p > s).count();

    // Node 3 comes back half a second into the run, so the run has a quiet start to compare.
    let restart = {
        let (config, key) = (config.expect("node 3's configuration"), key.clone());
        let target = per_shard(&nodes[0], |s| s.committed.unwrap_or(0));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let started = Instant::now();
            let listener = Listener::bind_tcp(&config.info.addr).await.expect("bind node 3's address again");
            let node = LedgerNode::start(config, NodeEnv::production(key)).await.expect("restart node 3");
            let serving = node.clone();
            tokio::spawn(async move { serving.serve(listener).await });
            let start_ms = started.elapsed().as_millis();
            // A replica that never catches up must not hang the benchmark.
            let deadline = started + Duration::from_secs(120);
            loop {
                let now = applied(&node);
                if now.iter().zip(&target).all(|(n, t)| n >= t) {
                    break;
                }
                assert!(Instant::now() < deadline, "node 3 did not catch up within 120 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (node, start_ms, started.elapsed().as_millis())
        })
    };
    let r = open_loop(client.clone(), players, rate, secs).await;
    let (node, start_ms, caught_up_ms) = restart.await.expect("restart task");
    Report { name: "open loop, node 3 installs".into(), ..r }.print();
    println!(
        "{:<24} node 3 stopped at applied {stopped_at:?}, the live replicas purged to {purged:?} ({needs_snapshot} of {} shards need a snapshot); restarted in {start_ms} ms, caught up with the commit index at its restart in {caught_up_ms} ms",
        "",
        purged.len()
    );
    node
}
