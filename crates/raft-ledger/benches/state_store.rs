//! Which embedded engine should hold a shard's state on disk (issue 18): the id index's workload
//! against an in-memory hash map, redb (a B-tree) and fjall (an LSM tree).
//!
//! `cargo bench -p raft-ledger --bench state_store -- [--ids 1000000] [--steady 1000000]
//!  [--cache-mb 256] [--engine all|memory|redb|fjall]`
//!
//! The id index is what grows with history: one record per transaction id for the retention
//! window (7 days: ~600 million ids at 1,000 commands/s). Each command of the workload does what
//! `Ledger::apply` does to it: looks its id up (absent, except for 2% retries of an id from a
//! few batches back, which are found), inserts a record of 96 bytes (about what an id needs:
//! time, fingerprint, kind, sequence, two balances, the bet's round and amount) under a 16-byte
//! digest, and queues the id by time; once the window is full, each command also forgets the
//! oldest id (takes it off the time queue and deletes its record). Commands are applied in
//! batches of 256, one write transaction each (as the state machine applies a log batch), with
//! no fsync per batch: the Raft log is the durable copy, and the state is rebuilt from it after
//! a crash. Every 100 batches a checkpoint makes the state durable (redb: an `Immediate`
//! commit; fjall: `persist(SyncData)`), as a snapshot would.
//!
//! The memory baseline is the shape of today's `Ledger` (a hash map and a time queue).
//!
//! Two phases per engine: **fill** to `--ids` retained ids, then **steady**: `--steady` more
//! commands with the window full, so the index neither grows nor shrinks. Each engine runs in a
//! process of its own (the benchmark starts itself again per engine), so its peak resident
//! memory (`VmHWM`) is its own. The engines' caches are bounded by `--cache-mb`; the memory
//! baseline has no bound, which is the point. The engines' files go to a temporary folder in
//! `target/tmp` (or under `$BENCH_DIR`), removed afterwards.

// Floats here are rates, sizes and durations for the report, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::process::Command;
use std::time::Instant;

mod common;

use clap::Parser;
use hdrhistogram::Histogram;
use redb::ReadableTable as _;

#[derive(Parser, Clone)]
struct Args {
    /// Ids retained once the window is full.
    #[arg(long, default_value_t = 1_000_000)]
    ids: u64,
    /// Commands applied with the window full.
    #[arg(long, default_value_t = 1_000_000)]
    steady: u64,
    /// Cache bound for the on-disk engines, MiB.
    #[arg(long, default_value_t = 256)]
    cache_mb: u64,
    /// `all` runs each engine in a process of its own, in turn.
    #[arg(long, default_value = "all", value_parser = ["all", "memory", "redb", "fjall"])]
    engine: String,
    #[arg(long, hide = true)]
    bench: bool,
}

const BATCH: u64 = 256;
const CHECKPOINT_EVERY: u64 = 100;
const VALUE_BYTES: usize = 96;

/// One command's work on the id index.
struct Op {
    /// A retry's id, looked up (and found) before the new id.
    retry: Option<[u8; 16]>,
    key: [u8; 16],
    at: u64,
    value: [u8; VALUE_BYTES],
}

/// The id index as the state machine would use it: one batch is one write transaction.
trait Store {
    /// Applies a batch; returns how many lookups found their id. Forgets one id per command
    /// when `forget`.
    fn apply(&mut self, ops: &[Op], forget: bool, checkpoint: bool) -> u64;
}

/// The `n`-th id's 16-byte key: splitmix64 twice, as scattered as a digest.
fn key(n: u64) -> [u8; 16] {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&mix(2 * n).to_be_bytes());
    k[8..].copy_from_slice(&mix(2 * n + 1).to_be_bytes());
    k
}

