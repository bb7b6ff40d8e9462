//! The checker: after the cluster has healed, compares what clients were told (the history)
//! with what the ledger holds (the observation) and names every violation. Pure: the runner
//! gathers both sides over the network; the tests here feed them by hand.
//!
//! The rules, each a [`Violation`] kind:
//! - an acknowledged operation is in the ledger exactly once (else `lost` or `duplicated`);
//! - an operation whose outcome the client never learned is in it at most once, and one the
//!   ledger refused is not in it at all;
//! - nothing is in it that no client asked for (`phantom`), among the players the run owns;
//! - each player's balance is the sum of the entries the ledger holds for them, as the
//!   history predicts (`wrong_balance`), and never negative;
//! - every replica of a shard verifies (chain, balances, conservation) and all hold the same
//!   chain head (`replica_diverged`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a client was finally told about an operation (after retrying it with its key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Told {
    /// Acknowledged: the ledger applied it.
    Acked,
    /// Refused with a definite answer: nothing changed.
    Refused,
    /// Never resolved (the run ended while retries still failed): applied at most once.
    Unknown,
}

/// One operation of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Its idempotency key, which the ledger records as the entry's `tx_id`.
    pub key: String,
    /// The player whose balance it moves.
    pub player: String,
    /// Signed change to the player's balance if applied, in minor units (a bet is negative).
    pub delta: i64,
    /// What the client was told.
    pub told: Told,
}

/// A ledger entry as the checker needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEntry {
    /// The idempotency key that caused it.
    pub tx_id: String,
    /// Signed change to the player's balance, in minor units.
    pub delta: i64,
}

/// One replica of a shard as read after healing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The node.
    pub node: u64,
    /// Chain head: last sequence number and its hash (hex).
    pub head_seq: u64,
    /// The head entry's hash, hex.
    pub head_hash: String,
    /// `None` when the node's own verification passed; else what it found.
    pub verify_error: Option<String>,
}

/// What the ledger holds, read after healing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Per player: their entries (from the shard leader) and their balance.
    pub players: BTreeMap<String, (Vec<SeenEntry>, i64)>,
    /// Per shard: every replica.
    pub shards: BTreeMap<u32, Vec<Replica>>,
}

/// A rule broken, named so a person can find it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Violation {
    /// Acknowledged, not in the ledger: an RPO > 0.
    Lost { key: String, player: String },
    /// In the ledger more than once.
    Duplicated { key: String, player: String, times: usize },
    /// Refused to the client, yet applied.
    RefusedButApplied { key: String, player: String },
    /// In the ledger under a key no client used.
    Phantom { key: String, player: String },
    /// The balance the ledger reports is not the sum of its entries, or not what the
    /// history predicts.
    WrongBalance { player: String, expected: i64, reported: i64, from_entries: i64 },
    /// A balance below zero.
    NegativeBalance { player: String, balance: i64 },
    /// A replica whose own verification failed.
    ReplicaBroken { shard: u32, node: u64, why: String },
    /// Replicas of a shard with different chain heads after healing.
    ReplicaDiverged { shard: u32, heads: BTreeMap<u64, (u64, String)> },
}

/// The checker's verdict, written as `checker.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// True when no rule was broken.
    pub valid: bool,
    /// Acknowledged operations checked.
    pub acked: usize,
    /// Operations whose outcome stayed unknown, and how many of those the ledger applied.
    pub unknown: usize,
    /// Of the unknown ones, applied.
    pub unknown_applied: usize,
    /// Acknowledged operations missing (the RPO, in operations).
    pub lost: usize,
    /// Every violation.
    pub violations: Vec<Violation>,
}

