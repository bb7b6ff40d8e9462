//! openraft's state machine for one shard: the pure [`Ledger`], its journal, and snapshots.
//!
//! # Snapshots
//!
//! A snapshot is the ledger's state at a log position ([`LedgerImage`]) plus the length and head
//! hash of the journal at that position. The state is small (accounts and retained ids); the
//! journal is the whole history and is not copied locally: the journal file itself, fsynced up
//! to that length, is the snapshot's history. When a peer needs the snapshot, the state and the
//! journal prefix are streamed to it, and it verifies every hash of the received journal before
//! installing it.
//!
//! File `snapshot.bin`: `"LSNP" | version 2 | SHA-256 of body | body (postcard SnapshotState)`,
//! replaced atomically.
//!
//! # Checkpoints, when the retained state is on disk
//!
//! With [`StateStorage::Disk`] the retained state lives in a [`DiskState`] under
//! `state/<generation>/`, and a snapshot is a checkpoint of it instead of an image: between two
//! apply batches the journal is fsynced and the state's buffered writes are taken out of its
//! buffer ([`DiskState::freeze`]) together with a [`Checkpoint`] (the snapshot's metadata, the
//! ledger's accounts, holds and head, and the journal's length); writing them to the store in one
//! atomic batch and fsyncing it then run on the builder's thread, off the apply path (lookups
//! read the taken writes meanwhile), and only then does openraft learn of the snapshot (and may
//! purge the log behind it). Until the next
//! checkpoint the state's writes stay in memory, and the Raft log since the checkpoint is their
//! write-ahead log: a restart opens the files at the last checkpoint, cuts the journal there, and
//! openraft re-applies the log since. Nothing is copied at a checkpoint but the accounts.
//!
//! A peer that needs the snapshot gets the checkpoint encoded into a spool file straight from a
//! read-only view of the files as of that flush ([`Spooler`]: off the apply path, in bounded
//! memory, in the same wire format as an in-memory node's image) and read in ranges; a received
//! state stays in its file and is decoded as a stream. A node on disk installs an image by
//! importing it into a fresh generation directory, checkpointing it, and only then dropping the
//! old one; a crash halfway leaves the old generation, which the next open uses.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::watch;

use super::disk_state::{CheckpointView, Commit, DiskState, DiskStateError, Persister, RetainedPart};
use super::journal::{Journal, JournalError, JournalPoint, JournalPrefix, ReceivedJournal};
use super::shard_ledger::{Inner, ShardLedger, StateStorage};
use super::vfs::{VFile, VFileReader, Vfs};
use super::wal::IoMode;
use crate::net::wire::{SnapshotIdentity, SnapshotProgress};
use crate::raft::{LogId, Reply, Request, SnapshotMeta, StoredMembership, TypeConfig};
use ledger_core::ShardId;
use ledger_core::{ClusterTime, IdRecord, ImageAfter, ImageBefore, ImageHolds, Retained, Round, StateKey};
use ledger_core::{Command, CoreImage, Ledger, LedgerConfig, LedgerImage, LedgerState as _};
use ledger_core::{Entry, Hash};

const SNAPSHOT_MAGIC: &[u8; 4] = b"LSNP";
/// 2: the state records the journal's byte length.
const SNAPSHOT_VERSION: u8 = 2;

/// Why a shard's stored state cannot be loaded.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The disk failed.
    #[error("shard storage IO error: {0}")]
    Io(#[from] io::Error),
    /// The snapshot file is damaged.
    #[error("snapshot {path} is damaged: {what}")]
    BadSnapshot {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// The journal is damaged.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The on-disk state cannot be opened.
    #[error(transparent)]
    Disk(#[from] DiskStateError),
    /// The shard's state is on disk but the node was started to keep it in memory.
    #[error(
        "the state of the shard in {path} is kept on disk, but the node was started with its state in memory; \
         start it with its state on disk"
    )]
    StateOnDisk {
        /// The shard's directory.
        path: String,
    },
}

/// What a snapshot stores besides the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotState {
    pub(crate) meta: SnapshotMeta,
    pub(crate) image: LedgerImage,
    pub(crate) journal_entries: u64,
    /// Byte length of those entries' frames: where a restart cuts the journal, without reading
    /// what comes before.
    pub(crate) journal_bytes: u64,
    pub(crate) journal_head: Hash,
}

impl SnapshotState {
    /// Where the journal this snapshot includes ends.
    fn journal_point(&self) -> JournalPoint {
        JournalPoint { entries: self.journal_entries, bytes: self.journal_bytes, head: self.journal_head }
    }
}

/// What a checkpoint of a shard whose retained state is on disk stores with it, as the state's
/// flush metadata (`CHECKPOINT_VERSION | postcard`).
///
/// Since version 2 its core image holds no accounts: the on-disk state stores them, each
/// written by the checkpoint after it changed, so a checkpoint costs what changed rather than
/// a copy of every account. Version 1 held them all here (and the state none); it is still
/// read, and its accounts move into the state with the next checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    meta: SnapshotMeta,
    core: CoreImage,
    journal_entries: u64,
    journal_bytes: u64,
    journal_head: Hash,
}

const CHECKPOINT_VERSION: u8 = 2;
const CHECKPOINT_VERSION_ACCOUNTS_INSIDE: u8 = 1;

impl Checkpoint {
    fn journal_point(&self) -> JournalPoint {
        JournalPoint { entries: self.journal_entries, bytes: self.journal_bytes, head: self.journal_head }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![CHECKPOINT_VERSION];
        out.extend(postcard::to_allocvec(self).expect("a checkpoint serialises"));
        out
    }

    /// `None` for a state flushed without a checkpoint (new, or an import cut short).
    fn decode(dir: &Path, bytes: &[u8]) -> Result<Option<Self>, StoreError> {
        let bad = |what: String| StoreError::BadSnapshot { path: dir.display().to_string(), what };
        match bytes.split_first() {
            None => Ok(None),
            Some((&(CHECKPOINT_VERSION | CHECKPOINT_VERSION_ACCOUNTS_INSIDE), body)) => {
                postcard::from_bytes(body).map(Some).map_err(|e| bad(e.to_string()))
            }
            Some((v, _)) => Err(bad(format!("unknown checkpoint version {v}"))),
        }
    }
}

/// A snapshot's state: encoded in memory or in a file, or a checkpoint on disk encoded into a
/// file when it is needed.
#[derive(Clone)]
pub(crate) enum SnapshotBody {
    /// postcard-encoded [`SnapshotState`] (an in-memory state's snapshot file).
    Encoded(Arc<EncodedState>),
    /// postcard-encoded [`SnapshotState`] in a file: one received from a peer and verified.
    File(Arc<StateFile>),
    /// The retained state as of a checkpoint; the checkpoint's record is in its metadata.
    Checkpoint(Arc<CheckpointView>, Arc<Spooler>),
}

/// A [`SnapshotState`] in the wire format (postcard), with its SHA-256: what a snapshot file
/// stores and a transfer sends and checks.
pub(crate) struct EncodedState {
    pub(crate) bytes: Vec<u8>,
    pub(crate) digest: Hash,
}

impl EncodedState {
    fn new(bytes: Vec<u8>) -> Self {
        let digest = Sha256::digest(&bytes).into();
        Self { bytes, digest }
    }
}

/// A [`SnapshotState`] in the wire format in a file, with its length and SHA-256: read in
/// ranges to send it and streamed to decode it, never whole into memory.
pub(crate) struct StateFile {
    file: Arc<dyn VFile>,
    len: u64,
    digest: Hash,
}

/// Where a snapshot's encoded state is read from: memory, or a file.
#[derive(Clone)]
pub(crate) enum StateSource {
    Memory(Arc<EncodedState>),
    File(Arc<StateFile>),
}

impl StateSource {
    pub(crate) fn len(&self) -> u64 {
        match self {
            StateSource::Memory(s) => s.bytes.len() as u64,
            StateSource::File(f) => f.len,
        }
    }

    pub(crate) fn digest(&self) -> Hash {
        match self {
            StateSource::Memory(s) => s.digest,
            StateSource::File(f) => f.digest,
        }
    }

    /// Reads `buf.len()` bytes at `offset`, which must lie within the state.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            StateSource::Memory(s) => {
                buf.copy_from_slice(&s.bytes[offset as usize..offset as usize + buf.len()]);
                Ok(())
            }
            StateSource::File(f) => f.file.read_at(offset, buf),
        }
    }

    /// The state's bytes from the start, buffered if in a file.
    fn reader(&self) -> Box<dyn io::Read + '_> {
        match self {
            StateSource::Memory(s) => Box::new(&s.bytes[..]),
            StateSource::File(f) => Box::new(io::BufReader::with_capacity(1 << 20, VFileReader::new(&*f.file, f.len))),
        }
    }

    /// Decodes the whole state (a file streamed: its bytes are never all in memory at once).
    fn decode(&self) -> io::Result<SnapshotState> {
        let mut d = StateDecoder::new(self.reader());
        let state = d.next()?;
        d.end()?;
        Ok(state)
    }

    /// The state's bytes in memory (an in-memory state's snapshot file is made of them).
    fn to_encoded(&self) -> io::Result<Arc<EncodedState>> {
        match self {
            StateSource::Memory(s) => Ok(s.clone()),
            StateSource::File(f) => {
                let mut bytes = vec![0u8; f.len as usize];
                f.file.read_at(0, &mut bytes)?;
                Ok(Arc::new(EncodedState { bytes, digest: f.digest }))
            }
        }
    }
}

