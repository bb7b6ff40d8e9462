//! A ledger node: many shard replicas in one process, sharing one write-ahead log, one set of
//! peer connections and one gRPC listener.
//!
//! Everything the node touches outside memory comes from its [`NodeEnv`]: the disk, the
//! network, the clock. `walletd` passes the real ones; the simulator passes turmoil's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::Instant as _;
use openraft::rt::WatchReceiver;
use openraft::{RaftMetrics, ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::account::AccountRef;
use crate::command::Command;
use crate::entry::{Entry, Hash};
use crate::ids::TxId;
use crate::ledger::{LedgerConfig, Recall};
use crate::money::Balance;
use crate::net::env::{Listener, Net};
use crate::net::member::{ClusterKey, MemberCheck};
use crate::net::peer::{PeerRouter, ShardNetworkFactory};
use crate::outcome::{Outcome, Rejection};
use crate::raft::{NodeId, NodeInfo, Proposal, Reply, Request, TypeConfig, raft_config};
use crate::shard::{ShardId, ShardMap};
use crate::store::LogStore;
use crate::store::state_machine::{LedgerStateMachine, ShardCell, StoreError};
use crate::store::vfs::{StdFs, Vfs};
use crate::store::wal::{IoMode, Wal, WalError};
use crate::time::{Clock, ClusterTime, WallClock};
use crate::verify::Verifier;

/// The openraft handle of one shard replica.
pub type LedgerRaft = openraft::Raft<TypeConfig, LedgerStateMachine>;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id. Never reuse the id of a wiped node.
    pub node_id: NodeId,
    /// Address, region and zone, as peers see them.
    pub info: NodeInfo,
    /// Where the node keeps its log, journals and snapshots.
    pub data_dir: PathBuf,
    /// Shards in the cluster. The node runs a Raft group for each, but holds data only for
    /// those whose membership includes it.
    pub shards: u32,
    /// A name shared by the cluster's nodes; a node refuses a data directory of another cluster.
    pub cluster_name: String,
    /// Round-trip time of the slowest link in a quorum, in ms; Raft timing derives from it.
    pub rtt_ms: u64,
    /// Settings every replica of a shard must share.
    pub ledger: LedgerConfig,
    /// How often each shard checks whether a withdrawal hold is due to expire.
    pub tick_interval: Duration,
    /// A snapshot is taken every this many applied log entries.
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, so briefly lagging replicas catch up from the log.
    pub logs_kept_after_snapshot: u64,
    /// Each shard's home region (from the topology's placement). A leader outside its shard's
    /// home hands leadership to a healthy, caught-up voter there. Empty: leaders stay put.
    pub home_regions: BTreeMap<u32, String>,
    /// This node's place in each shard's succession (from the topology): slot 0 campaigns
    /// first when the leader is lost. A shard without a slot leaves the order to chance.
    pub election_slots: BTreeMap<u32, u32>,
}

impl NodeConfig {
    /// A config with defaults for everything but identity and placement.
    pub fn new(node_id: NodeId, info: NodeInfo, data_dir: impl Into<PathBuf>, shards: u32) -> Self {
        Self {
            node_id,
            info,
            data_dir: data_dir.into(),
            shards,
            cluster_name: "casino-ledger".to_string(),
            rtt_ms: 1,
            ledger: LedgerConfig::default(),
            tick_interval: Duration::from_millis(500),
            snapshot_every: 10_000,
            logs_kept_after_snapshot: 2_000,
            home_regions: BTreeMap::new(),
            election_slots: BTreeMap::new(),
        }
    }
}

/// The outside world of a node.
#[derive(Clone)]
pub struct NodeEnv {
    /// The disk.
    pub vfs: Arc<dyn Vfs>,
    /// The network.
    pub net: Net,
    /// Where cluster time comes from (read by the leader only).
    pub clock: Arc<dyn Clock>,
    /// How the write-ahead log writer runs.
    pub io: IoMode,
    /// The cluster's key: presented on every call to a peer, demanded of every caller.
    pub cluster_key: ClusterKey,
}

impl NodeEnv {
    /// The real disk, TCP, the wall clock, and a writer thread.
    pub fn production(cluster_key: ClusterKey) -> Self {
        Self { vfs: Arc::new(StdFs), net: Net::Tcp, clock: Arc::new(WallClock), io: IoMode::Thread, cluster_key }
    }

    /// Inside a turmoil simulation: its disk and network, cluster time counted by the
    /// simulation from `epoch`, and the log writer as a task on the host's runtime.
    #[cfg(feature = "turmoil")]
    pub fn turmoil(epoch: crate::time::ClusterTime, cluster_key: ClusterKey) -> Self {
        Self {
            vfs: Arc::new(crate::store::vfs::sim::TurmoilFs),
            net: Net::Turmoil,
            clock: Arc::new(crate::time::RuntimeClock::starting_at(epoch)),
            io: IoMode::Task,
            cluster_key,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The write-ahead log could not be opened.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A shard's journal or snapshot could not be opened.
    #[error("shard {shard}: {source}")]
    Shard {
        /// The shard.
        shard: u32,
        /// Why.
        source: StoreError,
    },
    /// The data directory belongs to another node or cluster.
    #[error("data directory {dir} belongs to {found}, not {expected}")]
    WrongIdentity {
        /// The directory.
        dir: String,
        /// What it says.
        found: String,
        /// What this node is.
        expected: String,
    },
    /// The data directory was written in another on-disk format.
    #[error(
        "data directory {dir} is in data format {found}; this walletd reads format {expected}. Start the walletd \
         version that wrote it, or wipe the directory and add the node back under a new node id"
    )]
    WrongFormat {
        /// The directory.
        dir: String,
        /// Its format.
        found: u32,
        /// This build's format.
        expected: u32,
    },
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The disk failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Server(String),
}

