//! `walletd`: the node binary that hosts ledger shards, its configuration, a command-line client
//! of the node API, and the local demo cluster.
//!
//! The public gRPC wallet API for casino front-ends ([`api`]) is served by every node next to
//! the internal node API of `raft-ledger`; `walletctl` is its command-line client.

pub mod admin;
pub mod amount;
pub mod api;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod exit;
pub mod load;
pub mod start;
