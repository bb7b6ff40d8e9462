//! Why the node's Raft log is purpose-built: durable appends per second against redb.
//!
//! `cargo bench -p raft-ledger --bench wal_vs_redb -- [--writers 1,16,256] [--secs 5]`
//!
//! Each writer stands for one shard replica appending Raft entries (a bet command each) and
//! waiting until the append is durable, as Raft requires before acknowledging. Both stores
//! fsync every acknowledged write:
//!
//! - **our WAL**: all writers share one log; a writer thread takes whatever has queued, writes
//!   it with one `write` and makes it durable with one `fdatasync` (group commit).
//! - **redb** (a well-kept embedded B-tree store): one write transaction per append, committed
//!   with its default `Durability::Immediate`. redb serialises write transactions, so concurrent
//!   writers queue behind each other's fsyncs.

// Floats here are rates and durations for the report, never money.
#![allow(clippy::float_arithmetic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use ledger_core::{Amount, ClusterTime, Command, Currency, PlayerId, RoundId, TxId};
use openraft::entry::RaftEntry as _;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use raft_ledger::raft::{Proposal, RaftEntry, Request, TypeConfig};
use raft_ledger::store::vfs::StdFs;
use raft_ledger::store::{IoMode, NodeLog};

#[derive(Parser)]
struct Args {
    /// Concurrent writers to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    writers: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    #[arg(long, hide = true)]
    bench: bool,
}

const TABLE: redb::TableDefinition<(u32, u64), &[u8]> = redb::TableDefinition::new("raft_log");

fn entry(index: u64) -> RaftEntry {
    let cmd = Command::Bet {
        tx: TxId::new(format!("tx-{index}")).unwrap(),
        player: PlayerId::new("player-1234").unwrap(),
        round: RoundId::new(format!("round-{index}")).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        amount: Amount::new(100).unwrap(),
    };
    let proposal = Proposal { at: ClusterTime::from_millis(index), request: Request::Commands(vec![cmd]) };
    RaftEntry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), proposal)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn report(store: &str, writers: usize, appends: u64, elapsed: Duration, hist: &Histogram<u64>) {
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{store:<8} {writers:>8} {:>14.0} {:>9.2} {:>9.2} {:>9.2}",
        appends as f64 / elapsed.as_secs_f64(),
        us(0.5),
        us(0.99),
        us(0.999)
    );
}

async fn ours(writers: usize, secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = NodeLog::open(Arc::new(StdFs), dir.path(), IoMode::Thread, 64 << 20).unwrap();
    let log = Arc::new(log);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (log, stop) = (log.clone(), stop.clone());
            tokio::spawn(async move {
                let mut store = log.shard(w as u32);
                let mut hist = histogram();
                let mut index = 1;
                while !stop.load(Ordering::Relaxed) {
                    let (tx, rx) = TypeConfig::oneshot();
                    let t0 = Instant::now();
                    store.append([entry(index)], IOFlushed::<TypeConfig>::signal(tx)).await.unwrap();
                    rx.await.unwrap().unwrap();
                    hist.record(t0.elapsed().as_micros().max(1) as u64).unwrap();
                    index += 1;
                }
                hist
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = histogram();
    for t in tasks {
        hist.add(t.await.unwrap()).unwrap();
    }
    report("our WAL", writers, hist.len(), start.elapsed(), &hist);
    log.close().await;
}

fn redb(writers: usize, secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(redb::Database::create(dir.path().join("log.redb")).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut hist = histogram();
                let mut index = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    let bytes = postcard::to_allocvec(&entry(index)).unwrap();
                    let t0 = Instant::now();
                    let txn = db.begin_write().unwrap();
                    {
                        let mut table = txn.open_table(TABLE).unwrap();
                        table.insert((w as u32, index), bytes.as_slice()).unwrap();
                    }
                    txn.commit().unwrap();
                    hist.record(t0.elapsed().as_micros().max(1) as u64).unwrap();
                    index += 1;
                }
                hist
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut hist = histogram();
    for t in threads {
        hist.add(t.join().unwrap()).unwrap();
    }
    report("redb", writers, hist.len(), start.elapsed(), &hist);
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    println!("durable appends (fsync before acknowledging), one Raft entry each, {} s per run", args.secs);
    println!("{:<8} {:>8} {:>14} {:>9} {:>9} {:>9}", "store", "writers", "appends/s", "p50 ms", "p99 ms", "p999 ms");
    for &w in &args.writers {
        ours(w, args.secs).await;
        let secs = args.secs;
        tokio::task::spawn_blocking(move || redb(w, secs)).await.unwrap();
    }
}