/// Why a request to a node failed. Every variant leaves the ledger unchanged, except
/// [`LedgerError::Timeout`] and [`LedgerError::Unavailable`] during a write, whose outcome is
/// unknown: retry with the same transaction id to learn it.
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

impl From<crate::shard::UnknownRegion> for LedgerError {
    fn from(e: crate::shard::UnknownRegion) -> Self {
        LedgerError::UnknownRegion(e.to_string())
    }
}

/// How fresh a balance read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// Served by the leader after confirming leadership with a quorum (read-index).
    Linearizable,
    /// Served from this replica's state as it is; reports how far it has applied.
    Local,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitHealth {
    /// It leads, and a quorum acknowledged it within the lease.
    Leader,
    /// It follows a leader that reached it, and had a quorum behind it, within the lease.
    Follower,
    /// No leader has reached it within the lease (dead, partitioned away, or an election).
    NoLeader,
    /// Its leader (itself, or the one it follows) has not heard from a quorum within the lease.
    NoQuorum,
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

/// What a replica knows about its leader and quorum, as ages (time since).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HealthView {
    /// This replica leads the shard.
    pub(crate) leads: bool,
    /// Leading: since a quorum last acknowledged it.
    pub(crate) quorum_acked: Option<Duration>,
    /// Following: since the leader's last accepted AppendEntries.
    pub(crate) leader_contact: Option<Duration>,
    /// Following: since the leader last had a quorum, as it reported.
    pub(crate) leader_quorum: Option<Duration>,
}

impl HealthView {
    /// Since the leader was last heard: a quorum's ack on the leader, the leader's message here.
    fn leader_heard(&self) -> Option<Duration> {
        if self.leads { self.quorum_acked } else { self.leader_contact }
    }
}

/// The health rule: a replica is serving when the leader it would send a write to (itself, or
/// the one it follows) is alive and had a quorum within `lease`. The lease is the shard's
/// `election_timeout_max`: how long followers keep believing in a leader before they elect
/// another, so a replica never reports serving for a leader its peers have given up on.
pub(crate) fn commit_health(view: HealthView, lease: Duration) -> CommitHealth {
    let fresh = |age: Option<Duration>| age.is_some_and(|a| a <= lease);
    if view.leads {
        return if fresh(view.quorum_acked) { CommitHealth::Leader } else { CommitHealth::NoQuorum };
    }
    if !fresh(view.leader_contact) {
        return CommitHealth::NoLeader;
    }
    if fresh(view.leader_quorum) { CommitHealth::Follower } else { CommitHealth::NoQuorum }
}

/// One shard replica's state, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// The shard.
    pub shard: u32,
    /// Leader, Follower, Candidate, Learner or Shutdown.
    pub state: String,
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

/// Entries `verify` reads at a time.
const VERIFY_CHUNK_ENTRIES: u64 = 4096;

/// Most commands one Raft entry carries.
pub const BATCH_COMMANDS_MAX: usize = 1024;
/// Commands waiting to be proposed per shard before submits are refused as overload.
const QUEUE_COMMANDS_MAX: usize = 65_536;
/// Batches proposed but not yet applied, per shard. Bounds memory and keeps latency in check.
const BATCHES_IN_FLIGHT_MAX: usize = 64;

type Waiter = oneshot::Sender<Result<Outcome, LedgerError>>;

