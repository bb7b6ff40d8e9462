//! End-to-end wallet API throughput and latency, against the raw node API in the same run.
//!
//! `cargo bench -p wallet-api --bench api -- [--clients 1,64,1024] [--secs 10] [--shards 4]`
//!
//! Three real nodes run in this process, each with its own data directory, write-ahead log and
//! fsync, and each serving the wallet API. For each client count, two closed-loop runs place
//! bets on the same cluster:
//!
//! - **raw**: `LedgerClient` straight to the shard leaders over the internal node API (no auth,
//!   client-side batching) — the raft-ledger figure;
//! - **gRPC**: `casino.wallet.v1.Wallet/PlaceBet` with HMAC-signed operator credentials, each
//!   client on one of the three nodes' APIs (so two thirds of calls are forwarded to a leader).
//!
//! The ratio gRPC/raw is the cost of the public API. An open-loop gRPC run at half of the best
//! gRPC rate then shows offered against achieved load, with latency measured from each call's
//! scheduled send time (no coordinated omission).

// Floats here are rates and durations for the report, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use ledger_core::{Amount, Command, Currency, Outcome, PlayerId, RoundId, TxId};
use raft_ledger::client::{ClientOptions, LedgerClient};
use raft_ledger::net::env::Listener;
use raft_ledger::node::{LedgerNode, NodeConfig, NodeEnv};
use raft_ledger::raft::{NodeId, NodeInfo};
use tokio::sync::{Mutex, watch};
use tonic::transport::Channel;
use wallet_api::api::auth::{Authenticator, OperatorKey, Role, Rpc};
use wallet_api::api::client::{Credentials, connect};
use wallet_api::api::pb::{self, wallet_client::WalletClient};
use wallet_api::api::service::{WalletService, serve};

#[derive(Parser)]
struct Args {
    /// Closed-loop client counts to run.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    clients: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Shards.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    #[arg(long, hide = true)]
    bench: bool,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")
}

struct Report {
    name: String,
    offered: Option<f64>,
    achieved: f64,
    errors: u64,
    hist: Histogram<u64>,
}

impl Report {
    fn print(&self) {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            self.name,
            self.offered.map_or("–".to_string(), |o| format!("{o:.0}")),
            self.achieved,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            self.hist.max() as f64 / 1000.0,
            self.errors
        );
    }
}

const PLAYERS: usize = 512;

fn player(i: usize) -> String {
    format!("bench-p{i}")
}

struct Bench {
    raw: Arc<LedgerClient>,
    api: Vec<WalletClient<Channel>>,
    creds: Credentials,
    next_round: AtomicU64,
}

impl Bench {
    fn round(&self) -> u64 {
        self.next_round.fetch_add(1, Ordering::Relaxed)
    }

    async fn raw_bet(&self, i: usize) -> bool {
        let n = self.round();
        let cmd = Command::Bet {
            tx: TxId::new(format!("raw-{n}")).expect("id"),
            player: PlayerId::new(player(i % PLAYERS)).expect("id"),
            round: RoundId::new(format!("r{n}")).expect("id"),
            currency: Currency::new("EUR").expect("EUR"),
            amount: Amount::new(1).expect("amount"),
        };
        matches!(self.raw.submit(cmd).await, Ok(Outcome::Applied(_)))
    }

    async fn api_bet(&self, client: &mut WalletClient<Channel>, i: usize) -> bool {
        let n = self.round();
        let m = pb::PlaceBetRequest {
            idempotency_key: format!("api-{n}"),
            player_id: player(i % PLAYERS),
            round_id: format!("r{n}"),
            currency: "EUR".into(),
            amount: 1,
        };
        client.place_bet(self.creds.request(Rpc::PlaceBet, m, Duration::from_secs(10))).await.is_ok()
    }
}

