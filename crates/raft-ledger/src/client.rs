//! A client of the node API: it finds each shard's leader, follows `NotLeader` hints, and
//! retries across failures. Retrying is safe because every command carries its idempotency key:
//! a retry of an applied command returns the original receipt, never a second application.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use thiserror::Error;
use tonic::transport::Channel;

use crate::account::AccountRef;
use crate::command::Command;
use crate::entry::Entry;
use crate::net::env::Net;
use crate::net::generated::ledger_node_client::LedgerNodeClient;
use crate::net::wire::{BalanceRequest, EntriesRequest, StatusRequest, SubmitRequest, VerifyRequest};
use crate::node::{BalanceView, LedgerError, NodeStatus, ReadConsistency, VerifyReport};
use crate::outcome::{Outcome, Rejection};
use crate::shard::shard_for_player;

/// Why a client call failed.
#[derive(Debug, Error)]
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
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { request_timeout: Duration::from_secs(2), deadline: Duration::from_secs(15), net: Net::Tcp }
    }
}

/// A client of a ledger cluster.
pub struct LedgerClient {
    nodes: Vec<String>,
    options: ClientOptions,
    shard_count: u32,
    conns: Mutex<BTreeMap<String, LedgerNodeClient<Channel>>>,
    leaders: Mutex<BTreeMap<u32, String>>,
    next: AtomicUsize,
}

impl LedgerClient {
    /// Connects to a cluster through any of `nodes` (`host:port`), learning its shard count.
    pub async fn connect(nodes: Vec<String>, options: ClientOptions) -> Result<Self, ClientError> {
        assert!(!nodes.is_empty(), "a client needs at least one node address");
        let mut client = Self {
            nodes,
            options,
            shard_count: 0,
            conns: Mutex::new(BTreeMap::new()),
            leaders: Mutex::new(BTreeMap::new()),
            next: AtomicUsize::new(0),
        };
        let deadline = tokio::time::Instant::now() + client.options.deadline;
        let mut last = String::new();
        loop {
            for addr in client.nodes.clone() {
                match client.status(&addr).await {
                    Ok(status) => {
                        client.shard_count = status.shard_count;
                        return Ok(client);
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Indeterminate(client.options.deadline, last));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Shards in the cluster.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    fn conn(&self, addr: &str) -> Result<LedgerNodeClient<Channel>, ClientError> {
        let mut conns = self.conns.lock().expect("conns lock");
        if let Some(c) = conns.get(addr) {
            return Ok(c.clone());
        }
        let channel = self
            .options
            .net
            .channel(addr)
            .map_err(|e| ClientError::Node { addr: addr.to_string(), message: e.to_string() })?;
        let client = LedgerNodeClient::new(channel).max_decoding_message_size(64 << 20);
        conns.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    fn pick(&self, shard: u32) -> String {
        if let Some(leader) = self.leaders.lock().expect("leaders lock").get(&shard) {
            return leader.clone();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.nodes[i % self.nodes.len()].clone()
    }

    /// Calls the leader of `shard`, following hints and retrying until the deadline.
    async fn on_leader<T, F, Fut>(&self, shard: u32, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(LedgerNodeClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Result<T, LedgerError>>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.deadline;
        let mut backoff = Duration::from_millis(10);
        let mut last;
        loop {
            let addr = self.pick(shard);
            let attempt = tokio::time::timeout(self.options.request_timeout, call(self.conn(&addr)?)).await;
            let retry_after = match attempt {
                Ok(Ok(reply)) => match reply.into_inner() {
                    Ok(v) => return Ok(v),
                    Err(LedgerError::Invalid(r)) => return Err(ClientError::Invalid(r)),
                    Err(LedgerError::NotLeader { leader_addr: Some(leader), .. }) if leader != addr => {
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
                Ok(Err(status)) => {
                    last = format!("{addr}: {}", status.message());
                    Some(backoff)
                }
                Err(_) => {
                    last = format!("{addr}: no reply within {:?}", self.options.request_timeout);
                    Some(Duration::ZERO)
                }
            };
            if let Some(wait) = retry_after {
                // Forget the leader we tried and move on to another node.
                self.leaders.lock().expect("leaders lock").remove(&shard);
                self.next.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_millis(400));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Indeterminate(self.options.deadline, last));
            }
        }
    }

    /// Runs a command on its player's shard, retrying until it has a definite outcome.
    pub async fn submit(&self, command: Command) -> Result<Outcome, ClientError> {
        command.validate().map_err(ClientError::Invalid)?;
        let shard = match command.player() {
            Some(p) => shard_for_player(p, self.shard_count).0,
            None => return Err(ClientError::Ledger(LedgerError::NoShard)),
        };
        self.submit_to(shard, command).await
    }

    /// Runs a command on a given shard (needed for adjustments between system accounts).
    pub async fn submit_to(&self, shard: u32, command: Command) -> Result<Outcome, ClientError> {
        let timeout_ms = self.options.request_timeout.as_millis() as u64;
        self.on_leader(shard, |mut c| {
            let req = SubmitRequest { shard: Some(shard), command: command.clone(), timeout_ms };
            async move { c.submit(req).await }
        })
        .await
    }

    /// Reads a balance from the shard leader, linearizably.
    pub async fn balance(&self, account: &AccountRef, shard: Option<u32>) -> Result<BalanceView, ClientError> {
        let shard = match (shard, account.player_id()) {
            (Some(s), _) => s,
            (None, Some(p)) => shard_for_player(p, self.shard_count).0,
            (None, None) => return Err(ClientError::Ledger(LedgerError::NoShard)),
        };
        self.on_leader(shard, |mut c| {
            let req = BalanceRequest {
                shard: Some(shard),
                account: account.clone(),
                consistency: ReadConsistency::Linearizable,
            };
            async move { c.balance(req).await }
        })
        .await
    }

    async fn once<T, Fut>(
        &self,
        addr: &str,
        call: impl FnOnce(LedgerNodeClient<Channel>) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let node = |message: String| ClientError::Node { addr: addr.to_string(), message };
        match tokio::time::timeout(self.options.request_timeout, call(self.conn(addr)?)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(node(status.message().to_string())),
            Err(_) => Err(node("timed out".into())),
        }
    }

    /// A node's status.
    pub async fn status(&self, addr: &str) -> Result<NodeStatus, ClientError> {
        self.once(addr, |mut c| async move { c.status(StatusRequest).await }).await
    }

    /// Journal entries of a shard as one node has them.
    pub async fn entries(&self, addr: &str, shard: u32, from_seq: u64, limit: u32) -> Result<Vec<Entry>, ClientError> {
        self.once(addr, |mut c| async move { c.entries(EntriesRequest { shard, from_seq, limit }).await })
            .await?
            .map_err(ClientError::Ledger)
    }

    /// Verifies a shard's journal on one node.
    pub async fn verify(&self, addr: &str, shard: u32) -> Result<VerifyReport, ClientError> {
        self.once(addr, |mut c| async move { c.verify(VerifyRequest { shard }).await })
            .await?
            .map_err(ClientError::Ledger)
    }
}
