//! Ledger entries and their canonical, versioned, hash-chained byte encoding.
//!
//! Every balance change is one [`Entry`]. Entry `n` stores the hash of entry `n-1`, and its own
//! hash is SHA-256 over its canonical encoding (which includes that previous hash), so changing
//! any byte of any entry breaks every later link. The encoding is specified in
//! `docs/ledger-format.md`; [`Entry::encode`] and [`Entry::decode`] are its reference.

use serde::{Deserialize, Serialize};
use serde_repr::{Deserialize_repr, Serialize_repr};
use sha2::{Digest, Sha256};

use crate::account::AccountRef;
use crate::codec::{DecodeError, Reader, Sink, Writer, sha256};
use crate::ids::{Reason, RoundId, TxId};
use crate::money::{Balance, Currency};
use crate::shard::ShardId;
use crate::time::ClusterTime;

/// Version byte that starts every encoded entry.
pub const ENTRY_FORMAT_VERSION: u8 = 1;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of a shard's first entry: SHA-256 of a fixed tag and the shard id, so that
/// chains of different shards can never be spliced into each other.
pub fn genesis_hash(shard: ShardId) -> Hash {
    let mut h = Sha256::new();
    h.update(b"casino-ledger genesis v1");
    h.update(shard.0.to_be_bytes());
    h.finalize().into()
}

/// What kind of balance change an entry records.
///
/// The discriminant is the encoding, in the canonical entry encoding (`docs/ledger-format.md`)
/// and wherever serde writes an entry (the node API): never change or reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum EntryKind {
    /// A player wallet was opened (amount 0).
    Open = 1,
    /// External → player.
    Deposit = 2,
    /// A withdrawal hold was placed on the player's balance (nothing posted yet).
    WithdrawalReserve = 3,
    /// A hold was settled: player → external.
    WithdrawalCommit = 4,
    /// A hold was released by the client.
    WithdrawalCancel = 5,
    /// A hold expired by itself and was released.
    WithdrawalExpire = 6,
    /// Player → house.
    Bet = 7,
    /// House → player.
    Win = 8,
    /// House → player, reversing a bet.
    Rollback = 9,
    /// Player → player.
    Transfer = 10,
    /// An operator correction between any two accounts.
    Adjustment = 11,
}

impl EntryKind {
    /// The kind's name, for people and logs (`withdrawal-commit`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Deposit => "deposit",
            Self::WithdrawalReserve => "withdrawal-reserve",
            Self::WithdrawalCommit => "withdrawal-commit",
            Self::WithdrawalCancel => "withdrawal-cancel",
            Self::WithdrawalExpire => "withdrawal-expire",
            Self::Bet => "bet",
            Self::Win => "win",
            Self::Rollback => "rollback",
            Self::Transfer => "transfer",
            Self::Adjustment => "adjustment",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Open,
            2 => Self::Deposit,
            3 => Self::WithdrawalReserve,
            4 => Self::WithdrawalCommit,
            5 => Self::WithdrawalCancel,
            6 => Self::WithdrawalExpire,
            7 => Self::Bet,
            8 => Self::Win,
            9 => Self::Rollback,
            10 => Self::Transfer,
            11 => Self::Adjustment,
            _ => return None,
        })
    }

    /// How this kind moves money, as (posted change of debit, posted change of credit, held
    /// change of debit) per unit of amount. Verification replays entries through this table.
    pub(crate) fn effect(self) -> (i64, i64, i64) {
        match self {
            Self::Open => (0, 0, 0),
            Self::WithdrawalReserve => (0, 0, 1),
            Self::WithdrawalCancel | Self::WithdrawalExpire => (0, 0, -1),
            Self::WithdrawalCommit => (-1, 1, -1),
            Self::Deposit | Self::Bet | Self::Win | Self::Rollback | Self::Transfer | Self::Adjustment => (-1, 1, 0),
        }
    }
}