/// Encodes a shard's checkpoints into files for peers (a lagging or new replica), one at a
/// time, and keeps the newest: a transfer cut off resumes from the same file, and replicas
/// catching up from the same checkpoint share it. An older one is removed at the next spool
/// once no transfer reads it any more, and every one at the next open. (Not when the last
/// transfer drops it: under the simulator a file can only be touched from a node's tasks, and
/// the last reference may go when the simulation is torn down.)
pub(crate) struct Spooler {
    vfs: Arc<dyn Vfs>,
    io: IoMode,
    background: Background,
    dir: PathBuf,
    spools: tokio::sync::Mutex<Spools>,
}

/// What a [`Spooler`] has spooled.
#[derive(Default)]
struct Spools {
    /// How many it has started (names the next file).
    started: u64,
    /// The newest: its checkpoint (the record's bytes), its file and its path.
    newest: Option<(Vec<u8>, Arc<StateFile>, PathBuf)>,
    /// Older ones a transfer may still be reading.
    retired: Vec<(Arc<StateFile>, PathBuf)>,
}

/// Spooled files are named `snapshot.send.<n>` in the shard's directory.
const SPOOL_PREFIX: &str = "snapshot.send.";

impl Spooler {
    /// The checkpoint `view` holds, encoded into a file (reused if it is the newest one).
    async fn spool(&self, view: Arc<CheckpointView>) -> io::Result<Arc<StateFile>> {
        let mut spools = self.spools.lock().await;
        let record = view.user();
        if let Some((spooled, file, _)) = &spools.newest
            && *spooled == record
        {
            return Ok(file.clone());
        }
        if let Some((_, file, path)) = spools.newest.take() {
            spools.retired.push((file, path));
        }
        // Those no transfer holds any more (only this list does).
        let vfs = self.vfs.as_ref();
        spools.retired.retain(|(file, path)| Arc::strong_count(file) > 1 || vfs.remove(path).is_err());
        spools.started += 1;
        let path = self.dir.join(format!("{SPOOL_PREFIX}{}", spools.started));
        let (vfs, at) = (self.vfs.clone(), path.clone());
        // Seconds of reading and hashing for a large state: on a blocking thread, at normal
        // priority (nice 19 gained the live replicas nothing and would slow a catch-up on a busy
        // leader: BENCHMARKS.md, "Catching up by snapshot under load"); in place under the
        // simulator, where a thread's real time would decide the trace.
        let running = self.background.start();
        let spooled = self.io.blocking(move || {
            let spooled = spool_checkpoint(vfs.as_ref(), &at, &view);
            drop(running);
            spooled
        });
        let file = spooled.await.map_err(|_| io::Error::other("spooling a checkpoint panicked"))?;
        let file = match file {
            Ok(file) => Arc::new(file),
            Err(e) => {
                // Whatever was written of it; the next open removes it if this fails too.
                let _ = self.vfs.remove(&path);
                return Err(e);
            }
        };
        spools.newest = Some((record, file.clone(), path));
        Ok(file)
    }
}

/// Writes a checkpoint's [`SnapshotState`] in the wire format into a new file at `path`, piece
/// by piece: the retained state straight from the view's files, in bounded memory (the
/// accounts are sorted in memory: an image lists them by account, which is not the store's
/// order).
fn spool_checkpoint(vfs: &dyn Vfs, path: &Path, view: &CheckpointView) -> io::Result<StateFile> {
    let cp = Checkpoint::decode(Path::new("checkpoint"), &view.user())
        .map_err(io::Error::other)?
        .ok_or_else(|| io::Error::other("the on-disk state has no checkpoint"))?;
    vfs.remove(path)?;
    let mut out = StateFile { file: vfs.open(path)?, len: 0, digest: [0; 32] };
    let mut hasher = Sha256::new();
    let mut buf: Vec<u8> = Vec::with_capacity(2 * SPOOL_BUFFER);
    let mut write = |bytes: &[u8], last: bool| -> io::Result<()> {
        buf.extend_from_slice(bytes);
        if buf.len() >= SPOOL_BUFFER || last {
            hasher.update(&buf);
            out.file.append(&buf)?;
            out.len += buf.len() as u64;
            buf.clear();
        }
        Ok(())
    };
    fn encoded<T: Serialize>(value: &T) -> Vec<u8> {
        postcard::to_allocvec(value).expect("a snapshot's state encodes")
    }
    let core = cp.core.clone().with_accounts(view.accounts());
    let (before, between, after) = core.image_pieces();
    // `SnapshotState`'s fields in order, its image in the pieces `image_pieces` gives.
    write(&encoded(&cp.meta), false)?;
    write(&encoded(&before), false)?;
    view.write_part(RetainedPart::Ids, &mut |b| write(b, false))?;
    view.write_part(RetainedPart::Rounds, &mut |b| write(b, false))?;
    write(&encoded(&between), false)?;
    view.write_part(RetainedPart::Retention, &mut |b| write(b, false))?;
    write(&encoded(&after), false)?;
    write(&encoded(&(cp.journal_entries, cp.journal_bytes, cp.journal_head)), true)?;
    out.digest = hasher.finalize().into();
    Ok(out)
}

/// How much of a spooled state is buffered before it is appended to its file.
const SPOOL_BUFFER: usize = 1 << 20;

/// A snapshot's data: its state and the journal prefix it covers.
#[derive(Clone)]
pub struct LedgerSnapshot {
    pub(crate) state: SnapshotBody,
    /// The journal entries the state includes.
    pub(crate) journal: JournalPrefix,
    /// Hash of the prefix's last entry: the chain head the state names.
    pub(crate) journal_head: Hash,
    /// For a snapshot received from a peer: its journal, written and verified.
    pub(crate) received_at: Option<ReceivedJournal>,
}

impl LedgerSnapshot {
    /// Where to read the state in the wire format ([`SnapshotState`], postcard) from. A
    /// checkpoint on disk is first encoded into a file (see [`Spooler`]).
    pub(crate) async fn state_source(&self) -> io::Result<StateSource> {
        match &self.state {
            SnapshotBody::Encoded(state) => Ok(StateSource::Memory(state.clone())),
            SnapshotBody::File(file) => Ok(StateSource::File(file.clone())),
            SnapshotBody::Checkpoint(view, spooler) => spooler.spool(view.clone()).await.map(StateSource::File),
        }
    }
}

/// A shard's live state, shared by the state machine (writer) and readers.
pub(crate) struct ShardState {
    pub(crate) ledger: ShardLedger,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    pub(crate) journal: Journal,
}

/// The shared cell around a shard's state, plus a watch of the journal length for followers of
/// the entry stream.
pub(crate) struct ShardCell {
    pub(crate) state: RwLock<ShardState>,
    pub(crate) journal_len: watch::Sender<u64>,
    /// The last applied log id, published before the replies of the entries up to it are sent:
    /// so anything acknowledged is at or below what a reader of this sees (what a leader
    /// vouches for to its followers, `net::wire::Freshness`).
    pub(crate) applied: watch::Sender<Option<LogId>>,
    /// Commands applied since the last snapshot began. With the retained state on disk, their
    /// writes wait in memory until the next checkpoint, so the node takes one once this is large
    /// (`NodeConfig::checkpoint_every_commands`), however few log entries carried them.
    pub(crate) commands_since_snapshot: std::sync::atomic::AtomicU64,
    /// The shard's snapshot work running on threads of its own.
    pub(crate) background: Background,
}

/// Counts a shard's snapshot work running off the runtime (builds, spools, the check of a
/// received snapshot, installs), so that the node's shutdown can wait for it: such a thread
/// outlives the task that awaited it, and one left running would go on writing into the
/// shard's directory after shutdown returned, while the node may be started on it again (tests
/// and embedders restart nodes in one process).
#[derive(Clone)]
pub(crate) struct Background(Arc<watch::Sender<usize>>);

impl Default for Background {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Background {
    /// Counts one piece of work until the returned guard is dropped.
    fn start(&self) -> Running {
        self.0.send_modify(|n| *n += 1);
        Running(self.clone())
    }

    /// Waits until no work is running.
    pub(crate) async fn idle(&self) {
        let _ = self.0.subscribe().wait_for(|n| *n == 0).await;
    }

    /// Whether no work is running now.
    pub(crate) fn is_idle(&self) -> bool {
        *self.0.borrow() == 0
    }
}

/// One piece of work counted by a [`Background`].
struct Running(Background);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.0.send_modify(|n| *n -= 1);
    }
}

impl ShardCell {
    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, ShardState> {
        self.state.read().expect("shard state lock poisoned: a state machine assertion failed")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ShardState> {
        self.state.write().expect("shard state lock poisoned: a state machine assertion failed")
    }
}

/// The state machine of one shard.
pub struct LedgerStateMachine {
    shard: ShardId,
    vfs: Arc<dyn Vfs>,
    io: IoMode,
    dir: PathBuf,
    storage: StateStorage,
    cell: Arc<ShardCell>,
    sink: Vec<Entry>,
    hook: Option<Arc<dyn ApplyHook>>,
    spooler: Arc<Spooler>,
}

/// A fault the simulator's own tests inject into a node's state machine, to show that its checks
/// catch it (a node started by `walletd` never has one): before each command is applied, the
/// hook may replace it. It must be a pure function of its arguments, so replicas stay
/// identical. The faults themselves live in the simulator, not in this crate.
pub trait ApplyHook: Send + Sync {
    /// The command to apply instead of `cmd` (at Raft log index `index`), or `None` to apply
    /// `cmd` as it is.
    fn before_apply(&self, ledger: &ShardLedger, cmd: &Command, index: u64) -> Option<Command>;
}

fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join("snapshot.bin")
}

