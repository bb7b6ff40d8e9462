//! The router's running state and its feeds: per node, a `WatchLeaders` stream (who leads
//! what) and a `grpc.health.v1` Watch stream (is it serving), both over the one HTTP/2
//! connection the router keeps to the node, with keepalive pings so a frozen node is noticed
//! within about a second even when no call is in flight.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ledger_core::placement::Topology;
use ledger_core::{NodeId, ShardMap};
use tokio::sync::{Semaphore, watch};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::budget::RetryBudget;
use crate::health::{HealthPolicy, NodeHealth, Transition};
use crate::pb;
use crate::route::{Member, Report, Table};

/// The header that carries the cluster's member token.
pub(crate) const CLUSTER_AUTH_HEADER: &str = "x-cluster-auth";
/// The wallet service's name.
pub(crate) const WALLET_SERVICE: &str = "casino.wallet.v1.Wallet";
/// The session service's name, which the router also serves (forwarded to any node).
pub(crate) const SESSION_SERVICE: &str = "casino.session.v1.Sessions";
/// The health entry a node keeps SERVING while it takes calls at all (until it drains). Not
/// the service's overall entry, which turns NOT_SERVING when any one hosted shard cannot
/// commit: that would take a node out for every shard because one lost its leader.
const NODE_HEALTH: &str = "casino.wallet.v1.Wallet/node";
/// HTTP/2 keepalive: a ping this often, and a connection without an answer this long is dead.
const KEEPALIVE_INTERVAL_MS: u64 = 300;
const KEEPALIVE_TIMEOUT_MS: u64 = 600;
/// How long to wait before reopening a feed that broke.
const FEED_RETRY_MS: u64 = 200;
/// How often rotation is re-evaluated (nodes coming back after their rise time).
const TICK_MS: u64 = 100;
/// Route changes kept for `status`.
const FAILOVERS_KEPT: usize = 32;

/// How a router is set up.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The cluster's topology (nodes with their wallet API addresses, shards, homes).
    pub topology: Topology,
    /// The region the router runs in: where bounded-stale reads stay.
    pub region: String,
    /// The cluster's member token (hex HMAC of the member label under the cluster secret).
    pub member_token: String,
    /// Health thresholds.
    pub policy: HealthPolicy,
    /// Calls in flight before new ones are shed with `RESOURCE_EXHAUSTED`.
    pub in_flight_max: usize,
}

/// One change of a shard's route, for `status`.
#[derive(Debug, Clone)]
pub(crate) struct Failover {
    pub(crate) shard: u32,
    pub(crate) from: Option<NodeId>,
    pub(crate) to: Option<NodeId>,
    pub(crate) at: Instant,
    /// From losing the old leader to knowing the new one, when this change completed one.
    pub(crate) took: Option<Duration>,
}

pub(crate) struct Inner {
    pub(crate) region: String,
    pub(crate) map: ShardMap,
    pub(crate) table: RwLock<Table>,
    pub(crate) health: Mutex<BTreeMap<NodeId, NodeHealth>>,
    pub(crate) policy: HealthPolicy,
    channels: Mutex<BTreeMap<String, Channel>>,
    pub(crate) budget: Mutex<RetryBudget>,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) token: AsciiMetadataValue,
    pub(crate) failovers: Mutex<VecDeque<Failover>>,
    /// When each shard lost its leader (for failover durations).
    leaderless_since: Mutex<BTreeMap<u32, Instant>>,
    pub(crate) started: Instant,
    /// Woken on every route change and every node back in rotation, for calls waiting for a
    /// shard's leader.
    pub(crate) changed: tokio::sync::Notify,
}

/// A router. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

