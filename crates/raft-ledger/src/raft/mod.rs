//! How the ledger plugs into openraft: the type configuration, what a log entry carries, and
//! Raft timing derived from the network's round-trip time.

pub(crate) mod runtime;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use ledger_core::{ClusterTime, Command, Outcome};

pub use runtime::{LedgerRuntime, seed_thread_rng};

pub use ledger_core::{NodeId, NodeInfo};

/// What one Raft log entry asks the state machine to do.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the format tests (`crates/raft-ledger/src/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Apply client commands, in order. Commands that arrive together ride one log entry: one
    /// replication round, one log append and one fsync per batch instead of per command. Each
    /// command still gets its own outcome and its own ledger entry.
    Commands(Vec<Command>),
    /// Let cluster time pass: expire holds and forget old ids. The leader proposes one when a
    /// hold is due, so holds expire even when no command arrives.
    Tick,
}

/// A proposal: a request and the cluster time the leader stamped on it.
///
/// The leader reads its clock once, here; followers never read theirs. The state machine makes
/// the time monotonic, so a new leader with a slow clock cannot move time backwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// When the leader proposed it.
    pub at: ClusterTime,
    /// What to do.
    pub request: Request,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.request {
            Request::Commands(c) => write!(f, "{} commands at {}", c.len(), self.at),
            Request::Tick => write!(f, "tick at {}", self.at),
        }
    }
}

/// What applying a proposal produced.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the format tests (`crates/raft-ledger/src/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The commands' outcomes, in the order of the request.
    Outcomes(Vec<Outcome>),
    /// A tick was applied.
    Ticked,
}

openraft::declare_raft_types!(
    /// The openraft type configuration of a ledger shard.
    pub TypeConfig:
        D = Proposal,
        R = Reply,
        NodeId = NodeId,
        Node = NodeInfo,
        // Classic Raft: one leader per term. The simulator checks exactly that invariant.
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
        AsyncRuntime = LedgerRuntime,
);

/// A Raft log id.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A Raft log entry.
pub type RaftEntry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
/// A Raft vote.
pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
/// A membership as stored with its log id.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;

/// Raft settings for a cluster whose slowest quorum link has the given round-trip time.
///
/// LAN defaults (150–300 ms elections, 50 ms heartbeats) would make cross-region clusters
/// elect constantly. Heartbeats go every max(100 ms, 2 RTT). openraft gives each replication
/// RPC one heartbeat interval to answer, which is why the floor is 100 ms rather than 50: a
/// follower busy applying a large batch must not be declared failed.
///
/// How long a dead leader goes unnoticed: a follower keeps the leader's lease for
/// `election_timeout_max` after the last heartbeat, and only then starts its election timer,
/// a draw from `[min, max]`; so it campaigns `min + max` to `2 max` after the leader died, and
/// the election takes two more round trips (pre-vote, vote). `base = max(2 heartbeats + 1 RTT,
/// 250 ms)`, so at least three heartbeats in a row must be lost before anyone campaigns.
///
/// Survivors that campaign within a round trip of each other split the vote and both wait
/// another timeout, which is what made failover slow and erratic. So a replica with an
/// election slot (its place in the shard's succession, from
/// [`ledger_core::placement::Topology::election_slots`]) does not wait for this timer: the
/// node's succession loop asks for an election as soon as the lease has run out (at once in a
/// new cluster, where no lease runs), slot 0 first and each next slot two heartbeats later.
/// For that, every voter has the same lease (openraft makes the lease `election_timeout_max`,
/// and a voter refuses votes while it runs), so the first successor is not held back by the
/// next one's, and openraft's own timer (`[base, base + 1 heartbeat]` after the lease, a
/// jitter of two round trips or more) is only the fallback. At 50 ms RTT the first successor
/// asks 350 ms after the last heartbeat.
/// Pre-vote keeps one stalled follower from deposing a leader the others still hear.
/// A snapshot is taken every `snapshot_every` applied entries, keeping `logs_kept` entries.
pub fn raft_config(cluster_name: &str, rtt_ms: u64, snapshot_every: u64, logs_kept: u64) -> Arc<openraft::Config> {
    let heartbeat_ms = (2 * rtt_ms).max(100);
    let base_ms = (2 * heartbeat_ms + rtt_ms).max(250);
    // The same for every voter, slot or not: see above.
    let (election_min_ms, election_max_ms) = (base_ms, base_ms + heartbeat_ms);
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: election_min_ms,
        election_timeout_max: election_max_ms,
        // Followers that fall this far behind get a snapshot instead of a log replay.
        replication_lag_threshold: 2 * snapshot_every,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        // Keep some applied entries so a briefly lagging follower catches up from the log.
        max_in_snapshot_log_to_keep: logs_kept,
        // openraft purges only once this many entries can go; never wait longer than one snapshot.
        purge_batch_size: snapshot_every.clamp(1, 512),
        // An entry is a batch of up to 1024 commands, so a few hundred entries already make a
        // large message; a bounded payload keeps a loaded follower inside the RPC deadline.
        max_payload_entries: 256,
        // After a failed replication RPC openraft backs off before retrying. Its default starts at
        // 200 ms, which turns one slow reply into a visible stall; start small instead, and still
        // cap the retry rate for a peer that is really down.
        backoff: "10ms 20ms ..500ms".to_string(),
        install_snapshot_timeout: 60_000,
        enable_pre_vote: Some(true),
        // A restarted leader must win an election again. A leader may count an entry committed
        // on two followers' fsyncs before its own fsync finishes; if it then crashes, it comes
        // back without that entry, and resuming leadership without a vote would let it serve
        // (and overwrite) around a hole. An election's log check refuses such a candidate.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Arc::new(config.validate().expect("derived raft config is valid"))
}

/// How much later each next slot of a shard's succession asks for an election than the slot
/// before it: two heartbeats, at least four round trips, so the slot before has had time to
/// win and be heard. The succession loop and `walletd placement` both take it from here.
pub fn succession_stagger(config: &openraft::Config) -> std::time::Duration {
    std::time::Duration::from_millis(2 * config.heartbeat_interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_timing_gives_every_voter_one_lease() {
        let t = raft_config("t", 50, 100, 10);
        // One lease for the whole succession: the first successor waits for no one else's.
        assert_eq!((t.heartbeat_interval, t.election_timeout_min, t.election_timeout_max), (100, 250, 350));
        let slow = raft_config("t", 150, 100, 10);
        assert_eq!((slow.heartbeat_interval, slow.election_timeout_min), (300, 750));
    }
}
