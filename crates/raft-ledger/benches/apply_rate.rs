//! Apply rate of the pure ledger state machine on one core.
//!
//! `cargo bench -p raft-ledger --bench apply_rate -- [--ops N] [--players P]`
//!
//! Builds a realistic casino mix (deposits, bets, wins, rollbacks, withdrawals, transfers, with
//! 2% of commands retried under the same id) up front, then times only `Ledger::apply`. Prints
//! throughput and the latency of each apply (p50/p99/p999, measured in batches of 64 to keep the
//! timer's own cost out of the figures).
//!
//! Two scenarios run in turn:
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

use std::time::Instant;

use clap::Parser;
use hdrhistogram::Histogram;
use ledger_core::{
    Amount, ClusterTime, Command, Currency, Ledger, LedgerConfig, Outcome, PlayerId, RoundId, ShardId, TxId,
};

#[derive(Parser)]
struct Args {
    /// Commands to apply.
    #[arg(long, default_value_t = 2_000_000)]
    ops: usize,
    /// Distinct players.
    #[arg(long, default_value_t = 10_000)]
    players: usize,
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

fn workload(ops: usize, players: usize) -> Vec<Command> {
    let eur = Currency::new("EUR").unwrap();
    let pid = |i: usize| PlayerId::new(format!("player-{i}")).unwrap();
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut cmds = Vec::with_capacity(ops + 2 * players);
    for i in 0..players {
        cmds.push(Command::OpenAccount { tx: TxId::new(format!("open-{i}")).unwrap(), player: pid(i), currency: eur });
        cmds.push(Command::Deposit {
            tx: TxId::new(format!("dep-{i}")).unwrap(),
            player: pid(i),
            currency: eur,
            amount: Amount::new(1_000_000).unwrap(),
        });
    }
    let mut last_bet: Vec<Option<(TxId, RoundId)>> = vec![None; players];
    for n in 0..ops {
        let p = g.below(players);
        let tx = TxId::new(format!("tx-{n}")).unwrap();
        let roll = g.below(100);
        let cmd = if roll < 2 && !cmds.is_empty() {
            cmds[cmds.len() - 1 - g.below(cmds.len().min(1000))].clone()
        } else if roll < 50 {
            let round = RoundId::new(format!("round-{n}")).unwrap();
            last_bet[p] = Some((tx.clone(), round.clone()));
            Command::Bet { tx, player: pid(p), round, currency: eur, amount: Amount::new(100).unwrap() }
        } else if roll < 80 {
            match &last_bet[p] {
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
            match last_bet[p].take() {
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
        };
        cmds.push(cmd);
    }
    cmds
}

struct Run {
    ledger: Ledger,
    t_ms: u64,
    ms_per_op: u64,
}

impl Run {
    /// Applies `cmds`, timing only when `report` names the phase.
    fn apply(&mut self, cmds: &[Command], report: Option<&str>) {
        let mut sink = Vec::with_capacity(64);
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let (mut applied, mut rejected, mut duplicates) = (0u64, 0u64, 0u64);
        let start = Instant::now();
        for batch in cmds.chunks(64) {
            let b0 = Instant::now();
            for cmd in batch {
                self.t_ms += self.ms_per_op;
                match self.ledger.apply(cmd, ClusterTime::from_millis(self.t_ms), &mut sink) {
                    Outcome::Applied(_) => applied += 1,
                    Outcome::Duplicate(_) | Outcome::AlreadyFailed(_) | Outcome::Conflict => duplicates += 1,
                    Outcome::Rejected(_) => rejected += 1,
                }
                sink.clear();
            }
            let per_op_ns = b0.elapsed().as_nanos() as u64 / batch.len() as u64;
            hist.record(per_op_ns.max(1)).unwrap();
        }
        let elapsed = start.elapsed();
        let Some(name) = report else { return };
        self.ledger.check_invariants();
        println!("{name}");
        println!("  commands        {}", cmds.len());
        println!("  applied         {applied}  rejected {rejected}  duplicate/conflict {duplicates}");
        println!("  ids remembered  {}", self.ledger.remembered_ids());
        println!("  elapsed         {:.3} s", elapsed.as_secs_f64());
        println!("  throughput      {:.0} ops/s", cmds.len() as f64 / elapsed.as_secs_f64());
        println!(
            "  latency per op  p50 {} ns  p99 {} ns  p999 {} ns  max {} ns",
            hist.value_at_quantile(0.50),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            hist.max()
        );
    }
}

fn main() {
    let args = Args::parse();
    println!("pure state machine apply rate, 1 core, {} players", args.players);

    let cmds = workload(args.ops, args.players);
    let mut growth =
        Run { ledger: Ledger::new(ShardId(0), LedgerConfig::default()), t_ms: 1_700_000_000_000, ms_per_op: 0 };
    growth.apply(&cmds, Some("growth (7-day window, indexes only grow)"));
    drop(growth);

    let window_ms = 24 * 60 * 60 * 1000;
    for (name, ms_per_op) in [
        ("steady (24 h window, 100 ms of cluster time per command)", 100),
        ("hot (24 h window, 20 s of cluster time per command: indexes fit in cache)", 20_000),
    ] {
        let warmup = (window_ms / ms_per_op) as usize + args.ops / 4;
        let cmds = workload(warmup + args.ops, args.players);
        let config = LedgerConfig { id_retention_ms: window_ms };
        let mut run = Run { ledger: Ledger::new(ShardId(0), config), t_ms: 1_700_000_000_000, ms_per_op };
        let (warm, measured) = cmds.split_at(cmds.len() - args.ops);
        run.apply(warm, None);
        run.apply(measured, Some(name));
    }
}
