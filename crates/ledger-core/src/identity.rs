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

/// What the member token is a MAC of: a fixed label, versioned so the derivation can change.
const MEMBER_TOKEN_LABEL: &[u8] = b"walletd cluster member v1";

/// The token that proves membership of a cluster: `hex(HMAC-SHA256(secret, label))`. Nodes take
/// it in `x-cluster-auth` on their node port and on the routing feed, so the secret itself never
/// crosses the network. Pure, so the node runtime and the geo-router derive it the same way.
pub fn member_token(secret: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(MEMBER_TOKEN_LABEL);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}
