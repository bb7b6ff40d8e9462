//! Commit-reveal, provably-fair RNG beacon shared by game nodes.
//!
//! - [`fair`]: the pure outcome functions. `HMAC-SHA256(server_seed, "{client}:{nonce}:{round}")`
//!   bytes, mapped to games in `stake` (byte-compatible with the widely used scheme) or
//!   `unbiased` (rejection sampling) mode.
//! - [`csprng`]: ChaCha20 seeded from OS entropy, reseeded by count, by age and on demand, each
//!   reseed reported as a commitment only.
//! - [`beacon`]: seed pairs, nonces, reveals and the round chain, with time as an input.
//! - [`rounds`]: drand-style chained rounds under a committed epoch key.
//! - [`log`]: the hash-chained audit log and its verifier.
//! - [`service`]: the tonic gRPC service (`proto/casino/rng/v1/beacon.proto`).

pub mod beacon;
pub mod csprng;
pub mod fair;
pub mod log;
pub mod rounds;
pub mod service;

/// Generated from `proto/casino/rng/v1/beacon.proto`.
pub mod pb {
    #![allow(unreachable_pub, missing_docs, clippy::all)]
    tonic::include_proto!("casino.rng.v1");

    /// The encoded descriptor set of `beacon.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/beacon_descriptor.bin"));
}