/// The `n`-th id's record, as compressible as a real one: 32 bytes as random as a fingerprint
/// and a round digest, the rest small numbers (time, sequence, balances, amount) and zeros.
fn value(n: u64) -> [u8; VALUE_BYTES] {
    let mut v = [0u8; VALUE_BYTES];
    v[..16].copy_from_slice(&key(n + (1 << 40)));
    v[16..32].copy_from_slice(&key(n + (1 << 41)));
    v[32..40].copy_from_slice(&n.to_be_bytes());
    v[40..48].copy_from_slice(&(n * 100).to_be_bytes());
    v[48..56].copy_from_slice(&(1_000_000 - n % 1_000_000).to_be_bytes());
    v
}

/// Time-queue key: big-endian time, then the id, so byte order is time order.
fn queue_key(at: u64, key: &[u8; 16]) -> [u8; 24] {
    let mut q = [0u8; 24];
    q[..8].copy_from_slice(&at.to_be_bytes());
    q[8..].copy_from_slice(key);
    q
}

struct Memory {
    ids: HashMap<[u8; 16], (u64, [u8; VALUE_BYTES]), foldhash::fast::RandomState>,
    queue: VecDeque<(u64, [u8; 16])>,
}

impl Store for Memory {
    fn apply(&mut self, ops: &[Op], forget: bool, _checkpoint: bool) -> u64 {
        let mut found = 0;
        for op in ops {
            found += op.retry.iter().filter(|k| self.ids.contains_key(*k)).count() as u64;
            found += u64::from(self.ids.contains_key(&op.key));
            self.ids.insert(op.key, (op.at, op.value));
            self.queue.push_back((op.at, op.key));
            if forget && let Some((_, k)) = self.queue.pop_front() {
                self.ids.remove(&k);
            }
        }
        found
    }
}

const IDS: redb::TableDefinition<&[u8; 16], &[u8]> = redb::TableDefinition::new("ids");
const QUEUE: redb::TableDefinition<&[u8; 24], ()> = redb::TableDefinition::new("queue");

struct Redb {
    db: redb::Database,
}

