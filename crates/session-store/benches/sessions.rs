//! Session-store throughput and latency, in-memory and against real Redis.
//!
//! `cargo bench -p session-store --bench sessions -- [--seconds S] [--workers W] [--sessions N]`
//!
//! For each backend: `login`, `validate` (the hot path: MAC check plus a cached session decision
//! that is refetched at most once per second per session) and `refresh` (an atomic rotation:
//! one Lua script on Redis). W closed-loop workers on a multi-threaded runtime, so offered load
//! equals achieved load. Redis is TEST_REDIS_URL or 127.0.0.1:6379.

#![allow(clippy::float_arithmetic)] // rates and durations for the report

use clap::Parser;
use hdrhistogram::Histogram;
use session_store::{Backend, Keyring, MemoryBackend, RedisBackend, SessionConfig, SessionStore, SystemClock};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, default_value_t = 16)]
    workers: usize,
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

fn report(label: &str, h: &Histogram<u64>, elapsed: Duration) {
    println!(
        "{label:<24} {:>10.0} ops/s   p50 {:>7.1} µs   p99 {:>7.1} µs   p999 {:>7.1} µs",
        h.len() as f64 / elapsed.as_secs_f64(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0
    );
}

#[derive(Clone, Copy)]
enum Op {
    Login,
    Validate,
    Refresh,
}

async fn run<B: Backend>(label: &str, store: SessionStore<B>, args: &Args) {
    // Sessions to validate, each with its own device.
    let mut tokens = Vec::new();
    for i in 0..args.sessions {
        tokens
            .push((store.login(&format!("p{i}"), &format!("dev{i}"), "10.0.0.1", 1).await.unwrap(), format!("dev{i}")));
    }
    let tokens = Arc::new(tokens);
    for (name, op) in [("login", Op::Login), ("validate", Op::Validate), ("refresh", Op::Refresh)] {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(args.seconds);
        let mut tasks = Vec::new();
        for w in 0..args.workers {
            let (store, tokens) = (store.clone(), tokens.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).unwrap();
                let mut i = w;
                // Refresh needs a live token per worker chain.
                let mut refresh = store.login(&format!("r{w}"), "devr", "10.0.0.1", 1).await.unwrap().refresh_token;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match op {
                        Op::Login => {
                            store.login(&format!("l{w}-{i}"), "devl", "10.0.0.1", 1).await.unwrap();
                        }
                        Op::Validate => {
                            let (tok, dev) = &tokens[i % tokens.len()];
                            store.validate(&tok.access_token, dev, "10.0.0.1").await.unwrap();
                        }
                        Op::Refresh => {
                            refresh = store.refresh(&refresh, "devr", "10.0.0.1").await.unwrap().refresh_token;
                        }
                    }
                    h.record(t.elapsed().as_nanos() as u64).unwrap();
                    i += 1;
                }
                h
            }));
        }
        let mut all = Histogram::<u64>::new(3).unwrap();
        for t in tasks {
            all.add(t.await.unwrap()).unwrap();
        }
        report(&format!("{label} {name}"), &all, start.elapsed());
    }
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        println!("{} workers, {} sessions, {} s per measurement", args.workers, args.sessions, args.seconds);
        let keys = || Keyring::new("bench", [7; 32]).unwrap();
        // Rate limits off: the benchmark logs in and refreshes from one address on purpose.
        let config = || SessionConfig { limits: session_store::RateLimits::OFF, ..SessionConfig::default() };
        let memory = SessionStore::new(MemoryBackend::new(), keys(), config(), Arc::new(SystemClock));
        run("memory", memory, &args).await;
        let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("ssbench:{}", std::process::id());
        let backend = RedisBackend::connect(&url, &prefix, Duration::from_secs(2)).await.unwrap();
        let redis = SessionStore::new(backend, keys(), config(), Arc::new(SystemClock));
        run("redis", redis, &args).await;
    });
}
