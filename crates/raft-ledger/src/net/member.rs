//! Who may call a node's port: members of the cluster, and operators holding its key.
//!
//! The node's one listener carries both the Raft transport and the node API, and either can
//! move money or change membership. So every call must carry `x-cluster-auth`, a token derived
//! from the cluster's shared secret; the server compares it in constant time and refuses
//! anything else with `UNAUTHENTICATED` before the call reaches a handler.
//!
//! The token is `hex(HMAC-SHA256(secret, "walletd cluster member v1"))`: the secret itself never
//! crosses the network, but the token is a bearer credential sent in the clear, so it keeps out
//! whoever does not know it (port scans, a misdirected client, another cluster) and not an
//! attacker who can read the cluster's traffic. Mutual TLS, a later step, authenticates the
//! connection itself; it will sit beside this check (a [`MemberCheck`] of its own), so a
//! cluster can require either or both while it migrates.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key that carries the member token.
pub const CLUSTER_AUTH_HEADER: &str = "x-cluster-auth";
/// Shortest secret accepted, in bytes.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 32;

/// The cluster's shared key, as a node or an operator tool holds it. Debug output never shows it.
#[derive(Clone)]
pub struct ClusterKey {
    token: Arc<AsciiMetadataValue>,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a cluster key could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The secret is not hex.
    #[error("the cluster secret must be hex digits (for example from `openssl rand -hex 32`)")]
    NotHex,
    /// The secret is too short to resist guessing.
    #[error("the cluster secret must be at least {CLUSTER_SECRET_BYTES_MIN} bytes ({} hex digits)", 2 * CLUSTER_SECRET_BYTES_MIN)]
    TooShort,
    /// The key file could not be read.
    #[error("cannot read the cluster key file {0}: {1}")]
    File(String, String),
}

impl ClusterKey {
    /// A key from the secret's bytes.
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < CLUSTER_SECRET_BYTES_MIN {
            return Err(KeyError::TooShort);
        }
        let token = ledger_core::member_token(secret);
        let value = AsciiMetadataValue::try_from(token.as_str()).expect("hex is ASCII");
        Ok(Self { token: Arc::new(value) })
    }

    /// A key from the secret written as hex (surrounding whitespace is ignored).
    pub fn from_hex(secret: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(secret.trim()).map_err(|_| KeyError::NotHex)?;
        Self::from_secret(&bytes)
    }

    /// Reads a key file: the secret as hex, nothing else.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| KeyError::File(path.display().to_string(), e.to_string()))?;
        Self::from_hex(&text)
    }

    /// A fresh secret from the OS CSPRNG, as hex, with its key: for the demo and for tests.
    pub fn generate() -> (Self, String) {
        let mut secret = [0u8; CLUSTER_SECRET_BYTES_MIN];
        getrandom::fill(&mut secret).expect("OS random source");
        let hex = hex::encode(secret);
        (Self::from_secret(&secret).expect("long enough"), hex)
    }

    /// Whether a presented token is this cluster's, compared in constant time.
    pub fn admits(&self, presented: &[u8]) -> bool {
        bool::from(self.token.as_bytes().ct_eq(presented))
    }
}

/// Adds the member token to every outgoing call on a channel.
impl Interceptor for ClusterKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(CLUSTER_AUTH_HEADER, (*self.token).clone());
        Ok(request)
    }
}

/// The check a node's server applies to every incoming call.
#[derive(Clone, Debug)]
pub enum MemberCheck {
    /// The caller must present this cluster's token.
    SharedKey(ClusterKey),
}

impl MemberCheck {
    /// Refuses a call that does not prove membership. The message tells an operator what to fix
    /// and nothing about the cluster.
    pub(crate) fn check(&self, request: &Request<()>) -> Result<(), Status> {
        match self {
            MemberCheck::SharedKey(key) => match request.metadata().get(CLUSTER_AUTH_HEADER) {
                Some(v) if key.admits(v.as_bytes()) => Ok(()),
                Some(_) => {
                    Err(Status::unauthenticated("wrong cluster key: this port serves members of its cluster only"))
                }
                None => Err(Status::unauthenticated(
                    "no cluster key: this port serves members of its cluster only (walletd client and admin take \
                     --cluster-key-file)",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ClusterKey {
        ClusterKey::from_secret(&[byte; 32]).unwrap()
    }

    #[test]
    fn only_the_clusters_own_token_is_admitted() {
        let check = MemberCheck::SharedKey(key(1));
        let mut ours = key(1);
        let mut theirs = key(2);
        assert!(check.check(&ours.call(Request::new(())).unwrap()).is_ok());
        let wrong = check.check(&theirs.call(Request::new(())).unwrap()).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let none = check.check(&Request::new(())).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        // The secret never travels: the token is a MAC of a label, not the secret's hex.
        let sent = ours.call(Request::new(())).unwrap();
        let token = sent.metadata().get(CLUSTER_AUTH_HEADER).unwrap().to_str().unwrap().to_string();
        assert_ne!(token, hex::encode([1u8; 32]));
        // A prefix of the right token is not the token.
        let mut truncated = Request::new(());
        truncated.metadata_mut().insert(CLUSTER_AUTH_HEADER, token[..63].parse().unwrap());
        assert!(check.check(&truncated).is_err());
    }

    #[test]
    fn short_or_malformed_secrets_are_refused_and_debug_hides_the_key() {
        assert_eq!(ClusterKey::from_secret(&[0; 31]).unwrap_err(), KeyError::TooShort);
        assert_eq!(ClusterKey::from_hex("zz").unwrap_err(), KeyError::NotHex);
        assert!(ClusterKey::from_hex(&format!(" {}\n", "ab".repeat(32))).is_ok());
        let (k, hex) = ClusterKey::generate();
        assert!(!format!("{k:?}").contains(&hex));
        assert!(ClusterKey::from_hex(&hex).unwrap().admits(k.token.as_bytes()));
    }
}
