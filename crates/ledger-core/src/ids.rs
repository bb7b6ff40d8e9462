//! Validated identifiers: transaction ids, player ids, round ids and adjustment reasons.
//!
//! Each type can only be built through validation, and deserialisation validates too, so an
//! invalid id cannot exist inside a command. Oversized or malformed ids are therefore refused at
//! the edge, before anything is proposed.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::rejection::{IdField, Rejection};

/// Longest id in bytes. Ids are hashed into every entry, so they are kept short and bounded.
pub const ID_LEN_MAX: usize = 64;
/// Longest adjustment reason in bytes.
pub const REASON_LEN_MAX: usize = 256;

fn check_id(s: &str, field: IdField) -> Result<(), Rejection> {
    // Printable ASCII without spaces: ids end up in logs, URLs and audit exports, where
    // whitespace, control characters and look-alike Unicode cause real incidents.
    let ok = !s.is_empty() && s.len() <= ID_LEN_MAX && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if ok { Ok(()) } else { Err(Rejection::InvalidId(field)) }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        // Shared, immutable text: ids are copied into entries, receipts and indexes, and a
        // reference-count bump is much cheaper than an allocation on the apply path.
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s`: 1 to 64 bytes of printable ASCII, no spaces.
            pub fn new(s: impl AsRef<str>) -> Result<Self, Rejection> {
                let s = s.as_ref();
                check_id(s, $field)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Rejection;
            fn try_from(s: String) -> Result<Self, Rejection> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}

id_type!(
    /// A client-chosen transaction id: the idempotency key of one command.
    TxId,
    IdField::Tx
);
id_type!(
    /// The operator's id for a player. A player's wallets all live in one shard.
    PlayerId,
    IdField::Player
);
id_type!(
    /// A game round id, chosen by the game server.
    RoundId,
    IdField::Round
);

/// Why an operator adjusted a balance: free text, 1 to 256 bytes, no control characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reason(String);

impl Reason {
    /// Validates `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, Rejection> {
        let s = s.into();
        let ok = !s.is_empty() && s.len() <= REASON_LEN_MAX && !s.chars().any(char::is_control);
        if ok { Ok(Self(s)) } else { Err(Rejection::InvalidReason) }
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Reason {
    type Error = Rejection;
    fn try_from(s: String) -> Result<Self, Rejection> {
        Self::new(s)
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_printable_ascii_up_to_64_bytes() {
        assert!(TxId::new("bet-42:round/7").is_ok());
        assert!(TxId::new("x".repeat(ID_LEN_MAX)).is_ok());
        for bad in ["", "has space", "tab\t", "caf\u{e9}"] {
            assert_eq!(TxId::new(bad), Err(Rejection::InvalidId(IdField::Tx)), "{bad:?}");
        }
        assert_eq!(PlayerId::new("p".repeat(ID_LEN_MAX + 1)), Err(Rejection::InvalidId(IdField::Player)));
    }

    #[test]
    fn deserialising_an_invalid_id_fails() {
        let bytes = postcard::to_allocvec(&"has space".to_string()).unwrap();
        assert!(postcard::from_bytes::<RoundId>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&"r-1".to_string()).unwrap();
        assert_eq!(postcard::from_bytes::<RoundId>(&bytes).unwrap().as_str(), "r-1");
    }

    #[test]
    fn reasons_are_bounded_text() {
        assert!(Reason::new("chargeback ticket #812").is_ok());
        assert_eq!(Reason::new(""), Err(Rejection::InvalidReason));
        assert_eq!(Reason::new("a\nb"), Err(Rejection::InvalidReason));
        assert_eq!(Reason::new("r".repeat(REASON_LEN_MAX + 1)), Err(Rejection::InvalidReason));
    }
}
