//! Storage tests: openraft's own conformance suite, crash recovery of the write-ahead log, and
//! torn and corrupt tails.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use super::log_store::LogStore;
use super::state_machine::LedgerStateMachine;
use super::vfs::StdFs;
use super::wal::{IoMode, Wal};
use crate::raft::TypeConfig;
use ledger_core::LedgerConfig;
use ledger_core::ShardId;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, LedgerStateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, LedgerStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal, _) = Wal::open(Arc::new(StdFs), &dir.path().join("wal"), IoMode::Thread).expect("open wal");
        let log = LogStore::new(Arc::new(wal), 0);
        let (sm, _) = LedgerStateMachine::open(
            Arc::new(StdFs),
            IoMode::Thread,
            &dir.path().join("shard-0"),
            ShardId(0),
            LedgerConfig::default(),
            None,
        )
        .expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite() {
    Suite::test_all(Builder).await.expect("storage suite");
}

mod wal {
    use std::path::Path;
    use std::sync::Arc;

    use openraft::entry::RaftEntry as _;

    use crate::raft::{LogId, RaftEntry, TypeConfig};
    use crate::store::vfs::StdFs;
    use crate::store::wal::{Done, IoMode, Wal, WalError};

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::testing::log_id::<TypeConfig>(term, 1, index)
    }

    fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<RaftEntry> {
        range.map(|i| RaftEntry::new_blank(log_id(term, i))).collect()
    }

    async fn append(wal: &Wal, shard: u32, e: Vec<RaftEntry>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        wal.append(shard, e, Done::Notify(tx)).unwrap();
        rx.await.unwrap().unwrap();
    }

    fn open(dir: &Path, segment: u64) -> Result<(Wal, crate::store::RecoveryReport), WalError> {
        Wal::open_with(Arc::new(StdFs), dir, IoMode::Thread, segment)
    }

    fn indexes(wal: &Wal, shard: u32) -> Vec<u64> {
        wal.shard(shard).lock().unwrap().range(..).iter().map(|e| e.index()).collect()
    }

    #[tokio::test]
    async fn everything_acknowledged_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = open(dir.path(), 1 << 20).unwrap();
            append(&wal, 1, entries(1, 1..=5)).await;
            append(&wal, 2, entries(1, 1..=3)).await;
            wal.save_vote(1, &openraft::Vote::new_committed(1, 7)).await.unwrap();
            wal.truncate_after(1, Some(log_id(1, 3))).await.unwrap();
            append(&wal, 1, entries(2, 4..=6)).await;
            wal.save_committed(1, Some(log_id(2, 5))).unwrap();
            wal.purge(2, log_id(1, 2)).unwrap();
            wal.close().await;
        }
        let (wal, report) = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(indexes(&wal, 1), vec![1, 2, 3, 4, 5, 6]);
        let s1 = wal.shard(1);
        let s1 = s1.lock().unwrap();
        assert_eq!(s1.range(4..=4)[0].log_id(), log_id(2, 4), "the truncated term-1 tail stays replaced");
        assert_eq!(s1.meta.committed, Some(log_id(2, 5)));
        assert!(s1.meta.vote.is_some());
        assert_eq!(indexes(&wal, 2), vec![3]);
        assert_eq!(wal.shard(2).lock().unwrap().meta.purged, Some(log_id(1, 2)));
    }

    fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_nothing_before_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = open(dir.path(), 1 << 20).unwrap();
            append(&wal, 1, entries(1, 1..=10)).await;
            wal.close().await;
        }
        let seg = segments(dir.path()).pop().unwrap();
        let good_len = std::fs::metadata(&seg).unwrap().len();
        // A crash in the middle of the next batch: a frame header and half a payload.
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend_from_slice(b"WL\x00\x00\x01\x00\xde\xad\xbe\xefpartial");
        std::fs::write(&seg, &bytes).unwrap();
        let (wal, report) = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.truncated_bytes, bytes.len() as u64 - good_len);
        assert_eq!(indexes(&wal, 1), (1..=10).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len, "the cut is on disk");
        append(&wal, 1, entries(1, 11..=11)).await;
        wal.close().await;
        let (wal, _) = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(indexes(&wal, 1), (1..=11).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn damage_followed_by_valid_records_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = open(dir.path(), 1 << 20).unwrap();
            for i in 1..=5 {
                append(&wal, 1, entries(1, i..=i)).await;
            }
            wal.close().await;
        }
        let seg = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[14] ^= 0xff; // inside the first record's payload
        std::fs::write(&seg, &bytes).unwrap();
        match open(dir.path(), 1 << 20) {
            Err(WalError::Corrupt { offset: 0, what, .. }) => assert!(what.contains("checksum"), "{what}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a damaged log with acknowledged records after it must not open"),
        }
        assert_eq!(std::fs::read(&seg).unwrap(), bytes, "a refused log is left untouched for inspection");
    }

    #[tokio::test]
    async fn segments_rotate_and_purged_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 512).unwrap();
        for i in 0..60 {
            append(&wal, 1, entries(1, i * 10 + 1..=i * 10 + 10)).await;
            append(&wal, 2, entries(1, i + 1..=i + 1)).await;
        }
        let before = segments(dir.path()).len();
        assert!(before > 3, "expected several segments, got {before}");
        wal.purge(1, log_id(1, 590)).unwrap();
        wal.purge(2, log_id(1, 59)).unwrap();
        append(&wal, 1, entries(1, 601..=601)).await; // rides the same group commit; runs GC after
        let after = segments(dir.path()).len();
        assert!(after < before, "purged segments were not deleted: {before} -> {after}");
        wal.close().await;
        let (wal, _) = open(dir.path(), 512).unwrap();
        assert_eq!(indexes(&wal, 1), (591..=601).collect::<Vec<_>>());
        assert_eq!(indexes(&wal, 2), vec![60]);
        assert_eq!(wal.shard(1).lock().unwrap().meta.purged, Some(log_id(1, 590)));
    }

    /// A segment is deleted once a newer one records a purge past its entries; that purge may
    /// come after the newer segment's first entries, whose checkpoint names an older purge
    /// point. Recovery must not see the deleted entries as a hole (it did, at 1 million ledger
    /// entries in the restart benchmark).
    #[tokio::test]
    async fn a_purge_later_in_a_segment_explains_the_entries_of_deleted_segments() {
        let dir = tempfile::tempdir().unwrap();
        // Every group commit after the first starts a new segment.
        let (wal, _) = open(dir.path(), 1).unwrap();
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(50));
        append(&wal, 1, entries(1, 1..=5)).await;
        wal.purge(1, log_id(1, 3)).unwrap();
        settle().await;
        append(&wal, 1, entries(1, 6..=10)).await; // a segment whose checkpoint says "purged 3"
        wal.purge(1, log_id(1, 7)).unwrap(); // in the next segment; the first ones can go
        settle().await;
        append(&wal, 1, entries(1, 11..=11)).await;
        let first = segments(dir.path()).first().cloned().unwrap();
        assert!(!first.ends_with("0000000000000000.wal"), "the oldest segments were deleted");
        wal.close().await;
        let (wal, _) = open(dir.path(), 1).expect("recovery sees no hole");
        assert_eq!(indexes(&wal, 1), (8..=11).collect::<Vec<_>>());
        assert_eq!(wal.shard(1).lock().unwrap().meta.purged, Some(log_id(1, 7)));
    }
}
