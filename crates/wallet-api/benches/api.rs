//! End-to-end wallet API throughput and latency, against the raw node API and a PostgreSQL
//! baseline in the same run.
//!
//! `cargo bench -p wallet-api --bench api -- [--clients 1,64,1024] [--secs 10] [--shards 4]
//! [--rates 1000,2000] [--batch 100 --batch-clients 1,16,64] [--pg-url URL --pg-clients 16,64 | --no-pg]
//! [--players 512] [--state memory|disk] [--snapshot-every 10000]`
//!
//! Three real nodes run in this process, each with its own data directory, write-ahead log and
//! fsync, and each serving the wallet API. For each client count, three closed-loop runs place
//! bets on the same cluster:
//!
//! - **raw**: `LedgerClient` straight to the shard leaders over the internal node API (no auth,
//!   client-side batching) — the raft-ledger figure;
//! - **gRPC**: `casino.wallet.v1.Wallet/PlaceBet` with HMAC-signed operator credentials, each
//!   client on one of the three nodes' APIs (so two thirds of calls are forwarded to a leader);
//! - **gRPC at the leader**: the same, each call sent to the API of the node leading the
//!   player's shard, as the geo-router sends it (no forwarding hop).
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
//!
//! `--state disk` keeps each shard's retained ids, rounds and queue on disk, as `walletd
//! --state disk` does (accounts stay in memory, and so do the writes since the last checkpoint:
//! one comes every `--snapshot-every` log entries or 250,000 commands); its CSV rows name their
//! path with a `-disk` suffix.

// Floats here are rates and durations for the report, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Further open-loop `PlaceBet` rates (calls/s), to show where latency holds (0: none).
    #[arg(long, value_delimiter = ',', default_value = "1000,2000")]
    rates: Vec<f64>,
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
    /// Funded players the bets are spread over.
    #[arg(long, default_value_t = 512)]
    players: usize,
    /// Where each shard's retained state lives: in memory, or on disk (64 MiB block cache).
    #[arg(long, default_value = "memory", value_parser = ["memory", "disk"])]
    state: String,
    /// Raft log entries between a shard's snapshots (the node's `snapshot_every`).
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Also append every row to this CSV file (for `--plot`).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// The sweep this run belongs to, written in the CSV: `clients`, `shards` or `players`
    /// names the column a plot puts on its x axis.
    #[arg(long, default_value = "run")]
    sweep: String,
    /// Instead of running: draw throughput and p99 against clients, shards and players from a
    /// CSV written with `--csv`, as SVG files in `--plot-out`.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long, default_value = "docs/bench")]
    plot_out: PathBuf,
    #[arg(long, hide = true)]
    bench: bool,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")
}

struct Report {
    name: String,
    /// The path measured, for the CSV (`raw`, `grpc`, `grpc-leader`, `batch`, `open`, ...).
    series: &'static str,
    clients: usize,
    offered: Option<f64>,
    achieved: f64,
    errors: u64,
    /// What the errors were, by gRPC code and reason (empty for PostgreSQL, which retries).
    why: BTreeMap<String, u64>,
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
        // On stderr, so the table stays one table.
        for (kind, n) in &self.why {
            eprintln!("  {n} of the errors in \"{}\": {kind}", self.name);
        }
        if let Some((path, sweep, shards, state)) = CSV.get() {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the CSV");
            writeln!(
                f,
                "{sweep},{}{},{shards},{},{},{},{:.0},{:.3},{:.3},{:.3}",
                self.series,
                if state == "disk" { "-disk" } else { "" },
                players(),
                self.clients,
                self.offered.map_or(String::new(), |o| format!("{o:.0}")),
                self.achieved,
                ms(0.5),
                ms(0.99),
                ms(0.999)
            )
            .expect("write the CSV");
        }
    }
}

/// Funded players bets are spread over (`--players`).
static PLAYERS: AtomicUsize = AtomicUsize::new(512);

fn players() -> usize {
    PLAYERS.load(Ordering::Relaxed)
}

/// Where `Report::print` also appends its row as CSV (`--csv`): the file, the sweep's name, the
/// run's shard count and its `--state`.
static CSV: OnceLock<(PathBuf, String, u32, String)> = OnceLock::new();

fn player(i: usize) -> String {
    format!("bench-p{i}")
}

