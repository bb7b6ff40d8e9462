//! One simulated run: real `LedgerNode`s on turmoil hosts (simulated network and disk), clients
//! driving a retrying workload, the fault schedule applied as simulated time passes, and the
//! checks run after every step. Everything that happens is folded into a trace hash, so two runs
//! of one config can be compared by one line.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ledger_core::{AccountKind, ClusterTime, Command, Outcome};
use raft_ledger::client::{ClientError, ClientOptions, LedgerClient};
use raft_ledger::net::env::{Listener, Net};
use raft_ledger::net::member::ClusterKey;
use raft_ledger::node::{LedgerNode, NodeConfig, NodeEnv};
use raft_ledger::raft::{NodeId, NodeInfo, seed_thread_rng};
use sha2::{Digest, Sha256};

use crate::config::{FaultKind, SimConfig, Target};
use crate::workload::{self, History};

const PORT: u16 = 9000;
const EPOCH_MS: u64 = 1_800_000_000_000;

/// A broken invariant, and where in the run it broke.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    /// Which check: `raft-two-leaders`, `chain-divergence`, `conservation`, `negative-balance`,
    /// `double-apply`, `lost-ack`, `stale-read`, `liveness`, `retry-mismatch`, `sim-error`.
    pub check: String,
    /// What exactly.
    pub detail: String,
    /// Simulation step.
    pub step: u64,
    /// Simulated milliseconds.
    pub at_ms: u64,
}

/// What a run ended with.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// SHA-256 over every event of the run.
    pub trace_hash: String,
    /// The first broken invariant, if any.
    pub violation: Option<Violation>,
    /// Steps taken.
    pub steps: u64,
    /// Simulated time at the end, ms.
    pub sim_ms: u64,
    /// Operations acknowledged / refused / left indeterminate.
    pub acked: usize,
    /// Definite refusals.
    pub refused: usize,
    /// Outcomes never learned.
    pub indeterminate: usize,
    /// Events folded into the trace.
    pub events: u64,
    /// With the state on disk: bytes in the store's files when the run ended (0 in memory).
    pub disk_bytes: u64,
}

/// State shared by the driver, the node hosts and the clients. Turmoil runs all of them on one
/// thread, one at a time, so a `RefCell` suffices and every interleaving is the seed's.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) nodes: BTreeMap<NodeId, LedgerNode>,
    trace: Sha256,
    events: u64,
    pub(crate) history: History,
    pub(crate) clients_done: u32,
    pub(crate) audit_done: bool,
    pub(crate) violation: Option<(String, String)>,
    /// With `disk_state`: the run's directory of real files, one subdirectory per node.
    pub(crate) disk_root: Option<std::path::PathBuf>,
}

impl Shared {
    pub(crate) fn event(&mut self, line: &str) {
        self.trace.update(line.as_bytes());
        self.trace.update(b"\n");
        self.events += 1;
    }

    pub(crate) fn violate(&mut self, check: &str, detail: String) {
        if self.violation.is_none() {
            self.event(&format!("VIOLATION {check}: {detail}"));
            self.violation = Some((check.to_string(), detail));
        }
    }
}

pub(crate) type SharedRef = Rc<RefCell<Shared>>;

fn members(cfg: &SimConfig) -> BTreeMap<NodeId, NodeInfo> {
    cfg.nodes
        .iter()
        .map(|n| {
            let info = NodeInfo::new(format!("{}:{PORT}", n.host()), cfg.regions[n.region].clone(), n.zone.clone());
            (n.id, info)
        })
        .collect()
}

/// Node addresses, for clients.
pub(crate) fn addrs(cfg: &SimConfig) -> Vec<String> {
    members(cfg).values().map(|m| m.addr.clone()).collect()
}

/// Client options inside the simulation.
pub(crate) fn client_options() -> ClientOptions {
    ClientOptions {
        net: Net::Turmoil,
        request_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(4),
        ..ClientOptions::new(cluster_key())
    }
}

