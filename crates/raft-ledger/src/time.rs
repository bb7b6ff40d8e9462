//! Cluster time, and the clocks a node may read it from.
//!
//! The state machine never reads a clock. The leader stamps a [`ClusterTime`] into every proposal
//! from an injected [`Clock`], and the state machine makes time monotonic by never letting it go
//! backwards (a new leader's clock may be behind the old one's).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as agreed by the cluster.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterTime(u64);

impl ClusterTime {
    /// The instant `ms` milliseconds after the Unix epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + ms`, saturating at the far future rather than wrapping into the past.
    pub fn plus_millis(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// `self - ms`, saturating at the epoch.
    pub fn minus_millis(self, ms: u64) -> Self {
        Self(self.0.saturating_sub(ms))
    }
}

impl fmt::Display for ClusterTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

impl fmt::Debug for ClusterTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

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
        ClusterTime(u64::try_from(ms).unwrap_or(u64::MAX))
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
