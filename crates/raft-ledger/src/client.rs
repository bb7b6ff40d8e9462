//! A client of the node API: it finds each shard's leader, follows `NotLeader` hints, and
//! retries across failures. Retrying is safe because every command carries its idempotency key:
//! a retry of an applied command returns the original receipt, never a second application.
//!
//! Concurrent submits to one shard are coalesced: while a few batches are in flight, new
//! commands queue and leave together in the next `SubmitBatch` call. One caller alone still
//! gets a batch of one, sent at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::batch::{Batches, answer};

use crate::api::{BATCH_COMMANDS_MAX, BalanceView, LedgerError, NodeStatus, ReadConsistency, VerifyReport};
use crate::api::{MembershipChange, MembershipView};
use crate::net::env::{Net, NodeChannel};
use crate::net::generated::ledger_node_client::LedgerNodeClient;
use crate::net::member::ClusterKey;
use crate::net::wire::{
    BalanceRequest, EntriesRequest, InitializeRequest, MembershipRequest, StatusRequest, SubmitBatchRequest,
    VerifyRequest,
};
use ledger_core::AccountRef;
use ledger_core::Command;
use ledger_core::Entry;
use ledger_core::ShardMap;
use ledger_core::{Outcome, Rejection};

/// Why a client call failed.
#[derive(Debug, Clone, Error)]
pub enum ClientError {
    /// The command is invalid on its own; nothing was proposed. Retrying cannot help.
    #[error("invalid command: {0}")]
    Invalid(Rejection),
    /// The cluster answered with an error retrying cannot fix.
    #[error(transparent)]
    Ledger(LedgerError),
    /// No node completed the call before the deadline. For a write the outcome is unknown:
    /// retry with the same transaction id to learn it.
    #[error("no answer within {0:?}; outcome unknown, retry with the same transaction id ({1})")]
    Indeterminate(Duration, String),
    /// A node refused the client's credentials (the cluster key). Retrying cannot help.
    #[error("refused by the cluster: {0}")]
    Unauthenticated(String),
    /// A call to one named node failed.
    #[error("node {addr}: {message}")]
    Node {
        /// The node.
        addr: String,
        /// What failed.
        message: String,
    },
}

/// How patient a client is.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one call to one node.
    pub request_timeout: Duration,
    /// Total time to keep retrying one operation.
    pub deadline: Duration,
    /// Which network to dial over.
    pub net: Net,
    /// The cluster's key: nodes refuse calls without it.
    pub key: ClusterKey,
}

impl ClientOptions {
    /// Defaults (2 s per call, 15 s per operation, TCP) for a cluster with this key.
    pub fn new(key: ClusterKey) -> Self {
        Self { request_timeout: Duration::from_secs(2), deadline: Duration::from_secs(15), net: Net::Tcp, key }
    }
}

/// Longest pause between retries. During an election every node answers "no leader" at once,
/// so the pause, not the election, would decide how soon a client sees the new leader; a
/// short cap keeps that small while still bounding the retry rate per client and shard.
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// How long a node that timed out or refused the connection is passed over. A dead leader
/// stays the leader its followers name until they elect another; without this, every hint
/// would send the client back to it for another full call timeout.
const SUSPECT_FOR: Duration = Duration::from_secs(1);

/// Batches one client keeps in flight per shard; more commands wait and join the next batch.
const CLIENT_BATCHES_IN_FLIGHT_MAX: usize = 8;
/// Commands one client queues per shard behind the batches in flight. When the queue is full,
/// a submit waits for room until its deadline (backpressure on the caller), and if the deadline
/// passes first it fails as indeterminate: nothing was sent, but retrying with the same id is
/// what every indeterminate answer calls for, and it is always safe.
const CLIENT_QUEUE_COMMANDS_MAX: usize = 65_536;

type Waiter = oneshot::Sender<Result<Outcome, ClientError>>;
/// A queued command, who waits for it, and until when.
type Queued = (Command, Waiter, tokio::time::Instant);

/// A client of a ledger cluster.
pub struct LedgerClient {
    inner: Arc<Inner>,
    batchers: Mutex<BTreeMap<u32, mpsc::Sender<Queued>>>,
}

struct Inner {
    nodes: Vec<String>,
    options: ClientOptions,
    map: ShardMap,
    conns: Mutex<BTreeMap<String, LedgerNodeClient<NodeChannel>>>,
    leaders: Mutex<BTreeMap<u32, String>>,
    /// Nodes that timed out or could not be reached, and until when they are passed over.
    suspects: Mutex<BTreeMap<String, tokio::time::Instant>>,
    next: AtomicUsize,
}

