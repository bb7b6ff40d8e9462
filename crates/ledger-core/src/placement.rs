//! Topology and placement (pure): which region each shard calls home, which nodes should hold
//! its voters, and Raft timing from the measured inter-region round-trip times.
//!
//! Home regions are dealt round-robin, so with S shards and R regions every region is home to
//! ⌊S/R⌋ or ⌈S/R⌉ shards and leads them when healthy: every region takes writes. Voters: one in
//! the home region, then one in each other region (nearest first) until the replication factor
//! is met or every region holds one, then more in the home region and its nearest neighbours;
//! within a region the node whose zone holds fewest of the shard's replicas, then fewest
//! replicas overall, then the lowest id. With three regions and RF 3 or 5 a shard survives the
//! loss of any one region.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identity::{NodeId, NodeInfo};

/// A node as the topology file lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node id.
    pub id: NodeId,
    /// `host:port` of its node API.
    pub addr: String,
    /// Zone label.
    pub zone: String,
    /// `host:port` of its public wallet API, as clients reach it (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

/// A region and its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// Region name.
    pub name: String,
    /// Its nodes.
    pub nodes: Vec<NodeSpec>,
}

/// A cluster's topology file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Shards, fixed for the cluster's life.
    pub shards: u32,
    /// Voters per shard: 3 or 5.
    pub replication: u8,
    /// Regions, at least three.
    pub regions: Vec<RegionSpec>,
    /// Round-trip times between regions in ms, keyed `"a/b"` (either order).
    pub rtt_ms: BTreeMap<String, u64>,
}

/// Why a topology cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopologyError {
    /// Fewer than three regions.
    #[error("a topology needs at least 3 regions to survive losing one; it has {0}")]
    TooFewRegions(usize),
    /// Replication factor other than 3 or 5.
    #[error("replication must be 3 or 5, not {0}")]
    Replication(u8),
    /// No shards.
    #[error("shards must be at least 1")]
    NoShards,
    /// A region without nodes.
    #[error("region {0} has no nodes")]
    EmptyRegion(String),
    /// A node id or region name appears twice.
    #[error("{0} appears twice")]
    Duplicate(String),
    /// A region pair without a round-trip time.
    #[error("no round-trip time for regions {0} and {1} (add \"{0}/{1}\" to rtt_ms)")]
    MissingRtt(String, String),
    /// Fewer nodes than voters per shard.
    #[error("{nodes} nodes cannot hold {replication} voters per shard")]
    TooFewNodes {
        /// Nodes.
        nodes: usize,
        /// Replication factor.
        replication: u8,
    },
}

/// Where one shard lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// The shard.
    pub shard: u32,
    /// The region that leads it when healthy.
    pub home: String,
    /// Its voters, home-region node first.
    pub voters: Vec<NodeId>,
}

