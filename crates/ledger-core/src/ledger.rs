//! The ledger state machine of one shard. Pure: no IO, no clock, no randomness.
//!
//! [`Ledger::apply`] takes a command and the cluster time the leader stamped on it, and returns
//! an [`Outcome`]. Every balance change appends one hash-chained [`Entry`] to the caller's sink.
//! Invariants are asserted on every apply, in release builds too: a broken invariant means the
//! code is wrong, and stopping is safer than moving money on a corrupt state.

mod state;

use std::collections::{BTreeMap, BTreeSet};

pub use state::{IdRecord, LedgerState, MemState, Retained, Round, StateKey};

use serde::{Deserialize, Serialize};

use crate::account::AccountRef;
use crate::command::{Command, CommandKind, HOLD_TIMEOUT_MAX_MS};
use crate::entry::{Entry, EntryKind, Hash, genesis_hash};
use crate::ids::{ID_LEN_MAX, PlayerId, Reason, RoundId, TxId};
use crate::money::{Amount, Balance, Currency};
use crate::outcome::{Outcome, Receipt};
use crate::rejection::Rejection;
use crate::shard::ShardId;
use crate::time::ClusterTime;

/// Seven days of cluster time: how long ids, bets and rollback tombstones are remembered.
pub const ID_RETENTION_DEFAULT_MS: u64 = 7 * 24 * 60 * 60 * 1_000;

/// Settings that every replica of a shard must share; they are part of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerConfig {
    /// How long a transaction id is remembered, in cluster milliseconds. A retry arriving later
    /// than this is treated as a new command. Default: 7 days.
    pub id_retention_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self { id_retention_ms: ID_RETENTION_DEFAULT_MS }
    }
}

/// A 128-bit digest standing in for an id in the retained indexes.
///
/// Indexes hold one entry per id for the whole retention window, so they key by 16 bytes
/// instead of the id text: no allocation, no string compares, a third of the memory. A
/// collision needs ~2^64 work to find, and even then it can only make the second command
/// a `Conflict`, never apply it twice.
/// (A `u128` rather than 16 bytes so keys compare and hash as one integer.)
type Key = u128;

fn first_128_bits(digest: [u8; 32]) -> Key {
    u128::from_be_bytes(digest[..16].try_into().expect("sha256 is 32 bytes"))
}

fn digest16(parts: &[&[u8]]) -> Key {
    // Ids are at most 64 bytes, so every key's input fits on the stack: no buffer to borrow, no
    // capacity checks, one call into the hash. The bytes are the same as the codec would write
    // (each part prefixed by its length as a big-endian u64), so keys never change.
    let mut buf = [0u8; 3 * (8 + ID_LEN_MAX)];
    let mut n = 0;
    for p in parts {
        // Length-prefix each part so ("ab","c") and ("a","bc") differ.
        buf[n..n + 8].copy_from_slice(&(p.len() as u64).to_be_bytes());
        buf[n + 8..n + 8 + p.len()].copy_from_slice(p);
        n += 8 + p.len();
    }
    first_128_bits(<sha2::Sha256 as sha2::Digest>::digest(&buf[..n]).into())
}

fn id_key(tx: &TxId) -> Key {
    digest16(&[b"tx", tx.as_str().as_bytes()])
}

/// The key a transaction id is remembered under in a [`LedgerState`], for shells that inspect or
/// check their state (the ledger itself computes it once per command).
pub fn state_key_of(tx: &TxId) -> StateKey {
    id_key(tx)
}

fn round_key(player: &PlayerId, round: &RoundId) -> Key {
    digest16(&[b"round", player.as_str().as_bytes(), round.as_str().as_bytes()])
}

/// The digests a command is looked up by, computed once per command: a bet's round key is
/// needed by both the round check and the bet's record, a rollback's by the round and the bet.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    id: Key,
    fingerprint: Key,
    /// The round a bet, win or rollback names.
    round: Option<Key>,
    /// The bet a rollback names.
    bet: Option<Key>,
}

impl Prepared {
    fn of(cmd: &Command) -> Self {
        let (round, bet) = match cmd {
            Command::Bet { player, round, .. } | Command::Win { player, round, .. } => {
                (Some(round_key(player, round)), None)
            }
            Command::Rollback { player, round, bet, .. } => (Some(round_key(player, round)), Some(id_key(bet))),
            _ => (None, None),
        };
        Self { id: id_key(cmd.tx()), fingerprint: first_128_bits(cmd.fingerprint()), round, bet }
    }
}

/// What an applied command produced, compactly: the accounts can be rebuilt from the command
/// itself (a duplicate carries the identical command), so only numbers are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct AppliedRecord {
    seq: Option<u64>,
    at: ClusterTime,
    currency: Option<Currency>,
    balances: [Balance; 2],
}

/// What a ledger remembers of a transaction id, for audits and the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recall {
    /// A command applied under the id; its entry's sequence, if it made one.
    Applied(Option<u64>),
    /// A command under the id was refused.
    Refused(Rejection),
}

