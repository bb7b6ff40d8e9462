//! Currencies, amounts and balances: ISO 4217 codes and integer minor units.
//!
//! There are no floats here and no unchecked arithmetic. An [`Amount`] is always in
//! `1..=AMOUNT_MAX`, so any single amount fits in a balance; adding it to a balance still uses
//! checked arithmetic because many amounts can overflow together.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rejection::Rejection;

/// An ISO 4217 currency that has minor units (for example EUR with exponent 2, JPY with 0).
///
/// Codes without minor units (XAU, XDR, ...) are refused: a wallet balance is a count of minor
/// units, which such codes do not define.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

impl Currency {
    /// Looks `code` up in ISO 4217. Codes are case-sensitive upper case, as the standard writes them.
    pub fn new(code: &str) -> Result<Self, Rejection> {
        let iso = iso_currency::Currency::from_code(code).ok_or(Rejection::UnknownCurrency)?;
        let exponent = iso.exponent().ok_or(Rejection::UnknownCurrency)?;
        let exponent = u8::try_from(exponent).map_err(|_| Rejection::UnknownCurrency)?;
        let code: [u8; 3] = code.as_bytes().try_into().map_err(|_| Rejection::UnknownCurrency)?;
        Ok(Self { code, exponent })
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.code).expect("currency codes are ASCII by construction")
    }

    /// The code as raw bytes, as hashed into entries.
    pub(crate) fn code_bytes(&self) -> [u8; 3] {
        self.code
    }

    /// The number of decimal places of the minor unit (2 for EUR: 1 EUR = 100 minor units).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    /// Formats `minor` units as a decimal string, for humans only (for example `-12.05 EUR`).
    pub fn format(&self, minor: i64) -> String {
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        if self.exponent == 0 {
            return format!("{sign}{abs} {}", self.code());
        }
        let scale = 10u64.pow(u32::from(self.exponent));
        format!("{sign}{}.{:0width$} {}", abs / scale, abs % scale, self.code(), width = usize::from(self.exponent))
    }
}

impl TryFrom<String> for Currency {
    type Error = Rejection;
    fn try_from(s: String) -> Result<Self, Rejection> {
        Self::new(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The largest amount one command can move: the largest balance a signed 64-bit account holds.
pub const AMOUNT_MAX: u64 = i64::MAX as u64;

/// A positive number of minor units, at most [`AMOUNT_MAX`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Amount(u64);

impl Amount {
    /// Validates a signed amount as clients send it: zero and negatives are refused.
    pub fn new(minor: i64) -> Result<Self, Rejection> {
        if minor <= 0 {
            return Err(Rejection::AmountNotPositive);
        }
        Ok(Self(minor.unsigned_abs()))
    }

    /// Validates an unsigned amount: zero and anything above [`AMOUNT_MAX`] are refused.
    pub fn from_u64(minor: u64) -> Result<Self, Rejection> {
        match minor {
            0 => Err(Rejection::AmountNotPositive),
            m if m > AMOUNT_MAX => Err(Rejection::AmountTooLarge),
            m => Ok(Self(m)),
        }
    }

    /// The amount in minor units.
    pub fn minor(self) -> u64 {
        self.0
    }

    /// The amount as a signed balance delta; cannot fail because of the `AMOUNT_MAX` bound.
    pub(crate) fn signed(self) -> i64 {
        i64::try_from(self.0).expect("Amount is bounded by AMOUNT_MAX")
    }
}

impl TryFrom<u64> for Amount {
    type Error = Rejection;
    fn try_from(v: u64) -> Result<Self, Rejection> {
        Self::from_u64(v)
    }
}

impl From<Amount> for u64 {
    fn from(a: Amount) -> u64 {
        a.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An account's balance in minor units.
///
/// `posted` is credits minus debits of settled entries; it is negative for external and house
/// accounts that have paid out more than they took in. `held` is the part of a player's posted
/// balance reserved by pending withdrawals; it is always zero for system accounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Balance {
    /// Settled balance.
    pub posted: i64,
    /// Reserved by pending withdrawal holds.
    pub held: i64,
}

/// In minor units, for error messages: `posted 1250 held 0`.
impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "posted {} held {} (minor units)", self.posted, self.held)
    }
}

impl Balance {
    /// What a player may spend now: the posted balance minus holds.
    pub fn available(&self) -> i64 {
        // Cannot overflow: for players 0 <= held <= posted, and system accounts hold nothing.
        self.posted - self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_come_from_iso_4217_with_minor_units() {
        let eur = Currency::new("EUR").unwrap();
        assert_eq!((eur.code(), eur.exponent()), ("EUR", 2));
        assert_eq!(Currency::new("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::new("BHD").unwrap().exponent(), 3);
        for bad in ["eur", "XYZ", "XAU", "EURO", ""] {
            assert_eq!(Currency::new(bad), Err(Rejection::UnknownCurrency), "{bad:?}");
        }
    }

    #[test]
    fn amounts_are_positive_and_bounded() {
        assert_eq!(Amount::new(0), Err(Rejection::AmountNotPositive));
        assert_eq!(Amount::new(-1), Err(Rejection::AmountNotPositive));
        assert_eq!(Amount::new(i64::MIN), Err(Rejection::AmountNotPositive));
        assert_eq!(Amount::new(i64::MAX).unwrap().minor(), AMOUNT_MAX);
        assert_eq!(Amount::from_u64(AMOUNT_MAX + 1), Err(Rejection::AmountTooLarge));
        assert_eq!(Amount::from_u64(0), Err(Rejection::AmountNotPositive));
        let bytes = postcard::to_allocvec(&0u64).unwrap();
        assert!(postcard::from_bytes::<Amount>(&bytes).is_err());
    }

    #[test]
    fn formatting_is_exact() {
        let eur = Currency::new("EUR").unwrap();
        assert_eq!(eur.format(-1205), "-12.05 EUR");
        assert_eq!(eur.format(7), "0.07 EUR");
        assert_eq!(Currency::new("JPY").unwrap().format(500), "500 JPY");
        assert_eq!(eur.format(i64::MIN), "-92233720368547758.08 EUR");
    }
}
