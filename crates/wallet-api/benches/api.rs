//! End-to-end wallet API throughput and latency, against the raw node API and a PostgreSQL
//! baseline in the same run.
//!
//! `cargo bench -p wallet-api --bench api -- [--clients 1,64,1024] [--secs 10] [--shards 4]
//! [--batch 100 --batch-clients 1,16,64] [--pg-url URL --pg-clients 16,64 | --no-pg]`
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
//! Then **gRPC batch**: `PlaceBets` with `--batch` bets per call, as a game server settling a
//! round would send them, and **PostgreSQL**: the transaction most teams would write first, run
//! through sqlx on the local server in a database created for this run and dropped after it (a
//! balance row per player, an append-only entry table keyed by a UUID; per bet one transaction
//! that inserts the entry, debits the player if the balance allows and credits one house
//! account; and again without the house account). The ratio gRPC/raw is the cost of the public
//! API; the ratios against PostgreSQL are issue 17's goals. An open-loop gRPC run at half of the
//! best single-call rate then shows offered against achieved load, with latency measured from
//! each call's scheduled send time (no coordinated omission).

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

// The allocator walletd runs with, so the in-process nodes measure what production runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Bets per `PlaceBets` call in the batch runs (0: no batch runs).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent `PlaceBets` callers to run.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    batch_clients: Vec<usize>,
    /// PostgreSQL server for the baseline; the run creates its own database there.
    #[arg(long, env = "BENCH_PG_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_url: String,
    /// PostgreSQL client counts (one connection each).
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pg_clients: Vec<usize>,
    /// Skip the PostgreSQL baseline.
    #[arg(long)]
    no_pg: bool,
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

    /// One `PlaceBets` call of `n` bets for players from `i` on: (bets applied, bets not).
    async fn api_batch(&self, client: &mut WalletClient<Channel>, i: usize, n: usize) -> (u64, u64) {
        let bets = (0..n)
            .map(|k| {
                let r = self.round();
                pb::PlaceBetRequest {
                    idempotency_key: format!("batch-{r}"),
                    player_id: player((i + k) % PLAYERS),
                    round_id: format!("r{r}"),
                    currency: "EUR".into(),
                    amount: 1,
                }
            })
            .collect();
        let req = self.creds.request(Rpc::PlaceBets, pb::PlaceBetsRequest { bets }, Duration::from_secs(10));
        match client.place_bets(req).await {
            Ok(r) => {
                let ok = r
                    .get_ref()
                    .results
                    .iter()
                    .filter(|x| matches!(x.result, Some(pb::batch_item_result::Result::Ok(_))))
                    .count();
                (ok as u64, (n - ok) as u64)
            }
            Err(_) => (0, n as u64),
        }
    }
}

/// Which path a closed-loop run sends bets through.
#[derive(Clone, Copy)]
enum Path {
    Raw,
    Grpc,
    /// `PlaceBets` with this many bets per call.
    Batch(usize),
}

