//! The fault proxy: a user-space TCP relay on every link of the cluster under test, which adds
//! what this kernel's missing `netem` would (latency and jitter) and the faults toxiproxy
//! offers (a one-way blackhole, resets, a timeout that closes a silent link, slicing), per link
//! and per direction, changed while connections are open.
//!
//! A route listens for one destination (a node's node port or wallet API, a router) and
//! relays to it. Which link an accepted connection belongs to is known from its source
//! address: each node runs in a network namespace of its own, so its IP names it; anything
//! else is the "client" side. A link is (source, destination) and its faults apply per
//! direction: `Dir::Forward` is the bytes from the source to the destination.
//!
//! Latency: every chunk read is stamped with its arrival time and written no earlier than
//! arrival + delay (+ a jitter drawn from a seeded generator). Deadlines never go backwards,
//! so jitter never reorders a byte stream, as TCP would not.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

/// A direction on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    /// From the connecting side (the link's source) to the destination.
    Forward,
    /// Back from the destination to the source.
    Backward,
}

/// What happens to the bytes of one direction of a link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every chunk, in milliseconds.
    pub delay_ms: u64,
    /// Up to this much more, drawn uniformly per chunk, in milliseconds.
    pub jitter_ms: u64,
    /// Bytes vanish: read and discarded, the connection stays open and nothing is refused.
    pub blackhole: bool,
    /// Close a connection with a reset once this direction has been silent this long (ms).
    pub timeout_ms: Option<u64>,
    /// Write at most this many bytes at a time, with `slice_delay_ms` between slices.
    pub slice_bytes: Option<usize>,
    /// Pause between slices, in milliseconds.
    pub slice_delay_ms: u64,
}

/// Which links a fault applies to: `None` matches any end.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Selector {
    /// The source's name (a node such as "n1", or "client").
    pub from: Option<String>,
    /// The destination's name.
    pub to: Option<String>,
}

impl Selector {
    fn matches(&self, from: &str, to: &str) -> bool {
        self.from.as_deref().is_none_or(|f| f == from) && self.to.as_deref().is_none_or(|t| t == to)
    }
}

/// The name of connections from an address no node owns.
pub const CLIENT: &str = "client";

#[derive(Default)]
struct Controls {
    /// Faults in force, each in a layer (the emulated network is one, each injected fault
    /// another), so healing a fault removes its layer and leaves the rest.
    rules: Vec<(String, Selector, Dir, Faults)>,
    /// Source IP → node name.
    sources: BTreeMap<IpAddr, String>,
    /// Links refusing connections (reset on accept) until their layer is cleared.
    refusing: Vec<(String, Selector)>,
}

/// The proxy: routes, and the faults in force on them. Cheap to clone.
#[derive(Clone)]
pub struct FaultProxy {
    controls: Arc<Mutex<Controls>>,
    /// Reset orders: every connection whose link matches aborts with a RST.
    resets: broadcast::Sender<Selector>,
    seed: Arc<Mutex<SmallRng>>,
}

