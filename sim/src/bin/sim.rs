//! `sim`: run, sweep, reproduce and shrink deterministic simulations. See README, "Simulation".

// Floats here are rates for the summary line, never money.
#![allow(clippy::float_arithmetic)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand};
use sim::config::{SimConfig, bug};
use sim::crash::{CrashFile, repro_command, shrink};
use sim::geo::{GeoConfig, GeoFault, quantile, run_geo};
use sim::run::{RunReport, run};

#[derive(Parser)]
#[command(name = "sim", about = "Deterministic simulation of the replicated ledger on turmoil")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one seed: print the derived configuration, check after every step, and end with the
    /// trace hash.
    Run {
        /// The seed that derives the run.
        #[arg(long, required_unless_present = "config")]
        seed: Option<u64>,
        /// Run a scenario file (a configuration as JSON, e.g. written by --write-config and
        /// edited) instead of deriving one from a seed.
        #[arg(long, conflicts_with = "seed")]
        config: Option<PathBuf>,
        /// Write the configuration this run uses as JSON, to edit into a scenario file.
        #[arg(long)]
        write_config: Option<PathBuf>,
        /// A scenario name, `random` (a mix), or `all` (the seed picks one).
        #[arg(long, default_value = "random")]
        scenario: String,
        /// Stop after this many simulation steps.
        #[arg(long)]
        steps: Option<u64>,
        /// Plant a known bug (ack-before-fsync, skip-idempotency) to see the checks catch it.
        /// Only seeds whose faults exercise the bug fail (sim's tests find each within five
        /// seeds of a suitable scenario); sweep a few seeds to see one.
        #[arg(long)]
        plant: Option<String>,
        /// Run twice and fail unless both trace hashes are equal.
        #[arg(long)]
        twice: bool,
        /// Where shards keep their state: `memory`, or `disk` (fjall, in real files under a
        /// temporary directory; the simulated disk faults do not reach it).
        #[arg(long, value_parser = ["memory", "disk"])]
        state: Option<String>,
        /// Where to write a crash file on a violation.
        #[arg(long, default_value = "sim-crashes")]
        out: PathBuf,
    },
    /// Run a range of seeds in parallel with a progress bar.
    Sweep {
        /// Seeds `A..B` (B excluded).
        #[arg(long)]
        seeds: String,
        #[arg(long, default_value = "all")]
        scenario: String,
        /// Parallel runs (default: CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Plant a known bug in every run (see `sim run --help`).
        #[arg(long)]
        plant: Option<String>,
        #[arg(long, default_value = "sim-crashes")]
        out: PathBuf,
        /// Also run every seed a second time and fail on a different trace hash.
        #[arg(long)]
        twice: bool,
        /// Where shards keep their state (see `sim run --help`).
        #[arg(long, value_parser = ["memory", "disk"], default_value = "memory")]
        state: String,
    },
    /// Replay a crash file.
    Repro { file: PathBuf },
    /// Minimise a crash file's faults and workload while the same check still fails.
    Shrink { file: PathBuf },
    /// Multi-region experiment under emulated latency: commit latency per shard, then RTO after
    /// a leader crash or a region loss over many trials (one seed each), leaders' return home,
    /// and a check that no acknowledged write was lost.
    Geo(GeoArgs),
}

#[derive(clap::Args)]
struct GeoArgs {
    /// Round-trip times a-b,a-c,b-c in ms.
    #[arg(long, value_delimiter = ',', default_value = "50,50,50")]
    rtt: Vec<u64>,
    /// `leader` (crash shard 0's home leader) or `region` (lose region a).
    #[arg(long, default_value = "leader")]
    fault: String,
    /// Trials; trial i runs seed `seed + i`.
    #[arg(long, default_value_t = 20)]
    trials: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shards.
    #[arg(long, default_value_t = 3)]
    shards: u32,
    /// Sequential writes per shard for the latency figures.
    #[arg(long, default_value_t = 30)]
    writes: u32,
    /// Then an open loop of this many writes per second to shard 0, each timed from when it
    /// was due; 0: none.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// How many writes the open loop sends.
    #[arg(long, default_value_t = 1000)]
    load_writes: u32,
    /// AppendEntries in flight per follower and shard on every node (1: unary calls).
    #[arg(long, default_value_t = raft_ledger::node::APPENDS_IN_FLIGHT_DEFAULT)]
    appends_in_flight: usize,
    /// Make every inter-region round trip this many ms longer than --rtt, which is all the
    /// nodes are configured with: a network slower than planned.
    #[arg(long, default_value_t = 0)]
    extra_rtt: u64,
}

