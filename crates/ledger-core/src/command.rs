//! Commands: what clients ask the ledger to do. Each carries its idempotency key.

use serde::{Deserialize, Serialize};
use serde_repr::{Deserialize_repr, Serialize_repr};

use crate::account::AccountRef;
use crate::codec::sha256;
use crate::ids::{PlayerId, Reason, RoundId, TxId};
use crate::money::{Amount, Currency};
use crate::rejection::Rejection;

/// Shortest withdrawal hold.
pub const HOLD_TIMEOUT_MIN_MS: u64 = 1_000;
/// Longest withdrawal hold. Kept well inside the id retention window so a hold's reserve id is
/// always remembered while the hold lives.
pub const HOLD_TIMEOUT_MAX_MS: u64 = 24 * 60 * 60 * 1_000;
/// The hold timeout clients get when they do not choose one: 15 minutes.
pub const HOLD_TIMEOUT_DEFAULT_MS: u64 = 15 * 60 * 1_000;

/// A request to change balances. `tx` is the client's idempotency key.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the format tests (`crates/ledger-core/tests/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Opens a player's wallet in a currency.
    OpenAccount {
        /// Idempotency key.
        tx: TxId,
        /// The player.
        player: PlayerId,
        /// The wallet's currency.
        currency: Currency,
    },
    /// Moves money in from outside: external → player.
    Deposit {
        /// Idempotency key.
        tx: TxId,
        /// The player credited.
        player: PlayerId,
        /// Currency of the wallet and amount.
        currency: Currency,
        /// Minor units.
        amount: Amount,
    },
    /// Reserves part of a player's balance for a withdrawal. The hold settles by
    /// [`Command::CommitWithdrawal`] or [`Command::CancelWithdrawal`], or expires by itself after
    /// `timeout_ms` of cluster time, releasing the funds.
    ReserveWithdrawal {
        /// Idempotency key; also names the hold.
        tx: TxId,
        /// The player.
        player: PlayerId,
        /// Currency of the wallet and amount.
        currency: Currency,
        /// Minor units to reserve.
        amount: Amount,
        /// How long the hold lives, in cluster milliseconds.
        timeout_ms: u64,
    },
    /// Settles a hold: the reserved money leaves, player → external.
    CommitWithdrawal {
        /// Idempotency key.
        tx: TxId,
        /// The player who owns the hold.
        player: PlayerId,
        /// The hold's reserve transaction id.
        hold: TxId,
    },
    /// Releases a hold back to the player's available balance.
    CancelWithdrawal {
        /// Idempotency key.
        tx: TxId,
        /// The player who owns the hold.
        player: PlayerId,
        /// The hold's reserve transaction id.
        hold: TxId,
    },
    /// A stake in a game round: player → house.
    Bet {
        /// Idempotency key; also names the bet for rollbacks.
        tx: TxId,
        /// The player.
        player: PlayerId,
        /// The game round.
        round: RoundId,
        /// Currency of the wallet and amount.
        currency: Currency,
        /// Minor units staked.
        amount: Amount,
    },
    /// A payout for a round the player bet in: house → player.
    Win {
        /// Idempotency key.
        tx: TxId,
        /// The player.
        player: PlayerId,
        /// The round the win belongs to.
        round: RoundId,
        /// Must equal the round's currency.
        currency: Currency,
        /// Minor units paid.
        amount: Amount,
    },
    /// Reverses one bet exactly once: house → player for the bet's amount. A rollback that
    /// arrives before its bet is remembered, and the late bet is then refused.
    Rollback {
        /// Idempotency key.
        tx: TxId,
        /// The bet's player.
        player: PlayerId,
        /// The bet's round.
        round: RoundId,
        /// The bet's transaction id.
        bet: TxId,
    },
    /// Moves money between two players of the same shard.
    Transfer {
        /// Idempotency key.
        tx: TxId,
        /// Payer.
        from: PlayerId,
        /// Payee.
        to: PlayerId,
        /// Currency of both wallets and the amount.
        currency: Currency,
        /// Minor units.
        amount: Amount,
    },
    /// An operator correction between any two accounts of one currency, with a reason.
    Adjust {
        /// Idempotency key.
        tx: TxId,
        /// The account debited (money leaves it).
        debit: AccountRef,
        /// The account credited (money arrives).
        credit: AccountRef,
        /// Must equal both accounts' currency.
        currency: Currency,
        /// Minor units.
        amount: Amount,
        /// Why, for the audit trail.
        reason: Reason,
    },
}