impl FaultProxy {
    /// A proxy whose jitter draws come from `seed`.
    pub fn new(seed: u64) -> Self {
        let (resets, _) = broadcast::channel(64);
        Self { controls: Arc::default(), resets, seed: Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))) }
    }

    /// Names connections from `ip` as coming from node `name`.
    pub fn name_source(&self, ip: IpAddr, name: &str) {
        self.lock().sources.insert(ip, name.to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Controls> {
        self.controls.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds, in `layer`, faults on direction `dir` of the links `sel` picks.
    pub fn set(&self, layer: &str, sel: Selector, dir: Dir, faults: Faults) {
        self.lock().rules.push((layer.to_string(), sel, dir, faults));
    }

    /// Removes every fault of every layer (and ends every refusal): a network without faults.
    pub fn clear(&self) {
        let mut c = self.lock();
        c.rules.clear();
        c.refusing.clear();
    }

    /// Removes the faults and refusals of `layer`.
    pub fn clear_layer(&self, layer: &str) {
        let mut c = self.lock();
        c.rules.retain(|(l, ..)| l != layer);
        c.refusing.retain(|(l, _)| l != layer);
    }

    /// Aborts every open connection on the links `sel` picks with a TCP reset, to both ends;
    /// with `refuse`, new connections on them are reset on accept until `layer` is cleared.
    pub fn reset(&self, layer: &str, sel: Selector, refuse: bool) {
        if refuse {
            self.lock().refusing.push((layer.to_string(), sel.clone()));
        }
        let _ = self.resets.send(sel);
    }

    /// The faults of one direction of link `from` → `to`: every matching rule of every layer,
    /// combined (delays and jitters add up, any blackhole drops, the shortest timeout and the
    /// smallest slice win).
    fn faults(&self, from: &str, to: &str, dir: Dir) -> Faults {
        let c = self.lock();
        let mut out = Faults::default();
        for (_, _, _, f) in c.rules.iter().filter(|(_, s, d, _)| *d == dir && s.matches(from, to)) {
            out.delay_ms = out.delay_ms.saturating_add(f.delay_ms);
            out.jitter_ms = out.jitter_ms.saturating_add(f.jitter_ms);
            out.blackhole |= f.blackhole;
            out.timeout_ms = min_some(out.timeout_ms, f.timeout_ms);
            out.slice_bytes = min_some(out.slice_bytes, f.slice_bytes);
            out.slice_delay_ms = out.slice_delay_ms.max(f.slice_delay_ms);
        }
        out
    }

    fn jitter(&self, max_ms: u64) -> Duration {
        if max_ms == 0 {
            return Duration::ZERO;
        }
        let us = self.seed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).random_range(0..=max_ms * 1000);
        Duration::from_micros(us)
    }

    /// Starts relaying connections to `listen` on to `upstream`, as destination `name`;
    /// returns the address it listens on (pass port 0 for any).
    pub async fn route(&self, name: &str, listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let proxy = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((conn, peer)) = listener.accept().await else { continue };
                let from = proxy.lock().sources.get(&peer.ip()).cloned().unwrap_or_else(|| CLIENT.to_string());
                let refused = proxy.lock().refusing.iter().any(|(_, s)| s.matches(&from, &name));
                if refused {
                    let _ = conn.set_zero_linger();
                    continue;
                }
                tokio::spawn(relay(proxy.clone(), from, name.clone(), conn, upstream));
            }
        });
        Ok(local)
    }
}