/// Checks `history` against `observed`. `opening` is each player's balance before the history
/// (their funding, which is not part of it).
pub fn check(history: &[Op], opening: &BTreeMap<String, i64>, observed: &Observed) -> Verdict {
    let mut v = Verdict::default();
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (player, (entries, _)) in &observed.players {
        for e in entries {
            *counts.entry((player.as_str(), e.tx_id.as_str())).or_default() += 1;
        }
    }
    let mut expected: BTreeMap<&str, i64> = opening.iter().map(|(p, b)| (p.as_str(), *b)).collect();
    let mut issued: BTreeMap<(&str, &str), ()> = BTreeMap::new();
    for op in history {
        issued.insert((op.player.as_str(), op.key.as_str()), ());
        let times = counts.get(&(op.player.as_str(), op.key.as_str())).copied().unwrap_or(0);
        let (key, player) = (op.key.clone(), op.player.clone());
        if times > 1 {
            v.violations.push(Violation::Duplicated { key: key.clone(), player: player.clone(), times });
        }
        match op.told {
            Told::Acked => {
                v.acked += 1;
                if times == 0 {
                    v.lost += 1;
                    v.violations.push(Violation::Lost { key, player });
                }
            }
            Told::Refused if times > 0 => v.violations.push(Violation::RefusedButApplied { key, player }),
            Told::Refused => {}
            Told::Unknown => {
                v.unknown += 1;
                v.unknown_applied += usize::from(times > 0);
            }
        }
        if times > 0 || op.told == Told::Acked {
            let e = expected.entry(op.player.as_str()).or_default();
            *e = e.saturating_add(op.delta);
        }
    }
    for (player, (entries, reported)) in &observed.players {
        for e in entries {
            if !issued.contains_key(&(player.as_str(), e.tx_id.as_str())) {
                v.violations.push(Violation::Phantom { key: e.tx_id.clone(), player: player.clone() });
            }
        }
        let from_entries = opening.get(player).copied().unwrap_or(0).saturating_add(
            entries
                .iter()
                .filter(|e| issued.contains_key(&(player.as_str(), e.tx_id.as_str())))
                .map(|e| e.delta)
                .sum::<i64>(),
        );
        let want = expected.get(player.as_str()).copied().unwrap_or(0);
        if *reported != want || *reported != from_entries {
            v.violations.push(Violation::WrongBalance {
                player: player.clone(),
                expected: want,
                reported: *reported,
                from_entries,
            });
        }
        if *reported < 0 {
            v.violations.push(Violation::NegativeBalance { player: player.clone(), balance: *reported });
        }
    }
    for (shard, replicas) in &observed.shards {
        for r in replicas {
            if let Some(why) = &r.verify_error {
                v.violations.push(Violation::ReplicaBroken { shard: *shard, node: r.node, why: why.clone() });
            }
        }
        let heads: BTreeMap<u64, (u64, String)> =
            replicas.iter().map(|r| (r.node, (r.head_seq, r.head_hash.clone()))).collect();
        let mut distinct: Vec<&(u64, String)> = heads.values().collect();
        distinct.dedup();
        if distinct.len() > 1 {
            v.violations.push(Violation::ReplicaDiverged { shard: *shard, heads });
        }
    }
    v.valid = v.violations.is_empty();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, delta: i64, told: Told) -> Op {
        Op { key: key.into(), player: "p".into(), delta, told }
    }

    fn seen(key: &str, delta: i64) -> SeenEntry {
        SeenEntry { tx_id: key.into(), delta }
    }

    fn replica(node: u64, head: u64) -> Replica {
        Replica { node, head_seq: head, head_hash: format!("h{head}"), verify_error: None }
    }

    fn opening() -> BTreeMap<String, i64> {
        [("p".to_string(), 1000)].into()
    }

    #[test]
    fn a_faithful_ledger_passes() {
        let history = vec![op("a", -100, Told::Acked), op("b", -50, Told::Unknown), op("c", -10, Told::Refused)];
        let mut obs = Observed::default();
        obs.players.insert("p".into(), (vec![seen("a", -100), seen("b", -50)], 850));
        obs.shards.insert(0, vec![replica(1, 7), replica(2, 7), replica(3, 7)]);
        let v = check(&history, &opening(), &obs);
        assert!(v.valid, "{:?}", v.violations);
        assert_eq!((v.acked, v.unknown, v.unknown_applied, v.lost), (1, 1, 1, 0));
    }

    /// A lost write, a doubled write and a wrong balance are each named.
    #[test]
    fn names_a_lost_write_a_doubled_write_and_a_wrong_balance() {
        let history = vec![op("a", -100, Told::Acked), op("b", -50, Told::Acked), op("c", -10, Told::Acked)];
        let mut obs = Observed::default();
        // "a" lost; "b" applied twice; the reported balance matches neither the entries nor the
        // history.
        obs.players.insert("p".into(), (vec![seen("b", -50), seen("b", -50), seen("c", -10)], 777));
        let v = check(&history, &opening(), &obs);
        assert!(!v.valid);
        assert_eq!(v.lost, 1);
        assert!(v.violations.contains(&Violation::Lost { key: "a".into(), player: "p".into() }), "{:?}", v.violations);
        assert!(
            v.violations.contains(&Violation::Duplicated { key: "b".into(), player: "p".into(), times: 2 }),
            "{:?}",
            v.violations
        );
        assert!(
            v.violations.contains(&Violation::WrongBalance {
                player: "p".into(),
                expected: 840,
                reported: 777,
                from_entries: 890
            }),
            "{:?}",
            v.violations
        );
    }

    #[test]
    fn names_refused_but_applied_phantoms_negative_balances_and_diverged_replicas() {
        let history = vec![op("a", -1500, Told::Refused)];
        let mut obs = Observed::default();
        obs.players.insert("p".into(), (vec![seen("a", -1500), seen("zz", 5)], -500));
        obs.shards.insert(2, vec![replica(1, 9), replica(2, 8)]);
        obs.shards.insert(3, vec![Replica { verify_error: Some("hash mismatch at 4".into()), ..replica(1, 4) }]);
        let v = check(&history, &opening(), &obs);
        let kinds: Vec<String> = v
            .violations
            .iter()
            .map(|x| serde_json::to_value(x).unwrap()["kind"].as_str().unwrap().to_string())
            .collect();
        for k in ["refused_but_applied", "phantom", "negative_balance", "replica_diverged", "replica_broken"] {
            assert!(kinds.iter().any(|x| x == k), "{k} not named: {kinds:?}");
        }
    }

    #[test]
    fn an_unknown_operation_applied_twice_is_a_duplicate() {
        let history = vec![op("u", -10, Told::Unknown)];
        let mut obs = Observed::default();
        obs.players.insert("p".into(), (vec![seen("u", -10), seen("u", -10)], 980));
        let v = check(&history, &opening(), &obs);
        assert!(v.violations.iter().any(|x| matches!(x, Violation::Duplicated { times: 2, .. })));
    }
}
