//! Draws and verifications per second on one core, and the shared beacon over gRPC.
//!
//! `cargo bench -p rng-beacon --bench draws -- [--seconds S] [--clients C]`
//!
//! - **draw**: `fair::draw` under one keyed seed (the beacon's hot path: the seed's HMAC key
//!   schedule is done once per pair), for every game in both modes.
//! - **verify**: what an auditor's tool does per bet: key the revealed seed, recompute, compare
//!   with the logged JSON outcome.
//! - **grpc**: `DrawOutcome` over loopback gRPC with C closed-loop clients, each on its own seed
//!   pair, every draw fsynced to the audit log before it is answered (group commit).
//!
//! All loops are closed: offered load equals achieved load. Latency is measured per batch of 64
//! in-process draws (timer cost kept out) and per call over gRPC.

#![allow(clippy::float_arithmetic)] // rates and durations for the report, never outcomes

use clap::Parser;
use hdrhistogram::Histogram;
use rng_beacon::fair::{self, Game, KeyedSeed, Mode};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Seconds per in-process measurement.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Concurrent gRPC clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

fn report(label: &str, ops: u64, elapsed: Duration, h: &Histogram<u64>) {
    println!(
        "{label:<28} {:>12.0} ops/s   p50 {:>7} ns   p99 {:>7} ns   p999 {:>7} ns",
        ops as f64 / elapsed.as_secs_f64(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999)
    );
}

fn bench_draws(game: Game, mode: Mode, seconds: f64) {
    let keyed = KeyedSeed::new("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    let mut h = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut nonce = 0u64;
    let mut sink = 0usize;
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        for _ in 0..64 {
            let o = fair::draw(&mut keyed.stream("client seed", nonce), game, mode);
            sink = sink.wrapping_add(std::hint::black_box(&o) as *const _ as usize & 1);
            nonce += 1;
        }
        h.record(t.elapsed().as_nanos() as u64 / 64).unwrap();
    }
    std::hint::black_box(sink);
    report(&format!("draw {} {}", game.spec(), mode.name()), nonce, start.elapsed(), &h);
}

fn bench_verify(game: Game, mode: Mode, seconds: f64) {
    let seed = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let logged: Vec<String> =
        (0..1024).map(|n| fair::outcome(seed, "client seed", n, game, mode).unwrap().to_json().to_string()).collect();
    let mut h = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        for _ in 0..64 {
            let i = n % 1024;
            let again = fair::outcome(seed, "client seed", i, game, mode).unwrap().to_json();
            assert_eq!(again.to_string(), logged[i as usize]);
            n += 1;
        }
        h.record(t.elapsed().as_nanos() as u64 / 64).unwrap();
    }
    report(&format!("verify {} {}", game.spec(), mode.name()), n, start.elapsed(), &h);
}

async fn bench_grpc(clients: usize, seconds: f64) {
    use rng_beacon::pb::beacon_client::BeaconClient;
    use rng_beacon::pb::{DrawOutcomeRequest, GetCommitmentRequest};
    use rng_beacon::service::{BeaconConfig, BeaconService};
    let dir = tempfile::tempdir().unwrap();
    let service = BeaconService::start(BeaconConfig::new(dir.path().join("audit.log"))).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(service.serve(listener, std::future::pending()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = BeaconClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let pair = format!("bench-{c}");
            client.get_commitment(GetCommitmentRequest { pair_id: pair.clone() }).await.unwrap();
            let mut h = Histogram::<u64>::new(3).unwrap();
            let mut nonce = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                let req = DrawOutcomeRequest {
                    pair_id: pair.clone(),
                    game: "dice".into(),
                    mode: "unbiased".into(),
                    client_seed: "bench".into(),
                    nonce,
                };
                client.draw_outcome(req).await.unwrap();
                h.record(t.elapsed().as_nanos() as u64).unwrap();
                nonce += 1;
            }
            h
        }));
    }
    let mut all = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    report(&format!("grpc dice, {clients} clients"), all.len(), start.elapsed(), &all);
}

fn main() {
    let args = Args::parse();
    println!("in-process, one core, closed loop (latency per op)");
    for mode in [Mode::Stake, Mode::Unbiased] {
        for spec in ["dice", "roulette", "float", "keno", "limbo", "cards:1", "mines:3", "plinko:16", "shuffle"] {
            bench_draws(Game::parse(spec).unwrap(), mode, args.seconds);
        }
    }
    for spec in ["dice", "keno"] {
        bench_verify(Game::parse(spec).unwrap(), Mode::Stake, args.seconds);
    }
    println!("gRPC over loopback, fsynced audit log (latency per call)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench_grpc(args.clients, args.seconds.max(3.0)));
}