impl Router {
    /// A router for `config`; call [`Router::start_feeds`] to learn leaders and health.
    pub fn new(config: RouterConfig) -> Result<Self, String> {
        config.topology.validate().map_err(|e| e.to_string())?;
        let table = Table::from_topology(&config.topology);
        if let Some((id, _)) = table.members.iter().find(|(_, m)| m.api_addr.is_empty()) {
            return Err(format!("node {id} has no wallet API address (`api`) in the topology"));
        }
        let token = AsciiMetadataValue::try_from(config.member_token.as_str()).map_err(|_| "bad member token")?;
        let map = ShardMap::new(config.topology.shards, &config.topology.homes());
        let health = table.members.keys().map(|id| (*id, NodeHealth::default())).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                region: config.region,
                map,
                table: RwLock::new(table),
                health: Mutex::new(health),
                policy: config.policy,
                channels: Mutex::new(BTreeMap::new()),
                budget: Mutex::new(RetryBudget::default()),
                in_flight: Arc::new(Semaphore::new(config.in_flight_max)),
                token,
                failovers: Mutex::new(VecDeque::new()),
                leaderless_since: Mutex::new(BTreeMap::new()),
                changed: tokio::sync::Notify::new(),
                started: Instant::now(),
            }),
        })
    }

    /// Starts the feeds from every node of the topology and the rotation ticker; they end
    /// when `stop` turns true.
    pub fn start_feeds(&self, stop: watch::Receiver<bool>) {
        let members: Vec<(NodeId, Member)> =
            self.inner.table.read().expect("table").members.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (id, member) in members {
            tokio::spawn(leaders_feed(self.clone(), id, member.api_addr.clone(), stop.clone()));
            tokio::spawn(health_feed(self.clone(), id, member.api_addr, stop.clone()));
        }
        tokio::spawn(ticker(self.clone(), stop));
    }

    /// The channel to a node's wallet API (one HTTP/2 connection, kept alive with pings).
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.inner.channels.lock().expect("channels");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad node address {addr}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Applies a health transition and says why in the log.
    pub(crate) fn transition(&self, node: NodeId, t: Option<Transition>) {
        match t {
            Some(Transition::Out(why)) => tracing::warn!(node, "node out of rotation: {why}"),
            Some(Transition::In) => {
                tracing::info!(node, "node back in rotation");
                self.inner.changed.notify_waiters();
            }
            None => {}
        }
    }

    /// Records a call's result against a node (passive health).
    pub(crate) fn record(&self, node: NodeId, failure: Option<&str>) {
        let now = Instant::now();
        let t = {
            let mut health = self.inner.health.lock().expect("health");
            let h = health.entry(node).or_default();
            match failure {
                None => {
                    h.success();
                    None
                }
                Some(why) => h.failure(now, &self.inner.policy, why),
            }
        };
        self.transition(node, t);
    }

    /// Whether a node is in rotation now.
    pub(crate) fn usable(&self, node: NodeId) -> bool {
        let now = Instant::now();
        self.inner.health.lock().expect("health").get(&node).is_some_and(|h| h.usable(now))
    }

    /// Whether `shard` has a known leader whose health stream says it serves. A leader only
    /// ejected for failed calls still counts (its followers reach it; calls go to them as
    /// before); a leader whose stream broke or that reports NOT_SERVING, or no leader at all
    /// (an election), does not.
    pub(crate) fn leader_alive(&self, shard: u32) -> bool {
        let leader = self.inner.table.read().expect("table").shards.get(&shard).and_then(|r| r.leader);
        leader.is_some_and(|l| {
            let health = self.inner.health.lock().expect("health");
            health.get(&l).is_some_and(|h| matches!(h.active(), crate::health::Active::Serving(_)))
        })
    }

    /// Waits until `shard` has a live leader (see [`Router::leader_alive`]) or `until` passes;
    /// true when it has one.
    ///
    /// During an election a call sent to a follower is forwarded to the leader the follower
    /// last knew, which is dead or frozen, and hangs there until its deadline; waiting here for
    /// the election to end (a few hundred ms) and then going straight to the new leader is
    /// both sooner and cheaper.
    pub(crate) async fn wait_for_leader(&self, shard: u32, until: Instant) -> bool {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.leader_alive(shard) {
                return true;
            }
            let tick = tokio::time::sleep_until((Instant::now() + Duration::from_millis(TICK_MS)).min(until).into());
            tokio::select! {
                () = &mut notified => {}
                // Ejections end on time, not on an event: look again every tick.
                () = tick => {}
            }
            if Instant::now() >= until {
                return self.leader_alive(shard);
            }
        }
    }

    /// Learns from a node's leader table and logs every route change with its reason.
    fn learn(&self, from: NodeId, table: pb::LeaderTable) {
        let member =
            |n: &pb::RoutingNode| (n.node_id, Member { api_addr: n.api_addr.clone(), region: n.region.clone() });
        for s in table.shards {
            let report = Report {
                shard: s.shard,
                term: s.term,
                leader: s.leader.as_ref().map(member),
                voters: s.voters.iter().map(member).collect(),
            };
            let mut t = self.inner.table.write().expect("table");
            let before = t.shards.get(&s.shard).and_then(|r| r.leader);
            if let Some(now) = t.observe(report) {
                drop(t);
                self.route_changed(s.shard, before, now, from, s.term);
            }
        }
    }

    /// Learns from a `NOT_LEADER` answer of `from` that names `leader` (see [`Table::hint`]);
    /// records and logs the route change if the table took it.
    pub(crate) fn learn_hint(&self, shard: u32, from: NodeId, leader: NodeId) -> bool {
        let (took, term) = {
            let mut t = self.inner.table.write().expect("table");
            let term = t.shards.get(&shard).map_or(0, |r| r.term);
            (t.hint(shard, from, leader), term)
        };
        if took {
            self.route_changed(shard, Some(from), Some(leader), from, term);
        }
        took
    }

    fn route_changed(&self, shard: u32, from: Option<NodeId>, to: Option<NodeId>, told_by: NodeId, term: u64) {
        let now = Instant::now();
        let took = {
            let mut since = self.inner.leaderless_since.lock().expect("since");
            match to {
                None => {
                    since.entry(shard).or_insert(now);
                    None
                }
                Some(_) => since.remove(&shard).map(|t| now - t),
            }
        };
        match to {
            Some(to) => tracing::info!(
                shard, term, from = ?from, to, told_by, took_ms = took.map(|d| d.as_millis() as u64),
                "route changed: node {told_by} reports node {to} leads term {term}"
            ),
            None => {
                tracing::info!(shard, term, from = ?from, told_by, "route lost: node {told_by} reports an election in term {term}")
            }
        }
        self.inner.changed.notify_waiters();
        let mut f = self.inner.failovers.lock().expect("failovers");
        f.push_back(Failover { shard, from, to, at: now, took });
        while f.len() > FAILOVERS_KEPT {
            f.pop_front();
        }
    }
}

