//! Durable storage of a node: the shared write-ahead log, and per shard a journal of ledger
//! entries and a snapshot. Everything goes through an injected [`vfs::Vfs`].

pub(crate) mod journal;
pub(crate) mod log_store;
pub(crate) mod state_machine;
pub mod vfs;
pub(crate) mod wal;

pub use journal::{JournalError, JournalPrefix};
pub use log_store::LogStore;
pub use state_machine::{LedgerSnapshot, LedgerSnapshotBuilder, LedgerStateMachine, StoreError};
pub use wal::{IoMode, RecoveryReport, WalError};

#[cfg(test)]
mod tests;