struct Bench {
    raw: Arc<LedgerClient>,
    /// Wallet API clients: connection `k` of node `n` at `k * 3 + n`.
    api: Vec<WalletClient<Channel>>,
    /// Per player, the node leading its shard (0-based), for calls sent where the geo-router
    /// would send them.
    home: Vec<usize>,
    creds: Credentials,
    next_round: AtomicU64,
    /// Failed calls since the last report, by what failed them.
    failures: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Bench {
    fn round(&self) -> u64 {
        self.next_round.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts `bets` failed bets under `kind` (the same unit as a report's error column).
    fn failed(&self, kind: String, bets: u64) {
        *self.failures.lock().expect("failures").entry(kind).or_default() += bets;
    }

    /// Groups by code and reason (not walletctl's `describe`, whose message varies per call,
    /// a retry delay or a leader's address); a transport's failure has only a message.
    fn failed_call(&self, status: &tonic::Status, bets: u64) {
        let why = wallet_api::api::errors::reason_of(status).unwrap_or_else(|| status.message().to_string());
        self.failed(format!("{}: {why}", wallet_api::exit::code_name(status.code())), bets);
    }

    /// The failures counted since the last call, for a run's report.
    fn take_failures(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.failures.lock().expect("failures"))
    }

    async fn raw_bet(&self, i: usize) -> bool {
        let n = self.round();
        let cmd = Command::Bet {
            tx: TxId::new(format!("raw-{n}")).expect("id"),
            player: PlayerId::new(player(i % players())).expect("id"),
            round: RoundId::new(format!("r{n}")).expect("id"),
            currency: Currency::new("EUR").expect("EUR"),
            amount: Amount::new(1).expect("amount"),
        };
        match self.raw.submit(cmd).await {
            Ok(Outcome::Applied(_)) => true,
            Ok(other) => {
                let what = match other {
                    Outcome::Rejected(r) | Outcome::AlreadyFailed(r) => format!("refused: {r}"),
                    Outcome::Conflict => "an id reused with another payload".to_string(),
                    _ => "a duplicate".to_string(),
                };
                self.failed(format!("raw node API: {what}"), 1);
                false
            }
            Err(e) => {
                self.failed(format!("raw node API: {e}"), 1);
                false
            }
        }
    }

    async fn api_bet(&self, client: &mut WalletClient<Channel>, i: usize) -> bool {
        let n = self.round();
        let m = pb::PlaceBetRequest {
            idempotency_key: format!("api-{n}"),
            player_id: player(i % players()),
            round_id: format!("r{n}"),
            currency: "EUR".into(),
            amount: 1,
        };
        match client.place_bet(self.creds.request(Rpc::PlaceBet, m, Duration::from_secs(10))).await {
            Ok(_) => true,
            Err(status) => {
                self.failed_call(&status, 1);
                false
            }
        }
    }

    /// One `PlaceBets` call of `n` bets for players from `i` on: (bets applied, bets not).
    async fn api_batch(&self, client: &mut WalletClient<Channel>, i: usize, n: usize) -> (u64, u64) {
        let bets = (0..n)
            .map(|k| {
                let r = self.round();
                pb::PlaceBetRequest {
                    idempotency_key: format!("batch-{r}"),
                    player_id: player((i + k) % players()),
                    round_id: format!("r{r}"),
                    currency: "EUR".into(),
                    amount: 1,
                }
            })
            .collect();
        let req = self.creds.request(Rpc::PlaceBets, pb::PlaceBetsRequest { bets }, Duration::from_secs(10));
        match client.place_bets(req).await {
            Ok(r) => {
                let ok = r.get_ref().succeeded();
                if ok < n {
                    self.failed("PlaceBets items not applied".to_string(), (n - ok) as u64);
                }
                (ok as u64, (n - ok) as u64)
            }
            Err(status) => {
                self.failed_call(&status, n as u64);
                (0, n as u64)
            }
        }
    }
}

/// Which path a closed-loop run sends bets through.
#[derive(Clone, Copy)]
enum Path {
    Raw,
    /// `PlaceBet` on a node chosen by client number: two thirds are forwarded to the leader.
    Grpc,
    /// `PlaceBet` on the API of the node leading the player's shard, as the geo-router sends it.
    GrpcLeader,
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
                let single = |ok: bool| if ok { (1, 0) } else { (0, 1) };
                let (ok, failed) = match path {
                    Path::Raw => single(b.raw_bet(i).await),
                    Path::Grpc => single(b.api_bet(&mut client, i).await),
                    Path::GrpcLeader => {
                        let mut at_leader = b.api[(w % 8) * 3 + b.home[i % players()]].clone();
                        single(b.api_bet(&mut at_leader, i).await)
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
    let series = match path {
        Path::Raw => "raw",
        Path::Grpc => "grpc",
        Path::GrpcLeader => "grpc-leader",
        Path::Batch(_) => "batch",
    };
    let name = match path {
        Path::Raw => format!("raw node API, closed loop, {clients} clients"),
        Path::Grpc => format!("gRPC wallet API, closed loop, {clients} clients"),
        Path::GrpcLeader => format!("gRPC wallet API at the leader, closed loop, {clients} clients"),
        Path::Batch(n) => format!("gRPC PlaceBets ({n} bets per call), closed loop, {clients} callers"),
    };
    Report {
        name,
        series,
        clients,
        offered: None,
        achieved: ops.load(Ordering::Relaxed) as f64 / elapsed,
        errors: errors.load(Ordering::Relaxed),
        why: b.take_failures(),
        hist,
    }
}

/// Open-loop `PlaceBet`s at `rate`, each on a node chosen by call number or, with `at_leader`,
/// on the node leading the player's shard.
async fn open_loop(b: Arc<Bench>, rate: f64, secs: u64, what: &str, at_leader: bool) -> Report {
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
            let n = n as usize;
            let i = if at_leader { (n % 8) * 3 + b.home[n % players()] } else { n % b.api.len() };
            let mut client = b.api[i].clone();
            if b.api_bet(&mut client, n).await {
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
        name: format!("gRPC wallet API{}, open loop ({what})", if at_leader { " at the leader" } else { "" }),
        series: if at_leader { "open-leader" } else { "open" },
        clients: 0,
        offered: Some(rate),
        achieved: ops.load(Ordering::Relaxed) as f64 / elapsed,
        errors: errors.load(Ordering::Relaxed),
        why: b.take_failures(),
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
        .bind(players() as i64)
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
                    match bet(&mut c, &id, &player(i % players()), house).await {
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
            series: if house { "pg-house" } else { "pg-plain" },
            clients,
            offered: None,
            achieved: ok as f64 / elapsed,
            errors: failed,
            why: BTreeMap::new(),
            hist,
        })
    }
}

#[path = "../../raft-ledger/benches/common/png.rs"]
mod png;

/// Plots of how cost grows (issue 17), from the CSV of one or more `--csv` runs.
mod plot {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::png::{self, Error, fonts};

    /// One CSV row's plotted fields.
    struct Row {
        sweep: String,
        series: String,
        x: BTreeMap<&'static str, f64>,
        achieved: f64,
        p99: f64,
    }

    fn rows(csv: &Path) -> Result<Vec<Row>, Error> {
        let mut out = Vec::new();
        for line in std::fs::read_to_string(csv)?.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 10 {
                return Err(format!("{}: a row with {} fields: {line}", csv.display(), f.len()).into());
            }
            let x = [("shards", f[2].parse()?), ("players", f[3].parse()?), ("clients", f[4].parse()?)].into();
            out.push(Row { sweep: f[0].into(), series: f[1].into(), x, achieved: f[6].parse()?, p99: f[8].parse()? });
        }
        Ok(out)
    }

    /// For each sweep named `clients`, `shards` or `players`: throughput and p99 against that
    /// column, one line per path measured (closed-loop runs only).
    pub(crate) fn draw(csv: &Path, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir)?;
        let rows = rows(csv)?;
        let fonts = fonts();
        for sweep in ["clients", "shards", "players"] {
            let mut lines: BTreeMap<&str, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
            for r in rows.iter().filter(|r| r.sweep == sweep && !r.series.starts_with("open")) {
                let x = r.x[sweep];
                lines.entry(r.series.as_str()).or_default().insert(x as u64, (r.achieved, r.p99));
            }
            if lines.is_empty() {
                continue;
            }
            let xs = || lines.values().flat_map(|l| l.keys().map(|x| *x as f64));
            let (x0, x1) = (xs().fold(f64::MAX, f64::min), xs().fold(1.0, f64::max));
            for (what, unit, pick) in [
                ("throughput", "bets/s", (|v: &(f64, f64)| v.0) as fn(&(f64, f64)) -> f64),
                ("p99", "p99 latency, ms", |v: &(f64, f64)| v.1),
            ] {
                let path = dir.join(format!("{sweep}-{what}.svg"));
                let y_top = lines.values().flat_map(|l| l.values().map(pick)).fold(1.0, f64::max) * 1.1;
                let caption = format!("{what} against {sweep}");
                let frame = png::Frame {
                    svg: path.clone(),
                    caption: &caption,
                    x: x0..x1 * 1.05,
                    y_top,
                    x_desc: sweep,
                    y_desc: unit,
                    x_labels: None,
                };
                let png = png::chart(frame, &fonts, |chart| {
                    for (series, points) in &lines {
                        // One colour and one label per path in every plot.
                        let (i, label) = match *series {
                            "raw" => (0, "raw node API"),
                            "grpc" => (1, "gRPC PlaceBet, any node"),
                            "grpc-leader" => (2, "gRPC PlaceBet at the leader"),
                            "batch" => (3, "gRPC PlaceBets x100 (x: callers)"),
                            "raw-disk" => (5, "raw node API, state on disk"),
                            "grpc-disk" => (6, "gRPC PlaceBet, any node, state on disk"),
                            "grpc-leader-disk" => (7, "gRPC PlaceBet at the leader, state on disk"),
                            other => (4, other),
                        };
                        png::series(chart, points.iter().map(|(x, v)| (*x as f64, pick(v))).collect(), label, i)?;
                    }
                    Ok(())
                })?;
                println!("wrote {}", path.display());
                println!("wrote {}", png.display());
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(csv) = &args.plot {
        plot::draw(csv, &args.plot_out).expect("plot");
        return;
    }
    PLAYERS.store(args.players.max(1), Ordering::Relaxed);
    if let Some(path) = &args.csv {
        CSV.set((path.clone(), args.sweep.clone(), args.shards, args.state.clone())).expect("set once");
    }
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
        let mut config = NodeConfig::new(id, info.clone(), dir.path().join(format!("n{id}")), args.shards);
        if args.state == "disk" {
            config.state = raft_ledger::node::StateStorage::Disk { cache_bytes: 64 << 20 };
        }
        config.snapshot_every = args.snapshot_every;
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
        tokio::spawn(serve(svc, None, api_l, draining.clone()));
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
    // Players with money enough for every run, opened and funded 4096 at a time.
    let eur = Currency::new("EUR").expect("EUR");
    let fund = |i: usize| {
        let raw = raw.clone();
        async move {
            let p = PlayerId::new(player(i)).expect("id");
            let open = Command::OpenAccount {
                tx: TxId::new(format!("open-{i}")).expect("id"),
                player: p.clone(),
                currency: eur,
            };
            raw.submit(open).await.expect("open");
            let amount = Amount::new(1_000_000_000).expect("amount");
            raw.submit(Command::Deposit {
                tx: TxId::new(format!("dep-{i}")).expect("id"),
                player: p,
                currency: eur,
                amount,
            })
            .await
            .expect("deposit");
        }
    };
    for start in (0..players()).step_by(4096) {
        futures_util::future::join_all((start..players().min(start + 4096)).map(fund)).await;
    }
    // Leaders are settled by now (the funding went through them) and stay put: the benchmark
    // kills nothing.
    let leaders: BTreeMap<u32, NodeId> =
        nodes[0].leaders().into_iter().filter_map(|l| l.leader.map(|(id, _)| (l.shard, id))).collect();
    let home = (0..players())
        .map(|i| {
            let shard = nodes[0].shard_map().shard_for(&PlayerId::new(player(i)).expect("id")).expect("shard").0;
            leaders.get(&shard).map_or(0, |id| (*id - 1) as usize)
        })
        .collect();
    let b = Arc::new(Bench {
        raw: raw.clone(),
        api,
        home,
        creds,
        next_round: AtomicU64::new(0),
        failures: Default::default(),
    });
    println!(
        "3 nodes on loopback, fsync on, {} shards, {} players, {} s per run, bets of 0.01 EUR",
        args.shards,
        players(),
        args.secs
    );
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
        let leader_r = closed_loop(b.clone(), Path::GrpcLeader, c, args.secs).await;
        leader_r.print();
        best_grpc = best_grpc.max(api_r.achieved).max(leader_r.achieved);
        let p50 = |r: &Report| r.hist.value_at_quantile(0.5).max(1) as f64;
        ratios.push((
            c,
            api_r.achieved / raw_r.achieved,
            p50(&api_r) / p50(&raw_r),
            leader_r.achieved / raw_r.achieved,
            p50(&leader_r) / p50(&raw_r),
        ));
    }
    if best_grpc > 0.0 {
        for at_leader in [false, true] {
            open_loop(b.clone(), (best_grpc / 2.0).max(1.0), args.secs, "half of best gRPC", at_leader).await.print();
        }
    }
    for &rate in args.rates.iter().filter(|r| **r > 0.0) {
        for at_leader in [false, true] {
            open_loop(b.clone(), rate, args.secs, "fixed rate", at_leader).await.print();
        }
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
    println!("| clients | gRPC / raw throughput | gRPC / raw p50 | at leader / raw throughput | at leader / raw p50 |");
    println!("|---|---|---|---|---|");
    for (c, t, p, lt, lp) in ratios {
        println!("| {c} | {t:.2} | {p:.2} | {lt:.2} | {lp:.2} |");
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
