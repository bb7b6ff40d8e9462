//! `rng-beacon`: serve the shared beacon, recompute an outcome, verify an audit log, export raw
//! bytes for external statistical batteries.

use anyhow::Context;
use clap::{Parser, Subcommand};
use rng_beacon::csprng::{ExportStream, ReseedPolicy};
use rng_beacon::fair::{self, Game, KeyedSeed, Mode, Words};
use rng_beacon::service::{BeaconConfig, BeaconService};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "rng-beacon", version, about = "Provably-fair commit-reveal RNG beacon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Recompute one bet from its inputs and print it as one JSON object.
    Outcome {
        #[arg(long)]
        server_seed: String,
        #[arg(long)]
        client_seed: String,
        /// The bet's nonce, 0 to 18446744073709551615.
        #[arg(long, value_parser = parse_nonce, allow_hyphen_values = true)]
        nonce: u64,
        /// float, dice, roulette, keno, cards[:N], mines[:N], plinko[:N], limbo or shuffle.
        #[arg(long)]
        game: String,
        /// stake (the widely used float mapping) or unbiased (rejection sampling).
        #[arg(long, default_value = "stake")]
        mode: String,
    },
    /// Check an audit log's hash chain and re-derive every revealed outcome and round.
    Verify { log: PathBuf },
    /// Serve the gRPC beacon.
    Serve {
        #[arg(long, default_value = "127.0.0.1:50070")]
        listen: std::net::SocketAddr,
        /// The audit log; created if missing, appended to (after verification) if present.
        #[arg(long)]
        log: PathBuf,
        /// Time between beacon rounds.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        round_period: Duration,
        /// Rounds per epoch key; the key is revealed when its epoch ends.
        #[arg(long, default_value_t = 3600)]
        rounds_per_epoch: u64,
        /// Reseed the CSPRNG after this many outputs.
        #[arg(long, default_value_t = 1 << 16)]
        reseed_outputs: u64,
        /// Reseed the CSPRNG when its seed is this old.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        reseed_interval: Duration,
    },
    /// Write raw random bytes to stdout for dieharder or PractRand.
    Export {
        /// How many bytes; 0 streams until the reader closes the pipe.
        #[arg(long, default_value_t = 0)]
        bytes: u64,
        /// csprng: the ChaCha20 generator the beacon uses. outcomes: the HMAC-SHA256 bet stream
        /// (nonce 0, 1, 2, ... under one seed pair).
        #[arg(long, default_value = "csprng")]
        source: String,
        /// 64 hex characters seeding the csprng source; fresh OS entropy when absent.
        #[arg(long)]
        seed: Option<String>,
        #[arg(long, default_value = "export server seed")]
        server_seed: String,
        #[arg(long, default_value = "export client seed")]
        client_seed: String,
    },
}

fn parse_nonce(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a non-negative integer"));
    }
    s.parse::<u64>().map_err(|_| format!("nonce overflow: {s} is larger than {}", u64::MAX))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rng-beacon: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Outcome { server_seed, client_seed, nonce, game, mode } => {
            let game = Game::parse(&game)?;
            let mode = Mode::parse(&mode)?;
            let out = fair::outcome(&server_seed, &client_seed, nonce, game, mode)?;
            let json = serde_json::json!({
                "game": game.spec(),
                "mode": mode.name(),
                "server_seed_hash": hex::encode(fair::commitment(&server_seed)),
                "client_seed": client_seed,
                "nonce": nonce,
                "outcome": out.to_json(),
            });
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { log } => {
            let bytes = std::fs::read(&log).with_context(|| format!("reading {}", log.display()))?;
            match rng_beacon::log::verify(&bytes) {
                Ok(report) => {
                    println!("ok: {}", serde_json::to_string(&report)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("FAILED: {}: {e}", log.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Serve { listen, log, round_period, rounds_per_epoch, reseed_outputs, reseed_interval } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
                )
                .init();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let mut config = BeaconConfig::new(log);
                config.round_period = round_period;
                config.rounds_per_epoch = rounds_per_epoch;
                config.reseed = ReseedPolicy { max_outputs: reseed_outputs, max_age: reseed_interval };
                let service = BeaconService::start(config).await?;
                // SIGHUP reseeds the CSPRNG on demand; the reseed is logged as a commitment.
                let hup = service.clone();
                let mut signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
                tokio::spawn(async move {
                    while signals.recv().await.is_some() {
                        match hup.reseed().await {
                            Ok(()) => tracing::info!("reseeded on demand (SIGHUP)"),
                            Err(e) => tracing::error!(error = %e, "reseed on demand failed"),
                        }
                    }
                });
                let listener = tokio::net::TcpListener::bind(listen).await?;
                println!("rng-beacon serving casino.rng.v1.Beacon on {}", listener.local_addr()?);
                // SIGTERM (systemd, Kubernetes) and SIGINT (Ctrl-C) are both a clean stop.
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                service
                    .clone()
                    .serve(listener, async move {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    })
                    .await?;
                // Reveal what is still secret so that every outcome in the log can be verified.
                service
                    .shutdown()
                    .await
                    .map_err(|e| anyhow::anyhow!("revealing seeds at shutdown: {}", e.message()))?;
                tracing::info!("active seeds and the epoch key revealed in the audit log; stopped");
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Export { bytes, source, seed, server_seed, client_seed } => {
            export(bytes, &source, seed.as_deref(), &server_seed, &client_seed)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Fills a buffer with the next bytes of the chosen source.
type Filler = Box<dyn FnMut(&mut [u8])>;

fn export(total: u64, source: &str, seed: Option<&str>, server_seed: &str, client_seed: &str) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut chunk = vec![0u8; 1 << 16];
    let mut fill: Filler = match source {
        "csprng" => {
            let seed: [u8; 32] = match seed {
                Some(h) => {
                    hex::decode(h).ok().and_then(|v| v.try_into().ok()).context("--seed must be 64 hex characters")?
                }
                None => {
                    let mut s = [0; 32];
                    getrandom::fill(&mut s).map_err(|e| anyhow::anyhow!("OS entropy: {e}"))?;
                    s
                }
            };
            let mut g = ExportStream::from_seed(seed);
            Box::new(move |buf| g.fill(buf))
        }
        "outcomes" => {
            fair::check_seed("server", server_seed)?;
            fair::check_seed("client", client_seed)?;
            let keyed = KeyedSeed::new(server_seed);
            let client = client_seed.to_owned();
            let mut nonce = 0u64;
            Box::new(move |buf| {
                for word in buf.chunks_mut(32) {
                    // Each nonce's first block: 32 bytes, exactly as bets consume them.
                    let mut s = keyed.stream(&client, nonce);
                    for w in word.chunks_mut(4) {
                        let b = s.next_word().to_be_bytes();
                        w.copy_from_slice(&b[..w.len()]);
                    }
                    nonce += 1;
                }
            })
        }
        other => anyhow::bail!("unknown source {other:?}; expected csprng or outcomes"),
    };
    let mut left = if total == 0 { u64::MAX } else { total };
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        fill(&mut chunk[..n]);
        match out.write_all(&chunk[..n]) {
            Ok(()) => {}
            // The battery closing the pipe is how an endless export ends.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        left -= n as u64;
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
