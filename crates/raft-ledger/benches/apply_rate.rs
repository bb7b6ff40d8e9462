//! Apply rate of the pure ledger state machine on one core.
//!
//! `cargo bench -p raft-ledger --bench apply_rate -- [--ops N] [--players P] [--state memory|disk]
//!  [--cache-mb 256] [--dir D] [--retain IDS] [--checkpoint-every N] [--csv FILE] [--keep DIR]`
//! `cargo bench -p raft-ledger --bench apply_rate -- --open DIR [--cache-mb 256]`
//! `cargo bench -p raft-ledger --bench apply_rate -- --plot FILE [--plot-out docs/bench]`
//!
//! Generates a realistic casino mix (deposits, bets, wins, rollbacks, withdrawals, transfers,
//! with 2% of commands retried under the same id) 64 commands at a time, and times only
//! `Ledger::apply` (and, for `--state disk`, what applying costs the state: see below). Prints
//! throughput, the latency of each apply (p50/p99/p999, measured per batch of 64 to keep the
//! timer's own cost out of the figures) and resident memory.
//!
//! `--state disk` keeps the retained ids, rounds and their queue in `DiskState` (fjall) instead
//! of hash maps; `--retain N` runs only a steady scenario with about N ids retained (past the
//! 24 h window's 86.4M milliseconds the window grows, one millisecond per command). On disk the
//! state's writes are committed to the store either after every batch of 64 (the default, the
//! engine on the apply path) or, with `--checkpoint-every N`, as the node does: buffered for N
//! commands, then taken out of the buffer (`freeze`, timed) and written and fsynced on another
//! thread while applying goes on (a checkpoint that is still being written when the next is due
//! holds applying up, and that wait is timed too).
//!
//! `--csv FILE` appends the `--retain` run's figures as a row (state, checkpoint interval,
//! retained ids, commands/s, p50/p99/p999 ns, resident and peak MiB, MiB on disk); `--plot FILE`
//! draws throughput and memory against retained ids from such rows (SVG and PNG), one line per
//! state and checkpoint interval.
//!
//! `--keep DIR` (with `--state disk --retain N`) leaves the state in `DIR` after the run, its
//! last writes flushed and made durable; `--open DIR`, in a process of its own, then opens it as
//! a restarting node opens its shard's state (the node then replays only the log since its
//! checkpoint) and reports how long that took and the memory the process holds afterwards.
//! Drop the page cache between the two (`sync; echo 3 > /proc/sys/vm/drop_caches`) for a cold
//! restart.
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
    /// (fjall; see `--checkpoint-every` for when its writes reach the store).
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
    /// On disk: commit the state's writes every this many commands, on another thread, as the
    /// node's checkpoints do, instead of after every batch of 64 on the applying thread.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Append the `--retain` run's figures to this CSV file.
    #[arg(long, requires = "retain")]
    csv: Option<std::path::PathBuf>,
    /// Draw plots from a CSV of `--csv` rows instead of running.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Where `--plot` writes them.
    #[arg(long, default_value = "docs/bench")]
    plot_out: std::path::PathBuf,
    /// On disk: keep the state in this directory (which must not exist yet) after the
    /// `--retain` run, flushed and durable, for `--open`.
    #[arg(long, requires = "retain")]
    keep: Option<std::path::PathBuf>,
    /// Instead of running: open the on-disk state that `--keep` left in this directory, as a
    /// restarting node does, and report the time and memory that took.
    #[arg(long, conflicts_with_all = ["retain", "plot"])]
    open: Option<std::path::PathBuf>,
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

/// What a run does with each kind of retained state beyond applying (nothing in memory), and
/// what it reports of itself.
trait BenchState {
    /// After a batch of 64 commands: commit its writes to the store.
    fn flush(&mut self) {}
    /// Take the writes since the last checkpoint out of the buffer and write them to the store
    /// and fsync it on another thread, as the node's snapshot builder does.
    fn checkpoint(&mut self) {}
    /// Drop a written checkpoint's writes from memory (the node does so between batches).
    fn release(&mut self) {}
    /// Makes every write so far durable (for `--keep`).
    fn persist_all(&mut self) {}
    fn report(&self) -> Option<String> {
        None
    }
}

/// Checkpoints still being written, joined once a run is measured: the store's directory must
/// outlive them (fjall reports a failed background write when it goes first).
static CHECKPOINTS: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> = std::sync::Mutex::new(Vec::new());

fn join_checkpoints() {
    for t in std::mem::take(&mut *CHECKPOINTS.lock().expect("checkpoints lock")) {
        t.join().expect("a checkpoint thread panicked");
    }
}

impl BenchState for MemState {}

impl BenchState for DiskState {
    fn flush(&mut self) {
        DiskState::flush(self, b"");
    }

    fn checkpoint(&mut self) {
        let (commit, persister) = (self.freeze(b""), self.persister());
        let t = std::thread::spawn(move || {
            commit.commit();
            persister.persist();
        });
        CHECKPOINTS.lock().expect("checkpoints lock").push(t);
    }

    fn release(&mut self) {
        self.release_committed();
    }

