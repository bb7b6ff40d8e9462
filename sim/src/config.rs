//! What a seed derives: the topology, link latencies, Raft timing, the workload and the fault
//! schedule. A [`SimConfig`] is plain data, written whole into crash files, so a shrunk run can
//! be replayed exactly without its seed's derivation.

use serde::{Deserialize, Serialize};

use crate::rng::SimRng;

/// The named scenarios, and `random`, a mix of them.
pub const SCENARIOS: &[&str] = &[
    "leader-crash",
    "zone-failure",
    "region-outage",
    "region-partition",
    "one-way-partition",
    "bridge",
    "isolate-leader",
    "flapping-link",
    "slow-node",
    "restart-all",
];

/// One simulated node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimNode {
    /// Raft node id.
    pub id: u64,
    /// Index into [`SimConfig::regions`].
    pub region: usize,
    /// Zone label, unique per region.
    pub zone: String,
}

impl SimNode {
    /// The turmoil host name.
    pub fn host(&self) -> String {
        format!("n{}", self.id)
    }
}

/// Which nodes a fault hits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Target {
    /// One node.
    Node(u64),
    /// Whoever leads the shard when the fault fires.
    LeaderOf(u32),
    /// Every node of a region.
    Region(usize),
    /// Every node of one zone.
    Zone(String),
    /// Every node.
    All,
}

/// One fault.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum FaultKind {
    /// Hard stop: unsynced writes are lost.
    Crash(Target),
    /// Start crashed nodes of the target again from their disks.
    Restart(Target),
    /// Cut every link between the two sides, both ways.
    Partition(Target, Target),
    /// Cut the links from the first side to the second only.
    OneWay(Target, Target),
    /// Cut the two sides apart except through `bridge`, which keeps links to both.
    Bridge(Target, Target, u64),
    /// Make every link of a node slow, in ms one way.
    Slow(Target, u64),
    /// Repair every link and restore latencies.
    Heal,
}

/// A fault and when it fires, in ms of simulated time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fault {
    /// Simulated milliseconds since the start.
    pub at_ms: u64,
    /// What happens.
    pub kind: FaultKind,
}

/// Everything a run does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimConfig {
    /// The seed it came from (also seeds turmoil and openraft).
    pub seed: u64,
    /// The scenario name.
    pub scenario: String,
    /// Region names.
    pub regions: Vec<String>,
    /// Nodes.
    pub nodes: Vec<SimNode>,
    /// Shards.
    pub shards: u32,
    /// One-way latency between regions, ms, indexed `[a][b]`.
    pub region_latency_ms: Vec<Vec<u64>>,
    /// One-way latency inside a region, ms.
    pub local_latency_ms: u64,
    /// Raft timing derives from this round-trip time.
    pub rtt_ms: u64,
    /// Concurrent clients.
    pub clients: u32,
    /// Operations per client.
    pub ops_per_client: u32,
    /// Percent of operations that deliberately reuse an earlier id with the same payload.
    pub reuse_same_pct: u64,
    /// Percent that reuse an earlier id with a different payload.
    pub reuse_other_pct: u64,
    /// Mean pause between a client's operations, ms, so the workload spans the faults.
    pub think_ms: u64,
    /// Faults in time order; a final `Heal` and restarts of everything come last.
    pub faults: Vec<Fault>,
    /// After the last fault, every shard must commit again within this many simulated ms.
    pub liveness_ms: u64,
    /// A known bug planted for the run (`ack-before-fsync`, `skip-idempotency`), for the
    /// simulator's own tests.
    #[serde(default)]
    pub plant: Option<String>,
    /// Shards keep their state on disk (`StateStorage::Disk`: fjall, in real files under a
    /// temporary directory of the run's own, one per node, kept across the node's crashes and
    /// restarts). fjall does its own file IO, so the simulator's disk faults reach the
    /// write-ahead log and journals but not the store; its crashes reach the store as a process
    /// crash does (what was written and not fsynced survives, as in the OS's page cache).
    #[serde(default)]
    pub disk_state: bool,
}

