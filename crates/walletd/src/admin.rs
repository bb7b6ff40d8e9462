//! `walletd admin`: change which nodes replicate each shard, and show the replicas.
//!
//! Every change goes to the shard's leader and through joint consensus (see
//! `raft_ledger::membership`), so it is safe while the cluster takes writes. The CLI asks a
//! newcomer for its own id, region and zone rather than trusting flags, so a typo cannot
//! register a node under the wrong identity.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use raft_ledger::api::{LedgerError, ShardStatus};
use raft_ledger::api::{MembershipChange, MembershipView};
use raft_ledger::client::{ClientError, LedgerClient};
use raft_ledger::raft::{NodeId, NodeInfo};

use crate::cli::ClusterArgs;
use wallet_api::exit;

/// Options of `walletd admin`.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// Which cluster (the members view asks each node listed), and its key.
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// Give up on one shard's change after this many seconds (a newcomer may need to catch up).
    #[arg(long, default_value_t = 120, global = true)]
    pub(crate) timeout_secs: u64,
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// What to do.
    #[command(subcommand)]
    pub(crate) op: AdminOp,
}

/// One replica operation.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminOp {
    /// Per shard: leader and its region, voters, learners, commit and apply indexes, leader
    /// changes, as the shard's leader reports them.
    Members,
    /// Add the node at ADDR to shards: as a learner, then, once caught up, as a voter.
    AddNode {
        /// The new node's address; it must be running (without --bootstrap).
        addr: String,
        /// Only these shards (comma separated); default every shard.
        #[arg(long, value_delimiter = ',')]
        shards: Vec<u32>,
        /// Leave it a learner: it receives the log but does not vote.
        #[arg(long)]
        learner: bool,
    },
    /// Take node ID out of every shard (or --shards) it replicates.
    RemoveNode {
        /// The node's id.
        id: NodeId,
        /// Only these shards (comma separated).
        #[arg(long, value_delimiter = ',')]
        shards: Vec<u32>,
    },
    /// Replace voter OLD (dead or alive) with the node at ADDR in every shard OLD votes in. A
    /// wiped node comes back this way, under a new id.
    ReplaceNode {
        /// The leaving node's id.
        old: NodeId,
        /// The new node's address; it must be running (without --bootstrap).
        addr: String,
    },
    /// Move one shard's replica from node FROM to the node at ADDR.
    MoveReplica {
        /// The shard.
        shard: u32,
        /// The node giving up its replica.
        from: NodeId,
        /// The node taking it.
        addr: String,
    },
}

/// Runs one admin operation and returns the process exit code: 0 done, 2 refused (nothing to
/// change, or a change refused as unsafe), 4 some change timed out (run it again: a change
/// already made answers with the current replicas).
pub(crate) async fn run(args: AdminArgs) -> Result<i32, String> {
    let nodes = args.cluster.nodes.clone();
    let client = LedgerClient::connect(nodes.clone(), args.cluster.options()?)
        .await
        .map_err(|e| format!("cannot reach the cluster at {}: {e}", nodes.join(",")))?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let all: Vec<u32> = (0..client.shard_count()).collect();
    let pick = |shards: &Vec<u32>| if shards.is_empty() { all.clone() } else { shards.clone() };
    let changes: Vec<(u32, MembershipChange)> = match &args.op {
        AdminOp::Members => {
            let view = cluster_view(&client, &nodes, Duration::from_secs(5)).await;
            print_members(&view, client.shard_count(), args.json);
            return Ok(0);
        }
        AdminOp::AddNode { addr, shards, learner } => {
            let Some((node, info)) = identify(&client, addr).await? else { return Ok(exit::REFUSED) };
            pick(shards)
                .into_iter()
                .map(|s| {
                    let change = if *learner {
                        MembershipChange::AddLearner { node, info: info.clone() }
                    } else {
                        MembershipChange::AddVoter { node, info: info.clone() }
                    };
                    (s, change)
                })
                .collect()
        }
        AdminOp::RemoveNode { id, shards } => {
            // Only shards that have the node: removing a non-member would "succeed" silently.
            let view = cluster_view(&client, &nodes, timeout).await;
            let member = |s: &u32| view.get(s).is_some_and(|v| v.voters.contains(id) || v.learners.contains(id));
            let listed: Vec<u32> = pick(shards);
            let unseen: Vec<String> = listed.iter().filter(|s| !view.contains_key(s)).map(|s| s.to_string()).collect();
            if !unseen.is_empty() {
                return Err(format!("no leader reachable for shard(s) {}; try again", unseen.join(",")));
            }
            let hit: Vec<u32> = listed.into_iter().filter(member).collect();
            if hit.is_empty() {
                eprintln!("refused: node {id} is not a member of any of those shards; nothing to remove");
                return Ok(exit::REFUSED);
            }
            hit.into_iter().map(|s| (s, MembershipChange::Remove { node: *id })).collect()
        }
        AdminOp::ReplaceNode { old, addr } => {
            let Some((node, info)) = identify(&client, addr).await? else { return Ok(exit::REFUSED) };
            let view = cluster_view(&client, &nodes, timeout).await;
            let voted: Vec<u32> = view.iter().filter(|(_, s)| s.voters.contains(old)).map(|(s, _)| *s).collect();
            if voted.is_empty() {
                return Err(format!("no shard leader reports node {old} as a voter"));
            }
            voted.into_iter().map(|s| (s, MembershipChange::Replace { old: *old, node, info: info.clone() })).collect()
        }
        AdminOp::MoveReplica { shard, from, addr } => {
            let Some((node, info)) = identify(&client, addr).await? else { return Ok(exit::REFUSED) };
            vec![(*shard, MembershipChange::Replace { old: *from, node, info })]
        }
    };
    let mut code = exit::OK;
    // One shard at a time: each change waits for its newcomer, and the cluster keeps most of
    // its replication bandwidth for client traffic.
    for (shard, change) in changes {
        match client.change_membership(shard, change, timeout).await {
            Ok(v) => print_view(&v, args.json),
            Err(ClientError::Ledger(LedgerError::Membership(why))) => {
                code = code.max(exit::REFUSED);
                eprintln!("shard {shard}: refused: {why}");
            }
            Err(e) => {
                code = code.max(exit::UNKNOWN);
                eprintln!("shard {shard}: outcome unknown ({e}); run the same command again");
            }
        }
    }
    Ok(code)
}