impl LedgerClient {
    /// Connects to a cluster through any of `nodes` (`host:port`), learning its shard count.
    pub async fn connect(nodes: Vec<String>, options: ClientOptions) -> Result<Self, ClientError> {
        assert!(!nodes.is_empty(), "a client needs at least one node address");
        let mut inner = Inner {
            nodes,
            options,
            map: ShardMap::uniform(1),
            conns: Mutex::new(BTreeMap::new()),
            leaders: Mutex::new(BTreeMap::new()),
            suspects: Mutex::new(BTreeMap::new()),
            next: AtomicUsize::new(0),
        };
        let deadline = tokio::time::Instant::now() + inner.options.deadline;
        let mut last = String::new();
        loop {
            for addr in inner.nodes.clone() {
                match inner.once(&addr, |mut c| async move { c.status(StatusRequest).await }).await {
                    Ok(status) => {
                        inner.map = status.shard_map();
                        return Ok(Self { inner: Arc::new(inner), batchers: Mutex::new(BTreeMap::new()) });
                    }
                    Err(e @ ClientError::Unauthenticated(_)) => return Err(e),
                    Err(e) => last = e.to_string(),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Indeterminate(inner.options.deadline, last));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Shards in the cluster.
    pub fn shard_count(&self) -> u32 {
        self.inner.map.shards()
    }

    /// Which shard each player lives in (learned from the node the client first reached).
    pub fn shard_map(&self) -> &ShardMap {
        &self.inner.map
    }

    /// The shard holding `player`'s wallets.
    pub fn shard_for(&self, player: &ledger_core::PlayerId) -> Result<u32, ClientError> {
        self.inner.map.shard_for(player).map(|s| s.0).map_err(|e| ClientError::Ledger(e.into()))
    }

    fn batcher(&self, shard: u32) -> mpsc::Sender<Queued> {
        let mut batchers = self.batchers.lock().expect("batchers lock");
        batchers
            .entry(shard)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(CLIENT_QUEUE_COMMANDS_MAX);
                tokio::spawn(batch_loop(self.inner.clone(), shard, rx));
                tx
            })
            .clone()
    }
}

/// Sends one shard's queued commands as batches, a bounded number at a time.
async fn batch_loop(inner: Arc<Inner>, shard: u32, rx: mpsc::Receiver<Queued>) {
    let mut batches = Batches::new(rx, CLIENT_BATCHES_IN_FLIGHT_MAX, BATCH_COMMANDS_MAX);
    while let Some((permit, batch)) = batches.next().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // The batch lives as long as its most patient caller; each caller stops waiting at
            // its own deadline.
            let until = batch.iter().map(|(_, _, d)| *d).max().expect("a batch is never empty");
            let (commands, waiters): (Vec<Command>, Vec<Waiter>) = batch.into_iter().map(|(c, w, _)| (c, w)).unzip();
            let started = tokio::time::Instant::now();
            let result = inner
                .on_leader_until(shard, until, false, |mut c| {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    let timeout_ms = left.min(inner.options.request_timeout).as_millis() as u64;
                    let req = SubmitBatchRequest { shard, commands: commands.clone(), timeout_ms };
                    async move { c.submit_batch(req).await }
                })
                .await;
            // A node that answers a different number of outcomes broke the protocol; what it
            // applied is unknown.
            let result = result.and_then(|outcomes| match outcomes.len() == waiters.len() {
                true => Ok(outcomes),
                false => Err(ClientError::Indeterminate(
                    started.elapsed(),
                    format!("a node answered {} outcomes for {} commands", outcomes.len(), waiters.len()),
                )),
            });
            answer(waiters, result);
        });
    }
}

