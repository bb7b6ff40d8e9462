//! A bet/win/rollback workload over the wallet API, as a casino's game servers produce it: each
//! client places a bet, then settles a win for about 45% of rounds and rolls back about 5%.
//! `walletd demo --load` shows it live; the API benchmark measures with it.
//!
//! The workload's choices come from a per-client seeded generator, so a run's mix is
//! reproducible; latency and throughput are what they are.

// Floats here are rates and latencies for the progress line, never money.
#![allow(clippy::float_arithmetic)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::Channel;

use wallet_api::api::auth::Rpc;
use wallet_api::api::client::{Credentials, connect, new_key};
use wallet_api::api::pb;
use wallet_api::api::pb::wallet_client::WalletClient;

/// Counters and latencies of a run, shared by its clients.
pub(crate) struct Stats {
    /// Calls that succeeded.
    pub(crate) ops: AtomicU64,
    /// Calls that failed.
    pub(crate) errors: AtomicU64,
    /// Latency of successful calls, microseconds, since the last [`Stats::take_interval`].
    interval: Mutex<Histogram<u64>>,
    /// Latency of every successful call, microseconds.
    pub(crate) total: Mutex<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty counters.
    pub(crate) fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        Self { ops: AtomicU64::new(0), errors: AtomicU64::new(0), interval: Mutex::new(h()), total: Mutex::new(h()) }
    }

    fn record(&self, started: Instant, ok: bool) {
        if ok {
            let us = (started.elapsed().as_micros() as u64).clamp(1, 60_000_000);
            self.ops.fetch_add(1, Ordering::Relaxed);
            let _ = self.interval.lock().expect("stats lock").record(us);
            let _ = self.total.lock().expect("stats lock").record(us);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The latencies since the last call, and a fresh interval.
    pub(crate) fn take_interval(&self) -> Histogram<u64> {
        let mut h = self.interval.lock().expect("stats lock");
        let out = h.clone();
        h.reset();
        out
    }
}

/// splitmix64: a tiny seeded generator for the workload mix (not for anything secret).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A prepared workload: funded players and connections to the API.
pub(crate) struct Workload {
    channels: Vec<WalletClient<Channel>>,
    creds: Credentials,
    players: Vec<String>,
    run_id: String,
}

const CURRENCY: &str = "EUR";

impl Workload {
    /// Connects to `addrs` and opens and funds `players` wallets (ids unique to this run).
    pub(crate) async fn prepare(addrs: &[String], creds: Credentials, players: usize) -> Result<Self, String> {
        let mut channels = Vec::new();
        // Several HTTP/2 connections per node, so a thousand clients do not queue on one.
        for _ in 0..4 {
            for a in addrs {
                channels.push(connect(a).await.map_err(|e| format!("connect {a}: {e}"))?);
            }
        }
        let run_id = new_key("load");
        let players: Vec<String> = (0..players).map(|i| format!("{run_id}-p{i}")).collect();
        let w = Self { channels, creds, players, run_id };
        let t = Duration::from_secs(30);
        let mut setup = tokio::task::JoinSet::new();
        for (i, p) in w.players.iter().enumerate() {
            let mut c = w.channels[i % w.channels.len()].clone();
            let creds = w.creds.clone();
            let p = p.clone();
            setup.spawn(async move {
                let open = pb::OpenWalletRequest {
                    idempotency_key: format!("{p}-open"),
                    player_id: p.clone(),
                    currency: CURRENCY.into(),
                };
                c.open_wallet(creds.request(Rpc::OpenWallet, open, t)).await.map_err(|s| s.message().to_string())?;
                let dep = pb::DepositRequest {
                    idempotency_key: format!("{p}-dep"),
                    player_id: p.clone(),
                    currency: CURRENCY.into(),
                    amount: 1_000_000_000,
                };
                c.deposit(creds.request(Rpc::Deposit, dep, t)).await.map_err(|s| s.message().to_string())?;
                Ok::<(), String>(())
            });
        }
        while let Some(r) = setup.join_next().await {
            r.map_err(|e| e.to_string())??;
        }
        Ok(w)
    }

    /// Runs `clients` concurrent clients until `stop` is set, counting each call as one op in
    /// `stats`.
    pub(crate) async fn run(&self, clients: usize, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
        let mut set = tokio::task::JoinSet::new();
        for worker in 0..clients {
            let mut c = self.channels[worker % self.channels.len()].clone();
            let creds = self.creds.clone();
            let players = self.players.clone();
            let stats = stats.clone();
            let stop = stop.clone();
            let run_id = self.run_id.clone();
            set.spawn(async move {
                let mut mix = Mix(worker as u64 + 1);
                let t = Duration::from_secs(10);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let p = players[mix.below(players.len() as u64) as usize].clone();
                    let round = format!("{run_id}-w{worker}-r{n}");
                    let bet_key = format!("{round}-bet");
                    let amount = 1 + mix.below(500) as i64;
                    let started = Instant::now();
                    let bet = pb::PlaceBetRequest {
                        idempotency_key: bet_key.clone(),
                        player_id: p.clone(),
                        round_id: round.clone(),
                        currency: CURRENCY.into(),
                        amount,
                    };
                    let ok = c.place_bet(creds.request(Rpc::PlaceBet, bet, t)).await.is_ok();
                    stats.record(started, ok);
                    if !ok {
                        continue;
                    }
                    let roll = mix.below(100);
                    let started = Instant::now();
                    if roll < 45 {
                        let win = pb::SettleWinRequest {
                            idempotency_key: format!("{round}-win"),
                            player_id: p,
                            round_id: round,
                            currency: CURRENCY.into(),
                            amount: amount * 2,
                        };
                        let ok = c.settle_win(creds.request(Rpc::SettleWin, win, t)).await.is_ok();
                        stats.record(started, ok);
                    } else if roll < 50 {
                        let rb = pb::RollbackBetRequest {
                            idempotency_key: format!("{round}-rb"),
                            player_id: p,
                            round_id: round,
                            bet_id: bet_key,
                        };
                        let ok = c.rollback_bet(creds.request(Rpc::RollbackBet, rb, t)).await.is_ok();
                        stats.record(started, ok);
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    }
}

/// `walletd demo --load`: runs until Ctrl-C or `secs`, with a live progress line.
pub(crate) async fn demo(
    addrs: &[String],
    creds: Credentials,
    clients: usize,
    secs: Option<u64>,
) -> Result<(), String> {
    println!("\n== load: {clients} clients placing bets, wins (45%) and rollbacks (5%) through the wallet API");
    let w = Arc::new(Workload::prepare(addrs, creds, (clients * 4).max(64)).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::new());
    let runner = {
        let (w, stop, stats) = (w.clone(), stop.clone(), stats.clone());
        tokio::spawn(async move { w.run(clients, stop, stats).await })
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("template"));
    let started = Instant::now();
    let mut last_ops = 0u64;
    let mut last_errors = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => break,
        }
        if secs.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        let ops = stats.ops.load(Ordering::Relaxed);
        let errors = stats.errors.load(Ordering::Relaxed);
        let h = stats.take_interval();
        bar.set_message(format!(
            "{:>7} ops/s   p50 {:>6.1} ms   p99 {:>6.1} ms   errors {:>4} ({} total ops)",
            ops - last_ops,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            errors - last_errors,
            ops
        ));
        bar.tick();
        last_ops = ops;
        last_errors = errors;
    }
    stop.store(true, Ordering::Relaxed);
    runner.await.map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let total = stats.total.lock().expect("stats lock").clone();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "load finished: {} ops in {:.1} s ({:.0} ops/s), p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms, {} errors",
        stats.ops.load(Ordering::Relaxed),
        secs,
        stats.ops.load(Ordering::Relaxed) as f64 / secs,
        total.value_at_quantile(0.5) as f64 / 1000.0,
        total.value_at_quantile(0.99) as f64 / 1000.0,
        total.value_at_quantile(0.999) as f64 / 1000.0,
        stats.errors.load(Ordering::Relaxed)
    );
    Ok(())
}
