//! Where a ledger keeps its accounts and what it remembers for the retention window: transaction
//! ids (with what each produced, and a bet's details for its rollback), rounds, and the
//! time-ordered queue by which both are forgotten.
//!
//! This is the state that grows with the business and its history (a casino taking 1,000
//! bets/s retains ~600 million ids over 7 days, and may have tens of millions of players), so
//! the ledger reaches it only through [`LedgerState`], which a shell can implement on disk
//! behind a bounded cache. [`MemState`] keeps it in hash maps, as the ledger always has; tests,
//! the simulator and snapshots' images use it.
//!
//! The trait's operations are plain reads and writes; every decision stays in [`Ledger`]
//! (`super::Ledger`), so two implementations given the same calls hold the same records and
//! the ledger's outcomes and entries cannot depend on which one it runs on. An implementation
//! that cannot complete a write (a disk error) must panic rather than return: the state machine
//! must not go on from a state it does not have; the replica then restarts from its last
//! durable checkpoint and the log.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::account::AccountRef;
use crate::money::Balance;
use crate::time::ClusterTime;

use super::IdState;

/// Hash maps on the apply path: looked up, never iterated where iteration could decide an
/// outcome. foldhash is several times faster than SipHash on short ids and is still seeded per
/// process against collision flooding; snapshots sort their contents.
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The 128-bit digest an id or a round is remembered under (the first 128 bits of a SHA-256 of
/// the id's text, so ids an adversary chooses cannot be made to collide).
pub type StateKey = u128;

/// What the ledger remembers under a transaction id, for the retention window: what the command
/// produced, or that a rollback named it before it arrived. Opaque outside the ledger; a shell
/// stores it with its serde encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRecord {
    /// When it was remembered; it is forgotten one retention window later.
    pub(super) at: ClusterTime,
    pub(super) state: IdState,
}

impl IdRecord {
    /// When the id was remembered (a tombstone replaced by its late command: when it came).
    pub fn at(&self) -> ClusterTime {
        self.at
    }
}

/// What the ledger remembers of a round: its currency, how many bets in it still stand, and
/// its last activity (it is forgotten one retention window after that). Opaque outside the
/// ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    pub(super) currency: crate::money::Currency,
    /// Bets in the round not rolled back.
    pub(super) live_bets: u32,
    pub(super) last_at: ClusterTime,
}

impl Round {
    /// Its last activity (it is forgotten one retention window after that).
    pub fn last_at(&self) -> ClusterTime {
        self.last_at
    }
}

/// Something remembered only for the retention window, as queued for forgetting.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the snapshot image test (`crates/ledger-core/tests/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retained {
    /// A transaction id (or a rollback's tombstone for a bet that had not arrived).
    Id(StateKey),
    /// A round.
    Round(StateKey),
}

/// The accounts and retained state a [`Ledger`](super::Ledger) reads and writes while it applies
/// commands.
///
/// Calls come from the one thread applying the shard's log, in log order. The ledger tells the
/// state what it knows, so an implementation need not read before it writes:
/// [`insert_id`](Self::insert_id) is called only for a key just found absent,
/// [`requeue_id`](Self::requeue_id) and [`update_id`](Self::update_id) only for one just found
/// present, and likewise [`insert_round`](Self::insert_round) and [`put_round`](Self::put_round);
/// every insert and requeue is followed, in the same command, by a
/// [`push_retained`](Self::push_retained) of the key at the record's time, and so is every new
/// round. A key's queue items therefore pop in push order, the last one being the current one,
/// and a round has exactly one item queued while it is remembered.
pub trait LedgerState {
    /// The record under an id's key, if remembered.
    fn id(&self, key: StateKey) -> Option<IdRecord>;
    /// Remembers a key not remembered now.
    fn insert_id(&mut self, key: StateKey, record: IdRecord);
    /// Replaces a remembered key's record with one remembered anew (a later time): the key's
    /// earlier queue items no longer decide when it is forgotten.
    fn requeue_id(&mut self, key: StateKey, record: IdRecord);
    /// Replaces a remembered key's record, keeping its time (and so its queue item).
    fn update_id(&mut self, key: StateKey, record: IdRecord);
    /// Called for each `Retained::Id` item popped from the queue, queued at `queued_at`: forgets
    /// the key if it is remembered and `expired` holds for the time its record was remembered.
    fn forget_id(&mut self, key: StateKey, queued_at: ClusterTime, expired: impl Fn(ClusterTime) -> bool);
    /// How many ids are remembered.
    fn remembered_ids(&self) -> usize;

    /// A round, if remembered.
    fn round(&self, key: StateKey) -> Option<Round>;
    /// Remembers a round not remembered now, with its first activity as its last.
    fn insert_round(&mut self, key: StateKey, round: Round);
    /// Replaces a remembered round's record after new activity in it (its last activity moves
    /// to the command's time).
    fn put_round(&mut self, key: StateKey, round: Round);
    /// Called for each `Retained::Round` item popped from the queue, queued at `queued_at`:
    /// forgets the round if `expired` holds for its last activity, and returns whether it is
    /// still remembered (then the ledger queues it again). An implementation may skip reading
    /// the round when nothing was [`put`](Self::put_round) to it since this item was queued:
    /// its last activity is then no later than `queued_at`.
    fn forget_round(&mut self, key: StateKey, queued_at: ClusterTime, expired: impl Fn(ClusterTime) -> bool) -> bool;

