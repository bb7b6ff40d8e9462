//! Pure decisions of the node runtime, each a function of what the runtime observed (a view) to
//! what it should do, so they are tested without a cluster: whether a replica can commit now
//! (its health), how stale a local read may be, whether to move leadership home, and which
//! shard a command runs in. The runtime's loops only gather the views and act on the answers.

use std::time::Duration;

use ledger_core::{Command, NodeId, ShardMap};

use crate::api::{CommitHealth, LedgerError};

/// What a replica knows about its leader and quorum, as ages (time since).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HealthView {
    /// This replica leads the shard.
    pub(crate) leads: bool,
    /// Leading: since a quorum last acknowledged it.
    pub(crate) quorum_acked: Option<Duration>,
    /// Following: since the leader's last accepted AppendEntries.
    pub(crate) leader_contact: Option<Duration>,
    /// Following: since the leader last had a quorum, as it reported.
    pub(crate) leader_quorum: Option<Duration>,
}

impl HealthView {
    /// Since the leader was last heard: a quorum's ack on the leader, the leader's message here.
    pub(crate) fn leader_heard(&self) -> Option<Duration> {
        if self.leads { self.quorum_acked } else { self.leader_contact }
    }
}

/// The health rule: a replica is serving when the leader it would send a write to (itself, or
/// the one it follows) is alive and had a quorum within `lease`. The lease is the shard's
/// `election_timeout_max`: how long followers keep believing in a leader before they elect
/// another, so a replica never reports serving for a leader its peers have given up on.
pub(crate) fn commit_health(view: HealthView, lease: Duration) -> CommitHealth {
    let fresh = |age: Option<Duration>| age.is_some_and(|a| a <= lease);
    if view.leads {
        return if fresh(view.quorum_acked) { CommitHealth::Leader } else { CommitHealth::NoQuorum };
    }
    if !fresh(view.leader_contact) {
        return CommitHealth::NoLeader;
    }
    if fresh(view.leader_quorum) { CommitHealth::Follower } else { CommitHealth::NoQuorum }
}

/// How stale a local read may be: every write acknowledged more than this long ago is in the
/// replica's applied state. On the leader it is the time since a quorum last acknowledged it
/// (`None` until it has applied an entry of its own term); on a follower, the age of the
/// youngest moment a leader vouched for whose index the replica has applied (`vouched`: ages
/// and applied indexes). `None` when neither is known.
pub(crate) fn staleness_bound(
    leads: bool,
    quorum_acked: Option<Duration>,
    vouched: &[(Duration, u64)],
    applied: u64,
) -> Option<Duration> {
    if leads {
        return quorum_acked;
    }
    vouched.iter().filter(|(_, index)| *index <= applied).map(|(age, _)| *age).min()
}

/// Checks a home voter must pass in a row before leadership moves to it: hysteresis, so a
/// region that flaps does not drag leadership back and forth.
pub(crate) const HOME_CHECKS_HEALTHY: u32 = 3;

/// What one check of leader placement sees on a shard's leader.
#[derive(Debug, Clone, Default)]
pub(crate) struct HomeView {
    /// This replica leads the shard.
    pub(crate) leads: bool,
    /// This node is in the shard's home region.
    pub(crate) at_home: bool,
    /// The home region's voters, in membership order: (id, acknowledged a heartbeat within the
    /// check period, its log trails the leader's by at most the slack).
    pub(crate) home_voters: Vec<(NodeId, bool, bool)>,
    /// Since leadership was last handed over by this replica, if it ever was.
    pub(crate) since_transfer: Option<Duration>,
}

