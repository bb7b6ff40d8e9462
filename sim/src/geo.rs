//! Multi-region experiments under emulated inter-region latency: commit latency per shard, and
//! recovery time (RTO) after losing a leader or a whole region.
//!
//! The cluster is what `walletd start --topology` builds: three regions of two nodes (one per
//! zone), each shard placed by `ledger_core::placement` on three voters in three regions,
//! bootstrapped with only those voters, led from its home region, with Raft timing derived from
//! the RTTs. Inter-region links get half the RTT each way, links inside a region 1 ms. A
//! controller (1 ms from every node, like a gateway in each region) measures, in simulated
//! time:
//!
//! - **commit latency**: sequential writes to each shard's home leader; it should be about the
//!   RTT from the home region to the nearest other region holding a voter;
//! - **commit latency under load** (when asked): an open loop of writes at a fixed rate to
//!   shard 0, each timed from when it was due (no coordinated omission): what pipelined
//!   replication buys, since a write that arrives while an append is in flight either goes out
//!   at once (an ordered stream) or waits for that append's answer (one call at a time);
//! - **RTO**: from the fault (the home leader of shard 0 crashed, or every node of region `a`)
//!   to the first acknowledged write on each shard whose leader was lost;
//! - **no acknowledged write lost**: every write acknowledged before or after the fault is on
//!   every replica that has reached its sequence, once the lost nodes are back;
//! - **leaders return home**: how long after the lost nodes restart every shard is led from
//!   its home region again.
//!
//! The same seed gives the same run, so a slow trial can be replayed and inspected.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use ledger_core::placement::{NodeSpec, RegionSpec, Topology};
use ledger_core::{Amount, ClusterTime, Command, Currency, Outcome, PlayerId, Recall, TxId, shard_for_player};
use raft_ledger::client::{ClientError, ClientOptions, LedgerClient};
use raft_ledger::net::env::{Listener, Net};
use raft_ledger::node::{LedgerNode, NodeConfig, NodeEnv};
use raft_ledger::raft::{NodeId, seed_thread_rng};

const PORT: u16 = 9000;
const EPOCH_MS: u64 = 1_800_000_000_000;
const REGIONS: [&str; 3] = ["a", "b", "c"];

/// What is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeoFault {
    /// The node leading shard 0 (in its home region) crashes.
    LeaderCrash,
    /// Both nodes of region `a` crash.
    RegionLoss,
}

/// One experiment.
#[derive(Debug, Clone)]
pub struct GeoConfig {
    /// Seeds turmoil and openraft's election timers.
    pub seed: u64,
    /// Round-trip times a–b, a–c, b–c, in ms.
    pub rtt_ms: [u64; 3],
    /// Shards (homes are dealt a, b, c, a, ...).
    pub shards: u32,
    /// Sequential writes per shard for the latency measurement.
    pub writes: u32,
    /// The fault.
    pub fault: GeoFault,
    /// Open-loop writes per second to shard 0 after the sequential ones; 0: none.
    pub rate: u32,
    /// How many open-loop writes.
    pub load_writes: u32,
    /// `NodeConfig::appends_in_flight` on every node.
    pub appends_in_flight: usize,
    /// Round-trip time every inter-region link takes beyond `rtt_ms`, which is all the nodes
    /// are told (their heartbeats, elections and deadlines derive from it): a network slower
    /// than planned.
    pub extra_rtt_ms: u64,
}

/// Commit latency of one shard, led from home.
#[derive(Debug, Clone)]
pub struct ShardLatency {
    /// The shard.
    pub shard: u32,
    /// Its home region.
    pub home: String,
    /// RTT from the home region to the nearest other region holding one of the shard's voters.
    pub nearest_quorum_rtt_ms: u64,
    /// Median write latency seen by the controller (1 ms from the leader each way).
    pub p50_ms: u64,
    /// Slowest write.
    pub max_ms: u64,
}

