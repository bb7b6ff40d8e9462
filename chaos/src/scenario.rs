//! Scenario files: a Chaos Toolkit experiment in TOML. A scenario names the cluster to start,
//! the workload (bounded), the steady-state hypothesis checked before, during and after, the
//! method (a timed list of faults), the rollbacks (which always run) and the targets the run
//! must meet. [`Scenario::load`] parses and validates; nothing unbounded gets through.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Longest workload a scenario may run, in seconds.
pub const DURATION_MAX_S: u64 = 900;
/// Highest offered rate, in operations per second.
pub const RATE_MAX: u32 = 5_000;
/// Most nodes a scenario may start.
pub const NODES_MAX: usize = 9;

/// A parsed, validated scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short title, for the journal and the report.
    pub title: String,
    /// What it tests and why.
    #[serde(default)]
    pub description: String,
    /// Seed of the proxy's jitter and the workload's choices.
    #[serde(default)]
    pub seed: u64,
    /// The cluster under test.
    pub cluster: ClusterSpec,
    /// The load offered during the run.
    pub workload: Workload,
    /// The steady-state hypothesis.
    #[serde(default)]
    pub steady_state: SteadyState,
    /// Faults, in time order.
    #[serde(default)]
    pub method: Vec<Step>,
    /// What must hold at the end.
    #[serde(default)]
    pub targets: Targets,
}

/// The cluster: regions with their nodes, shards, the emulated round trips between regions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Shards.
    pub shards: u32,
    /// Regions in order; each with its nodes (named by zone).
    pub regions: Vec<RegionSpec>,
    /// Round trip between two regions, keyed "a/b", in ms. Emulated by the fault proxy on every
    /// link between them; the topology's Raft timing follows it too.
    #[serde(default)]
    pub rtt_ms: BTreeMap<String, u64>,
    /// Regions that get a geo-router (the workload goes through them, round robin).
    pub routers: Vec<String>,
    /// Size of each node's data directory, a tmpfs, in MiB: only when a `disk_full` fault is
    /// in the method (root). Big enough for the run's log and snapshots.
    #[serde(default = "default_disk_mb")]
    pub disk_mb: u32,
}

fn default_disk_mb() -> u32 {
    256
}

/// Most a clock may be skewed, either way, in seconds (30 days).
pub const CLOCK_SKEW_MAX_S: f64 = 30.0 * 86_400.0;

/// One region.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// Its name.
    pub name: String,
    /// One zone name per node.
    pub zones: Vec<String>,
}

/// The workload: open-loop bets at a fixed rate, each retried with its idempotency key until
/// it has a definite answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Players, spread over the shards by their ids.
    pub players: u32,
    /// Offered operations per second.
    pub rate: u32,
    /// How long the load runs, in seconds; the method must fit in it.
    pub duration_s: u64,
    /// Deadline of each attempt, in ms.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
}

fn default_deadline_ms() -> u64 {
    1_000
}

/// The steady-state hypothesis: probes with tolerances, checked over the seconds before the
/// first fault and after the last one has healed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SteadyState {
    /// Most attempts that may fail (any error), as a percentage.
    pub max_error_percent: u32,
    /// Highest p99 latency of acknowledged operations, in ms.
    pub max_p99_ms: u64,
    /// Every shard has a leader.
    pub every_shard_led: bool,
}

impl Default for SteadyState {
    fn default() -> Self {
        Self { max_error_percent: 1, max_p99_ms: 500, every_shard_led: true }
    }
}

/// What the run must meet.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Targets {
    /// p99 of the RTOs measured, in ms.
    pub rto_p99_ms: u64,
    /// Acknowledged operations that may be missing: 0, always; the field exists so a report can
    /// state it.
    pub rpo: u64,
}

impl Default for Targets {
    fn default() -> Self {
        Self { rto_p99_ms: 2_000, rpo: 0 }
    }
}

/// One step of the method: a fault at a time, optionally repeated.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Seconds after the workload starts.
    pub at_s: f64,
    /// The fault (an inline table with its `kind`).
    pub fault: Fault,
    /// Repeat: this many times in all, one every `every_s` seconds.
    #[serde(default)]
    pub times: Option<u32>,
    /// Spacing of repeats, in seconds.
    #[serde(default)]
    pub every_s: Option<f64>,
}

/// A node, by name (`"n1"`…) or by role (`"leader:0"`: the leader of shard 0 when the fault
/// starts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Target {
    /// The leader of this shard when the fault starts.
    LeaderOf(u32),
    /// A node by name.
    Node(String),
}