/// Longest one-way latency a scenario may give a link, ms.
const LATENCY_MS_MAX: u64 = 5_000;
/// Most shards a simulated cluster may have (each is a Raft group on every node).
const SHARDS_MAX: u32 = 16;

/// A scenario file as written: a [`SimConfig`], except that the cluster (regions, nodes,
/// latencies, shards) may come from a topology file instead, and the Raft RTT is derived.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    seed: u64,
    scenario: String,
    /// A `walletd` topology file (relative to the scenario file): regions, nodes with zones,
    /// shards and round-trip times. Replaces `regions`, `nodes`, `region_latency_ms` and `shards`.
    #[serde(default)]
    topology: Option<std::path::PathBuf>,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    nodes: Vec<SimNode>,
    #[serde(default)]
    shards: Option<u32>,
    #[serde(default)]
    region_latency_ms: Vec<Vec<u64>>,
    local_latency_ms: u64,
    /// Ignored if present: always derived from the latencies, so it cannot go stale.
    #[serde(default)]
    #[allow(dead_code)]
    rtt_ms: Option<u64>,
    clients: u32,
    ops_per_client: u32,
    reuse_same_pct: u64,
    reuse_other_pct: u64,
    think_ms: u64,
    faults: Vec<Fault>,
    liveness_ms: u64,
    #[serde(default)]
    plant: Option<String>,
    #[serde(default)]
    disk_state: bool,
}

/// Regions, nodes and one-way latencies from a topology file: each region-pair RTT halved.
fn cluster_from_topology(t: &ledger_core::placement::Topology) -> (Vec<String>, Vec<SimNode>, Vec<Vec<u64>>) {
    let regions: Vec<String> = t.regions.iter().map(|r| r.name.clone()).collect();
    let nodes = t
        .regions
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.nodes.iter().map(move |n| SimNode { id: n.id, region: i, zone: n.zone.clone() }))
        .collect();
    let n = regions.len();
    let mut lat = vec![vec![0; n]; n];
    for a in 0..n {
        for b in 0..n {
            if a != b {
                lat[a][b] = t.rtt(&regions[a], &regions[b]).unwrap_or(0).div_ceil(2).max(1);
            }
        }
    }
    (regions, nodes, lat)
}

/// The round-trip time Raft timing derives from: the slowest link, both ways.
fn rtt_of(region_latency_ms: &[Vec<u64>]) -> u64 {
    2 * region_latency_ms.iter().flatten().copied().max().unwrap_or(1).max(1)
}

pub use crate::planted::{PLANTABLE, bug};