/// What an experiment measured.
#[derive(Debug, Clone, Default)]
pub struct GeoReport {
    /// Per shard, before the fault.
    pub latency: Vec<ShardLatency>,
    /// The open loop's latencies in ms (shard 0, from each write's due time), before the fault.
    pub load_ms: Vec<u64>,
    /// Per shard that lost its leader: ms from the fault to its first acknowledged write.
    pub rto_ms: BTreeMap<u32, u64>,
    /// Per shard that lost its leader: ms from the fault until a new leader was elected.
    pub elected_ms: BTreeMap<u32, u64>,
    /// Shards that lost their leader and elected one in another region.
    pub reelected_elsewhere: Vec<u32>,
    /// Writes acknowledged over the whole run.
    pub acked: usize,
    /// Acknowledged writes missing from a replica that reached their sequence.
    pub lost: Vec<String>,
    /// ms from restarting the lost nodes until every shard was led from home again.
    pub home_again_ms: Option<u64>,
    /// Why the run did not complete, if it did not.
    pub error: Option<String>,
}

impl GeoConfig {
    /// The topology: regions a, b, c with nodes 1–2, 3–4, 5–6, one zone each.
    pub fn topology(&self) -> Topology {
        let regions = REGIONS
            .iter()
            .enumerate()
            .map(|(r, name)| RegionSpec {
                name: (*name).to_string(),
                nodes: (1..=2)
                    .map(|k| {
                        let id = (r * 2 + k) as NodeId;
                        NodeSpec { id, addr: format!("n{id}:{PORT}"), zone: format!("{name}{k}"), api: None }
                    })
                    .collect(),
            })
            .collect();
        let [ab, ac, bc] = self.rtt_ms;
        let rtt_ms = BTreeMap::from([("a/b".to_string(), ab), ("a/c".to_string(), ac), ("b/c".to_string(), bc)]);
        Topology { shards: self.shards, replication: 3, regions, rtt_ms }
    }
}

#[derive(Default)]
struct Shared {
    nodes: BTreeMap<NodeId, LedgerNode>,
    /// Hosts the controller wants crashed, and when that happened (sim ms).
    crash: Option<Vec<String>>,
    crashed_at: Option<Duration>,
    /// Hosts the controller wants restarted.
    restart: Option<Vec<String>>,
    restarted_at: Option<Duration>,
    report: Option<GeoReport>,
}

type SharedRef = Rc<RefCell<Shared>>;

async fn run_node(topo: Topology, id: NodeId, appends_in_flight: usize, shared: SharedRef) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let info = topo.node_info(id).expect("node in topology");
    let mut config = NodeConfig::new(id, info, "/data", topo.shards);
    config.place(&topo);
    config.appends_in_flight = appends_in_flight;
    config.tick_interval = Duration::from_millis(200);
    let node =
        LedgerNode::start(config, NodeEnv::turmoil(ClusterTime::from_millis(EPOCH_MS), crate::run::cluster_key()))
            .await?;
    node.bootstrap_placed(&topo.bootstrap_plan()).await?;
    shared.borrow_mut().nodes.insert(id, node.clone());
    node.serve(Listener::Turmoil(listener)).await?;
    Ok(())
}

/// Each shard's leader (highest term) among running nodes.
fn leaders(shared: &SharedRef) -> BTreeMap<u32, (u64, NodeId)> {
    let mut out: BTreeMap<u32, (u64, NodeId)> = BTreeMap::new();
    for (id, node) in &shared.borrow().nodes {
        for s in node.status().shards.into_iter().filter(|s| s.state == raft_ledger::api::ReplicaRole::Leader) {
            if out.get(&s.shard).is_none_or(|(term, _)| *term < s.term) {
                out.insert(s.shard, (s.term, *id));
            }
        }
    }
    out
}