/// The simulated cluster's key: fixed, since a run draws nothing from outside its seed.
pub(crate) fn cluster_key() -> ClusterKey {
    ClusterKey::from_secret(b"the simulator's cluster key, 32+ bytes").expect("long enough")
}

async fn run_node(cfg: Arc<SimConfig>, id: NodeId, shared: SharedRef) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let m = members(&cfg);
    let disk_root = shared.borrow().disk_root.clone();
    let mut config = match disk_root {
        // fjall writes real files, so each node needs a directory of its own (the simulated
        // file system keeps the write-ahead log and journals per host under the same path).
        Some(root) => {
            let mut c = NodeConfig::new(id, m[&id].clone(), root.join(format!("n{id}")), cfg.shards);
            c.state = raft_ledger::node::StateStorage::Disk { cache_bytes: 1 << 20 };
            c
        }
        None => NodeConfig::new(id, m[&id].clone(), "/data", cfg.shards),
    };
    config.rtt_ms = cfg.rtt_ms;
    config.tick_interval = Duration::from_millis(200);
    config.snapshot_every = 20;
    config.logs_kept_after_snapshot = 5;
    // No log entry held in memory once durable, so applies, lagging followers and replays after
    // crashes read entries back from the write-ahead log's segments, under the disk faults.
    config.log_cache_bytes = 0;
    // Small pieces, so a snapshot sent to a lagging replica takes several calls and the
    // simulator's partitions and crashes cut transfers midway (they must resume).
    config.snapshot_piece_bytes = 4096;
    let mut env = NodeEnv::turmoil(ClusterTime::from_millis(EPOCH_MS), cluster_key());
    if let Some(bug) = cfg.plant.as_deref().and_then(|p| crate::planted::bug(p).ok()) {
        env = crate::planted::plant(env, bug);
    }
    let node = LedgerNode::start(config, env).await?;
    // Every node bootstraps with the same members: only never-initialized shards take it.
    node.bootstrap(&m).await?;
    shared.borrow_mut().nodes.insert(id, node.clone());
    node.serve(Listener::Turmoil(listener)).await?;
    Ok(())
}

/// What the driver knows about links and crashes, to apply and heal faults.
struct Faults {
    crashed: BTreeSet<String>,
    cut: BTreeSet<(String, String)>,
    slowed: bool,
}

fn hosts_of(cfg: &SimConfig, shared: &SharedRef, t: &Target) -> Vec<String> {
    match t {
        Target::Node(id) => vec![format!("n{id}")],
        Target::Region(r) => cfg.nodes.iter().filter(|n| n.region == *r).map(|n| n.host()).collect(),
        Target::Zone(z) => cfg.nodes.iter().filter(|n| &n.zone == z).map(|n| n.host()).collect(),
        Target::All => cfg.nodes.iter().map(|n| n.host()).collect(),
        Target::LeaderOf(shard) => {
            // The leader with the highest term among running nodes; the lowest id if none leads.
            let s = shared.borrow();
            let mut best: Option<(u64, NodeId)> = None;
            for (id, node) in &s.nodes {
                if let Some(st) = node.status().shards.iter().find(|x| x.shard == *shard)
                    && st.state == raft_ledger::api::ReplicaRole::Leader
                    && best.is_none_or(|(term, _)| st.term > term)
                {
                    best = Some((st.term, *id));
                }
            }
            let id = best.map(|(_, id)| id).or_else(|| s.nodes.keys().next().copied()).unwrap_or(1);
            vec![format!("n{id}")]
        }
    }
}

fn latency(cfg: &SimConfig, a: usize, b: usize) -> Duration {
    let ms = if a == b { cfg.local_latency_ms } else { cfg.region_latency_ms[a][b] };
    Duration::from_millis(ms)
}

fn client_region(i: u32) -> usize {
    i as usize % 3
}

