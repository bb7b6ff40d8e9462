//! In-process clusters of real nodes on loopback sockets, for the cluster tests.
//!
//! Progress is awaited by polling a condition with a deadline, never by sleeping a fixed time.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ledger_core::{Amount, Command, Currency, PlayerId, RoundId, TxId};
use raft_ledger::api::ShardStatus;
use raft_ledger::client::{ClientOptions, LedgerClient};
use raft_ledger::net::env::Listener;
use raft_ledger::net::member::ClusterKey;
use raft_ledger::node::{LedgerNode, NodeConfig, NodeEnv, NodeError};
use raft_ledger::raft::{NodeId, NodeInfo};

/// The key every test cluster shares.
pub fn cluster_key() -> ClusterKey {
    ClusterKey::from_secret(&[0x42; 32]).expect("long enough")
}

pub struct Member {
    pub id: NodeId,
    pub info: NodeInfo,
    pub dir: PathBuf,
    pub node: Option<LedgerNode>,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub struct Cluster {
    pub members: BTreeMap<NodeId, Member>,
    pub shards: u32,
    pub tune: fn(&mut NodeConfig),
    _tmp: tempfile::TempDir,
}

fn no_tuning(_: &mut NodeConfig) {}

impl Cluster {
    pub async fn start(n: u64, shards: u32) -> Self {
        Self::start_with(n, shards, no_tuning).await
    }

    /// Starts `n` nodes (ids 1..=n) hosting `shards` shards and waits for every shard to elect.
    pub async fn start_with(n: u64, shards: u32, tune: fn(&mut NodeConfig)) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster { members: BTreeMap::new(), shards, tune, _tmp: tmp };
        for id in 1..=n {
            cluster.add_member(id).await;
        }
        let members: BTreeMap<NodeId, NodeInfo> = cluster.members.values().map(|m| (m.id, m.info.clone())).collect();
        cluster.node(1).bootstrap(&members).await.expect("bootstrap");
        for s in 0..shards {
            cluster.wait_leader(s).await;
        }
        cluster
    }