fn journal_path(dir: &Path) -> PathBuf {
    dir.join("journal.log")
}

/// Where the generations of a shard's on-disk state live.
fn state_root(dir: &Path) -> PathBuf {
    dir.join("state")
}

/// Opens the newest generation of a shard's on-disk state that holds a checkpoint, and removes
/// the others (older ones, and a newer one whose import was cut short). Without any, starts
/// generation 0 afresh. fjall does its own file IO, so this uses the OS directly.
fn open_disk_state(dir: &Path, cache_bytes: u64) -> Result<(DiskState, Option<Checkpoint>, PathBuf), StoreError> {
    let root = state_root(dir);
    std::fs::create_dir_all(&root)?;
    let mut generations: Vec<u64> = Vec::new();
    for e in std::fs::read_dir(&root)? {
        if let Some(g) = e?.file_name().to_str().and_then(|n| n.parse().ok()) {
            generations.push(g);
        }
    }
    generations.sort_unstable_by(|a, b| b.cmp(a));
    let mut chosen = None;
    for g in generations {
        let path = root.join(g.to_string());
        if chosen.is_none() {
            let (state, user) = DiskState::open(&path, cache_bytes)?;
            if let Some(cp) = Checkpoint::decode(&path, &user)? {
                chosen = Some((state, Some(cp), path));
                continue;
            }
        }
        tracing::info!(path = %path.display(), "removing an unused generation of on-disk state");
        std::fs::remove_dir_all(&path)?;
    }
    match chosen {
        Some(c) => Ok(c),
        None => {
            let path = root.join("0");
            let (state, _) = DiskState::open(&path, cache_bytes)?;
            Ok((state, None, path))
        }
    }
}

/// Fills an empty on-disk state with a snapshot's image and checkpoints it under `meta`: the
/// journal made durable, then the state flushed with the checkpoint and made durable, all on the
/// calling thread (opening, not the apply path).
fn import_durably(
    disk: DiskState,
    state: SnapshotState,
    meta: SnapshotMeta,
    journal: &Journal,
) -> io::Result<Ledger<DiskState>> {
    let point = state.journal_point();
    checkpoint_durably(filled(disk, state.image), point, meta, journal)
}

/// An empty on-disk state filled with a snapshot's image, as a ledger (not yet checkpointed).
fn filled(mut disk: DiskState, image: LedgerImage) -> Ledger<DiskState> {
    let (mut core, retained) = image.into_parts();
    disk.import(retained);
    disk.import_accounts(&core.take_accounts());
    Ledger::from_core_image(core, disk)
}

/// Decodes a snapshot's state as a stream into an empty on-disk state: its retained parts go
/// into the store as they are decoded ([`DiskState::start_import`]), so neither the encoding nor
/// the image is ever whole in memory. Returns the ledger, the state's metadata and the journal
/// point it names, for the caller to check.
fn import_streamed(
    mut disk: DiskState,
    source: &StateSource,
) -> io::Result<(Ledger<DiskState>, SnapshotMeta, JournalPoint)> {
    let mut d = StateDecoder::new(source.reader());
    // `SnapshotState`'s fields in order, its image in the pieces of `CoreImage::image_pieces`.
    let meta: SnapshotMeta = d.next()?;
    let before: ImageBefore = d.next()?;
    let mut import = disk.start_import();
    import.ids(&mut d.seq::<(StateKey, IdRecord)>()?)?;
    import.rounds(&mut d.seq::<(StateKey, Round)>()?)?;
    let holds: ImageHolds = d.next()?;
    import.queue(&mut d.seq::<(ClusterTime, Retained)>()?)?;
    let after: ImageAfter = d.next()?;
    let (entries, bytes, head): (u64, u64, Hash) = d.next()?;
    d.end()?;
    let mut core = CoreImage::from_pieces(before, holds, after);
    disk.import_accounts(&core.take_accounts());
    Ok((Ledger::from_core_image(core, disk), meta, JournalPoint { entries, bytes, head }))
}

/// Reads a snapshot's encoded state one postcard value at a time.
struct StateDecoder<R> {
    reader: R,
    /// Room for the longest string in the state (ids, addresses), reused for each value.
    scratch: Vec<u8>,
}

impl<R: io::Read> StateDecoder<R> {
    fn new(reader: R) -> Self {
        Self { reader, scratch: vec![0u8; 1 << 16] }
    }

    fn next<T: serde::de::DeserializeOwned>(&mut self) -> io::Result<T> {
        let (value, _) = postcard::from_io((&mut self.reader, &mut self.scratch[..]))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(value)
    }

    /// A sequence's items, one at a time, after its length.
    fn seq<T: serde::de::DeserializeOwned>(&mut self) -> io::Result<impl Iterator<Item = io::Result<T>> + '_> {
        let len: usize = self.next()?;
        Ok((0..len).map(move |_| self.next()))
    }

    /// Checks that nothing follows.
    fn end(mut self) -> io::Result<()> {
        if self.reader.read(&mut [0u8; 1])? != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes after the snapshot's state"));
        }
        Ok(())
    }
}

/// Checkpoints a ledger just filled from a snapshot's state under `meta`, at the journal
/// point the state names: the journal made durable, then the state flushed with the checkpoint
/// and made durable.
fn checkpoint_durably(
    mut ledger: Ledger<DiskState>,
    point: JournalPoint,
    meta: SnapshotMeta,
    journal: &Journal,
) -> io::Result<Ledger<DiskState>> {
    let cp = Checkpoint {
        meta,
        core: ledger.core_image_without_accounts(),
        journal_entries: point.entries,
        journal_bytes: point.bytes,
        journal_head: point.head,
    };
    journal.sync()?;
    ledger.state_mut().flush(&cp.encode());
    ledger.state().persist();
    Ok(ledger)
}

/// A snapshot's state built, before it is swapped in.
#[allow(clippy::large_enum_variant, reason = "one per install")]
enum Built {
    /// The ledger and the encoded state, which becomes the snapshot file.
    Memory(Ledger, Arc<EncodedState>),
    /// The ledger, its generation's directory, and the journal point of the state it came from
    /// (for its checkpoint).
    Disk(Ledger<DiskState>, PathBuf, JournalPoint),
}

/// The directory of the generation after `current`'s.
fn next_generation(current: &Path) -> PathBuf {
    let g: u64 = current.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).unwrap_or(0);
    current.with_file_name((g + 1).to_string())
}

/// Where a snapshot received from a peer is written before it is verified and installed.
pub(crate) fn received_journal_path(dir: &Path) -> PathBuf {
    dir.join("journal.recv")
}

