//! Changing which nodes replicate a shard, while it keeps taking writes.
//!
//! Every change runs on the shard's leader and goes through openraft's joint consensus, so
//! the shard keeps a quorum of the old and the new voters throughout and no acknowledged write
//! depends on a node that is leaving. A node never votes before it has caught up: it joins as a
//! learner and is promoted only once its log is close to the leader's, which keeps a slow
//! newcomer from stalling commits. Replacing a dead node and moving a replica are the same
//! operation: the newcomer catches up first, then one change swaps it for the old voter.
//!
//! Node ids are never reused. A wiped node has lost the votes and log entries its id stands
//! for; letting it back under that id could elect a leader without acknowledged entries. So a
//! change refuses an id the shard already knows under another address, and an operator
//! brings a wiped node back under a new id with [`MembershipChange::Replace`].

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::errors::{ClientWriteError, RaftError};
use openraft::rt::WatchReceiver;
use openraft::{ChangeMembers, ServerState};

use super::LedgerNode;
use crate::api::{LedgerError, MembershipChange, MembershipView};
use crate::raft::{NodeId, NodeInfo, TypeConfig};

impl LedgerNode {
    /// Changes the replicas of `shard`; this node must lead it. Gives up after `timeout`, which
    /// leaves the shard in a valid state (at worst with an extra learner): the change can be
    /// run again, and a change already made answers with the current replicas.
    pub async fn change_membership(
        &self,
        shard: u32,
        change: MembershipChange,
        timeout: Duration,
    ) -> Result<MembershipView, LedgerError> {
        let s = self.inner.shard(shard).ok_or(LedgerError::UnknownShard(shard))?;
        let raft = s.raft.clone();
        let m = raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            let info = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l));
            return Err(LedgerError::not_leader(shard, m.current_leader, info));
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let refuse = |why: String| Err(LedgerError::Membership(why));
        // The same id under another address is a different machine, or a wiped one.
        let check_new = |node: NodeId, info: &NodeInfo| match membership.get_node(&node) {
            Some(known) if known.addr != info.addr => refuse(format!(
                "node {node} is already a replica of shard {shard} at {}; a replaced or wiped node needs a new id",
                known.addr
            )),
            _ => Ok(()),
        };
        let work = async {
            match change {
                MembershipChange::AddLearner { node, info } => {
                    check_new(node, &info)?;
                    if !voters.contains(&node) {
                        raft.add_learner(node, info, false).await.map_err(|e| write_error(shard, &e))?;
                    }
                }
                MembershipChange::AddVoter { node, info } => {
                    check_new(node, &info)?;
                    if !voters.contains(&node) {
                        raft.add_learner(node, info, true).await.map_err(|e| write_error(shard, &e))?;
                        let add = ChangeMembers::AddVoterIds(BTreeSet::from([node]));
                        raft.change_membership(add, false).await.map_err(|e| write_error(shard, &e))?;
                    }
                }
                MembershipChange::Remove { node } => {
                    if voters.contains(&node) {
                        if voters.len() == 1 {
                            return refuse(format!("node {node} is the last voter of shard {shard}"));
                        }
                        let remove = ChangeMembers::RemoveVoters(BTreeSet::from([node]));
                        raft.change_membership(remove, false).await.map_err(|e| write_error(shard, &e))?;
                    } else if membership.get_node(&node).is_some() {
                        let remove = ChangeMembers::RemoveNodes(BTreeSet::from([node]));
                        raft.change_membership(remove, false).await.map_err(|e| write_error(shard, &e))?;
                    }
                }
                MembershipChange::Replace { old, node, info } => {
                    if old == node {
                        return refuse(format!(
                            "node {node} cannot replace itself; a wiped node rejoins under a new id"
                        ));
                    }
                    check_new(node, &info)?;
                    // Already done: the newcomer votes and the old voter is gone.
                    if voters.contains(&node) && !voters.contains(&old) {
                        return Ok(());
                    }
                    if !voters.contains(&old) {
                        return refuse(format!("node {old} is not a voter of shard {shard}"));
                    }
                    if voters.contains(&node) {
                        return refuse(format!("node {node} already votes in shard {shard}"));
                    }
                    raft.add_learner(node, info, true).await.map_err(|e| write_error(shard, &e))?;
                    let mut next = voters.clone();
                    next.remove(&old);
                    next.insert(node);
                    let swap = ChangeMembers::ReplaceAllVoters(next);
                    raft.change_membership(swap, false).await.map_err(|e| write_error(shard, &e))?;
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, work).await.unwrap_or(Err(LedgerError::Timeout))?;
        let m = raft.metrics().borrow_watched().clone();
        let now = m.membership_config.membership();
        Ok(MembershipView {
            shard,
            leader: self.id(),
            voters: now.voter_ids().collect(),
            learners: now.learner_ids().collect(),
            log_index: m.membership_config.log_id().as_ref().map(|l| l.index),
        })
    }
}

fn write_error(shard: u32, e: &RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> LedgerError {
    match e {
        // Another change is still being committed: retrying later is the answer.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            openraft::errors::ChangeMembershipError::InProgress(_),
        )) => LedgerError::Unavailable(e.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => LedgerError::Membership(c.to_string()),
        _ => super::write_error(shard, e),
    }
}