/// One append-only ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The shard whose chain this entry belongs to.
    pub shard: ShardId,
    /// Position in the shard's chain, starting at 1, without gaps.
    pub seq: u64,
    /// Cluster time stamped by the leader; never decreases along the chain.
    pub at: ClusterTime,
    /// What happened.
    pub kind: EntryKind,
    /// The transaction id that caused the entry (for expiries, the hold's reserve id).
    pub tx: TxId,
    /// The account money leaves (for holds: the player whose balance is held).
    pub debit: AccountRef,
    /// The account money arrives at.
    pub credit: AccountRef,
    /// Minor units moved; zero only for [`EntryKind::Open`].
    pub amount: u64,
    /// Resulting balance of each distinct account touched, debit first.
    pub balances: Vec<(AccountRef, Balance)>,
    /// The game round, for bets, wins and rollbacks.
    pub round: Option<RoundId>,
    /// The referenced transaction: the bet of a rollback, the hold of a commit or cancel.
    pub reference: Option<TxId>,
    /// The reason of an adjustment.
    pub reason: Option<Reason>,
    /// The previous entry's hash, or [`genesis_hash`] for the first entry.
    pub prev_hash: Hash,
    /// SHA-256 of [`Entry::encode`].
    pub hash: Hash,
}

impl Entry {
    /// The currency of the entry: both accounts share it.
    pub fn currency(&self) -> Currency {
        self.debit.currency()
    }

    /// The canonical encoding (format version 1). The hash covers exactly these bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(192);
        self.write(&mut w);
        w.into_inner()
    }

    fn write<S: Sink>(&self, w: &mut Writer<S>) {
        w.u8(ENTRY_FORMAT_VERSION);
        w.u32(self.shard.0);
        w.u64(self.seq);
        w.u64(self.at.as_millis());
        w.u8(self.kind as u8);
        w.str8(self.tx.as_str());
        self.debit.encode(w);
        self.credit.encode(w);
        w.u64(self.amount);
        let n = u8::try_from(self.balances.len()).expect("an entry touches at most two accounts");
        w.u8(n);
        for (account, balance) in &self.balances {
            account.encode(w);
            w.i64(balance.posted);
            w.i64(balance.held);
        }
        w.str8(self.round.as_ref().map_or("", RoundId::as_str));
        w.str8(self.reference.as_ref().map_or("", TxId::as_str));
        w.str16(self.reason.as_ref().map_or("", Reason::as_str));
        w.raw(&self.prev_hash);
    }

    /// Computes the hash of this entry's encoding, streaming it into SHA-256.
    pub fn compute_hash(&self) -> Hash {
        sha256(|w| self.write(w))
    }

    /// Decodes a canonical encoding and sets `hash` to the SHA-256 of `bytes`. Rejects anything
    /// the encoder would not produce, so `decode(b).encode() == b` whenever decode succeeds.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u8("version")? != ENTRY_FORMAT_VERSION {
            return Err(DecodeError::Invalid("format version"));
        }
        let shard = ShardId(r.u32("shard")?);
        let seq = r.u64("seq")?;
        let at = ClusterTime::from_millis(r.u64("at")?);
        let kind = EntryKind::from_u8(r.u8("kind")?).ok_or(DecodeError::Invalid("kind"))?;
        let tx = TxId::new(r.str8("tx id")?).map_err(|_| DecodeError::Invalid("tx id"))?;
        let debit = AccountRef::decode(&mut r)?;
        let credit = AccountRef::decode(&mut r)?;
        let amount = r.u64("amount")?;
        let n = r.u8("balance count")?;
        if !(1..=2).contains(&n) {
            return Err(DecodeError::Invalid("balance count"));
        }
        let mut balances = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let account = AccountRef::decode(&mut r)?;
            let posted = r.i64("posted balance")?;
            let held = r.i64("held balance")?;
            balances.push((account, Balance { posted, held }));
        }
        let round = optional(r.str8("round id")?, RoundId::new, "round id")?;
        let reference = optional(r.str8("reference")?, TxId::new, "reference")?;
        let reason = optional(r.str16("reason")?, Reason::new, "reason")?;
        let prev_hash = r.array::<32>("prev hash")?;
        r.finish()?;
        Ok(Self {
            shard,
            seq,
            at,
            kind,
            tx,
            debit,
            credit,
            amount,
            balances,
            round,
            reference,
            reason,
            prev_hash,
            hash: Sha256::digest(bytes).into(),
        })
    }
}

