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
use tokio::sync::{mpsc, oneshot, watch};

mod loops;
mod membership;
mod serve;

use crate::api::{
    BATCH_COMMANDS_MAX, BalanceView, CommitHealth, LedgerError, NodeStatus, ReadConsistency, ReplicaRole, ShardLeader,
    ShardStatus, VerifyReport,
};
use crate::decide::{HealthView, commit_health};
use crate::net::env::{Listener, Net};
use crate::net::member::{ClusterKey, MemberCheck};
use crate::net::peer::{PeerRouter, ShardNetworkFactory};
use crate::raft::{NodeId, NodeInfo, TypeConfig, raft_config};
use crate::store::LogStore;
pub use crate::store::StateStorage;
use crate::store::state_machine::{ApplyHook, LedgerStateMachine, ShardCell, StoreError};
use crate::store::vfs::{StdFs, Vfs};
use crate::store::wal::{IoMode, Wal, WalError};
use crate::time::{Clock, WallClock};
use ledger_core::AccountRef;
use ledger_core::Balance;
use ledger_core::Command;
use ledger_core::Outcome;
use ledger_core::TxId;
use ledger_core::verify::Verifier;
use ledger_core::{Entry, Hash};
use ledger_core::{LedgerConfig, Recall};
use ledger_core::{ShardId, ShardMap};

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
    /// Where each shard keeps its retained state (ids, rounds): in memory or on disk.
    pub state: StateStorage,
    /// How often each shard checks whether a withdrawal hold is due to expire.
    pub tick_interval: Duration,
    /// A snapshot is taken every this many applied log entries, plus a fixed offset of up to
    /// half as many again that differs between replicas, so they do not all snapshot at once.
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, so briefly lagging replicas catch up from the log.
    pub logs_kept_after_snapshot: u64,
    /// With the retained state on disk: a snapshot (checkpoint) is also taken once this many
    /// commands have applied since the last, checked every `tick_interval`. The state's writes
    /// since its last checkpoint wait in memory, and an interval in log entries does not bound
    /// them (an entry carries up to 1,024 commands). Each checkpoint fsyncs the journal between
    /// two apply batches and commits and fsyncs the store, so this trades those against memory.
    pub checkpoint_every_commands: u64,
    /// Bytes (as encoded in the write-ahead log) of each shard's newest log entries held in
    /// memory; older entries not yet purged by a snapshot are read back from the log's segments
    /// when a lagging follower or a restart's replay asks for them. This, not the snapshot
    /// interval, bounds a shard's log in memory.
    pub log_cache_bytes: usize,
    /// The most snapshot bytes one call to a peer carries. A snapshot larger than this is sent
    /// as several calls, each resuming where the last stopped, so a transfer of any size makes
    /// progress within each call's deadline and survives a dropped connection.
    pub snapshot_piece_bytes: u64,
    /// The most AppendEntries a leader has in flight to one follower for one shard. 1: one
    /// unary call at a time, which entry-less calls (commit and heartbeat carriers) may
    /// overtake. More: an ordered stream per follower and shard (pipelined replication), so a
    /// batch goes out while the one before is still being written on the follower. A node set
    /// to 1 also refuses the streams of its peers, as an older build would, and they send it
    /// unary calls instead.
    pub appends_in_flight: usize,
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
            state: StateStorage::Memory,
            tick_interval: Duration::from_millis(500),
            snapshot_every: 10_000,
            logs_kept_after_snapshot: 2_000,
            log_cache_bytes: LOG_CACHE_BYTES_DEFAULT,
            checkpoint_every_commands: 250_000,
            snapshot_piece_bytes: 16 << 20,
            appends_in_flight: APPENDS_IN_FLIGHT_DEFAULT,
            home_regions: BTreeMap::new(),
            election_slots: BTreeMap::new(),
        }
    }

    /// Takes placement and timing from `topology`, the one place a topology becomes node
    /// settings (for `walletd start`, the demo and the simulator alike): the shard count, this
    /// node's region, each shard's home region, this node's slot in each shard's succession,
    /// and Raft timing from the quorum round-trip time.
    pub fn place(&mut self, topology: &ledger_core::placement::Topology) {
        self.shards = topology.shards;
        if let Some(region) = topology.region_of(self.node_id) {
            self.info.region = region.to_string();
        }
        self.home_regions = topology.homes();
        self.election_slots = topology.election_slots(self.node_id);
        self.rtt_ms = topology.quorum_rtt_ms();
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
    /// A fault for the simulator's tests to inject into every shard's state machine; `None`
    /// everywhere else.
    pub apply_hook: Option<Arc<dyn ApplyHook>>,
}

