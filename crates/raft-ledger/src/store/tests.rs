//! Storage tests: openraft's own conformance suite, crash recovery of the write-ahead log, and
//! torn and corrupt tails.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use super::log_store::LogStore;
use super::shard_ledger::StateStorage;
use super::state_machine::LedgerStateMachine;
use super::vfs::StdFs;
use super::wal::{IoMode, Wal};
use crate::raft::TypeConfig;
use ledger_core::LedgerConfig;
use ledger_core::ShardId;

/// Stores where the state machine keeps its retained state as told, and each shard keeps up to
/// `log_cache_bytes` of its log in memory.
struct Builder {
    state: StateStorage,
    log_cache_bytes: usize,
}

impl StoreBuilder<TypeConfig, LogStore, LedgerStateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, LedgerStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(Arc::new(StdFs), &dir.path().join("wal"), IoMode::Thread, self.log_cache_bytes);
        let (wal, _) = wal.expect("open wal");
        let log = LogStore::new(Arc::new(wal), 0);
        let (sm, _) = LedgerStateMachine::open(
            Arc::new(StdFs),
            IoMode::Thread,
            &dir.path().join("shard-0"),
            ShardId(0),
            LedgerConfig::default(),
            self.state,
            None,
        )
        .expect("open state machine");
        Ok((dir, log, sm))
    }
}