impl Store for Redb {
    fn apply(&mut self, ops: &[Op], forget: bool, checkpoint: bool) -> u64 {
        let mut txn = self.db.begin_write().unwrap();
        if !checkpoint {
            txn.set_durability(redb::Durability::None).unwrap();
        }
        let mut found = 0;
        {
            let mut ids = txn.open_table(IDS).unwrap();
            let mut queue = txn.open_table(QUEUE).unwrap();
            for op in ops {
                for k in op.retry.iter().chain([&op.key]) {
                    found += u64::from(ids.get(k).unwrap().is_some());
                }
                ids.insert(&op.key, op.value.as_slice()).unwrap();
                queue.insert(&queue_key(op.at, &op.key), ()).unwrap();
                if forget {
                    let oldest = queue.pop_first().unwrap().map(|(k, _)| *k.value());
                    if let Some(q) = oldest {
                        let id: [u8; 16] = q[8..].try_into().unwrap();
                        ids.remove(&id).unwrap();
                    }
                }
            }
        }
        txn.commit().unwrap();
        found
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    ids: fjall::PartitionHandle,
    queue: fjall::PartitionHandle,
    /// The last queue key forgotten. The next oldest is read from just after it: reading the
    /// queue from its start would walk every tombstone the deletes left until compaction.
    cursor: Option<[u8; 24]>,
}

impl Store for Fjall {
    fn apply(&mut self, ops: &[Op], forget: bool, checkpoint: bool) -> u64 {
        let mut batch = self.keyspace.batch();
        let mut found = 0;
        // A batch is not readable until it commits; within one, the oldest ids come from what
        // earlier batches committed, read in order from the cursor.
        let after = self.cursor.map_or(Bound::Unbounded, |c| Bound::Excluded(c.to_vec()));
        let mut oldest = self.queue.range((after, Bound::Unbounded));
        for op in ops {
            for k in op.retry.iter().chain([&op.key]) {
                found += u64::from(self.ids.get(k).unwrap().is_some());
            }
            batch.insert(&self.ids, op.key, op.value.as_slice());
            batch.insert(&self.queue, queue_key(op.at, &op.key), []);
            if forget && let Some(kv) = oldest.next() {
                let q: [u8; 24] = kv.unwrap().0.as_ref().try_into().unwrap();
                batch.remove(&self.queue, q);
                batch.remove(&self.ids, &q[8..]);
                self.cursor = Some(q);
            }
        }
        drop(oldest);
        batch.commit().unwrap();
        if checkpoint {
            self.keyspace.persist(fjall::PersistMode::SyncData).unwrap();
        }
        found
    }
}

/// Applies commands `from..to`; forgets one id per command when `forget`.
fn phase(store: &mut dyn Store, from: u64, to: u64, forget: bool, name: &str) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let (mut found, mut batches) = (0u64, 0u64);
    let mut ops = Vec::with_capacity(BATCH as usize);
    let start = Instant::now();
    let mut n = from;
    // At least one batch, so even an empty phase ends with a checkpoint.
    loop {
        let end = (n + BATCH).min(to);
        ops.clear();
        // 2% of commands retry an id from a few batches back; the rest are new.
        ops.extend((n..end).map(|i| Op {
            retry: (i % 50 == 0 && i >= 4 * BATCH).then(|| key(i - 3 * BATCH)),
            key: key(i),
            at: i,
            value: value(i),
        }));
        batches += 1;
        let last = end == to;
        let b0 = Instant::now();
        found += store.apply(&ops, forget, last || batches.is_multiple_of(CHECKPOINT_EVERY));
        hist.record((b0.elapsed().as_nanos() as u64 / (end - n).max(1)).max(1)).unwrap();
        n = end;
        if last {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let common::Memory { resident: rss, peak } = common::memory();
    println!(
        "  {name:<6} {:>10} commands  {:>9.0} /s  per command p50 {:>6} ns  p99 {:>7} ns  p999 {:>8} ns  \
         retries found {found}  rss {:.0} MiB  peak {:.0} MiB",
        to - from,
        (to - from) as f64 / secs,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        rss as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64,
    );
}

fn run(engine: &str, args: &Args) {
    // Cargo's scratch folder for benchmarks is under `target/`, on the same disk as a node's data.
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").into()))
        .unwrap();
    let cache = args.cache_mb << 20;
    let mut store: Box<dyn Store> = match engine {
        "memory" => Box::new(Memory { ids: HashMap::default(), queue: VecDeque::new() }),
        "redb" => {
            let db =
                redb::Database::builder().set_cache_size(cache as usize).create(dir.path().join("state.redb")).unwrap();
            Box::new(Redb { db })
        }
        "fjall" => {
            let keyspace = fjall::Config::new(dir.path()).cache_size(cache).open().unwrap();
            let opts = fjall::PartitionCreateOptions::default;
            let ids = keyspace.open_partition("ids", opts()).unwrap();
            let queue = keyspace.open_partition("queue", opts()).unwrap();
            Box::new(Fjall { keyspace, ids, queue, cursor: None })
        }
        other => unreachable!("clap allows no engine {other}"),
    };
    println!("{engine} (cache bound {} MiB for the on-disk engines)", args.cache_mb);
    phase(store.as_mut(), 0, args.ids, false, "fill");
    phase(store.as_mut(), args.ids, args.ids + args.steady, true, "steady");
    let disk = common::disk_bytes(dir.path());
    if disk > 0 {
        println!(
            "  on disk {:.0} MiB for {} retained ids: {:.0} bytes per id (key 16 + value {VALUE_BYTES} + time queue 24)",
            disk as f64 / (1 << 20) as f64,
            args.ids,
            disk as f64 / args.ids as f64
        );
    }
}

fn main() {
    let args = Args::parse();
    if args.engine != "all" {
        run(&args.engine, &args);
        return;
    }
    println!("id index: {} ids retained, {} steady commands, batches of {BATCH}", args.ids, args.steady);
    let exe = std::env::current_exe().unwrap();
    for engine in ["memory", "redb", "fjall"] {
        let status = Command::new(&exe)
            .args(["--engine", engine, "--ids", &args.ids.to_string(), "--steady", &args.steady.to_string()])
            .args(["--cache-mb", &args.cache_mb.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "{engine} run failed");
    }
}