/// Asks the node at `addr` who it is. `None` (after saying why) when it cannot join as it is:
/// it advertises another address, or places players differently from the cluster.
async fn identify(client: &LedgerClient, addr: &str) -> Result<Option<(NodeId, NodeInfo)>, String> {
    let status = client.status(addr).await.map_err(|e| format!("cannot reach the new node: {e}"))?;
    if status.info.addr != addr {
        eprintln!("refused: the node at {addr} advertises {}; use that address", status.info.addr);
        return Ok(None);
    }
    // A node that routes players differently would refuse, as the wrong shard, the commands the
    // rest of the cluster sends it once it leads: the same topology (or none) everywhere.
    if status.shard_map() != *client.shard_map() {
        let homes: Vec<String> = status.home_regions.iter().map(|(s, r)| format!("{s}:{r}")).collect();
        let homes = if homes.is_empty() { "none".to_string() } else { homes.join(" ") };
        eprintln!(
            "refused: the node at {addr} places players differently ({} shards, home regions {homes}) from the \
             cluster; start it with the cluster's topology file",
            status.shard_count
        );
        return Ok(None);
    }
    Ok(Some((status.node_id, status.info)))
}

/// Each shard as its leader reports it (the highest term wins if two nodes claim it). Waits up
/// to `patience` for every shard to have a leader (one may be electing after a crash); shards
/// still without a reachable leader are missing.
pub(crate) async fn cluster_view(
    client: &LedgerClient,
    nodes: &[String],
    patience: Duration,
) -> BTreeMap<u32, ShardStatus> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let mut view: BTreeMap<u32, ShardStatus> = BTreeMap::new();
        for addr in nodes {
            let Ok(status) = client.status(addr).await else { continue };
            for s in status.shards.into_iter().filter(|s| s.state == raft_ledger::api::ReplicaRole::Leader) {
                if view.get(&s.shard).is_none_or(|known| known.term < s.term) {
                    view.insert(s.shard, s);
                }
            }
        }
        if view.len() as u32 >= client.shard_count() || tokio::time::Instant::now() >= deadline {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_members(view: &BTreeMap<u32, ShardStatus>, shards: u32, json: bool) {
    if json {
        println!("{}", serde_json::to_string(&view.values().collect::<Vec<_>>()).expect("status serialises"));
        return;
    }
    println!("shard  leader  leader_region  home        voters          learners  committed  applied  changes");
    for shard in 0..shards {
        let Some(s) = view.get(&shard) else {
            println!("{shard:<6} no leader reachable");
            continue;
        };
        let ids = |v: &[NodeId]| {
            if v.is_empty() { "-".to_string() } else { v.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",") }
        };
        println!(
            "{:<6} {:<7} {:<14} {:<11} {:<15} {:<9} {:<10} {:<8} {}",
            s.shard,
            s.leader.map_or("-".into(), |l| l.to_string()),
            s.leader_region.as_deref().unwrap_or("-"),
            s.home_region.as_deref().unwrap_or("-"),
            ids(&s.voters),
            ids(&s.learners),
            s.committed.map_or("-".into(), |c| c.to_string()),
            s.applied.map_or("-".into(), |a| a.to_string()),
            s.leader_changes
        );
    }
}

fn print_view(v: &MembershipView, json: bool) {
    if json {
        println!("{}", serde_json::to_string(v).expect("membership view serialises"));
    } else {
        let ids = |v: &[NodeId]| {
            if v.is_empty() { "-".to_string() } else { v.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",") }
        };
        println!(
            "shard {}: voters {} learners {} (membership at log index {}, by leader {})",
            v.shard,
            ids(&v.voters),
            ids(&v.learners),
            v.log_index.map_or("-".into(), |i| i.to_string()),
            v.leader
        );
    }
}