/// The kind of a command, recorded with its id.
///
/// The discriminant is the encoding: it is what snapshots store (serde writes it as one byte)
/// and what the idempotency fingerprint hashes. Never change or reuse one; a new kind takes the
/// next number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum CommandKind {
    /// [`Command::OpenAccount`].
    OpenAccount = 0,
    /// [`Command::Deposit`].
    Deposit = 1,
    /// [`Command::ReserveWithdrawal`].
    ReserveWithdrawal = 2,
    /// [`Command::CommitWithdrawal`].
    CommitWithdrawal = 3,
    /// [`Command::CancelWithdrawal`].
    CancelWithdrawal = 4,
    /// [`Command::Bet`].
    Bet = 5,
    /// [`Command::Win`].
    Win = 6,
    /// [`Command::Rollback`].
    Rollback = 7,
    /// [`Command::Transfer`].
    Transfer = 8,
    /// [`Command::Adjust`].
    Adjust = 9,
}

impl Command {
    /// The idempotency key.
    pub fn tx(&self) -> &TxId {
        match self {
            Self::OpenAccount { tx, .. }
            | Self::Deposit { tx, .. }
            | Self::ReserveWithdrawal { tx, .. }
            | Self::CommitWithdrawal { tx, .. }
            | Self::CancelWithdrawal { tx, .. }
            | Self::Bet { tx, .. }
            | Self::Win { tx, .. }
            | Self::Rollback { tx, .. }
            | Self::Transfer { tx, .. }
            | Self::Adjust { tx, .. } => tx,
        }
    }

    /// The same command under another transaction id.
    pub fn with_tx(&self, id: TxId) -> Command {
        let mut c = self.clone();
        match &mut c {
            Self::OpenAccount { tx, .. }
            | Self::Deposit { tx, .. }
            | Self::ReserveWithdrawal { tx, .. }
            | Self::CommitWithdrawal { tx, .. }
            | Self::CancelWithdrawal { tx, .. }
            | Self::Bet { tx, .. }
            | Self::Win { tx, .. }
            | Self::Rollback { tx, .. }
            | Self::Transfer { tx, .. }
            | Self::Adjust { tx, .. } => *tx = id,
        }
        c
    }

    /// The command's kind.
    pub fn kind(&self) -> CommandKind {
        match self {
            Self::OpenAccount { .. } => CommandKind::OpenAccount,
            Self::Deposit { .. } => CommandKind::Deposit,
            Self::ReserveWithdrawal { .. } => CommandKind::ReserveWithdrawal,
            Self::CommitWithdrawal { .. } => CommandKind::CommitWithdrawal,
            Self::CancelWithdrawal { .. } => CommandKind::CancelWithdrawal,
            Self::Bet { .. } => CommandKind::Bet,
            Self::Win { .. } => CommandKind::Win,
            Self::Rollback { .. } => CommandKind::Rollback,
            Self::Transfer { .. } => CommandKind::Transfer,
            Self::Adjust { .. } => CommandKind::Adjust,
        }
    }

    /// The player whose shard must run this command, if any. Adjustments between system
    /// accounts name no player; the operator picks their shard explicitly.
    pub fn player(&self) -> Option<&PlayerId> {
        match self {
            Self::OpenAccount { player, .. }
            | Self::Deposit { player, .. }
            | Self::ReserveWithdrawal { player, .. }
            | Self::CommitWithdrawal { player, .. }
            | Self::CancelWithdrawal { player, .. }
            | Self::Bet { player, .. }
            | Self::Win { player, .. }
            | Self::Rollback { player, .. } => Some(player),
            Self::Transfer { from, .. } => Some(from),
            Self::Adjust { debit, credit, .. } => debit.player_id().or(credit.player_id()),
        }
    }

    /// Checks what can be checked without state. Field types already guarantee valid ids,
    /// amounts and currencies; this adds the rules that relate fields to each other.
    pub fn validate(&self) -> Result<(), Rejection> {
        match self {
            Self::Transfer { from, to, .. } if from == to => Err(Rejection::SameAccount),
            Self::Adjust { debit, credit, .. } if debit == credit => Err(Rejection::SameAccount),
            Self::ReserveWithdrawal { timeout_ms, .. }
                if !(HOLD_TIMEOUT_MIN_MS..=HOLD_TIMEOUT_MAX_MS).contains(timeout_ms) =>
            {
                Err(Rejection::InvalidHoldTimeout)
            }
            _ => Ok(()),
        }
    }

    /// SHA-256 of the canonical encoding of every field. Two commands with the same id are the
    /// same request exactly when their fingerprints are equal.
    pub fn fingerprint(&self) -> [u8; 32] {
        sha256(|w| self.write_fingerprint(w))
    }

