//! Why a command is refused: a value, not an error, with a stable code for APIs. Its own
//! module because the validated types (ids, money, accounts) refuse bad input with it, and the
//! outcomes carry it: keeping it here keeps those modules from importing each other.

use serde::{Deserialize, Serialize};
use serde_repr::{Deserialize_repr, Serialize_repr};
use thiserror::Error;

/// Which id field of a command is malformed.
///
/// The discriminant is the encoding (one byte in the WAL, snapshots and the node API): never
/// change or reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum IdField {
    /// The transaction id (idempotency key).
    Tx = 0,
    /// A player id.
    Player = 1,
    /// A game round id.
    Round = 2,
}

impl std::fmt::Display for IdField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tx => "transaction id",
            Self::Player => "player id",
            Self::Round => "round id",
        })
    }
}

/// Why a command was not applied.
///
/// The first group is wrong input, detected without looking at any state; the edge refuses such
/// commands before proposing them. The second group depends on the ledger's state; once a command
/// is rejected for such a reason, its id stays rejected (see [`crate::Outcome::AlreadyFailed`]).
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the format tests (`crates/ledger-core/tests/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Error)]
pub enum Rejection {
    /// The amount is zero or negative.
    #[error("amount must be positive")]
    AmountNotPositive,
    /// The amount is larger than any balance can hold.
    #[error("amount exceeds the largest representable balance (2^63-1 minor units)")]
    AmountTooLarge,
    /// An id is empty, longer than 64 bytes, or not printable ASCII.
    #[error("{0} must be 1 to 64 bytes of printable ASCII without spaces")]
    InvalidId(IdField),
    /// The currency is not an ISO 4217 code with minor units.
    #[error("currency is not an ISO 4217 code with minor units")]
    UnknownCurrency,
    /// An adjustment reason is empty, longer than 256 bytes, or has control characters.
    #[error("reason must be 1 to 256 bytes of text without control characters")]
    InvalidReason,
    /// Both sides of a transfer or adjustment are the same account.
    #[error("debit and credit account are the same")]
    SameAccount,
    /// A withdrawal hold timeout is outside the allowed range.
    #[error("hold timeout must be between 1 second and 24 hours")]
    InvalidHoldTimeout,

    /// A player wallet named by the command does not exist in this shard.
    #[error("unknown account")]
    UnknownAccount,
    /// The wallet being opened already exists.
    #[error("account already exists")]
    AccountExists,
    /// The command's currency differs from an account's or round's currency.
    #[error("currency does not match the account or round")]
    CurrencyMismatch,
    /// A player's available balance is below the amount.
    #[error("insufficient funds")]
    InsufficientFunds,
    /// Applying the amount would overflow a balance.
    #[error("balance would overflow")]
    BalanceOverflow,
    /// No withdrawal hold was reserved under that id.
    #[error("unknown withdrawal hold")]
    UnknownHold,
    /// The withdrawal hold was already committed, cancelled or expired.
    #[error("withdrawal hold is already settled or expired")]
    HoldSettled,
    /// A win names a round with no bet from this player.
    #[error("unknown round")]
    UnknownRound,
    /// A win names a round whose bets were all rolled back.
    #[error("round was rolled back")]
    RoundRolledBack,
    /// A bet arrived after a rollback that named it; aggregators require it to be refused.
    #[error("bet was rolled back before it arrived")]
    BetRolledBack,
    /// The bet was already reversed by another rollback.
    #[error("bet was already rolled back")]
    BetAlreadyRolledBack,
    /// The rollback names a bet of another player or round.
    #[error("rollback does not match the bet's player or round")]
    BetMismatch,
    /// The rollback names a transaction that is not a bet.
    #[error("referenced transaction is not a bet")]
    NotABet,
}

impl Rejection {
    /// A stable machine-readable code, for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AmountNotPositive => "AMOUNT_NOT_POSITIVE",
            Self::AmountTooLarge => "AMOUNT_TOO_LARGE",
            Self::InvalidId(IdField::Tx) => "INVALID_TX_ID",
            Self::InvalidId(IdField::Player) => "INVALID_PLAYER_ID",
            Self::InvalidId(IdField::Round) => "INVALID_ROUND_ID",
            Self::UnknownCurrency => "UNKNOWN_CURRENCY",
            Self::InvalidReason => "INVALID_REASON",
            Self::SameAccount => "SAME_ACCOUNT",
            Self::InvalidHoldTimeout => "INVALID_HOLD_TIMEOUT",
            Self::UnknownAccount => "UNKNOWN_ACCOUNT",
            Self::AccountExists => "ACCOUNT_EXISTS",
            Self::CurrencyMismatch => "CURRENCY_MISMATCH",
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::BalanceOverflow => "BALANCE_OVERFLOW",
            Self::UnknownHold => "UNKNOWN_HOLD",
            Self::HoldSettled => "HOLD_SETTLED",
            Self::UnknownRound => "UNKNOWN_ROUND",
            Self::RoundRolledBack => "ROUND_ROLLED_BACK",
            Self::BetRolledBack => "BET_ROLLED_BACK",
            Self::BetAlreadyRolledBack => "BET_ALREADY_ROLLED_BACK",
            Self::BetMismatch => "BET_MISMATCH",
            Self::NotABet => "NOT_A_BET",
        }
    }

    /// True for input errors that need no state to detect. They are refused before proposing.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::AmountNotPositive
                | Self::AmountTooLarge
                | Self::InvalidId(_)
                | Self::UnknownCurrency
                | Self::InvalidReason
                | Self::SameAccount
                | Self::InvalidHoldTimeout
        )
    }
}