fn set_latencies(sim: &turmoil::Sim<'_>, cfg: &SimConfig) {
    for a in &cfg.nodes {
        for b in &cfg.nodes {
            if a.id < b.id {
                sim.set_link_latency(a.host(), b.host(), latency(cfg, a.region, b.region));
            }
        }
        for c in 0..=cfg.clients {
            sim.set_link_latency(a.host(), format!("c{c}"), latency(cfg, a.region, client_region(c)));
        }
    }
}

fn apply(sim: &mut turmoil::Sim<'_>, cfg: &SimConfig, shared: &SharedRef, f: &mut Faults, kind: &FaultKind) -> String {
    let mut cut = |sim: &turmoil::Sim<'_>, a: &[String], b: &[String], oneway: bool| {
        for x in a {
            for y in b {
                if x != y {
                    if oneway {
                        sim.partition_oneway(x.as_str(), y.as_str());
                    } else {
                        sim.partition(x.as_str(), y.as_str());
                    }
                    f.cut.insert((x.clone(), y.clone()));
                }
            }
        }
    };
    match kind {
        FaultKind::Crash(t) => {
            let hosts = hosts_of(cfg, shared, t);
            for h in &hosts {
                if f.crashed.insert(h.clone()) {
                    sim.crash(h.as_str());
                    let id: NodeId = h[1..].parse().expect("node host names are n<id>");
                    shared.borrow_mut().nodes.remove(&id);
                }
            }
            format!("crash {}", hosts.join(","))
        }
        FaultKind::Restart(t) => {
            let hosts: Vec<String> = hosts_of(cfg, shared, t).into_iter().filter(|h| f.crashed.contains(h)).collect();
            for h in &hosts {
                f.crashed.remove(h);
                sim.bounce(h.as_str());
            }
            format!("restart {}", hosts.join(","))
        }
        FaultKind::Partition(a, b) => {
            let (a, b) = (hosts_of(cfg, shared, a), hosts_of(cfg, shared, b));
            cut(sim, &a, &b, false);
            format!("partition {} | {}", a.join(","), b.join(","))
        }
        FaultKind::OneWay(a, b) => {
            let (a, b) = (hosts_of(cfg, shared, a), hosts_of(cfg, shared, b));
            cut(sim, &a, &b, true);
            format!("one-way {} -> {}", a.join(","), b.join(","))
        }
        FaultKind::Bridge(a, b, bridge) => {
            let bridge = format!("n{bridge}");
            let a: Vec<String> = hosts_of(cfg, shared, a).into_iter().filter(|h| *h != bridge).collect();
            let b: Vec<String> = hosts_of(cfg, shared, b).into_iter().filter(|h| *h != bridge).collect();
            cut(sim, &a, &b, false);
            format!("bridge {} | {} through {bridge}", a.join(","), b.join(","))
        }
        FaultKind::Slow(t, ms) => {
            let hosts = hosts_of(cfg, shared, t);
            for h in &hosts {
                for other in cfg.nodes.iter().map(|n| n.host()).chain((0..=cfg.clients).map(|c| format!("c{c}"))) {
                    if *h != other {
                        sim.set_link_latency(h.as_str(), other, Duration::from_millis(*ms));
                    }
                }
            }
            f.slowed = true;
            format!("slow {} by {ms} ms", hosts.join(","))
        }
        FaultKind::Heal => {
            for (x, y) in std::mem::take(&mut f.cut) {
                sim.repair(x.as_str(), y.as_str());
            }
            if std::mem::take(&mut f.slowed) {
                set_latencies(sim, cfg);
            }
            "heal".to_string()
        }
    }
}

/// Per-step checks over every running replica's in-memory state.
struct Checker {
    /// History entries already checked against every replica.
    acks_checked: usize,
    /// The hash each shard's chain has at each sequence, as first seen on any replica.
    canonical: BTreeMap<(u32, u64), [u8; 32]>,
    /// The leader seen for each (shard, term).
    leaders: BTreeMap<(u32, u64), NodeId>,
    /// The head each replica had at the last check.
    heads: BTreeMap<(NodeId, u32), (u64, [u8; 32])>,
}

