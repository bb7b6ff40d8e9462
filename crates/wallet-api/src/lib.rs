//! The public gRPC wallet API for casino front-ends: the `casino.wallet.v1` service a node
//! serves ([`api`]: the protobuf types, the mapping to ledger commands, errors, authentication,
//! request signing and the service itself), and `walletctl`, its command-line client ([`ctl`]).
//! The node process that serves it is the `walletd` crate.

pub mod amount;
pub mod api;
pub mod ctl;
pub mod exit;
pub mod session;