fn encode_snapshot_file(state: &EncodedState) -> Vec<u8> {
    let mut out = Vec::with_capacity(37 + state.bytes.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.push(SNAPSHOT_VERSION);
    out.extend_from_slice(&state.digest);
    out.extend_from_slice(&state.bytes);
    out
}

fn decode_snapshot_file(path: &Path, bytes: &[u8]) -> Result<(EncodedState, SnapshotState), StoreError> {
    let bad = |what: &str| StoreError::BadSnapshot { path: path.display().to_string(), what: what.to_string() };
    if bytes.len() < 37 || &bytes[..4] != SNAPSHOT_MAGIC {
        return Err(bad("not a snapshot file"));
    }
    if bytes[4] != SNAPSHOT_VERSION {
        return Err(bad("unknown snapshot version"));
    }
    let body = &bytes[37..];
    if Sha256::digest(body)[..] != bytes[5..37] {
        return Err(bad("checksum mismatch"));
    }
    let state = postcard::from_bytes(body).map_err(|e| bad(&e.to_string()))?;
    let digest = bytes[5..37].try_into().expect("32 bytes");
    Ok((EncodedState { bytes: body.to_vec(), digest }, state))
}

impl LedgerStateMachine {
    /// Loads a shard from `dir`: its snapshot (or on-disk checkpoint) if any, and its journal up
    /// to that point.
    pub(crate) fn open(
        vfs: Arc<dyn Vfs>,
        io: IoMode,
        dir: &Path,
        shard: ShardId,
        config: LedgerConfig,
        storage: StateStorage,
        hook: Option<Arc<dyn ApplyHook>>,
    ) -> Result<(Self, Arc<ShardCell>), StoreError> {
        vfs.create_dir_all(dir)?;
        vfs.remove(&received_journal_path(dir))?;
        // Spooled for peers before a restart: the next transfer spools its checkpoint again.
        for name in vfs.list(dir)? {
            if name.starts_with(SPOOL_PREFIX) {
                vfs.remove(&dir.join(name))?;
            }
        }
        let snap_path = snapshot_path(dir);
        let snapshot = match vfs.read(&snap_path) {
            Ok(bytes) => Some(decode_snapshot_file(&snap_path, &bytes)?.1),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(s) = &snapshot {
            assert_eq!(s.image.shard(), shard, "snapshot of another shard");
        }
        let state = match storage {
            StateStorage::Memory => {
                if state_root(dir).exists() {
                    return Err(StoreError::StateOnDisk { path: dir.display().to_string() });
                }
                let keep = snapshot.as_ref().map_or(JournalPoint::empty(shard), SnapshotState::journal_point);
                let journal = Journal::open(vfs.as_ref(), &journal_path(dir), shard, keep)?;
                match snapshot {
                    Some(s) => ShardState {
                        ledger: ShardLedger::memory(Ledger::from_image(s.image)),
                        last_applied: s.meta.last_log_id,
                        membership: s.meta.last_membership,
                        journal,
                    },
                    None => ShardState {
                        ledger: ShardLedger::memory(Ledger::new(shard, config)),
                        last_applied: None,
                        membership: StoredMembership::default(),
                        journal,
                    },
                }
            }
            StateStorage::Disk { cache_bytes } => {
                let (disk, checkpoint, state_dir) = open_disk_state(dir, cache_bytes)?;
                match (checkpoint, snapshot) {
                    (Some(cp), _) => {
                        let journal = Journal::open(vfs.as_ref(), &journal_path(dir), shard, cp.journal_point())?;
                        assert_eq!(cp.core.shard(), shard, "checkpoint of another shard");
                        // The ledger reads its accounts from the state. A version 1 checkpoint
                        // holds them itself (and the state none): the ledger writes them into
                        // the state, which stores them with the next checkpoint (that one holds
                        // none).
                        assert!(
                            cp.core.accounts().is_empty() || !disk.has_stored_accounts(),
                            "a checkpoint holds its accounts or its state does, not both"
                        );
                        let core = cp.core;
                        tracing::info!(
                            %shard,
                            last_log_id = ?cp.meta.last_log_id,
                            ids = disk.remembered_ids(),
                            "opened the on-disk state at its last checkpoint"
                        );
                        ShardState {
                            last_applied: cp.meta.last_log_id,
                            membership: cp.meta.last_membership,
                            ledger: ShardLedger::disk(Ledger::from_core_image(core, disk), &state_dir),
                            journal,
                        }
                    }
                    (None, Some(s)) => {
                        // The node kept this shard in memory until now: move its last snapshot
                        // onto disk, checkpoint it, and retire the image.
                        let journal = Journal::open(vfs.as_ref(), &journal_path(dir), shard, s.journal_point())?;
                        let meta = s.meta.clone();
                        let ledger = import_durably(disk, s, meta.clone(), &journal)?;
                        tracing::info!(%shard, last_log_id = ?meta.last_log_id, "moved the shard's state onto disk");
                        ShardState {
                            ledger: ShardLedger::disk(ledger, &state_dir),
                            last_applied: meta.last_log_id,
                            membership: meta.last_membership,
                            journal,
                        }
                    }
                    (None, None) => ShardState {
                        ledger: ShardLedger::disk(Ledger::with_state(shard, config, disk), &state_dir),
                        last_applied: None,
                        membership: StoredMembership::default(),
                        journal: Journal::open(vfs.as_ref(), &journal_path(dir), shard, JournalPoint::empty(shard))?,
                    },
                }
            }
        };
        if matches!(storage, StateStorage::Disk { .. }) {
            // Retired by the checkpoint above, or left from the node's in-memory days.
            vfs.remove(&snap_path)?;
        }
        assert_eq!(state.ledger.head(), (state.journal.len(), state.journal.head()), "ledger and journal disagree");
        let (journal_len, _) = watch::channel(state.journal.len());
        let (applied, _) = watch::channel(state.last_applied);
        let cell = Arc::new(ShardCell {
            state: RwLock::new(state),
            journal_len,
            applied,
            commands_since_snapshot: std::sync::atomic::AtomicU64::new(0),
            background: Background::default(),
        });
        let spooler = Arc::new(Spooler {
            vfs: vfs.clone(),
            io,
            background: cell.background.clone(),
            dir: dir.to_path_buf(),
            spools: tokio::sync::Mutex::new(Spools::default()),
        });
        let sm = Self {
            shard,
            vfs,
            io,
            dir: dir.to_path_buf(),
            storage,
            cell: cell.clone(),
            sink: Vec::new(),
            hook,
            spooler,
        };
        Ok((sm, cell))
    }

    /// Captures the state between two apply batches. This runs on the apply path, so it only
    /// copies (in memory) or flushes the writes buffered since the last checkpoint (on disk);
    /// the expensive work happens in [`LedgerSnapshotBuilder::build_snapshot`].
    fn builder(&self) -> LedgerSnapshotBuilder {
        // The runtime's clock, not the OS's: under the simulator a seed's trace must not carry
        // wall-clock durations.
        let started = tokio::time::Instant::now();
        self.cell.commands_since_snapshot.store(0, std::sync::atomic::Ordering::Relaxed);
        let builder = match self.storage {
            // A copy needs only a read: readers go on reading meanwhile. It is a plain copy of
            // the maps (5–50 ms at a few hundred thousand ids); copy-on-write maps that made it
            // free cost 16–43% of the apply rate and were not kept (BENCHMARKS.md, "Where the
            // apply time goes").
            StateStorage::Memory => {
                let st = self.cell.read();
                let Inner::Memory(ledger) = &st.ledger.0 else { unreachable!("the state is where it was opened") };
                self.builder_of(&st, Work::Image(ledger.clone()))
            }
            StateStorage::Disk { .. } => {
                let mut st = self.cell.write();
                let st = &mut *st;
                let Inner::Disk(d) = &mut st.ledger.0 else { unreachable!("the state is where it was opened") };
                let cp = Checkpoint {
                    meta: SnapshotMeta { last_log_id: st.last_applied, last_membership: st.membership.clone() },
                    core: d.ledger.core_image_without_accounts(),
                    journal_entries: st.journal.point().entries,
                    journal_bytes: st.journal.point().bytes,
                    journal_head: st.journal.point().head,
                };
                // The checkpoint names the journal's length, so the journal must be durable
                // before the checkpoint can be: fsync it first, here, between two batches. The
                // state's writes since the last checkpoint are only taken out of its buffer here
                // (lookups read them where they are); the builder writes them to the store.
                let work = match st.journal.sync() {
                    Ok(()) => {
                        let commit = d.ledger.state_mut().freeze(&cp.encode());
                        Work::Checkpoint(commit, d.ledger.state().persister())
                    }
                    Err(e) => Work::Failed(e),
                };
                self.builder_of(st, work)
            }
        };
        tracing::debug!(us = started.elapsed().as_micros() as u64, "snapshot state captured");
        builder
    }

    fn builder_of(&self, st: &ShardState, work: Work) -> LedgerSnapshotBuilder {
        LedgerSnapshotBuilder {
            vfs: self.vfs.clone(),
            io: self.io,
            background: self.cell.background.clone(),
            path: snapshot_path(&self.dir),
            meta: SnapshotMeta { last_log_id: st.last_applied, last_membership: st.membership.clone() },
            work: Some(work),
            journal: st.journal.whole(),
            journal_head: st.journal.head(),
            spooler: self.spooler.clone(),
        }
    }
}

/// What a snapshot builder has left to do.
#[allow(clippy::large_enum_variant, reason = "one per snapshot")]
enum Work {
    /// Check, encode and write this copy of the in-memory ledger.
    Image(Ledger),
    /// Write the checkpoint's state to the store and make it durable.
    Checkpoint(Commit, Persister),
    /// The journal could not be made durable: no checkpoint was taken.
    Failed(io::Error),
}

/// Builds a snapshot from what was captured between two apply batches.
pub struct LedgerSnapshotBuilder {
    vfs: Arc<dyn Vfs>,
    io: IoMode,
    background: Background,
    path: PathBuf,
    meta: SnapshotMeta,
    work: Option<Work>,
    journal: JournalPrefix,
    journal_head: Hash,
    spooler: Arc<Spooler>,
}

impl RaftSnapshotBuilder<TypeConfig> for LedgerSnapshotBuilder {
    type SnapshotData = LedgerSnapshot;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::type_config::alias::SnapshotOf<TypeConfig, LedgerSnapshot>, io::Error> {
        let work = self.work.take().ok_or_else(|| io::Error::other("snapshot builder used twice"))?;
        let started = tokio::time::Instant::now();
        let body = match work {
            Work::Failed(e) => return Err(e),
            Work::Checkpoint(commit, persister) => {
                let write = move || {
                    let view = commit.commit();
                    persister.persist();
                    Ok(view)
                };
                let view = off_the_apply_path(self.io, &self.background, write).await?;
                tracing::debug!(
                    last_log_id = ?self.meta.last_log_id,
                    journal_entries = self.journal.entries,
                    ms = started.elapsed().as_millis() as u64,
                    "checkpoint made durable"
                );
                SnapshotBody::Checkpoint(Arc::new(view), self.spooler.clone())
            }
            Work::Image(ledger) => {
                let (vfs, path, meta, journal, journal_head) =
                    (self.vfs.clone(), self.path.clone(), self.meta.clone(), self.journal.clone(), self.journal_head);
                let work = move || -> io::Result<EncodedState> {
                    // Full invariant check before anything is persisted.
                    ledger.check_invariants();
                    let image = ledger.to_image();
                    // The copy is as large as the state and the encoding and the write need
                    // only the image: free it now rather than after them.
                    drop(ledger);
                    let state = SnapshotState {
                        meta,
                        image,
                        journal_entries: journal.entries,
                        journal_bytes: journal.bytes,
                        journal_head,
                    };
                    let encoded = EncodedState::new(postcard::to_allocvec(&state).expect("snapshot state serialises"));
                    // The journal prefix must be durable before a snapshot that relies on it,
                    // because logs up to the snapshot are purged once it exists.
                    journal.file.sync()?;
                    vfs.write_atomic(&path, &encode_snapshot_file(&encoded))?;
                    Ok(encoded)
                };
                let encoded = off_the_apply_path(self.io, &self.background, work).await?;
                tracing::debug!(
                    last_log_id = ?self.meta.last_log_id,
                    journal_entries = self.journal.entries,
                    bytes = encoded.bytes.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot written"
                );
                SnapshotBody::Encoded(Arc::new(encoded))
            }
        };
        Ok(openraft::Snapshot {
            meta: self.meta.clone(),
            snapshot: LedgerSnapshot {
                state: body,
                journal: self.journal.clone(),
                journal_head: self.journal_head,
                received_at: None,
            },
        })
    }
}

/// Runs a snapshot's work (sorting, encoding, writing and fsyncing a large state, committing a
/// checkpoint, or checking and installing one received from a peer) off the runtime's worker
/// threads in production; the simulator's disk must be used from its own tasks, so there it
/// runs in place.
pub(crate) async fn off_the_apply_path<T: Send + 'static>(
    io: IoMode,
    background: &Background,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    match io {
        IoMode::Thread => in_background(background, work).await,
        IoMode::Task => work(),
    }
}

/// Runs a snapshot's work on a thread of its own at the lowest CPU priority. A build costs
/// hundreds of milliseconds of CPU for a large state, and a node builds one per shard it
/// hosts; at normal priority the builds took the cores from the commit path and stalled
/// commits for one to two seconds (issue 17's open-loop tail). A snapshot is never urgent:
/// until it exists the log is simply kept longer; nor is installing one more urgent than the
/// commits of the node's other shards.
async fn in_background<T: Send + 'static>(
    background: &Background,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let running = background.start();
    std::thread::Builder::new().name("snapshot".to_string()).spawn(move || {
        lower_own_priority();
        let _ = tx.send(work());
        // Only now, with the work's captures dropped (and its result, if nobody waits).
        drop(running);
    })?;
    rx.await.map_err(|_| io::Error::other("the snapshot thread panicked"))?
}

