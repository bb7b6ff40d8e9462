//! The clocks a node may read cluster time from: the wall clock in production, the async
//! runtime's clock under the simulator. The state machine itself never reads one; the leader
//! stamps what its clock says into each proposal.

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
