//! Restart time against history: how long a node takes from start to serving again, at growing
//! journal lengths.
//!
//! `cargo bench -p raft-ledger --bench restart -- [--entries 1000000,10000000] [--dir DIR]
//! [--state memory|disk] [--retain-all] [--catch-up [--piece-bytes N]]`
//!
//! `--catch-up` then adds an empty node as a learner and times until it holds the whole chain:
//! a new replica catching up from a snapshot of that state (sent in pieces) and the log since.
//!
//! With `--retain-all` cluster time runs at the wall clock's pace, so every id written stays in
//! the 7-day window: restart time against retained ids (issue 18), in memory (the snapshot is an
//! image of them all) or on disk (a checkpoint of the state's files).
//!
//! A one-node cluster (fsync on) takes deposits in batches of 1024 until its shard's journal
//! holds each target number of entries less a tail, takes a snapshot, writes the tail (`--tail`,
//! 50,000 entries by default: the log a restart must replay, "log tail" in Raft log entries);
//! then the node is shut down and started again on the same data directory, and the time to
//! `LedgerNode::start` and to an elected leader that has applied everything is measured. Cluster time runs 100,000 times faster than the wall clock
//! (the node's clock is injected), so the 24-hour id window holds under a second of traffic and
//! the snapshot stays small: what is measured is history, not the id window (that is issue 18).
//! For comparison the run also times a full replay of the chain (`verify`), which is what
//! opening the journal used to cost.

// Floats here are durations for the report, never money.
#![allow(clippy::float_arithmetic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use clap::Parser;
use ledger_core::{Amount, ClusterTime, Command, Currency, LedgerConfig, PlayerId, TxId};
use openraft::rt::WatchReceiver as _;
use raft_ledger::Clock;
use raft_ledger::net::env::Listener;
use raft_ledger::net::member::ClusterKey;
use raft_ledger::node::{LedgerNode, NodeConfig, NodeEnv};
use raft_ledger::raft::NodeInfo;

/// When the benchmark started: its clock keeps running across restarts.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

#[derive(Parser)]
struct Args {
    /// Journal lengths to measure at, comma separated, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    entries: Vec<u64>,
    /// Keep the data here (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Ledger entries written after the last snapshot before each restart.
    #[arg(long, default_value_t = 50_000)]
    tail: u64,
    /// Where the shard keeps its retained ids and rounds: memory, or disk (fjall, issue 18).
    #[arg(long, default_value = "memory", value_parser = ["memory", "disk"])]
    state: String,
    /// Retain every id written (cluster time at the wall clock's pace, the default id window)
    /// instead of a window under a second long: restart against retained ids, not history.
    #[arg(long)]
    retain_all: bool,
    /// After the last restart, add an empty node as a learner and time its catch-up: a snapshot
    /// of the whole state sent in pieces, then the log since.
    #[arg(long)]
    catch_up: bool,
    /// The most snapshot bytes one call carries (`NodeConfig::snapshot_piece_bytes`).
    #[arg(long, default_value_t = 16 << 20)]
    piece_bytes: u64,
    #[arg(long, hide = true)]
    bench: bool,
}

const PLAYERS: usize = 10_000;
const BATCH: usize = 1024;

fn config(id: u64, dir: &std::path::Path, addr: &str, args: &Args) -> NodeConfig {
    let mut c = NodeConfig::new(id, NodeInfo::new(addr, "r1", "z1"), dir, 1);
    c.snapshot_piece_bytes = args.piece_bytes;
    if !args.retain_all {
        c.ledger = LedgerConfig { id_retention_ms: ledger_core::HOLD_TIMEOUT_MAX_MS };
    }
    if args.state == "disk" {
        c.state = raft_ledger::node::StateStorage::Disk { cache_bytes: 64 << 20 };
    }
    // A snapshot every 1000 log entries (about a million ledger entries), as a busy shard
    // would take them with the default every 10,000 entries of smaller batches.
    c.snapshot_every = 1_000;
    c.logs_kept_after_snapshot = 200;
    c
}