impl TryFrom<String> for Target {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.strip_prefix("leader:") {
            Some(n) => n.parse().map(Target::LeaderOf).map_err(|_| format!("{s:?}: \"leader:\" takes a shard number")),
            None if s.starts_with('n') && s[1..].parse::<u32>().is_ok() => Ok(Target::Node(s)),
            None => Err(format!("{s:?} is neither a node (n1, n2, ...) nor leader:SHARD")),
        }
    }
}

impl From<Target> for String {
    fn from(t: Target) -> String {
        match t {
            Target::LeaderOf(s) => format!("leader:{s}"),
            Target::Node(n) => n,
        }
    }
}

/// A fault. Each heals itself after `for_s` (or restarts after `restart_after_s`); the
/// rollbacks heal everything at the end whatever happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// SIGKILL a node, restart it after a while.
    Kill { target: Target, restart_after_s: f64 },
    /// SIGSTOP a node (a gray failure: it holds its sockets and answers nothing), SIGCONT later.
    Pause { target: Target, for_s: f64 },
    /// SIGKILL every node of a region, restart them after a while.
    KillRegion { region: String, restart_after_s: f64 },
    /// Cut the links between groups of regions or nodes (by the fault proxy: bytes vanish,
    /// connections hang, nothing is refused). `one_way`: only from the first group to the
    /// others.
    Partition {
        groups: Vec<Vec<String>>,
        #[serde(default)]
        one_way: bool,
        for_s: f64,
    },
    /// Cut one node off every link, both ways (iptables DROP in its namespace when root, the
    /// proxy otherwise).
    Isolate { target: Target, for_s: f64 },
    /// Add latency (and jitter) to every link into and out of a node or region.
    Latency { to: String, delay_ms: u64, jitter_ms: u64, for_s: f64 },
    /// Reset every connection into a node and refuse new ones for `for_s`.
    Reset { target: Target, for_s: f64 },
    /// A node's links go down and up every `period_ms` for `for_s`.
    Flap { target: Target, period_ms: u64, for_s: f64 },
    /// Restart every node in turn (SIGTERM, start, wait until it serves), as in an upgrade.
    RollingRestart { pause_s: f64 },
    /// Drop this percentage of a node's packets at random, both ways (iptables `statistic`
    /// in its namespace; root).
    Loss { target: Target, percent: u32, for_s: f64 },
    /// Limit a node's outgoing bandwidth (a token bucket, `tc tbf`, on its link; root).
    Bandwidth { target: Target, kbit: u32, for_s: f64 },
    /// Skew a node's clock by `offset_s` (negative: behind), as after a bad NTP step. The
    /// node's cluster-time source (what it stamps on entries when it leads) follows the offset
    /// file the runner writes (`WALLETD_CLOCK_OFFSET_FILE`); heals to no offset.
    ClockSkew { target: Target, offset_s: f64, for_s: f64 },
    /// Fill a node's disk: its data directory is a tmpfs of `[cluster] disk_mb` (root), and the
    /// runner fills what is left of it. The node must stop cleanly, the shards go on, nothing
    /// acknowledged is lost. Heals by freeing the space and starting the node again.
    DiskFull { target: Target, for_s: f64 },
    /// Pull a node's power: SIGKILL it and drop every write it had not fsynced (its data
    /// directory is a power-cut file system, `chaos lazyfs`, when the method has this fault;
    /// root). Restart it after `restart_after_s`.
    PowerCut { target: Target, restart_after_s: f64 },
}

impl Fault {
    /// The fault's name in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::KillRegion { .. } => "kill_region",
            Fault::Partition { .. } => "partition",
            Fault::Isolate { .. } => "isolate",
            Fault::Latency { .. } => "latency",
            Fault::Reset { .. } => "reset",
            Fault::Flap { .. } => "flap",
            Fault::RollingRestart { .. } => "rolling_restart",
            Fault::Loss { .. } => "loss",
            Fault::Bandwidth { .. } => "bandwidth",
            Fault::ClockSkew { .. } => "clock_skew",
            Fault::DiskFull { .. } => "disk_full",
            Fault::PowerCut { .. } => "power_cut",
        }
    }

    /// How long the fault lasts before it heals, in seconds.
    pub fn span_s(&self) -> f64 {
        match self {
            Fault::Kill { restart_after_s, .. }
            | Fault::KillRegion { restart_after_s, .. }
            | Fault::PowerCut { restart_after_s, .. } => *restart_after_s,
            Fault::Pause { for_s, .. }
            | Fault::Partition { for_s, .. }
            | Fault::Isolate { for_s, .. }
            | Fault::Latency { for_s, .. }
            | Fault::Reset { for_s, .. }
            | Fault::Flap { for_s, .. }
            | Fault::Loss { for_s, .. }
            | Fault::Bandwidth { for_s, .. }
            | Fault::ClockSkew { for_s, .. }
            | Fault::DiskFull { for_s, .. } => *for_s,
            Fault::RollingRestart { .. } => 0.0,
        }
    }
}

