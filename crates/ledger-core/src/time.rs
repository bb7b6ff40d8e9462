//! Cluster time: milliseconds since the Unix epoch, as the cluster agrees on them.
//!
//! The state machine never reads a clock. The leader stamps a [`ClusterTime`] into every proposal
//! (from a clock the node shell injects), and the state machine makes time monotonic by never
//! letting it go backwards (a new leader's clock may be behind the old one's).

use std::fmt;

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
