//! A shard's ledger with its retained state where the node was told to keep it: in memory
//! ([`MemState`], the simulator's and the default) or on disk ([`DiskState`], issue 18).
//!
//! An enum rather than a generic parameter, so the node, the API and the hooks keep one type;
//! each call dispatches once, and the in-memory ledger is the same `Ledger<MemState>` as
//! before (its snapshot still clones it between two apply batches).

use std::path::{Path, PathBuf};

use ledger_core::{AccountRef, Balance, ClusterTime, Command, Entry, Hash, Ledger, MemState, Outcome, Recall, TxId};

use super::disk_state::DiskState;

/// Where a node keeps each shard's retained state (ids, rounds and their forgetting queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateStorage {
    /// In memory: snapshots are full images, and a restart loads the last one and replays the
    /// log since. Memory grows with the retention window.
    #[default]
    Memory,
    /// On disk (fjall) behind a block cache of `cache_bytes`: a snapshot is a checkpoint of the
    /// files, and a restart opens them and replays the log since the last checkpoint.
    Disk {
        /// The engine's block cache per shard.
        cache_bytes: u64,
    },
}

/// One shard's ledger, its retained state in memory or on disk.
#[derive(Debug)]
pub struct ShardLedger(pub(crate) Inner);

#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one per shard, never moved on a hot path")]
pub(crate) enum Inner {
    Memory(Ledger<MemState>),
    Disk(OnDisk),
}

/// A ledger on disk and the directory its state lives in.
#[derive(Debug)]
pub(crate) struct OnDisk {
    pub(crate) ledger: Ledger<DiskState>,
    pub(crate) dir: PathBuf,
}

/// Calls `$body` with `$l` bound to the ledger, whichever state it keeps.
macro_rules! each {
    ($self:expr, $l:ident => $body:expr) => {
        match $self {
            Inner::Memory($l) => $body,
            Inner::Disk(d) => {
                let $l = &d.ledger;
                $body
            }
        }
    };
}

macro_rules! each_mut {
    ($self:expr, $l:ident => $body:expr) => {
        match $self {
            Inner::Memory($l) => $body,
            Inner::Disk(d) => {
                let $l = &mut d.ledger;
                $body
            }
        }
    };
}

impl ShardLedger {
    pub(crate) fn memory(ledger: Ledger<MemState>) -> Self {
        Self(Inner::Memory(ledger))
    }

    pub(crate) fn disk(ledger: Ledger<DiskState>, dir: &Path) -> Self {
        Self(Inner::Disk(OnDisk { ledger, dir: dir.to_path_buf() }))
    }

    /// What a transaction id is remembered as, if it is within the retention window.
    pub fn recall(&self, tx: &TxId) -> Option<Recall> {
        each!(&self.0, l => l.recall(tx))
    }

    /// An account's balance (see [`Ledger::balance`]).
    pub fn balance(&self, account: &AccountRef) -> Option<Balance> {
        each!(&self.0, l => l.balance(account))
    }

    /// Sequence number and hash of the last entry.
    pub fn head(&self) -> (u64, Hash) {
        each!(&self.0, l => l.head())
    }

    pub(crate) fn last_at(&self) -> ClusterTime {
        each!(&self.0, l => l.last_at())
    }

    pub(crate) fn accounts(&self) -> Vec<(AccountRef, Balance)> {
        each!(&self.0, l => l.accounts())
    }

    pub(crate) fn next_hold_expiry(&self) -> Option<ClusterTime> {
        each!(&self.0, l => l.next_hold_expiry())
    }

    pub(crate) fn apply(&mut self, cmd: &Command, at: ClusterTime, sink: &mut Vec<Entry>) -> Outcome {
        each_mut!(&mut self.0, l => l.apply(cmd, at, sink))
    }

    /// With the state on disk, frees the last checkpoint's writes once the store holds them.
    pub(crate) fn release_committed(&mut self) {
        if let Inner::Disk(d) = &mut self.0 {
            d.ledger.state_mut().release_committed();
        }
    }

    pub(crate) fn tick(&mut self, at: ClusterTime, sink: &mut Vec<Entry>) {
        each_mut!(&mut self.0, l => l.tick(at, sink))
    }
}