/// Cluster time at `.1` times the wall clock's pace, from a fixed start.
struct FastClock(Instant, u64);

impl Clock for FastClock {
    fn now(&self) -> ClusterTime {
        ClusterTime::from_millis(1_800_000_000_000 + self.0.elapsed().as_micros() as u64 * self.1 / 1000)
    }
}

async fn start(
    id: u64,
    dir: &std::path::Path,
    key: &ClusterKey,
    addr: &mut String,
    args: &Args,
) -> (LedgerNode, tokio::task::JoinHandle<()>) {
    let listener = Listener::bind_tcp(if addr.is_empty() { "127.0.0.1:0" } else { addr.as_str() }).await.expect("bind");
    *addr = listener.local_addr().expect("addr").to_string();
    let speed = if args.retain_all { 1 } else { 100_000 };
    let env = NodeEnv { clock: Arc::new(FastClock(*EPOCH, speed)), ..NodeEnv::production(key.clone()) };
    let node = LedgerNode::start(config(id, dir, addr, args), env).await.expect("start");
    let serving = node.clone();
    let server = tokio::spawn(async move {
        serving.serve(listener).await.expect("serve");
    });
    (node, server)
}

/// Adds an empty node 2 as a learner of shard 0 and times until it holds the leader's whole
/// chain: with the log purged behind the last snapshot, that is a snapshot transfer.
async fn catch_up(leader: &LedgerNode, dir: &std::path::Path, key: &ClusterKey, args: &Args) {
    let new_dir = dir.join("catch-up");
    let _ = std::fs::remove_dir_all(&new_dir);
    let mut addr = String::new();
    let (learner, server) = start(2, &new_dir, key, &mut addr, args).await;
    let raft = leader.raft(0).expect("shard 0");
    let snapshot = leader.status().shard(0).and_then(|s| s.snapshot);
    let t = Instant::now();
    raft.add_learner(2, learner.config().info.clone(), true).await.expect("add learner");
    let head = leader.head(0).expect("head");
    while learner.head(0) != Some(head) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let installed = learner.status().shard(0).and_then(|s| s.snapshot);
    assert!(installed.is_some() && installed >= snapshot, "the learner installed the snapshot");
    let report = learner.verify(0).expect("verify");
    assert!(report.ok(), "the learner's chain verifies");
    let journal = std::fs::metadata(new_dir.join("shards/0/journal.log")).map_or(0, |m| m.len());
    let state = std::fs::metadata(new_dir.join("shards/0/snapshot.bin")).map_or(0, |m| m.len())
        + common::disk_bytes(&new_dir.join("shards/0/state"));
    println!(
        "a new replica caught up in {:.1} s (snapshot pieces of at most {} KiB): journal {} MiB and state {} MiB \
         written, {:.0} MiB/s",
        secs,
        args.piece_bytes >> 10,
        journal >> 20,
        state >> 20,
        (journal + state) as f64 / (1 << 20) as f64 / secs
    );
    learner.shutdown().await;
    let _ = server.await;
}

