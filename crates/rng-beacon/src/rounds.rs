//! Beacon rounds: one public, chained sequence of randomness that every game node sees.
//!
//! The chaining follows drand's chained mode, with an HMAC under a committed epoch key standing
//! in for drand's threshold BLS signature:
//!
//! ```text
//! signature_n  = HMAC-SHA256(epoch_key, sha256(signature_{n-1} || n as u64 big-endian))
//! randomness_n = sha256(signature_n)
//! ```
//!
//! Anyone can check at once that each round links to the previous one and that its randomness
//! is the hash of its signature. The signatures themselves become checkable when the epoch key is
//! revealed: its sha256 is in the audit log before the epoch's first round, so the operator
//! could not have picked the rounds after seeing bets. The first round's previous signature is
//! the first epoch's key hash, as drand uses its group hash.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    pub round: u64,
    pub timestamp_ms: u64,
    pub randomness: [u8; 32],
    pub signature: [u8; 32],
    pub previous_signature: [u8; 32],
    pub epoch: u64,
    pub epoch_key_hash: [u8; 32],
}

/// `sha256(key)`: the epoch key's commitment.
pub fn key_hash(key: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The signature of round `round` under `key`, chained to `previous`.
pub fn signature(key: &[u8; 32], previous: &[u8; 32], round: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(round.to_be_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&digest);
    mac.finalize().into_bytes().into()
}

pub fn randomness(signature: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(signature).into()
}

/// Why a sequence of rounds does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("round {round}: expected round {expected}")]
    Gap { round: u64, expected: u64 },
    #[error("round {round}: previous_signature does not match round {}'s signature", round - 1)]
    Link { round: u64 },
    #[error("round {round}: randomness is not sha256(signature)")]
    Randomness { round: u64 },
    #[error("round {round}: signature does not match the revealed epoch key")]
    Signature { round: u64 },
}

/// Checks consecutive rounds: numbering, links and randomness; with the epoch key, signatures too.
pub fn check(rounds: &[Round], key: Option<&[u8; 32]>) -> Result<(), ChainError> {
    for (i, r) in rounds.iter().enumerate() {
        if i > 0 {
            let prev = &rounds[i - 1];
            if r.round != prev.round + 1 {
                return Err(ChainError::Gap { round: r.round, expected: prev.round + 1 });
            }
            if r.previous_signature != prev.signature {
                return Err(ChainError::Link { round: r.round });
            }
        }
        if randomness(&r.signature) != r.randomness {
            return Err(ChainError::Randomness { round: r.round });
        }
        if let Some(k) = key
            && signature(k, &r.previous_signature, r.round) != r.signature
        {
            return Err(ChainError::Signature { round: r.round });
        }
    }
    Ok(())
}