pub(crate) struct Shard {
    pub(crate) id: ShardId,
    pub(crate) raft: LedgerRaft,
    pub(crate) cell: Arc<ShardCell>,
    pub(crate) dir: PathBuf,
    /// One snapshot received at a time per shard: they share a receive file.
    pub(crate) snapshot_lock: tokio::sync::Mutex<()>,
    /// Commands waiting for the proposer, which batches them into log entries.
    queue: mpsc::Sender<(Command, Waiter)>,
    /// Times this replica has seen the shard's leader change since it started.
    leader_changes: std::sync::atomic::AtomicU64,
    /// Recent AppendEntries this replica accepted from a leader: when each arrived and the
    /// commit index it carried, commit indexes ascending. What bounds a local read's staleness.
    leader_contact: std::sync::Mutex<std::collections::VecDeque<(tokio::time::Instant, u64)>>,
    /// The latest moment this replica knows its leader had heard from a quorum (from the
    /// quorum age AppendEntries carry). What a follower's health rests on.
    leader_quorum_at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Leader contacts kept per shard. A replica that lags further behind than this many distinct
/// commit points cannot bound its staleness, and a bounded read goes to the leader instead.
const LEADER_CONTACTS_MAX: usize = 64;

impl Shard {
    /// Notes that an AppendEntries from the leader, received at `at` and carrying commit index
    /// `commit`, was accepted.
    pub(crate) fn heard_from_leader(&self, at: tokio::time::Instant, commit: u64, quorum_age: Option<Duration>) {
        if let Some(at_quorum) = quorum_age.and_then(|age| at.checked_sub(age)) {
            let mut known = self.leader_quorum_at.lock().expect("leader quorum lock");
            *known = Some(known.map_or(at_quorum, |k| k.max(at_quorum)));
        }
        let mut seen = self.leader_contact.lock().expect("leader contact lock");
        match seen.back_mut() {
            // Same commit point, later message: keep only the later one.
            Some((t, c)) if *c == commit => *t = (*t).max(at),
            // An older commit point arriving late (calls can overtake each other) adds nothing.
            Some((_, c)) if *c > commit => {}
            _ => {
                seen.push_back((at, commit));
                if seen.len() > LEADER_CONTACTS_MAX {
                    seen.pop_front();
                }
            }
        }
    }
}

pub(crate) struct NodeInner {
    pub(crate) config: NodeConfig,
    map: ShardMap,
    pub(crate) env: NodeEnv,
    wal: Arc<Wal>,
    shards: RwLock<BTreeMap<u32, Arc<Shard>>>,
    stop: watch::Sender<bool>,
}

impl NodeInner {
    pub(crate) fn shard(&self, shard: u32) -> Option<Arc<Shard>> {
        self.shards.read().expect("shards lock").get(&shard).cloned()
    }
}

/// A running ledger node. Cheap to clone.
#[derive(Clone)]
pub struct LedgerNode {
    pub(crate) inner: Arc<NodeInner>,
}

/// The on-disk format of a data directory (WAL records, snapshots, journals, and the node
/// info inside memberships). A directory written in another format is refused at start rather
/// than misread. 2: node info carries the wallet API address, WAL entry records lead with their
/// last index, snapshots record the journal's byte length, and journals have an index file.
const DATA_FORMAT: u32 = 2;

fn data_format_unversioned() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Identity {
    /// [`DATA_FORMAT`] of the files in the directory (absent in format 1).
    #[serde(default = "data_format_unversioned")]
    format: u32,
    node_id: NodeId,
    cluster_name: String,
    shards: u32,
    /// Each shard's home region: with the shard count, where every player's wallets live.
    /// Starting under another map would route players to shards that do not hold them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    home_regions: BTreeMap<u32, String>,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} of cluster \"{}\" with {} shards", self.node_id, self.cluster_name, self.shards)?;
        if !self.home_regions.is_empty() {
            let homes: Vec<String> = self.home_regions.iter().map(|(s, r)| format!("{s}:{r}")).collect();
            write!(f, " homed {}", homes.join(" "))?;
        }
        Ok(())
    }
}