fn optional<T, E>(
    s: &str,
    parse: impl Fn(String) -> Result<T, E>,
    what: &'static str,
) -> Result<Option<T>, DecodeError> {
    if s.is_empty() { Ok(None) } else { parse(s.to_string()).map(Some).map_err(|_| DecodeError::Invalid(what)) }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ids::PlayerId;

    pub(crate) fn arb_currency() -> impl Strategy<Value = Currency> {
        prop::sample::select(vec!["EUR", "USD", "JPY", "BHD", "GBP"]).prop_map(|c| Currency::new(c).unwrap())
    }

    fn arb_id() -> impl Strategy<Value = String> {
        "[!-~]{1,64}"
    }

    fn arb_account() -> impl Strategy<Value = AccountRef> {
        prop_oneof![
            (arb_id(), arb_currency()).prop_map(|(p, c)| AccountRef::player(PlayerId::new(p).unwrap(), c)),
            arb_currency().prop_map(AccountRef::House),
            arb_currency().prop_map(AccountRef::External),
        ]
    }

    prop_compose! {
        fn arb_entry()(
            shard in any::<u32>(), seq in any::<u64>(), at in any::<u64>(), kind in 1u8..=11,
            tx in arb_id(), debit in arb_account(), credit in arb_account(), amount in any::<u64>(),
            balances in prop::collection::vec((arb_account(), any::<i64>(), any::<i64>()), 1..=2),
            round in prop::option::of(arb_id()), reference in prop::option::of(arb_id()),
            reason in prop::option::of("[a-z #0-9]{1,256}"), prev_hash in any::<[u8; 32]>(),
        ) -> Entry {
            let mut e = Entry {
                shard: ShardId(shard), seq, at: ClusterTime::from_millis(at),
                kind: EntryKind::from_u8(kind).unwrap(), tx: TxId::new(tx).unwrap(), debit, credit, amount,
                balances: balances.into_iter().map(|(a, posted, held)| (a, Balance { posted, held })).collect(),
                round: round.map(|r| RoundId::new(r).unwrap()),
                reference: reference.map(|r| TxId::new(r).unwrap()),
                reason: reason.map(|r| Reason::new(r).unwrap()),
                prev_hash, hash: [0; 32],
            };
            e.hash = e.compute_hash();
            e
        }
    }

    proptest! {
        #[test]
        fn encoding_round_trips(entry in arb_entry()) {
            let bytes = entry.encode();
            let decoded = Entry::decode(&bytes).unwrap();
            prop_assert_eq!(&decoded, &entry);
            prop_assert_eq!(decoded.encode(), bytes);
        }

        #[test]
        fn any_single_byte_flip_changes_the_hash_or_fails_to_decode(entry in arb_entry(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = entry.encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(tampered) = Entry::decode(&bytes) {
                prop_assert_ne!(tampered.hash, entry.hash);
            }
        }
    }

    #[test]
    fn genesis_differs_per_shard() {
        assert_ne!(genesis_hash(ShardId(0)), genesis_hash(ShardId(1)));
    }

    #[test]
    fn trailing_and_unknown_versions_are_rejected() {
        let e = Entry {
            shard: ShardId(3),
            seq: 1,
            at: ClusterTime::from_millis(5),
            kind: EntryKind::Open,
            tx: TxId::new("t").unwrap(),
            debit: AccountRef::House(Currency::new("EUR").unwrap()),
            credit: AccountRef::House(Currency::new("EUR").unwrap()),
            amount: 0,
            balances: vec![(AccountRef::House(Currency::new("EUR").unwrap()), Balance::default())],
            round: None,
            reference: None,
            reason: None,
            prev_hash: genesis_hash(ShardId(3)),
            hash: [0; 32],
        };
        let mut bytes = e.encode();
        bytes.push(0);
        assert_eq!(Entry::decode(&bytes), Err(DecodeError::Trailing(1)));
        let mut bytes = e.encode();
        bytes[0] = 2;
        assert_eq!(Entry::decode(&bytes), Err(DecodeError::Invalid("format version")));
    }
}
