//! `walletd start` configuration: a TOML file, with command-line flags taking precedence.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ledger_core::placement::Topology;
use raft_ledger::net::member::ClusterKey;
use raft_ledger::node::{NodeConfig, StateStorage};
use raft_ledger::raft::{NodeId, NodeInfo};
use serde::Deserialize;
use thiserror::Error;

/// A member of the cluster as listed in the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerConfig {
    /// Node id.
    pub(crate) id: NodeId,
    /// `host:port` it listens on.
    pub(crate) addr: String,
    /// Region label.
    #[serde(default)]
    pub(crate) region: String,
    /// Zone label.
    #[serde(default)]
    pub(crate) zone: String,
    /// `host:port` of its wallet API, as clients reach it.
    #[serde(default)]
    pub(crate) api: String,
}

impl std::str::FromStr for PeerConfig {
    type Err = String;

    /// `ID=HOST:PORT`, then optionally `,region=R`, `,zone=Z`, `,api=HOST:PORT` in any order.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default();
        let (id, addr) = first
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected ID=HOST:PORT[,region=R][,zone=Z][,api=HOST:PORT]"))?;
        let id = id.trim().parse().map_err(|_| format!("`{s}`: node id `{id}` is not a number"))?;
        if addr.is_empty() || !addr.contains(':') {
            return Err(format!("`{s}`: `{addr}` is not HOST:PORT"));
        }
        let mut peer =
            PeerConfig { id, addr: addr.to_string(), region: String::new(), zone: String::new(), api: String::new() };
        for part in parts {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("`{s}`: `{part}` is not KEY=VALUE"))?;
            let slot = match k {
                "region" => &mut peer.region,
                "zone" => &mut peer.zone,
                "api" => &mut peer.api,
                _ => return Err(format!("`{s}`: unknown key `{k}` (region, zone or api)")),
            };
            if v.is_empty() {
                return Err(format!("`{s}`: `{k}` is empty"));
            }
            *slot = v.to_string();
        }
        Ok(peer)
    }
}

/// The contents of a node configuration file. Every field can also be given as a flag.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// This node's id.
    pub(crate) node_id: Option<NodeId>,
    /// Address to listen on, for example `0.0.0.0:7001`.
    pub(crate) listen: Option<String>,
    /// Address peers should dial, if different from `listen`.
    pub(crate) advertise: Option<String>,
    /// Region label.
    pub(crate) region: Option<String>,
    /// Zone label.
    pub(crate) zone: Option<String>,
    /// Data directory.
    pub(crate) data_dir: Option<PathBuf>,
    /// Number of shards in the cluster.
    pub(crate) shards: Option<u32>,
    /// Cluster name; a node refuses a data directory of another cluster.
    pub(crate) cluster_name: Option<String>,
    /// Round-trip time of the slowest link in a quorum, in ms.
    pub(crate) rtt_ms: Option<u64>,
    /// Where each shard keeps its retained ids and rounds: `memory` (the default) or `disk`.
    pub(crate) state: Option<String>,
    /// With `state = "disk"`: the block cache of each shard's on-disk state, in MiB.
    pub(crate) state_cache_mb: Option<u64>,
    /// A snapshot (with the state on disk: a checkpoint) every this many log entries.
    pub(crate) snapshot_every: Option<u64>,
    /// With `state = "disk"`: a checkpoint also once this many commands have applied since the
    /// last (default 250,000); their writes wait in memory until one.
    pub(crate) checkpoint_every_commands: Option<u64>,
    /// Each shard's newest Raft log entries held in memory, in MiB as encoded (default 32);
    /// older ones are read back from the write-ahead log when asked for.
    pub(crate) log_cache_mb: Option<u64>,
    /// AppendEntries a leader keeps in flight to each follower per shard (default 16): more than
    /// 1 streams them in order (pipelined replication), 1 sends one unary call at a time and
    /// refuses peers' streams too (they fall back to unary calls, as for an older build).
    pub(crate) appends_in_flight: Option<usize>,
    /// Form a new cluster from `peers` if the shards are not initialized yet.
    pub(crate) bootstrap: Option<bool>,
    /// The cluster's members, this node included, for bootstrap.
    #[serde(default)]
    pub(crate) peers: Vec<PeerConfig>,
    /// Address the public wallet API listens on, for example `0.0.0.0:8001`. Without it the
    /// node serves only the internal node API.
    pub(crate) api_listen: Option<String>,
    /// Address clients should dial for this node's wallet API, if not `api_listen` (what a
    /// `NOT_LEADER` answer names when this node leads).
    pub(crate) api_advertise: Option<String>,
    /// File holding the cluster's shared secret (hex, 32 bytes or more). Every node of a
    /// cluster has the same; the node port refuses callers without it.
    pub(crate) cluster_key_file: Option<PathBuf>,
    /// TOML file of operator API keys (`[[operator]]` with `id`, `secret`, `roles`).
    pub(crate) operator_keys: Option<PathBuf>,
    /// Redis URL of the session store, for player tokens.
    pub(crate) redis_url: Option<String>,
    /// File holding the session token signing key: `kid = "..."` and `key = "<64 hex>"`.
    pub(crate) session_key: Option<PathBuf>,
    /// Serve the session service (`casino.session.v1`) beside the wallet API when a session
    /// store is configured (default true).
    pub(crate) session_api: Option<bool>,
    /// The security event log (default `<data_dir>/security-events.log`).
    pub(crate) security_log: Option<PathBuf>,
    /// The cluster's topology file (regions, nodes, zones, shards, replication, RTTs). With it,
    /// shards get home regions that lead them, Raft timing derives from the RTTs, and
    /// `--bootstrap` takes its members from the file.
    pub(crate) topology: Option<PathBuf>,
}

