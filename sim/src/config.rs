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
}

/// The bugs `--plant` accepts.
pub const PLANTABLE: &[&str] = &["ack-before-fsync", "skip-idempotency"];

/// The planted bug a name stands for.
pub fn bug(name: &str) -> Result<raft_ledger::planted::Bug, String> {
    match name {
        "ack-before-fsync" => Ok(raft_ledger::planted::Bug::AckBeforeFsync),
        "skip-idempotency" => Ok(raft_ledger::planted::Bug::SkipIdempotency),
        _ => Err(format!("unknown bug {name:?}; one of: {}", PLANTABLE.join(", "))),
    }
}

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
        let rtt_ms = 2 * lat.iter().flatten().copied().max().unwrap_or(1);
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
        out
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
            }
        }
        assert!(SimConfig::derive(1, "nope").is_err());
    }
}
