//! Deterministic simulation of the replicated ledger on turmoil.
//!
//! A seed derives a whole run ([`config::SimConfig`]): three regions of nodes with per-link
//! latencies, the shard count, Raft timing from the round-trip time, a workload of retrying
//! clients that reuse ids on purpose, and a scenario's fault schedule. [`run::run`] executes it
//! with the real `raft-ledger` nodes (the code `walletd` runs) on turmoil's simulated network and
//! disk, checks the invariants after every step, and folds every event into a trace hash: the
//! same seed gives the same hash.

pub mod config;
pub mod crash;
pub mod geo;
pub mod planted;
pub mod rng;
pub mod run;
mod workload;
