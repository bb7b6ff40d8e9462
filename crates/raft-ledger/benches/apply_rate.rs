//! Apply rate of the pure ledger state machine on one core.
//!
//! `cargo bench -p raft-ledger --bench apply_rate -- [--ops N] [--players P] [--state memory|disk]
//!  [--cache-mb 256] [--dir D] [--retain IDS]`
//!
//! Generates a realistic casino mix (deposits, bets, wins, rollbacks, withdrawals, transfers,
//! with 2% of commands retried under the same id) 64 commands at a time, and times only
//! `Ledger::apply` (and, for `--state disk`, the flush after each batch of 64, which is part of
//! applying). Prints throughput, the latency of each apply (p50/p99/p999, measured per batch of
//! 64 to keep the timer's own cost out of the figures) and resident memory.
//!
//! `--state disk` keeps the retained ids, rounds and their queue in `DiskState` (fjall) instead
//! of hash maps; `--retain N` runs only a steady scenario with about N ids retained.
//!
//! Three scenarios run in turn:
//! - **growth**: a fresh ledger with the default 7-day id window, so every index only grows
//!   (rehashing and first-touch page faults included);
//! - **steady**: the window is 24 h and cluster time advances 100 ms per command, so after a
//!   warm-up of one window the ledger forgets ids as fast as it learns them (~864k retained);
//! - **hot**: as steady, but 20 s of cluster time pass per command, so only ~4k ids are retained
//!   and every index fits in the CPU's caches: the cost of the work itself, without the cache
//!   misses that millions of retained ids cause (holds of 60 s expire three commands later, so
//!   this mix has more expiry entries).

// Floats here are rates and durations for the report, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
mod common;

use ledger_core::{
    Amount, ClusterTime, Command, Currency, Ledger, LedgerConfig, LedgerState, MemState, Outcome, PlayerId, RoundId,
    ShardId, TxId,
};
use raft_ledger::store::DiskState;

#[derive(Parser)]
struct Args {
    /// Commands to apply.
    #[arg(long, default_value_t = 2_000_000)]
    ops: usize,
    /// Distinct players.
    #[arg(long, default_value_t = 10_000)]
    players: usize,
    /// Where the retained ids, rounds and their queue live: hash maps in memory, or on disk
    /// (fjall, flushed after every batch of 64 commands, as the state machine would).
    #[arg(long, default_value = "memory", value_parser = ["memory", "disk"])]
    state: String,
    /// The on-disk state's block cache, MiB.
    #[arg(long, default_value_t = 256)]
    cache_mb: u64,
    /// Where the on-disk state's files go (a temporary directory under it).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Run only the steady scenario, with about this many ids retained (the 24 h window divided
    /// into this many commands' worth of cluster time).
    #[arg(long)]
    retain: Option<u64>,
    #[arg(long, hide = true)]
    bench: bool,
}

/// A small deterministic generator (xorshift), so every run applies the same commands.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The command stream, generated a batch at a time so a run of tens of millions of commands
/// holds only the ledger (resident memory is then the state's, not the workload's). The same
/// seed gives the same stream as ever: the opening and funding of every player, then the mix.
struct Workload {
    g: Gen,
    players: usize,
    eur: Currency,
    /// Commands made so far.
    made: usize,
    /// The last 1,000 commands, which retries copy.
    recent: VecDeque<Command>,
    last_bet: Vec<Option<(TxId, RoundId)>>,
}

impl Workload {
    fn new(players: usize) -> Self {
        Self {
            g: Gen(0x9e37_79b9_7f4a_7c15),
            players,
            eur: Currency::new("EUR").unwrap(),
            made: 0,
            recent: VecDeque::with_capacity(1000),
            last_bet: vec![None; players],
        }
    }