impl NodeEnv {
    /// The real disk, TCP, the wall clock, and a writer thread.
    pub fn production(cluster_key: ClusterKey) -> Self {
        Self {
            vfs: Arc::new(StdFs),
            net: Net::Tcp,
            clock: Arc::new(WallClock),
            io: IoMode::Thread,
            cluster_key,
            apply_hook: None,
        }
    }

    /// Inside a turmoil simulation: its disk and network, cluster time counted by the
    /// simulation from `epoch`, and the log writer as a task on the host's runtime.
    #[cfg(feature = "turmoil")]
    pub fn turmoil(epoch: ledger_core::ClusterTime, cluster_key: ClusterKey) -> Self {
        Self {
            vfs: Arc::new(crate::store::vfs::sim::TurmoilFs),
            net: Net::Turmoil,
            clock: Arc::new(crate::time::RuntimeClock::starting_at(epoch)),
            io: IoMode::Task,
            cluster_key,
            apply_hook: None,
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

/// Entries `verify` reads at a time from the part of a journal appended while it scanned.
const VERIFY_CHUNK_ENTRIES: u64 = 4096;

/// How long a shutdown waits for its shards' snapshot work to end, in all.
const SHUTDOWN_WAIT_FOR_SNAPSHOT_WORK: Duration = Duration::from_secs(60);

/// `NodeConfig::appends_in_flight` unless set: an ordered stream per follower and shard with up
/// to 16 AppendEntries unanswered (pipelined replication). Across a 50 ms round trip a write
/// every few milliseconds then goes out at once instead of waiting for a slot (`sim geo
/// --rate`: 100 writes/s commit in one round trip with 16, in 1.4 with 4); on loopback 4 and
/// 16 measure the same.
pub const APPENDS_IN_FLIGHT_DEFAULT: usize = 16;
/// `NodeConfig::log_cache_bytes` unless set: 32 MiB of encoded entries per shard, hundreds of
/// thousands of commands, far more than a follower a few seconds behind or the apply needs.
pub const LOG_CACHE_BYTES_DEFAULT: usize = 32 << 20;

/// Commands waiting to be proposed per shard before submits are refused as overload.
const QUEUE_COMMANDS_MAX: usize = 65_536;
/// Batches proposed but not yet applied, per shard. Bounds memory and keeps latency in check.
/// Below saturation this means about one command per log entry (a slot is always free); fewer
/// slots would make commands ride together, but 2 cost 15–30% of the closed-loop rate on the
/// replicated benchmark (BENCHMARKS.md, "The open-loop tail, a second look").
pub(crate) const BATCHES_IN_FLIGHT_MAX: usize = 64;

/// One replica's snapshot interval: `every` plus an offset in `[0, every / 2]` fixed by the
/// node and shard. With one interval for all, every shard of a node and every replica of a
/// shard under even load reached it at the same moment, and a dozen state copies and builds
/// landed together (a one- to two-second stall of commits on a busy node, issue 17). The offset
/// is a hash, not a random draw, so a simulated run still replays from its seed.
fn snapshot_interval(every: u64, node: NodeId, shard: u32) -> u64 {
    every + crate::raft::runtime::splitmix64((node << 32) ^ u64::from(shard)) % (every / 2 + 1)
}

pub(crate) type Waiter = oneshot::Sender<Result<Outcome, LedgerError>>;

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
    /// commit index it carried, commit indexes ascending. What tells the shard's health and its
    /// succession that the leader is alive.
    leader_contact: std::sync::Mutex<std::collections::VecDeque<(tokio::time::Instant, u64)>>,
    /// What leaders vouched for (`wire::Freshness`), as moments on this node's clock and the
    /// applied index each needs, indexes ascending: every write acknowledged before the moment
    /// is in this replica's state once it has applied the index. What bounds a local read's
    /// staleness.
    fresh_as_of: std::sync::Mutex<std::collections::VecDeque<(tokio::time::Instant, u64)>>,
    /// The latest moment this replica knows its leader had heard from a quorum (from the
    /// quorum age AppendEntries carry). What a follower's health rests on.
    leader_quorum_at: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Rung when this replica refuses a pre-vote because the asker's log is shorter than its
    /// own: the succession loop need not wait behind a successor that cannot win.
    pub(crate) outranks_candidate: tokio::sync::Notify,
}

/// Leader contacts kept per shard. A replica that lags further behind than this many distinct
/// commit points cannot bound its staleness, and a bounded read goes to the leader instead.
const LEADER_CONTACTS_MAX: usize = 64;

impl Shard {
    /// Notes that an AppendEntries from the leader, received at `at` and carrying commit index
    /// `commit`, was accepted; `fresh`: what the leader vouched for, as a moment on this node's
    /// clock and the index it needs.
    pub(crate) fn heard_from_leader(
        &self,
        at: tokio::time::Instant,
        commit: u64,
        quorum_age: Option<Duration>,
        fresh: Option<(tokio::time::Instant, u64)>,
    ) {
        if let Some(at_quorum) = quorum_age.and_then(|age| at.checked_sub(age)) {
            let mut known = self.leader_quorum_at.lock().expect("leader quorum lock");
            *known = Some(known.map_or(at_quorum, |k| k.max(at_quorum)));
        }
        remember_point(&mut self.leader_contact.lock().expect("leader contact lock"), at, commit);
        if let Some((as_of, applied)) = fresh {
            remember_point(&mut self.fresh_as_of.lock().expect("freshness lock"), as_of, applied);
        }
    }
}

/// Adds a (moment, index) point to a list kept with indexes ascending and at most
/// `LEADER_CONTACTS_MAX` long.
fn remember_point(
    points: &mut std::collections::VecDeque<(tokio::time::Instant, u64)>,
    at: tokio::time::Instant,
    index: u64,
) {
    match points.back_mut() {
        // Same index, later moment: keep only the later one.
        Some((t, c)) if *c == index => *t = (*t).max(at),
        // An older index arriving late (calls can overtake each other) adds nothing.
        Some((_, c)) if *c > index => {}
        _ => {
            points.push_back((at, index));
            if points.len() > LEADER_CONTACTS_MAX {
                points.pop_front();
            }
        }
    }
}

/// This node's clock as its followers' answers carry it (`wire::ReplyStamp`): moments since
/// the node started, tagged with a number drawn at start, so that a leader's echo of a stamp
/// from an earlier run of the process (a restart in the same second, a reused address) is
/// never read as a moment of this run.
pub(crate) struct AnswerClock {
    incarnation: u64,
    epoch: tokio::time::Instant,
}

impl AnswerClock {
    fn new() -> Self {
        // From the runtime's RNG: seeded by the simulator, from the OS otherwise.
        let incarnation = {
            use rand::RngExt as _;
            <crate::raft::LedgerRuntime as openraft::AsyncRuntime>::thread_rng().random::<u64>()
        };
        Self { incarnation, epoch: tokio::time::Instant::now() }
    }

    /// The stamp for an answer sent now.
    pub(crate) fn stamp(&self) -> crate::net::wire::ReplyStamp {
        let micros = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        crate::net::wire::ReplyStamp { incarnation: self.incarnation, micros }
    }

    /// The moment a stamp of this run names; `None` for another run's stamp or one from the
    /// future (a stamp this node never gave).
    pub(crate) fn moment(&self, stamp: crate::net::wire::ReplyStamp) -> Option<tokio::time::Instant> {
        if stamp.incarnation != self.incarnation {
            return None;
        }
        let at = self.epoch.checked_add(Duration::from_micros(stamp.micros))?;
        (at <= tokio::time::Instant::now()).then_some(at)
    }

    /// What a leader vouched for, as a moment of this node's clock and the index it needs.
    pub(crate) fn vouched(&self, fresh: Option<crate::net::wire::Freshness>) -> Option<(tokio::time::Instant, u64)> {
        let fresh = fresh?;
        Some((self.moment(fresh.stamp)?, fresh.applied))
    }
}

pub(crate) struct NodeInner {
    pub(crate) config: NodeConfig,
    map: ShardMap,
    pub(crate) env: NodeEnv,
    wal: Arc<Wal>,
    shards: RwLock<BTreeMap<u32, Arc<Shard>>>,
    stop: watch::Sender<bool>,
    /// Bumped whenever a hosted shard's leader, term or membership changes, so subscribers
    /// (`LedgerNode::leadership`) are pushed every leadership change instead of polling.
    pub(crate) leadership: watch::Sender<u64>,
    /// Stamps this node's answers to its leaders, and reads their echoes.
    pub(crate) answers: AnswerClock,
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
        let wal_dir = config.data_dir.join("wal");
        let (wal, report) = opening(env.io, {
            let vfs = vfs.clone();
            let cache = config.log_cache_bytes;
            move || Wal::open(vfs, &wal_dir, env.io, cache)
        })
        .await?;
        tracing::info!(
            node = config.node_id,
            segments = report.segments,
            records = report.records,
            truncated_bytes = report.truncated_bytes,
            "write-ahead log recovered"
        );
        let wal = Arc::new(wal);
        let router = PeerRouter::new(
            config.node_id,
            env.net,
            env.cluster_key.clone(),
            config.snapshot_piece_bytes,
            config.appends_in_flight,
        );
        let (stop, _) = watch::channel(false);
        let mut shards = BTreeMap::new();
        let mut queues = Vec::new();
        // Every shard's state opens at once (each reads its checkpoint or snapshot and replays
        // its journal), then each joins its Raft group in order.
        let mut opened = Vec::new();
        for s in 0..config.shards {
            let dir = config.data_dir.join("shards").join(s.to_string());
            let (vfs, hook, io) = (vfs.clone(), env.apply_hook.clone(), env.io);
            let (ledger, state) = (config.ledger, config.state);
            opened.push((
                dir.clone(),
                opening(io, move || LedgerStateMachine::open(vfs, io, &dir, ShardId(s), ledger, state, hook)),
            ));
        }
        for (s, (dir, open)) in (0..config.shards).zip(opened) {
            let (sm, cell) = open.await.map_err(|source| NodeError::Shard { shard: s, source })?;
            let log = LogStore::new(wal.clone(), s);
            let network = ShardNetworkFactory::new(router.clone(), s);
            let raft_config = raft_config(
                &config.cluster_name,
                config.rtt_ms,
                snapshot_interval(config.snapshot_every, config.node_id, s),
                config.logs_kept_after_snapshot,
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
                fresh_as_of: std::sync::Mutex::new(std::collections::VecDeque::new()),
                leader_quorum_at: std::sync::Mutex::new(None),
                outranks_candidate: tokio::sync::Notify::new(),
            });
            router.watch_shard(s, shard.raft.metrics(), shard.cell.applied.subscribe());
            queues.push((shard.clone(), rx));
            shards.insert(s, shard);
        }
        let map = ShardMap::new(config.shards, &config.home_regions);
        let (leadership, _) = watch::channel(0);
        let answers = AnswerClock::new();
        let inner =
            Arc::new(NodeInner { config, map, env, wal, shards: RwLock::new(shards), stop, leadership, answers });
        let node = Self { inner };
        for (shard, rx) in queues {
            tokio::spawn(loops::tick_loop(node.inner.clone(), shard.clone()));
            tokio::spawn(loops::watch_leadership(node.inner.clone(), shard.clone()));
            if let Some(home) = node.inner.config.home_regions.get(&shard.id.0) {
                tokio::spawn(loops::home_loop(node.inner.clone(), shard.clone(), home.clone()));
            }
            if let Some(slot) = node.inner.config.election_slots.get(&shard.id.0) {
                tokio::spawn(loops::succession_loop(node.inner.clone(), shard.clone(), *slot));
            }
            tokio::spawn(loops::propose_loop(node.inner.clone(), shard, rx));
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
    /// [`ledger_core::placement::Topology::bootstrap_plan`]). Shards this node is a first voter of are
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
        let routes = serve::routes(self.inner.clone());
        let check = MemberCheck::SharedKey(self.inner.env.cluster_key.clone());
        crate::net::env::http2(tonic::transport::Server::builder())
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

    /// Resolves when this node can no longer make anything durable: its write-ahead log failed
    /// (a full disk, an fsync error) or a shard's Raft group stopped on a storage error or a
    /// panic. Says why. The node then acknowledges nothing more, so the only useful thing left
    /// is to stop: `walletd start` exits, the shard goes on with the other replicas, and a
    /// restart after the cause is fixed catches up from them. Not resolved by [`Self::shutdown`].
    pub async fn storage_failure(&self) -> String {
        // Polled rather than pushed: the causes live in several places (the writer thread, each
        // group's core), a quarter second is nothing next to an operator's reaction, and the
        // simulator never calls this.
        loop {
            if let Some(why) = self.inner.wal.failure() {
                return format!("the write-ahead log cannot be written: {why}");
            }
            if !*self.inner.stop.borrow() {
                for shard in self.shards() {
                    let m = shard.raft.metrics();
                    let running = m.borrow_watched().running_state.clone();
                    match running {
                        Ok(()) | Err(openraft::errors::Fatal::Stopped) => {}
                        Err(e) => return format!("shard {} stopped: {e}", shard.id),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops serving, stops every shard's Raft group, and makes the log durable and closed.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        for shard in self.shards() {
            if let Err(e) = shard.raft.shutdown().await {
                tracing::warn!(shard = %shard.id, "raft shutdown: {e}");
            }
        }
        // Snapshot work (a build, a spool, a check or an install) runs on threads that the Raft
        // tasks only await, and outlives them: wait for it, so that nothing writes into a
        // shard's directory once shutdown has returned. Bounded, so that a stuck disk cannot
        // hold the process up forever (one deadline for all shards): what such work leaves is
        // what a crash leaves, which the next open handles.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT_FOR_SNAPSHOT_WORK;
        for shard in self.shards() {
            let background = &shard.cell.background;
            if !background.is_idle() {
                tracing::info!(shard = %shard.id, "waiting for the shard's snapshot work to end");
            }
            if tokio::time::timeout_at(deadline, background.idle()).await.is_err() {
                tracing::warn!(shard = %shard.id, "the shard's snapshot work is still running; shutting down without it");
            }
        }
        self.inner.wal.close().await;
    }

    /// The shard a command must run in: the requested one, checked against the command's
    /// player, or the player's shard.
    pub fn route(&self, shard: Option<u32>, cmd: &Command) -> Result<u32, LedgerError> {
        crate::decide::route(&self.inner.map, shard, cmd)
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
        refuse_on_follower(&shard)?;
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
        refuse_on_follower(&shard)?;
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
            // Rounded up: a bound of 0.4 ms reported as 0 would promise more than it holds.
            ReadConsistency::Local => {
                self.staleness(shard_id).map(|d| u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
            }
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
    /// before the call is in this replica's applied state, whatever the network delays.
    ///
    /// On the leader it is the time since a quorum last acknowledged its leadership (no later
    /// leader can have acknowledged anything before then), once it has applied an entry of its
    /// own term (so every entry an earlier leader committed). On a follower it is the age of
    /// the newest moment a leader vouched for (`wire::Freshness`) whose index this replica has
    /// applied: the leader had applied every acknowledged write by the time it heard this
    /// replica's answer stamped with that moment. `None` when neither is known, or this node
    /// hosts no replica of the shard.
    pub fn staleness(&self, shard: u32) -> Option<Duration> {
        let s = self.inner.shard(shard)?;
        let m = s.raft.metrics().borrow_watched().clone();
        m.membership_config.membership().get_node(&self.inner.config.node_id)?;
        let now = tokio::time::Instant::now();
        let vouched: Vec<(Duration, u64)> =
            s.fresh_as_of.lock().expect("freshness lock").iter().map(|(at, c)| (now - *at, *c)).collect();
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
        let own_term_applied = m.last_applied.as_ref().is_some_and(|l| l.leader_id.term == m.current_term);
        let quorum_acked = m.last_quorum_acked.as_ref().map(|a| a.elapsed()).filter(|_| own_term_applied);
        crate::decide::staleness_bound(m.state == ServerState::Leader, quorum_acked, &vouched, applied)
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
    ///
    /// The journal only grows (a snapshot installed here brings a journal of the same chain,
    /// longer), so what it holds when the call starts is scanned without the shard's lock, in
    /// one pass over its bytes: verifying a long history does not hold commits up. Then, under
    /// the lock, the entries appended meanwhile and the comparison with the live ledger, at one
    /// point of the chain.
    pub fn verify(&self, shard: u32) -> Result<VerifyReport, LedgerError> {
        let shard = self.shard_or_err(shard)?;
        let mut v = Verifier::new(shard.id);
        let prefix = shard.cell.read().journal.whole();
        let mut error = prefix.verify_into(shard.id, &mut v).err();
        let mut next = prefix.entries + 1;
        let st = shard.cell.read();
        'chain: while error.is_none() && next <= st.journal.len() {
            let entries = match st.journal.read_range(next, VERIFY_CHUNK_ENTRIES) {
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
            for e in &entries {
                if let Err(e) = v.push(e) {
                    error = Some(e.to_string());
                    break 'chain;
                }
            }
            next += entries.len() as u64;
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
                    state: server_state(m.state),
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

    /// Who leads each shard this node hosts, as this replica sees it: the term, the leader (if
    /// it knows one) and the shard's voters with their addresses. What a geo-router routes by.
    pub fn leaders(&self) -> Vec<ShardLeader> {
        let me = self.inner.config.node_id;
        self.shards()
            .iter()
            .filter_map(|s| {
                let m: RaftMetrics<TypeConfig> = s.raft.metrics().borrow_watched().clone();
                let membership = m.membership_config.membership();
                membership.get_node(&me)?;
                Some(ShardLeader {
                    shard: s.id.0,
                    term: m.current_term,
                    leader: m.current_leader.and_then(|l| membership.get_node(&l).map(|n| (l, n.clone()))),
                    voters: membership
                        .voter_ids()
                        .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
                        .collect(),
                })
            })
            .collect()
    }

    /// Changes whenever [`leaders`](Self::leaders) may answer differently (a new leader, term
    /// or membership on any hosted shard). Await `changed()` on it, then read `leaders()`.
    pub fn leadership(&self) -> watch::Receiver<u64> {
        self.inner.leadership.subscribe()
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

    /// What this replica's ledger remembers of a transaction id (see [`ledger_core::Ledger::recall`]), with
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

fn server_state(s: ServerState) -> ReplicaRole {
    match s {
        ServerState::Leader => ReplicaRole::Leader,
        ServerState::Follower => ReplicaRole::Follower,
        ServerState::Candidate => ReplicaRole::Candidate,
        ServerState::Learner => ReplicaRole::Learner,
        ServerState::Shutdown => ReplicaRole::Shutdown,
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

/// A follower that knows another leader says so at once, as openraft would a batch later: a
/// command queued here would only be proposed, refused and answered `NotLeader` behind whatever
/// else is queued (the caller, often the wallet API, then forwards it). With no leader known
/// (an election) the command queues as before: this replica may be about to lead.
fn refuse_on_follower(shard: &Shard) -> Result<(), LedgerError> {
    let metrics = shard.raft.metrics();
    let m = metrics.borrow_watched();
    match m.current_leader {
        Some(leader) if m.state != ServerState::Leader && leader != m.id => {
            Err(LedgerError::not_leader(shard.id.0, Some(leader), m.membership_config.membership().get_node(&leader)))
        }
        _ => Ok(()),
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

/// A step of opening a node (recovering the write-ahead log, opening a shard's state) started
/// off the runtime's workers (`IoMode::blocking`): at 100M retained ids a shard's state takes
/// seconds to open, and on a worker that would stall every other task of the process meanwhile
/// (the wallet API, other nodes in tests and benchmarks). A panic in it is re-raised here.
fn opening<T: Send + 'static>(
    io: IoMode,
    work: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = T> + Send {
    let run = io.blocking(work);
    async move {
        match run.await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("opening a node: its blocking task was cancelled: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AnswerClock, remember_point, snapshot_interval};
    use crate::net::wire::{Freshness, ReplyStamp};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_node_reads_back_only_the_stamps_of_its_own_run() {
        let clock = AnswerClock::new();
        let stamped_at = tokio::time::Instant::now();
        let stamp = clock.stamp();
        tokio::time::advance(Duration::from_millis(250)).await;
        let later = clock.stamp();
        assert_eq!(clock.moment(stamp), Some(stamped_at), "the moment it stamped");
        assert_eq!(clock.moment(later), Some(stamped_at + Duration::from_millis(250)));
        assert_eq!(clock.vouched(Some(Freshness { stamp, applied: 9 })), Some((stamped_at, 9)));
        assert_eq!(clock.vouched(None), None);
        // Another run of the process (a restart): its stamps name no moment of this run.
        let other = AnswerClock::new();
        assert_ne!(other.incarnation, clock.incarnation);
        assert_eq!(other.moment(stamp), None);
        // A stamp from the future was never given by this run.
        let ahead = ReplyStamp { micros: later.micros + 1_000, ..later };
        assert_eq!(clock.moment(ahead), None);
    }

    #[test]
    fn points_keep_their_indexes_ascending_and_the_latest_moment_per_index() {
        let t0 = tokio::time::Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut points = std::collections::VecDeque::new();
        remember_point(&mut points, at(10), 5);
        remember_point(&mut points, at(20), 5);
        remember_point(&mut points, at(30), 7);
        remember_point(&mut points, at(40), 6);
        assert_eq!(points, [(at(20), 5), (at(30), 7)], "an index arriving late adds nothing");
        for i in 0..(super::LEADER_CONTACTS_MAX as u64 + 5) {
            remember_point(&mut points, at(50 + i), 8 + i);
        }
        assert_eq!(points.len(), super::LEADER_CONTACTS_MAX, "bounded, oldest dropped");
        assert!(points.iter().zip(points.iter().skip(1)).all(|(a, b)| a.1 < b.1 && a.0 < b.0));
    }

    #[test]
    fn snapshot_intervals_are_fixed_bounded_and_spread_over_replicas() {
        let every = 10_000;
        let intervals: Vec<u64> =
            (1..=3).flat_map(|node| (0..4).map(move |shard| snapshot_interval(every, node, shard))).collect();
        assert!(intervals.iter().all(|i| (every..=every + every / 2).contains(i)), "{intervals:?}");
        assert_eq!(intervals[5], snapshot_interval(every, 2, 1), "a function of node and shard only");
        let mut distinct = intervals.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), intervals.len(), "no two replicas snapshot in step: {intervals:?}");
        // The smallest setting still snapshots, at most half as late again.
        assert_eq!(snapshot_interval(1, 7, 0), 1);
    }
}