    fn persist_all(&mut self) {
        join_checkpoints();
        DiskState::flush(self, b"");
        DiskState::persist(self);
    }

    fn report(&self) -> Option<String> {
        let (unread, read) = self.round_forgets();
        Some(format!(
            "filters         {} MiB\nrounds forgotten {unread} unread, {read} read (activity after queueing, or a filter's false positive)",
            self.filter_bytes() >> 20
        ))
    }
}

struct Run<S> {
    ledger: Ledger<S>,
    t_ms: u64,
    ms_per_op: u64,
    /// `--checkpoint-every`, and the commands applied since the last checkpoint.
    checkpoint_every: Option<usize>,
    since_checkpoint: usize,
}

impl<S: LedgerState + BenchState> Run<S> {
    /// Applies `count` commands from `work`, timing only when `report` names the phase.
    fn apply(&mut self, work: &mut Workload, count: usize, report: Option<&str>) -> Option<Figures> {
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
            let state = self.ledger.state_mut();
            match self.checkpoint_every {
                None => state.flush(),
                Some(every) => {
                    state.release();
                    self.since_checkpoint += n;
                    if self.since_checkpoint >= every {
                        self.since_checkpoint = 0;
                        state.checkpoint();
                    }
                }
            }
            let took = b0.elapsed();
            elapsed += took;
            hist.record((took.as_nanos() as u64 / n as u64).max(1)).unwrap();
        }
        let name = report?;
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
        join_checkpoints();
        Some(Figures {
            ids: self.ledger.remembered_ids() as u64,
            rate: count as f64 / elapsed.as_secs_f64(),
            latency_ns: [hist.value_at_quantile(0.50), hist.value_at_quantile(0.99), hist.value_at_quantile(0.999)],
            resident_mib: resident >> 20,
            peak_mib: peak >> 20,
        })
    }
}

/// What a measured run found, for `--csv`.
struct Figures {
    ids: u64,
    rate: f64,
    latency_ns: [u64; 3],
    resident_mib: u64,
    peak_mib: u64,
}

/// Appends a `--retain` run's row to the `--csv` file.
fn write_csv(args: &Args, figures: Option<Figures>, disk_mib: u64) {
    use std::io::Write as _;
    let (Some(path), Some(f)) = (&args.csv, figures) else { return };
    let every = match (args.state.as_str(), args.checkpoint_every) {
        ("memory", _) => "-".to_string(),
        (_, None) => "64-sync".to_string(),
        (_, Some(n)) => n.to_string(),
    };
    let [p50, p99, p999] = f.latency_ns;
    let row = format!(
        "{},{every},{},{:.0},{p50},{p99},{p999},{},{},{disk_mib}\n",
        args.state, f.ids, f.rate, f.resident_mib, f.peak_mib
    );
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the CSV file");
    file.write_all(row.as_bytes()).expect("write the CSV file");
}

#[path = "common/png.rs"]
mod png;

/// Throughput and resident memory against retained ids, from `--csv` rows.
fn plot(csv: &std::path::Path, dir: &std::path::Path) -> Result<(), png::Error> {
    use std::collections::BTreeMap;
    std::fs::create_dir_all(dir)?;
    // series -> retained ids -> (commands/s, resident MiB, peak MiB, on disk MiB)
    let mut lines: BTreeMap<String, BTreeMap<u64, [f64; 4]>> = BTreeMap::new();
    for line in std::fs::read_to_string(csv)?.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 10 {
            return Err(format!("{}: a row with {} fields: {line}", csv.display(), f.len()).into());
        }
        let series = match (f[0], f[1]) {
            ("memory", _) => "in memory (MemState)".to_string(),
            ("disk", "64-sync") => "on disk, flushed every 64 commands".to_string(),
            ("disk", every) => format!("on disk, checkpoint every {every} commands"),
            (other, _) => other.to_string(),
        };
        let values = [f[3].parse()?, f[7].parse()?, f[8].parse()?, f[9].parse()?];
        lines.entry(series).or_default().insert(f[2].parse()?, values);
    }
    let xs = || lines.values().flat_map(|l| l.keys().map(|x| *x as f64));
    let (x0, x1) = (xs().fold(f64::MAX, f64::min) * 0.8, xs().fold(1.0, f64::max) * 1.25);
    let fonts = png::fonts();
    for (name, caption, unit, pick) in [
        ("retained-throughput", "apply rate against retained ids (one core)", "commands/s", 0usize),
        ("retained-memory", "resident memory against retained ids", "resident MiB (peak)", 2),
    ] {
        let path = dir.join(format!("{name}.svg"));
        let y_top = lines.values().flat_map(|l| l.values().map(|v| v[pick])).fold(1.0, f64::max) * 1.1;
        let ids = |x: &f64| match *x {
            x if x >= 1e6 => format!("{}M", (x / 1e6 * 10.0).round() / 10.0),
            x => format!("{}k", (x / 1e3).round()),
        };
        let frame = png::Frame {
            svg: path.clone(),
            caption,
            x: x0..x1,
            y_top,
            x_desc: "retained ids",
            y_desc: unit,
            x_labels: Some(&ids),
        };
        let png_path = png::chart(frame, &fonts, |chart| {
            for (i, (series, points)) in lines.iter().enumerate() {
                png::series(chart, points.iter().map(|(x, v)| (*x as f64, v[pick])).collect(), series, i)?;
            }
            Ok(())
        })?;
        println!("wrote {} and {}", path.display(), png_path.display());
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Some(csv) = &args.plot {
        plot(csv, &args.plot_out).expect("plot");
        return;
    }
    if let Some(dir) = &args.open {
        open(dir, args.cache_mb);
        return;
    }
    if args.keep.is_some() && args.state != "disk" {
        eprintln!("--keep needs --state disk");
        std::process::exit(2);
    }
    match args.state.as_str() {
        "memory" => {
            let figures = scenarios(&args, |config| Ledger::new(ShardId(0), config));
            write_csv(&args, figures, 0);
        }
        "disk" => {
            let temp;
            let root = match &args.keep {
                Some(keep) => {
                    std::fs::create_dir(keep).unwrap_or_else(|e| panic!("--keep {}: {e}", keep.display()));
                    keep.as_path()
                }
                None => {
                    temp = tempfile::tempdir_in(args.dir.as_deref().unwrap_or(std::path::Path::new("."))).unwrap();
                    temp.path()
                }
            };
            let mut n = 0;
            let figures = scenarios(&args, |config| {
                // A keyspace of its own per scenario, as a shard has.
                n += 1;
                let (state, _) = DiskState::open(&root.join(format!("s{n}")), args.cache_mb << 20).unwrap();
                Ledger::with_state(ShardId(0), config, state)
            });
            let disk_mib = common::disk_bytes(root) >> 20;
            println!("on disk: {disk_mib} MiB");
            write_csv(&args, figures, disk_mib);
        }
        other => unreachable!("clap allows no state {other}"),
    }
}

