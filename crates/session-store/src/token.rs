//! Access tokens: HMAC-SHA256-signed claims, with rotating keys.
//!
//! # Format (version 1)
//! ```text
//! v1.<kid>.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key[kid], "v1.<kid>.<base64url(JSON claims)>"))>
//! ```
//! base64url is unpadded (RFC 4648 §5). `kid` is 1 to 32 characters of `[A-Za-z0-9_-]`. The
//! claims are [`Claims`]: `sid` (session id), `sub` (player id), `dfp` (hex SHA-256 of the device
//! fingerprint), `auth_time` and `iat`/`exp` (Unix milliseconds), `acr` (auth level).
//!
//! We chose HMAC over PASETO v4 because only our own services issue and check these tokens, all
//! of which hold the keys; a symmetric MAC is one SHA-256 pair per check and needs no extra
//! crate. PASETO's public-key mode would matter if third parties verified tokens; they do not.
//!
//! Verification checks the MAC before it parses anything, in constant time (`Mac::verify_slice`).
//! A key stays valid after rotation until the last token it signed has expired.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Tokens longer than this are refused before any work is done.
pub const TOKEN_LEN_MAX: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sid: String,
    pub sub: String,
    pub dfp: String,
    pub auth_time: u64,
    pub acr: u8,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signed with an unknown key")]
    UnknownKey,
    #[error("token signed with a retired key")]
    RetiredKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token issued in the future")]
    NotYetValid,
}

/// One signing key. The key bytes never appear in `Debug` output or logs.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    key: [u8; 32],
    /// After this (Unix ms) the key no longer verifies; `None` while it is current.
    retire_at: Option<u64>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("retire_at", &self.retire_at).finish_non_exhaustive()
    }
}

fn valid_kid(kid: &str) -> bool {
    (1..=32).contains(&kid.len()) && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The current key and any recently rotated-out ones.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<SigningKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key id must be 1 to 32 characters of [A-Za-z0-9_-], unique in the keyring")]
pub struct BadKeyId;

impl Keyring {
    pub fn new(kid: &str, key: [u8; 32]) -> Result<Self, BadKeyId> {
        if !valid_kid(kid) {
            return Err(BadKeyId);
        }
        Ok(Keyring { keys: vec![SigningKey { kid: kid.to_owned(), key, retire_at: None }] })
    }

    /// Makes `key` current. The old current key keeps verifying until `now + grace`, where
    /// `grace` should be the access-token lifetime, so no token it signed is cut short.
    pub fn rotate(&mut self, kid: &str, key: [u8; 32], now_ms: u64, grace_ms: u64) -> Result<(), BadKeyId> {
        if !valid_kid(kid) || self.keys.iter().any(|k| k.kid == kid) {
            return Err(BadKeyId);
        }
        for k in &mut self.keys {
            k.retire_at.get_or_insert(now_ms + grace_ms);
        }
        self.keys.retain(|k| k.retire_at.is_none_or(|r| r > now_ms));
        self.keys.push(SigningKey { kid: kid.to_owned(), key, retire_at: None });
        Ok(())
    }

    pub fn current_kid(&self) -> &str {
        &self.keys.last().expect("a keyring always has a current key").kid
    }

    fn mac(key: &[u8; 32], signed: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(signed);
        mac
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let k = self.keys.last().expect("a keyring always has a current key");
        let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signed = format!("v1.{}.{payload}", k.kid);
        let tag = Self::mac(&k.key, signed.as_bytes()).finalize().into_bytes();
        format!("{signed}.{}", B64.encode(tag))
    }

    /// Checks the MAC (constant time), then the key's and the token's validity period.
    pub fn verify(&self, token: &str, now_ms: u64, skew_ms: u64) -> Result<Claims, TokenError> {
        if token.len() > TOKEN_LEN_MAX {
            return Err(TokenError::Malformed);
        }
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.splitn(3, '.');
        let (Some("v1"), Some(kid), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(TokenError::UnknownKey)?;
        let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
        Self::mac(&key.key, signed.as_bytes()).verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
        if key.retire_at.is_some_and(|r| now_ms >= r) {
            return Err(TokenError::RetiredKey);
        }
        let claims: Claims = serde_json::from_slice(&B64.decode(payload).map_err(|_| TokenError::Malformed)?)
            .map_err(|_| TokenError::Malformed)?;
        if now_ms >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.iat > now_ms + skew_ms {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims { sid: "s".into(), sub: "p".into(), dfp: "d".into(), auth_time: 0, acr: 1, iat: 0, exp }
    }

    #[test]
    fn round_trip_and_every_forgery_is_refused() {
        let ring = Keyring::new("k1", [7; 32]).unwrap();
        let t = ring.sign(&claims(1000));
        assert_eq!(ring.verify(&t, 10, 0).unwrap(), claims(1000));
        assert_eq!(ring.verify(&t, 1000, 0), Err(TokenError::Expired));
        // Tampered payload: the MAC no longer matches.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged_payload = B64.encode(serde_json::to_vec(&claims(u64::MAX)).unwrap());
        parts[2] = &forged_payload;
        assert_eq!(ring.verify(&parts.join("."), 10, 0), Err(TokenError::BadSignature));
        // Signed with another key under the same id.
        let other = Keyring::new("k1", [8; 32]).unwrap().sign(&claims(1000));
        assert_eq!(ring.verify(&other, 10, 0), Err(TokenError::BadSignature));
        // Unknown key id, garbage, oversize.
        let unknown = Keyring::new("k9", [7; 32]).unwrap().sign(&claims(1000));
        assert_eq!(ring.verify(&unknown, 10, 0), Err(TokenError::UnknownKey));
        for bad in ["", "v1", "v1.k1.x", "v2.k1.e30.AAAA", "v1.k1.!!!.AAAA"] {
            assert!(ring.verify(bad, 10, 0).is_err(), "{bad}");
        }
        assert_eq!(ring.verify(&"a".repeat(TOKEN_LEN_MAX + 1), 10, 0), Err(TokenError::Malformed));
    }

    #[test]
    fn rotated_keys_verify_until_their_tokens_expire() {
        let mut ring = Keyring::new("k1", [1; 32]).unwrap();
        let old = ring.sign(&claims(10_000));
        ring.rotate("k2", [2; 32], 1_000, 5_000).unwrap();
        assert_eq!(ring.current_kid(), "k2");
        assert!(ring.verify(&old, 5_999, 0).is_ok());
        assert_eq!(ring.verify(&old, 6_000, 0), Err(TokenError::RetiredKey));
        let new = ring.sign(&claims(10_000));
        assert!(ring.verify(&new, 6_000, 0).is_ok());
        assert_eq!(ring.rotate("k2", [3; 32], 0, 0), Err(BadKeyId));
        assert_eq!(ring.rotate("bad kid", [3; 32], 0, 0), Err(BadKeyId));
    }

    #[test]
    fn keys_do_not_leak_through_debug() {
        let ring = Keyring::new("k1", [0xAB; 32]).unwrap();
        let shown = format!("{ring:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("abab"), "{shown}");
    }
}
