//! Independent re-verification of a shard from its entries alone.
//!
//! The [`Verifier`] shares no code with [`crate::Ledger`] beyond the entry codec: it recomputes
//! every hash, follows every link, replays every balance change through a small table of what
//! each entry kind does, and checks the recorded balances and invariants against that replay.
//! Auditors can run it on a journal copied off any replica.

use std::collections::{BTreeMap, HashMap};

use thiserror::Error;

use crate::account::{AccountKind, AccountRef};
use crate::codec::DecodeError;
use crate::entry::{Entry, EntryKind, Hash, genesis_hash};
use crate::money::{AMOUNT_MAX, Balance, Currency};
use crate::shard::ShardId;
use crate::time::ClusterTime;

/// The first entry that fails verification, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The bytes at this position are not a valid entry.
    #[error("entry #{position}: cannot decode: {source}")]
    Decode {
        /// 1-based position in the journal.
        position: u64,
        /// What is wrong with the bytes.
        source: DecodeError,
    },
    /// The stored hash is not the SHA-256 of the entry's bytes: the entry was altered.
    #[error("entry #{position} (seq {seq}): stored hash does not match the entry's bytes (tampered or corrupt)")]
    HashMismatch {
        /// 1-based position in the journal; trust this over `seq`, which may be the altered byte.
        position: u64,
        /// The sequence number the entry claims.
        seq: u64,
    },
    /// The entry does not name the previous entry's hash.
    #[error("entry {seq}: prev_hash does not link to the previous entry")]
    BrokenLink {
        /// The entry's sequence number.
        seq: u64,
    },
    /// Sequence numbers are not contiguous.
    #[error("entry #{position}: sequence {found}, expected {expected}")]
    SequenceGap {
        /// 1-based position in the journal.
        position: u64,
        /// The expected sequence number.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// The entry belongs to another shard's chain.
    #[error("entry {seq}: belongs to shard {found}, not shard {expected}")]
    WrongShard {
        /// The entry's sequence number.
        seq: u64,
        /// The shard being verified.
        expected: ShardId,
        /// The shard named by the entry.
        found: ShardId,
    },
    /// Cluster time decreased.
    #[error("entry {seq}: cluster time went backwards")]
    TimeWentBackwards {
        /// The entry's sequence number.
        seq: u64,
    },
    /// A recorded balance differs from the replay.
    #[error("entry {seq}: {account} recorded as {recorded}, replay gives {replayed}")]
    BalanceMismatch {
        /// The entry's sequence number.
        seq: u64,
        /// The account.
        account: AccountRef,
        /// What the entry says.
        recorded: Balance,
        /// What replaying the chain gives.
        replayed: Balance,
    },
    /// A player's balance went below zero or held more than it had.
    #[error("entry {seq}: player balance {account} is negative or over-held: {balance}")]
    NegativePlayer {
        /// The entry's sequence number.
        seq: u64,
        /// The account.
        account: AccountRef,
        /// The offending balance.
        balance: Balance,
    },
    /// The entry is well-formed bytes but breaks a rule of the ledger.
    #[error("entry {seq}: {what}")]
    Malformed {
        /// The entry's sequence number.
        seq: u64,
        /// Which rule.
        what: &'static str,
    },
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    /// Entries verified.
    pub entries: u64,
    /// Hash of the last entry (the genesis hash when there are none).
    pub head_hash: Hash,
    /// Every account's balance after the last entry.
    pub balances: BTreeMap<AccountRef, Balance>,
}

/// Checks entries one at a time, in order.
#[derive(Debug)]
pub struct Verifier {
    shard: ShardId,
    position: u64,
    head_hash: Hash,
    last_at: ClusterTime,
    /// Looked up for every entry, never iterated before [`finish`](Self::finish) sorts it: a
    /// hash map (seeded per process, like the ledger's) instead of a tree whose every step
    /// compares account names.
    balances: HashMap<AccountRef, Balance, foldhash::fast::RandomState>,
    sums: BTreeMap<Currency, i128>,
}

