//! The routing table and the routing decision (pure).
//!
//! The table holds, per shard, the highest term the router has heard of, that term's leader if
//! known, and the voters. It starts from the topology's placement (voters, no leader) and
//! learns from every node's `WatchLeaders` stream; an older term never overwrites a newer one,
//! so a partitioned node that still believes in an old leader cannot pull routes back.

use std::collections::BTreeMap;

use ledger_core::NodeId;
use ledger_core::placement::Topology;

/// A node as the router knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Where it serves the wallet API.
    pub api_addr: String,
    /// Its region.
    pub region: String,
}

/// What the router believes about one shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardRoute {
    /// The highest term heard.
    pub term: u64,
    /// That term's leader, once known.
    pub leader: Option<NodeId>,
    /// The shard's voters.
    pub voters: Vec<NodeId>,
    /// Whether `leader` came from a `NOT_LEADER` hint, which carries no term, rather than from
    /// a leader feed: a feed's report of the same term then replaces it.
    pub hinted: bool,
    /// The last leader a newer term deposed. A hint naming it is stale (a follower that has
    /// not yet noticed the election), so it is not taken; if that node is elected again, a
    /// feed says so with its term.
    pub deposed: Option<NodeId>,
}

/// Where calls go: every shard's route and every node's address.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Per shard.
    pub shards: BTreeMap<u32, ShardRoute>,
    /// Per node.
    pub members: BTreeMap<NodeId, Member>,
}

/// A shard's leader as one node reported it.
#[derive(Debug, Clone)]
pub struct Report {
    /// The shard.
    pub shard: u32,
    /// The reporting replica's term.
    pub term: u64,
    /// The leader of that term, if the replica knows it.
    pub leader: Option<(NodeId, Member)>,
    /// The shard's voters.
    pub voters: Vec<(NodeId, Member)>,
}

impl Table {
    /// The table a router starts with: the topology's planned voters, no leaders known.
    pub fn from_topology(topology: &Topology) -> Self {
        let members = topology
            .regions
            .iter()
            .flat_map(|r| {
                r.nodes
                    .iter()
                    .map(|n| (n.id, Member { api_addr: n.api.clone().unwrap_or_default(), region: r.name.clone() }))
            })
            .collect();
        let shards = topology
            .place()
            .into_iter()
            .map(|p| (p.shard, ShardRoute { voters: p.voters, ..ShardRoute::default() }))
            .collect();
        Self { shards, members }
    }

    /// Learns from one report. Returns the shard's new leader when the belief about it
    /// changed (`Some(None)`: the leader is no longer known), so the caller can log why.
    pub fn observe(&mut self, report: Report) -> Option<Option<NodeId>> {
        for (id, m) in report.leader.iter().chain(report.voters.iter()) {
            self.members.insert(*id, m.clone());
        }
        let route = self.shards.entry(report.shard).or_default();
        let leader = report.leader.map(|(id, _)| id);
        let before = route.leader;
        if report.term > route.term {
            if !route.hinted && route.leader.is_some() && route.leader != leader {
                route.deposed = route.leader;
            }
            route.term = report.term;
            route.leader = leader;
            route.hinted = false;
            route.voters = report.voters.iter().map(|(id, _)| *id).collect();
        } else if report.term == route.term && leader.is_some() && (route.leader.is_none() || route.hinted) {
            // A leader the table only guessed from a hint yields to the feed, which knows.
            route.leader = leader;
            route.hinted = false;
        } else {
            return None;
        }
        (route.leader != before).then_some(route.leader)
    }

