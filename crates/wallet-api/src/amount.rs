//! Exact parsing of human-written amounts ("12.50") into integer minor units. No floats.

use ledger_core::Currency;

/// Parses `text` as a decimal amount in `currency` and returns minor units.
///
/// Accepts digits with at most one `.` and at most as many decimals as the currency's minor
/// unit has (2 for EUR, 0 for JPY). Zero, negative and overflowing amounts are refused.
pub fn parse_amount(text: &str, currency: Currency) -> Result<i64, String> {
    let exponent = u32::from(currency.exponent());
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return Err("empty amount".into());
    }
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(whole) || !digits_only(fraction) || (text.contains('.') && fraction.is_empty()) {
        return Err(format!("`{text}` is not a positive decimal number"));
    }
    if fraction.len() as u32 > exponent {
        return Err(format!("{currency} has {exponent} decimal places; `{text}` has {}", fraction.len()));
    }
    let overflow = || format!("`{text}` is too large");
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| overflow())? };
    let scale = 10i64.checked_pow(exponent).ok_or_else(overflow)?;
    let padded = format!("{fraction:0<width$}", width = exponent as usize);
    let fraction: i64 = if padded.is_empty() { 0 } else { padded.parse().map_err(|_| overflow())? };
    let minor = whole.checked_mul(scale).and_then(|w| w.checked_add(fraction)).ok_or_else(overflow)?;
    if minor == 0 {
        return Err("amount must be positive".into());
    }
    Ok(minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(code: &str) -> Currency {
        Currency::new(code).unwrap()
    }

    #[test]
    fn decimal_amounts_become_exact_minor_units() {
        assert_eq!(parse_amount("12.50", c("EUR")), Ok(1250));
        assert_eq!(parse_amount("12.5", c("EUR")), Ok(1250));
        assert_eq!(parse_amount("12", c("EUR")), Ok(1200));
        assert_eq!(parse_amount(".07", c("EUR")), Ok(7));
        assert_eq!(parse_amount("500", c("JPY")), Ok(500));
        assert_eq!(parse_amount("1.005", c("BHD")), Ok(1005));
        assert_eq!(parse_amount("92233720368547758.07", c("EUR")), Ok(i64::MAX));
    }

    #[test]
    fn bad_amounts_are_refused_with_a_reason() {
        for (text, code) in [
            ("0", "EUR"),
            ("0.00", "EUR"),
            ("-5", "EUR"),
            ("1.234", "EUR"),
            ("1.5", "JPY"),
            ("1e3", "EUR"),
            ("", "EUR"),
            ("1.", "EUR"),
            ("92233720368547758.08", "EUR"),
            ("99999999999999999999", "JPY"),
        ] {
            assert!(parse_amount(text, c(code)).is_err(), "{text} {code}");
        }
    }
}