    fn next(&mut self) -> Command {
        let (eur, players) = (self.eur, self.players);
        let pid = |i: usize| PlayerId::new(format!("player-{i}")).unwrap();
        let cmd = if self.made < 2 * players {
            let i = self.made / 2;
            if self.made.is_multiple_of(2) {
                Command::OpenAccount { tx: TxId::new(format!("open-{i}")).unwrap(), player: pid(i), currency: eur }
            } else {
                Command::Deposit {
                    tx: TxId::new(format!("dep-{i}")).unwrap(),
                    player: pid(i),
                    currency: eur,
                    amount: Amount::new(1_000_000).unwrap(),
                }
            }
        } else {
            let n = self.made - 2 * players;
            let g = &mut self.g;
            let p = g.below(players);
            let tx = TxId::new(format!("tx-{n}")).unwrap();
            let roll = g.below(100);
            if roll < 2 && !self.recent.is_empty() {
                let back = g.below(self.recent.len());
                self.recent[self.recent.len() - 1 - back].clone()
            } else if roll < 50 {
                let round = RoundId::new(format!("round-{n}")).unwrap();
                self.last_bet[p] = Some((tx.clone(), round.clone()));
                Command::Bet { tx, player: pid(p), round, currency: eur, amount: Amount::new(100).unwrap() }
            } else if roll < 80 {
                match &self.last_bet[p] {
                    Some((_, round)) => Command::Win {
                        tx,
                        player: pid(p),
                        round: round.clone(),
                        currency: eur,
                        amount: Amount::new(180).unwrap(),
                    },
                    None => Command::Deposit { tx, player: pid(p), currency: eur, amount: Amount::new(500).unwrap() },
                }
            } else if roll < 85 {
                match self.last_bet[p].take() {
                    Some((bet, round)) => Command::Rollback { tx, player: pid(p), round, bet },
                    None => Command::Deposit { tx, player: pid(p), currency: eur, amount: Amount::new(500).unwrap() },
                }
            } else if roll < 93 {
                Command::Deposit { tx, player: pid(p), currency: eur, amount: Amount::new(500).unwrap() }
            } else if roll < 97 {
                Command::Transfer {
                    tx,
                    from: pid(p),
                    to: pid((p + 1) % players),
                    currency: eur,
                    amount: Amount::new(10).unwrap(),
                }
            } else {
                Command::ReserveWithdrawal {
                    tx,
                    player: pid(p),
                    currency: eur,
                    amount: Amount::new(50).unwrap(),
                    timeout_ms: 60_000,
                }
            }
        };
        self.made += 1;
        if self.recent.len() == 1000 {
            self.recent.pop_front();
        }
        self.recent.push_back(cmd.clone());
        cmd
    }

    /// The next `n` commands.
    fn batch(&mut self, n: usize, out: &mut Vec<Command>) {
        out.clear();
        out.extend((0..n).map(|_| self.next()));
    }
}

/// What a run does with each kind of retained state beyond applying: after each batch of
/// commands, nothing in memory, while the on-disk state commits the batch's writes, as the
/// state machine would after applying a batch of log entries; and what it reports of itself.
trait BenchState {
    fn after_batch(&mut self) {}
    fn report(&self) -> Option<String> {
        None
    }
}

impl BenchState for MemState {}

impl BenchState for DiskState {
    fn after_batch(&mut self) {
        self.flush(b"");
    }

    fn report(&self) -> Option<String> {
        Some(format!("filters         {} MiB", self.filter_bytes() >> 20))
    }
}

struct Run<S> {
    ledger: Ledger<S>,
    t_ms: u64,
    ms_per_op: u64,
}