/// `--open`: opens a kept state as a restarting node opens its shard's, timed, and reports
/// what the process holds after it.
fn open(dir: &std::path::Path, cache_mb: u64) {
    let path = dir.join("s1");
    assert!(path.is_dir(), "{} holds no state kept by --keep", dir.display());
    let before = common::memory().resident;
    let t = Instant::now();
    let (state, _) = DiskState::open(&path, cache_mb << 20).unwrap();
    let took = t.elapsed();
    let common::Memory { resident, peak } = common::memory();
    println!("opened the on-disk state in {} (cache {cache_mb} MiB)", path.display());
    println!("  retained ids    {}", state.remembered_ids());
    println!("  on disk         {} MiB", common::disk_bytes(&path) >> 20);
    println!("  open            {:.0} ms", took.as_secs_f64() * 1000.0);
    println!("  filters         {} MiB", state.filter_bytes() >> 20);
    println!(
        "  resident        {} MiB after open (peak {} MiB; {} MiB before)",
        resident >> 20,
        peak >> 20,
        before >> 20
    );
}

/// Runs growth, steady and hot (or only steady, with `--retain`, whose figures it returns) on
/// ledgers made by `make`.
fn scenarios<S: LedgerState + BenchState>(
    args: &Args,
    mut make: impl FnMut(LedgerConfig) -> Ledger<S>,
) -> Option<Figures> {
    let writes = match args.checkpoint_every {
        Some(n) => format!("checkpoint every {n} commands on another thread"),
        None => "flush after every 64 commands".to_string(),
    };
    println!(
        "pure state machine apply rate, 1 core, {} players, retained state {}{}",
        args.players,
        args.state,
        if args.state == "disk" { format!(" (cache {} MiB, {writes})", args.cache_mb) } else { String::new() }
    );
    let window_ms: u64 = 24 * 60 * 60 * 1000;
    let run = |ledger, ms_per_op| Run {
        ledger,
        t_ms: 1_700_000_000_000,
        ms_per_op,
        checkpoint_every: args.checkpoint_every,
        since_checkpoint: 0,
    };
    if let Some(retain) = args.retain {
        // Cluster time per command such that one window holds `retain` commands' ids; past a
        // millisecond per command, a longer window.
        let window_ms = window_ms.max(retain);
        let ms_per_op = (window_ms / retain).max(1);
        let warmup = (window_ms / ms_per_op) as usize + args.ops / 4;
        let mut work = Workload::new(args.players);
        let mut run = run(make(LedgerConfig { id_retention_ms: window_ms }), ms_per_op);
        run.apply(&mut work, warmup, None);
        let figures = run.apply(
            &mut work,
            args.ops,
            Some(&format!("steady, {retain} commands per window ({ms_per_op} ms each)")),
        );
        if args.keep.is_some() {
            run.ledger.state_mut().persist_all();
        }
        return figures;
    }
    let mut growth = run(make(LedgerConfig::default()), 0);
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
        let mut run = run(make(config), ms_per_op);
        let mut work = Workload::new(args.players);
        run.apply(&mut work, warmup, None);
        run.apply(&mut work, args.ops, Some(name));
    }
    None
}