async fn wait_or_stop(stop: &mut watch::Receiver<bool>, ms: u64) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Reads `stream`, handing each message to `each`, until it ends or breaks (`Some(why)`) or
/// the router stops (`None`).
async fn follow<T>(
    stream: &mut tonic::Streaming<T>,
    stop: &mut watch::Receiver<bool>,
    mut each: impl FnMut(T),
) -> Option<String> {
    loop {
        let next = tokio::select! {
            m = stream.message() => m,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match next {
            Ok(Some(m)) => each(m),
            Ok(None) => return Some("the node ended it".into()),
            Err(e) => return Some(e.message().to_string()),
        }
    }
}

/// Follows one node's `WatchLeaders` stream, reopening it when it breaks.
async fn leaders_feed(router: Router, node: NodeId, addr: String, mut stop: watch::Receiver<bool>) {
    loop {
        let Ok(channel) = router.channel(&addr) else { return };
        let mut client = pb::routing_client::RoutingClient::new(channel);
        let mut req = tonic::Request::new(pb::WatchLeadersRequest {});
        req.metadata_mut().insert(CLUSTER_AUTH_HEADER, router.inner.token.clone());
        let opened = tokio::select! {
            r = client.watch_leaders(req) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match opened {
            Ok(stream) => {
                let Some(why) = follow(&mut stream.into_inner(), &mut stop, |t| router.learn(node, t)).await else {
                    return;
                };
                tracing::debug!(node, "leader feed broke: {why}");
            }
            Err(e) if e.code() == tonic::Code::Unauthenticated => {
                tracing::error!(node, "node {node} refuses the router's cluster key: {}", e.message());
            }
            Err(e) => tracing::debug!(node, "leader feed not open: {}", e.message()),
        }
        if wait_or_stop(&mut stop, FEED_RETRY_MS).await {
            return;
        }
    }
}

/// Follows one node's health Watch stream for the wallet service.
async fn health_feed(router: Router, node: NodeId, addr: String, mut stop: watch::Receiver<bool>) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    loop {
        let Ok(channel) = router.channel(&addr) else { return };
        let mut client = HealthClient::new(channel);
        let req = HealthCheckRequest { service: NODE_HEALTH.into() };
        let opened = tokio::select! {
            r = client.watch(req) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let why = match opened {
            Ok(stream) => {
                let each = |r: tonic_health::pb::HealthCheckResponse| {
                    let now = Instant::now();
                    let t = {
                        let mut health = router.inner.health.lock().expect("health");
                        let h = health.entry(node).or_default();
                        if r.status == ServingStatus::Serving as i32 {
                            h.serving(now, &router.inner.policy)
                        } else {
                            h.not_serving()
                        }
                    };
                    router.transition(node, t);
                };
                match follow(&mut stream.into_inner(), &mut stop, each).await {
                    Some(why) => why,
                    None => return,
                }
            }
            Err(e) => e.message().to_string(),
        };
        let t = router.inner.health.lock().expect("health").entry(node).or_default().lost(&why);
        router.transition(node, t);
        if wait_or_stop(&mut stop, FEED_RETRY_MS).await {
            return;
        }
    }
}

/// Brings nodes back into rotation once their rise time has passed.
async fn ticker(router: Router, mut stop: watch::Receiver<bool>) {
    loop {
        if wait_or_stop(&mut stop, TICK_MS).await {
            return;
        }
        let now = Instant::now();
        let changes: Vec<(NodeId, Option<Transition>)> = {
            let mut health = router.inner.health.lock().expect("health");
            health.iter_mut().map(|(id, h)| (*id, h.tick(now, &router.inner.policy))).collect()
        };
        for (id, t) in changes {
            router.transition(id, t);
        }
    }
}