impl Checker {
    /// Every acknowledged command whose entry a replica's chain has reached must be remembered
    /// there, applied at the acknowledged sequence: an acknowledged write is never lost, and a
    /// second application would have moved its record.
    fn check_acks(shared: &SharedRef, id: NodeId, node: &LedgerNode, ops: &[workload::Op]) {
        for op in ops {
            let workload::Known::Applied(Some(seq)) = op.known else { continue };
            let Some((head, recalled)) = node.recall(op.shard, op.cmd.tx()) else { continue };
            if head < seq || recalled == Some(ledger_core::Recall::Applied(Some(seq))) {
                continue;
            }
            let check = if recalled.is_none() { "lost-ack" } else { "double-apply" };
            shared.borrow_mut().violate(
                check,
                format!(
                    "n{id} shard {}: {} acknowledged at seq {seq}, replica (head {head}) has {recalled:?}",
                    op.shard,
                    op.cmd.tx()
                ),
            );
            return;
        }
    }

    fn check(&mut self, cfg: &SimConfig, shared: &SharedRef) {
        let nodes: Vec<(NodeId, LedgerNode)> = shared.borrow().nodes.iter().map(|(i, n)| (*i, n.clone())).collect();
        // Commands acknowledged since the last step, against every running replica.
        let fresh: Vec<workload::Op> = shared.borrow().history.ops[self.acks_checked..].to_vec();
        self.acks_checked += fresh.len();
        for (id, node) in &nodes {
            Self::check_acks(shared, *id, node, &fresh);
        }
        for (id, node) in nodes {
            for st in node.status().shards {
                if st.state == raft_ledger::api::ReplicaRole::Leader {
                    let prev = *self.leaders.entry((st.shard, st.term)).or_insert(id);
                    if prev != id {
                        shared.borrow_mut().violate(
                            "raft-two-leaders",
                            format!("shard {} term {} has leaders n{prev} and n{id}", st.shard, st.term),
                        );
                    }
                }
            }
            for shard in 0..cfg.shards {
                let Some(head) = node.head(shard) else { continue };
                if self.heads.get(&(id, shard)) == Some(&head) {
                    continue;
                }
                self.heads.insert((id, shard), head);
                // The replica's chain moved (or restarted): every acknowledgement again.
                let all: Vec<workload::Op> =
                    shared.borrow().history.ops.iter().filter(|o| o.shard == shard).cloned().collect();
                Self::check_acks(shared, id, &node, &all);
                shared.borrow_mut().event(&format!("n{id} s{shard} head {} {}", head.0, hex::encode(&head.1[..6])));
                if head.0 > 0 {
                    let seen = *self.canonical.entry((shard, head.0)).or_insert(head.1);
                    if seen != head.1 {
                        shared.borrow_mut().violate(
                            "chain-divergence",
                            format!("shard {shard} entry {} differs on n{id} from another replica", head.0),
                        );
                    }
                }
                let balances = node.balances(shard).unwrap_or_default();
                let mut sums: BTreeMap<String, i128> = BTreeMap::new();
                for (account, b) in &balances {
                    *sums.entry(account.currency().code().to_string()).or_default() += i128::from(b.posted);
                    if account.kind() == AccountKind::Player && (b.posted < 0 || b.available() < 0 || b.held < 0) {
                        shared.borrow_mut().violate(
                            "negative-balance",
                            format!("n{id} shard {shard} {account}: posted {} held {}", b.posted, b.held),
                        );
                    }
                }
                for (currency, sum) in sums {
                    if sum != 0 {
                        shared.borrow_mut().violate(
                            "conservation",
                            format!("n{id} shard {shard}: {currency} balances sum to {sum}, not 0"),
                        );
                    }
                }
            }
        }
    }
}