/// Each shard's block cache for its on-disk state unless `state_cache_mb` says otherwise.
const STATE_CACHE_MB_DEFAULT: u64 = 64;

/// A configuration problem, reported before anything starts.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum ConfigError {
    /// A required setting is missing.
    #[error("missing setting `{0}` (give it in the config file or as --{1})")]
    Missing(&'static str, &'static str),
    /// A setting has an impossible value.
    #[error("invalid setting `{0}`: {1}")]
    Invalid(&'static str, String),
    /// The file could not be read or parsed.
    #[error("config file {0}: {1}")]
    File(String, String),
}

/// Whether peers or clients can dial `addr` (a wildcard listen address they cannot).
fn routable(addr: &str) -> bool {
    !(addr.starts_with("0.0.0.0") || addr.starts_with("[::]"))
}

/// Reads and checks a topology file.
pub(crate) fn load_topology(path: &std::path::Path) -> Result<Topology, ConfigError> {
    let file = |e: String| ConfigError::File(path.display().to_string(), e);
    let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
    let t: Topology = toml::from_str(&text).map_err(|e| file(e.to_string()))?;
    t.validate().map_err(|e| file(e.to_string()))?;
    Ok(t)
}

/// The placement of a topology, as `walletd placement` prints it.
pub(crate) fn describe_placement(t: &Topology) -> String {
    use std::fmt::Write;
    let rtt = t.quorum_rtt_ms();
    let timing = raft_ledger::raft::raft_config("placement", rtt, 10_000, 2_000);
    let stagger = raft_ledger::raft::succession_stagger(&timing).as_millis() as u64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} shards, replication {}, quorum RTT {rtt} ms: heartbeat {} ms; when a leader is lost its first successor \
         asks for an election {} ms after the last heartbeat, the next {} ms (failing both, any voter at {}-{} ms)",
        t.shards,
        t.replication,
        timing.heartbeat_interval,
        timing.election_timeout_max,
        timing.election_timeout_max + stagger,
        timing.election_timeout_min + timing.election_timeout_max,
        2 * timing.election_timeout_max
    );
    let zone = |id| t.regions.iter().flat_map(|r| &r.nodes).find(|n| n.id == id).map_or("?", |n| n.zone.as_str());
    let mut leads: BTreeMap<&str, u32> = BTreeMap::new();
    let placement = t.place();
    let slots: BTreeMap<NodeId, BTreeMap<u32, u32>> =
        t.regions.iter().flat_map(|r| &r.nodes).map(|n| (n.id, t.election_slots(n.id))).collect();
    for p in &placement {
        let voters: Vec<String> =
            p.voters.iter().map(|v| format!("n{v}@{}/{}", t.region_of(*v).unwrap_or("?"), zone(*v))).collect();
        // Who takes over, in order, when the leader is lost.
        let mut succession: Vec<(u32, NodeId)> =
            p.voters.iter().filter_map(|v| slots.get(v)?.get(&p.shard).map(|s| (*s, *v))).collect();
        succession.sort_unstable();
        let succession: Vec<String> = succession.iter().map(|(_, v)| format!("n{v}")).collect();
        let _ = writeln!(
            out,
            "shard {:>4}  home {:<12} voters {}  succession {}",
            p.shard,
            p.home,
            voters.join(" "),
            succession.join(">")
        );
    }
    for r in &t.regions {
        leads.insert(r.name.as_str(), placement.iter().filter(|p| p.home == r.name).count() as u32);
    }
    for (r, n) in leads {
        let _ = writeln!(out, "region {r:<12} is home to {n} shards");
    }
    out
}

