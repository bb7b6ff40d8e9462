//! Accounts: player wallets, and the house and external accounts of each shard.
//!
//! A player has at most one wallet per currency. House and external accounts exist implicitly in
//! every shard for every currency: they are the other side of bets and of deposits and
//! withdrawals, and their balances go negative as money flows to players.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_repr::{Deserialize_repr, Serialize_repr};

use crate::codec::{DecodeError, Reader, Sink, Writer};
use crate::ids::PlayerId;
use crate::money::Currency;

/// The three kinds of account.
///
/// The discriminant is the encoding (one byte wherever serde writes it) and equals the account
/// tag of the canonical entry encoding: never change or reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum AccountKind {
    /// A player's wallet. Its balance is never negative.
    Player = 0,
    /// The casino's side of bets, wins and rollbacks.
    House = 1,
    /// Money outside the ledger: the other side of deposits and withdrawals.
    External = 2,
}

/// One account, named by what it is rather than by an opaque number.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the format tests (`crates/ledger-core/tests/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AccountRef {
    /// A player's wallet in one currency.
    Player {
        /// Whose wallet.
        player: PlayerId,
        /// The wallet's currency.
        currency: Currency,
    },
    /// The shard's house account for a currency.
    House(Currency),
    /// The shard's external (cash-in/cash-out) account for a currency.
    External(Currency),
}

impl AccountRef {
    /// A player wallet.
    pub fn player(player: PlayerId, currency: Currency) -> Self {
        Self::Player { player, currency }
    }

    /// The account's kind.
    pub fn kind(&self) -> AccountKind {
        match self {
            Self::Player { .. } => AccountKind::Player,
            Self::House(_) => AccountKind::House,
            Self::External(_) => AccountKind::External,
        }
    }

    /// The account's currency.
    pub fn currency(&self) -> Currency {
        match self {
            Self::Player { currency, .. } | Self::House(currency) | Self::External(currency) => *currency,
        }
    }

    /// The owning player, for player wallets.
    pub fn player_id(&self) -> Option<&PlayerId> {
        match self {
            Self::Player { player, .. } => Some(player),
            _ => None,
        }
    }

    pub(crate) fn encode<S: Sink>(&self, w: &mut Writer<S>) {
        match self {
            Self::Player { player, currency } => {
                w.u8(0);
                w.str8(player.as_str());
                w.raw(&currency.code_bytes());
            }
            Self::House(c) => {
                w.u8(1);
                w.raw(&c.code_bytes());
            }
            Self::External(c) => {
                w.u8(2);
                w.raw(&c.code_bytes());
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = r.u8("account tag")?;
        let player = match tag {
            0 => Some(PlayerId::new(r.str8("player id")?).map_err(|_| DecodeError::Invalid("player id"))?),
            1 | 2 => None,
            _ => return Err(DecodeError::Invalid("account tag")),
        };
        let code = r.array::<3>("currency")?;
        let code = std::str::from_utf8(&code).map_err(|_| DecodeError::Invalid("currency"))?;
        let currency = Currency::new(code).map_err(|_| DecodeError::Invalid("currency"))?;
        Ok(match (tag, player) {
            (0, Some(player)) => Self::Player { player, currency },
            (1, None) => Self::House(currency),
            _ => Self::External(currency),
        })
    }
}

impl fmt::Display for AccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Player { player, currency } => write!(f, "player:{player}:{currency}"),
            Self::House(c) => write!(f, "house:{c}"),
            Self::External(c) => write!(f, "external:{c}"),
        }
    }
}

impl fmt::Debug for AccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