/// Sets the calling thread's nice value to 19. On Linux the nice value belongs to the thread,
/// so this leaves the rest of the process alone; the thread is used for one snapshot only
/// because an unprivileged thread cannot raise its priority back.
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::debug!(error = %e, "could not lower the snapshot thread's priority");
    }
}

impl RaftStateMachine<TypeConfig> for LedgerStateMachine {
    type SnapshotData = LedgerSnapshot;
    type SnapshotBuilder = LedgerSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let st = self.cell.read();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Collect first: the shard lock is synchronous and must not be held across an await.
        let batch: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let mut replies = Vec::with_capacity(batch.len());
        let mut commands = 0;
        let (journal_len, applied) = {
            let mut st = self.cell.write();
            let st = &mut *st;
            self.sink.clear();
            for (entry, responder) in batch {
                let log_id = openraft::entry::RaftEntry::log_id(&entry);
                if let Some(prev) = &st.last_applied {
                    assert!(log_id.index > prev.index, "applied index must only grow: {log_id} after {prev}");
                }
                let reply = match entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(proposal) => Some(match &proposal.request {
                        Request::Commands(cmds) => Reply::Outcomes({
                            commands += cmds.len() as u64;
                            cmds.iter()
                                .map(|cmd| {
                                    let replaced =
                                        self.hook.as_ref().and_then(|h| h.before_apply(&st.ledger, cmd, log_id.index));
                                    st.ledger.apply(replaced.as_ref().unwrap_or(cmd), proposal.at, &mut self.sink)
                                })
                                .collect()
                        }),
                        Request::Tick => {
                            st.ledger.tick(proposal.at, &mut self.sink);
                            Reply::Ticked
                        }
                    }),
                    EntryPayload::Membership(m) => {
                        st.membership = StoredMembership::new(Some(log_id), m);
                        None
                    }
                };
                st.last_applied = Some(log_id);
                if let Some(responder) = responder {
                    replies.push((responder, reply.unwrap_or(Reply::Ticked)));
                }
            }
            st.journal.append(&self.sink)?;
            // A checkpoint's writes leave memory once the store has them.
            st.ledger.release_committed();
            (st.journal.len(), st.last_applied)
        };
        self.cell.journal_len.send_replace(journal_len);
        self.cell.applied.send_replace(applied);
        self.cell.commands_since_snapshot.fetch_add(commands, std::sync::atomic::Ordering::Relaxed);
        for (responder, reply) in replies {
            responder.send(reply);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.builder()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: LedgerSnapshot) -> Result<(), io::Error> {
        let started = tokio::time::Instant::now();
        let source = snapshot.state_source().await?;
        // The state current now: a disk state's next generation is named after it. Only this
        // state machine replaces it, so it is still current when the install takes the lock.
        let current_disk_dir = match &self.cell.read().ledger.0 {
            Inner::Disk(current) => Some(current.dir.clone()),
            Inner::Memory(_) => None,
        };
        let last_log_id = meta.last_log_id;
        let (shard, storage, cell, vfs, dir, meta) =
            (self.shard, self.storage, self.cell.clone(), self.vfs.clone(), self.dir.clone(), meta.clone());
        let received_at = snapshot.received_at.clone();
        // Decoding, checking and building the new state take seconds of CPU and IO for a large
        // state. They run off the runtime's worker threads (a worker blocked here stalled every
        // other shard's commits: BENCHMARKS.md, "Catching up by snapshot under load") and
        // without the shard's lock, which is taken only to swap the new state in.
        let install = move || -> io::Result<u64> {
            let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
            // What the state says of itself, against its metadata and the received journal.
            let check = |state_meta: &SnapshotMeta, of: ShardId, head: (u64, Hash), point: JournalPoint| {
                if of != shard {
                    return Err(invalid("snapshot belongs to another shard"));
                }
                if state_meta.last_log_id != meta.last_log_id || head != (point.entries, point.head) {
                    return Err(invalid("snapshot state does not match its metadata"));
                }
                // `finish` verified it against the state's head; the two must name the same.
                if let Some(received) = &received_at
                    && received.point() != point
                {
                    return Err(invalid("snapshot journal does not match its state"));
                }
                Ok(())
            };
            let (built, journal_point) = match (storage, &current_disk_dir) {
                (StateStorage::Memory, _) => {
                    let state = source.decode()?;
                    let point = state.journal_point();
                    check(&state.meta, state.image.shard(), state.image.head(), point)?;
                    (Built::Memory(Ledger::from_image(state.image), source.to_encoded()?), point)
                }
                (StateStorage::Disk { cache_bytes }, Some(current)) => {
                    // Into a fresh generation, checkpointed (below, under the lock) before the
                    // current one is dropped: until then its metadata is empty, so a crash
                    // halfway (or a state that fails its checks) leaves the current one, which
                    // the next open uses.
                    let next = next_generation(current);
                    if next.exists() {
                        std::fs::remove_dir_all(&next)?;
                    }
                    let (disk, _) = DiskState::open(&next, cache_bytes).map_err(io::Error::other)?;
                    let (ledger, state_meta, point) = import_streamed(disk, &source)?;
                    check(&state_meta, ledger.shard(), ledger.head(), point)?;
                    (Built::Disk(ledger, next, point), point)
                }
                (StateStorage::Disk { .. }, None) => unreachable!("the state is where it was opened"),
            };
            let mut st = cell.write();
            match &received_at {
                Some(received) => st.journal.replace(vfs.as_ref(), received)?,
                None => {
                    // Our own snapshot (restart): keep the journal up to it and cut the rest.
                    st.journal = Journal::open(vfs.as_ref(), &journal_path(&dir), shard, journal_point)
                        .map_err(io::Error::other)?;
                }
            }
            let replaced = match built {
                Built::Memory(ledger, encoded) => {
                    vfs.write_atomic(&snapshot_path(&dir), &encode_snapshot_file(&encoded))?;
                    st.ledger = ShardLedger::memory(ledger);
                    None
                }
                Built::Disk(ledger, next, point) => {
                    let ledger = checkpoint_durably(ledger, point, meta.clone(), &st.journal)?;
                    st.ledger = ShardLedger::disk(ledger, &next);
                    current_disk_dir
                }
            };
            st.last_applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
            let journal_len = st.journal.len();
            drop(st);
            if let Some(old_dir) = replaced
                && let Err(e) = std::fs::remove_dir_all(&old_dir)
            {
                // The next open removes it.
                tracing::warn!(path = %old_dir.display(), error = %e, "could not remove the replaced on-disk state");
            }
            Ok(journal_len)
        };
        // At the lowest CPU priority, like a snapshot build: the node's other shards go on
        // committing meanwhile, and at normal priority the install took the cores from them
        // (install-run p50 15-21 ms against 8-11 ms niced; the catch-up itself took 6.5-8.4 s
        // against 4.2-5.6 s on this shared 2-core machine: BENCHMARKS.md, "Catching up by
        // snapshot under load").
        let journal_len = off_the_apply_path(self.io, &self.cell.background, install).await?;
        tracing::info!(
            shard = %self.shard,
            last_log_id = ?last_log_id,
            journal_entries = journal_len,
            ms = started.elapsed().as_millis() as u64,
            "installed snapshot"
        );
        self.cell.journal_len.send_replace(journal_len);
        self.cell.applied.send_replace(last_log_id);
        // The installed state is checkpointed (or an image): nothing of it waits in memory.
        self.cell.commands_since_snapshot.store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::type_config::alias::SnapshotOf<TypeConfig, LedgerSnapshot>>, io::Error> {
        if let StateStorage::Disk { .. } = self.storage {
            let st = self.cell.read();
            let Inner::Disk(d) = &st.ledger.0 else { unreachable!("the state is where it was opened") };
            let view = d.ledger.state().checkpoint_view();
            let Some(cp) = Checkpoint::decode(&d.dir, &view.user()).map_err(io::Error::other)? else {
                return Ok(None);
            };
            if st.journal.len() < cp.journal_entries {
                return Err(io::Error::other("journal is shorter than the current checkpoint"));
            }
            return Ok(Some(openraft::Snapshot {
                snapshot: LedgerSnapshot {
                    state: SnapshotBody::Checkpoint(Arc::new(view), self.spooler.clone()),
                    journal: st.journal.prefix(cp.journal_entries)?,
                    journal_head: cp.journal_head,
                    received_at: None,
                },
                meta: cp.meta,
            }));
        }
        let path = snapshot_path(&self.dir);
        let bytes = match self.vfs.read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (body, state) = decode_snapshot_file(&path, &bytes).map_err(io::Error::other)?;
        let st = self.cell.read();
        if st.journal.len() < state.journal_entries {
            return Err(io::Error::other("journal is shorter than the current snapshot"));
        }
        Ok(Some(openraft::Snapshot {
            meta: state.meta,
            snapshot: LedgerSnapshot {
                state: SnapshotBody::Encoded(Arc::new(body)),
                journal: st.journal.prefix(state.journal_entries)?,
                journal_head: state.journal_head,
                received_at: None,
            },
        }))
    }
}