impl Verifier {
    /// A verifier for `shard`'s chain from its first entry.
    pub fn new(shard: ShardId) -> Self {
        Self {
            shard,
            position: 0,
            head_hash: genesis_hash(shard),
            last_at: ClusterTime::default(),
            balances: HashMap::default(),
            sums: BTreeMap::new(),
        }
    }

    /// Verifies the next entry given as its stored bytes and stored hash.
    pub fn push_raw(&mut self, bytes: &[u8], stored_hash: &Hash) -> Result<(), VerifyError> {
        let position = self.position + 1;
        let entry = Entry::decode(bytes).map_err(|source| VerifyError::Decode { position, source })?;
        if &entry.hash != stored_hash {
            return Err(VerifyError::HashMismatch { position, seq: entry.seq });
        }
        // `decode` hashed the very bytes it accepted, and accepts only what `encode` writes, so
        // the entry's own hash is already the one checked: hashing it again (as `push` must, for
        // an entry it did not decode) would double the SHA-256 work of a journal's verification.
        debug_assert_eq!(entry.compute_hash(), entry.hash, "decode accepts only canonical bytes");
        self.push_hashed(&entry)
    }

    /// Verifies the next entry. Its `hash` field is recomputed, not trusted.
    pub fn push(&mut self, e: &Entry) -> Result<(), VerifyError> {
        if e.compute_hash() != e.hash {
            return Err(VerifyError::HashMismatch { position: self.position + 1, seq: e.seq });
        }
        self.push_hashed(e)
    }

    /// Verifies the next entry, whose `hash` is known to be the SHA-256 of its encoding.
    fn push_hashed(&mut self, e: &Entry) -> Result<(), VerifyError> {
        let position = self.position + 1;
        let seq = e.seq;
        if e.seq != position {
            return Err(VerifyError::SequenceGap { position, expected: position, found: e.seq });
        }
        if e.shard != self.shard {
            return Err(VerifyError::WrongShard { seq, expected: self.shard, found: e.shard });
        }
        if e.prev_hash != self.head_hash {
            return Err(VerifyError::BrokenLink { seq });
        }
        if e.at < self.last_at {
            return Err(VerifyError::TimeWentBackwards { seq });
        }
        self.replay(e)?;
        self.position = position;
        self.head_hash = e.hash;
        self.last_at = e.at;
        Ok(())
    }