impl Builder {
    fn new(state: StateStorage) -> Self {
        Self { state, log_cache_bytes: 64 << 20 }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite() {
    Suite::test_all(Builder::new(StateStorage::Memory)).await.expect("storage suite");
}

/// The suite again with no log entry resident once durable: every read goes to the segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite_with_the_log_read_back_from_disk() {
    Suite::test_all(Builder { log_cache_bytes: 0, ..Builder::new(StateStorage::Memory) }).await.expect("storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite_with_the_state_on_disk() {
    Suite::test_all(Builder::new(StateStorage::Disk { cache_bytes: 1 << 20 })).await.expect("storage suite");
}

mod wal {
    use std::path::Path;
    use std::sync::Arc;

    use openraft::entry::RaftEntry as _;

    use crate::raft::{LogId, RaftEntry, TypeConfig};
    use crate::store::vfs::{StdFs, VFile, Vfs};
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

    /// Opens with no entry kept in memory once durable, so every test here also reads its
    /// entries back from the segments (the resident path is the one openraft's suite covers).
    fn open(dir: &Path, segment: u64) -> Result<(Wal, crate::store::RecoveryReport), WalError> {
        Wal::open_with(Arc::new(StdFs), dir, IoMode::Thread, segment, 0)
    }

    fn indexes(wal: &Wal, shard: u32) -> Vec<u64> {
        wal.read(shard, ..).unwrap().iter().map(|e| e.index()).collect()
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
        assert_eq!(wal.read(1, 4..=4).unwrap()[0].log_id(), log_id(2, 4), "the truncated term-1 tail stays replaced");
        let s1 = wal.shard(1);
        let s1 = s1.lock().unwrap();
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
        // The writer answers a group commit before it deletes segments (an answer does not wait
        // for garbage collection); closing waits for the writer to finish, deletion included.
        wal.close().await;
        let after = segments(dir.path()).len();
        assert!(after < before, "purged segments were not deleted: {before} -> {after}");
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

    /// The real file system, except that appends fail with "no space left" once `full` is set,
    /// as on a full disk (the data directory on a small tmpfs in the chaos runs).
    struct FullDisk {
        full: Arc<std::sync::atomic::AtomicBool>,
    }

    struct FullFile {
        inner: Arc<dyn VFile>,
        full: Arc<std::sync::atomic::AtomicBool>,
    }

    impl VFile for FullFile {
        fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.inner.append(bytes)
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.inner.read_at(offset, buf)
        }
        fn sync(&self) -> std::io::Result<()> {
            self.inner.sync()
        }
        fn truncate(&self, len: u64) -> std::io::Result<()> {
            self.inner.truncate(len)
        }
        fn size(&self) -> std::io::Result<u64> {
            self.inner.size()
        }
    }

    impl Vfs for FullDisk {
        fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
            StdFs.create_dir_all(path)
        }
        fn open(&self, path: &Path) -> std::io::Result<Arc<dyn VFile>> {
            Ok(Arc::new(FullFile { inner: StdFs.open(path)?, full: self.full.clone() }))
        }
        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            StdFs.read(path)
        }
        fn write_atomic(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
            StdFs.write_atomic(path, bytes)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            StdFs.rename(from, to)
        }
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            StdFs.remove(path)
        }
        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            StdFs.list(dir)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            StdFs.sync_dir(dir)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_stops_the_log_says_why_and_loses_nothing_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let disk = Arc::new(FullDisk { full: full.clone() });
            let (wal, _) = Wal::open_with(disk, dir.path(), IoMode::Thread, 1 << 20, 0).unwrap();
            append(&wal, 1, entries(1, 1..=3)).await;
            assert_eq!(wal.failure(), None);
            full.store(true, std::sync::atomic::Ordering::SeqCst);
            let (tx, rx) = tokio::sync::oneshot::channel();
            wal.append(1, entries(1, 4..=5), Done::Notify(tx)).unwrap();
            assert!(rx.await.unwrap().is_err(), "an append the disk refused is never reported durable");
            let why = wal.failure().expect("the failure is kept");
            assert!(why.contains("No space left on device"), "{why}");
            // Space comes back, but this log stays stopped: its file's state is unknown.
            full.store(false, std::sync::atomic::Ordering::SeqCst);
            let (tx, _rx) = tokio::sync::oneshot::channel();
            assert!(wal.append(1, entries(1, 4..=5), Done::Notify(tx)).is_err());
            wal.close().await;
        }
        let (wal, _) = open(dir.path(), 1 << 20).expect("a restart after the disk is freed opens the log");
        assert_eq!(indexes(&wal, 1), vec![1, 2, 3]);
    }

    fn resident(wal: &Wal, shard: u32) -> (usize, usize) {
        wal.shard(shard).lock().unwrap().resident()
    }

    /// Only the newest entries stay in memory; older ones read back from the segments the same,
    /// across records, truncations and purges, and after a restart.
    #[tokio::test]
    async fn entries_beyond_the_cache_are_read_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let record = |from: u64, to: u64| entries(1, from..=to);
        let frame_bytes = {
            // One record of ten blank entries, as encoded; the cache holds two such.
            let (wal, _) = open(dir.path(), 1 << 20).unwrap();
            append(&wal, 9, record(1, 10)).await;
            let bytes = std::fs::metadata(segments(dir.path()).pop().unwrap()).unwrap().len() as usize;
            wal.close().await;
            std::fs::remove_dir_all(dir.path()).unwrap();
            bytes
        };
        let (wal, _) = Wal::open_with(Arc::new(StdFs), dir.path(), IoMode::Thread, 1 << 20, 2 * frame_bytes).unwrap();
        for i in 0..10 {
            append(&wal, 1, record(i * 10 + 1, i * 10 + 10)).await;
        }
        assert_eq!(resident(&wal, 1), (20, 2 * frame_bytes), "two records' worth stays in memory");
        assert_eq!(indexes(&wal, 1), (1..=100).collect::<Vec<_>>());
        let read = |from, to| wal.read(1, from..to).unwrap().iter().map(|e| e.index()).collect::<Vec<_>>();
        assert_eq!(read(5, 86), (5..86).collect::<Vec<_>>(), "across cold records into the resident ones");
        assert_eq!(read(33, 37), (33..37).collect::<Vec<_>>(), "inside one cold record");
        assert_eq!(read(101, 120), Vec::<u64>::new());
        // A new leader overwrites from inside a cold record: the rest of that record and every
        // record after it are gone, in memory and on disk.
        wal.truncate_after(1, Some(log_id(1, 44))).await.unwrap();
        append(&wal, 1, entries(2, 45..=47)).await;
        assert_eq!(indexes(&wal, 1), (1..=47).collect::<Vec<_>>());
        assert_eq!(
            wal.read(1, 44..=45).unwrap().iter().map(|e| e.log_id()).collect::<Vec<_>>(),
            vec![log_id(1, 44), log_id(2, 45)]
        );
        // A snapshot covers up to the middle of a cold record.
        wal.purge(1, log_id(1, 15)).unwrap();
        assert_eq!(indexes(&wal, 1), (16..=47).collect::<Vec<_>>());
        wal.close().await;
        let (wal, _) = Wal::open_with(Arc::new(StdFs), dir.path(), IoMode::Thread, 1 << 20, 2 * frame_bytes).unwrap();
        assert_eq!(indexes(&wal, 1), (16..=47).collect::<Vec<_>>());
        assert_eq!(wal.read(1, 45..=45).unwrap()[0].log_id(), log_id(2, 45));
        let (entries, bytes) = resident(&wal, 1);
        assert!(
            bytes <= 2 * frame_bytes && entries <= 20,
            "recovery keeps only the tail: {entries} entries, {bytes} bytes"
        );
    }

    /// An entry read back from disk is checked again: damage since it was written is an error,
    /// never a wrong entry.
    #[tokio::test]
    async fn a_cold_entry_damaged_on_disk_reads_back_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 1 << 20).unwrap();
        append(&wal, 1, entries(1, 1..=5)).await;
        assert_eq!(resident(&wal, 1).0, 0, "nothing stays in memory with no cache");
        let seg = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let err = wal.read(1, 2..=3).expect_err("a damaged record must not read back");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    }
}