impl Inner {
    fn conn(&self, addr: &str) -> Result<LedgerNodeClient<NodeChannel>, ClientError> {
        let mut conns = self.conns.lock().expect("conns lock");
        if let Some(c) = conns.get(addr) {
            return Ok(c.clone());
        }
        let channel = self
            .options
            .net
            .node_channel(addr, &self.options.key)
            .map_err(|e| ClientError::Node { addr: addr.to_string(), message: e.to_string() })?;
        let client = LedgerNodeClient::new(channel).max_decoding_message_size(64 << 20);
        conns.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    fn suspected(&self, addr: &str) -> bool {
        let now = tokio::time::Instant::now();
        self.suspects.lock().expect("suspects lock").get(addr).is_some_and(|until| *until > now)
    }

    fn suspect(&self, addr: &str) {
        self.suspects
            .lock()
            .expect("suspects lock")
            .insert(addr.to_string(), tokio::time::Instant::now() + SUSPECT_FOR);
    }

    /// The shard's known leader, else the next node in this call's turn (`turn`) that is not
    /// under suspicion (or simply the next one, if all are). The turn is the call's own: calls
    /// searching at the same time for the leaders of different shards, each advancing one
    /// shared counter, step by two each and (with an even node count) never ask half the
    /// nodes, possibly every survivor holding the leader they look for.
    fn pick(&self, shard: u32, turn: &mut usize) -> String {
        if let Some(leader) = self.leaders.lock().expect("leaders lock").get(&shard)
            && !self.suspected(leader)
        {
            return leader.clone();
        }
        let mut addr = String::new();
        for _ in 0..self.nodes.len() {
            let i = *turn;
            *turn = turn.wrapping_add(1);
            addr = self.nodes[i % self.nodes.len()].clone();
            if !self.suspected(&addr) {
                break;
            }
        }
        addr
    }

    /// Calls the leader of `shard`, following hints and retrying until `deadline`.
    async fn on_leader_until<T, F, Fut>(
        &self,
        shard: u32,
        deadline: tokio::time::Instant,
        patient: bool,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(LedgerNodeClient<NodeChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Result<T, LedgerError>>, tonic::Status>>,
    {
        let total = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut backoff = Duration::from_millis(10);
        let mut last;
        // Nodes asked since the last pause: a node without an answer sends the client straight
        // on to the next one, and only a whole round without one pauses, so a client finds a
        // new leader as soon as any node knows it, without hammering a cluster that has none.
        let mut asked = 0usize;
        // Where this call's search starts: spread over the nodes, call by call.
        let mut turn = self.next.fetch_add(1, Ordering::Relaxed);
        loop {
            let addr = self.pick(shard, &mut turn);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // A replica change may wait for a newcomer to catch up: one call may take it all.
            let per_call = if patient { left } else { self.options.request_timeout.min(left) };
            let attempt = tokio::time::timeout(per_call, call(self.conn(&addr)?)).await;
            let retry_after = match attempt {
                Ok(Ok(reply)) => match reply.into_inner() {
                    Ok(v) => {
                        // Whoever answered leads the shard (only leaders serve these calls):
                        // remember it, so the next call goes straight there.
                        self.suspects.lock().expect("suspects lock").remove(&addr);
                        self.leaders.lock().expect("leaders lock").insert(shard, addr);
                        return Ok(v);
                    }
                    Err(LedgerError::Invalid(r)) => return Err(ClientError::Invalid(r)),
                    // A hint to a node that just failed us is most likely a dead leader its
                    // followers have not replaced yet: ask elsewhere instead.
                    Err(LedgerError::NotLeader { leader_addr: Some(leader), .. })
                        if leader != addr && !self.suspected(&leader) =>
                    {
                        last = format!("{addr}: not the leader; following hint to {leader}");
                        self.leaders.lock().expect("leaders lock").insert(shard, leader);
                        None
                    }
                    Err(e @ (LedgerError::NotLeader { .. } | LedgerError::Unavailable(_) | LedgerError::Timeout)) => {
                        last = format!("{addr}: {e}");
                        Some(backoff)
                    }
                    Err(e) => return Err(ClientError::Ledger(e)),
                },
                Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated => {
                    return Err(ClientError::Unauthenticated(status.message().to_string()));
                }
                Ok(Err(status)) => {
                    last = format!("{addr}: {}", status.message());
                    if status.code() == tonic::Code::Unavailable {
                        self.suspect(&addr);
                    }
                    Some(backoff)
                }
                Err(_) => {
                    last = format!("{addr}: no reply within {per_call:?}");
                    self.suspect(&addr);
                    Some(Duration::ZERO)
                }
            };
            if let Some(mut wait) = retry_after {
                tracing::debug!(shard, "retrying: {last}");
                asked += 1;
                if asked < self.nodes.len() {
                    wait = Duration::ZERO;
                } else {
                    asked = 0;
                }
                // Forget the leader we tried; the next pick moves on to the next node. (Advancing
                // here too would step by two and, with an even node count, never try half the
                // nodes: with voter subsets, possibly every replica of the shard.)
                self.leaders.lock().expect("leaders lock").remove(&shard);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Indeterminate(total, last));
            }
        }
    }

    async fn once<T, Fut>(
        &self,
        addr: &str,
        call: impl FnOnce(LedgerNodeClient<NodeChannel>) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let node = |message: String| ClientError::Node { addr: addr.to_string(), message };
        match tokio::time::timeout(self.options.request_timeout, call(self.conn(addr)?)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated => {
                Err(ClientError::Unauthenticated(status.message().to_string()))
            }
            Ok(Err(status)) => Err(node(status.message().to_string())),
            Err(_) => Err(node("timed out".into())),
        }
    }
}

impl LedgerClient {
    /// Runs a command on its player's shard, retrying until it has a definite outcome.
    pub async fn submit(&self, command: Command) -> Result<Outcome, ClientError> {
        command.validate().map_err(ClientError::Invalid)?;
        let shard = match command.player() {
            Some(p) => self.shard_for(p)?,
            None => return Err(ClientError::Ledger(LedgerError::NoShard)),
        };
        self.submit_to(shard, command).await
    }

    /// Runs a command on a given shard (needed for adjustments between system accounts).
    pub async fn submit_to(&self, shard: u32, command: Command) -> Result<Outcome, ClientError> {
        self.submit_by(shard, command, tokio::time::Instant::now() + self.inner.options.deadline).await
    }

    /// Runs a command on `shard`, batched with concurrent submits, giving up at `deadline`. The
    /// leader's proposal timeout is bounded by the time its batch has left.
    pub async fn submit_by(
        &self,
        shard: u32,
        command: Command,
        deadline: tokio::time::Instant,
    ) -> Result<Outcome, ClientError> {
        command.validate().map_err(ClientError::Invalid)?;
        let (tx, rx) = oneshot::channel();
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let lost = || ClientError::Indeterminate(wait, "client is shutting down".into());
        match tokio::time::timeout_at(deadline, self.batcher(shard).send((command, tx, deadline))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(lost()),
            Err(_) => return Err(ClientError::Indeterminate(wait, "the client's queue stayed full".into())),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(r) => r.map_err(|_| lost())?,
            Err(_) => Err(ClientError::Indeterminate(wait, "deadline reached".into())),
        }
    }

    /// Reads a balance from the shard leader, linearizably, giving up at `deadline`.
    pub async fn balance_until(
        &self,
        account: &AccountRef,
        shard: u32,
        deadline: tokio::time::Instant,
    ) -> Result<BalanceView, ClientError> {
        self.inner
            .on_leader_until(shard, deadline, false, |mut c| {
                let req = BalanceRequest {
                    shard: Some(shard),
                    account: account.clone(),
                    consistency: ReadConsistency::Linearizable,
                };
                async move { c.balance(req).await }
            })
            .await
    }

    /// Reads a balance from the shard leader, linearizably.
    pub async fn balance(&self, account: &AccountRef, shard: Option<u32>) -> Result<BalanceView, ClientError> {
        let shard = match (shard, account.player_id()) {
            (Some(s), _) => s,
            (None, Some(p)) => self.shard_for(p)?,
            (None, None) => return Err(ClientError::Ledger(LedgerError::NoShard)),
        };
        self.balance_until(account, shard, tokio::time::Instant::now() + self.inner.options.deadline).await
    }

    /// Changes a shard's replicas through its leader, retrying across leader changes until
    /// `timeout`. Safe to retry: a change already made answers with the current replicas.
    pub async fn change_membership(
        &self,
        shard: u32,
        change: MembershipChange,
        timeout: Duration,
    ) -> Result<MembershipView, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.inner
            .on_leader_until(shard, deadline, true, |mut c| {
                let timeout_ms = deadline.saturating_duration_since(tokio::time::Instant::now()).as_millis() as u64;
                let req = MembershipRequest { shard, change: change.clone(), timeout_ms };
                async move { c.change_membership(req).await }
            })
            .await
    }

    /// Asks the node at `addr` to give a never-initialized shard its first voters (it must be
    /// one). `Ok(false)`: it already was initialized.
    pub async fn initialize(
        &self,
        addr: &str,
        shard: u32,
        members: &BTreeMap<crate::raft::NodeId, crate::raft::NodeInfo>,
    ) -> Result<bool, ClientError> {
        let members = members.clone();
        self.inner
            .once(addr, |mut c| async move { c.initialize(InitializeRequest { shard, members }).await })
            .await?
            .map_err(ClientError::Ledger)
    }

    /// A node's status.
    pub async fn status(&self, addr: &str) -> Result<NodeStatus, ClientError> {
        self.inner.once(addr, |mut c| async move { c.status(StatusRequest).await }).await
    }

    /// Reads a balance from one node's replica of `shard` as it stands, with the bound on its
    /// staleness the node reports (`BalanceView::staleness_ms`).
    pub async fn balance_at(&self, addr: &str, account: &AccountRef, shard: u32) -> Result<BalanceView, ClientError> {
        let req = BalanceRequest { shard: Some(shard), account: account.clone(), consistency: ReadConsistency::Local };
        self.inner.once(addr, |mut c| async move { c.balance(req).await }).await?.map_err(ClientError::Ledger)
    }

    /// Journal entries of a shard as one node has them.
    pub async fn entries(&self, addr: &str, shard: u32, from_seq: u64, limit: u32) -> Result<Vec<Entry>, ClientError> {
        self.inner
            .once(addr, |mut c| async move { c.entries(EntriesRequest { shard, from_seq, limit }).await })
            .await?
            .map_err(ClientError::Ledger)
    }

    /// Verifies a shard's journal on one node.
    pub async fn verify(&self, addr: &str, shard: u32) -> Result<VerifyReport, ClientError> {
        self.inner
            .once(addr, |mut c| async move { c.verify(VerifyRequest { shard }).await })
            .await?
            .map_err(ClientError::Ledger)
    }
}
