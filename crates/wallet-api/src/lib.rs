//! `walletd`: the node binary that hosts ledger shards, its configuration, a command-line client
//! of the node API, and the local demo cluster.
//!
//! The public gRPC wallet API for casino front-ends (issue 4) will live here too; today the node
//! serves the internal node API of `raft-ledger`, which `walletd client` speaks.

pub mod amount;
pub mod cli;
pub mod config;
pub mod demo;
pub mod start;