/// What an [`IdRecord`] says. Bets and rollback tombstones live here too rather than in maps of
/// their own: they are keyed by the same id, and one lookup costs one cache miss instead of three.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the snapshot image test (`crates/ledger-core/tests/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum IdState {
    /// A command ran under this id.
    Ran {
        fingerprint: Key,
        kind: CommandKind,
        result: Result<AppliedRecord, Rejection>,
        /// For an applied bet: what a rollback needs.
        bet: Option<Bet>,
    },
    /// A rollback named this id as its bet before any command used it.
    RolledBackBeforeArrival,
}

impl AppliedRecord {
    fn from_receipt(r: &Receipt) -> Self {
        assert!(r.balances.len() <= 2, "a command touches at most two accounts");
        let mut balances = [Balance::default(); 2];
        for (slot, (_, b)) in balances.iter_mut().zip(&r.balances) {
            *slot = *b;
        }
        Self { seq: r.seq, at: r.at, currency: r.balances.first().map(|(a, _)| a.currency()), balances }
    }

    /// Rebuilds the original receipt. Accounts are listed debit first, as `post` lists them.
    fn receipt(&self, cmd: &Command) -> Receipt {
        let mut balances = Vec::with_capacity(2);
        if let Some(c) = self.currency {
            let wallet = |p: &PlayerId| AccountRef::player(p.clone(), c);
            let accounts: Vec<AccountRef> = match cmd {
                Command::OpenAccount { player, .. }
                | Command::ReserveWithdrawal { player, .. }
                | Command::CancelWithdrawal { player, .. } => vec![wallet(player)],
                Command::Deposit { player, .. } => vec![AccountRef::External(c), wallet(player)],
                Command::CommitWithdrawal { player, .. } => {
                    vec![wallet(player), AccountRef::External(c)]
                }
                Command::Bet { player, .. } => vec![wallet(player), AccountRef::House(c)],
                Command::Win { player, .. } | Command::Rollback { player, .. } => {
                    vec![AccountRef::House(c), wallet(player)]
                }
                Command::Transfer { from, to, .. } => vec![wallet(from), wallet(to)],
                Command::Adjust { debit, credit, .. } => vec![debit.clone(), credit.clone()],
            };
            balances.extend(accounts.into_iter().zip(self.balances));
        }
        Receipt { seq: self.seq, at: self.at, balances }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Hold {
    player: PlayerId,
    currency: Currency,
    amount: Amount,
    expires_at: ClusterTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Bet {
    round: Key,
    currency: Currency,
    amount: Amount,
    rolled_back: bool,
}

/// A ledger entry about to be appended.
struct Posting<'a> {
    kind: EntryKind,
    tx: &'a TxId,
    debit: &'a AccountRef,
    credit: &'a AccountRef,
    amount: u64,
    balances: Vec<(AccountRef, Balance)>,
    round: Option<&'a RoundId>,
    reference: Option<&'a TxId>,
    reason: Option<&'a Reason>,
}

/// One shard's ledger. The accounts, retained ids, rounds and their forgetting queue are in `S`
/// ([`MemState`] unless a shell gives it another [`LedgerState`]); pending holds and the chain's
/// head are here.
#[derive(Debug, Clone)]
pub struct Ledger<S = MemState> {
    shard: ShardId,
    config: LedgerConfig,
    state: S,
    holds: BTreeMap<TxId, Hold>,
    hold_expiry: BTreeSet<(ClusterTime, TxId)>,
    head_seq: u64,
    head_hash: Hash,
    last_at: ClusterTime,
}

impl Ledger<MemState> {
    /// An empty ledger for `shard`, its retained state in memory.
    pub fn new(shard: ShardId, config: LedgerConfig) -> Self {
        Self::with_state(shard, config, MemState::default())
    }
}

impl<S: LedgerState> Ledger<S> {
    /// An empty ledger for `shard` keeping its retained state in `state`, which must be empty.
    pub fn with_state(shard: ShardId, config: LedgerConfig, state: S) -> Self {
        assert!(
            config.id_retention_ms >= HOLD_TIMEOUT_MAX_MS,
            "ids must outlive the longest hold, or a live hold could lose its reserve id"
        );
        assert!(
            state.remembered_ids() == 0 && state.first_retained().is_none(),
            "a new ledger starts from empty retained state"
        );
        Self {
            shard,
            config,
            state,
            holds: BTreeMap::new(),
            hold_expiry: BTreeSet::new(),
            head_seq: 0,
            head_hash: genesis_hash(shard),
            last_at: ClusterTime::default(),
        }
    }

    /// The retained state, for the shell that keeps it (to flush or checkpoint it).
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The retained state, mutably, for the shell that keeps it.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.state
    }

    /// The shard this ledger belongs to.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The shared settings.
    pub fn config(&self) -> LedgerConfig {
        self.config
    }

    /// Sequence number and hash of the last entry (`0` and the genesis hash when empty).
    pub fn head(&self) -> (u64, Hash) {
        (self.head_seq, self.head_hash)
    }

    /// The latest cluster time applied.
    pub fn last_at(&self) -> ClusterTime {
        self.last_at
    }

    /// An account's balance. House and external accounts always exist (zero until used); a
    /// player wallet exists once opened.
    pub fn balance(&self, account: &AccountRef) -> Option<Balance> {
        implicit(account, self.state.account(account))
    }

    /// Every account that has been used, sorted by account.
    pub fn accounts(&self) -> Vec<(AccountRef, Balance)> {
        let mut all = Vec::new();
        self.state.for_each_account(&mut |a, b| all.push((a.clone(), b)));
        // Unique keys: unstable gives the same order.
        all.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        all
    }

    /// The earliest time a pending hold expires, if any hold is pending. The leader proposes a
    /// tick when this time has passed, so holds expire even when no command arrives.
    pub fn next_hold_expiry(&self) -> Option<ClusterTime> {
        self.hold_expiry.first().map(|(t, _)| *t)
    }

    /// How many ids are currently remembered.
    pub fn remembered_ids(&self) -> usize {
        self.state.remembered_ids()
    }

    /// Applies one command at cluster time `at`, appending its entries (and those of any holds
    /// that expired first) to `sink`. Never fails: business results are in the [`Outcome`].
    pub fn apply(&mut self, cmd: &Command, at: ClusterTime, sink: &mut Vec<Entry>) -> Outcome {
        self.apply_prepared(cmd, &Prepared::of(cmd), at, sink)
    }

    fn apply_prepared(&mut self, cmd: &Command, p: &Prepared, at: ClusterTime, sink: &mut Vec<Entry>) -> Outcome {
        let at = self.advance(at, sink);
        let (fingerprint, key) = (p.fingerprint, p.id);
        let known = self.state.id(key);
        let result = match known.as_ref().map(|r| &r.state) {
            Some(IdState::Ran { fingerprint: f, result, .. }) => {
                return match (result, *f == fingerprint) {
                    (_, false) => Outcome::Conflict,
                    (Ok(applied), true) => Outcome::Duplicate(applied.receipt(cmd)),
                    (Err(rejection), true) => Outcome::AlreadyFailed(*rejection),
                };
            }
            // The bet arrives after a rollback that named it: refuse it, as aggregators require.
            // (A non-bet command under a tombstoned id was never the rolled-back bet; it runs.)
            Some(IdState::RolledBackBeforeArrival) if cmd.kind() == CommandKind::Bet => Err(Rejection::BetRolledBack),
            _ => cmd.validate().and_then(|()| self.execute(cmd, p, at, sink)),
        };
        let bet = match (cmd, &result, p.round) {
            (Command::Bet { currency, amount, .. }, Ok(_), Some(round)) => {
                Some(Bet { round, currency: *currency, amount: *amount, rolled_back: false })
            }
            _ => None,
        };
        let stored = result.as_ref().map(AppliedRecord::from_receipt).map_err(|r| *r);
        if let (Ok(receipt), Ok(applied)) = (&result, &stored) {
            debug_assert_eq!(&applied.receipt(cmd), receipt, "a duplicate must get the original receipt");
        }
        let state = IdState::Ran { fingerprint, kind: cmd.kind(), result: stored, bet };
        // `known` is absent or a tombstone here: every other case returned above. A replaced
        // tombstone is remembered from now and queued again; its old queue entry is skipped.
        // A rollback naming its own id as the bet may just have left a tombstone under it.
        let present = if p.bet == Some(key) { self.state.id(key).is_some() } else { known.is_some() };
        let record = IdRecord { at, state };
        if present {
            self.state.requeue_id(key, record);
        } else {
            self.state.insert_id(key, record);
        }
        self.state.push_retained(at, Retained::Id(key));
        match result {
            Ok(receipt) => Outcome::Applied(receipt),
            Err(rejection) => Outcome::Rejected(rejection),
        }
    }

    /// What the ledger remembers of a transaction id; `None` when the id is unknown (or its
    /// retention window has passed).
    pub fn recall(&self, tx: &TxId) -> Option<Recall> {
        match self.state.id(id_key(tx)).map(|r| r.state) {
            Some(IdState::Ran { result: Ok(a), .. }) => Some(Recall::Applied(a.seq)),
            Some(IdState::Ran { result: Err(r), .. }) => Some(Recall::Refused(r)),
            _ => None,
        }
    }

    /// Lets cluster time pass without a command: expires holds and forgets old ids.
    pub fn tick(&mut self, at: ClusterTime, sink: &mut Vec<Entry>) {
        self.advance(at, sink);
    }

    /// Moves cluster time forward (never back), then expires holds and prunes retention.
    fn advance(&mut self, at: ClusterTime, sink: &mut Vec<Entry>) -> ClusterTime {
        // A new leader's clock may be behind the previous leader's: time never goes backwards.
        let at = at.max(self.last_at);
        self.last_at = at;
        while let Some((expires_at, hold_id)) = self.hold_expiry.first().cloned() {
            if expires_at > at {
                break;
            }
            self.release_hold(&hold_id, EntryKind::WithdrawalExpire, &hold_id, None, at, sink);
        }
        let horizon = at.minus_millis(self.config.id_retention_ms);
        while let Some((when, _)) = self.state.first_retained() {
            if when > horizon {
                break;
            }
            let (when, item) = self.state.pop_retained().expect("front exists");
            self.forget(when, item, at);
        }
        at
    }

    fn forget(&mut self, queued_at: ClusterTime, item: Retained, at: ClusterTime) {
        let retention = self.config.id_retention_ms;
        match item {
            Retained::Id(key) => {
                // A tombstone replaced by its late command is remembered from the later time;
                // only forget what is as old as this queue entry.
                self.state.forget_id(key, queued_at, |remembered| remembered.plus_millis(retention) <= at);
            }
            Retained::Round(key) => {
                // Forgotten one window after its last activity.
                if self.state.forget_round(key, queued_at, |last| last.plus_millis(retention) <= at) {
                    // Still active: look at it again one window from now. Pushing `at` (not the
                    // round's last activity) keeps the queue in time order.
                    self.state.push_retained(at, Retained::Round(key));
                }
            }
        }
    }

    fn execute(
        &mut self,
        cmd: &Command,
        p: &Prepared,
        at: ClusterTime,
        sink: &mut Vec<Entry>,
    ) -> Result<Receipt, Rejection> {
        let round_key = || p.round.expect("bets, wins and rollbacks have their round's key prepared");
        match cmd {
            Command::OpenAccount { tx, player, currency } => {
                let wallet = AccountRef::player(player.clone(), *currency);
                if self.state.load_account(&wallet).is_some() {
                    return Err(Rejection::AccountExists);
                }
                let balances = vec![(wallet.clone(), Balance::default())];
                Ok(self.post(
                    Posting {
                        kind: EntryKind::Open,
                        tx,
                        debit: &wallet,
                        credit: &wallet,
                        amount: 0,
                        balances,
                        round: None,
                        reference: None,
                        reason: None,
                    },
                    at,
                    sink,
                ))
            }
            Command::Deposit { tx, player, currency, amount } => {
                let wallet = AccountRef::player(player.clone(), *currency);
                let external = AccountRef::External(*currency);
                self.transfer(EntryKind::Deposit, tx, &external, &wallet, *amount, None, None, None, at, sink)
            }
            Command::ReserveWithdrawal { tx, player, currency, amount, timeout_ms } => {
                let wallet = AccountRef::player(player.clone(), *currency);
                let balance = self.existing(&wallet)?;
                if balance.available() < amount.signed() {
                    return Err(Rejection::InsufficientFunds);
                }
                let held = balance.held.checked_add(amount.signed()).ok_or(Rejection::BalanceOverflow)?;
                let after = Balance { held, ..balance };
                let external = AccountRef::External(*currency);
                let receipt = self.post(
                    Posting {
                        kind: EntryKind::WithdrawalReserve,
                        tx,
                        debit: &wallet,
                        credit: &external,
                        amount: amount.minor(),
                        balances: vec![(wallet.clone(), after)],
                        round: None,
                        reference: None,
                        reason: None,
                    },
                    at,
                    sink,
                );
                let expires_at = at.plus_millis(*timeout_ms);
                self.holds.insert(
                    tx.clone(),
                    Hold { player: player.clone(), currency: *currency, amount: *amount, expires_at },
                );
                self.hold_expiry.insert((expires_at, tx.clone()));
                Ok(receipt)
            }
            Command::CommitWithdrawal { tx, player, hold } => {
                let h = self.pending_hold(player, hold)?;
                let wallet = AccountRef::player(player.clone(), h.currency);
                let external = AccountRef::External(h.currency);
                let w = self.existing(&wallet)?;
                let e = self.existing(&external)?;
                let amt = h.amount.signed();
                // held <= posted for players, so both subtractions stay >= 0.
                let w_after = Balance { posted: w.posted - amt, held: w.held - amt };
                let e_after = Balance { posted: e.posted.checked_add(amt).ok_or(Rejection::BalanceOverflow)?, ..e };
                let receipt = self.post(
                    Posting {
                        kind: EntryKind::WithdrawalCommit,
                        tx,
                        debit: &wallet,
                        credit: &external,
                        amount: h.amount.minor(),
                        balances: vec![(wallet.clone(), w_after), (external.clone(), e_after)],
                        round: None,
                        reference: Some(hold),
                        reason: None,
                    },
                    at,
                    sink,
                );
                self.holds.remove(hold);
                self.hold_expiry.remove(&(h.expires_at, hold.clone()));
                Ok(receipt)
            }
            Command::CancelWithdrawal { tx, player, hold } => {
                self.pending_hold(player, hold)?;
                Ok(self.release_hold(hold, EntryKind::WithdrawalCancel, tx, Some(hold), at, sink))
            }
            Command::Bet { tx, player, round, currency, amount } => {
                let rkey = round_key();
                let existing = self.state.round(rkey);
                if let Some(r) = existing
                    && r.currency != *currency
                {
                    return Err(Rejection::CurrencyMismatch);
                }
                let wallet = AccountRef::player(player.clone(), *currency);
                let house = AccountRef::House(*currency);
                let receipt =
                    self.transfer(EntryKind::Bet, tx, &wallet, &house, *amount, Some(round), None, None, at, sink)?;
                match existing {
                    Some(r) => self.state.put_round(rkey, Round { live_bets: r.live_bets + 1, last_at: at, ..r }),
                    None => {
                        self.state.insert_round(rkey, Round { currency: *currency, live_bets: 1, last_at: at });
                        self.state.push_retained(at, Retained::Round(rkey));
                    }
                }
                Ok(receipt)
            }
            Command::Win { tx, player, round, currency, amount } => {
                let rkey = round_key();
                let r = self.state.round(rkey).ok_or(Rejection::UnknownRound)?;
                if r.currency != *currency {
                    return Err(Rejection::CurrencyMismatch);
                }
                if r.live_bets == 0 {
                    return Err(Rejection::RoundRolledBack);
                }
                let wallet = AccountRef::player(player.clone(), *currency);
                let house = AccountRef::House(*currency);
                let receipt =
                    self.transfer(EntryKind::Win, tx, &house, &wallet, *amount, Some(round), None, None, at, sink)?;
                self.state.put_round(rkey, Round { last_at: at, ..r });
                Ok(receipt)
            }
            Command::Rollback { tx, player, round, bet } => {
                let bet_key = p.bet.expect("a rollback has its bet's key prepared");
                self.rollback(tx, player, round, (bet, bet_key), round_key(), at, sink)
            }
            Command::Transfer { tx, from, to, currency, amount } => {
                let from = AccountRef::player(from.clone(), *currency);
                let to = AccountRef::player(to.clone(), *currency);
                self.transfer(EntryKind::Transfer, tx, &from, &to, *amount, None, None, None, at, sink)
            }
            Command::Adjust { tx, debit, credit, currency, amount, reason } => {
                if debit.currency() != *currency || credit.currency() != *currency {
                    return Err(Rejection::CurrencyMismatch);
                }
                self.transfer(EntryKind::Adjustment, tx, debit, credit, *amount, None, None, Some(reason), at, sink)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rollback(
        &mut self,
        tx: &TxId,
        player: &PlayerId,
        round: &RoundId,
        (bet_id, bet_key): (&TxId, Key),
        rkey: Key,
        at: ClusterTime,
        sink: &mut Vec<Entry>,
    ) -> Result<Receipt, Rejection> {
        let no_entry = Receipt { seq: None, at, balances: Vec::new() };
        let record = self.state.id(bet_key);
        let bet = match record.map(|r| r.state) {
            Some(IdState::Ran { bet: Some(bet), .. }) => bet,
            // The bet failed, so there is nothing to reverse.
            Some(IdState::Ran { kind: CommandKind::Bet, .. }) => return Ok(no_entry),
            Some(IdState::Ran { .. }) => return Err(Rejection::NotABet),
            // Another rollback already got here first; the bet is refused when it comes.
            Some(IdState::RolledBackBeforeArrival) => return Ok(no_entry),
            None => {
                // The rollback overtook its bet. Remember it so the bet is refused later.
                self.state.insert_id(bet_key, IdRecord { at, state: IdState::RolledBackBeforeArrival });
                self.state.push_retained(at, Retained::Id(bet_key));
                return Ok(no_entry);
            }
        };
        if bet.round != rkey {
            return Err(Rejection::BetMismatch);
        }
        if bet.rolled_back {
            return Err(Rejection::BetAlreadyRolledBack);
        }
        let (currency, amount) = (bet.currency, bet.amount);
        let wallet = AccountRef::player(player.clone(), currency);
        let house = AccountRef::House(currency);
        let receipt =
            self.transfer(EntryKind::Rollback, tx, &house, &wallet, amount, Some(round), Some(bet_id), None, at, sink)?;
        let mut record = record.expect("the bet was found above");
        match &mut record.state {
            IdState::Ran { bet: Some(b), .. } => b.rolled_back = true,
            _ => unreachable!("the bet was found above"),
        }
        // Same `at`: the bet is still forgotten one window after it was placed.
        self.state.update_id(bet_key, record);
        if let Some(r) = self.state.round(rkey) {
            let live_bets = r.live_bets.checked_sub(1).expect("a live bet was counted in its round");
            self.state.put_round(rkey, Round { live_bets, last_at: at, ..r });
        }
        Ok(receipt)
    }

    /// The balance of an account that must exist (players must have opened their wallet), read
    /// on the apply path ([`LedgerState::load_account`]), like [`balance`](Self::balance).
    fn existing(&mut self, account: &AccountRef) -> Result<Balance, Rejection> {
        implicit(account, self.state.load_account(account)).ok_or(Rejection::UnknownAccount)
    }

    fn pending_hold(&self, player: &PlayerId, hold: &TxId) -> Result<Hold, Rejection> {
        match self.holds.get(hold) {
            Some(h) if h.player == *player => Ok(h.clone()),
            // Another player's hold is reported as unknown, not as someone else's.
            Some(_) => Err(Rejection::UnknownHold),
            None => match self.state.id(id_key(hold)).map(|r| r.state) {
                Some(IdState::Ran { kind: CommandKind::ReserveWithdrawal, result: Ok(_), .. }) => {
                    Err(Rejection::HoldSettled)
                }
                _ => Err(Rejection::UnknownHold),
            },
        }
    }

    /// Releases a pending hold without posting (cancel or expiry).
    fn release_hold(
        &mut self,
        hold_id: &TxId,
        kind: EntryKind,
        tx: &TxId,
        reference: Option<&TxId>,
        at: ClusterTime,
        sink: &mut Vec<Entry>,
    ) -> Receipt {
        let h = self.holds.remove(hold_id).expect("caller checked the hold is pending");
        assert!(self.hold_expiry.remove(&(h.expires_at, hold_id.clone())), "every hold has an expiry");
        let wallet = AccountRef::player(h.player.clone(), h.currency);
        let w = self.state.load_account(&wallet).expect("a hold's wallet exists");
        let after = Balance { held: w.held - h.amount.signed(), ..w };
        let external = AccountRef::External(h.currency);
        self.post(
            Posting {
                kind,
                tx,
                debit: &wallet,
                credit: &external,
                amount: h.amount.minor(),
                balances: vec![(wallet.clone(), after)],
                round: None,
                reference,
                reason: None,
            },
            at,
            sink,
        )
    }

    /// Moves `amount` of posted balance from `debit` to `credit`, after checking that both
    /// accounts exist, a debited player can afford it, and nothing overflows.
    #[allow(clippy::too_many_arguments)]
    fn transfer(
        &mut self,
        kind: EntryKind,
        tx: &TxId,
        debit: &AccountRef,
        credit: &AccountRef,
        amount: Amount,
        round: Option<&RoundId>,
        reference: Option<&TxId>,
        reason: Option<&Reason>,
        at: ClusterTime,
        sink: &mut Vec<Entry>,
    ) -> Result<Receipt, Rejection> {
        assert_eq!(debit.currency(), credit.currency(), "postings never cross currencies");
        let d = self.existing(debit)?;
        let c = self.existing(credit)?;
        let amt = amount.signed();
        if debit.player_id().is_some() && d.available() < amt {
            return Err(Rejection::InsufficientFunds);
        }
        let d_after = Balance { posted: d.posted.checked_sub(amt).ok_or(Rejection::BalanceOverflow)?, ..d };
        let c_after = Balance { posted: c.posted.checked_add(amt).ok_or(Rejection::BalanceOverflow)?, ..c };
        Ok(self.post(
            Posting {
                kind,
                tx,
                debit,
                credit,
                amount: amount.minor(),
                balances: vec![(debit.clone(), d_after), (credit.clone(), c_after)],
                round,
                reference,
                reason,
            },
            at,
            sink,
        ))
    }

    /// Writes new balances, appends the entry and checks the invariants it could break.
    fn post(&mut self, p: Posting<'_>, at: ClusterTime, sink: &mut Vec<Entry>) -> Receipt {
        let currency = p.debit.currency();
        let mut delta: i128 = 0;
        for (account, after) in &p.balances {
            assert_eq!(account.currency(), currency, "an entry touches one currency");
            // The state returns what it held, not what the caller read, so the sum below
            // checks the entry against the state itself.
            let before = self.state.put_account(account, *after).unwrap_or_default();
            delta += i128::from(after.posted) - i128::from(before.posted);
            if account.player_id().is_some() {
                assert!(
                    after.held >= 0 && after.held <= after.posted,
                    "player balance below zero or over-held: {account} {after:?}"
                );
            } else {
                assert_eq!(after.held, 0, "system accounts hold nothing");
            }
        }
        // Each entry conserves money, so the per-currency sum over all accounts stays zero;
        // check_invariants re-adds the whole sum.
        assert_eq!(delta, 0, "money not conserved in {currency}: {:?} moved {delta}", p.kind);
        assert!(at >= self.last_at, "cluster time went backwards");

        let mut entry = Entry {
            shard: self.shard,
            seq: self.head_seq.checked_add(1).expect("sequence overflow"),
            at,
            kind: p.kind,
            tx: p.tx.clone(),
            debit: p.debit.clone(),
            credit: p.credit.clone(),
            amount: p.amount,
            balances: p.balances,
            round: p.round.cloned(),
            reference: p.reference.cloned(),
            reason: p.reason.cloned(),
            prev_hash: self.head_hash,
            hash: [0; 32],
        };
        entry.hash = entry.compute_hash();
        assert_eq!(entry.prev_hash, self.head_hash, "hash chain must link");
        self.head_seq = entry.seq;
        self.head_hash = entry.hash;
        let receipt = Receipt { seq: Some(entry.seq), at, balances: entry.balances.clone() };
        sink.push(entry);
        receipt
    }

    /// Re-checks every invariant over the whole state. O(accounts); used by tests, property tests
    /// and before every snapshot.
    pub fn check_invariants(&self) {
        let mut held_by_player: BTreeMap<AccountRef, i64> = BTreeMap::new();
        for (id, hold) in &self.holds {
            assert!(self.hold_expiry.contains(&(hold.expires_at, id.clone())), "hold {id} has no expiry");
            let wallet = AccountRef::player(hold.player.clone(), hold.currency);
            *held_by_player.entry(wallet).or_insert(0) += hold.amount.signed();
        }
        assert_eq!(self.hold_expiry.len(), self.holds.len(), "expiry index out of step with holds");
        // One pass over the accounts (the state may read them from disk): sums per currency,
        // and each account's held amount against its pending holds.
        let mut sums: BTreeMap<Currency, i128> = BTreeMap::new();
        let mut holding = 0usize;
        self.state.for_each_account(&mut |account, balance| {
            *sums.entry(account.currency()).or_insert(0) += i128::from(balance.posted);
            if account.player_id().is_some() {
                assert!(balance.held >= 0 && balance.held <= balance.posted, "{account}: {balance:?}");
            } else {
                assert_eq!(balance.held, 0, "{account} holds money");
            }
            let held = held_by_player.get(account).copied().unwrap_or(0);
            assert_eq!(balance.held, held, "{account}: held differs from its pending holds");
            holding += usize::from(held != 0);
        });
        // Every wallet with a pending hold was visited (its held amount is never zero).
        assert_eq!(holding, held_by_player.len(), "a pending hold's wallet does not exist");
        for (currency, sum) in &sums {
            assert_eq!(*sum, 0, "money not conserved in {currency}");
        }
        self.state.check_invariants();
    }
}

impl<S: LedgerState> Ledger<S> {
    /// Everything but the retained state, in canonical order: what a checkpoint of a ledger
    /// whose retained state is kept elsewhere (on disk) stores beside it.
    pub fn core_image(&self) -> CoreImage {
        CoreImage {
            shard: self.shard,
            config: self.config,
            accounts: self.accounts(),
            holds: self.holds.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            head_seq: self.head_seq,
            head_hash: self.head_hash,
            last_at: self.last_at,
        }
    }

    /// Like [`core_image`](Self::core_image) without the accounts, for a state that stores them
    /// (on disk): O(pending holds) rather than O(accounts), so a checkpoint taken between two
    /// apply batches does not copy every account. A ledger rebuilt from it
    /// ([`from_core_image`](Self::from_core_image)) reads them from that state.
    pub fn core_image_without_accounts(&self) -> CoreImage {
        CoreImage {
            shard: self.shard,
            config: self.config,
            accounts: Vec::new(),
            holds: self.holds.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            head_seq: self.head_seq,
            head_hash: self.head_hash,
            last_at: self.last_at,
        }
    }

    /// Rebuilds a ledger from a core image and the state that was checkpointed with it (unlike
    /// [`with_state`](Self::with_state), `state` need not be empty), and checks its invariants.
    /// The image's accounts, if it holds any, are written into the state; an image taken
    /// without them ([`core_image_without_accounts`](Self::core_image_without_accounts)) leaves
    /// the state's own.
    pub fn from_core_image(core: CoreImage, mut state: S) -> Self {
        for (account, balance) in &core.accounts {
            state.put_account(account, *balance);
        }
        let ledger = Self {
            shard: core.shard,
            config: core.config,
            state,
            hold_expiry: core.holds.iter().map(|(id, h)| (h.expires_at, id.clone())).collect(),
            holds: core.holds.into_iter().collect(),
            head_seq: core.head_seq,
            head_hash: core.head_hash,
            last_at: core.last_at,
        };
        ledger.check_invariants();
        ledger
    }
}

impl Ledger<MemState> {
    /// The state as a plain value with every collection in a canonical order, for snapshots.
    pub fn to_image(&self) -> LedgerImage {
        // A map's keys are unique, so an unstable sort gives the same order as a stable one,
        // in half the time and without a scratch buffer (the sort was a third of the snapshot
        // thread's own CPU in the front-door benchmark: BENCHMARKS.md, "Huge pages").
        let mut ids: Vec<_> = self.state.ids.iter().map(|(k, v)| (*k, *v)).collect();
        ids.sort_unstable_by_key(|a| a.0);
        let mut rounds: Vec<_> = self.state.rounds.iter().map(|(k, v)| (*k, *v)).collect();
        rounds.sort_unstable_by_key(|a| a.0);
        LedgerImage {
            shard: self.shard,
            config: self.config,
            accounts: self.accounts(),
            ids,
            rounds,
            holds: self.holds.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            retention: self.state.retention.iter().cloned().collect(),
            head_seq: self.head_seq,
            head_hash: self.head_hash,
            last_at: self.last_at,
        }
    }

    /// Rebuilds a ledger from an image and checks its invariants.
    pub fn from_image(image: LedgerImage) -> Self {
        let mut ledger = Self::new(image.shard, image.config);
        ledger.state.accounts = image.accounts.into_iter().collect();
        ledger.state.ids = image.ids.into_iter().collect();
        ledger.state.rounds = image.rounds.into_iter().collect();
        ledger.hold_expiry = image.holds.iter().map(|(id, h)| (h.expires_at, id.clone())).collect();
        ledger.holds = image.holds.into_iter().collect();
        ledger.state.retention = image.retention.into_iter().collect();
        ledger.head_seq = image.head_seq;
        ledger.head_hash = image.head_hash;
        ledger.last_at = image.last_at;
        ledger.check_invariants();
        ledger
    }
}

/// An account's balance given what the state holds for it: house and external accounts exist
/// implicitly (zero until used), a player wallet only once opened.
fn implicit(account: &AccountRef, stored: Option<Balance>) -> Option<Balance> {
    match stored {
        Some(b) => Some(b),
        None if account.player_id().is_none() => Some(Balance::default()),
        None => None,
    }
}

/// A ledger's state in canonical order: what a snapshot stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerImage {
    shard: ShardId,
    config: LedgerConfig,
    accounts: Vec<(AccountRef, Balance)>,
    ids: Vec<(Key, IdRecord)>,
    rounds: Vec<(Key, Round)>,
    holds: Vec<(TxId, Hold)>,
    retention: Vec<(ClusterTime, Retained)>,
    head_seq: u64,
    head_hash: Hash,
    last_at: ClusterTime,
}

/// A ledger's state without its retained state ([`Ledger::core_image`]): shard, settings,
/// accounts, pending holds, the chain's head and the latest time applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreImage {
    shard: ShardId,
    config: LedgerConfig,
    accounts: Vec<(AccountRef, Balance)>,
    holds: Vec<(TxId, Hold)>,
    head_seq: u64,
    head_hash: Hash,
    last_at: ClusterTime,
}

impl CoreImage {
    /// Sequence number and hash of the last entry the image includes.
    pub fn head(&self) -> (u64, Hash) {
        (self.head_seq, self.head_hash)
    }

    /// The shard the image belongs to.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The accounts it holds, by account (none if taken by
    /// [`Ledger::core_image_without_accounts`]).
    pub fn accounts(&self) -> &[(AccountRef, Balance)] {
        &self.accounts
    }

    /// The [`LedgerImage`] this core image and a retained state make, in three serializable
    /// pieces around the retained parts, for streaming the image without holding its retained
    /// state (a state on disk sends a snapshot this way, in bounded memory). In a format that
    /// encodes a struct and a tuple as their fields in order (postcard), the image encodes as
    /// `before`, the ids, the rounds, `between`, the forgetting queue, `after`, each retained
    /// part as the format encodes a sequence of its items in the image's order.
    pub fn image_pieces(&self) -> (impl Serialize + '_, impl Serialize + '_, impl Serialize + '_) {
        // `LedgerImage`'s field order, which this must follow (the tests check it).
        ((&self.shard, &self.config, &self.accounts), &self.holds, (&self.head_seq, &self.head_hash, &self.last_at))
    }

    /// The core image from the three pieces of [`image_pieces`](Self::image_pieces), decoded
    /// from a streamed image (its retained parts go elsewhere as they are decoded).
    pub fn from_pieces(before: ImageBefore, between: ImageHolds, after: ImageAfter) -> Self {
        let ImageBefore(shard, config, accounts) = before;
        let ImageAfter(head_seq, head_hash, last_at) = after;
        Self { shard, config, accounts, holds: between.0, head_seq, head_hash, last_at }
    }

    /// Takes the accounts out of the image (to store them some other way than through
    /// [`Ledger::from_core_image`], for example in bulk), leaving none.
    pub fn take_accounts(&mut self) -> Vec<(AccountRef, Balance)> {
        std::mem::take(&mut self.accounts)
    }

    /// Puts back the accounts a state stored beside an image taken without them (to send the
    /// whole image to a peer). `accounts` must be sorted by account; an image that holds
    /// accounts already takes none (it was taken with them, and the state stored none).
    pub fn with_accounts(mut self, accounts: Vec<(AccountRef, Balance)>) -> Self {
        if accounts.is_empty() {
            return self;
        }
        assert!(self.accounts.is_empty(), "an image holds its accounts or its state does, not both");
        assert!(accounts.is_sorted_by(|x, y| x.0 < y.0), "an image's accounts are sorted and unique");
        self.accounts = accounts;
        self
    }
}

/// The piece of a streamed [`LedgerImage`] before its ids: shard, settings and accounts (see
/// [`CoreImage::image_pieces`]).
#[derive(Debug, Deserialize)]
pub struct ImageBefore(ShardId, LedgerConfig, Vec<(AccountRef, Balance)>);

/// The piece of a streamed [`LedgerImage`] between its rounds and its queue: the pending holds.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct ImageHolds(Vec<(TxId, Hold)>);

/// The piece of a streamed [`LedgerImage`] after its queue: the chain's head and the latest time.
#[derive(Debug, Deserialize)]
pub struct ImageAfter(u64, Hash, ClusterTime);

/// The retained state of a [`LedgerImage`], in the image's order: ids and rounds by key, the
/// forgetting queue oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetainedImage {
    /// Remembered ids.
    pub ids: Vec<(StateKey, IdRecord)>,
    /// Remembered rounds.
    pub rounds: Vec<(StateKey, Round)>,
    /// The forgetting queue.
    pub retention: Vec<(ClusterTime, Retained)>,
}

impl LedgerImage {
    /// Splits the image into what a ledger keeps itself and its retained state.
    pub fn into_parts(self) -> (CoreImage, RetainedImage) {
        let core = CoreImage {
            shard: self.shard,
            config: self.config,
            accounts: self.accounts,
            holds: self.holds,
            head_seq: self.head_seq,
            head_hash: self.head_hash,
            last_at: self.last_at,
        };
        (core, RetainedImage { ids: self.ids, rounds: self.rounds, retention: self.retention })
    }

    /// Joins the two parts [`into_parts`](Self::into_parts) split. The retained state must be in
    /// the image's order (ids and rounds by key).
    pub fn from_parts(core: CoreImage, retained: RetainedImage) -> Self {
        assert!(retained.ids.is_sorted_by_key(|r| r.0), "an image's ids are in key order");
        assert!(retained.rounds.is_sorted_by_key(|r| r.0), "an image's rounds are in key order");
        Self {
            shard: core.shard,
            config: core.config,
            accounts: core.accounts,
            ids: retained.ids,
            rounds: retained.rounds,
            holds: core.holds,
            retention: retained.retention,
            head_seq: core.head_seq,
            head_hash: core.head_hash,
            last_at: core.last_at,
        }
    }

    /// Sequence number and hash of the last entry the image includes.
    pub fn head(&self) -> (u64, Hash) {
        (self.head_seq, self.head_hash)
    }

    /// The shard the image belongs to.
    pub fn shard(&self) -> ShardId {
        self.shard
    }
}

#[cfg(test)]
mod tests;