/// A scenario file that cannot be run, and why.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// Not valid TOML or not the scenario's shape.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// Valid TOML, but a value out of bounds or inconsistent.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: p.clone(), source })?;
        Self::parse(&text).map_err(|e| match e {
            ScenarioError::Parse { message, .. } => ScenarioError::Parse { path: p.clone(), message },
            ScenarioError::Invalid { message, .. } => ScenarioError::Invalid { path: p.clone(), message },
            other => other,
        })
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)
            .map_err(|e| ScenarioError::Parse { path: String::new(), message: e.to_string().trim().to_string() })?;
        s.validate().map_err(|message| ScenarioError::Invalid { path: String::new(), message })?;
        Ok(s)
    }

    /// Whether the method has a fault of this kind (see [`Fault::kind`]).
    pub fn uses(&self, kind: &str) -> bool {
        self.method.iter().any(|m| m.fault.kind() == kind)
    }

    /// Node names in order: `n1`, `n2`, … over the regions as listed.
    pub fn nodes(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for r in &self.cluster.regions {
            for z in &r.zones {
                out.push((format!("n{}", out.len() + 1), r.name.clone(), z.clone()));
            }
        }
        out
    }

    /// The round trip between two regions (0 within one).
    pub fn rtt_ms(&self, a: &str, b: &str) -> u64 {
        if a == b {
            return 0;
        }
        let ab = self.cluster.rtt_ms.get(&format!("{a}/{b}"));
        ab.or_else(|| self.cluster.rtt_ms.get(&format!("{b}/{a}"))).copied().unwrap_or(0)
    }

    /// Every fault occurrence, repeats expanded, in time order: (seconds after start, fault).
    pub fn timeline(&self) -> Vec<(f64, Fault)> {
        let mut out = Vec::new();
        for step in &self.method {
            let times = step.times.unwrap_or(1);
            for i in 0..times {
                out.push((step.at_s + f64::from(i) * step.every_s.unwrap_or(0.0), step.fault.clone()));
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    fn validate(&self) -> Result<(), String> {
        let c = &self.cluster;
        let nodes = self.nodes();
        if nodes.len() < 3 || nodes.len() > NODES_MAX {
            return Err(format!("the cluster has {} nodes; 3 to {NODES_MAX} are supported", nodes.len()));
        }
        if !(16..=65_536).contains(&c.disk_mb) {
            return Err(format!("disk_mb = {}: 16 to 65536", c.disk_mb));
        }
        if self.uses("disk_full") && self.uses("power_cut") {
            return Err("disk_full and power_cut each put the data directories on a file system of their own; \
                        give them separate scenarios"
                .into());
        }
        if c.shards == 0 || c.shards > 64 {
            return Err(format!("shards = {}: 1 to 64", c.shards));
        }
        let regions: Vec<&str> = c.regions.iter().map(|r| r.name.as_str()).collect();
        for key in c.rtt_ms.keys() {
            let ok = key.split_once('/').is_some_and(|(a, b)| regions.contains(&a) && regions.contains(&b));
            if !ok {
                return Err(format!("rtt_ms key {key:?} is not \"region/region\" of this cluster"));
            }
        }
        if c.rtt_ms.values().any(|v| *v > 1_000) {
            return Err("an rtt_ms above 1000 ms".into());
        }
        if c.routers.is_empty() || c.routers.iter().any(|r| !regions.contains(&r.as_str())) {
            return Err("routers must name at least one region of the cluster".into());
        }
        let w = &self.workload;
        if w.players == 0 || w.players > 10_000 {
            return Err(format!("players = {}: 1 to 10000", w.players));
        }
        if w.rate == 0 || w.rate > RATE_MAX {
            return Err(format!("rate = {}: 1 to {RATE_MAX} operations per second", w.rate));
        }
        if w.duration_s == 0 || w.duration_s > DURATION_MAX_S {
            return Err(format!("duration_s = {}: 1 to {DURATION_MAX_S}", w.duration_s));
        }
        if w.deadline_ms == 0 || w.deadline_ms > 60_000 {
            return Err(format!("deadline_ms = {}: 1 to 60000", w.deadline_ms));
        }
        let names: Vec<&str> = nodes.iter().map(|(n, _, _)| n.as_str()).collect();
        let known = |x: &str| names.contains(&x) || regions.contains(&x);
        for (at, fault) in self.timeline() {
            if !(0.0..=w.duration_s as f64).contains(&at) || !(0.0..=w.duration_s as f64).contains(&fault.span_s()) {
                return Err(format!("a {} at {at} s does not fit in the {} s workload", fault.kind(), w.duration_s));
            }
            let target_ok = |t: &Target| match t {
                Target::LeaderOf(shard) => *shard < c.shards,
                Target::Node(node) => names.contains(&node.as_str()),
            };
            let ok = match &fault {
                Fault::Kill { target, .. }
                | Fault::Pause { target, .. }
                | Fault::Isolate { target, .. }
                | Fault::Reset { target, .. }
                | Fault::Flap { target, .. }
                | Fault::DiskFull { target, .. }
                | Fault::PowerCut { target, .. } => target_ok(target),
                Fault::ClockSkew { target, offset_s, .. } => {
                    target_ok(target) && offset_s.is_finite() && offset_s.abs() <= CLOCK_SKEW_MAX_S
                }
                Fault::Loss { target, percent, .. } => target_ok(target) && (1..=100).contains(percent),
                Fault::Bandwidth { target, kbit, .. } => target_ok(target) && *kbit >= 8,
                Fault::KillRegion { region, .. } => regions.contains(&region.as_str()),
                Fault::Partition { groups, .. } => groups.len() >= 2 && groups.iter().flatten().all(|g| known(g)),
                Fault::Latency { to, delay_ms, jitter_ms, .. } => known(to) && *delay_ms + *jitter_ms <= 5_000,
                Fault::RollingRestart { .. } => true,
            };
            if !ok {
                return Err(format!("the {} at {at} s names a node, region or shard this cluster lacks", fault.kind()));
            }
            if let Fault::Flap { period_ms, .. } = &fault
                && *period_ms < 50
            {
                return Err("flap period_ms below 50".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER_KILLS: &str = r#"
title = "leader kills"
seed = 7
[cluster]
shards = 3
regions = [{ name = "eu", zones = ["eu-a"] }, { name = "us", zones = ["us-a"] }, { name = "ap", zones = ["ap-a"] }]
rtt_ms = { "eu/us" = 50, "eu/ap" = 50, "us/ap" = 50 }
routers = ["eu", "us"]
[workload]
players = 6
rate = 100
duration_s = 30
[[method]]
at_s = 5
fault = { kind = "kill", target = "leader:0", restart_after_s = 1 }
times = 3
every_s = 4
[[method]]
at_s = 20
fault = { kind = "partition", groups = [["eu"], ["us", "ap"]], for_s = 3 }
"#;

    #[test]
    fn a_scenario_parses_and_expands_its_repeats() {
        let s = Scenario::parse(LEADER_KILLS).unwrap();
        assert_eq!(s.nodes().len(), 3);
        assert_eq!(s.rtt_ms("ap", "eu"), 50);
        let t = s.timeline();
        let at: Vec<f64> = t.iter().map(|(a, _)| *a).collect();
        assert_eq!(at, vec![5.0, 9.0, 13.0, 20.0]);
        assert!(matches!(&t[0].1, Fault::Kill { target: Target::LeaderOf(0), .. }));
    }

    #[test]
    fn out_of_bounds_and_unknown_names_are_refused_with_a_reason() {
        let bad = [
            (LEADER_KILLS.replace("rate = 100", "rate = 1000000"), "rate"),
            (LEADER_KILLS.replace("duration_s = 30", "duration_s = 100000"), "duration_s"),
            (LEADER_KILLS.replace("leader:0", "leader:9"), "lacks"),
            (LEADER_KILLS.replace("leader:0", "leader-0"), "neither a node"),
            (LEADER_KILLS.replace("[\"us\", \"ap\"]", "[\"mars\"]"), "lacks"),
            (LEADER_KILLS.replace("times = 3", "times = 30"), "does not fit"),
            (LEADER_KILLS.replace("seed = 7", "seed = 7\nsurprise = 1"), "unknown field"),
        ];
        for (text, why) in bad {
            let e = Scenario::parse(&text).expect_err(why).to_string();
            assert!(e.contains(why), "{e:?} should say {why:?}");
        }
    }

    /// Every scenario checked in parses.
    #[test]
    fn the_scenario_library_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for f in std::fs::read_dir(&dir).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 3, "scenarios in {}: {n}", dir.display());
    }
}