impl LedgerNode {
    /// Opens the node's data directory (recovering its log, journals and snapshots) and starts a
    /// Raft group for each shard. The node serves nothing until [`LedgerNode::serve`].
    pub async fn start(config: NodeConfig, env: NodeEnv) -> Result<Self, NodeError> {
        let vfs = env.vfs.clone();
        vfs.create_dir_all(&config.data_dir)?;
        check_identity(vfs.as_ref(), &config)?;
        let (wal, report) = Wal::open(vfs.clone(), &config.data_dir.join("wal"), env.io)?;
        tracing::info!(
            node = config.node_id,
            segments = report.segments,
            records = report.records,
            truncated_bytes = report.truncated_bytes,
            "write-ahead log recovered"
        );
        let wal = Arc::new(wal);
        let router = PeerRouter::new(config.node_id, env.net, env.cluster_key.clone());
        let (stop, _) = watch::channel(false);
        let mut shards = BTreeMap::new();
        let mut queues = Vec::new();
        for s in 0..config.shards {
            let dir = config.data_dir.join("shards").join(s.to_string());
            let (sm, cell) = LedgerStateMachine::open(vfs.clone(), env.io, &dir, ShardId(s), config.ledger)
                .map_err(|source| NodeError::Shard { shard: s, source })?;
            let log = LogStore::new(wal.clone(), s);
            let network = ShardNetworkFactory::new(router.clone(), s);
            let raft_config = raft_config(
                &config.cluster_name,
                config.rtt_ms,
                config.snapshot_every,
                config.logs_kept_after_snapshot,
                config.election_slots.get(&s).copied(),
            );
            let raft = LedgerRaft::new(config.node_id, raft_config, network, log, sm)
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            let (queue, rx) = mpsc::channel(QUEUE_COMMANDS_MAX);
            let shard = Arc::new(Shard {
                id: ShardId(s),
                raft,
                cell,
                dir,
                snapshot_lock: tokio::sync::Mutex::new(()),
                queue,
                leader_changes: std::sync::atomic::AtomicU64::new(0),
                leader_contact: std::sync::Mutex::new(std::collections::VecDeque::new()),
                leader_quorum_at: std::sync::Mutex::new(None),
            });
            router.watch_shard(s, shard.raft.metrics());
            queues.push((shard.clone(), rx));
            shards.insert(s, shard);
        }
        let map = ShardMap::new(config.shards, &config.home_regions);
        let inner = Arc::new(NodeInner { config, map, env, wal, shards: RwLock::new(shards), stop });
        let node = Self { inner };
        for (shard, rx) in queues {
            tokio::spawn(tick_loop(node.inner.clone(), shard.clone()));
            tokio::spawn(count_leader_changes(shard.clone()));
            if let Some(home) = node.inner.config.home_regions.get(&shard.id.0) {
                tokio::spawn(home_loop(node.inner.clone(), shard.clone(), home.clone()));
            }
            tokio::spawn(propose_loop(node.inner.clone(), shard, rx));
        }
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Options for a client of this node's cluster: its network and its key.
    pub fn client_options(&self) -> crate::client::ClientOptions {
        crate::client::ClientOptions {
            net: self.inner.env.net,
            ..crate::client::ClientOptions::new(self.inner.env.cluster_key.clone())
        }
    }

    /// Forms a new cluster: every shard that has never been initialized gets `members` as its
    /// first membership. Safe to call on every node with the same members, and on restarts.
    pub async fn bootstrap(&self, members: &BTreeMap<NodeId, NodeInfo>) -> Result<(), NodeError> {
        let plan = (0..self.inner.config.shards).map(|s| (s, members.clone())).collect();
        self.bootstrap_placed(&plan).await.map(|_| ())
    }

    /// Forms a new cluster with each shard's own first voters (see
    /// [`crate::placement::Topology::bootstrap_plan`]). Shards this node is a first voter of are
    /// initialized here; the others are returned, for the caller to ask one of their voters
    /// ([`crate::client::LedgerClient::initialize`]). Safe to call on every node with the same
    /// plan, and on restarts.
    pub async fn bootstrap_placed(
        &self,
        plan: &BTreeMap<u32, BTreeMap<NodeId, NodeInfo>>,
    ) -> Result<BTreeMap<u32, BTreeMap<NodeId, NodeInfo>>, NodeError> {
        let mut elsewhere = BTreeMap::new();
        for shard in self.shards() {
            let Some(members) = plan.get(&shard.id.0) else { continue };
            if !members.contains_key(&self.inner.config.node_id) {
                elsewhere.insert(shard.id.0, members.clone());
                continue;
            }
            self.initialize_shard(shard.id.0, members).await.map_err(|e| NodeError::Raft(e.to_string()))?;
        }
        Ok(elsewhere)
    }

    /// Gives a never-initialized shard `members` as its first voters; this node must be one.
    /// Returns whether this call did it (`false`: it already was initialized, which is fine).
    pub async fn initialize_shard(
        &self,
        shard: u32,
        members: &BTreeMap<NodeId, NodeInfo>,
    ) -> Result<bool, LedgerError> {
        let s = self.shard_or_err(shard)?;
        if !members.contains_key(&self.inner.config.node_id) {
            return Err(LedgerError::Membership(format!(
                "node {} is not among shard {shard}'s first voters",
                self.inner.config.node_id
            )));
        }
        if s.raft.is_initialized().await.map_err(|e| LedgerError::Unavailable(e.to_string()))? {
            return Ok(false);
        }
        match s.raft.initialize(members.clone()).await {
            Ok(()) => Ok(true),
            // Another node initialized it first: that is the goal, not an error.
            Err(e) => {
                tracing::debug!(shard, "initialize skipped: {e}");
                Ok(false)
            }
        }
    }

    fn shards(&self) -> Vec<Arc<Shard>> {
        self.inner.shards.read().expect("shards lock").values().cloned().collect()
    }

    /// The Raft handle of a shard replica, for operators and tests.
    pub fn raft(&self, shard: u32) -> Option<LedgerRaft> {
        self.inner.shard(shard).map(|s| s.raft.clone())
    }

    /// Serves the node's gRPC services on `listener` until [`LedgerNode::shutdown`].
    pub async fn serve(&self, listener: Listener) -> Result<(), NodeError> {
        let mut stop = self.inner.stop.subscribe();
        let routes = crate::net::server::routes(self.inner.clone());
        let check = MemberCheck::SharedKey(self.inner.env.cluster_key.clone());
        crate::net::server::http2(tonic::transport::Server::builder())
            .layer(tonic::service::InterceptorLayer::new(move |req: tonic::Request<()>| {
                check.check(&req).map(|()| req)
            }))
            .add_routes(routes)
            .serve_with_incoming_shutdown(listener.incoming(), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| NodeError::Server(e.to_string()))
    }

    /// Stops serving, stops every shard's Raft group, and makes the log durable and closed.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        for shard in self.shards() {
            if let Err(e) = shard.raft.shutdown().await {
                tracing::warn!(shard = %shard.id, "raft shutdown: {e}");
            }
        }
        self.inner.wal.close().await;
    }

    /// The shard a command must run in: the requested one, checked against the command's
    /// player, or the player's shard.
    pub fn route(&self, shard: Option<u32>, cmd: &Command) -> Result<u32, LedgerError> {
        let place = |p| self.inner.map.shard_for(p).map(|s| s.0).map_err(LedgerError::from);
        let home = cmd.player().map(place).transpose()?;
        // A transfer moves money inside one shard's ledger: both players must live there.
        if let (Command::Transfer { to, .. }, Some(h)) = (cmd, home) {
            let payee = place(to)?;
            if payee != h {
                return Err(LedgerError::WrongShard { expected: payee, requested: h });
            }
        }
        match (shard, home) {
            (Some(s), Some(h)) if s != h => Err(LedgerError::WrongShard { expected: h, requested: s }),
            (Some(s), _) | (None, Some(s)) => Ok(s),
            (None, None) => Err(LedgerError::NoShard),
        }
    }

    /// Which shard each player lives in, as this node routes.
    pub fn shard_map(&self) -> &ShardMap {
        &self.inner.map
    }

    fn shard_or_err(&self, shard: u32) -> Result<Arc<Shard>, LedgerError> {
        self.inner.shard(shard).ok_or(LedgerError::UnknownShard(shard))
    }

    /// Runs a command on its shard's leader, which must be this node.
    ///
    /// Bad input is refused before anything is proposed. Commands submitted concurrently are
    /// batched into shared log entries; the leader stamps each batch with the cluster time.
    pub async fn submit(&self, shard: Option<u32>, cmd: Command, timeout: Duration) -> Result<Outcome, LedgerError> {
        cmd.validate().map_err(LedgerError::Invalid)?;
        let shard_id = self.route(shard, &cmd)?;
        let shard = self.shard_or_err(shard_id)?;
        let waiting = enqueue(&shard, cmd)?;
        match tokio::time::timeout(timeout, waiting).await {
            Err(_) => Err(LedgerError::Timeout),
            Ok(Err(_)) => Err(LedgerError::Unavailable("the shard stopped".into())),
            Ok(Ok(result)) => result,
        }
    }

    /// Runs several commands of one shard; outcomes come back in order. The call fails as a
    /// whole if any command could not be decided (not the leader, deadline, no quorum); retrying
    /// the whole batch is safe, since commands that did apply answer as duplicates.
    pub async fn submit_batch(
        &self,
        shard: u32,
        cmds: Vec<Command>,
        timeout: Duration,
    ) -> Result<Vec<Outcome>, LedgerError> {
        if cmds.len() > BATCH_COMMANDS_MAX {
            return Err(LedgerError::Unavailable(format!("a batch holds at most {BATCH_COMMANDS_MAX} commands")));
        }
        for cmd in &cmds {
            cmd.validate().map_err(LedgerError::Invalid)?;
            self.route(Some(shard), cmd)?;
        }
        let shard = self.shard_or_err(shard)?;
        let mut waiting = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            waiting.push(enqueue(&shard, cmd)?);
        }
        let all = async {
            let mut outcomes = Vec::with_capacity(waiting.len());
            for w in waiting {
                outcomes.push(w.await.map_err(|_| LedgerError::Unavailable("the shard stopped".into()))??);
            }
            Ok(outcomes)
        };
        tokio::time::timeout(timeout, all).await.unwrap_or(Err(LedgerError::Timeout))
    }

    /// Reads a balance. A linearizable read must be served by the leader.
    pub async fn balance(
        &self,
        shard: Option<u32>,
        account: &AccountRef,
        consistency: ReadConsistency,
    ) -> Result<BalanceView, LedgerError> {
        let shard_id = match (shard, account.player_id()) {
            (Some(s), _) => s,
            (None, Some(p)) => self.inner.map.shard_for(p)?.0,
            (None, None) => return Err(LedgerError::NoShard),
        };
        let shard = self.shard_or_err(shard_id)?;
        if consistency == ReadConsistency::Linearizable
            && let Err(e) = shard.raft.ensure_linearizable(ReadPolicy::ReadIndex).await
        {
            return Err(match e.forward_to_leader() {
                Some(f) => LedgerError::not_leader(shard_id, f.leader_id, f.leader_node.as_ref()),
                None => LedgerError::Unavailable(e.to_string()),
            });
        }
        let staleness_ms = match consistency {
            ReadConsistency::Linearizable => Some(0),
            ReadConsistency::Local => self.staleness(shard_id).map(|d| d.as_millis() as u64),
        };
        let st = shard.cell.read();
        Ok(BalanceView {
            shard: shard_id,
            balance: st.ledger.balance(account),
            applied_index: st.last_applied.as_ref().map(|l| l.index),
            journal_len: st.journal.len(),
            last_at: st.ledger.last_at(),
            consistency,
            staleness_ms,
        })
    }

    /// How stale a local read of `shard` may be: every write acknowledged more than this long
    /// ago (plus the one-way delay from the leader) is in this replica's applied state.
    ///
    /// On the leader it is the time since a quorum last acknowledged its leadership: no other
    /// leader can have acknowledged anything before then. On a follower it is the age of the
    /// newest leader message whose commit index this replica has applied: the leader had
    /// acknowledged nothing beyond that index when it sent the message. `None` when neither is
    /// known, or this node hosts no replica of the shard.
    pub fn staleness(&self, shard: u32) -> Option<Duration> {
        let s = self.inner.shard(shard)?;
        let m = s.raft.metrics().borrow_watched().clone();
        m.membership_config.membership().get_node(&self.inner.config.node_id)?;
        if m.state == ServerState::Leader {
            let acked = m.last_quorum_acked.as_ref()?;
            return Some(acked.elapsed());
        }
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
        let seen = s.leader_contact.lock().expect("leader contact lock");
        let (at, _) = seen.iter().rev().find(|(_, commit)| *commit <= applied)?;
        Some(at.elapsed())
    }

    /// Up to `limit` journal entries of a shard from `from_seq` on, as this replica has them.
    pub fn entries(&self, shard: u32, from_seq: u64, limit: u32) -> Result<Vec<Entry>, LedgerError> {
        let shard = self.shard_or_err(shard)?;
        let st = shard.cell.read();
        st.journal
            .read_range(from_seq, u64::from(limit.min(10_000)))
            .map_err(|e| LedgerError::Unavailable(format!("journal read failed: {e}")))
    }

    /// Waits until the shard's journal has more than `seen` entries, or `timeout` passes.
    /// Returns the journal length.
    pub async fn wait_for_entries(&self, shard: u32, seen: u64, timeout: Duration) -> Result<u64, LedgerError> {
        let shard = self.shard_or_err(shard)?;
        let mut rx = shard.cell.journal_len.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|len| *len > seen)).await;
        let len = *rx.borrow();
        Ok(len)
    }

    /// Re-verifies a shard's whole journal on this replica and compares the replayed balances
    /// with the live ledger.
    pub fn verify(&self, shard: u32) -> Result<VerifyReport, LedgerError> {
        let shard = self.shard_or_err(shard)?;
        let st = shard.cell.read();
        let mut v = Verifier::new(shard.id);
        let mut error = None;
        let mut next = 1;
        'chain: while next <= st.journal.len() {
            let chunk = match st.journal.read_range(next, VERIFY_CHUNK_ENTRIES) {
                Ok(c) if !c.is_empty() => c,
                Ok(_) => {
                    error = Some(format!("entry {next} missing"));
                    break;
                }
                Err(e) => {
                    error = Some(format!("entry {next}: {e}"));
                    break;
                }
            };
            for e in &chunk {
                if let Err(e) = v.push(e) {
                    error = Some(e.to_string());
                    break 'chain;
                }
            }
            next += chunk.len() as u64;
        }
        let summary = v.finish();
        let live: BTreeMap<AccountRef, Balance> = st.ledger.accounts().into_iter().collect();
        let balances_match = error.is_none() && summary.balances == live && summary.head_hash == st.ledger.head().1;
        Ok(VerifyReport {
            shard: shard.id.0,
            entries: summary.entries,
            head_hash: hex::encode(summary.head_hash),
            error,
            balances_match,
        })
    }

    /// The node's view of every shard it hosts: those whose membership names this node as a
    /// voter or a learner.
    pub fn status(&self) -> NodeStatus {
        let me = self.inner.config.node_id;
        let shards = self
            .shards()
            .iter()
            .filter_map(|s| {
                let m: RaftMetrics<TypeConfig> = s.raft.metrics().borrow_watched().clone();
                m.membership_config.membership().get_node(&me)?;
                let st = s.cell.read();
                let view = health_view(s, &m);
                Some(ShardStatus {
                    shard: s.id.0,
                    state: server_state(m.state).to_string(),
                    term: m.current_term,
                    leader: m.current_leader,
                    last_log_index: m.last_log_index,
                    committed: m.local_committed.as_ref().map(|l| l.index),
                    applied: m.last_applied.as_ref().map(|l| l.index),
                    snapshot: m.snapshot.as_ref().map(|l| l.index),
                    purged: m.purged.as_ref().map(|l| l.index),
                    journal_len: st.journal.len(),
                    head_hash: hex::encode(st.journal.head()),
                    voters: m.membership_config.voter_ids().collect(),
                    learners: m.membership_config.membership().learner_ids().collect(),
                    leader_region: m
                        .current_leader
                        .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.region.clone())),
                    home_region: self.inner.config.home_regions.get(&s.id.0).cloned(),
                    leader_changes: s.leader_changes.load(std::sync::atomic::Ordering::Relaxed),
                    health: health_of(s, view),
                    leader_heard_ms: view.leader_heard().map(|d| d.as_millis() as u64),
                })
            })
            .collect();
        NodeStatus {
            node_id: self.inner.config.node_id,
            info: self.inner.config.info.clone(),
            shard_count: self.inner.config.shards,
            home_regions: self.inner.config.home_regions.clone(),
            shards,
        }
    }

    /// Whether a write for `shard` sent to this node now can be committed; `None` if the node
    /// hosts no replica of it. See [`CommitHealth`] for the rule.
    pub fn health(&self, shard: u32) -> Option<CommitHealth> {
        let s = self.inner.shard(shard)?;
        let m: RaftMetrics<TypeConfig> = s.raft.metrics().borrow_watched().clone();
        m.membership_config.membership().get_node(&self.inner.config.node_id)?;
        Some(health_of(&s, health_view(&s, &m)))
    }

    /// Raft log entries this replica knows to be committed but has not applied yet: how stale
    /// a local read of the shard may be.
    pub fn apply_lag(&self, shard: u32) -> Option<u64> {
        self.inner.shard(shard).map(|s| {
            let m = s.raft.metrics().borrow_watched().clone();
            let committed = m.local_committed.map_or(0, |l| l.index);
            let applied = m.last_applied.map_or(0, |l| l.index);
            committed.saturating_sub(applied)
        })
    }

    /// What this replica's ledger remembers of a transaction id (see [`crate::Ledger::recall`]), with
    /// the chain length it reflects; `None` for a shard this node does not host.
    pub fn recall(&self, shard: u32, tx: &TxId) -> Option<(u64, Option<Recall>)> {
        self.inner.shard(shard).map(|s| {
            let st = s.cell.read();
            (st.ledger.head().0, st.ledger.recall(tx))
        })
    }

    /// The head (sequence, hash) of a shard's chain on this replica.
    pub fn head(&self, shard: u32) -> Option<(u64, Hash)> {
        self.inner.shard(shard).map(|s| s.cell.read().ledger.head())
    }

    /// Every balance of a shard on this replica, sorted by account.
    pub fn balances(&self, shard: u32) -> Option<Vec<(AccountRef, Balance)>> {
        self.inner.shard(shard).map(|s| s.cell.read().ledger.accounts())
    }
}