    fn write_fingerprint(&self, w: &mut crate::codec::Writer<&mut Vec<u8>>) {
        w.u8(1); // fingerprint encoding version
        w.u8(self.kind() as u8);
        w.str8(self.tx().as_str());
        match self {
            Self::OpenAccount { player, currency, .. } => {
                w.str8(player.as_str());
                w.raw(&currency.code_bytes());
            }
            Self::Deposit { player, currency, amount, .. } => {
                w.str8(player.as_str());
                w.raw(&currency.code_bytes());
                w.u64(amount.minor());
            }
            Self::ReserveWithdrawal { player, currency, amount, timeout_ms, .. } => {
                w.str8(player.as_str());
                w.raw(&currency.code_bytes());
                w.u64(amount.minor());
                w.u64(*timeout_ms);
            }
            Self::CommitWithdrawal { player, hold, .. } | Self::CancelWithdrawal { player, hold, .. } => {
                w.str8(player.as_str());
                w.str8(hold.as_str());
            }
            Self::Bet { player, round, currency, amount, .. } | Self::Win { player, round, currency, amount, .. } => {
                w.str8(player.as_str());
                w.str8(round.as_str());
                w.raw(&currency.code_bytes());
                w.u64(amount.minor());
            }
            Self::Rollback { player, round, bet, .. } => {
                w.str8(player.as_str());
                w.str8(round.as_str());
                w.str8(bet.as_str());
            }
            Self::Transfer { from, to, currency, amount, .. } => {
                w.str8(from.as_str());
                w.str8(to.as_str());
                w.raw(&currency.code_bytes());
                w.u64(amount.minor());
            }
            Self::Adjust { debit, credit, currency, amount, reason, .. } => {
                debit.encode(w);
                credit.encode(w);
                w.raw(&currency.code_bytes());
                w.u64(amount.minor());
                w.str16(reason.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::new("EUR").unwrap()
    }

    #[test]
    fn fingerprint_changes_with_every_field() {
        let base = Command::Bet {
            tx: TxId::new("t1").unwrap(),
            player: PlayerId::new("alice").unwrap(),
            round: RoundId::new("r1").unwrap(),
            currency: eur(),
            amount: Amount::new(100).unwrap(),
        };
        let variants = [
            Command::Bet {
                tx: TxId::new("t2").unwrap(),
                player: PlayerId::new("alice").unwrap(),
                round: RoundId::new("r1").unwrap(),
                currency: eur(),
                amount: Amount::new(100).unwrap(),
            },
            Command::Bet {
                tx: TxId::new("t1").unwrap(),
                player: PlayerId::new("bob").unwrap(),
                round: RoundId::new("r1").unwrap(),
                currency: eur(),
                amount: Amount::new(100).unwrap(),
            },
            Command::Bet {
                tx: TxId::new("t1").unwrap(),
                player: PlayerId::new("alice").unwrap(),
                round: RoundId::new("r2").unwrap(),
                currency: eur(),
                amount: Amount::new(100).unwrap(),
            },
            Command::Bet {
                tx: TxId::new("t1").unwrap(),
                player: PlayerId::new("alice").unwrap(),
                round: RoundId::new("r1").unwrap(),
                currency: Currency::new("USD").unwrap(),
                amount: Amount::new(100).unwrap(),
            },
            Command::Bet {
                tx: TxId::new("t1").unwrap(),
                player: PlayerId::new("alice").unwrap(),
                round: RoundId::new("r1").unwrap(),
                currency: eur(),
                amount: Amount::new(101).unwrap(),
            },
            Command::Win {
                tx: TxId::new("t1").unwrap(),
                player: PlayerId::new("alice").unwrap(),
                round: RoundId::new("r1").unwrap(),
                currency: eur(),
                amount: Amount::new(100).unwrap(),
            },
        ];
        assert_eq!(base.fingerprint(), base.clone().fingerprint());
        for v in &variants {
            assert_ne!(base.fingerprint(), v.fingerprint(), "{v:?}");
        }
    }

    #[test]
    fn validation_relates_fields() {
        let alice = PlayerId::new("alice").unwrap();
        let transfer = Command::Transfer {
            tx: TxId::new("t").unwrap(),
            from: alice.clone(),
            to: alice.clone(),
            currency: eur(),
            amount: Amount::new(1).unwrap(),
        };
        assert_eq!(transfer.validate(), Err(Rejection::SameAccount));
        for (timeout_ms, ok) in [(0, false), (999, false), (1_000, true), (HOLD_TIMEOUT_MAX_MS + 1, false)] {
            let reserve = Command::ReserveWithdrawal {
                tx: TxId::new("t").unwrap(),
                player: alice.clone(),
                currency: eur(),
                amount: Amount::new(1).unwrap(),
                timeout_ms,
            };
            assert_eq!(reserve.validate().is_ok(), ok, "{timeout_ms}");
        }
    }
}
