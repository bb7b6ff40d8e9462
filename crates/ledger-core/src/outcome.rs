//! Outcomes of applying a command. Business results are values, not errors.
//!
//! A command is either applied, a duplicate of one already applied, rejected (and the rejection
//! remembered under its id), or a conflict: its id was used before with a different payload.

use serde::{Deserialize, Serialize};

use crate::account::AccountRef;
use crate::money::Balance;
use crate::rejection::Rejection;
use crate::time::ClusterTime;

/// What an applied command did: its ledger entry and the balances that resulted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The entry's sequence number, or `None` when the command moved no money (a rollback that
    /// arrived before its bet, or a rollback of a bet that had failed).
    pub seq: Option<u64>,
    /// The cluster time the command took effect.
    pub at: ClusterTime,
    /// Each touched account's balance right after the command.
    pub balances: Vec<(AccountRef, Balance)>,
}

impl Receipt {
    /// The resulting balance of `account`, if the command touched it.
    pub fn balance_of(&self, account: &AccountRef) -> Option<Balance> {
        self.balances.iter().find(|(a, _)| a == account).map(|(_, b)| *b)
    }
}

/// The result of applying one command.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the format tests (`crates/ledger-core/tests/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied now.
    Applied(Receipt),
    /// Applied earlier under the same id with the same payload; this is the original receipt,
    /// balances included, not the current state.
    Duplicate(Receipt),
    /// Rejected now. The id is remembered, so a retry gets [`Outcome::AlreadyFailed`].
    Rejected(Rejection),
    /// Rejected earlier under the same id with the same payload. It never succeeds later.
    AlreadyFailed(Rejection),
    /// The id was used earlier with a different payload. Nothing changed.
    Conflict,
}

impl Outcome {
    /// The receipt, for applied commands and their duplicates.
    pub fn receipt(&self) -> Option<&Receipt> {
        match self {
            Self::Applied(r) | Self::Duplicate(r) => Some(r),
            _ => None,
        }
    }

    /// The rejection, first time or remembered.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Self::Rejected(r) | Self::AlreadyFailed(r) => Some(*r),
            _ => None,
        }
    }
}
