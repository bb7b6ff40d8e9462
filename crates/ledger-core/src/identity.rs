//! Node identities: the id a node keeps for its data directory's life, and what the cluster
//! records about it (addresses, region, zone) in every shard's membership.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node id: stable for the life of a node's data directory, never reused after a wipe.
pub type NodeId = u64;

/// What the cluster knows about a node. Recorded in every shard's membership (so in the Raft
/// log and snapshots): changing its fields changes the on-disk format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` of the node's gRPC listener (Raft and the node API).
    pub addr: String,
    /// The region the node runs in.
    pub region: String,
    /// The zone inside the region.
    pub zone: String,
    /// `host:port` where the node serves the public wallet API, as clients reach it; empty if
    /// it serves none. What a `NOT_LEADER` answer names, so a client can go to the leader.
    pub api_addr: String,
}

impl NodeInfo {
    /// A node without a wallet API.
    pub fn new(addr: impl Into<String>, region: impl Into<String>, zone: impl Into<String>) -> Self {
        Self { addr: addr.into(), region: region.into(), zone: zone.into(), api_addr: String::new() }
    }

    /// The wallet API address, if the node serves one.
    pub fn api(&self) -> Option<&str> {
        Some(self.api_addr.as_str()).filter(|a| !a.is_empty())
    }
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}/{}", self.addr, self.region, self.zone)
    }
}