impl Topology {
    /// Checks the topology.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.regions.len() < 3 {
            return Err(TopologyError::TooFewRegions(self.regions.len()));
        }
        if self.replication != 3 && self.replication != 5 {
            return Err(TopologyError::Replication(self.replication));
        }
        if self.shards == 0 {
            return Err(TopologyError::NoShards);
        }
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for r in &self.regions {
            if !names.insert(&r.name) {
                return Err(TopologyError::Duplicate(format!("region {}", r.name)));
            }
            if r.nodes.is_empty() {
                return Err(TopologyError::EmptyRegion(r.name.clone()));
            }
            for n in &r.nodes {
                if !ids.insert(n.id) {
                    return Err(TopologyError::Duplicate(format!("node id {}", n.id)));
                }
            }
        }
        for (i, a) in self.regions.iter().enumerate() {
            for b in &self.regions[i + 1..] {
                if self.rtt(&a.name, &b.name).is_none() {
                    return Err(TopologyError::MissingRtt(a.name.clone(), b.name.clone()));
                }
            }
        }
        if ids.len() < usize::from(self.replication) {
            return Err(TopologyError::TooFewNodes { nodes: ids.len(), replication: self.replication });
        }
        Ok(())
    }

    /// The round-trip time between two regions, in ms (0 within a region).
    pub fn rtt(&self, a: &str, b: &str) -> Option<u64> {
        if a == b {
            return Some(0);
        }
        self.rtt_ms.get(&format!("{a}/{b}")).or_else(|| self.rtt_ms.get(&format!("{b}/{a}"))).copied()
    }

    /// The round-trip time Raft timing derives from: the largest RTT from any region to the
    /// nearest region that completes a quorum with it, so heartbeats and elections are sized for
    /// the slowest commit path rather than LAN defaults.
    pub fn quorum_rtt_ms(&self) -> u64 {
        let need = usize::from(self.replication / 2); // other voters a leader waits for
        self.regions
            .iter()
            .map(|a| {
                let mut rtts: Vec<u64> = self
                    .regions
                    .iter()
                    .filter(|b| b.name != a.name)
                    .filter_map(|b| self.rtt(&a.name, &b.name))
                    .collect();
                rtts.sort_unstable();
                rtts.get(need.saturating_sub(1).min(rtts.len().saturating_sub(1))).copied().unwrap_or(0)
            })
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// The region of a node.
    pub fn region_of(&self, id: NodeId) -> Option<&str> {
        self.regions.iter().find(|r| r.nodes.iter().any(|n| n.id == id)).map(|r| r.name.as_str())
    }

    /// Places every shard.
    pub fn place(&self) -> Vec<ShardPlacement> {
        let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
        (0..self.shards)
            .map(|shard| {
                let home = &self.regions[shard as usize % self.regions.len()];
                // Regions by distance from home, home first; names break ties.
                let mut order: Vec<&RegionSpec> = self.regions.iter().collect();
                order.sort_by_key(|r| (self.rtt(&home.name, &r.name).unwrap_or(u64::MAX), r.name.clone()));
                let mut voters: Vec<NodeId> = Vec::new();
                let mut zones: BTreeMap<&str, usize> = BTreeMap::new();
                let rf = usize::from(self.replication);
                // First pass: one voter per region, nearest first; then fill from the same order.
                let mut round = 0;
                while voters.len() < rf && round < rf {
                    for r in &order {
                        if voters.len() == rf {
                            break;
                        }
                        let pick = r.nodes.iter().filter(|n| !voters.contains(&n.id)).min_by_key(|n| {
                            (
                                zones.get(n.zone.as_str()).copied().unwrap_or(0),
                                load.get(&n.id).copied().unwrap_or(0),
                                n.id,
                            )
                        });
                        if let Some(n) = pick {
                            voters.push(n.id);
                            *zones.entry(n.zone.as_str()).or_default() += 1;
                            *load.entry(n.id).or_default() += 1;
                        }
                    }
                    round += 1;
                }
                ShardPlacement { shard, home: home.name.clone(), voters }
            })
            .collect()
    }

    /// The home region of every shard.
    pub fn homes(&self) -> BTreeMap<u32, String> {
        (0..self.shards).map(|s| (s, self.regions[s as usize % self.regions.len()].name.clone())).collect()
    }

    /// Address, region and zone of a node, as peers see them.
    pub fn node_info(&self, id: NodeId) -> Option<NodeInfo> {
        self.regions.iter().find_map(|r| {
            r.nodes.iter().find(|n| n.id == id).map(|n| NodeInfo {
                addr: n.addr.clone(),
                region: r.name.clone(),
                zone: n.zone.clone(),
                api_addr: n.api.clone().unwrap_or_default(),
            })
        })
    }

    /// This node's place in each shard's succession (the node shell's Raft timing staggers elections by it):
    /// slot 0 campaigns first when the shard's leader is lost, slot 1 two heartbeats later, and
    /// so on, so survivors do not split the vote. The order is the shard's planned voters, home
    /// region first and then by round-trip time from home (ids break ties), with the first
    /// planned voter (the usual leader) last: after a leader is lost, the nearest survivor
    /// takes over, which keeps commit latency close to what it was. Shards the node is not
    /// planned to vote in are absent.
    pub fn election_slots(&self, node: NodeId) -> BTreeMap<u32, u32> {
        self.place()
            .into_iter()
            .filter_map(|p| {
                let mut order: Vec<(usize, NodeId)> = p.voters.iter().copied().enumerate().collect();
                order.sort_by_key(|(i, id)| {
                    let rtt = self.region_of(*id).and_then(|r| self.rtt(&p.home, r)).unwrap_or(u64::MAX);
                    (*i == 0, rtt, *id)
                });
                let slot = order.iter().position(|(_, id)| *id == node)?;
                Some((p.shard, u32::try_from(slot).expect("a handful of voters")))
            })
            .collect()
    }

    /// Each shard's first voters, from [`Topology::place`]: what a new cluster is bootstrapped
    /// with. A node outside a shard's list hosts no replica of it until a membership change
    /// adds one.
    pub fn bootstrap_plan(&self) -> BTreeMap<u32, BTreeMap<NodeId, NodeInfo>> {
        self.place()
            .into_iter()
            .map(|p| {
                let members = p.voters.iter().filter_map(|id| self.node_info(*id).map(|info| (*id, info))).collect();
                (p.shard, members)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(regions: &[(&str, &[(NodeId, &str)])], shards: u32, rf: u8) -> Topology {
        let mut rtt = BTreeMap::new();
        let names: Vec<&str> = regions.iter().map(|r| r.0).collect();
        for (i, a) in names.iter().enumerate() {
            for (j, b) in names.iter().enumerate().skip(i + 1) {
                rtt.insert(format!("{a}/{b}"), 30 + 40 * (i + j) as u64);
            }
        }
        Topology {
            shards,
            replication: rf,
            regions: regions
                .iter()
                .map(|(name, nodes)| RegionSpec {
                    name: name.to_string(),
                    nodes: nodes
                        .iter()
                        .map(|(id, zone)| NodeSpec {
                            id: *id,
                            addr: format!("n{id}:7001"),
                            zone: zone.to_string(),
                            api: None,
                        })
                        .collect(),
                })
                .collect(),
            rtt_ms: rtt,
        }
    }

    #[test]
    fn voters_span_three_regions_avoid_shared_zones_and_homes_are_even() {
        let t = topo(
            &[
                ("eu", &[(1, "eu-a"), (2, "eu-b"), (3, "eu-c")]),
                ("us", &[(4, "us-a"), (5, "us-b")]),
                ("ap", &[(6, "ap-a"), (7, "ap-b")]),
            ],
            12,
            5,
        );
        t.validate().unwrap();
        let p = t.place();
        let mut leads: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &p {
            *leads.entry(s.home.as_str()).or_default() += 1;
            assert_eq!(s.voters.len(), 5);
            let regions: BTreeSet<&str> = s.voters.iter().map(|v| t.region_of(*v).unwrap()).collect();
            assert_eq!(regions.len(), 3, "shard {} spans every region", s.shard);
            assert_eq!(t.region_of(s.voters[0]), Some(s.home.as_str()), "a home voter comes first");
            let zones: BTreeSet<&str> = s
                .voters
                .iter()
                .map(|v| t.regions.iter().flat_map(|r| &r.nodes).find(|n| n.id == *v).unwrap().zone.as_str())
                .collect();
            assert_eq!(zones.len(), 5, "no two replicas share a zone when zones allow it");
        }
        assert_eq!(leads.values().copied().collect::<Vec<_>>(), vec![4, 4, 4], "every region is home to S/R shards");
        // Load spreads across nodes.
        let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
        for s in &p {
            for v in &s.voters {
                *per_node.entry(*v).or_default() += 1;
            }
        }
        assert!(per_node.values().max().unwrap() - per_node.values().min().unwrap() <= 6, "{per_node:?}");
    }

    #[test]
    fn rf3_with_one_node_per_region_and_bad_topologies() {
        let t = topo(&[("eu", &[(1, "a")]), ("us", &[(2, "b")]), ("ap", &[(3, "c")])], 4, 3);
        for s in t.place() {
            let mut v = s.voters.clone();
            v.sort_unstable();
            assert_eq!(v, vec![1, 2, 3]);
        }
        // Quorum RTT: a leader waits for the nearest other region.
        assert_eq!(t.quorum_rtt_ms(), 110, "ap's nearest is eu at 110 ms; eu's is us at 70 ms");
        let two = topo(&[("eu", &[(1, "a")]), ("us", &[(2, "b")])], 4, 3);
        assert_eq!(two.validate(), Err(TopologyError::TooFewRegions(2)));
        let mut bad = t.clone();
        bad.replication = 4;
        assert_eq!(bad.validate(), Err(TopologyError::Replication(4)));
        let mut bad = t.clone();
        bad.rtt_ms.clear();
        assert!(matches!(bad.validate(), Err(TopologyError::MissingRtt(..))));
        let mut bad = t;
        bad.replication = 5;
        assert_eq!(bad.validate(), Err(TopologyError::TooFewNodes { nodes: 3, replication: 5 }));
    }

    #[test]
    fn succession_puts_the_nearest_survivor_first_and_the_usual_leader_last() {
        // eu/us 70 ms, eu/ap 110 ms, us/ap 150 ms.
        let t = topo(&[("eu", &[(1, "a"), (4, "d")]), ("us", &[(2, "b")]), ("ap", &[(3, "c")])], 3, 3);
        let slots: BTreeMap<NodeId, BTreeMap<u32, u32>> = [1, 2, 3, 4].map(|n| (n, t.election_slots(n))).into();
        for p in t.place() {
            let mut by_slot: Vec<(u32, NodeId)> = p.voters.iter().map(|v| (slots[v][&p.shard], *v)).collect();
            by_slot.sort_unstable();
            let order: Vec<NodeId> = by_slot.iter().map(|(_, v)| *v).collect();
            assert_eq!(by_slot.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0, 1, 2], "distinct slots");
            assert_eq!(*order.last().unwrap(), p.voters[0], "shard {}: the usual leader is last", p.shard);
            let rtt = |v: NodeId| t.rtt(&p.home, t.region_of(v).unwrap()).unwrap();
            assert!(rtt(order[0]) <= rtt(order[1]), "shard {}: nearest survivor first: {order:?}", p.shard);
        }
        assert!(slots[&4].len() < 3, "node 4 is not planned into every shard: {:?}", slots[&4]);
        // With RF 5, the home region's second voter succeeds the first.
        let t5 =
            topo(&[("eu", &[(1, "a"), (2, "b")]), ("us", &[(3, "c"), (4, "d")]), ("ap", &[(5, "e"), (6, "f")])], 1, 5);
        let p = &t5.place()[0];
        let home_second = p.voters.iter().copied().find(|v| *v != p.voters[0] && t5.region_of(*v) == Some("eu"));
        assert_eq!(home_second.map(|v| t5.election_slots(v)[&0]), Some(0), "{p:?}");
    }

    #[test]
    fn a_topology_file_parses() {
        let t: Topology = toml::from_str(
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
        t.validate().unwrap();
        assert_eq!(t.homes()[&4], "us");
        assert_eq!(t.quorum_rtt_ms(), 120);
    }
}
