//! `walletd`: the node process. `start` runs a node (its Raft groups, node port and wallet API),
//! `client` and `admin` talk to a cluster's node port, `demo` runs a three-region cluster on this
//! machine, `placement` shows where a topology puts every shard. Called as `walletctl` (a link
//! the demo makes), it is walletctl.

mod admin;
mod cli;
mod config;
mod demo;
mod load;
mod start;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use config::{FileConfig, PeerConfig};

/// mimalloc instead of glibc malloc: under many concurrent calls glibc's allocator cost about a
/// quarter of the wallet API's throughput (BENCHMARKS.md, "Front door").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "walletd", version, about = "Raft-replicated wallet ledger node")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node. Settings come from --config and/or flags (flags win).
    Start(Box<StartArgs>),
    /// Send a command or query to a cluster.
    Client(crate::cli::ClientArgs),
    /// Change which nodes replicate each shard (add, remove, replace, move), or show them.
    Admin(crate::admin::AdminArgs),
    /// Run a three-region cluster on this machine and walk through what it does.
    Demo(crate::demo::DemoArgs),
    /// Show where a topology places every shard: home region, voters, Raft timing.
    Placement {
        /// The topology file.
        #[arg(long)]
        topology: PathBuf,
    },
    /// Check a security event log's hash chain and count its events (exit 3 if it is broken).
    SecurityLog {
        /// The log (a node's `<data-dir>/security-events.log`).
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct StartArgs {
    /// A TOML file with the settings below (see README).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    node_id: Option<u64>,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// Address peers should dial, if not `listen`.
    #[arg(long)]
    advertise: Option<String>,
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    zone: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shards in the cluster (same on every node).
    #[arg(long)]
    shards: Option<u32>,
    #[arg(long)]
    cluster_name: Option<String>,
    /// Round-trip time of the slowest quorum link, in ms.
    #[arg(long)]
    rtt_ms: Option<u64>,
    /// Where shards keep their retained ids and rounds: memory (default) or disk.
    #[arg(long, value_parser = ["memory", "disk"])]
    state: Option<String>,
    /// With --state disk: each shard's block cache, in MiB (default 64).
    #[arg(long)]
    state_cache_mb: Option<u64>,
    /// Take a snapshot (on disk: a checkpoint) every this many log entries (default 10000).
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// AppendEntries a leader keeps in flight to each follower per shard (default 16, as an
    /// ordered stream: pipelined replication; 1: one unary call at a time, and peers' streams
    /// refused, so they send this node unary calls too).
    #[arg(long)]
    appends_in_flight: Option<usize>,
    /// Form a new cluster from --peer (safe to repeat: initialized shards are left alone).
    #[arg(long)]
    bootstrap: bool,
    /// A member for bootstrap: ID=HOST:PORT[,region=R][,zone=Z][,api=HOST:PORT] (repeat for
    /// each member).
    #[arg(long = "peer")]
    peers: Vec<PeerConfig>,
    /// Serve the public wallet API here.
    #[arg(long)]
    api_listen: Option<String>,
    /// Address clients should dial for this node's wallet API, if not --api-listen.
    #[arg(long)]
    api_advertise: Option<String>,
    /// File holding the cluster's shared secret (hex, at least 32 bytes; the same on every node).
    #[arg(long, env = "WALLETD_CLUSTER_KEY_FILE")]
    cluster_key_file: Option<PathBuf>,
    /// Operator API keys (TOML; see README).
    #[arg(long)]
    operator_keys: Option<PathBuf>,
    /// Redis URL of the session store, for player tokens.
    #[arg(long)]
    redis_url: Option<String>,
    /// Session token signing key file (TOML with `kid` and `key`).
    #[arg(long)]
    session_key: Option<PathBuf>,
    /// Do not serve the session service (casino.session.v1) even with a session store.
    #[arg(long)]
    no_session_api: bool,
    /// The security event log (default <data-dir>/security-events.log).
    #[arg(long)]
    security_log: Option<PathBuf>,
    /// Topology file: home regions for shards, RTT-derived timing, bootstrap members.
    #[arg(long)]
    topology: Option<PathBuf>,
}

/// `walletd security-log FILE`: the chain's verdict, and the events by kind.
fn verify_security_log(file: &std::path::Path) -> anyhow::Result<i32> {
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    match wallet_api::session::audit::verify(&bytes) {
        Ok(report) => {
            println!("{}: chain intact, {} records, head {}", file.display(), report.records, report.head);
            for (kind, n) in &report.kinds {
                println!("  {kind:<20} {n}");
            }
            Ok(wallet_api::exit::OK)
        }
        Err(e) => {
            eprintln!("{}: chain BROKEN at {e}", file.display());
            Ok(wallet_api::exit::VERIFY_FAILED)
        }
    }
}

fn main() -> anyhow::Result<()> {
    // Called as `walletctl` (the link `walletd demo` puts on a PATH it prints), be walletctl.
    let called = std::env::args_os().next().map(PathBuf::from);
    if called.as_deref().and_then(|p| p.file_name()).is_some_and(|n| n == "walletctl") {
        wallet_api::ctl::main();
    }
    wallet_api::exit::quiet_on_broken_pipe();
    let cli: Cli = wallet_api::exit::parse_or_exit();
    // A node logs its lifecycle; the demo and the client keep the terminal for their own output.
    // openraft reports every unreachable peer as a warning, which buries everything else.
    let default_filter = match cli.command {
        Cmd::Start(_) => "warn,openraft=error,raft_ledger=info,wallet_api=info",
        Cmd::Client(_) | Cmd::Admin(_) | Cmd::Demo(_) | Cmd::Placement { .. } | Cmd::SecurityLog { .. } => {
            "error,openraft=off"
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal; a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let code = runtime.block_on(async move {
        match cli.command {
            Cmd::Start(args) => {
                let args = *args;
                let file = match &args.config {
                    Some(path) => FileConfig::load(path)?,
                    None => FileConfig::default(),
                };
                let flags = FileConfig {
                    node_id: args.node_id,
                    listen: args.listen,
                    advertise: args.advertise,
                    region: args.region,
                    zone: args.zone,
                    data_dir: args.data_dir,
                    shards: args.shards,
                    cluster_name: args.cluster_name,
                    rtt_ms: args.rtt_ms,
                    state: args.state,
                    state_cache_mb: args.state_cache_mb,
                    snapshot_every: args.snapshot_every,
                    checkpoint_every_commands: None,
                    log_cache_mb: None,
                    appends_in_flight: args.appends_in_flight,
                    bootstrap: args.bootstrap.then_some(true),
                    peers: args.peers,
                    api_listen: args.api_listen,
                    api_advertise: args.api_advertise,
                    cluster_key_file: args.cluster_key_file,
                    operator_keys: args.operator_keys,
                    redis_url: args.redis_url,
                    session_key: args.session_key,
                    session_api: args.no_session_api.then_some(false),
                    security_log: args.security_log,
                    topology: args.topology,
                };
                let config = file.overlay(flags).resolve()?;
                crate::start::run(config).await.map_err(anyhow::Error::msg)?;
                Ok::<i32, anyhow::Error>(0)
            }
            Cmd::Client(args) => crate::cli::run(args).await.map_err(anyhow::Error::msg),
            Cmd::Admin(args) => crate::admin::run(args).await.map_err(anyhow::Error::msg),
            Cmd::Demo(args) => {
                crate::demo::run(args).await.map_err(anyhow::Error::msg)?;
                Ok(0)
            }
            Cmd::Placement { topology } => {
                let t = crate::config::load_topology(&topology)?;
                print!("{}", crate::config::describe_placement(&t));
                Ok(0)
            }
            Cmd::SecurityLog { file } => Ok(verify_security_log(&file)?),
        }
    });
    match code {
        Ok(0) => Ok(()),
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("walletd: {e}");
            std::process::exit(wallet_api::exit::FAILED);
        }
    }
}