/// The chain head an encoded [`SnapshotState`] names, or `None` if it does not decode.
pub(crate) fn journal_head_of(state: &[u8]) -> Option<Hash> {
    postcard::from_bytes::<SnapshotState>(state).ok().map(|s| s.journal_head)
}

/// Where a receiver records which snapshot it is receiving and how much of it is durable.
fn receive_record_path(dir: &Path) -> PathBuf {
    dir.join("snapshot.recv")
}

/// Where a snapshot's encoded state is received.
fn received_state_path(dir: &Path) -> PathBuf {
    dir.join("state.recv")
}

/// `snapshot.recv`: the snapshot being received and its durable progress.
#[derive(Debug, Serialize, Deserialize)]
struct ReceiveRecord {
    identity: SnapshotIdentity,
    progress: SnapshotProgress,
}

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// A snapshot being received from a peer, in pieces, kept in the shard's directory so that a
/// transfer cut off (a deadline, a dropped connection, either node restarting) resumes where it
/// stopped: `snapshot.recv` names the snapshot and how many of its bytes are durable,
/// `state.recv` and `journal.recv` hold them. Only bytes made durable by [`save`](Self::save)
/// count; a resume truncates anything after them (a torn tail).
pub(crate) struct SnapshotReceiver {
    dir: PathBuf,
    identity: SnapshotIdentity,
    state: Arc<dyn VFile>,
    journal: Arc<dyn VFile>,
    progress: SnapshotProgress,
}

impl SnapshotReceiver {
    /// How much of `identity` this shard holds durably: nothing unless the last transfer it
    /// received was of the same snapshot. A record this build cannot read also counts as
    /// nothing (the transfer starts over), so the record's format needs no version.
    pub(crate) fn held(vfs: &dyn Vfs, shard_dir: &Path, identity: &SnapshotIdentity) -> SnapshotProgress {
        let record = vfs.read(&receive_record_path(shard_dir)).ok();
        match record.and_then(|bytes| postcard::from_bytes::<ReceiveRecord>(&bytes).ok()) {
            Some(r) if r.identity == *identity => r.progress,
            _ => SnapshotProgress::default(),
        }
    }

    /// Continues receiving `identity` at `from`, which must be what this shard holds (see
    /// [`held`](Self::held)); `from` zero starts the snapshot over and drops whatever an earlier
    /// transfer left. An `InvalidInput` error is the sender's mistake, to refuse.
    pub(crate) fn resume(
        vfs: &dyn Vfs,
        shard_dir: &Path,
        identity: SnapshotIdentity,
        from: SnapshotProgress,
    ) -> io::Result<Self> {
        let fresh = from == SnapshotProgress::default();
        if !fresh {
            let held = Self::held(vfs, shard_dir, &identity);
            if from != held {
                return Err(refused(format!(
                    "cannot resume at state byte {} and journal byte {}: {} and {} are held",
                    from.state_bytes, from.journal_bytes, held.state_bytes, held.journal_bytes
                )));
            }
        }
        if from.state_bytes > identity.state_bytes
            || from.journal_bytes > identity.journal_bytes
            || (from.journal_bytes > 0 && from.state_bytes < identity.state_bytes)
        {
            return Err(refused("a resume point outside the snapshot".into()));
        }
        vfs.create_dir_all(shard_dir)?;
        if fresh {
            Self::discard(vfs, shard_dir)?;
        }
        let state = vfs.open(&received_state_path(shard_dir))?;
        let journal = vfs.open(&received_journal_path(shard_dir))?;
        // Bytes past the durable progress are a torn tail of an interrupted piece.
        state.truncate(from.state_bytes)?;
        journal.truncate(from.journal_bytes)?;
        let receiver = Self { dir: shard_dir.to_path_buf(), identity, state, journal, progress: from };
        if fresh {
            receiver.save(vfs)?;
        }
        Ok(receiver)
    }

    /// Appends encoded state, which comes whole before any journal.
    pub(crate) fn write_state(&mut self, bytes: &[u8]) -> io::Result<()> {
        let to = self.progress.state_bytes + bytes.len() as u64;
        if self.progress.journal_bytes > 0 || to > self.identity.state_bytes {
            return Err(refused("more state than the snapshot holds".into()));
        }
        self.state.append(bytes)?;
        self.progress.state_bytes = to;
        Ok(())
    }

    /// Appends journal, which follows the whole state.
    pub(crate) fn write_journal(&mut self, bytes: &[u8]) -> io::Result<()> {
        let to = self.progress.journal_bytes + bytes.len() as u64;
        if self.progress.state_bytes < self.identity.state_bytes {
            return Err(refused("journal before the whole state".into()));
        }
        if to > self.identity.journal_bytes {
            return Err(refused("more journal than the snapshot holds".into()));
        }
        self.journal.append(bytes)?;
        self.progress.journal_bytes = to;
        Ok(())
    }

    /// Makes what has arrived durable and records it, so a later transfer resumes after it.
    pub(crate) fn save(&self, vfs: &dyn Vfs) -> io::Result<()> {
        self.state.sync()?;
        self.journal.sync()?;
        let record = ReceiveRecord { identity: self.identity.clone(), progress: self.progress };
        vfs.write_atomic(&receive_record_path(&self.dir), &postcard::to_allocvec(&record).expect("a record encodes"))
    }

    /// What has arrived.
    pub(crate) fn progress(&self) -> SnapshotProgress {
        self.progress
    }

    /// Whether every byte of the snapshot has arrived.
    pub(crate) fn is_whole(&self) -> bool {
        self.progress.state_bytes == self.identity.state_bytes
            && self.progress.journal_bytes == self.identity.journal_bytes
    }

    /// The received snapshot, verified: the state's SHA-256 and the journal's chain, from the
    /// shard's genesis to the head the sender named. A snapshot that fails either is discarded,
    /// so the next transfer starts over. Reads the state in pieces, and leaves it in its file.
    pub(crate) fn finish(self, vfs: &dyn Vfs, shard: ShardId) -> io::Result<LedgerSnapshot> {
        assert!(self.is_whole(), "finish a snapshot before it has all arrived");
        let state_len = self.identity.state_bytes;
        let mut hasher = Sha256::new();
        let mut state = io::BufReader::with_capacity(SPOOL_BUFFER, VFileReader::new(&*self.state, state_len));
        loop {
            let piece = io::BufRead::fill_buf(&mut state)?;
            if piece.is_empty() {
                break;
            }
            hasher.update(piece);
            let n = piece.len();
            io::BufRead::consume(&mut state, n);
        }
        let journal_path = received_journal_path(&self.dir);
        let checked = if hasher.finalize()[..] != self.identity.state_digest {
            Err("the received state does not match its digest".to_string())
        } else {
            let expected = (self.identity.journal_entries, self.identity.journal_head);
            Journal::verify_received(vfs, &journal_path, shard, expected).map_err(|e| e.to_string())
        };
        let received = match checked {
            Ok(received) => received,
            Err(why) => {
                Self::discard(vfs, &self.dir)?;
                return Err(refused(why));
            }
        };
        Ok(LedgerSnapshot {
            state: SnapshotBody::File(Arc::new(StateFile {
                file: self.state,
                len: state_len,
                digest: self.identity.state_digest,
            })),
            journal: JournalPrefix {
                file: self.journal,
                entries: self.identity.journal_entries,
                bytes: self.identity.journal_bytes,
            },
            journal_head: self.identity.journal_head,
            received_at: Some(received),
        })
    }