fn all_home(topo: &Topology, shared: &SharedRef) -> bool {
    let homes = topo.homes();
    let l = leaders(shared);
    (0..topo.shards).all(|s| l.get(&s).and_then(|(_, id)| topo.region_of(*id)) == homes.get(&s).map(|h| h.as_str()))
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

async fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let until = now() + limit;
    while now() < until {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ok()
}

fn eur() -> Currency {
    Currency::new("EUR").expect("EUR")
}

/// A player living in each shard.
fn players(shards: u32) -> BTreeMap<u32, PlayerId> {
    let mut out = BTreeMap::new();
    for i in 0.. {
        let p = PlayerId::new(format!("geo-{i}")).expect("player id");
        out.entry(shard_for_player(&p, shards).0).or_insert(p);
        if out.len() as u32 == shards {
            break;
        }
    }
    out
}

/// An acknowledged write: shard, transaction, sequence.
type Ack = (u32, TxId, u64);

async fn write(client: &LedgerClient, player: &PlayerId, tx: String, acks: &mut Vec<Ack>) -> Result<(), String> {
    let shard = shard_for_player(player, client.shard_count()).0;
    let tx = TxId::new(tx).map_err(|e| e.to_string())?;
    let cmd = Command::Deposit {
        tx: tx.clone(),
        player: player.clone(),
        currency: eur(),
        amount: Amount::new(1).expect("amount"),
    };
    loop {
        match client.submit(cmd.clone()).await {
            Ok(Outcome::Applied(r) | Outcome::Duplicate(r)) => {
                acks.push((shard, tx, r.seq.unwrap_or(0)));
                return Ok(());
            }
            Ok(other) => return Err(format!("{tx}: {other:?}")),
            // Same id: at most one application, whatever happened to earlier attempts.
            Err(ClientError::Indeterminate(..)) => continue,
            Err(e) => return Err(format!("{tx}: {e}")),
        }
    }
}

async fn controller(cfg: GeoConfig, shared: SharedRef) -> Result<GeoReport, String> {
    let topo = cfg.topology();
    let addrs: Vec<String> = (1..=6).map(|id| format!("n{id}:{PORT}")).collect();
    // Short per-call timeouts: a call to a dead node must not hide how fast the cluster recovers.
    let slowest = cfg.rtt_ms.iter().copied().max().unwrap_or(0) + cfg.extra_rtt_ms;
    let options = ClientOptions {
        net: Net::Turmoil,
        request_timeout: Duration::from_millis((3 * slowest).max(150)),
        deadline: Duration::from_millis(2000),
        ..ClientOptions::new(crate::run::cluster_key())
    };
    let client = LedgerClient::connect(addrs, options).await.map_err(|e| e.to_string())?;
    if !wait_until(Duration::from_secs(60), || all_home(&topo, &shared)).await {
        return Err("shards were not all led from home within 60 s".into());
    }
    let players = players(cfg.shards);
    let mut acks: Vec<Ack> = Vec::new();
    let mut report = GeoReport::default();
    for (shard, p) in &players {
        let open = Command::OpenAccount {
            tx: TxId::new(format!("open-{shard}")).expect("id"),
            player: p.clone(),
            currency: eur(),
        };
        let mut tries = 0;
        while !matches!(client.submit(open.clone()).await, Ok(Outcome::Applied(_) | Outcome::Duplicate(_))) {
            tries += 1;
            if tries == 20 {
                return Err(format!("shard {shard}: cannot open a wallet"));
            }
        }
    }
    // Commit latency, one shard at a time, sequential writes.
    let plan = topo.place();
    for (shard, p) in &players {
        let mut samples = Vec::new();
        for i in 0..cfg.writes {
            let started = now();
            write(&client, p, format!("lat-{shard}-{i}"), &mut acks).await?;
            samples.push((now() - started).as_millis() as u64);
        }
        samples.sort_unstable();
        let placed = &plan[*shard as usize];
        let nearest = placed
            .voters
            .iter()
            .filter_map(|v| topo.region_of(*v))
            .filter(|r| *r != placed.home)
            .filter_map(|r| topo.rtt(&placed.home, r))
            .min()
            .unwrap_or(0);
        report.latency.push(ShardLatency {
            shard: *shard,
            home: placed.home.clone(),
            nearest_quorum_rtt_ms: nearest,
            p50_ms: samples[samples.len() / 2],
            max_ms: *samples.last().unwrap_or(&0),
        });
    }

    let client = std::sync::Arc::new(client);
    if cfg.rate > 0 {
        let (ms, mine) = open_loop(&client, &players[&0], cfg.rate, cfg.load_writes).await?;
        report.load_ms = ms;
        acks.extend(mine);
    }

    // The fault.
    let before = leaders(&shared);
    let hosts: Vec<String> = match cfg.fault {
        GeoFault::LeaderCrash => vec![format!("n{}", before.get(&0).ok_or("shard 0 has no leader")?.1)],
        GeoFault::RegionLoss => vec!["n1".into(), "n2".into()],
    };
    let lost_ids: Vec<NodeId> = hosts.iter().map(|h| h[1..].parse().expect("n<id>")).collect();
    let affected: Vec<u32> = before.iter().filter(|(_, (_, id))| lost_ids.contains(id)).map(|(s, _)| *s).collect();
    shared.borrow_mut().crash = Some(hosts.clone());
    while shared.borrow().crashed_at.is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let fault_at = shared.borrow().crashed_at.expect("set");
    // Probe every affected shard at once: each retries one write until it is acknowledged.
    let probes: Vec<_> = affected
        .iter()
        .map(|shard| {
            let (client, p, shard) = (client.clone(), players[shard].clone(), *shard);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                write(&client, &p, format!("rto-{shard}"), &mut mine).await?;
                Ok::<_, String>((shard, (now() - fault_at).as_millis() as u64, mine))
            })
        })
        .collect();
    // Meanwhile, note when each affected shard has a leader again: RTO minus that is the time
    // clients need to find it.
    while !probes.iter().all(|p| p.is_finished()) {
        let now_leaders = leaders(&shared);
        for shard in &affected {
            if !report.elected_ms.contains_key(shard)
                && now_leaders.get(shard).is_some_and(|(_, id)| !lost_ids.contains(id))
            {
                report.elected_ms.insert(*shard, (now() - fault_at).as_millis() as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for probe in probes {
        let (shard, ms, mine) = probe.await.map_err(|e| e.to_string())??;
        report.rto_ms.insert(shard, ms);
        acks.extend(mine);
    }
    let during = leaders(&shared);
    report.reelected_elsewhere =
        affected.iter().copied().filter(|s| during.get(s).is_some_and(|(_, id)| !lost_ids.contains(id))).collect();

    // The lost nodes come back; leadership should return home.
    shared.borrow_mut().restart = Some(hosts);
    while shared.borrow().restarted_at.is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let back_at = shared.borrow().restarted_at.expect("set");
    if wait_until(Duration::from_secs(120), || all_home(&topo, &shared)).await {
        report.home_again_ms = Some((now() - back_at).as_millis() as u64);
    }
    // A write on every shard after the return, then every acknowledgement on every replica.
    for (shard, p) in &players {
        write(&client, p, format!("after-{shard}"), &mut acks).await?;
    }
    wait_until(Duration::from_secs(30), || {
        let s = shared.borrow();
        acks.iter().all(|(shard, _, seq)| {
            plan[*shard as usize]
                .voters
                .iter()
                .all(|v| s.nodes.get(v).and_then(|n| n.head(*shard)).is_some_and(|h| h.0 >= *seq))
        })
    })
    .await;
    let s = shared.borrow();
    for (shard, tx, seq) in &acks {
        for v in &plan[*shard as usize].voters {
            let Some(node) = s.nodes.get(v) else { continue };
            match node.recall(*shard, tx) {
                Some((head, _)) if head < *seq => {
                    report.lost.push(format!("n{v} shard {shard}: {tx} at {seq} not reached (head {head})"))
                }
                Some((_, Some(Recall::Applied(Some(at))))) if at == *seq => {}
                other => {
                    report.lost.push(format!("n{v} shard {shard}: {tx} acknowledged at {seq}, replica has {other:?}"))
                }
            }
        }
    }
    report.acked = acks.len();
    Ok(report)
}

/// `writes` writes to `player`'s shard, one due every 1/`rate` s whether or not the ones before
/// were answered; each one's latency in ms from when it was due, and its acknowledgement.
async fn open_loop(
    client: &std::sync::Arc<LedgerClient>,
    player: &PlayerId,
    rate: u32,
    writes: u32,
) -> Result<(Vec<u64>, Vec<Ack>), String> {
    let every = Duration::from_nanos(1_000_000_000 / u64::from(rate));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(writes as usize);
    for i in 0..writes {
        let due = start + every * i;
        tokio::time::sleep_until(due).await;
        let (client, player) = (client.clone(), player.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            write(&client, &player, format!("load-{i}"), &mut mine).await?;
            Ok::<_, String>(((tokio::time::Instant::now() - due).as_millis() as u64, mine))
        }));
    }
    let (mut ms, mut acks) = (Vec::with_capacity(tasks.len()), Vec::new());
    for task in tasks {
        let (took, mine) = task.await.map_err(|e| e.to_string())??;
        ms.push(took);
        acks.extend(mine);
    }
    Ok((ms, acks))
}

/// Runs one experiment.
pub fn run_geo(cfg: &GeoConfig) -> GeoReport {
    seed_thread_rng(cfg.seed);
    let topo = cfg.topology();
    let shared: SharedRef = Rc::new(RefCell::new(Shared::default()));
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(Duration::from_secs(600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1))
        .build();
    for r in &topo.regions {
        for n in &r.nodes {
            let (topo, shared, id, appends) = (topo.clone(), shared.clone(), n.id, cfg.appends_in_flight);
            sim.host(format!("n{id}"), move || run_node(topo.clone(), id, appends, shared.clone()));
        }
    }
    {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        sim.client("ctl", async move {
            let result = controller(cfg, shared.clone()).await;
            let report = result.unwrap_or_else(|e| GeoReport { error: Some(e), ..GeoReport::default() });
            shared.borrow_mut().report = Some(report);
            Ok(())
        });
    }
    for a in &topo.regions {
        for b in &topo.regions {
            for x in &a.nodes {
                for y in &b.nodes {
                    if x.id < y.id {
                        let rtt = topo.rtt(&a.name, &b.name).map(|r| r + cfg.extra_rtt_ms);
                        let one_way = rtt.unwrap_or(2).max(2) / 2;
                        sim.set_link_latency(
                            format!("n{}", x.id),
                            format!("n{}", y.id),
                            Duration::from_millis(one_way),
                        );
                    }
                }
            }
        }
    }
    loop {
        let done = match sim.step() {
            Ok(done) => done,
            Err(e) => {
                return GeoReport { error: Some(e.to_string()), ..GeoReport::default() };
            }
        };
        let crash = shared.borrow_mut().crash.take();
        if let Some(hosts) = crash {
            for h in &hosts {
                sim.crash(h.as_str());
                let id: NodeId = h[1..].parse().expect("n<id>");
                shared.borrow_mut().nodes.remove(&id);
            }
            shared.borrow_mut().crashed_at = Some(sim.elapsed());
        }
        let restart = shared.borrow_mut().restart.take();
        if let Some(hosts) = restart {
            for h in &hosts {
                sim.bounce(h.as_str());
            }
            shared.borrow_mut().restarted_at = Some(sim.elapsed());
        }
        if done || shared.borrow().report.is_some() {
            break;
        }
    }
    let report = shared.borrow_mut().report.take();
    report.unwrap_or_else(|| GeoReport { error: Some("the simulation ended first".into()), ..GeoReport::default() })
}

/// The quantile `permille`/1000 of `samples`, by nearest rank.
pub fn quantile(samples: &[u64], permille: usize) -> u64 {
    let mut s = samples.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return 0;
    }
    let rank = (permille * s.len()).div_ceil(1000).clamp(1, s.len());
    s[rank - 1]
}