async fn closed_loop(b: Arc<Bench>, path: Path, clients: usize, secs: u64) -> Report {
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
                let (ok, failed) = match path {
                    Path::Raw => {
                        if b.raw_bet(i).await {
                            (1, 0)
                        } else {
                            (0, 1)
                        }
                    }
                    Path::Grpc => {
                        if b.api_bet(&mut client, i).await {
                            (1, 0)
                        } else {
                            (0, 1)
                        }
                    }
                    Path::Batch(n) => b.api_batch(&mut client, i, n).await,
                };
                // Latency is per call: for a batch, the time until all its bets are decided.
                if ok > 0 {
                    let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                }
                ops.fetch_add(ok, Ordering::Relaxed);
                errors.fetch_add(failed, Ordering::Relaxed);
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
    let name = match path {
        Path::Raw => format!("raw node API, closed loop, {clients} clients"),
        Path::Grpc => format!("gRPC wallet API, closed loop, {clients} clients"),
        Path::Batch(n) => format!("gRPC PlaceBets ({n} bets per call), closed loop, {clients} callers"),
    };
    Report {
        name,
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

/// The PostgreSQL baseline: the wallet most teams would write first, on the local server.
mod pg {
    use std::str::FromStr;

    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use sqlx::{ConnectOptions, Connection, Executor};

    use super::*;

    /// A database made for one run, dropped by `drop_db`.
    pub(crate) struct Db {
        admin: PgConnectOptions,
        pub(crate) name: String,
        pub(crate) opts: PgConnectOptions,
    }

    pub(crate) async fn create(url: &str) -> Result<Db, sqlx::Error> {
        let admin = PgConnectOptions::from_str(url)?;
        let mut c = admin.connect().await?;
        let mut r = [0u8; 6];
        getrandom::fill(&mut r).expect("random");
        let name = format!("walletbench_{}", hex::encode(r));
        c.execute(format!("CREATE DATABASE {name}").as_str()).await?;
        let opts = admin.clone().database(&name);
        let mut c = opts.connect().await?;
        c.execute(
            "CREATE TABLE balances (player TEXT PRIMARY KEY, balance BIGINT NOT NULL);
             CREATE TABLE entries (id UUID PRIMARY KEY, player TEXT NOT NULL, amount BIGINT NOT NULL,
                                   at TIMESTAMPTZ NOT NULL DEFAULT now());",
        )
        .await?;
        sqlx::query(
            "INSERT INTO balances SELECT 'bench-p' || g, 1000000000 FROM generate_series(0, $1 - 1) g
             UNION ALL SELECT 'house', 0",
        )
        .bind(PLAYERS as i64)
        .execute(&mut c)
        .await?;
        Ok(Db { admin, name, opts })
    }

    /// The server's version and durability settings, for the report.
    pub(crate) async fn settings(db: &Db) -> Result<String, sqlx::Error> {
        let mut c = db.opts.connect().await?;
        let mut out = Vec::new();
        for q in ["SHOW server_version", "SHOW fsync", "SHOW synchronous_commit", "SHOW max_connections"] {
            let (v,): (String,) = sqlx::query_as(q).fetch_one(&mut c).await?;
            out.push(format!("{} = {v}", &q[5..]));
        }
        Ok(out.join(", "))
    }

    pub(crate) async fn drop_db(db: Db) -> Result<(), sqlx::Error> {
        let mut c = db.admin.connect().await?;
        c.execute(format!("DROP DATABASE IF EXISTS {}", db.name).as_str()).await?;
        Ok(())
    }

    /// One bet in one transaction: the entry, the player's debit if the balance allows, and
    /// (with `house`) the house account's credit. Retried on serialization failure or deadlock
    /// (40001, 40P01), as CockroachDB-compatible code must. `Ok(false)`: refused, not enough money.
    async fn bet(c: &mut PgConnection, id: &str, player: &str, house: bool) -> Result<bool, sqlx::Error> {
        loop {
            let attempt = async {
                let mut tx = c.begin().await?;
                sqlx::query("INSERT INTO entries (id, player, amount) VALUES ($1::uuid, $2, $3)")
                    .bind(id)
                    .bind(player)
                    .bind(1i64)
                    .execute(&mut *tx)
                    .await?;
                let debited =
                    sqlx::query("UPDATE balances SET balance = balance - $2 WHERE player = $1 AND balance >= $2")
                        .bind(player)
                        .bind(1i64)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if debited != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                if house {
                    sqlx::query("UPDATE balances SET balance = balance + $1 WHERE player = 'house'")
                        .bind(1i64)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(true)
            };
            match attempt.await {
                Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("40001" | "40P01")) => continue,
                r => return r,
            }
        }
    }

    pub(crate) async fn closed_loop(db: &Db, house: bool, clients: usize, secs: u64) -> Result<Report, sqlx::Error> {
        let mut conns = Vec::with_capacity(clients);
        for _ in 0..clients {
            conns.push(db.opts.connect().await?);
        }
        let mut prefix = [0u8; 8];
        getrandom::fill(&mut prefix).expect("random");
        let prefix = u64::from_le_bytes(prefix);
        let next = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (w, mut c) in conns.into_iter().enumerate() {
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let (mut hist, mut ok, mut failed) = (histogram(), 0u64, 0u64);
                let mut i = w;
                while Instant::now() < end {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let id = format!(
                        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                        prefix >> 32,
                        (prefix >> 16) & 0xffff,
                        prefix & 0xfff,
                        (n >> 48) & 0xfff,
                        n & 0xffff_ffff_ffff
                    );
                    let t = Instant::now();
                    match bet(&mut c, &id, &player(i % PLAYERS), house).await {
                        Ok(true) => {
                            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                            ok += 1;
                        }
                        Ok(false) => failed += 1,
                        Err(e) => panic!("PostgreSQL refused a bet: {e}"),
                    }
                    i += clients;
                }
                let _ = c.close().await;
                (hist, ok, failed)
            }));
        }
        let (mut hist, mut ok, mut failed) = (histogram(), 0, 0);
        for t in tasks {
            let (h, o, f) = t.await.expect("client task");
            hist.add(&h).expect("same bounds");
            ok += o;
            failed += f;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let what = if house { "hot house account" } else { "no house account" };
        Ok(Report {
            name: format!("PostgreSQL, one bet per transaction, {what}, {clients} clients"),
            offered: None,
            achieved: ok as f64 / elapsed,
            errors: failed,
            hist,
        })
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // The baseline's database first: a benchmark that cannot reach PostgreSQL says so before
    // spending minutes on the cluster.
    let db = if args.no_pg {
        None
    } else {
        match pg::create(&args.pg_url).await {
            Ok(db) => Some(db),
            Err(e) => {
                eprintln!("cannot set up the PostgreSQL baseline at {}: {e} (--no-pg skips it)", args.pg_url);
                std::process::exit(1);
            }
        }
    };
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
    if let Some(db) = &db {
        println!(
            "PostgreSQL baseline in database {}: {}",
            db.name,
            pg::settings(db).await.expect("PostgreSQL settings")
        );
    }
    println!();
    println!("| run | offered/s | achieved/s | p50 ms | p99 ms | p999 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    let mut best_grpc = 0.0f64;
    for &c in &args.clients {
        let raw_r = closed_loop(b.clone(), Path::Raw, c, args.secs).await;
        raw_r.print();
        let api_r = closed_loop(b.clone(), Path::Grpc, c, args.secs).await;
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
    let mut best_batch = 0.0f64;
    if args.batch > 0 {
        for &c in &args.batch_clients {
            let r = closed_loop(b.clone(), Path::Batch(args.batch), c, args.secs).await;
            r.print();
            best_batch = best_batch.max(r.achieved);
        }
    }
    let (mut pg_house, mut pg_plain) = (0.0f64, 0.0f64);
    if let Some(db) = &db {
        for &c in &args.pg_clients {
            for house in [true, false] {
                let r = pg::closed_loop(db, house, c, args.secs).await.expect("PostgreSQL run");
                r.print();
                let best = if house { &mut pg_house } else { &mut pg_plain };
                *best = best.max(r.achieved);
            }
        }
    }
    println!();
    println!("| clients | gRPC / raw throughput | gRPC / raw p99 |");
    println!("|---|---|---|");
    for (c, t, p) in ratios {
        println!("| {c} | {t:.2} | {p:.2} |");
    }
    if pg_house > 0.0 && pg_plain > 0.0 {
        println!();
        println!(
            "| best rate | bets/s | × PostgreSQL hot house ({pg_house:.0}/s) | × PostgreSQL no house ({pg_plain:.0}/s) |"
        );
        println!("|---|---|---|---|");
        for (what, rate) in [("gRPC PlaceBet, one bet per call", best_grpc), ("gRPC PlaceBets", best_batch)] {
            if rate > 0.0 {
                println!("| {what} | {rate:.0} | {:.1}× | {:.1}× |", rate / pg_house, rate / pg_plain);
            }
        }
    }
    for n in &nodes {
        n.shutdown().await;
    }
    if let Some(db) = db
        && let Err(e) = pg::drop_db(db).await
    {
        eprintln!("could not drop the benchmark database: {e}");
    }
}