fn pick_region(rng: &mut SimRng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

impl SimConfig {
    /// Derives a whole run from `seed` and a scenario name (or `random`).
    pub fn derive(seed: u64, scenario: &str) -> Result<Self, String> {
        // `all` spreads a sweep over every named scenario, one per seed.
        let scenario = if scenario == "all" { SCENARIOS[(seed % SCENARIOS.len() as u64) as usize] } else { scenario };
        if scenario != "random" && !SCENARIOS.contains(&scenario) {
            return Err(format!("unknown scenario {scenario:?}; one of: all, random, {}", SCENARIOS.join(", ")));
        }
        let mut rng = SimRng::fork(seed, 1);
        let regions: Vec<String> = ["eu", "us", "ap"].iter().map(|s| s.to_string()).collect();
        let mut nodes = Vec::new();
        for (r, name) in regions.iter().enumerate() {
            // Several nodes per region (two, sometimes three), each in its own zone.
            let per = 2 + u64::from(rng.below(4) == 0);
            for z in 0..per {
                let id = nodes.len() as u64 + 1;
                nodes.push(SimNode { id, region: r, zone: format!("{name}-{}", (b'a' + z as u8) as char) });
            }
        }
        let n = regions.len();
        let mut lat = vec![vec![0; n]; n];
        let pairs: Vec<(usize, usize)> = (0..n).flat_map(|a| ((a + 1)..n).map(move |b| (a, b))).collect();
        for (a, b) in pairs {
            let one_way = rng.range(15, 75);
            lat[a][b] = one_way;
            lat[b][a] = one_way;
        }
        // The slowest link a quorum may have to cross, both ways.
        let rtt_ms = rtt_of(&lat);
        let mut cfg = SimConfig {
            seed,
            scenario: scenario.to_string(),
            regions,
            nodes,
            shards: 1 + rng.below(2) as u32,
            region_latency_ms: lat,
            local_latency_ms: rng.range(1, 3),
            rtt_ms,
            clients: rng.range(2, 4) as u32,
            ops_per_client: rng.range(20, 40) as u32,
            reuse_same_pct: 5,
            reuse_other_pct: 3,
            think_ms: 0,
            faults: Vec::new(),
            liveness_ms: 30_000,
            plant: None,
            disk_state: false,
        };
        let mut frng = SimRng::fork(seed, 2);
        let names: Vec<&str> = if scenario == "random" {
            (0..2).map(|_| SCENARIOS[frng.below(SCENARIOS.len() as u64) as usize]).collect()
        } else {
            vec![scenario]
        };
        let mut t = 3_000 + frng.below(2_000);
        for name in names {
            t = cfg.schedule(name, t, &mut frng);
        }
        cfg.faults.sort_by_key(|f| f.at_ms);
        cfg.think_ms = t / u64::from(cfg.ops_per_client);
        cfg.faults.push(Fault { at_ms: t, kind: FaultKind::Heal });
        cfg.faults.push(Fault { at_ms: t, kind: FaultKind::Restart(Target::All) });
        Ok(cfg)
    }

    /// Appends one scenario's faults from time `t`; returns when the next may start.
    fn schedule(&mut self, name: &str, t: u64, rng: &mut SimRng) -> u64 {
        let shard = rng.below(u64::from(self.shards)) as u32;
        let hold = rng.range(3_000, 8_000);
        let region = pick_region(rng, self.regions.len());
        let others = |r: usize| (r + 1) % 3;
        let push = |faults: &mut Vec<Fault>, at_ms, kind| faults.push(Fault { at_ms, kind });
        let f = &mut self.faults;
        match name {
            "leader-crash" => {
                // Crash a leader, restart it, then crash whoever leads next.
                let victim = Target::LeaderOf(shard);
                push(f, t, FaultKind::Crash(victim));
                push(f, t + hold, FaultKind::Restart(Target::All));
                push(f, t + hold + 2_000, FaultKind::Crash(Target::LeaderOf(shard)));
                push(f, t + 2 * hold + 2_000, FaultKind::Restart(Target::All));
                t + 2 * hold + 4_000
            }
            "zone-failure" => {
                let n = &self.nodes[rng.below(self.nodes.len() as u64) as usize];
                push(f, t, FaultKind::Crash(Target::Zone(n.zone.clone())));
                push(f, t + hold, FaultKind::Restart(Target::All));
                t + hold + 2_000
            }
            "region-outage" => {
                push(f, t, FaultKind::Crash(Target::Region(region)));
                push(f, t + hold, FaultKind::Restart(Target::All));
                t + hold + 2_000
            }
            "region-partition" => {
                // One region against the other two: the minority side must not commit.
                let rest = others(region);
                push(f, t, FaultKind::Partition(Target::Region(region), Target::Region(rest)));
                push(f, t, FaultKind::Partition(Target::Region(region), Target::Region(others(rest))));
                push(f, t + hold, FaultKind::Heal);
                t + hold + 2_000
            }
            "one-way-partition" => {
                let from = Target::LeaderOf(shard);
                push(f, t, FaultKind::OneWay(from, Target::All));
                push(f, t + hold, FaultKind::Heal);
                t + hold + 2_000
            }
            "bridge" => {
                // Two sides that can only talk through one node.
                let bridge = self.nodes[rng.below(self.nodes.len() as u64) as usize].id;
                let a = Target::Region(region);
                let b = Target::Region(others(region));
                push(f, t, FaultKind::Bridge(a, b, bridge));
                push(f, t + hold, FaultKind::Heal);
                t + hold + 2_000
            }
            "isolate-leader" => {
                push(f, t, FaultKind::Partition(Target::LeaderOf(shard), Target::All));
                push(f, t + hold, FaultKind::Heal);
                t + hold + 2_000
            }
            "flapping-link" => {
                let a = Target::Region(region);
                let b = Target::Region(others(region));
                let mut at = t;
                for _ in 0..rng.range(3, 6) {
                    push(f, at, FaultKind::Partition(a.clone(), b.clone()));
                    let down = rng.range(200, 1_500);
                    push(f, at + down, FaultKind::Heal);
                    at += down + rng.range(200, 1_500);
                }
                at + 2_000
            }
            "slow-node" => {
                let n = self.nodes[rng.below(self.nodes.len() as u64) as usize].id;
                push(f, t, FaultKind::Slow(Target::Node(n), rng.range(200, 800)));
                push(f, t + hold, FaultKind::Heal);
                t + hold + 2_000
            }
            "restart-all" => {
                push(f, t, FaultKind::Crash(Target::All));
                push(f, t + rng.range(500, 3_000), FaultKind::Restart(Target::All));
                t + 6_000
            }
            _ => unreachable!("scenario names are checked in derive"),
        }
    }

    /// The derived configuration, one fact a line, printed at the start of a run.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![format!("seed {} scenario {}", self.seed, self.scenario)];
        for (r, name) in self.regions.iter().enumerate() {
            let zones: Vec<String> =
                self.nodes.iter().filter(|n| n.region == r).map(|n| format!("n{}@{}", n.id, n.zone)).collect();
            out.push(format!("region {name}: {}", zones.join(" ")));
        }
        let mut links = Vec::new();
        for a in 0..self.regions.len() {
            for b in (a + 1)..self.regions.len() {
                links.push(format!("{}-{} {} ms", self.regions[a], self.regions[b], self.region_latency_ms[a][b]));
            }
        }
        out.push(format!("one-way latency: local {} ms, {}", self.local_latency_ms, links.join(", ")));
        out.push(format!("shards {}, raft rtt {} ms (timeouts derive from it)", self.shards, self.rtt_ms));
        out.push(format!(
            "workload: {} clients x {} ops about {} ms apart, id reuse {}% same payload, {}% other payload",
            self.clients, self.ops_per_client, self.think_ms, self.reuse_same_pct, self.reuse_other_pct
        ));
        for f in &self.faults {
            out.push(format!("fault at {} ms: {:?}", f.at_ms, f.kind));
        }
        if let Some(p) = &self.plant {
            out.push(format!("PLANTED BUG: {p}"));
        }
        if self.disk_state {
            out.push("state on disk (fjall, real files)".into());
        }
        out
    }

    /// Reads a scenario file (JSON, as `--write-config` writes it): expands a `topology`,
    /// derives the Raft RTT from the latencies, and checks everything.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let at = |e: String| format!("{}: {e}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        let f: ScenarioFile = serde_json::from_str(&text).map_err(|e| at(e.to_string()))?;
        let (regions, nodes, region_latency_ms, shards) = match &f.topology {
            Some(t) => {
                if !f.regions.is_empty() || !f.nodes.is_empty() || !f.region_latency_ms.is_empty() {
                    return Err(at(
                        "give either `topology` or `regions`, `nodes` and `region_latency_ms`, not both".into()
                    ));
                }
                let t_path = path.parent().unwrap_or(std::path::Path::new(".")).join(t);
                let text = std::fs::read_to_string(&t_path).map_err(|e| format!("{}: {e}", t_path.display()))?;
                let topo: ledger_core::placement::Topology =
                    toml::from_str(&text).map_err(|e| format!("{}: {e}", t_path.display()))?;
                topo.validate().map_err(|e| format!("{}: {e}", t_path.display()))?;
                let (r, n, l) = cluster_from_topology(&topo);
                (r, n, l, f.shards.unwrap_or(topo.shards))
            }
            None => {
                (f.regions, f.nodes, f.region_latency_ms, f.shards.ok_or_else(|| at("`shards` is missing".into()))?)
            }
        };
        let rtt_ms = rtt_of(&region_latency_ms);
        let cfg = SimConfig {
            seed: f.seed,
            scenario: f.scenario,
            regions,
            nodes,
            shards,
            region_latency_ms,
            local_latency_ms: f.local_latency_ms,
            rtt_ms,
            clients: f.clients,
            ops_per_client: f.ops_per_client,
            reuse_same_pct: f.reuse_same_pct,
            reuse_other_pct: f.reuse_other_pct,
            think_ms: f.think_ms,
            faults: f.faults,
            liveness_ms: f.liveness_ms,
            plant: f.plant,
            disk_state: f.disk_state,
        };
        cfg.validate().map_err(at)?;
        Ok(cfg)
    }

    /// Checks a configuration, naming the first problem: everything a fault names exists, the
    /// latency matrix fits the regions, sizes are in bounds, and the schedule ends healed.
    pub fn validate(&self) -> Result<(), String> {
        let r = self.regions.len();
        if r < 3 {
            return Err(format!("a cluster needs at least 3 regions (clients are spread over three); it has {r}"));
        }
        let mut names = std::collections::BTreeSet::new();
        for name in &self.regions {
            if name.is_empty() || !names.insert(name) {
                return Err(format!("region names must be non-empty and distinct: {name:?}"));
            }
        }
        if self.nodes.len() < 3 {
            return Err(format!("a cluster needs at least 3 nodes; it has {}", self.nodes.len()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if n.id == 0 || !ids.insert(n.id) {
                return Err(format!("node ids must be positive and distinct: {}", n.id));
            }
            if n.region >= r {
                return Err(format!(
                    "node {} is in region {}, but there are only {r} regions (0..{})",
                    n.id,
                    n.region,
                    r - 1
                ));
            }
            if n.zone.is_empty() {
                return Err(format!("node {} has no zone", n.id));
            }
        }
        for region in 0..r {
            if !self.nodes.iter().any(|n| n.region == region) {
                return Err(format!("region {region} ({}) has no nodes", self.regions[region]));
            }
        }
        if self.region_latency_ms.len() != r || self.region_latency_ms.iter().any(|row| row.len() != r) {
            return Err(format!("region_latency_ms must be a {r}x{r} matrix, one row and column per region"));
        }
        for a in 0..r {
            for b in 0..r {
                let ms = self.region_latency_ms[a][b];
                if a != b && !(1..=LATENCY_MS_MAX).contains(&ms) {
                    return Err(format!(
                        "latency {}-{} is {ms} ms; it must be 1..={LATENCY_MS_MAX}",
                        self.regions[a], self.regions[b]
                    ));
                }
                if ms != self.region_latency_ms[b][a] {
                    return Err(format!("latency {}-{} differs by direction", self.regions[a], self.regions[b]));
                }
            }
        }
        if self.local_latency_ms > LATENCY_MS_MAX {
            return Err(format!("local_latency_ms must be at most {LATENCY_MS_MAX}"));
        }
        if !(1..=SHARDS_MAX).contains(&self.shards) {
            return Err(format!("shards must be 1..={SHARDS_MAX}, not {}", self.shards));
        }
        if self.clients == 0 || self.clients > 64 || self.ops_per_client == 0 || self.ops_per_client > 10_000 {
            return Err("clients must be 1..=64 and ops_per_client 1..=10000".into());
        }
        if self.reuse_same_pct + self.reuse_other_pct > 100 {
            return Err("reuse_same_pct + reuse_other_pct must be at most 100".into());
        }
        if self.liveness_ms == 0 {
            return Err("liveness_ms must be positive".into());
        }
        if let Some(p) = &self.plant {
            bug(p)?;
        }
        let target = |t: &Target| -> Result<(), String> {
            match t {
                Target::Node(id) if !ids.contains(id) => Err(format!("no node {id}")),
                Target::Region(i) if *i >= r => Err(format!("no region {i} (regions are 0..{})", r - 1)),
                Target::Zone(z) if !self.nodes.iter().any(|n| &n.zone == z) => Err(format!("no zone {z:?}")),
                Target::LeaderOf(s) if *s >= self.shards => {
                    Err(format!("no shard {s} (shards are 0..{})", self.shards - 1))
                }
                _ => Ok(()),
            }
        };
        let mut previous = 0;
        for (i, f) in self.faults.iter().enumerate() {
            let fail = |e: String| format!("fault {i} (at {} ms): {e}", f.at_ms);
            if f.at_ms < previous {
                return Err(fail("faults must be in time order".into()));
            }
            previous = f.at_ms;
            match &f.kind {
                FaultKind::Crash(t) | FaultKind::Restart(t) => target(t),
                FaultKind::Partition(a, b) | FaultKind::OneWay(a, b) => target(a).and(target(b)),
                FaultKind::Bridge(a, b, n) => target(a).and(target(b)).and(if ids.contains(n) {
                    Ok(())
                } else {
                    Err(format!("no bridge node {n}"))
                }),
                FaultKind::Slow(t, ms) if *ms > LATENCY_MS_MAX => {
                    target(t).and(Err(format!("slow by {ms} ms; at most {LATENCY_MS_MAX}")))
                }
                FaultKind::Slow(t, _) => target(t),
                FaultKind::Heal => Ok(()),
            }
            .map_err(fail)?;
        }
        let n = self.faults.len();
        let healed = n >= 2
            && matches!(self.faults[n - 2].kind, FaultKind::Heal)
            && matches!(self.faults[n - 1].kind, FaultKind::Restart(Target::All));
        if !healed {
            return Err("the schedule must end healed: finish with a Heal and a Restart of All (the auditor checks \
                        liveness and convergence after them)"
                .into());
        }
        Ok(())
    }

    /// When the last fault fires.
    pub fn last_fault_ms(&self) -> u64 {
        self.faults.iter().map(|f| f.at_ms).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_derives_the_same_config_and_every_scenario_ends_healed() {
        for name in SCENARIOS.iter().chain(&["random"]) {
            for seed in 0..20 {
                let a = SimConfig::derive(seed, name).unwrap();
                assert_eq!(a, SimConfig::derive(seed, name).unwrap());
                assert!(matches!(a.faults.last().unwrap().kind, FaultKind::Restart(Target::All)));
                assert!(a.nodes.len() >= 6 && a.nodes.len() <= 9);
                assert!(a.faults.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "faults in time order");
                a.validate().unwrap_or_else(|e| panic!("seed {seed} {name}: {e}"));
            }
        }
        assert!(SimConfig::derive(1, "nope").is_err());
    }

    /// Writes `cfg` as a scenario file with `edit` applied to its JSON, and loads it back.
    fn load_edited(cfg: &SimConfig, edit: impl FnOnce(&mut serde_json::Value)) -> Result<SimConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scenario.json");
        let mut v = serde_json::to_value(cfg).unwrap();
        edit(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
        SimConfig::load(&path)
    }

    #[test]
    fn scenario_files_are_checked_with_errors_that_name_the_problem() {
        let cfg = SimConfig::derive(3, "leader-crash").unwrap();
        assert_eq!(load_edited(&cfg, |_| {}).unwrap(), cfg);
        let fault = |kind: serde_json::Value| {
            move |v: &mut serde_json::Value| {
                v["faults"].as_array_mut().unwrap().insert(0, serde_json::json!({"at_ms": 0, "kind": kind}));
            }
        };
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(fault(serde_json::json!({"Crash": {"Node": 99}}))), "no node 99"),
            (Box::new(fault(serde_json::json!({"Crash": {"Region": 7}}))), "no region 7"),
            (Box::new(fault(serde_json::json!({"Crash": {"Zone": "mars-a"}}))), "no zone \"mars-a\""),
            (Box::new(fault(serde_json::json!({"Crash": {"LeaderOf": 9}}))), "no shard 9"),
            (Box::new(fault(serde_json::json!({"Bridge": ["All", "All", 42]}))), "no bridge node 42"),
            (Box::new(|v: &mut serde_json::Value| v["nodes"][0]["region"] = 5.into()), "only 3 regions"),
            (Box::new(|v: &mut serde_json::Value| v["region_latency_ms"][0] = serde_json::json!([0, 5])), "3x3 matrix"),
            (Box::new(|v: &mut serde_json::Value| v["region_latency_ms"][0][1] = 7.into()), "differs by direction"),
            (
                Box::new(|v: &mut serde_json::Value| {
                    v["faults"].as_array_mut().unwrap().pop();
                }),
                "must end healed",
            ),
            (Box::new(|v: &mut serde_json::Value| v["plant"] = "gremlins".into()), "unknown bug"),
            (Box::new(|v: &mut serde_json::Value| v["colour"] = "red".into()), "unknown field"),
        ];
        for (edit, want) in cases {
            let err = load_edited(&cfg, edit).unwrap_err();
            assert!(err.contains(want), "expected {want:?} in {err:?}");
        }
    }

    #[test]
    fn the_raft_rtt_follows_the_latencies_and_a_topology_can_be_the_cluster() {
        let cfg = SimConfig::derive(3, "leader-crash").unwrap();
        let edited = load_edited(&cfg, |v| {
            for (a, b) in [(0, 1), (1, 0)] {
                v["region_latency_ms"][a][b] = 200.into();
            }
        })
        .unwrap();
        assert_eq!(edited.rtt_ms, 400, "rtt_ms is derived from the edited latencies, not copied");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("topology.toml"),
            r#"
            shards = 2
            replication = 3
            [rtt_ms]
            "eu/us" = 80
            "eu/ap" = 150
            "us/ap" = 120
            [[regions]]
            name = "eu"
            nodes = [{ id = 1, addr = "a:1", zone = "eu-a" }, { id = 4, addr = "d:1", zone = "eu-b" }]
            [[regions]]
            name = "us"
            nodes = [{ id = 2, addr = "b:1", zone = "us-a" }]
            [[regions]]
            name = "ap"
            nodes = [{ id = 3, addr = "c:1", zone = "ap-a" }]
            "#,
        )
        .unwrap();
        let mut v = serde_json::to_value(&cfg).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in ["regions", "nodes", "region_latency_ms", "shards", "rtt_ms"] {
            o.remove(k);
        }
        o.insert("topology".into(), "topology.toml".into());
        o.insert(
            "faults".into(),
            serde_json::json!([
                {"at_ms": 3000, "kind": {"Crash": {"Zone": "eu-b"}}},
                {"at_ms": 6000, "kind": "Heal"},
                {"at_ms": 6000, "kind": {"Restart": "All"}}
            ]),
        );
        let path = dir.path().join("scenario.json");
        std::fs::write(&path, v.to_string()).unwrap();
        let loaded = SimConfig::load(&path).unwrap();
        assert_eq!(loaded.regions, vec!["eu", "us", "ap"]);
        assert_eq!(loaded.nodes.len(), 4);
        assert_eq!(loaded.shards, 2);
        assert_eq!(loaded.region_latency_ms[0][2], 75, "one way is half the round trip");
        assert_eq!(loaded.rtt_ms, 150);
    }
}