/// What a replica knows of its leader and quorum, now.
fn health_view(s: &Shard, m: &RaftMetrics<TypeConfig>) -> HealthView {
    let now = tokio::time::Instant::now();
    if m.state == ServerState::Leader {
        return HealthView {
            leads: true,
            quorum_acked: m.last_quorum_acked.as_ref().map(|a| a.elapsed()),
            ..HealthView::default()
        };
    }
    let contact = s.leader_contact.lock().expect("leader contact lock").back().map(|(t, _)| now - *t);
    let quorum = s.leader_quorum_at.lock().expect("leader quorum lock").map(|t| now - t);
    HealthView { leads: false, quorum_acked: None, leader_contact: contact, leader_quorum: quorum }
}

/// [`commit_health`] with the shard's own lease.
fn health_of(s: &Shard, view: HealthView) -> CommitHealth {
    commit_health(view, Duration::from_millis(s.raft.config().election_timeout_max))
}

fn server_state(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    }
}

fn check_identity(vfs: &dyn Vfs, config: &NodeConfig) -> Result<(), NodeError> {
    let path = config.data_dir.join("node.json");
    let me = Identity {
        format: DATA_FORMAT,
        node_id: config.node_id,
        cluster_name: config.cluster_name.clone(),
        shards: config.shards,
        home_regions: config.home_regions.clone(),
    };
    match vfs.read(&path) {
        Ok(bytes) => {
            let found: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| NodeError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
            if found.format != me.format {
                return Err(NodeError::WrongFormat {
                    dir: config.data_dir.display().to_string(),
                    found: found.format,
                    expected: me.format,
                });
            }
            if found != me {
                return Err(NodeError::WrongIdentity {
                    dir: config.data_dir.display().to_string(),
                    found: found.to_string(),
                    expected: me.to_string(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = serde_json::to_vec_pretty(&me).expect("identity serialises");
            vfs.write_atomic(&path, &bytes)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn enqueue(shard: &Shard, cmd: Command) -> Result<oneshot::Receiver<Result<Outcome, LedgerError>>, LedgerError> {
    let (tx, rx) = oneshot::channel();
    shard.queue.try_send((cmd, tx)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => LedgerError::Unavailable("shard is overloaded; retry later".into()),
        mpsc::error::TrySendError::Closed(_) => LedgerError::Unavailable("the shard stopped".into()),
    })?;
    Ok(rx)
}

pub(crate) fn write_error(
    shard: u32,
    e: &openraft::errors::RaftError<TypeConfig, openraft::errors::ClientWriteError<TypeConfig>>,
) -> LedgerError {
    match e.forward_to_leader() {
        Some(f) => LedgerError::not_leader(shard, f.leader_id, f.leader_node.as_ref()),
        None => LedgerError::Unavailable(e.to_string()),
    }
}

/// Turns queued commands into log entries: whatever queued while earlier batches were in
/// flight rides the next entry. Batching here is what lets one fsync and one replication round
/// serve many clients.
async fn propose_loop(node: Arc<NodeInner>, shard: Arc<Shard>, mut rx: mpsc::Receiver<(Command, Waiter)>) {
    let mut stop = node.stop.subscribe();
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    loop {
        let first = tokio::select! {
            item = rx.recv() => match item { Some(i) => i, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < BATCH_COMMANDS_MAX {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        // A caller that gave up (deadline) already got an answer; proposing its command now
        // would only make that answer's "may still apply" come true later.
        batch.retain(|(_, waiter)| !waiter.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (cmds, waiters): (Vec<Command>, Vec<Waiter>) = batch.into_iter().unzip();
        let proposal = Proposal { at: node.env.clock.now(), request: Request::Commands(cmds) };
        let raft = shard.raft.clone();
        let shard_id = shard.id.0;
        tokio::spawn(async move {
            let _permit = permit;
            let started = tokio::time::Instant::now();
            let written = raft.client_write(proposal).await;
            let us = started.elapsed().as_micros() as u64;
            tracing::trace!(shard = shard_id, commands = waiters.len(), us, "batch committed");
            match written {
                Ok(resp) => {
                    let Reply::Outcomes(outcomes) = resp.data else {
                        unreachable!("a command batch applies as commands")
                    };
                    assert_eq!(outcomes.len(), waiters.len(), "one outcome per command");
                    for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                        let _ = waiter.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    let error = write_error(shard_id, &e);
                    for waiter in waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// Counts changes of the shard's leader as this replica sees them, for operators.
async fn count_leader_changes(shard: Arc<Shard>) {
    let mut metrics = shard.raft.metrics();
    let mut leader = metrics.borrow_watched().current_leader;
    while metrics.changed().await.is_ok() {
        let now = metrics.borrow_watched().current_leader;
        if now != leader {
            if now.is_some() {
                shard.leader_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            leader = now;
        }
    }
}

/// Checks that a home voter must pass in a row before leadership moves to it: hysteresis, so a
/// region that flaps does not drag leadership back and forth.
const HOME_HEALTHY_CHECKS: u32 = 3;
/// A voter counts as caught up when it trails the leader's log by at most this many entries.
const HOME_CAUGHT_UP_SLACK: u64 = 64;

/// Leader placement: while this node leads `shard` from outside the shard's home region, hand
/// leadership to a voter in the home region once that voter has been reachable and caught up
/// for [`HOME_HEALTHY_CHECKS`] checks in a row, and at most once per cool-down. When the home
/// region is down, nothing qualifies and leadership stays where the election put it.
async fn home_loop(node: Arc<NodeInner>, shard: Arc<Shard>, home: String) {
    let mut stop = node.stop.subscribe();
    // Several heartbeats apart, so a check sees replication progress, not one RPC's luck.
    let period = Duration::from_millis((node.config.rtt_ms * 10).clamp(300, 5_000));
    let cooldown = period * 10;
    let mut healthy_checks = 0u32;
    let mut last_transfer: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let m: RaftMetrics<TypeConfig> = shard.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader || node.config.info.region == home {
            healthy_checks = 0;
            continue;
        }
        let last = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        // Healthy: acknowledged a heartbeat within the last check period (reachable now, not
        // only at some point), and its log trails ours by at most the slack.
        let reachable = |id: &NodeId| {
            m.heartbeat.as_ref().and_then(|h| h.get(id)).and_then(|t| t.as_ref()).is_some_and(|t| t.elapsed() <= period)
        };
        let caught_up = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id))
                .and_then(|l| l.as_ref())
                .is_some_and(|l| l.index + HOME_CAUGHT_UP_SLACK >= last)
        };
        let target = membership
            .voter_ids()
            .filter(|id| membership.get_node(id).is_some_and(|n| n.region == home))
            .find(|id| reachable(id) && caught_up(id));
        let Some(target) = target else {
            healthy_checks = 0;
            continue;
        };
        healthy_checks += 1;
        if healthy_checks < HOME_HEALTHY_CHECKS || last_transfer.is_some_and(|t| t.elapsed() < cooldown) {
            continue;
        }
        tracing::info!(shard = %shard.id, to = target, region = %home, "moving leadership home");
        if let Err(e) = shard.raft.trigger().transfer_leader(target).await {
            tracing::warn!(shard = %shard.id, "leader transfer failed: {e}");
        }
        last_transfer = Some(tokio::time::Instant::now());
        healthy_checks = 0;
    }
}

/// Proposes a tick whenever this replica leads and a withdrawal hold is due, so holds expire
/// in cluster time even when no command arrives.
async fn tick_loop(node: Arc<NodeInner>, shard: Arc<Shard>) {
    let mut stop = node.stop.subscribe();
    let mut interval = tokio::time::interval(node.config.tick_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !shard.raft.is_leader() {
            continue;
        }
        let now = node.env.clock.now();
        let due = shard.cell.read().ledger.next_hold_expiry().is_some_and(|t| t <= now);
        if due {
            let proposal = Proposal { at: now, request: Request::Tick };
            if let Err(e) = shard.raft.client_write(proposal).await {
                tracing::debug!(shard = %shard.id, "tick not applied: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    #[test]
    fn health_needs_a_live_leader_with_a_quorum_behind_it() {
        let lease = Duration::from_millis(350);
        let check = |view: HealthView| commit_health(view, lease);
        let leader = |acked| HealthView { leads: true, quorum_acked: acked, ..HealthView::default() };
        assert_eq!(check(leader(ms(100))), CommitHealth::Leader);
        assert_eq!(check(leader(ms(351))), CommitHealth::NoQuorum, "two of three stopped: the leader is alone");
        assert_eq!(check(leader(None)), CommitHealth::NoQuorum, "elected, never acknowledged");
        let follower = |contact, quorum| HealthView {
            leads: false,
            leader_contact: contact,
            leader_quorum: quorum,
            ..HealthView::default()
        };
        assert_eq!(check(follower(ms(50), ms(150))), CommitHealth::Follower);
        assert_eq!(check(follower(ms(400), ms(150))), CommitHealth::NoLeader, "the leader it names is dead");
        assert_eq!(check(follower(None, None)), CommitHealth::NoLeader);
        assert_eq!(check(follower(ms(50), ms(900))), CommitHealth::NoQuorum, "it hears a leader that lost its quorum");
        assert_eq!(check(follower(ms(50), None)), CommitHealth::NoQuorum);
        assert!(CommitHealth::Leader.serving() && CommitHealth::Follower.serving());
        assert!(!CommitHealth::NoLeader.serving() && !CommitHealth::NoQuorum.serving());
    }
}