/// Runs `cfg` to the end (or `max_steps`), checking after every step.
pub fn run(cfg: &SimConfig, max_steps: Option<u64>) -> RunReport {
    seed_thread_rng(cfg.seed);
    let cfg = Arc::new(cfg.clone());
    let shared: SharedRef = Rc::new(RefCell::new(Shared::default()));
    // Removed when the run ends (after the simulation, and every node in it, is dropped).
    let disk_root = cfg.disk_state.then(|| {
        tempfile::Builder::new().prefix("sim-state-").tempdir().expect("a temporary directory for the on-disk state")
    });
    shared.borrow_mut().disk_root = disk_root.as_ref().map(|d| d.path().to_path_buf());
    let horizon = cfg.last_fault_ms() + cfg.liveness_ms + 120_000;
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(Duration::from_millis(horizon))
        .min_message_latency(Duration::from_millis(cfg.local_latency_ms))
        .max_message_latency(Duration::from_millis(cfg.local_latency_ms))
        .build();
    for n in &cfg.nodes {
        let (cfg, shared, id) = (cfg.clone(), shared.clone(), n.id);
        sim.host(n.host(), move || run_node(cfg.clone(), id, shared.clone()));
    }
    for c in 1..=cfg.clients {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        sim.client(format!("c{c}"), async move {
            workload::client(cfg, c, shared).await;
            Ok(())
        });
    }
    {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        sim.client("c0", async move {
            workload::audit(cfg, shared).await;
            Ok(())
        });
    }
    set_latencies(&sim, &cfg);
    let mut faults = Faults { crashed: BTreeSet::new(), cut: BTreeSet::new(), slowed: false };
    let mut checker =
        Checker { acks_checked: 0, canonical: BTreeMap::new(), leaders: BTreeMap::new(), heads: BTreeMap::new() };
    let mut next_fault = 0;
    let mut steps = 0u64;
    let mut violation = None;
    loop {
        steps += 1;
        let done = match sim.step() {
            Ok(done) => done,
            Err(e) => {
                shared.borrow_mut().violate("sim-error", e.to_string());
                true
            }
        };
        let now_ms = sim.elapsed().as_millis() as u64;
        while next_fault < cfg.faults.len() && cfg.faults[next_fault].at_ms <= now_ms {
            let what = apply(&mut sim, &cfg, &shared, &mut faults, &cfg.faults[next_fault].kind);
            shared.borrow_mut().event(&format!("{now_ms} ms fault: {what}"));
            next_fault += 1;
        }
        checker.check(&cfg, &shared);
        if let Some((check, detail)) = shared.borrow().violation.clone() {
            violation = Some(Violation { check, detail, step: steps, at_ms: now_ms });
        }
        if violation.is_some() || done || max_steps.is_some_and(|m| steps >= m) {
            break;
        }
    }
    let s = shared.borrow();
    let sim_ms = sim.elapsed().as_millis() as u64;
    if violation.is_none() && max_steps.is_none_or(|m| steps < m) && !s.audit_done {
        violation = Some(Violation {
            check: "liveness".into(),
            detail: "the run ended before the final audit finished".into(),
            step: steps,
            at_ms: sim_ms,
        });
    }
    let (acked, refused, indeterminate) = s.history.counts();
    let mut report = RunReport {
        trace_hash: hex::encode(s.trace.clone().finalize()),
        violation,
        steps,
        sim_ms,
        acked,
        refused,
        indeterminate,
        events: s.events,
        disk_bytes: 0,
    };
    drop(s);
    // Every node (and its open store) goes before the directory its store is in.
    shared.borrow_mut().nodes.clear();
    drop(sim);
    if let Some(dir) = disk_root {
        report.disk_bytes = bytes_under(dir.path());
    }
    report
}

/// The size of every file under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => bytes_under(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Submits `cmd` until the outcome is definite, at most `attempts` times.
pub(crate) async fn resolve(
    client: &LedgerClient,
    cmd: &Command,
    attempts: u32,
) -> Option<Result<Outcome, ClientError>> {
    for _ in 0..attempts {
        match client.submit(cmd.clone()).await {
            Err(ClientError::Indeterminate(..)) => continue,
            other => return Some(other),
        }
    }
    None
}