    /// Removes whatever a transfer left in the shard's directory (after an install, which has
    /// moved the journal into place, or before starting over).
    pub(crate) fn discard(vfs: &dyn Vfs, shard_dir: &Path) -> io::Result<()> {
        vfs.remove(&receive_record_path(shard_dir))?;
        vfs.remove(&received_state_path(shard_dir))?;
        vfs.remove(&received_journal_path(shard_dir))
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use crate::formats::{deposit, pinned, pinned_digest, postcard, snapshot_meta};

    /// The snapshot file of a shard with one deposit, byte for byte (its header carries the
    /// SHA-256 of the body, so pinning the header pins the body). Failing means snapshots
    /// written before the change no longer load: bump `SNAPSHOT_VERSION`.
    #[test]
    fn a_snapshot_file_encodes_as_pinned() {
        let mut ledger = Ledger::new(ShardId(3), LedgerConfig::default());
        let mut entries = Vec::new();
        let at = ledger_core::ClusterTime::from_millis(1_700_000_000_000);
        let open = Command::OpenAccount {
            tx: ledger_core::TxId::new("o1").unwrap(),
            player: ledger_core::PlayerId::new("alice").unwrap(),
            currency: ledger_core::Currency::new("EUR").unwrap(),
        };
        ledger.apply(&open, at, &mut entries);
        ledger.apply(&deposit(), at, &mut entries);
        let state = SnapshotState {
            meta: snapshot_meta(),
            image: ledger.to_image(),
            journal_entries: entries.len() as u64,
            journal_bytes: 512,
            journal_head: ledger.head().1,
        };
        let body = postcard(&state);
        let file = encode_snapshot_file(&EncodedState::new(body.clone()));
        pinned(
            "the snapshot file header (magic, version, body digest)",
            &file[..37],
            "4c534e50021b3131f0d109bf9d7962fefa8e4cd0325a9e5e3cf13d4cb79e380902fc656b1d",
        );
        pinned_digest("the snapshot file", &file, "2360bdee310073fb8e942031175dffb3885eca0878f49d49a3a8e442831ae002");
        let (_, back) = decode_snapshot_file(Path::new("snapshot.bin"), &file).unwrap();
        assert_eq!(postcard(&back), body, "decodes to the same state");
    }
}

#[cfg(test)]
mod receive_tests {
    //! A snapshot received in pieces: resumed only where the receiver's durable progress says,
    //! torn tails cut, and nothing installed that fails its digest or its chain.
    use super::*;
    use crate::store::vfs::StdFs;

    /// The shard `journal::tests::entries` writes for.
    const SHARD: ShardId = ShardId(1);

    /// A journal of `n` entries (bytes, and its point) and some state bytes.
    fn snapshot_parts(dir: &Path, n: usize) -> (Vec<u8>, JournalPoint, Vec<u8>) {
        let entries = crate::store::journal::tests::entries(n);
        let path = dir.join("source.log");
        let mut journal = Journal::open(&StdFs, &path, SHARD, JournalPoint::empty(SHARD)).unwrap();
        journal.append(&entries).unwrap();
        journal.sync().unwrap();
        let state: Vec<u8> = (0..5000u32).flat_map(|i| i.to_le_bytes()).collect();
        (std::fs::read(&path).unwrap(), journal.point(), state)
    }

    fn identity(state: &[u8], journal: &[u8], point: JournalPoint, index: u64) -> SnapshotIdentity {
        SnapshotIdentity {
            last_log_id: Some(crate::formats::log_id(1, index)),
            state_bytes: state.len() as u64,
            state_digest: Sha256::digest(state).into(),
            journal_entries: point.entries,
            journal_bytes: journal.len() as u64,
            journal_head: point.head,
        }
    }

    #[test]
    fn a_transfer_cut_off_resumes_at_the_durable_progress_and_installs_verified() {
        let dir = tempfile::tempdir().unwrap();
        let shard_dir = dir.path().join("shard");
        let (journal, point, state) = snapshot_parts(dir.path(), 20);
        let id = identity(&state, &journal, point, 5);
        let zero = SnapshotProgress::default();
        assert_eq!(SnapshotReceiver::held(&StdFs, &shard_dir, &id), zero, "nothing held yet");

        // First piece: half the state, made durable.
        let mut r = SnapshotReceiver::resume(&StdFs, &shard_dir, id.clone(), zero).unwrap();
        r.write_state(&state[..8000]).unwrap();
        r.save(&StdFs).unwrap();
        // Then bytes that never get saved (the connection drops, the node crashes): a torn tail.
        r.write_state(&state[8000..9000]).unwrap();
        drop(r);
        let held = SnapshotReceiver::held(&StdFs, &shard_dir, &id);
        assert_eq!(held, SnapshotProgress { state_bytes: 8000, journal_bytes: 0 });
        // Another snapshot is not this one.
        assert_eq!(SnapshotReceiver::held(&StdFs, &shard_dir, &identity(&state, &journal, point, 6)), zero);

        // A resume anywhere but the durable progress is refused, and changes nothing.
        let wrong = SnapshotProgress { state_bytes: 9000, journal_bytes: 0 };
        let e = SnapshotReceiver::resume(&StdFs, &shard_dir, id.clone(), wrong).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert_eq!(SnapshotReceiver::held(&StdFs, &shard_dir, &id), held);

        // The second piece continues at the durable point; the torn tail is cut.
        let mut r = SnapshotReceiver::resume(&StdFs, &shard_dir, id.clone(), held).unwrap();
        assert!(r.write_journal(&journal[..10]).is_err(), "no journal before the whole state");
        r.write_state(&state[8000..]).unwrap();
        assert!(r.write_state(&[0]).is_err(), "no more state than announced");
        r.write_journal(&journal[..100]).unwrap();
        r.save(&StdFs).unwrap();
        let held = SnapshotReceiver::held(&StdFs, &shard_dir, &id);
        assert_eq!(held, SnapshotProgress { state_bytes: state.len() as u64, journal_bytes: 100 });
        let mut r = SnapshotReceiver::resume(&StdFs, &shard_dir, id.clone(), held).unwrap();
        r.write_journal(&journal[100..]).unwrap();
        assert!(r.is_whole());
        let snapshot = r.finish(&StdFs, SHARD).unwrap();
        let SnapshotBody::File(got) = &snapshot.state else { panic!("a received state stays in its file") };
        let got = StateSource::File(got.clone());
        let mut bytes = vec![0u8; got.len() as usize];
        got.read_at(0, &mut bytes).unwrap();
        assert_eq!(bytes, state, "the state arrives byte for byte, torn tail cut");
        assert_eq!((snapshot.journal.entries, snapshot.journal.bytes), (20, journal.len() as u64));
        assert_eq!(std::fs::read(received_journal_path(&shard_dir)).unwrap(), journal);
    }

    #[test]
    fn a_snapshot_that_fails_its_digest_or_its_chain_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let shard_dir = dir.path().join("shard");
        let (journal, point, state) = snapshot_parts(dir.path(), 8);
        let zero = SnapshotProgress::default();
        let whole = |id: &SnapshotIdentity, state: &[u8], journal: &[u8]| {
            let mut r = SnapshotReceiver::resume(&StdFs, &shard_dir, id.clone(), zero).unwrap();
            r.write_state(state).unwrap();
            r.write_journal(journal).unwrap();
            r.save(&StdFs).unwrap();
            r
        };

        // A state byte flipped in transit.
        let id = identity(&state, &journal, point, 5);
        let mut bad_state = state.clone();
        bad_state[77] ^= 1;
        let e = whole(&id, &bad_state, &journal).finish(&StdFs, SHARD).err().unwrap();
        assert!(e.to_string().contains("digest"), "{e}");
        assert_eq!(SnapshotReceiver::held(&StdFs, &shard_dir, &id), zero, "received again from the start");

        // A journal whose chain does not end at the head the sender named.
        let mut other = id.clone();
        other.journal_head[0] ^= 1;
        let e = whole(&other, &state, &journal).finish(&StdFs, SHARD).err().unwrap();
        assert!(e.to_string().contains("expects"), "{e}");
        assert_eq!(SnapshotReceiver::held(&StdFs, &shard_dir, &other), zero);

        // A journal byte flipped in transit.
        let mut bad_journal = journal.clone();
        bad_journal[50] ^= 1;
        let e = whole(&id, &state, &bad_journal).finish(&StdFs, SHARD).err().unwrap();
        assert!(e.to_string().contains("damaged"), "{e}");

        // And the good one still goes through, from the start.
        assert!(whole(&id, &state, &journal).finish(&StdFs, SHARD).is_ok());
    }
}

#[cfg(test)]
mod checkpoint_tests {
    //! Checkpoints of the state on disk across the change of where accounts are kept.
    use super::*;
    use crate::store::vfs::StdFs;