    /// Creates and starts a member with a fresh data directory and port.
    pub async fn add_member(&mut self, id: NodeId) -> &Member {
        let listener = Listener::bind_tcp("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let info = NodeInfo::new(addr, format!("region-{}", id % 3), format!("zone-{id}"));
        let dir = self._tmp.path().join(format!("node-{id}"));
        let mut member = Member { id, info, dir, node: None, server: None };
        Self::launch(&mut member, self.shards, self.tune, listener).await;
        self.members.insert(id, member);
        &self.members[&id]
    }

    async fn launch(member: &mut Member, shards: u32, tune: fn(&mut NodeConfig), listener: Listener) {
        Self::try_launch(member, shards, tune, listener).await.expect("node starts");
    }

    async fn try_launch(
        member: &mut Member,
        shards: u32,
        tune: fn(&mut NodeConfig),
        listener: Listener,
    ) -> Result<(), NodeError> {
        let mut config = NodeConfig::new(member.id, member.info.clone(), &member.dir, shards);
        config.tick_interval = Duration::from_millis(100);
        tune(&mut config);
        let node = LedgerNode::start(config, NodeEnv::production(cluster_key())).await?;
        let serving = node.clone();
        member.server = Some(tokio::spawn(async move {
            serving.serve(listener).await.expect("serve");
        }));
        member.node = Some(node);
        Ok(())
    }

    pub fn node(&self, id: NodeId) -> &LedgerNode {
        self.members[&id].node.as_ref().expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = &LedgerNode> {
        self.members.values().filter_map(|m| m.node.as_ref())
    }

    pub fn addrs(&self) -> Vec<String> {
        self.members.values().map(|m| m.info.addr.clone()).collect()
    }

    /// Stops a node the way a crash would look to its peers; its data directory stays.
    pub async fn stop(&mut self, id: NodeId) {
        let member = self.members.get_mut(&id).expect("member");
        if let Some(node) = member.node.take() {
            node.shutdown().await;
        }
        if let Some(server) = member.server.take() {
            let _ = server.await;
        }
    }

    /// Restarts a stopped node on its old address and data directory.
    pub async fn restart(&mut self, id: NodeId) {
        self.try_restart(id).await.expect("node restarts");
    }

    /// Restarts a stopped node, returning why it refused to start.
    pub async fn try_restart(&mut self, id: NodeId) -> Result<(), NodeError> {
        let shards = self.shards;
        let tune = self.tune;
        let member = self.members.get_mut(&id).expect("member");
        assert!(member.node.is_none(), "node {id} is running");
        let listener = bind_retrying(&member.info.addr).await;
        Self::try_launch(member, shards, tune, listener).await
    }

    /// The current leader of a shard, once every running replica of it agrees on it: every
    /// running node that hosts the shard, and every running voter the leader lists.
    pub async fn wait_leader(&self, shard: u32) -> NodeId {
        wait_for(Duration::from_secs(20), || {
            let replicas: Vec<(NodeId, ShardStatus)> =
                self.running().filter_map(|n| n.status().shard(shard).cloned().map(|s| (n.id(), s))).collect();
            let first = replicas.first()?.1.leader?;
            let (_, at_leader) = replicas.iter().find(|(id, _)| *id == first)?;
            let agreed = replicas.iter().all(|(_, s)| s.leader == Some(first));
            let voters_host = at_leader
                .voters
                .iter()
                .filter(|v| self.members.get(v).is_some_and(|m| m.node.is_some()))
                .all(|v| replicas.iter().any(|(id, _)| id == v));
            (agreed && voters_host).then_some(first)
        })
        .await
        .unwrap_or_else(|| panic!("shard {shard} elected no leader"))
    }

    /// The status of `node`'s replica of `shard`; panics if it hosts none.
    pub fn replica(&self, node: NodeId, shard: u32) -> ShardStatus {
        self.node(node).status().shard(shard).cloned().unwrap_or_else(|| panic!("node {node} hosts shard {shard}"))
    }

    /// Waits until every running replica of `shard` has the same chain head and applied index.
    pub async fn wait_converged(&self, shard: u32) -> (u64, [u8; 32]) {
        wait_for(Duration::from_secs(20), || {
            let hosting: Vec<&LedgerNode> = self.running().filter(|n| n.status().shard(shard).is_some()).collect();
            let heads: Vec<_> = hosting.iter().map(|n| n.head(shard).expect("shard")).collect();
            let applied: Vec<_> = hosting.iter().map(|n| n.status().shard(shard).map(|s| s.applied)).collect();
            (!heads.is_empty() && heads.windows(2).all(|w| w[0] == w[1]) && applied.windows(2).all(|w| w[0] == w[1]))
                .then(|| heads[0])
        })
        .await
        .unwrap_or_else(|| panic!("replicas of shard {shard} did not converge"))
    }

    pub async fn client(&self) -> LedgerClient {
        LedgerClient::connect(self.addrs(), ClientOptions::new(cluster_key())).await.expect("client connects")
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

async fn bind_retrying(addr: &str) -> Listener {
    for _ in 0..50 {
        if let Ok(l) = Listener::bind_tcp(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not rebind {addr}");
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn eur() -> Currency {
    Currency::new("EUR").unwrap()
}

pub fn player(name: &str) -> PlayerId {
    PlayerId::new(name).unwrap()
}

pub fn tx(id: impl AsRef<str>) -> TxId {
    TxId::new(id).unwrap()
}

pub fn open(t: &str, p: &str) -> Command {
    Command::OpenAccount { tx: tx(t), player: player(p), currency: eur() }
}

pub fn deposit(t: &str, p: &str, amount: i64) -> Command {
    Command::Deposit { tx: tx(t), player: player(p), currency: eur(), amount: Amount::new(amount).unwrap() }
}

pub fn bet(t: &str, p: &str, round: &str, amount: i64) -> Command {
    Command::Bet {
        tx: tx(t),
        player: player(p),
        round: RoundId::new(round).unwrap(),
        currency: eur(),
        amount: Amount::new(amount).unwrap(),
    }
}