/// Leader placement: while this replica leads from outside the shard's home region, hand
/// leadership to the first home voter that has been reachable and caught up for
/// [`HOME_CHECKS_HEALTHY`] checks in a row, at most once per `cooldown`. `healthy` counts the
/// checks in a row; the answer is the voter to transfer to now, if any. When the home region
/// is down nothing qualifies, and leadership stays where the election put it.
pub(crate) fn decide_home(healthy: &mut u32, view: &HomeView, cooldown: Duration) -> Option<NodeId> {
    let target = (view.leads && !view.at_home)
        .then(|| view.home_voters.iter().find(|(_, reachable, caught_up)| *reachable && *caught_up))
        .flatten();
    let Some((target, _, _)) = target else {
        *healthy = 0;
        return None;
    };
    *healthy += 1;
    if *healthy < HOME_CHECKS_HEALTHY || view.since_transfer.is_some_and(|t| t < cooldown) {
        return None;
    }
    *healthy = 0;
    Some(*target)
}

/// What a voter with a place in the shard's succession sees when deciding whether to ask for
/// an election now rather than wait for openraft's own timer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SuccessionView {
    /// This replica is a follower (not leading, not already campaigning).
    pub(crate) follower: bool,
    /// Its place in the shard's succession (0 campaigns first).
    pub(crate) slot: u32,
    /// Since it last heard anything that shows a leader or an election alive: the leader's last
    /// accepted AppendEntries, the last change of its own term or vote, or its start.
    pub(crate) silent: Duration,
    /// It has heard from a leader since it started. Until then no lease can be running on it
    /// (openraft starts with none), so a fresh cluster elects in succession order at once
    /// rather than every voter's timer firing together and splitting the vote.
    pub(crate) heard_leader: bool,
    /// Since it last asked for an election, if it has.
    pub(crate) since_asked: Option<Duration>,
    /// An earlier slot with a shorter log has just asked for this replica's vote and been
    /// refused: it cannot win, so waiting out the stagger behind it only costs time.
    pub(crate) outranks: bool,
}

/// Succession timing, from the shard's Raft timing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Succession {
    /// How long every voter keeps believing in a silent leader (openraft's lease, the same on
    /// every voter of a succession): no vote is granted before it runs out.
    pub(crate) lease: Duration,
    /// How much later each next slot asks: long enough for the slot before it to win an
    /// election and be heard.
    pub(crate) stagger: Duration,
    /// How soon a refused request is repeated.
    pub(crate) retry: Duration,
}

/// Whether a voter should ask for an election now (a pre-vote, so a leader the others still
/// hear is never disturbed). openraft alone campaigns a lease plus a random timeout after the
/// leader goes silent; the first successor asks as soon as the lease has run out on every
/// voter, the next one a stagger later if nobody has won by then, or at once if the one before
/// it cannot win for a shorter log. Returns when to look again if not now.
pub(crate) fn succession(view: SuccessionView, t: Succession) -> Result<(), Duration> {
    if !view.follower {
        return Err(t.retry);
    }
    let lease = if view.heard_leader { t.lease } else { Duration::ZERO };
    let due = if view.outranks { lease } else { lease + t.stagger * view.slot };
    if view.silent < due {
        return Err(due - view.silent);
    }
    match view.since_asked {
        Some(asked) if asked < t.retry => Err(t.retry - asked),
        _ => Ok(()),
    }
}

