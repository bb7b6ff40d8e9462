//! Restart time against history: how long a node takes from start to serving again, at growing
//! journal lengths.
//!
//! `cargo bench -p raft-ledger --bench restart -- [--entries 1000000,10000000] [--dir DIR]`
//!
//! A one-node cluster (fsync on) takes deposits in batches of 1024 until its shard's journal
//! holds each target number of entries; then the node is shut down and started again on the
//! same data directory, and the time to `LedgerNode::start` and to an elected leader that has
//! applied everything is measured. Ids are retained for 10 s of cluster time so that memory
//! reflects the history's length, not the id window. For comparison the run also times a full
//! replay of the chain (`verify`), which is what opening the journal used to cost.

// Floats here are durations for the report, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use raft_ledger::net::env::Listener;
use raft_ledger::net::member::ClusterKey;
use raft_ledger::node::{LedgerNode, NodeConfig, NodeEnv};
use raft_ledger::raft::NodeInfo;
use raft_ledger::{Amount, Command, Currency, LedgerConfig, PlayerId, TxId};

#[derive(Parser)]
struct Args {
    /// Journal lengths to measure at, comma separated, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    entries: Vec<u64>,
    /// Keep the data here (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    #[arg(long, hide = true)]
    bench: bool,
}

const PLAYERS: usize = 10_000;
const BATCH: usize = 1024;

fn config(dir: &std::path::Path, addr: &str) -> NodeConfig {
    let mut c = NodeConfig::new(1, NodeInfo::new(addr, "r1", "z1"), dir, 1);
    c.ledger = LedgerConfig { id_retention_ms: 10_000 };
    // A snapshot every 1000 log entries (about a million ledger entries), as a busy shard
    // would take them with the default every 10,000 entries of smaller batches.
    c.snapshot_every = 1_000;
    c.logs_kept_after_snapshot = 200;
    c
}

async fn start(
    dir: &std::path::Path,
    key: &ClusterKey,
    addr: &mut String,
) -> (LedgerNode, tokio::task::JoinHandle<()>) {
    let listener = Listener::bind_tcp(if addr.is_empty() { "127.0.0.1:0" } else { addr.as_str() }).await.expect("bind");
    *addr = listener.local_addr().expect("addr").to_string();
    let node = LedgerNode::start(config(dir, addr), NodeEnv::production(key.clone())).await.expect("start");
    let serving = node.clone();
    let server = tokio::spawn(async move {
        serving.serve(listener).await.expect("serve");
    });
    (node, server)
}

/// Waits until shard 0 has a leader that has applied its whole log.
async fn wait_serving(node: &LedgerNode) {
    loop {
        if let Some(s) = node.status().shard(0)
            && s.state == "Leader"
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let (key, _) = ClusterKey::generate();
    let eur = Currency::new("EUR").expect("EUR");
    let mut addr = String::new();
    let (mut node, mut server) = start(&dir, &key, &mut addr).await;
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
    println!("restart time against history (one node, one shard, fsync on; journal entries of ~200 bytes)");
    println!(
        "{:>12} {:>10} {:>12} {:>14} {:>16} {:>18}",
        "entries", "journal", "write s", "start ms", "serving ms", "full replay ms"
    );
    let mut written = PLAYERS as u64;
    let mut next_tx = 0u64;
    let begun = Instant::now();
    for &target in &args.entries {
        while written < target {
            let n = BATCH.min((target - written) as usize);
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
        let write_s = begun.elapsed().as_secs_f64();
        let journal_mb = std::fs::metadata(dir.join("shards/0/journal.log")).map_or(0, |m| m.len()) >> 20;
        node.shutdown().await;
        let _ = server.await;
        let t = Instant::now();
        let (restarted, restarted_server) = start(&dir, &key, &mut addr).await;
        let start_ms = t.elapsed().as_secs_f64() * 1e3;
        wait_serving(&restarted).await;
        let serving_ms = t.elapsed().as_secs_f64() * 1e3;
        let v = Instant::now();
        let report = restarted.verify(0).expect("verify");
        assert!(report.ok(), "the chain verifies after the restart");
        assert_eq!(report.entries, written, "every entry is there");
        let replay_ms = v.elapsed().as_secs_f64() * 1e3;
        println!(
            "{:>12} {:>8}MB {:>12.1} {:>14.1} {:>16.1} {:>18.1}",
            written, journal_mb, write_s, start_ms, serving_ms, replay_ms
        );
        (node, server) = (restarted, restarted_server);
    }
    node.shutdown().await;
    let _ = server.await;
}
