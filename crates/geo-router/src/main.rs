//! `geo-router`: serve the wallet API in front of a cluster's regions (`serve`), or show a
//! running router's routing table (`status`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use geo_router::health::HealthPolicy;
use geo_router::{Router, RouterConfig};

#[derive(Parser)]
#[command(
    name = "geo-router",
    version,
    about = "Leader-aware, health-checked routing in front of the wallet's regions"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve `casino.wallet.v1.Wallet` on one address and route every call to its shard's leader.
    Serve {
        /// The cluster's topology file (every node needs `api`, its wallet API address).
        #[arg(long)]
        topology: PathBuf,
        /// Where to listen (host:port).
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: String,
        /// The region this router runs in (bounded-stale reads stay in it).
        #[arg(long)]
        region: String,
        /// The cluster key file (the secret as hex), to subscribe to the nodes' leader feeds.
        #[arg(long, env = "WALLETD_CLUSTER_KEY_FILE")]
        cluster_key_file: PathBuf,
        /// Calls in flight before new ones are shed with RESOURCE_EXHAUSTED.
        #[arg(long, default_value_t = 20_000)]
        in_flight_max: usize,
    },
    /// Print a running router's routing table, node health and recent failovers (JSON).
    Status {
        /// The router's address (host:port).
        #[arg(long, default_value = "127.0.0.1:7400")]
        router: String,
        /// The cluster key file: the status names the cluster's internals, so it takes the key.
        #[arg(long, env = "WALLETD_CLUSTER_KEY_FILE")]
        cluster_key_file: PathBuf,
    },
}

// One thread: a router scales out by running more of them (they are stateless), and on a
// machine it shares with nodes one thread costs fewer context switches (measured: about 8%
// more calls per second than tokio's default of one worker per core, BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "geo_router=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve { topology, listen, region, cluster_key_file, in_flight_max } => {
            serve(topology, listen, region, cluster_key_file, in_flight_max).await
        }
        Cmd::Status { router, cluster_key_file } => status(&router, &cluster_key_file).await,
    };
    if let Err(e) = result {
        eprintln!("geo-router: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(
    topology: PathBuf,
    listen: String,
    region: String,
    key_file: PathBuf,
    in_flight_max: usize,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&topology).with_context(|| format!("cannot read {}", topology.display()))?;
    let topology: ledger_core::placement::Topology =
        toml::from_str(&text).with_context(|| format!("{} is not a topology file", topology.display()))?;
    if !topology.regions.iter().any(|r| r.name == region) {
        bail!("region {region:?} is not in the topology");
    }
    let secret = std::fs::read_to_string(&key_file).with_context(|| format!("cannot read {}", key_file.display()))?;
    let token = geo_router::member_token(&secret).map_err(anyhow::Error::msg)?;
    let router = Router::new(RouterConfig {
        topology,
        region: region.clone(),
        member_token: token,
        policy: HealthPolicy::default(),
        in_flight_max,
    })
    .map_err(anyhow::Error::msg)?;
    let listener =
        tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signals");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    println!("geo-router: region {region}, serving casino.wallet.v1.Wallet on {}", listener.local_addr()?);
    geo_router::serve(router, listener, stop).await.map_err(anyhow::Error::msg)
}

async fn status(addr: &str, key_file: &std::path::Path) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    use tower::Service;
    let mut channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("no router answers at {addr}"))?;
    let secret = std::fs::read_to_string(key_file).with_context(|| format!("cannot read {}", key_file.display()))?;
    let token = geo_router::member_token(&secret).map_err(anyhow::Error::msg)?;
    let req = http::Request::builder()
        .method("POST")
        .uri("/georouter.v1.Admin/Status")
        .header("x-cluster-auth", token)
        .body(tonic::body::Body::empty())
        .expect("a valid request");
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
    let resp = channel.call(req).await.with_context(|| format!("the router at {addr} did not answer"))?;
    if let Some(code) = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok())
        && code != "0"
    {
        bail!("the router at {addr} refused: wrong or missing cluster key");
    }
    let body = resp.into_body().collect().await?.to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