    /// A checkpoint sent to a peer is encoded into a file straight from the store, piece by
    /// piece: byte for byte what encoding the whole image read out gives, and decoded back as a
    /// stream to the same state. A second transfer of the same checkpoint reuses the file, which
    /// is removed once nothing uses it.
    #[tokio::test]
    async fn a_checkpoint_spooled_for_a_peer_is_its_image_byte_for_byte() {
        use crate::store::disk_state::tests::{STEP_MS, commands, config};
        let dir = tempfile::tempdir().unwrap();
        let shard = ShardId(3);
        let mut ledger = Ledger::new(shard, config());
        let mut entries = Vec::new();
        let mut t = 1_700_000_000_000u64;
        for cmd in commands(7, 3_000) {
            t += STEP_MS;
            ledger.apply(&cmd, ledger_core::ClusterTime::from_millis(t), &mut entries);
        }
        let mut journal = Journal::open(&StdFs, &journal_path(dir.path()), shard, JournalPoint::empty(shard)).unwrap();
        journal.append(&entries).unwrap();
        journal.sync().unwrap();
        let point = journal.point();
        let meta = crate::formats::snapshot_meta();
        let image = ledger.to_image();
        let (_, retained) = image.clone().into_parts();
        assert!(retained.ids.len() > 100 && !retained.rounds.is_empty() && !retained.retention.is_empty());
        let want = SnapshotState {
            meta: meta.clone(),
            image: image.clone(),
            journal_entries: point.entries,
            journal_bytes: point.bytes,
            journal_head: point.head,
        };
        let (disk, _, _) = open_disk_state(dir.path(), 1 << 20).unwrap();
        drop(checkpoint_durably(filled(disk, image), point, meta, &journal).unwrap());
        drop(journal);

        let storage = StateStorage::Disk { cache_bytes: 1 << 20 };
        let vfs: Arc<dyn Vfs> = Arc::new(StdFs);
        let (mut sm, cell) =
            LedgerStateMachine::open(vfs, IoMode::Thread, dir.path(), shard, config(), storage, None).unwrap();
        let snapshot = sm.get_current_snapshot().await.unwrap().expect("a checkpoint");
        let source = snapshot.snapshot.state_source().await.unwrap();
        let mut bytes = vec![0u8; source.len() as usize];
        source.read_at(0, &mut bytes).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&want).unwrap(), "the spooled state is the image's encoding");
        assert_eq!(source.digest(), <Hash>::from(Sha256::digest(&bytes)));
        assert_eq!(postcard::to_allocvec(&source.decode().unwrap()).unwrap(), bytes, "decoded as a stream");

        // Installed elsewhere as it is decoded: the same state, retained parts and accounts.
        let other = tempfile::tempdir().unwrap();
        let (disk, _) = DiskState::open(&other.path().join("0"), 1 << 20).unwrap();
        let (mut imported, state_meta, at) = import_streamed(disk, &source).unwrap();
        assert_eq!((state_meta, at), (want.meta.clone(), point));
        imported.state_mut().flush(b"installed");
        let (core, retained) = ledger.to_image().into_parts();
        assert_eq!(imported.state().checkpoint_view().export(), retained, "retained state");
        assert_eq!(imported.accounts(), ledger.accounts(), "accounts");
        assert_eq!(imported.core_image(), core, "core image");
        // A state whose ids are not in key order (not what any sender writes) is refused.
        let (before, between, after) = core.image_pieces();
        let encoded = |ids: &[(StateKey, IdRecord)]| {
            let pieces = [
                postcard::to_allocvec(&want.meta).unwrap(),
                postcard::to_allocvec(&before).unwrap(),
                postcard::to_allocvec(ids).unwrap(),
                postcard::to_allocvec(&retained.rounds).unwrap(),
                postcard::to_allocvec(&between).unwrap(),
                postcard::to_allocvec(&retained.retention).unwrap(),
                postcard::to_allocvec(&after).unwrap(),
                postcard::to_allocvec(&(point.entries, point.bytes, point.head)).unwrap(),
            ];
            StateSource::Memory(Arc::new(EncodedState::new(pieces.concat())))
        };
        assert_eq!(
            postcard::to_allocvec(&encoded(&retained.ids).decode().unwrap()).unwrap(),
            bytes,
            "the pieces make the image"
        );
        let mut unordered = retained.ids.clone();
        unordered.swap(10, 20);
        let (disk, _) = DiskState::open(&other.path().join("1"), 1 << 20).unwrap();
        let Err(e) = import_streamed(disk, &encoded(&unordered)) else { panic!("an unordered state is refused") };
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("key order"), "{e}");

        let again = sm.get_current_snapshot().await.unwrap().unwrap().snapshot.state_source().await.unwrap();
        let (StateSource::File(a), StateSource::File(b)) = (&source, &again) else { panic!("spooled into files") };
        assert!(Arc::ptr_eq(a, b), "the newest spool is reused");
        let spooled = || StdFs.list(dir.path()).unwrap().into_iter().filter(|n| n.starts_with(SPOOL_PREFIX)).count();
        assert_eq!(spooled(), 1);
        drop((source, again, snapshot, sm, cell));
        assert_eq!(spooled(), 1, "kept until the next spool or open");
        let (_sm, _cell) = LedgerStateMachine::open(
            Arc::new(StdFs),
            IoMode::Thread,
            dir.path(),
            shard,
            config(),
            StateStorage::Disk { cache_bytes: 1 << 20 },
            None,
        )
        .unwrap();
        assert_eq!(spooled(), 0, "an open removes what an earlier run spooled");
    }

    /// A version 1 checkpoint (every account in its core image, none in the state) still opens,
    /// and the next checkpoint moves the accounts into the state: reopened after it, every
    /// balance is the same.
    #[tokio::test]
    async fn a_version_1_checkpoint_opens_and_its_accounts_move_into_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let shard = ShardId(1);
        let mut ledger = Ledger::new(shard, LedgerConfig::default());
        let mut entries = Vec::new();
        let at = ledger_core::ClusterTime::from_millis(1_700_000_000_000);
        let eur = ledger_core::Currency::new("EUR").unwrap();
        for p in 0..20 {
            let player = ledger_core::PlayerId::new(format!("p{p}")).unwrap();
            let tx = |what: &str| ledger_core::TxId::new(format!("{what}-{p}")).unwrap();
            ledger.apply(
                &Command::OpenAccount { tx: tx("open"), player: player.clone(), currency: eur },
                at,
                &mut entries,
            );
            let amount = ledger_core::Amount::new(100 + p).unwrap();
            ledger.apply(&Command::Deposit { tx: tx("dep"), player, currency: eur, amount }, at, &mut entries);
        }
        let want = ledger.accounts();
        assert_eq!(want.len(), 21, "20 wallets and the external account");
        let mut journal = Journal::open(&StdFs, &journal_path(dir.path()), shard, JournalPoint::empty(shard)).unwrap();
        journal.append(&entries).unwrap();
        journal.sync().unwrap();
        let point = journal.point();
        drop(journal);
        // Written as version 1 did: the retained state in the state, the accounts in the
        // checkpoint's core image.
        let old = Checkpoint {
            meta: crate::formats::snapshot_meta(),
            core: ledger.core_image(),
            journal_entries: point.entries,
            journal_bytes: point.bytes,
            journal_head: point.head,
        };
        let mut user = vec![CHECKPOINT_VERSION_ACCOUNTS_INSIDE];
        user.extend(postcard::to_allocvec(&old).unwrap());
        let (mut disk, cp, _) = open_disk_state(dir.path(), 1 << 20).unwrap();
        assert!(cp.is_none());
        disk.import(ledger.to_image().into_parts().1);
        disk.flush(&user);
        disk.persist();
        drop(disk);

        let open = || {
            let storage = StateStorage::Disk { cache_bytes: 1 << 20 };
            let vfs: Arc<dyn Vfs> = Arc::new(StdFs);
            LedgerStateMachine::open(vfs, IoMode::Thread, dir.path(), shard, LedgerConfig::default(), storage, None)
                .unwrap()
        };
        let (sm, cell) = open();
        assert_eq!(cell.read().ledger.accounts(), want, "a version 1 checkpoint's accounts");
        let mut builder = sm.builder();
        builder.build_snapshot().await.unwrap();
        drop((sm, cell));
        let (disk, cp, _) = open_disk_state(dir.path(), 1 << 20).unwrap();
        let cp = cp.expect("a checkpoint");
        assert!(cp.core.accounts().is_empty(), "the new checkpoint holds no accounts");
        assert_eq!(disk.stored_accounts(), want, "the state holds them");
        drop(disk);
        let (_sm, cell) = open();
        assert_eq!(cell.read().ledger.accounts(), want, "reopened after the new checkpoint");
    }
}

#[cfg(test)]
mod background_tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// Snapshot work on a thread of its own is counted until the thread is done with it, even
    /// when the task that awaited it is gone (as at a node's shutdown), and `idle` waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_work_is_waited_for_after_its_task_is_gone() {
        let background = Background::default();
        assert!(background.is_idle());
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        let task = {
            let (background, done) = (background.clone(), done.clone());
            tokio::spawn(async move {
                off_the_apply_path(IoMode::Thread, &background, move || {
                    wait.recv().expect("told to go");
                    done.store(true, Ordering::SeqCst);
                    Ok(())
                })
                .await
            })
        };
        while background.is_idle() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        let idle = tokio::time::timeout(Duration::from_millis(100), background.idle()).await;
        assert!(idle.is_err(), "the work still runs: not idle");
        go.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), background.idle()).await.expect("idle once the work ends");
        assert!(done.load(Ordering::SeqCst), "idle only after the work ran");
    }
}