fn summary(r: &RunReport) -> String {
    let mut line = format!(
        "steps {} simulated {} ms events {} ops: {} applied, {} refused, {} indeterminate",
        r.steps, r.sim_ms, r.events, r.acked, r.refused, r.indeterminate
    );
    if r.disk_bytes > 0 {
        line += &format!(", stores on disk {} KiB at the end", r.disk_bytes / 1024);
    }
    line
}

fn report_violation(cfg: &SimConfig, steps: Option<u64>, r: &RunReport, out: &Path) -> Result<(), String> {
    let v = r.violation.as_ref().expect("a violation");
    println!("VIOLATION {} at step {} ({} ms of simulated time): {}", v.check, v.step, v.at_ms, v.detail);
    println!("seed {} scenario {}", cfg.seed, cfg.scenario);
    println!("reproduce: {}", repro_command(cfg, steps));
    let crash = CrashFile { config: cfg.clone(), steps, violation: v.clone(), trace_hash: r.trace_hash.clone() };
    let path = crash.write(out)?;
    println!("crash file: {} (sim repro / sim shrink take it)", path.display());
    Ok(())
}

fn configured(seed: u64, scenario: &str, plant: &Option<String>, state: &str) -> Result<SimConfig, String> {
    let mut cfg = SimConfig::derive(seed, scenario)?;
    if let Some(p) = plant {
        bug(p)?;
        cfg.plant = Some(p.clone());
    }
    cfg.disk_state = state == "disk";
    Ok(cfg)
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").ok_or("expected A..B")?;
    let a: u64 = a.parse().map_err(|_| format!("bad seed {a:?}"))?;
    let b: u64 = b.parse().map_err(|_| format!("bad seed {b:?}"))?;
    if b <= a {
        return Err("the range is empty".into());
    }
    Ok((a, b))
}

/// Log lines stamped with the simulation's clock (the wall clock means nothing in a run),
/// where there is one; outside a simulation (the driver) the field is empty.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>10.3}s", t.as_secs_f64()),
            None => write!(w, "{:>11}", "-"),
        }
    }
}

