//! The clocks a node may read cluster time from: the wall clock in production, the async
//! runtime's clock under the simulator. The state machine itself never reads one; the leader
//! stamps what its clock says into each proposal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger_core::ClusterTime;

/// A source of cluster time, injected into a node so the simulator can control it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> ClusterTime;
}

/// The operating system's wall clock. Used by `walletd` in production.
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> ClusterTime {
        // This is the one place a wall clock is read. A clock before 1970 is a broken host; the
        // ledger still stays monotonic because apply never lets time go backwards.
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis();
        ClusterTime::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// Time from the async runtime's clock, counted from a fixed epoch.
///
/// Under turmoil the runtime's clock is simulated, so this gives reproducible timestamps.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeClock {
    epoch: ClusterTime,
    start: tokio::time::Instant,
}

impl RuntimeClock {
    /// A clock that reads `epoch` now and advances with the runtime's clock.
    pub fn starting_at(epoch: ClusterTime) -> Self {
        Self { epoch, start: tokio::time::Instant::now() }
    }
}

impl Clock for RuntimeClock {
    fn now(&self) -> ClusterTime {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.epoch.plus_millis(elapsed)
    }
}

/// The wall clock shifted by a signed offset that is read from a file, for chaos runs: a
/// node whose clock is skewed, as a host's is after a bad NTP step. The file holds the offset
/// in milliseconds as a signed integer (`-120000`, `0`, `3600000`); it is re-read every 100 ms,
/// so a runner can skew and heal a running node. A missing or unreadable file means no offset.
/// `walletd start` uses it only when `WALLETD_CLOCK_OFFSET_FILE` names a file.
#[derive(Debug, Clone)]
pub struct OffsetClock {
    offset_ms: Arc<AtomicI64>,
}

impl OffsetClock {
    /// The environment variable naming the offset file, for the process that runs a node
    /// (`walletd start`) and the one that skews it (the chaos runner).
    pub const ENV: &'static str = "WALLETD_CLOCK_OFFSET_FILE";

    /// A clock that follows the offset in `path`. Spawns the re-reading task on the current
    /// tokio runtime; it ends when the last clone of the clock is dropped.
    pub fn watching(path: PathBuf) -> Self {
        let offset_ms = Arc::new(AtomicI64::new(read_offset(&path)));
        let weak = Arc::downgrade(&offset_ms);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(cell) = weak.upgrade() else { return };
                let now = read_offset(&path);
                if last.unwrap_or(0) != now {
                    if now == 0 {
                        tracing::info!("this node's clock is no longer offset");
                    } else {
                        tracing::warn!(offset_ms = now, "this node's clock is offset (WALLETD_CLOCK_OFFSET_FILE)");
                    }
                }
                last = Some(now);
                cell.store(now, Ordering::Relaxed);
            }
        });
        Self { offset_ms }
    }
}

fn read_offset(path: &Path) -> i64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

impl Clock for OffsetClock {
    fn now(&self) -> ClusterTime {
        let wall = WallClock.now().as_millis();
        let offset = self.offset_ms.load(Ordering::Relaxed);
        ClusterTime::from_millis(wall.saturating_add_signed(offset))
    }
}