/// The shard a command runs in: the requested one, checked against the command's player, or
/// the player's. A transfer's two players must share a shard.
pub(crate) fn route(map: &ShardMap, shard: Option<u32>, cmd: &Command) -> Result<u32, LedgerError> {
    let place = |p| map.shard_for(p).map(|s| s.0).map_err(LedgerError::from);
    let home = cmd.player().map(place).transpose()?;
    // A transfer moves money inside one shard's ledger: both players must live there.
    if let (Command::Transfer { to, .. }, Some(h)) = (cmd, home) {
        let payee = place(to)?;
        if payee != h {
            return Err(LedgerError::WrongShard { expected: payee, requested: h });
        }
    }
    match (shard, home) {
        (Some(s), Some(h)) if s != h => Err(LedgerError::WrongShard { expected: h, requested: s }),
        (Some(s), _) | (None, Some(s)) => Ok(s),
        (None, None) => Err(LedgerError::NoShard),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    #[test]
    fn health_needs_a_live_leader_with_a_quorum_behind_it() {
        let lease = Duration::from_millis(350);
        let check = |view: HealthView| commit_health(view, lease);
        let leader = |acked| HealthView { leads: true, quorum_acked: acked, ..HealthView::default() };
        assert_eq!(check(leader(ms(100))), CommitHealth::Leader);
        assert_eq!(check(leader(ms(351))), CommitHealth::NoQuorum, "two of three stopped: the leader is alone");
        assert_eq!(check(leader(None)), CommitHealth::NoQuorum, "elected, never acknowledged");
        let follower = |contact, quorum| HealthView {
            leads: false,
            leader_contact: contact,
            leader_quorum: quorum,
            ..HealthView::default()
        };
        assert_eq!(check(follower(ms(50), ms(150))), CommitHealth::Follower);
        assert_eq!(check(follower(ms(400), ms(150))), CommitHealth::NoLeader, "the leader it names is dead");
        assert_eq!(check(follower(None, None)), CommitHealth::NoLeader);
        assert_eq!(check(follower(ms(50), ms(900))), CommitHealth::NoQuorum, "it hears a leader that lost its quorum");
        assert_eq!(check(follower(ms(50), None)), CommitHealth::NoQuorum);
        assert!(CommitHealth::Leader.serving() && CommitHealth::Follower.serving());
        assert!(!CommitHealth::NoLeader.serving() && !CommitHealth::NoQuorum.serving());
    }

    #[test]
    fn a_local_read_is_as_stale_as_the_youngest_vouched_moment_it_has_applied() {
        let vouched = [(ms(900).unwrap(), 10), (ms(500).unwrap(), 12), (ms(100).unwrap(), 15)];
        assert_eq!(staleness_bound(false, None, &vouched, 13), ms(500), "index 15 is not applied yet");
        assert_eq!(staleness_bound(false, None, &vouched, 15), ms(100));
        assert_eq!(staleness_bound(false, None, &vouched, 9), None, "nothing vouched it has caught up with");
        // Two leaders' moments need not ascend with their indexes: the youngest applied one.
        let crossed = [(ms(300).unwrap(), 10), (ms(200).unwrap(), 12), (ms(80).unwrap(), 11)];
        assert_eq!(staleness_bound(false, None, &crossed, 12), ms(80));
        assert_eq!(staleness_bound(false, None, &crossed, 10), ms(300));
        assert_eq!(staleness_bound(true, ms(40), &vouched, 0), ms(40), "the leader: its quorum's age");
        assert_eq!(staleness_bound(true, None, &[], 0), None);
    }

    #[test]
    fn leadership_goes_home_after_three_healthy_checks_and_not_again_within_the_cooldown() {
        let cooldown = Duration::from_secs(3);
        let away = |reachable, caught_up, since| HomeView {
            leads: true,
            at_home: false,
            home_voters: vec![(7, false, true), (9, reachable, caught_up)],
            since_transfer: since,
        };
        let mut healthy = 0;
        assert_eq!(decide_home(&mut healthy, &away(true, true, None), cooldown), None);
        assert_eq!(decide_home(&mut healthy, &away(true, true, None), cooldown), None);
        assert_eq!(decide_home(&mut healthy, &away(true, true, None), cooldown), Some(9), "third check in a row");
        assert_eq!(healthy, 0, "counting starts over after a transfer");
        // A flap resets the count: hysteresis.
        decide_home(&mut healthy, &away(true, true, None), cooldown);
        decide_home(&mut healthy, &away(true, true, None), cooldown);
        assert_eq!(decide_home(&mut healthy, &away(false, true, None), cooldown), None);
        assert_eq!(healthy, 0);
        assert_eq!(decide_home(&mut healthy, &away(true, false, None), cooldown), None, "not caught up");
        // Within the cooldown nothing moves, however healthy.
        for _ in 0..5 {
            assert_eq!(decide_home(&mut healthy, &away(true, true, Some(ms(2_000).unwrap())), cooldown), None);
        }
        assert_eq!(decide_home(&mut healthy, &away(true, true, Some(ms(3_000).unwrap())), cooldown), Some(9));
        // Nothing to do at home, or as a follower.
        let home = HomeView { at_home: true, ..away(true, true, None) };
        let follower = HomeView { leads: false, ..away(true, true, None) };
        for _ in 0..5 {
            assert_eq!(decide_home(&mut healthy, &home, cooldown), None);
            assert_eq!(decide_home(&mut healthy, &follower, cooldown), None);
        }
    }

    #[test]
    fn the_first_successor_asks_when_the_lease_runs_out_the_next_a_stagger_later() {
        let ms = Duration::from_millis;
        let t = Succession { lease: ms(270), stagger: ms(200), retry: ms(50) };
        let view = |slot, silent, asked: Option<u64>| SuccessionView {
            follower: true,
            slot,
            silent: ms(silent),
            since_asked: asked.map(ms),
            outranks: false,
            heard_leader: true,
        };
        assert_eq!(succession(view(0, 100, None), t), Err(ms(170)), "the leader may still be alive");
        assert_eq!(succession(view(0, 270, None), t), Ok(()), "every voter's lease has run out");
        assert_eq!(succession(view(1, 300, None), t), Err(ms(170)), "the first successor has its turn");
        assert_eq!(succession(view(1, 470, None), t), Ok(()), "nobody won: the next one asks");
        assert_eq!(succession(view(0, 300, Some(20)), t), Err(ms(30)), "a refused request is repeated, not spammed");
        assert_eq!(succession(view(0, 300, Some(50)), t), Ok(()));
        let outranks = SuccessionView { outranks: true, ..view(1, 300, None) };
        assert_eq!(succession(outranks, t), Ok(()), "the first successor's log is shorter: no point waiting for it");
        let fresh = |slot, silent| SuccessionView { heard_leader: false, ..view(slot, silent, None) };
        assert_eq!(succession(fresh(0, 0), t), Ok(()), "a new cluster: the first successor asks at once");
        assert_eq!(succession(fresh(1, 100), t), Err(ms(100)), "and the next one a stagger later");
        let campaigning = SuccessionView { follower: false, ..view(0, 900, None) };
        assert_eq!(succession(campaigning, t), Err(ms(50)), "a leader or candidate never asks");
    }

    #[test]
    fn commands_run_in_their_players_shard_and_transfers_stay_inside_one() {
        use ledger_core::{Amount, Currency, PlayerId, TxId};
        let map = ShardMap::uniform(8);
        let p = |s: &str| PlayerId::new(s).unwrap();
        let open = |who: &str| Command::OpenAccount {
            tx: TxId::new("t").unwrap(),
            player: p(who),
            currency: Currency::new("EUR").unwrap(),
        };
        let home = map.shard_for(&p("alice")).unwrap().0;
        assert_eq!(route(&map, None, &open("alice")), Ok(home));
        assert_eq!(route(&map, Some(home), &open("alice")), Ok(home));
        let other = (home + 1) % 8;
        assert_eq!(
            route(&map, Some(other), &open("alice")),
            Err(LedgerError::WrongShard { expected: home, requested: other })
        );
        let far = (0..).map(|i| format!("bob{i}")).find(|b| map.shard_for(&p(b)).unwrap().0 != home).unwrap();
        let xfer = Command::Transfer {
            tx: TxId::new("x").unwrap(),
            from: p("alice"),
            to: p(&far),
            currency: Currency::new("EUR").unwrap(),
            amount: Amount::new(1).unwrap(),
        };
        assert!(matches!(route(&map, None, &xfer), Err(LedgerError::WrongShard { .. })));
    }
}