impl<S: LedgerState + BenchState> Run<S> {
    /// Applies `count` commands from `work`, timing only when `report` names the phase.
    fn apply(&mut self, work: &mut Workload, count: usize, report: Option<&str>) {
        let mut sink = Vec::with_capacity(64);
        let mut batch = Vec::with_capacity(64);
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let (mut applied, mut rejected, mut duplicates) = (0u64, 0u64, 0u64);
        let mut elapsed = Duration::ZERO;
        let mut left = count;
        while left > 0 {
            let n = left.min(64);
            left -= n;
            work.batch(n, &mut batch);
            let b0 = Instant::now();
            for cmd in &batch {
                self.t_ms += self.ms_per_op;
                match self.ledger.apply(cmd, ClusterTime::from_millis(self.t_ms), &mut sink) {
                    Outcome::Applied(_) => applied += 1,
                    Outcome::Duplicate(_) | Outcome::AlreadyFailed(_) | Outcome::Conflict => duplicates += 1,
                    Outcome::Rejected(_) => rejected += 1,
                }
                sink.clear();
            }
            self.ledger.state_mut().after_batch();
            let took = b0.elapsed();
            elapsed += took;
            hist.record((took.as_nanos() as u64 / n as u64).max(1)).unwrap();
        }
        let Some(name) = report else { return };
        self.ledger.check_invariants();
        let common::Memory { resident, peak } = common::memory();
        println!("{name}");
        println!("  commands        {count}");
        println!("  applied         {applied}  rejected {rejected}  duplicate/conflict {duplicates}");
        println!("  ids remembered  {}", self.ledger.remembered_ids());
        println!("  elapsed         {:.3} s (applying only)", elapsed.as_secs_f64());
        println!("  throughput      {:.0} ops/s", count as f64 / elapsed.as_secs_f64());
        println!(
            "  latency per op  p50 {} ns  p99 {} ns  p999 {} ns  max {} ns",
            hist.value_at_quantile(0.50),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            hist.max()
        );
        println!("  resident        {} MiB (peak {} MiB)", resident >> 20, peak >> 20);
        if let Some(extra) = self.ledger.state().report() {
            println!("  {extra}");
        }
    }
}

fn main() {
    let args = Args::parse();
    match args.state.as_str() {
        "memory" => scenarios(&args, |config| Ledger::new(ShardId(0), config)),
        "disk" => {
            let dir = tempfile::tempdir_in(args.dir.as_deref().unwrap_or(std::path::Path::new("."))).unwrap();
            let mut n = 0;
            scenarios(&args, |config| {
                // A keyspace of its own per scenario, as a shard has.
                n += 1;
                let (state, _) = DiskState::open(&dir.path().join(format!("s{n}")), args.cache_mb << 20).unwrap();
                Ledger::with_state(ShardId(0), config, state)
            });
            println!("on disk: {} MiB", common::disk_bytes(dir.path()) >> 20);
        }
        other => unreachable!("clap allows no state {other}"),
    }
}

/// Runs growth, steady and hot (or only steady, with `--retain`) on ledgers made by `make`.
fn scenarios<S: LedgerState + BenchState>(args: &Args, mut make: impl FnMut(LedgerConfig) -> Ledger<S>) {
    println!(
        "pure state machine apply rate, 1 core, {} players, retained state {}{}",
        args.players,
        args.state,
        if args.state == "disk" { format!(" (cache {} MiB)", args.cache_mb) } else { String::new() }
    );
    let window_ms: u64 = 24 * 60 * 60 * 1000;
    if let Some(retain) = args.retain {
        // Cluster time per command such that one window holds `retain` commands' ids.
        let ms_per_op = (window_ms / retain).max(1);
        let warmup = (window_ms / ms_per_op) as usize + args.ops / 4;
        let mut work = Workload::new(args.players);
        let mut run =
            Run { ledger: make(LedgerConfig { id_retention_ms: window_ms }), t_ms: 1_700_000_000_000, ms_per_op };
        run.apply(&mut work, warmup, None);
        run.apply(&mut work, args.ops, Some(&format!("steady, {retain} commands per window ({ms_per_op} ms each)")));
        return;
    }
    let mut growth = Run { ledger: make(LedgerConfig::default()), t_ms: 1_700_000_000_000, ms_per_op: 0 };
    growth.apply(
        &mut Workload::new(args.players),
        2 * args.players + args.ops,
        Some("growth (7-day window, indexes only grow)"),
    );
    drop(growth);

    for (name, ms_per_op) in [
        ("steady (24 h window, 100 ms of cluster time per command)", 100),
        ("hot (24 h window, 20 s of cluster time per command: indexes fit in cache)", 20_000),
    ] {
        let warmup = 2 * args.players + (window_ms / ms_per_op) as usize + args.ops / 4;
        let config = LedgerConfig { id_retention_ms: window_ms };
        let mut run = Run { ledger: make(config), t_ms: 1_700_000_000_000, ms_per_op };
        let mut work = Workload::new(args.players);
        run.apply(&mut work, warmup, None);
        run.apply(&mut work, args.ops, Some(name));
    }
}