    /// Takes a `NOT_LEADER` hint: node `from` refused a call as not the leader and named
    /// `leader`. A hint carries no term, so it only fills a gap in the table or corrects the
    /// belief that `from` itself leads (it knows better than that), and never names the leader
    /// a newer term deposed (right after a leader dies, a follower that has not yet noticed
    /// still names it). What it sets is provisional: the leader feeds, which carry terms,
    /// replace it.
    pub fn hint(&mut self, shard: u32, from: NodeId, leader: NodeId) -> bool {
        let Some(route) = self.shards.get_mut(&shard) else { return false };
        if !self.members.contains_key(&leader) || leader == from || route.deposed == Some(leader) {
            return false;
        }
        if route.leader.is_none() || route.leader == Some(from) {
            if route.leader == Some(from) && !route.hinted {
                route.deposed = Some(from);
            }
            route.leader = Some(leader);
            route.hinted = true;
            return true;
        }
        false
    }
}

/// What a call needs from its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The leader: every mutation, and linearizable reads.
    Leader,
    /// Any replica that can meet a staleness bound: bounded-stale reads, best in our region.
    Stale,
}

/// Where to send a call, in order of preference, and whether every candidate was unhealthy
/// (panic mode: the router then tries them all rather than refusing, since a node it thinks
/// is down may still answer, and a node that is not the leader forwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Nodes to try, best first.
    pub candidates: Vec<NodeId>,
    /// Whether no usable node was left and the candidates are all of the shard's voters.
    pub panic: bool,
}

