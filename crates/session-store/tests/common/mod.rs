//! Shared helpers: stores on both backends with a controlled clock, and a TCP proxy in front of
//! the real Redis that can cut and restore the connection.

#![allow(dead_code, unreachable_pub)]

use session_store::{
    Clock, Keyring, ManualClock, MemoryBackend, RedisBackend, SessionConfig, SessionStore, SystemClock,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub const KEY: [u8; 32] = [0x42; 32];

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test or run uses, so every run starts from a clean namespace.
pub fn fresh_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemClock.now_ms();
    format!("sstest:{}:{nanos}:{}:{name}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn clock() -> Arc<ManualClock> {
    // Start at the real time so the TTLs Redis is given are consistent with its own clock.
    Arc::new(ManualClock::new(SystemClock.now_ms()))
}

pub fn memory(config: SessionConfig, clock: Arc<ManualClock>) -> SessionStore<MemoryBackend> {
    SessionStore::new(MemoryBackend::new(), Keyring::new("k1", KEY).unwrap(), config, clock)
}

pub async fn redis_at(
    url: &str,
    prefix: &str,
    config: SessionConfig,
    clock: Arc<dyn Clock>,
) -> SessionStore<RedisBackend> {
    let backend =
        RedisBackend::connect(url, prefix, Duration::from_millis(500)).await.expect("Redis on TEST_REDIS_URL");
    SessionStore::new(backend, Keyring::new("k1", KEY).unwrap(), config, clock)
}

pub async fn redis(name: &str, config: SessionConfig, clock: Arc<ManualClock>) -> SessionStore<RedisBackend> {
    redis_at(&redis_url(), &fresh_prefix(name), config, clock).await
}

/// A TCP proxy to Redis whose link can be cut (every connection dropped, new ones refused)
/// and restored: a real network fault in front of a real Redis.
pub struct Proxy {
    pub url: String,
    up: Arc<AtomicBool>,
    kill: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let target = redis_url().trim_start_matches("redis://").trim_end_matches('/').to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(true));
        let (kill, _) = tokio::sync::watch::channel(0u64);
        let (up2, kill2) = (up.clone(), kill.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close at once
                }
                let mut dead = kill2.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut sock, &mut upstream) => {}
                        _ = dead.changed() => {}
                    }
                });
            }
        });
        Proxy { url, up, kill }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.kill.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