    fn replay(&mut self, e: &Entry) -> Result<(), VerifyError> {
        let seq = e.seq;
        let malformed = |what| VerifyError::Malformed { seq, what };
        let currency = e.debit.currency();
        if e.credit.currency() != currency || e.balances.iter().any(|(a, _)| a.currency() != currency) {
            return Err(malformed("accounts of different currencies"));
        }
        check_shape(e).map_err(malformed)?;

        let mut changed: Vec<(AccountRef, Balance)> = Vec::with_capacity(2);
        if e.kind == EntryKind::Open {
            if e.amount != 0 || e.debit != e.credit {
                return Err(malformed("open entries move nothing"));
            }
            if self.balances.contains_key(&e.debit) {
                return Err(malformed("wallet opened twice"));
            }
            changed.push((e.debit.clone(), Balance::default()));
        } else {
            if e.amount == 0 || e.amount > AMOUNT_MAX {
                return Err(malformed("amount out of range"));
            }
            if e.debit == e.credit {
                return Err(malformed("debit and credit are the same account"));
            }
            let amount = i128::from(e.amount);
            let (debit_posted, credit_posted, debit_held) = e.kind.effect();
            let d = self.current(&e.debit).ok_or(malformed("debit wallet was never opened"))?;
            let c = self.current(&e.credit).ok_or(malformed("credit wallet was never opened"))?;
            let d_after = Balance {
                posted: to_i64(i128::from(d.posted) + i128::from(debit_posted) * amount)
                    .ok_or(malformed("overflow"))?,
                held: to_i64(i128::from(d.held) + i128::from(debit_held) * amount).ok_or(malformed("overflow"))?,
            };
            changed.push((e.debit.clone(), d_after));
            if credit_posted != 0 {
                let c_after = Balance {
                    posted: to_i64(i128::from(c.posted) + i128::from(credit_posted) * amount)
                        .ok_or(malformed("overflow"))?,
                    held: c.held,
                };
                changed.push((e.credit.clone(), c_after));
            }
            *self.sums.entry(currency).or_insert(0) += i128::from(debit_posted + credit_posted) * amount;
        }

        if e.balances.len() != changed.len() {
            return Err(malformed("entry must list exactly the balances it changed"));
        }
        for ((recorded_account, recorded), (account, replayed)) in e.balances.iter().zip(&changed) {
            if recorded_account != account {
                return Err(malformed("balances listed in the wrong order"));
            }
            if recorded != replayed {
                return Err(VerifyError::BalanceMismatch {
                    seq,
                    account: account.clone(),
                    recorded: *recorded,
                    replayed: *replayed,
                });
            }
            let is_player = account.kind() == AccountKind::Player;
            if is_player && (replayed.held < 0 || replayed.held > replayed.posted) {
                return Err(VerifyError::NegativePlayer { seq, account: account.clone(), balance: *replayed });
            }
            if !is_player && replayed.held != 0 {
                return Err(malformed("system account holds money"));
            }
        }
        for (account, balance) in changed {
            self.balances.insert(account, balance);
        }
        if self.sums.get(&currency).copied().unwrap_or(0) != 0 {
            return Err(malformed("money not conserved"));
        }
        Ok(())
    }

    fn current(&self, account: &AccountRef) -> Option<Balance> {
        match self.balances.get(account) {
            Some(b) => Some(*b),
            None if account.kind() != AccountKind::Player => Some(Balance::default()),
            None => None,
        }
    }

    /// Ends verification and reports what was established.
    pub fn finish(self) -> VerifySummary {
        VerifySummary {
            entries: self.position,
            head_hash: self.head_hash,
            balances: self.balances.into_iter().collect(),
        }
    }
}

fn to_i64(v: i128) -> Option<i64> {
    i64::try_from(v).ok()
}

/// Which account kinds each entry kind may connect, and which memo fields it carries.
fn check_shape(e: &Entry) -> Result<(), &'static str> {
    use AccountKind::{External, House, Player};
    let kinds = (e.debit.kind(), e.credit.kind());
    let ok = match e.kind {
        EntryKind::Open => kinds == (Player, Player),
        EntryKind::Deposit => kinds == (External, Player),
        EntryKind::WithdrawalReserve
        | EntryKind::WithdrawalCommit
        | EntryKind::WithdrawalCancel
        | EntryKind::WithdrawalExpire => kinds == (Player, External),
        EntryKind::Bet => kinds == (Player, House),
        EntryKind::Win | EntryKind::Rollback => kinds == (House, Player),
        EntryKind::Transfer => kinds == (Player, Player),
        EntryKind::Adjustment => true,
    };
    if !ok {
        return Err("accounts do not fit the entry kind");
    }
    let needs_round = matches!(e.kind, EntryKind::Bet | EntryKind::Win | EntryKind::Rollback);
    let needs_reference =
        matches!(e.kind, EntryKind::Rollback | EntryKind::WithdrawalCommit | EntryKind::WithdrawalCancel);
    let needs_reason = e.kind == EntryKind::Adjustment;
    if e.round.is_some() != needs_round
        || e.reference.is_some() != needs_reference
        || e.reason.is_some() != needs_reason
    {
        return Err("memo fields do not fit the entry kind");
    }
    Ok(())
}

/// Verifies a whole chain given as entries.
pub fn verify_entries<'a>(
    shard: ShardId,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> Result<VerifySummary, VerifyError> {
    let mut v = Verifier::new(shard);
    for e in entries {
        v.push(e)?;
    }
    Ok(v.finish())
}
