//! The node API's types: what a node answers (statuses, balances, verification reports,
//! membership views) and why it refuses (`LedgerError`). They cross the wire (postcard, see
//! `net::wire`), so the transport, the client and the runtime all depend on this module and it
//! depends on none of them.

use std::collections::BTreeMap;

use ledger_core::{Balance, ClusterTime, NodeId, NodeInfo, Rejection, ShardMap};
use serde::{Deserialize, Serialize};
use serde_repr::{Deserialize_repr, Serialize_repr};
use thiserror::Error;

/// Most commands one Raft entry carries (and one `SubmitBatch` call).
pub const BATCH_COMMANDS_MAX: usize = 1024;

/// Why a request to a node failed. Every variant leaves the ledger unchanged, except
/// [`LedgerError::Timeout`] and [`LedgerError::Unavailable`] during a write, whose outcome is
/// unknown: retry with the same transaction id to learn it.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the format tests (`crates/raft-ledger/src/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
pub enum LedgerError {
    /// This node does not lead the shard. Retry at the leader, if one is known.
    #[error("node is not the leader of shard {shard}{}", leader_addr.as_ref().map(|a| format!("; leader is at {a}")).unwrap_or_default())]
    NotLeader {
        /// The shard.
        shard: u32,
        /// The leader's id, if known.
        leader: Option<NodeId>,
        /// The leader's node address, if known.
        leader_addr: Option<String>,
        /// The leader's wallet API address, if known and it serves one.
        leader_api: Option<String>,
    },
    /// The node hosts no such shard.
    #[error("unknown shard {0}")]
    UnknownShard(u32),
    /// The command's player lives in another shard.
    #[error("the command's player lives in shard {expected}, not {requested}")]
    WrongShard {
        /// Where the player lives.
        expected: u32,
        /// The shard asked for.
        requested: u32,
    },
    /// The request names no shard and no player to route by.
    #[error("no shard given and the command names no player")]
    NoShard,
    /// The command is invalid on its own. Nothing was proposed.
    #[error("invalid command: {0}")]
    Invalid(Rejection),
    /// The deadline passed. The command may still apply; retry with the same id.
    #[error("deadline exceeded; the command may still apply, so retry with the same transaction id")]
    Timeout,
    /// The shard cannot serve right now (no quorum, shutting down, storage failure).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A replica change was refused as unsafe or contradictory. Nothing changed.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The command's player id names a region that is home to no shard. Nothing was proposed.
    #[error("{0}")]
    UnknownRegion(String),
}

impl LedgerError {
    /// This node does not lead `shard`; `leader` is the one it knows of, with its info.
    pub(crate) fn not_leader(shard: u32, leader: Option<NodeId>, info: Option<&NodeInfo>) -> Self {
        LedgerError::NotLeader {
            shard,
            leader,
            leader_addr: info.map(|n| n.addr.clone()),
            leader_api: info.and_then(|n| n.api().map(str::to_string)),
        }
    }
}

impl From<ledger_core::UnknownRegion> for LedgerError {
    fn from(e: ledger_core::UnknownRegion) -> Self {
        LedgerError::UnknownRegion(e.to_string())
    }
}

/// How fresh a balance read must be.
///
/// The discriminant is the encoding in the node API (one byte): never change or reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum ReadConsistency {
    /// Served by the leader after confirming leadership with a quorum (read-index).
    Linearizable = 0,
    /// Served from this replica's state as it is; reports how far it has applied.
    Local = 1,
}

/// A balance as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceView {
    /// The shard read.
    pub shard: u32,
    /// The balance, or `None` if the wallet does not exist.
    pub balance: Option<Balance>,
    /// The Raft log index the state reflects.
    pub applied_index: Option<u64>,
    /// Entries in the shard's journal at that point.
    pub journal_len: u64,
    /// Cluster time of the last applied command.
    pub last_at: ClusterTime,
    /// Which consistency was provided.
    pub consistency: ReadConsistency,
    /// An upper bound on how stale the state read is, in ms (see [`LedgerNode::staleness`]):
    /// 0 for a linearizable read, `None` when this replica cannot bound it (it has not heard
    /// from a leader whose commit point it has applied).
    pub staleness_ms: Option<u64>,
}

/// Whether a replica can get a write committed now: what its health check reports.
///
/// The discriminant is the encoding in the node API (one byte): never change or reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum CommitHealth {
    /// It leads, and a quorum acknowledged it within the lease.
    Leader = 0,
    /// It follows a leader that reached it, and had a quorum behind it, within the lease.
    Follower = 1,
    /// No leader has reached it within the lease (dead, partitioned away, or an election).
    NoLeader = 2,
    /// Its leader (itself, or the one it follows) has not heard from a quorum within the lease.
    NoQuorum = 3,
}

impl CommitHealth {
    /// True when a write sent to this replica now can be committed (at the leader directly,
    /// or forwarded to it).
    pub fn serving(self) -> bool {
        matches!(self, CommitHealth::Leader | CommitHealth::Follower)
    }

    /// For operators.
    pub fn describe(self) -> &'static str {
        match self {
            CommitHealth::Leader => "leads with a quorum",
            CommitHealth::Follower => "follows a leader with a quorum",
            CommitHealth::NoLeader => "no leader heard from",
            CommitHealth::NoQuorum => "leader without a quorum",
        }
    }
}

