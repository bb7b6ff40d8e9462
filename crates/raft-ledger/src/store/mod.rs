//! Durable storage of a node: the shared write-ahead log, and per shard a journal of ledger
//! entries and a snapshot. Everything goes through an injected [`vfs::Vfs`], except
//! [`DiskState`], the retained state on disk (fjall does its own file IO), used when a node keeps
//! its state on disk ([`StateStorage::Disk`]).

pub(crate) mod disk_state;
pub(crate) mod journal;
pub(crate) mod log_store;
pub(crate) mod shard_ledger;
pub(crate) mod state_machine;
pub mod vfs;
pub(crate) mod wal;

use std::path::Path;
use std::sync::Arc;

pub use disk_state::{CheckpointView, Commit, DiskState, DiskStateError, Persister};
pub use journal::{JournalError, JournalPrefix};
pub use log_store::LogStore;
pub use shard_ledger::{ShardLedger, StateStorage};
pub use state_machine::{ApplyHook, LedgerSnapshot, LedgerSnapshotBuilder, LedgerStateMachine, StoreError};
pub use wal::{IoMode, RecoveryReport, WalError, entries_read_back};

/// A node's Raft log storage: one write-ahead log shared by all its shards.
pub struct NodeLog {
    wal: Arc<wal::Wal>,
}

impl NodeLog {
    /// Opens (or creates) the log in `dir` and recovers it, keeping up to `cache_bytes` of each
    /// shard's newest entries in memory (older ones are read back from disk when asked for).
    pub fn open(
        vfs: Arc<dyn vfs::Vfs>,
        dir: &Path,
        io: IoMode,
        cache_bytes: usize,
    ) -> Result<(Self, RecoveryReport), WalError> {
        let (wal, report) = wal::Wal::open(vfs, dir, io, cache_bytes)?;
        Ok((Self { wal: Arc::new(wal) }, report))
    }

    /// The Raft log storage of one shard.
    pub fn shard(&self, shard: u32) -> LogStore {
        LogStore::new(self.wal.clone(), shard)
    }

    /// Makes everything queued durable and stops the writer.
    pub async fn close(&self) {
        self.wal.close().await;
    }
}

#[cfg(test)]
mod tests;
