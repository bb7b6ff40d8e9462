//! openraft's log storage for one shard, backed by the node-wide write-ahead log.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::wal::{Done, ShardLog, Wal};
use crate::raft::{LogId, RaftEntry, TypeConfig, Vote};

/// One shard's Raft log: a view onto the shared [`Wal`].
#[derive(Clone)]
pub struct LogStore {
    shard: u32,
    log: Arc<Mutex<ShardLog>>,
    wal: Arc<Wal>,
}

impl LogStore {
    pub(crate) fn new(wal: Arc<Wal>, shard: u32) -> Self {
        Self { shard, log: wal.shard(shard), wal }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, ShardLog> {
        self.log.lock().expect("shard log lock")
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, io::Error> {
        self.wal.read(self.shard, range)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.log().meta.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let log = self.log();
        Ok(LogState { last_purged_log_id: log.meta.purged, last_log_id: log.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.wal.save_vote(self.shard, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.wal.save_committed(self.shard, committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.log().meta.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.wal.append(self.shard, entries.into_iter().collect(), Done::Flushed(callback))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.wal.truncate_after(self.shard, last_log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.wal.purge(self.shard, log_id)
    }
}