fn main() {
    // Only when asked: the nodes' own tracing (elections, succession, client retries) in
    // simulated time, for reading one seed's run. Logging never feeds back into a decision.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(SimTime)
            .with_writer(std::io::stderr)
            .init();
    }
    let code = match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sim: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn geo(args: GeoArgs) -> Result<i32, String> {
    let GeoArgs { rtt, fault, trials, seed, shards, writes, rate, load_writes, appends_in_flight, extra_rtt } = args;
    let rtt_ms: [u64; 3] = rtt.try_into().map_err(|_| "--rtt takes three values: a-b,a-c,b-c")?;
    let fault = match fault.as_str() {
        "leader" => GeoFault::LeaderCrash,
        "region" => GeoFault::RegionLoss,
        other => return Err(format!("unknown fault {other:?}: leader or region")),
    };
    if trials == 0 || shards == 0 || writes == 0 || load_writes == 0 || appends_in_flight == 0 {
        return Err("--trials, --shards, --writes, --load-writes and --appends-in-flight must be at least 1".into());
    }
    let (mut rto, mut home, mut lost, mut acked, mut failed) = (Vec::new(), Vec::new(), 0usize, 0usize, 0u32);
    let mut load = Vec::new();
    for i in 0..trials {
        let cfg = GeoConfig {
            seed: seed + i,
            rtt_ms,
            shards,
            writes,
            fault,
            rate,
            load_writes,
            appends_in_flight,
            extra_rtt_ms: extra_rtt,
        };
        let r = run_geo(&cfg);
        if i == 0 {
            println!("commit latency (seed {}), writes to the home leader from 1 ms away:", cfg.seed);
            if extra_rtt > 0 {
                println!("(every inter-region round trip really {extra_rtt} ms longer than shown: --extra-rtt)");
            }
            println!("shard  home  nearest-quorum-rtt  p50    max");
            for l in &r.latency {
                let (rtt, p50, max) =
                    (format!("{} ms", l.nearest_quorum_rtt_ms), format!("{} ms", l.p50_ms), format!("{} ms", l.max_ms));
                println!("{:<6} {:<5} {rtt:<19} {p50:<6} {max}", l.shard, l.home);
            }
        }
        if let Some(e) = &r.error {
            println!("trial {i} (seed {}): FAILED: {e}", cfg.seed);
            failed += 1;
            continue;
        }
        let shards_rto: Vec<String> = r
            .rto_ms
            .iter()
            .map(|(s, ms)| match r.elected_ms.get(s) {
                Some(e) => format!("shard {s} {ms} ms (leader elected at {e} ms)"),
                None => format!("shard {s} {ms} ms"),
            })
            .collect();
        println!(
            "trial {i} (seed {}): RTO {}; re-elected elsewhere {:?}; home again {}; acked {}, lost {}",
            cfg.seed,
            shards_rto.join(", "),
            r.reelected_elsewhere,
            r.home_again_ms.map_or("never".into(), |ms| format!("after {ms} ms")),
            r.acked,
            r.lost.len()
        );
        for l in &r.lost {
            println!("  LOST: {l}");
        }
        rto.extend(r.rto_ms.values().copied());
        load.extend(r.load_ms.iter().copied());
        home.extend(r.home_again_ms);
        lost += r.lost.len();
        acked += r.acked;
        if r.home_again_ms.is_none() {
            failed += 1;
        }
    }
    println!(
        "RTO over {} shard recoveries in {trials} trials: p50 {} ms, p99 {} ms, max {} ms",
        rto.len(),
        quantile(&rto, 500),
        quantile(&rto, 990),
        quantile(&rto, 1000)
    );
    println!(
        "leaders home again after restart: p50 {} ms, p99 {} ms ({} of {trials} trials)",
        quantile(&home, 500),
        quantile(&home, 990),
        home.len()
    );
    if rate > 0 {
        println!(
            "open loop, {rate} writes/s to shard 0 ({} writes over {trials} trials, appends in flight {appends_in_flight}): \
             p50 {} ms, p99 {} ms, p999 {} ms, max {} ms",
            load.len(),
            quantile(&load, 500),
            quantile(&load, 990),
            quantile(&load, 999),
            quantile(&load, 1000)
        );
    }
    println!("acknowledged writes: {acked}, lost: {lost}, failed trials: {failed}");
    Ok(if lost == 0 && failed == 0 { 0 } else { 1 })
}