/// A replica's Raft role, as the node API reports it.
///
/// The discriminant is the encoding in the node API (one byte): never change or reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum ReplicaRole {
    /// Leads the shard.
    Leader = 0,
    /// Votes and follows a leader.
    Follower = 1,
    /// Campaigning to lead.
    Candidate = 2,
    /// Receives the log without voting.
    Learner = 3,
    /// Its Raft group has stopped.
    Shutdown = 4,
}

impl std::fmt::Display for ReplicaRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Padding applies, so the role lines up in operators' tables.
        f.pad(match self {
            ReplicaRole::Leader => "Leader",
            ReplicaRole::Follower => "Follower",
            ReplicaRole::Candidate => "Candidate",
            ReplicaRole::Learner => "Learner",
            ReplicaRole::Shutdown => "Shutdown",
        })
    }
}

/// Who leads one shard, as a replica of it sees it: what a geo-router routes by. Not sent on
/// the node port (the wallet API's `Routing` service carries it as protobuf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLeader {
    /// The shard.
    pub shard: u32,
    /// The replica's current term.
    pub term: u64,
    /// The leader of that term and its addresses, if the replica knows one.
    pub leader: Option<(NodeId, NodeInfo)>,
    /// The shard's voters and their addresses.
    pub voters: Vec<(NodeId, NodeInfo)>,
}

/// One shard replica's state, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// The shard.
    pub shard: u32,
    /// Its Raft role.
    pub state: ReplicaRole,
    /// Current term.
    pub term: u64,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Commit index.
    pub committed: Option<u64>,
    /// Apply index.
    pub applied: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot: Option<u64>,
    /// Log entries up to this index are purged (covered by the snapshot).
    pub purged: Option<u64>,
    /// Entries in the journal.
    pub journal_len: u64,
    /// Hash of the last journal entry, hex.
    pub head_hash: String,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members.
    pub learners: Vec<NodeId>,
    /// The region of the leader this replica knows of.
    pub leader_region: Option<String>,
    /// The shard's home region, if the topology gives one.
    pub home_region: Option<String>,
    /// Leader changes this replica has seen since it started.
    pub leader_changes: u64,
    /// Whether a write sent here now can commit (see [`CommitHealth`]).
    pub health: CommitHealth,
    /// Milliseconds since this replica last heard its leader (on the leader: since a quorum
    /// acknowledged it); `None` if never.
    pub leader_heard_ms: Option<u64>,
}

/// A node's state, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node_id: NodeId,
    /// Address, region, zone.
    pub info: NodeInfo,
    /// Shards in the cluster.
    pub shard_count: u32,
    /// Each shard's home region; with [`NodeStatus::shard_count`] this is the cluster's
    /// [`ShardMap`], which clients route by.
    pub home_regions: BTreeMap<u32, String>,
    /// Each hosted replica, by shard id. A shard whose membership does not name this node is
    /// absent: with voter subsets a node hosts only some shards.
    pub shards: Vec<ShardStatus>,
}

impl NodeStatus {
    /// Which shard each player lives in, as this node routes.
    pub fn shard_map(&self) -> ShardMap {
        ShardMap::new(self.shard_count, &self.home_regions)
    }

    /// This node's replica of `shard`, if it hosts one.
    pub fn shard(&self, shard: u32) -> Option<&ShardStatus> {
        self.shards.iter().find(|s| s.shard == shard)
    }
}

/// The result of verifying one shard's journal on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The shard.
    pub shard: u32,
    /// Entries verified.
    pub entries: u64,
    /// Head hash, hex.
    pub head_hash: String,
    /// The first problem found, if any.
    pub error: Option<String>,
    /// Whether replaying the journal gives exactly the ledger's current balances.
    pub balances_match: bool,
}

impl VerifyReport {
    /// True when the chain verified and matched the live state.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.balances_match
    }
}

/// A change to one shard's replicas.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the format tests (`crates/raft-ledger/src/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add `node` as a learner, wait until it has caught up, then make it a voter.
    AddVoter {
        /// The new node's id: never one a wiped node had.
        node: NodeId,
        /// Where it listens, and its region and zone.
        info: NodeInfo,
    },
    /// Add `node` as a learner only: it receives the log but does not vote.
    AddLearner {
        /// The new node's id.
        node: NodeId,
        /// Where it listens, and its region and zone.
        info: NodeInfo,
    },
    /// Take `node` out of the shard, as a voter and as a learner.
    Remove {
        /// The node to remove.
        node: NodeId,
    },
    /// Bring `node` up to date as a learner, then swap it for voter `old` in one change.
    Replace {
        /// The voter leaving (dead, or moving away).
        old: NodeId,
        /// The voter arriving.
        node: NodeId,
        /// Where it listens, and its region and zone.
        info: NodeInfo,
    },
}

/// A shard's replicas after a change, as its leader sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipView {
    /// The shard.
    pub shard: u32,
    /// The node that made the change.
    pub leader: NodeId,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members.
    pub learners: Vec<NodeId>,
    /// Log index of the membership now in effect.
    pub log_index: Option<u64>,
}