async fn closed_loop(b: Arc<Bench>, grpc: bool, clients: usize, secs: u64) -> Report {
    let hist = Arc::new(Mutex::new(histogram()));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..clients {
        let (b, hist, ops, errors) = (b.clone(), hist.clone(), ops.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut client = b.api[w % b.api.len()].clone();
            let mut i = w;
            while Instant::now() < end {
                let t = Instant::now();
                let ok = if grpc { b.api_bet(&mut client, i).await } else { b.raw_bet(i).await };
                if ok {
                    let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                    ops.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += clients;
            }
            hist.lock().await.add(&local).expect("same bounds");
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let hist = hist.lock().await.clone();
    let path = if grpc { "gRPC wallet API" } else { "raw node API" };
    Report {
        name: format!("{path}, closed loop, {clients} clients"),
        offered: None,
        achieved: ops.load(Ordering::Relaxed) as f64 / elapsed,
        errors: errors.load(Ordering::Relaxed),
        hist,
    }
}

async fn open_loop(b: Arc<Bench>, rate: f64, secs: u64) -> Report {
    let hist = Arc::new(Mutex::new(histogram()));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let total = (rate * secs as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let scheduled = started + interval * n as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let (b, hist, ops, errors) = (b.clone(), hist.clone(), ops.clone(), errors.clone());
        tasks.spawn(async move {
            let mut client = b.api[n as usize % b.api.len()].clone();
            if b.api_bet(&mut client, n as usize).await {
                let _ = hist.lock().await.record(scheduled.elapsed().as_micros().max(1) as u64);
                ops.fetch_add(1, Ordering::Relaxed);
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let hist = hist.lock().await.clone();
    Report {
        name: "gRPC wallet API, open loop (half of best gRPC)".into(),
        offered: Some(rate),
        achieved: ops.load(Ordering::Relaxed) as f64 / elapsed,
        errors: errors.load(Ordering::Relaxed),
        hist,
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).expect("random");
    let key = || OperatorKey {
        id: "bench".into(),
        secret: hex::encode(&secret),
        roles: [Role::Game, Role::Cashier, Role::Audit].into_iter().collect(),
    };
    let (cluster_key, _) = raft_ledger::net::member::ClusterKey::generate();
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let l = Listener::bind_tcp("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        members.insert(id as NodeId, NodeInfo::new(addr, format!("r{id}"), format!("z{id}")));
        listeners.push(l);
    }
    let (_draining_tx, draining) = watch::channel(false);
    let mut nodes = Vec::new();
    let mut api_addrs = Vec::new();
    for ((id, info), l) in members.clone().into_iter().zip(listeners) {
        let config = NodeConfig::new(id, info.clone(), dir.path().join(format!("n{id}")), args.shards);
        let node = LedgerNode::start(config, NodeEnv::production(cluster_key.clone())).await.expect("start");
        let serving = node.clone();
        tokio::spawn(async move { serving.serve(l).await });
        let api_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        api_addrs.push(api_l.local_addr().expect("addr").to_string());
        let svc = WalletService::new(
            node.clone(),
            vec![info.addr.clone()],
            Authenticator::new(vec![key()], None),
            draining.clone(),
        );
        tokio::spawn(serve(svc, api_l, draining.clone()));
        nodes.push(node);
    }
    nodes[0].bootstrap(&members).await.expect("bootstrap");
    let addrs: Vec<String> = members.values().map(|m| m.addr.clone()).collect();
    let raw = Arc::new(LedgerClient::connect(addrs, ClientOptions::new(cluster_key.clone())).await.expect("connect"));
    let mut api = Vec::new();
    for _ in 0..8 {
        for a in &api_addrs {
            api.push(connect(a).await.expect("connect api"));
        }
    }
    let creds = Credentials::Operator { key_id: "bench".into(), secret };
    let b = Arc::new(Bench { raw: raw.clone(), api, creds, next_round: AtomicU64::new(0) });
    // Players with money enough for every run.
    let eur = Currency::new("EUR").expect("EUR");
    for i in 0..PLAYERS {
        let p = PlayerId::new(player(i)).expect("id");
        raw.submit(Command::OpenAccount {
            tx: TxId::new(format!("open-{i}")).expect("id"),
            player: p.clone(),
            currency: eur,
        })
        .await
        .expect("open");
        raw.submit(Command::Deposit {
            tx: TxId::new(format!("dep-{i}")).expect("id"),
            player: p,
            currency: eur,
            amount: Amount::new(1_000_000_000).expect("amount"),
        })
        .await
        .expect("deposit");
    }
    println!("3 nodes on loopback, fsync on, {} shards, {} s per run, bets of 0.01 EUR", args.shards, args.secs);
    println!();
    println!("| run | offered/s | achieved/s | p50 ms | p99 ms | p999 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    let mut best_grpc = 0.0f64;
    for &c in &args.clients {
        let raw_r = closed_loop(b.clone(), false, c, args.secs).await;
        raw_r.print();
        let api_r = closed_loop(b.clone(), true, c, args.secs).await;
        api_r.print();
        best_grpc = best_grpc.max(api_r.achieved);
        ratios.push((
            c,
            api_r.achieved / raw_r.achieved,
            api_r.hist.value_at_quantile(0.99) as f64 / raw_r.hist.value_at_quantile(0.99).max(1) as f64,
        ));
    }
    if best_grpc > 0.0 {
        open_loop(b.clone(), (best_grpc / 2.0).max(1.0), args.secs).await.print();
    }
    println!();
    println!("| clients | gRPC / raw throughput | gRPC / raw p99 |");
    println!("|---|---|---|");
    for (c, t, p) in ratios {
        println!("| {c} | {t:.2} | {p:.2} |");
    }
    for n in &nodes {
        n.shutdown().await;
    }
}
