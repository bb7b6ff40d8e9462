//! `chaos`: runs a scenario file against a real cluster it starts (walletd nodes and
//! geo-routers as processes, every link through its fault proxy), and writes the run folder:
//! journal.json, checker.json, timeline.csv, report.md and plots.
//!
//! Exit codes: 0 the hypothesis held and the checker passed; 1 it did not (the report says
//! why); 2 the scenario or the machine could not run it; 130 interrupted (rollbacks done).

// Floats here are times, rates and percentiles for reports, never money: the checker works
// on balances in integer minor units.
#![allow(clippy::float_arithmetic)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use chaos::cluster::{Paths, privileged};
use chaos::scenario::Scenario;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chaos", version, about = "Chaos scenarios against real walletd processes")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario and write its run folder.
    Run {
        /// The scenario file (see chaos/scenarios/).
        scenario: PathBuf,
        /// The run folder (default: chaos-runs/<time>-<scenario>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where walletd and geo-router are (default: beside this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Check scenario files without running them.
    Validate {
        /// Scenario files.
        files: Vec<PathBuf>,
    },
    /// List the scenarios in a folder, with their titles.
    List {
        /// The folder.
        #[arg(default_value = "chaos/scenarios")]
        dir: PathBuf,
    },
    /// Mount the power-cut file system (used by `run` for power_cut faults; root). Prints
    /// `mounted`, then answers `cut` on standard input; end of input unmounts.
    #[command(hide = true)]
    Lazyfs {
        /// The directory that holds what is durable.
        #[arg(long)]
        backing: PathBuf,
        /// Where to mount it.
        #[arg(long)]
        mount: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Validate { files } => {
            let mut bad = false;
            for f in files {
                match Scenario::load(&f) {
                    Ok(s) => println!("{}: ok ({}, {} faults)", f.display(), s.title, s.timeline().len()),
                    Err(e) => {
                        eprintln!("{e}");
                        bad = true;
                    }
                }
            }
            if bad { ExitCode::from(2) } else { ExitCode::SUCCESS }
        }
        Cmd::Lazyfs { backing, mount } => match chaos::lazyfs::serve(&backing, &mount) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chaos lazyfs: {e:#}");
                ExitCode::from(2)
            }
        },
        Cmd::List { dir } => match list(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chaos: {e:#}");
                ExitCode::from(2)
            }
        },
        Cmd::Run { scenario, out, bin_dir } => match run(&scenario, out, bin_dir) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("chaos: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn list(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for f in files {
        match Scenario::load(&f) {
            Ok(s) => println!("{:<40} {}", f.display(), s.title),
            Err(e) => println!("{:<40} INVALID: {e}", f.display()),
        }
    }
    Ok(())
}

fn run(path: &std::path::Path, out: Option<PathBuf>, bin_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let scenario = Scenario::load(path)?;
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?.parent().context("the binary's folder")?.to_path_buf(),
    };
    let walletd = bin_dir.join("walletd");
    let geo_router = bin_dir.join("geo-router");
    for b in [&walletd, &geo_router] {
        anyhow::ensure!(
            b.exists(),
            "{} is missing: build with `cargo build --release --workspace --bins`, or pass --bin-dir",
            b.display()
        );
    }
    let root = match privileged() {
        Ok(()) => true,
        Err(why) => {
            eprintln!(
                "chaos: {why}: running on loopback without network namespaces; only kill, pause, latency and resets into a node are available (partitions, isolation and flapping links need root and iptables)"
            );
            false
        }
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("scenario");
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let run_dir = out.unwrap_or_else(|| PathBuf::from("chaos-runs").join(format!("{secs}-{stem}")));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    let paths = Paths { walletd, geo_router, run_dir: run_dir.clone() };
    eprintln!("chaos: {} ({} s of load) → {}", scenario.title, scenario.workload.duration_s, run_dir.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let outcome = runtime.block_on(async {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("chaos: interrupted; stopping the method and running the rollbacks");
                flag.store(true, Ordering::Relaxed);
            }
        });
        chaos::run::run(&scenario, &paths, root, interrupted.clone()).await
    });
    let outcome = outcome.map_err(anyhow::Error::msg)?;
    chaos::report::write(&run_dir, &scenario, &outcome)?;
    println!(
        "{}: {} — RPO {} lost, RTO p99 {}, {} checker violation(s); report: {}",
        scenario.title,
        if outcome.passed { "PASSED" } else { "FAILED" },
        outcome.verdict.lost,
        outcome.rto_p99_ms.map_or("never recovered".into(), |v| format!("{v:.0} ms")),
        outcome.verdict.violations.len(),
        run_dir.join("report.md").display()
    );
    for f in &outcome.failures {
        println!("  - {f}");
    }
    Ok(if outcome.interrupted {
        ExitCode::from(130)
    } else if outcome.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
