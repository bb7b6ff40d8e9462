//! The node's background work, one set of tasks per shard: the proposer that batches queued
//! commands into log entries, the ticker that lets withdrawal holds expire, the watcher that
//! counts leader changes, the loop that moves leadership home, and the one that asks for an
//! election as soon as a dead leader's lease has run out. Each gathers what it needs
//! and acts; the decisions themselves are `crate::decide`'s.

use std::sync::Arc;
use std::time::Duration;

use openraft::Instant as _;
use openraft::rt::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use tokio::sync::mpsc;

use super::{BATCHES_IN_FLIGHT_MAX, NodeInner, Shard, Waiter, health_of, health_view, write_error};
use crate::api::BATCH_COMMANDS_MAX;
use crate::api::CommitHealth;
use crate::batch::{Batches, answer};
use crate::decide::{HomeView, Succession, SuccessionView, decide_home, succession};
use crate::raft::{NodeId, Proposal, Reply, Request, TypeConfig};
use ledger_core::Command;

/// A proposal that takes at least this long from `client_write` to committed is logged at debug.
const SLOW_COMMIT_US: u64 = 50_000;

/// Turns queued commands into log entries: whatever queued while earlier batches were in
/// flight rides the next entry. Batching here is what lets one fsync and one replication round
/// serve many clients.
pub(super) async fn propose_loop(node: Arc<NodeInner>, shard: Arc<Shard>, rx: mpsc::Receiver<(Command, Waiter)>) {
    let mut stop = node.stop.subscribe();
    let mut batches = Batches::new(rx, BATCHES_IN_FLIGHT_MAX, BATCH_COMMANDS_MAX);
    loop {
        let (permit, mut batch) = tokio::select! {
            next = batches.next() => match next { Some(b) => b, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        // A caller that gave up (deadline) already got an answer; proposing its command now
        // would only make that answer's "may still apply" come true later.
        batch.retain(|(_, waiter)| !waiter.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (cmds, waiters): (Vec<Command>, Vec<Waiter>) = batch.into_iter().unzip();
        let proposal = Proposal { at: node.env.clock.now(), request: Request::Commands(cmds) };
        let shard = shard.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let shard_id = shard.id.0;
            let started = tokio::time::Instant::now();
            quorum_lease(&shard).await;
            let written = shard.raft.client_write(proposal).await;
            let us = started.elapsed().as_micros() as u64;
            tracing::trace!(shard = shard_id, commands = waiters.len(), us, "batch committed");
            if us >= SLOW_COMMIT_US {
                // Only the slow ones at debug, so a tail can be traced without moving it.
                tracing::debug!(shard = shard_id, commands = waiters.len(), ms = us / 1000, "slow batch commit");
            }
            let result = match written {
                Ok(resp) => {
                    let Reply::Outcomes(outcomes) = resp.data else {
                        unreachable!("a command batch applies as commands")
                    };
                    Ok(outcomes)
                }
                Err(e) => Err(write_error(shard_id, &e)),
            };
            answer(waiters, result);
        });
    }
}

/// Waits (at most one heartbeat) while this replica leads without a quorum lease. openraft
/// refuses a write on such a leader as if it did not lead, and a leader just elected has no
/// lease until a quorum acknowledges its first entry, a round trip later: the calls that
/// reached the new leader first would be told to go elsewhere (and a router would eject it for
/// failing them). Nothing has been proposed yet, so waiting is safe. The wait is short so that
/// a leader cut off from its quorum, or still searching a follower's log, answers before a
/// client's per-call timeout and the client looks elsewhere.
async fn quorum_lease(shard: &Shard) {
    // Leading, but not serving by the health rule: no quorum acknowledgement within the lease.
    let lapsed = |m: &RaftMetrics<TypeConfig>| {
        m.state == ServerState::Leader && health_of(shard, health_view(shard, m)) != CommitHealth::Leader
    };
    if !lapsed(&shard.raft.metrics().borrow_watched()) {
        return;
    }
    let mut metrics = shard.raft.metrics();
    let until = tokio::time::Instant::now() + Duration::from_millis(shard.raft.config().heartbeat_interval);
    while lapsed(&metrics.borrow_watched()) {
        match tokio::time::timeout_at(until, metrics.changed()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Counts changes of the shard's leader as this replica sees them, for operators, and tells
/// the node's leadership subscribers about every change of leader, term or membership.
pub(super) async fn watch_leadership(node: Arc<NodeInner>, shard: Arc<Shard>) {
    let mut metrics = shard.raft.metrics();
    let seen = |m: &RaftMetrics<TypeConfig>| (m.current_leader, m.current_term, *m.membership_config.log_id());
    let mut last = seen(&metrics.borrow_watched());
    while metrics.changed().await.is_ok() {
        let now = seen(&metrics.borrow_watched());
        if now == last {
            continue;
        }
        if now.0 != last.0 && now.0.is_some() {
            shard.leader_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        last = now;
        node.leadership.send_modify(|v| *v += 1);
    }
}

/// A voter counts as caught up when it trails the leader's log by at most this many entries.
const HOME_CAUGHT_UP_SLACK: u64 = 64;

/// Leader placement (the rule is [`decide_home`]): every check period, on the replica that
/// leads, see which home-region voters are reachable and caught up, and hand leadership over
/// when the rule says so.
pub(super) async fn home_loop(node: Arc<NodeInner>, shard: Arc<Shard>, home: String) {
    let mut stop = node.stop.subscribe();
    // Several heartbeats apart, so a check sees replication progress, not one RPC's luck.
    let period = Duration::from_millis((node.config.rtt_ms * 10).clamp(300, 5_000));
    let cooldown = period * 10;
    let mut healthy = 0u32;
    let mut last_transfer: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let m: RaftMetrics<TypeConfig> = shard.raft.metrics().borrow_watched().clone();
        let last = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        // Reachable: acknowledged a heartbeat within the last check period (now, not only at
        // some point); caught up: its log trails ours by at most the slack.
        let reachable = |id: &NodeId| {
            m.heartbeat.as_ref().and_then(|h| h.get(id)).and_then(|t| t.as_ref()).is_some_and(|t| t.elapsed() <= period)
        };
        let caught_up = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id))
                .and_then(|l| l.as_ref())
                .is_some_and(|l| l.index + HOME_CAUGHT_UP_SLACK >= last)
        };
        let view = HomeView {
            leads: m.state == ServerState::Leader,
            at_home: node.config.info.region == home,
            home_voters: membership
                .voter_ids()
                .filter(|id| membership.get_node(id).is_some_and(|n| n.region == home))
                .map(|id| (id, reachable(&id), caught_up(&id)))
                .collect(),
            since_transfer: last_transfer.map(|t| t.elapsed()),
        };
        let Some(target) = decide_home(&mut healthy, &view, cooldown) else { continue };
        tracing::info!(shard = %shard.id, to = target, region = %home, "moving leadership home");
        if let Err(e) = shard.raft.trigger().transfer_leader(target).await {
            tracing::warn!(shard = %shard.id, "leader transfer failed: {e}");
        }
        last_transfer = Some(tokio::time::Instant::now());
    }
}

/// Succession (the rule is [`succession`]): on a voter with a place in the shard's
/// succession, watch for the leader going silent and ask for an election (a pre-vote) as soon
/// as its lease has run out everywhere, instead of openraft's lease plus a random timeout.
/// What counts as hearing from the cluster: an accepted AppendEntries, and any change of this
/// replica's term or vote (an election in progress, which it may have voted in).
pub(super) async fn succession_loop(node: Arc<NodeInner>, shard: Arc<Shard>, slot: u32) {
    let mut stop = node.stop.subscribe();
    let config = shard.raft.config().clone();
    let heartbeat = Duration::from_millis(config.heartbeat_interval);
    let timing = Succession {
        lease: Duration::from_millis(config.election_timeout_max),
        stagger: crate::raft::succession_stagger(&config),
        // A heartbeat, at least two round trips: the last request has been answered (a new one
        // starts a new round, and an answer to the old one can be lost).
        retry: heartbeat,
    };
    let metrics = shard.raft.metrics();
    let mut voted = None;
    let mut voted_at = tokio::time::Instant::now();
    let mut asked: Option<tokio::time::Instant> = None;
    let mut outranks = false;
    // Whether this replica has led the shard since it started: a leader that steps down (it
    // handed leadership home, or heard a higher term) has heard a leader, itself, and the
    // leases its heartbeats started run on the others. Taken for a fresh replica, it asked for
    // an election at once and took leadership back from the one it had just handed it to.
    let mut led = false;
    loop {
        // Read in place: the watch holds a lock while borrowed, and nothing here awaits.
        let (vote, follower) = {
            let m = metrics.borrow_watched();
            led |= m.state == ServerState::Leader;
            let voter = m.membership_config.membership().voter_ids().any(|id| id == node.config.node_id);
            (Some((m.current_term, m.vote)), m.state == ServerState::Follower && voter)
        };
        let now = tokio::time::Instant::now();
        if vote != voted {
            voted = vote;
            voted_at = now;
        }
        let contact = shard.leader_contact.lock().expect("leader contact lock").back().map(|(t, _)| *t);
        let heard = contact.map_or(voted_at, |c| c.max(voted_at));
        let view = SuccessionView {
            follower,
            slot,
            silent: now - heard,
            heard_leader: contact.is_some() || led,
            since_asked: asked.map(|a| now - a),
            outranks: std::mem::take(&mut outranks),
        };
        let wait = match succession(view, timing) {
            Ok(()) => {
                let silent_ms = view.silent.as_millis() as u64;
                if view.heard_leader {
                    tracing::info!(shard = %shard.id, slot, silent_ms, "leader silent past its lease: asking for an election");
                } else {
                    tracing::debug!(shard = %shard.id, slot, silent_ms, "no leader heard since start: asking for an election");
                }
                asked = Some(now);
                if let Err(e) = shard.raft.trigger().elect(true).await {
                    tracing::warn!(shard = %shard.id, "election request failed: {e}");
                }
                timing.retry
            }
            Err(wait) => wait,
        };
        tokio::select! {
            // Otherwise woken by time only: a vote seen late only makes the wait longer.
            _ = tokio::time::sleep(wait) => {}
            _ = shard.outranks_candidate.notified() => outranks = true,
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// With the retained state on disk, asks for a snapshot (a checkpoint) once the commands
/// applied since the last one reach `checkpoint_every_commands`: their writes wait in memory
/// until then, and the snapshot interval counts log entries, which carry from one to 1,024
/// commands. Every replica decides for itself, as for the interval in entries.
async fn checkpoint_if_buffer_full(node: &NodeInner, shard: &Shard) {
    if !matches!(node.config.state, crate::store::StateStorage::Disk { .. }) {
        return;
    }
    let applied = shard.cell.commands_since_snapshot.load(std::sync::atomic::Ordering::Relaxed);
    if applied >= node.config.checkpoint_every_commands {
        // openraft ignores it while a snapshot is being built; an error means the group stopped.
        if let Err(e) = shard.raft.trigger().snapshot().await {
            tracing::debug!(shard = %shard.id, "checkpoint not triggered: {e}");
        }
    }
}

/// Proposes a tick whenever this replica leads and a withdrawal hold is due, so holds expire
/// in cluster time even when no command arrives; on every replica, asks for a checkpoint when
/// the state's buffer is full ([`checkpoint_if_buffer_full`]).
pub(super) async fn tick_loop(node: Arc<NodeInner>, shard: Arc<Shard>) {
    let mut stop = node.stop.subscribe();
    let mut interval = tokio::time::interval(node.config.tick_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        checkpoint_if_buffer_full(&node, &shard).await;
        if !shard.raft.is_leader() {
            continue;
        }
        let now = node.env.clock.now();
        let due = shard.cell.read().ledger.next_hold_expiry().is_some_and(|t| t <= now);
        if due {
            let proposal = Proposal { at: now, request: Request::Tick };
            if let Err(e) = shard.raft.client_write(proposal).await {
                tracing::debug!(shard = %shard.id, "tick not applied: {e}");
            }
        }
    }
}