/// Waits until shard 0 has a leader that has applied its whole log.
async fn wait_serving(node: &LedgerNode) {
    loop {
        if let Some(s) = node.status().shard(0)
            && s.state == raft_ledger::api::ReplicaRole::Leader
            && s.applied == s.last_log_index
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    // The node's own logs, with RUST_LOG (e.g. `raft_ledger=info` for a snapshot transfer's steps).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let (key, _) = ClusterKey::generate();
    let eur = Currency::new("EUR").expect("EUR");
    let mut addr = String::new();
    let (mut node, mut server) = start(1, &dir, &key, &mut addr, &args).await;
    node.bootstrap(&BTreeMap::from([(1, node.config().info.clone())])).await.expect("bootstrap");
    wait_serving(&node).await;
    let players: Vec<PlayerId> = (0..PLAYERS).map(|i| PlayerId::new(format!("p{i}")).expect("id")).collect();
    for chunk in players.chunks(BATCH) {
        let opens = chunk
            .iter()
            .map(|p| Command::OpenAccount {
                tx: TxId::new(format!("open-{p}")).expect("id"),
                player: p.clone(),
                currency: eur,
            })
            .collect();
        node.submit_batch(0, opens, Duration::from_secs(60)).await.expect("open");
    }
    println!(
        "restart time against history (one node, one shard, fsync on; journal entries of ~200 bytes; state in {}; {})",
        args.state,
        if args.retain_all { "every id retained" } else { "an id window under a second long" }
    );
    println!(
        "{:>12} {:>10} {:>10} {:>12} {:>10} {:>14} {:>16} {:>18}",
        "entries", "journal", "state", "write s", "log tail", "start ms", "serving ms", "full replay ms"
    );
    let mut written = PLAYERS as u64;
    let mut next_tx = 0u64;
    let begun = Instant::now();
    for &target in &args.entries {
        let mut deposit = async |node: &LedgerNode, upto: u64| {
            while written < upto {
                let n = BATCH.min((upto - written) as usize);
                let batch: Vec<Command> = (0..n)
                    .map(|i| {
                        next_tx += 1;
                        Command::Deposit {
                            tx: TxId::new(format!("d{next_tx}")).expect("id"),
                            player: players[(next_tx as usize + i) % PLAYERS].clone(),
                            currency: eur,
                            amount: Amount::new(1).expect("positive"),
                        }
                    })
                    .collect();
                node.submit_batch(0, batch, Duration::from_secs(60)).await.expect("deposit");
                written += n as u64;
            }
            written
        };
        deposit(&node, target - args.tail).await;
        // A snapshot now, then the same tail of log after it at every size: what a restart
        // replays is that tail, whatever the history before it.
        let raft = node.raft(0).expect("shard 0");
        let applied = raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index);
        let snapshotted = || raft.metrics().borrow_watched().snapshot.is_some_and(|s| s.index >= applied);
        let asked = Instant::now();
        while !snapshotted() {
            // A request while another snapshot is being built is dropped: ask again.
            raft.trigger().snapshot().await.expect("snapshot");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(asked.elapsed() < Duration::from_secs(120), "no snapshot within two minutes");
        }
        let written_now = deposit(&node, target).await;
        let write_s = begun.elapsed().as_secs_f64();
        let snapshot_at = node.status().shard(0).and_then(|s| s.snapshot).unwrap_or(0);
        let log_tail = node.status().shard(0).and_then(|s| s.last_log_index).unwrap_or(0) - snapshot_at;
        let journal_mb = std::fs::metadata(dir.join("shards/0/journal.log")).map_or(0, |m| m.len()) >> 20;
        // The snapshot image in memory mode, the state's files on disk.
        let state_mb = (std::fs::metadata(dir.join("shards/0/snapshot.bin")).map_or(0, |m| m.len())
            + common::disk_bytes(&dir.join("shards/0/state")))
            >> 20;
        node.shutdown().await;
        let _ = server.await;
        // Release the node's files (its on-disk state) before another opens them.
        drop(node);
        let t = Instant::now();
        let (restarted, restarted_server) = start(1, &dir, &key, &mut addr, &args).await;
        let start_ms = t.elapsed().as_secs_f64() * 1e3;
        wait_serving(&restarted).await;
        let serving_ms = t.elapsed().as_secs_f64() * 1e3;
        let v = Instant::now();
        let report = restarted.verify(0).expect("verify");
        assert!(report.ok(), "the chain verifies after the restart");
        assert_eq!(report.entries, written_now, "every entry is there");
        let replay_ms = v.elapsed().as_secs_f64() * 1e3;
        println!(
            "{:>12} {:>8}MB {:>8}MB {:>12.1} {:>10} {:>14.1} {:>16.1} {:>18.1}",
            written_now, journal_mb, state_mb, write_s, log_tail, start_ms, serving_ms, replay_ms
        );
        (node, server) = (restarted, restarted_server);
    }
    if args.catch_up {
        catch_up(&node, &dir, &key, &args).await;
    }
    node.shutdown().await;
    let _ = server.await;
    let m = common::memory();
    println!("this process: {} MiB resident, {} MiB at peak", m.resident >> 20, m.peak >> 20);
}