/// A fully resolved node setup.
#[derive(Debug, Clone)]
pub(crate) struct StartConfig {
    /// Passed to the ledger node.
    pub(crate) node: NodeConfig,
    /// Where to listen.
    pub(crate) listen: String,
    /// The cluster's key.
    pub(crate) cluster_key: ClusterKey,
    /// Each shard's first voters, if bootstrapping: from the topology's placement, or every
    /// listed peer for every shard without one.
    pub(crate) bootstrap: Option<BTreeMap<u32, BTreeMap<NodeId, NodeInfo>>>,
    /// Every node address known from the topology or the peers, this node's first: where the
    /// wallet API forwards a shard's commands when this node does not hold a replica of it.
    pub(crate) seeds: Vec<String>,
    /// The public wallet API, if served.
    pub(crate) api: Option<ApiConfig>,
}

/// Settings of the public wallet API.
#[derive(Debug, Clone)]
pub(crate) struct ApiConfig {
    /// Where to listen.
    pub(crate) listen: String,
    /// Operator key file.
    pub(crate) operator_keys: Option<PathBuf>,
    /// Session store in Redis.
    pub(crate) redis_url: Option<String>,
    /// Session signing key file.
    pub(crate) session_key: Option<PathBuf>,
    /// Whether the session service is served (only with a session store).
    pub(crate) session_api: bool,
    /// Where security events go (only with a session store).
    pub(crate) security_log: PathBuf,
}

