//! The session service through gRPC against the session-store library, in one run, on the same
//! Redis.
//!
//! `cargo bench -p wallet-api --bench sessions_api -- [--seconds S] [--workers W]`
//!
//! For each of `CreateSession`, `Refresh` and `Introspect`: W closed-loop workers call the
//! library directly (`login`, `refresh`, `introspect` on a `SessionStore<RedisBackend>`), then
//! the same operation through `casino.session.v1.Sessions` on a tonic server on loopback in this
//! process (the edge layer, operator signatures, the security log with its fsync barrier, rate
//! limits off). Closed loop: offered load equals achieved load. Redis is TEST_REDIS_URL or
//! 127.0.0.1:6379.

#![allow(clippy::float_arithmetic)] // rates and durations for the report

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use session_store::{Keyring, RateLimits, RedisBackend, SessionConfig, SessionStore, SystemClock};
use tonic::transport::Channel;
use wallet_api::api::auth::{Authenticator, OperatorKey, Role};
use wallet_api::api::client::Credentials;
use wallet_api::api::edge::EdgeLayer;
use wallet_api::session::audit::SecurityLog;
use wallet_api::session::pb;
use wallet_api::session::pb::sessions_client::SessionsClient;
use wallet_api::session::service::SessionsService;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, default_value_t = 16)]
    workers: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

fn report(label: &str, h: &Histogram<u64>, elapsed: Duration) {
    println!(
        "{label:<28} {:>9.0} ops/s   p50 {:>8.1} µs   p99 {:>8.1} µs   p999 {:>8.1} µs",
        h.len() as f64 / elapsed.as_secs_f64(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Refresh,
    Introspect,
}

const DEVICE: &str = "bench-device";
const IP: &str = "10.0.0.1";

/// One worker's loop: `call(i, &mut state)` is one operation.
async fn measure<S, F, Fut>(args: &Args, init: impl Fn(usize) -> Fut, call: F) -> (Histogram<u64>, Duration)
where
    S: Send + 'static,
    Fut: std::future::Future<Output = S> + Send,
    F: Fn(usize, S) -> std::pin::Pin<Box<dyn std::future::Future<Output = S> + Send>> + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let mut states = Vec::new();
    for w in 0..args.workers {
        states.push(init(w).await);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for (w, mut state) in states.into_iter().enumerate() {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            let mut i = w * 1_000_000;
            while Instant::now() < deadline {
                let t = Instant::now();
                state = call(i, state).await;
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
    (all, start.elapsed())
}

async fn library(store: SessionStore<RedisBackend>, op: Op, args: &Args) {
    let s = store.clone();
    let init = move |w: usize| {
        let s = s.clone();
        async move { s.login(&format!("lib-{w}"), DEVICE, IP, 1).await.unwrap() }
    };
    let (h, elapsed) = measure(args, init, move |i, t| {
        let s = store.clone();
        Box::pin(async move {
            match op {
                Op::Create => {
                    s.login(&format!("lib-c{i}"), DEVICE, IP, 1).await.unwrap();
                    t
                }
                Op::Refresh => s.refresh(&t.refresh_token, DEVICE, IP).await.unwrap(),
                Op::Introspect => {
                    s.introspect(&t.access_token, None).await.unwrap();
                    t
                }
            }
        })
    })
    .await;
    report(&format!("library {}", name(op)), &h, elapsed);
}

fn name(op: Op) -> &'static str {
    match op {
        Op::Create => "CreateSession",
        Op::Refresh => "Refresh",
        Op::Introspect => "Introspect",
    }
}

async fn grpc(channel: Channel, op: Op, creds: Credentials, args: &Args) {
    let path = |m: &str| wallet_api::session::path(m);
    let create = |player: String| pb::CreateSessionRequest {
        player_id: player,
        device_fingerprint: DEVICE.into(),
        ip: IP.into(),
        auth_level: 1,
        auth_time_ms: 0,
    };
    let timeout = Duration::from_secs(10);
    let (ch, c2) = (channel.clone(), creds.clone());
    let init = move |w: usize| {
        let (ch, creds) = (ch.clone(), c2.clone());
        async move {
            let req = creds.request_at(&path("CreateSession"), create(format!("api-{w}")), timeout);
            SessionsClient::new(ch).create_session(req).await.unwrap().into_inner()
        }
    };
    let (h, elapsed) = measure(args, init, move |i, t| {
        let mut client = SessionsClient::new(channel.clone());
        let creds = creds.clone();
        Box::pin(async move {
            match op {
                Op::Create => {
                    let req = creds.request_at(&path("CreateSession"), create(format!("api-c{i}")), timeout);
                    client.create_session(req).await.unwrap();
                    t
                }
                Op::Refresh => {
                    let mut req = tonic::Request::new(pb::RefreshRequest {
                        refresh_token: t.refresh_token.clone(),
                        device_fingerprint: DEVICE.into(),
                    });
                    req.set_timeout(timeout);
                    client.refresh(req).await.unwrap().into_inner()
                }
                Op::Introspect => {
                    let m = pb::IntrospectRequest { token: t.access_token.clone(), device_fingerprint: String::new() };
                    let r = client.introspect(creds.request_at(&path("Introspect"), m, timeout)).await.unwrap();
                    assert!(r.into_inner().active);
                    t
                }
            }
        })
    })
    .await;
    report(&format!("gRPC {}", name(op)), &h, elapsed);
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        println!("{} workers, {} s per measurement, Redis on loopback", args.workers, args.seconds);
        let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("ssapibench:{}", std::process::id());
        let backend = RedisBackend::connect(&url, &prefix, Duration::from_secs(2)).await.unwrap();
        let config = SessionConfig { limits: RateLimits::OFF, ..SessionConfig::default() };
        let store = SessionStore::new(backend, Keyring::new("bench", [7; 32]).unwrap(), config, Arc::new(SystemClock));
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SecurityLog::open(&dir.path().join("security-events.log"), "bench").unwrap();
        store.set_event_sink(log.sink());

        let secret = [5u8; 32];
        let key = OperatorKey {
            id: "bench".into(),
            secret: hex::encode(secret),
            roles: [Role::Session].into_iter().collect(),
        };
        let (_stop, draining) = tokio::sync::watch::channel(false);
        let service = SessionsService::new(store.clone(), Authenticator::new(vec![key], None), Some(log), draining);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(EdgeLayer { message_bytes_max: wallet_api::api::MESSAGE_BYTES_MAX })
                .add_service(service.into_server())
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))),
        );
        let channel = wallet_api::api::client::channel(&addr.to_string()).await.unwrap();
        let creds = Credentials::Operator { key_id: "bench".into(), secret: secret.to_vec() };
        for op in [Op::Create, Op::Refresh, Op::Introspect] {
            library(store.clone(), op, &args).await;
            grpc(channel.clone(), op, creds.clone(), &args).await;
        }
    });
}