    /// Appends to the forgetting queue; `at` never decreases from one call to the next.
    fn push_retained(&mut self, at: ClusterTime, item: Retained);
    /// The oldest queued item.
    fn first_retained(&self) -> Option<(ClusterTime, Retained)>;
    /// Takes the oldest queued item off the queue.
    fn pop_retained(&mut self) -> Option<(ClusterTime, Retained)>;

    /// An account's balance, if it was ever written (house and external accounts are written
    /// first when money first moves through them; a player's wallet when it is opened).
    fn account(&self, account: &AccountRef) -> Option<Balance>;
    /// Like [`account`](Self::account), on the path applying a command, which may write the
    /// account next: a state that reads it from disk may keep what it read for that write.
    fn load_account(&mut self, account: &AccountRef) -> Option<Balance> {
        self.account(account)
    }
    /// Writes an account's balance and returns the one it replaces (`None` for a new account).
    /// Accounts are never removed.
    fn put_account(&mut self, account: &AccountRef, balance: Balance) -> Option<Balance>;
    /// Calls `f` with every account and its balance, in no particular order: O(accounts), for
    /// invariant checks, images and audits, never on the path that decides an outcome.
    fn for_each_account(&self, f: &mut dyn FnMut(&AccountRef, Balance));

    /// Checks what only the implementation can see (for example the queue's time order);
    /// called by [`Ledger::check_invariants`](super::Ledger::check_invariants).
    fn check_invariants(&self) {}
}

/// The state in memory: hash maps keyed by account or digest and a queue in time order.
#[derive(Debug, Clone, Default)]
pub struct MemState {
    pub(super) accounts: FastMap<AccountRef, Balance>,
    pub(super) ids: FastMap<StateKey, IdRecord>,
    pub(super) rounds: FastMap<StateKey, Round>,
    /// In the order things were remembered, which is cluster-time order.
    pub(super) retention: VecDeque<(ClusterTime, Retained)>,
}

impl LedgerState for MemState {
    fn account(&self, account: &AccountRef) -> Option<Balance> {
        self.accounts.get(account).copied()
    }

    fn put_account(&mut self, account: &AccountRef, balance: Balance) -> Option<Balance> {
        // Most writes are to an account that exists: replace in place, and clone the account
        // only for a new one.
        match self.accounts.get_mut(account) {
            Some(slot) => Some(std::mem::replace(slot, balance)),
            None => {
                self.accounts.insert(account.clone(), balance);
                None
            }
        }
    }

    fn for_each_account(&self, f: &mut dyn FnMut(&AccountRef, Balance)) {
        for (account, balance) in &self.accounts {
            f(account, *balance);
        }
    }

    fn id(&self, key: StateKey) -> Option<IdRecord> {
        self.ids.get(&key).copied()
    }

    fn insert_id(&mut self, key: StateKey, record: IdRecord) {
        let prior = self.ids.insert(key, record);
        assert!(prior.is_none(), "insert_id on a remembered key");
    }

    fn requeue_id(&mut self, key: StateKey, record: IdRecord) {
        let prior = self.ids.insert(key, record);
        assert!(prior.is_some(), "requeue_id on a key not remembered");
    }

    fn update_id(&mut self, key: StateKey, record: IdRecord) {
        let prior = self.ids.insert(key, record);
        assert!(prior.is_some_and(|p| p.at == record.at), "update_id on a key not remembered, or moving its time");
    }

    fn forget_id(&mut self, key: StateKey, _queued_at: ClusterTime, expired: impl Fn(ClusterTime) -> bool) {
        if self.ids.get(&key).is_some_and(|r| expired(r.at)) {
            self.ids.remove(&key);
        }
    }

    fn remembered_ids(&self) -> usize {
        self.ids.len()
    }

    fn round(&self, key: StateKey) -> Option<Round> {
        self.rounds.get(&key).copied()
    }

    fn insert_round(&mut self, key: StateKey, round: Round) {
        let prior = self.rounds.insert(key, round);
        assert!(prior.is_none(), "insert_round on a remembered round");
    }

    fn put_round(&mut self, key: StateKey, round: Round) {
        let prior = self.rounds.insert(key, round);
        assert!(prior.is_some(), "put_round on a round not remembered");
    }

    fn forget_round(&mut self, key: StateKey, _queued_at: ClusterTime, expired: impl Fn(ClusterTime) -> bool) -> bool {
        match self.rounds.get(&key) {
            None => false,
            Some(r) if expired(r.last_at) => {
                self.rounds.remove(&key);
                false
            }
            Some(_) => true,
        }
    }

    fn push_retained(&mut self, at: ClusterTime, item: Retained) {
        self.retention.push_back((at, item));
    }

    fn first_retained(&self) -> Option<(ClusterTime, Retained)> {
        self.retention.front().copied()
    }

    fn pop_retained(&mut self) -> Option<(ClusterTime, Retained)> {
        self.retention.pop_front()
    }

    fn check_invariants(&self) {
        let mut last = ClusterTime::default();
        for (when, _) in &self.retention {
            assert!(*when >= last, "retention queue out of time order");
            last = *when;
        }
    }
}
