//! The replicated shell around the pure ledger (`ledger-core`): one openraft group per shard,
//! many shards per node.
//!
//! openraft storage and network adapters, a node-wide write-ahead log with group commit,
//! per-shard journals and snapshots, the node API, and [`node::LedgerNode`], which hosts many
//! shards in one process. Time, randomness, the network and the disk are injected, so the same
//! code runs in `walletd` and under turmoil. The ledger itself (commands, outcomes, entries,
//! `verify`, the shard map, the topology) is `ledger_core`'s.
//!
//! See `ARCHITECTURE.md` at the repository root for the code map and invariants.

pub mod api;
mod batch;
pub mod client;
mod decide;
#[cfg(test)]
mod formats;
pub mod net;
pub mod node;
pub mod raft;
pub mod store;
mod time;

pub use time::{Clock, OffsetClock, RuntimeClock, WallClock};