/// Decides where a call for `shard` goes. `usable` says whether a node is in rotation; `region`
/// is the router's own. `None` if the table has no such shard.
pub fn decide(
    table: &Table,
    shard: u32,
    need: Need,
    region: &str,
    usable: impl Fn(NodeId) -> bool,
) -> Option<Decision> {
    let route = table.shards.get(&shard)?;
    let local = |id: &NodeId| table.members.get(id).is_some_and(|m| m.region == region);
    let leader = route.leader.filter(|l| usable(*l));
    // Followers that are usable, ours first: they forward to the leader, or serve a stale read.
    let mut followers: Vec<NodeId> =
        route.voters.iter().copied().filter(|id| Some(*id) != route.leader && usable(*id)).collect();
    followers.sort_by_key(|id| (!local(id), *id));
    let mut candidates = Vec::new();
    match need {
        Need::Leader => {
            candidates.extend(leader);
            candidates.extend(followers);
        }
        Need::Stale => {
            let (ours, theirs): (Vec<NodeId>, Vec<NodeId>) = followers.into_iter().partition(|id| local(id));
            if let Some(l) = leader.filter(|l| local(l)) {
                candidates.push(l);
            }
            candidates.extend(ours);
            candidates.extend(leader.filter(|l| !local(l)));
            candidates.extend(theirs);
        }
    }
    if !candidates.is_empty() {
        return Some(Decision { candidates, panic: false });
    }
    let mut all: Vec<NodeId> = route.leader.into_iter().chain(route.voters.iter().copied()).collect();
    let mut seen = std::collections::BTreeSet::new();
    all.retain(|id| seen.insert(*id));
    Some(Decision { candidates: all, panic: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(region: &str) -> Member {
        Member { api_addr: format!("{region}:1"), region: region.into() }
    }

    fn table() -> Table {
        let mut t = Table::default();
        for (id, r) in [(1, "eu"), (2, "us"), (3, "ap"), (4, "eu")] {
            t.members.insert(id, m(r));
        }
        t.shards.insert(0, ShardRoute { voters: vec![1, 2, 3], ..ShardRoute::default() });
        t
    }

    fn report(term: u64, leader: Option<NodeId>) -> Report {
        Report {
            shard: 0,
            term,
            leader: leader.map(|l| (l, m(["", "eu", "us", "ap"][l as usize]))),
            voters: [1, 2, 3].iter().map(|&v| (v, m(["", "eu", "us", "ap"][v as usize]))).collect(),
        }
    }

    #[test]
    fn a_newer_term_wins_and_an_older_one_never_pulls_the_route_back() {
        let mut t = table();
        assert_eq!(t.observe(report(3, Some(2))), Some(Some(2)));
        assert_eq!(t.observe(report(3, Some(2))), None, "the same news changes nothing");
        // A partitioned node still believes in term 2's leader: ignored.
        assert_eq!(t.observe(report(2, Some(1))), None);
        // An election: a newer term without a leader yet clears it, then its leader fills it.
        assert_eq!(t.observe(report(4, None)), Some(None));
        assert_eq!(t.observe(report(4, Some(3))), Some(Some(3)));
        assert_eq!(t.shards[&0].leader, Some(3));
        // A hint fills a gap, or corrects the belief that the hinting node leads; no more.
        assert!(!t.hint(0, 2, 1), "node 2 does not speak for node 3's leadership");
        assert!(t.hint(0, 3, 1), "node 3, believed to lead, names node 1");
        assert_eq!(t.shards[&0].leader, Some(1));
        t.observe(report(5, None));
        assert!(!t.hint(0, 2, 3), "node 3 said it no longer leads: a hint naming it is stale");
        assert!(t.hint(0, 3, 2));
        assert!(!t.hint(0, 3, 99), "an unknown node is not routed to");
    }

    #[test]
    fn a_stale_hint_after_a_leader_dies_neither_routes_to_it_nor_blocks_the_new_leader() {
        let mut t = table();
        assert_eq!(t.observe(report(3, Some(1))), Some(Some(1)));
        // Node 1 dies; node 2 stands for election in term 4.
        assert_eq!(t.observe(report(4, None)), Some(None));
        // Node 3 has not noticed yet and still names node 1: refused, node 1 was deposed.
        assert!(!t.hint(0, 3, 1));
        assert_eq!(t.shards[&0].leader, None);
        // A hint naming another node fills the gap, but only until a feed of the term says
        // who leads: one route change, not a hint stuck in front of the news.
        assert!(t.hint(0, 3, 2));
        assert_eq!(t.observe(report(4, Some(2))), None, "the feed confirms the hint");
        assert!(!t.shards[&0].hinted);
        assert_eq!(t.observe(report(5, None)), Some(None));
        assert!(t.hint(0, 1, 3), "a wrong guess…");
        assert_eq!(t.observe(report(5, Some(1))), Some(Some(1)), "…is replaced by the feed of the same term");
        // Node 1, deposed in term 4, is elected again in term 5: the feed is believed.
        assert_eq!(t.shards[&0].leader, Some(1));
    }

    #[test]
    fn writes_go_to_the_leader_then_to_followers_ours_first() {
        let mut t = table();
        t.observe(report(1, Some(2)));
        let d = decide(&t, 0, Need::Leader, "ap", |_| true).unwrap();
        assert_eq!(d, Decision { candidates: vec![2, 3, 1], panic: false });
        // The leader is out of rotation: a follower forwards, ours first.
        let d = decide(&t, 0, Need::Leader, "eu", |id| id != 2).unwrap();
        assert_eq!(d.candidates, [1, 3]);
        assert!(decide(&t, 9, Need::Leader, "eu", |_| true).is_none(), "no such shard");
    }

    #[test]
    fn stale_reads_stay_in_our_region_when_they_can() {
        let mut t = table();
        t.observe(report(1, Some(2)));
        assert_eq!(decide(&t, 0, Need::Stale, "eu", |_| true).unwrap().candidates, [1, 2, 3]);
        assert_eq!(decide(&t, 0, Need::Stale, "us", |_| true).unwrap().candidates, [2, 1, 3]);
        assert_eq!(decide(&t, 0, Need::Stale, "eu", |id| id != 1).unwrap().candidates, [2, 3]);
    }

    #[test]
    fn with_no_usable_node_every_voter_is_tried_rather_than_none() {
        let mut t = table();
        t.observe(report(1, Some(3)));
        let d = decide(&t, 0, Need::Leader, "eu", |_| false).unwrap();
        assert_eq!(d, Decision { candidates: vec![3, 1, 2], panic: true });
    }
}