fn real_main() -> Result<i32, String> {
    match Cli::parse().cmd {
        Cmd::Geo(args) => geo(args),
        Cmd::Run { seed, config, write_config, scenario, steps, plant, twice, state, out } => {
            let mut cfg = match (seed, config) {
                (Some(seed), _) => configured(seed, &scenario, &plant, "memory")?,
                (None, Some(path)) => {
                    let mut cfg = SimConfig::load(&path)?;
                    if let Some(p) = &plant {
                        bug(p)?;
                        cfg.plant = Some(p.clone());
                    }
                    cfg
                }
                (None, None) => return Err("give --seed or --config".into()),
            };
            // A scenario file says where its state is; `--state` overrides it.
            if let Some(state) = state {
                cfg.disk_state = state == "disk";
            }
            if let Some(path) = write_config {
                let text = serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?;
                std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
                println!("configuration written to {}", path.display());
            }
            for line in cfg.describe() {
                println!("{line}");
            }
            let r = run(&cfg, steps);
            println!("{}", summary(&r));
            let mut code = 0;
            if r.violation.is_some() {
                report_violation(&cfg, steps, &r, &out)?;
                code = 1;
            } else {
                println!("all checks passed");
            }
            if twice {
                let again = run(&cfg, steps);
                if again.trace_hash != r.trace_hash {
                    println!("NONDETERMINISM: the second run's trace hash is {}", again.trace_hash);
                    code = 1;
                } else {
                    println!("second run: identical trace");
                }
            }
            println!("trace-hash: {}", r.trace_hash);
            Ok(code)
        }
        Cmd::Sweep { seeds, scenario, jobs, plant, out, twice, state } => {
            let (a, b) = parse_range(&seeds)?;
            configured(a, &scenario, &plant, &state)?;
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
            let bar = indicatif::ProgressBar::new(b - a);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {elapsed} eta {eta} {msg}")
                    .map_err(|e| e.to_string())?,
            );
            let next = AtomicU64::new(a);
            let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
            let started = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..jobs {
                    scope.spawn(|| {
                        loop {
                            let seed = next.fetch_add(1, Ordering::Relaxed);
                            if seed >= b {
                                return;
                            }
                            let cfg = configured(seed, &scenario, &plant, &state).expect("checked above");
                            let r = run(&cfg, None);
                            let mut problem = None;
                            if r.violation.is_some() {
                                bar.suspend(|| {
                                    let _ = report_violation(&cfg, None, &r, &out);
                                });
                                problem = r.violation.as_ref().map(|v| v.check.clone());
                            } else if twice && run(&cfg, None).trace_hash != r.trace_hash {
                                problem = Some("nondeterminism".into());
                                bar.suspend(|| println!("NONDETERMINISM at seed {seed} ({})", cfg.scenario));
                            }
                            if let Some(p) = problem {
                                let mut f = failures.lock().expect("failures lock");
                                f.push((seed, p));
                                bar.set_message(format!("{} failing", f.len()));
                            }
                            bar.inc(1);
                        }
                    });
                }
            });
            bar.finish();
            let secs = started.elapsed().as_secs_f64();
            let f = failures.into_inner().expect("failures lock");
            println!(
                "swept {} seeds ({}, state in {state}) with {jobs} jobs in {secs:.1} s: {:.2} seeds/s, {} failing",
                b - a,
                scenario,
                (b - a) as f64 / secs,
                f.len()
            );
            // The nodes keep no log entry in memory once durable (`log_cache_bytes = 0`): this
            // says the runs read them back from their segments, under the disk faults.
            println!(
                "log entries read back from write-ahead log segments: {}",
                raft_ledger::store::entries_read_back()
            );
            for (seed, check) in &f {
                println!("  seed {seed}: {check}");
            }
            Ok(if f.is_empty() { 0 } else { 1 })
        }
        Cmd::Repro { file } => {
            let crash = CrashFile::read(&file)?;
            for line in crash.config.describe() {
                println!("{line}");
            }
            let r = run(&crash.config, crash.steps);
            println!("{}", summary(&r));
            println!("trace-hash: {}", r.trace_hash);
            match &r.violation {
                Some(v) if v == &crash.violation && r.trace_hash == crash.trace_hash => {
                    println!("reproduced exactly: {} at step {}: {}", v.check, v.step, v.detail);
                    Ok(1)
                }
                Some(v) => {
                    println!("reproduced differently: {} at step {}: {}", v.check, v.step, v.detail);
                    Ok(1)
                }
                None => {
                    println!("did not reproduce: all checks passed");
                    Ok(0)
                }
            }
        }
        Cmd::Shrink { file } => {
            let crash = CrashFile::read(&file)?;
            println!(
                "shrinking {}: {} faults, {} clients x {} ops, {} shards; failing check {}",
                file.display(),
                crash.config.faults.len(),
                crash.config.clients,
                crash.config.ops_per_client,
                crash.config.shards,
                crash.violation.check
            );
            let small = shrink(&crash, |line| println!("  {line}"));
            let path = file.with_extension("shrunk.json");
            let text = serde_json::to_string_pretty(&small).map_err(|e| e.to_string())?;
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            println!(
                "shrunk to {} faults, {} clients x {} ops, {} shards; still {}: {}",
                small.config.faults.len(),
                small.config.clients,
                small.config.ops_per_client,
                small.config.shards,
                small.violation.check,
                small.violation.detail
            );
            for line in small.config.describe() {
                println!("  {line}");
            }
            println!("written to {} (replay with sim repro)", path.display());
            Ok(0)
        }
    }
}