impl FileConfig {
    /// Reads a TOML file.
    pub(crate) fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::File(path.display().to_string(), e.to_string()))?;
        toml::from_str(&text).map_err(|e| ConfigError::File(path.display().to_string(), e.to_string()))
    }

    /// Settings from `other` win over ours; peers are replaced if `other` lists any.
    pub(crate) fn overlay(mut self, other: FileConfig) -> Self {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            node_id,
            listen,
            advertise,
            region,
            zone,
            data_dir,
            shards,
            cluster_name,
            rtt_ms,
            state,
            state_cache_mb,
            snapshot_every,
            checkpoint_every_commands,
            log_cache_mb,
            appends_in_flight,
            bootstrap,
            api_listen,
            api_advertise,
            cluster_key_file,
            operator_keys,
            redis_url,
            session_key,
            session_api,
            security_log,
            topology
        );
        if !other.peers.is_empty() {
            self.peers = other.peers;
        }
        self
    }

    /// Checks the settings and resolves defaults.
    pub(crate) fn resolve(self) -> Result<StartConfig, ConfigError> {
        let node_id = self.node_id.ok_or(ConfigError::Missing("node_id", "node-id"))?;
        let listen = self.listen.ok_or(ConfigError::Missing("listen", "listen"))?;
        let data_dir = self.data_dir.ok_or(ConfigError::Missing("data_dir", "data-dir"))?;
        let shards = self.shards.unwrap_or(8);
        if shards == 0 || shards > 4096 {
            return Err(ConfigError::Invalid("shards", format!("{shards} is outside 1..=4096")));
        }
        let advertise = self.advertise.unwrap_or_else(|| listen.clone());
        if !routable(&advertise) {
            return Err(ConfigError::Invalid(
                "advertise",
                format!("peers cannot dial {advertise}; set `advertise` to a routable address"),
            ));
        }
        let key_file = self.cluster_key_file.ok_or(ConfigError::Missing("cluster_key_file", "cluster-key-file"))?;
        let cluster_key =
            ClusterKey::load(&key_file).map_err(|e| ConfigError::Invalid("cluster_key_file", e.to_string()))?;
        let topology = match &self.topology {
            Some(path) => Some(load_topology(path)?),
            None => None,
        };
        let api_addr = match (&self.api_advertise, &self.api_listen) {
            (Some(a), _) => a.clone(),
            (None, Some(l)) if routable(l) => l.clone(),
            (None, Some(l)) => {
                match topology.as_ref().and_then(|t| t.node_info(node_id)).and_then(|n| n.api().map(str::to_string)) {
                    Some(a) => a,
                    None => {
                        return Err(ConfigError::Invalid(
                            "api_advertise",
                            format!("clients cannot dial {l}; set `api_advertise` to a routable address"),
                        ));
                    }
                }
            }
            (None, None) => String::new(),
        };
        let info = NodeInfo {
            addr: advertise,
            region: self.region.unwrap_or_else(|| "default".into()),
            zone: self.zone.unwrap_or_else(|| "default".into()),
            api_addr,
        };
        let mut info = info;
        let shards = match &topology {
            Some(t) => {
                if self.shards.is_some_and(|s| s != t.shards) {
                    return Err(ConfigError::Invalid("shards", format!("the topology says {} shards", t.shards)));
                }
                let region = t.region_of(node_id).ok_or_else(|| {
                    ConfigError::Invalid("topology", format!("node {node_id} is not in the topology"))
                })?;
                info.region = region.to_string();
                t.shards
            }
            None => shards,
        };
        let mut node = NodeConfig::new(node_id, info.clone(), data_dir, shards);
        if let Some(name) = self.cluster_name {
            node.cluster_name = name;
        }
        if let Some(t) = &topology {
            node.place(t);
        }
        // An explicit RTT overrides the topology's (a quorum measured faster or slower).
        if let Some(rtt) = self.rtt_ms {
            node.rtt_ms = rtt;
        }
        node.tick_interval = Duration::from_millis(500);
        let cache_bytes = self.state_cache_mb.unwrap_or(STATE_CACHE_MB_DEFAULT) << 20;
        node.state = match self.state.as_deref() {
            None | Some("memory") => {
                if self.state_cache_mb.is_some() {
                    return Err(ConfigError::Invalid("state_cache_mb", "only with `state = \"disk\"`".into()));
                }
                StateStorage::Memory
            }
            Some("disk") => StateStorage::Disk { cache_bytes },
            Some(other) => {
                return Err(ConfigError::Invalid("state", format!("`{other}`: expected `memory` or `disk`")));
            }
        };
        if let Some(every) = self.snapshot_every {
            if every == 0 {
                return Err(ConfigError::Invalid("snapshot_every", "must be at least 1".into()));
            }
            node.snapshot_every = every;
        }
        if let Some(every) = self.checkpoint_every_commands {
            if !matches!(node.state, StateStorage::Disk { .. }) {
                return Err(ConfigError::Invalid("checkpoint_every_commands", "only with `state = \"disk\"`".into()));
            }
            if every == 0 {
                return Err(ConfigError::Invalid("checkpoint_every_commands", "must be at least 1".into()));
            }
            node.checkpoint_every_commands = every;
        }
        if let Some(mb) = self.log_cache_mb {
            node.log_cache_bytes = usize::try_from(mb)
                .ok()
                .and_then(|mb| mb.checked_mul(1 << 20))
                .ok_or_else(|| ConfigError::Invalid("log_cache_mb", format!("{mb} MiB is too large")))?;
        }
        if let Some(n) = self.appends_in_flight {
            if n == 0 {
                return Err(ConfigError::Invalid("appends_in_flight", "must be at least 1".into()));
            }
            node.appends_in_flight = n;
        }
        let mut seeds = vec![info.addr.clone()];
        let mut peers = BTreeMap::new();
        for p in self.peers {
            let region = if p.region.is_empty() { "default".into() } else { p.region };
            let zone = if p.zone.is_empty() { "default".into() } else { p.zone };
            if peers.insert(p.id, NodeInfo { addr: p.addr, region, zone, api_addr: p.api }).is_some() {
                return Err(ConfigError::Invalid("peers", format!("node id {} listed twice", p.id)));
            }
        }
        peers.entry(node_id).or_insert(info);
        let known: Vec<String> = match &topology {
            Some(t) => t.regions.iter().flat_map(|r| r.nodes.iter().map(|n| n.addr.clone())).collect(),
            None => peers.values().map(|p| p.addr.clone()).collect(),
        };
        for addr in known {
            if !seeds.contains(&addr) {
                seeds.push(addr);
            }
        }
        let bootstrap = match (self.bootstrap.unwrap_or(false), &topology) {
            (true, Some(t)) => Some(t.bootstrap_plan()),
            (true, None) => Some((0..shards).map(|s| (s, peers.clone())).collect()),
            (false, _) => None,
        };
        if self.redis_url.is_some() != self.session_key.is_some() {
            return Err(ConfigError::Invalid(
                "session_key",
                "player tokens need both `redis_url` and `session_key`".into(),
            ));
        }
        let security_log = self.security_log.unwrap_or_else(|| node.data_dir.join("security-events.log"));
        let api = self.api_listen.map(|listen| ApiConfig {
            listen,
            operator_keys: self.operator_keys,
            redis_url: self.redis_url,
            session_key: self.session_key,
            session_api: self.session_api.unwrap_or(true),
            security_log,
        });
        Ok(StartConfig { node, listen, cluster_key, bootstrap, seeds, api })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster key file in `dir`.
    fn key_file(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("cluster.key");
        std::fs::write(&path, format!("{}\n", "5a".repeat(32))).unwrap();
        path
    }

    #[test]
    fn a_file_with_flags_over_it_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let file: FileConfig = toml::from_str(
            r#"
            node_id = 1
            listen = "0.0.0.0:7001"
            advertise = "10.0.0.1:7001"
            data_dir = "/var/lib/walletd"
            shards = 4
            bootstrap = true
            [[peers]]
            id = 2
            addr = "10.0.0.2:7001"
            region = "us"
            "#,
        )
        .unwrap();
        let flags = FileConfig { shards: Some(16), cluster_key_file: Some(key_file(dir.path())), ..Default::default() };
        let c = file.overlay(flags).resolve().unwrap();
        assert_eq!(c.node.shards, 16);
        assert_eq!(c.node.info.addr, "10.0.0.1:7001");
        let plan = c.bootstrap.unwrap();
        assert_eq!(plan.len(), 16, "every shard gets the peers without a topology");
        let members = &plan[&0];
        assert_eq!(members.keys().copied().collect::<Vec<_>>(), vec![1, 2], "the node adds itself");
        assert_eq!(members[&2].region, "us");
        assert_eq!(c.seeds, vec!["10.0.0.1:7001".to_string(), "10.0.0.2:7001".to_string()]);
    }

    #[test]
    fn a_topology_gives_home_regions_timing_region_and_bootstrap_members() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topology.toml");
        std::fs::write(
            &path,
            r#"
            shards = 6
            replication = 3
            [rtt_ms]
            "eu/us" = 80
            "eu/ap" = 150
            "us/ap" = 120
            [[regions]]
            name = "eu"
            nodes = [{ id = 1, addr = "10.0.0.1:7001", zone = "eu-1a" }]
            [[regions]]
            name = "us"
            nodes = [{ id = 2, addr = "10.1.0.1:7001", zone = "us-1a" }]
            [[regions]]
            name = "ap"
            nodes = [{ id = 3, addr = "10.2.0.1:7001", zone = "ap-1a" }]
            "#,
        )
        .unwrap();
        let c = FileConfig {
            node_id: Some(2),
            listen: Some("10.1.0.1:7001".into()),
            data_dir: Some("d".into()),
            topology: Some(path.clone()),
            bootstrap: Some(true),
            cluster_key_file: Some(key_file(dir.path())),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.node.shards, 6);
        assert_eq!(c.node.info.region, "us");
        assert_eq!(c.node.rtt_ms, 120, "timing derives from the quorum RTT, not a LAN default");
        assert_eq!(c.node.home_regions[&1], "us");
        let plan = c.bootstrap.unwrap();
        assert_eq!(plan.len(), 6);
        assert!(plan.values().all(|m| m.len() == 3), "three voters per shard");
        assert_eq!(c.seeds[0], "10.1.0.1:7001", "this node first");
        assert_eq!(c.seeds.len(), 3);
        let wrong = FileConfig {
            node_id: Some(9),
            listen: Some("h:1".into()),
            data_dir: Some("d".into()),
            topology: Some(path),
            cluster_key_file: Some(key_file(dir.path())),
            ..Default::default()
        };
        assert!(matches!(wrong.resolve(), Err(ConfigError::Invalid("topology", _))));
    }

    #[test]
    fn a_node_needs_the_cluster_key_and_a_dialable_api_address() {
        let dir = tempfile::tempdir().unwrap();
        let base = FileConfig {
            node_id: Some(1),
            listen: Some("10.0.0.1:7001".into()),
            data_dir: Some("d".into()),
            ..Default::default()
        };
        assert_eq!(base.clone().resolve().unwrap_err(), ConfigError::Missing("cluster_key_file", "cluster-key-file"));
        let short = dir.path().join("short.key");
        std::fs::write(&short, "abcd").unwrap();
        let c = FileConfig { cluster_key_file: Some(short), ..base.clone() };
        assert!(matches!(c.resolve(), Err(ConfigError::Invalid("cluster_key_file", _))));
        let keyed = FileConfig { cluster_key_file: Some(key_file(dir.path())), ..base };
        let c = FileConfig { api_listen: Some("0.0.0.0:8001".into()), ..keyed.clone() };
        assert!(matches!(c.clone().resolve(), Err(ConfigError::Invalid("api_advertise", _))));
        let c = FileConfig { api_advertise: Some("10.0.0.1:8001".into()), ..c }.resolve().unwrap();
        assert_eq!(c.node.info.api_addr, "10.0.0.1:8001");
        let c = FileConfig { api_listen: Some("10.0.0.1:8001".into()), ..keyed.clone() }.resolve().unwrap();
        assert_eq!(c.node.info.api_addr, "10.0.0.1:8001");
        // The session service is on by default, and its security log lives in the data dir.
        let api = c.api.expect("an API");
        assert!(api.session_api);
        assert_eq!(api.security_log, PathBuf::from("d/security-events.log"));
        let off = FileConfig {
            api_listen: Some("10.0.0.1:8001".into()),
            session_api: Some(false),
            security_log: Some("/var/log/walletd/security.log".into()),
            ..keyed
        };
        let api = off.resolve().unwrap().api.expect("an API");
        assert!(!api.session_api);
        assert_eq!(api.security_log, PathBuf::from("/var/log/walletd/security.log"));
    }

    #[test]
    fn the_state_is_kept_in_memory_unless_told_disk_with_its_cache_and_checkpoint_interval() {
        let dir = tempfile::tempdir().unwrap();
        let base = FileConfig {
            node_id: Some(1),
            listen: Some("10.0.0.1:7001".into()),
            data_dir: Some("d".into()),
            cluster_key_file: Some(key_file(dir.path())),
            ..Default::default()
        };
        assert_eq!(base.clone().resolve().unwrap().node.state, StateStorage::Memory);
        let file: FileConfig = toml::from_str(
            "state = \"disk\"\nstate_cache_mb = 16\nsnapshot_every = 500\ncheckpoint_every_commands = 9000\nlog_cache_mb = 4",
        )
        .unwrap();
        let c = base.clone().overlay(file).resolve().unwrap();
        assert_eq!(c.node.state, StateStorage::Disk { cache_bytes: 16 << 20 });
        assert_eq!(c.node.snapshot_every, 500);
        assert_eq!(c.node.checkpoint_every_commands, 9000);
        assert_eq!(c.node.log_cache_bytes, 4 << 20);
        assert_eq!(c.node.appends_in_flight, raft_ledger::node::APPENDS_IN_FLIGHT_DEFAULT);
        let unary: FileConfig = toml::from_str("appends_in_flight = 1").unwrap();
        assert_eq!(base.clone().overlay(unary).resolve().unwrap().node.appends_in_flight, 1);
        let c = FileConfig { state: Some("disk".into()), ..base.clone() }.resolve().unwrap();
        assert_eq!(c.node.state, StateStorage::Disk { cache_bytes: STATE_CACHE_MB_DEFAULT << 20 });
        for (bad, key) in [
            (FileConfig { state: Some("tape".into()), ..base.clone() }, "state"),
            (FileConfig { state_cache_mb: Some(8), ..base.clone() }, "state_cache_mb"),
            (FileConfig { snapshot_every: Some(0), ..base.clone() }, "snapshot_every"),
            (FileConfig { checkpoint_every_commands: Some(10), ..base.clone() }, "checkpoint_every_commands"),
            (
                FileConfig { state: Some("disk".into()), checkpoint_every_commands: Some(0), ..base.clone() },
                "checkpoint_every_commands",
            ),
            (FileConfig { appends_in_flight: Some(0), ..base }, "appends_in_flight"),
        ] {
            assert!(matches!(bad.resolve(), Err(ConfigError::Invalid(k, _)) if k == key), "{key}");
        }
    }

    #[test]
    fn peers_carry_region_zone_and_api_address() {
        let p: PeerConfig = "2=10.0.0.2:7001,region=us-east,zone=us-east-1a,api=10.0.0.2:8001".parse().unwrap();
        assert_eq!((p.id, p.addr.as_str(), p.region.as_str()), (2, "10.0.0.2:7001", "us-east"));
        assert_eq!((p.zone.as_str(), p.api.as_str()), ("us-east-1a", "10.0.0.2:8001"));
        let plain: PeerConfig = "3=h:1".parse().unwrap();
        assert!(plain.region.is_empty() && plain.api.is_empty());
        for bad in ["h:1", "x=h:1", "3=h", "3=h:1,color=red", "3=h:1,region=", "3=h:1,region"] {
            assert!(bad.parse::<PeerConfig>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        assert_eq!(FileConfig::default().resolve().unwrap_err(), ConfigError::Missing("node_id", "node-id"));
        let c = FileConfig {
            node_id: Some(1),
            listen: Some("0.0.0.0:1".into()),
            data_dir: Some("d".into()),
            ..Default::default()
        };
        assert!(matches!(c.clone().resolve(), Err(ConfigError::Invalid("advertise", _))));
        let c = FileConfig { shards: Some(0), advertise: Some("h:1".into()), ..c };
        assert!(matches!(c.resolve(), Err(ConfigError::Invalid("shards", _))));
        assert!(toml::from_str::<FileConfig>("nodeid = 1").is_err(), "unknown keys are refused");
    }
}