fn min_some<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One connection: dials upstream and pumps both ways until both sides have closed, a reset
/// order for its link arrives, or a direction times out.
async fn relay(proxy: FaultProxy, from: String, to: String, down: TcpStream, upstream: SocketAddr) {
    let mut resets = proxy.resets.subscribe();
    let Ok(up) = TcpStream::connect(upstream).await else {
        let _ = down.set_zero_linger();
        return;
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (down_r, down_w) = down.into_split();
    let (up_r, up_w) = up.into_split();
    let (kill, killed) = watch::channel(false);
    let link = Link { proxy, from, to };
    let fwd = tokio::spawn(pump(link.clone(), Dir::Forward, down_r, up_w, kill.clone(), killed.clone()));
    let back = tokio::spawn(pump(link.clone(), Dir::Backward, up_r, down_w, kill.clone(), killed));
    let reset = async {
        loop {
            match resets.recv().await {
                Ok(sel) if sel.matches(&link.from, &link.to) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    let both = async {
        let _ = fwd.await;
        let _ = back.await;
    };
    tokio::pin!(both);
    tokio::select! {
        () = &mut both => {}
        () = reset => {
            let _ = kill.send(true);
            both.await;
        }
    }
}

/// The link a connection belongs to.
#[derive(Clone)]
struct Link {
    proxy: FaultProxy,
    from: String,
    to: String,
}

/// Relays one direction: reads chunks, stamps them, and a writer task delivers each no earlier
/// than its deadline. A kill (a reset order, or the other direction timing out) or this
/// direction's own timeout aborts the connection: zero linger on the socket, so dropping it
/// sends RST to the side this pump reads from, and the other pump does the same for its side.
async fn pump(
    link: Link,
    dir: Dir,
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    kill: watch::Sender<bool>,
    mut killed: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let wl = link.clone();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let f = wl.proxy.faults(&wl.from, &wl.to, dir);
            if f.blackhole {
                continue;
            }
            let step = f.slice_bytes.filter(|s| *s > 0).unwrap_or(bytes.len().max(1));
            for (i, part) in bytes.chunks(step).enumerate() {
                if i > 0 && f.slice_delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(f.slice_delay_ms)).await;
                }
                if w.write_all(part).await.is_err() {
                    return w;
                }
            }
        }
        let _ = w.shutdown().await;
        w
    });
    let mut last = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    let aborted = loop {
        let f = link.proxy.faults(&link.from, &link.to, dir);
        let silence = Duration::from_millis(f.timeout_ms.unwrap_or(u64::MAX / 4));
        let read = tokio::select! {
            r = tokio::time::timeout(silence, r.read(&mut buf)) => r,
            _ = killed.wait_for(|k| *k) => break true,
        };
        let n = match read {
            Err(_) => {
                // Silent for longer than the timeout: abort the whole connection.
                let _ = kill.send(true);
                break true;
            }
            Ok(Ok(0) | Err(_)) => break false,
            Ok(Ok(n)) => n,
        };
        // The faults in force when the bytes arrived, not when the read began (a read may wait
        // for a long time, and a fault set meanwhile applies to what it returns).
        let f = link.proxy.faults(&link.from, &link.to, dir);
        let now = Instant::now();
        let due = (now + Duration::from_millis(f.delay_ms) + link.proxy.jitter(f.jitter_ms)).max(last);
        last = due;
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break false;
        }
    };
    drop(tx);
    if aborted {
        writer.abort();
        let _ = r.as_ref().set_zero_linger();
        return;
    }
    // A clean end of this direction: the writer delivers what is queued, then half-closes.
    // If the other direction is killed meanwhile, stop waiting and reset.
    let mut writer = writer;
    tokio::select! {
        _ = &mut writer => {}
        _ = killed.wait_for(|k| *k) => {
            writer.abort();
            let _ = r.as_ref().set_zero_linger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = c.set_nodelay(true);
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn proxied(proxy: &FaultProxy) -> TcpStream {
        let up = echo().await;
        let at = proxy.route("echo", "127.0.0.1:0".parse().unwrap(), up).await.unwrap();
        let c = TcpStream::connect(at).await.unwrap();
        c.set_nodelay(true).unwrap();
        c
    }

    async fn round_trip(c: &mut TcpStream) -> std::io::Result<Duration> {
        let started = std::time::Instant::now();
        c.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(started.elapsed())
    }

    /// The proxy replaces netem, so its latency must be what was asked for: 25 ms each way
    /// gives round trips of 50 ms, never less, and within a few ms more (timer granularity and
    /// scheduling on a loaded machine).
    #[tokio::test]
    async fn added_latency_is_accurate() {
        let proxy = FaultProxy::new(1);
        let mut c = proxied(&proxy).await;
        round_trip(&mut c).await.unwrap();
        let base = round_trip(&mut c).await.unwrap();
        let delay = Faults { delay_ms: 25, ..Faults::default() };
        proxy.set("net", Selector::default(), Dir::Forward, delay.clone());
        proxy.set("net", Selector::default(), Dir::Backward, delay);
        let mut rtts = Vec::new();
        for _ in 0..20 {
            rtts.push(round_trip(&mut c).await.unwrap());
        }
        rtts.sort();
        let (min, median) = (rtts[0], rtts[rtts.len() / 2]);
        assert!(min >= Duration::from_millis(50), "a round trip took {min:?}, less than the 50 ms added");
        assert!(
            median <= Duration::from_millis(50) + base + Duration::from_millis(4),
            "median round trip {median:?} (no-fault round trip {base:?}): more than 4 ms over the 50 ms added"
        );
        // Layers add up: 10 ms more on the way there, plus up to 20 ms of jitter, which never
        // takes anything away.
        proxy.set(
            "slow",
            Selector::default(),
            Dir::Forward,
            Faults { delay_ms: 10, jitter_ms: 20, ..Faults::default() },
        );
        for _ in 0..10 {
            let rtt = round_trip(&mut c).await.unwrap();
            assert!(rtt >= Duration::from_millis(60) && rtt < Duration::from_millis(110), "{rtt:?}");
        }
        proxy.clear_layer("slow");
        let rtt = round_trip(&mut c).await.unwrap();
        assert!(rtt >= Duration::from_millis(50) && rtt < Duration::from_millis(60), "the base layer stays: {rtt:?}");
        proxy.clear();
        let after = round_trip(&mut c).await.unwrap();
        assert!(after < Duration::from_millis(10), "cleared, a round trip still took {after:?}");
    }

    /// A reset aborts open connections with RST (the client sees a reset, not a clean close),
    /// and with `refuse` new ones too, until cleared.
    #[tokio::test]
    async fn resets_abort_and_refuse() {
        let proxy = FaultProxy::new(2);
        let up = echo().await;
        let at = proxy.route("echo", "127.0.0.1:0".parse().unwrap(), up).await.unwrap();
        let mut c = TcpStream::connect(at).await.unwrap();
        round_trip(&mut c).await.unwrap();
        let sel = Selector { from: None, to: Some("echo".into()) };
        proxy.reset("reset", sel, true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = round_trip(&mut c).await.expect_err("the connection was reset");
        assert!(
            matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
            "a reset, not {err:?}"
        );
        // Refused while the order stands: accepted by the kernel, then reset at once.
        let mut again = TcpStream::connect(at).await.unwrap();
        assert!(round_trip(&mut again).await.is_err(), "a new connection was served during the refusal");
        proxy.clear_layer("reset");
        let mut healed = TcpStream::connect(at).await.unwrap();
        round_trip(&mut healed).await.unwrap();
    }

    /// A one-way blackhole: bytes to the destination vanish, the connection stays open, and
    /// nothing is refused; lifting it lets new bytes through.
    #[tokio::test]
    async fn a_blackhole_drops_one_direction_silently() {
        let proxy = FaultProxy::new(3);
        let mut c = proxied(&proxy).await;
        round_trip(&mut c).await.unwrap();
        let sel = Selector { from: Some(CLIENT.into()), to: Some("echo".into()) };
        proxy.set("cut", sel, Dir::Forward, Faults { blackhole: true, ..Faults::default() });
        let lost = tokio::time::timeout(Duration::from_millis(300), round_trip(&mut c)).await;
        assert!(lost.is_err(), "an answer came through a blackhole");
        proxy.clear_layer("cut");
        // The lost ping never arrives; a new one does, on the same connection.
        round_trip(&mut c).await.unwrap();
        // Links are told apart by source: a rule for another source leaves this one alone.
        let other = Selector { from: Some("n9".into()), to: None };
        proxy.set("other", other, Dir::Forward, Faults { blackhole: true, ..Faults::default() });
        round_trip(&mut c).await.unwrap();
    }

    /// A silent direction past its timeout resets the connection.
    #[tokio::test]
    async fn a_timeout_resets_a_silent_link() {
        let proxy = FaultProxy::new(4);
        let mut c = proxied(&proxy).await;
        proxy.set("t", Selector::default(), Dir::Forward, Faults { timeout_ms: Some(100), ..Faults::default() });
        round_trip(&mut c).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(round_trip(&mut c).await.is_err(), "the silent link was not closed");
    }

    /// Slicing delivers every byte, in order, in small writes.
    #[tokio::test]
    async fn slicing_delivers_everything_in_order() {
        let proxy = FaultProxy::new(5);
        let mut c = proxied(&proxy).await;
        let slices = Faults { slice_bytes: Some(3), slice_delay_ms: 1, ..Faults::default() };
        proxy.set("s", Selector::default(), Dir::Backward, slices);
        let msg: Vec<u8> = (0..200u8).collect();
        c.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
}
