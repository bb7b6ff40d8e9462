//! The node-wide write-ahead log: every shard's Raft log, vote and commit index in one stream of
//! checksummed records, made durable by one writer with group commit.
//!
//! # Why one log per node
//!
//! A node hosts many shards. With a file per shard, N shards pay N fsyncs for the same instant's
//! writes; here all shards' appends, votes and truncations queue to one writer, which writes
//! whatever has queued as one buffer and makes it durable with one `fdatasync`. Under load the
//! queue fills while the previous fsync runs, so the cost of an fsync is shared by everything
//! that arrived during it.
//!
//! # Format
//!
//! Segment files `wal/<16 hex digits>.wal`, each a sequence of frames:
//! `magic "WL" | u32 BE length | u32 BE CRC-32C of the payload | payload (postcard Record)`.
//! A new segment starts with a checkpoint of every shard's vote, commit index and purge point,
//! so a segment whose entries are all purged can be deleted without losing metadata.
//!
//! # Recovery
//!
//! Segments are replayed in order (only each shard's newest entries stay in memory; see
//! [`ShardLog`]), each shard starting from its final purge point
//! (the newest `Purge` or checkpoint of any segment): a segment is deleted once a newer one
//! records a purge past its entries, and that record may follow the newer segment's first
//! entries. After the purge point, entries must be contiguous. A frame that fails its checksum at the very end
//! of the newest segment is a torn write from a crash before fsync returned: nothing in it was
//! acknowledged, so it is truncated away. Any other bad frame — in an older segment, or followed
//! by a valid frame — is corruption of data that was acknowledged, and recovery stops with an
//! error instead of silently dropping committed entries.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use super::vfs::{VFile, Vfs};
use crate::raft::{LogId, RaftEntry as Entry, TypeConfig, Vote};

const FRAME_MAGIC: [u8; 2] = *b"WL";
const FRAME_HEADER_BYTES: usize = 10;
/// Largest payload a frame may claim; anything larger is garbage, not a record.
const FRAME_PAYLOAD_MAX: usize = 256 << 20;
/// A segment is closed once it grows past this size.
pub(crate) const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// At most this much queued work is written per fsync, to bound write latency.
const BATCH_BYTES_MAX: usize = 16 << 20;

/// The durable metadata of one shard's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShardMeta {
    pub(crate) vote: Option<Vote>,
    pub(crate) committed: Option<LogId>,
    pub(crate) purged: Option<LogId>,
}

/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by `format_tests` below.
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    /// `last`, the index of the last entry, precedes the entries so that recovery can skip
    /// entries a snapshot covers without decoding them (see [`entries_head`]).
    Entries {
        shard: u32,
        last: u64,
        entries: Vec<Entry>,
    },
    Vote {
        shard: u32,
        vote: Vote,
    },
    Committed {
        shard: u32,
        committed: Option<LogId>,
    },
    TruncateAfter {
        shard: u32,
        after: Option<LogId>,
    },
    Purge {
        shard: u32,
        upto: LogId,
    },
    Checkpoint {
        shards: Vec<(u32, ShardMeta)>,
    },
}

/// Why the log could not be opened.
#[derive(Debug, Error)]
pub enum WalError {
    /// The disk failed.
    #[error("write-ahead log IO error: {0}")]
    Io(#[from] io::Error),
    /// Acknowledged data is damaged. The node must not start on it.
    #[error(
        "write-ahead log segment {segment} is corrupt at byte {offset}: {what}. Acknowledged entries may be \
         damaged, so the node refuses to start. Restore the disk, or wipe this node's data directory and \
         add it back to the cluster under a new node id."
    )]
    Corrupt {
        /// The segment file.
        segment: String,
        /// Byte offset of the bad frame.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

/// Where an entries record's payload lies on disk, once the writer has made it durable.
#[derive(Clone)]
struct Located {
    /// The segment, held open: a segment deleted while a reader holds this stays readable.
    file: Arc<dyn VFile>,
    frame_at: u64,
    frame_len: u32,
}

/// One `Entries` record of a shard: which of its entries are still live (truncation and purges
/// shrink the range), how many bytes it held, and where it is on disk once durable.
struct Frame {
    /// Order of appends to this shard; what the writer reports a location against.
    seq: u64,
    first: u64,
    last: u64,
    bytes: usize,
    at: Option<Located>,
}

/// One shard's log as held in memory: its metadata, the id of every entry not yet purged, and
/// the entries themselves only for the newest `cache_bytes` (counted as encoded bytes).
///
/// Why: a shard's log between two snapshots can be gigabytes (snapshots are counted in entries,
/// and an entry carries up to 1,024 commands), and every replica used to hold all of it. Older
/// entries are read back from their write-ahead log segment when asked for, which happens only
/// for a follower far behind or an apply far behind the commit point (after a restart); an
/// entry leaves memory only once it is durable, so the segment always has it.
pub(crate) struct ShardLog {
    pub(crate) meta: ShardMeta,
    /// Every unpurged entry's id, oldest first.
    ids: VecDeque<LogId>,
    /// The resident tail: the last `entries.len()` of `ids`.
    entries: VecDeque<Entry>,
    /// Every unpurged entry's record, oldest first; `frames[..cold]` are not resident.
    frames: VecDeque<Frame>,
    cold: usize,
    resident_bytes: usize,
    cache_bytes: usize,
    next_seq: u64,
}

/// Log entries read back from segments since the process started, for tests and the simulator
/// to show the path is taken (a process-wide count, like a metric).
static ENTRIES_READ_BACK: AtomicU64 = AtomicU64::new(0);

/// How many log entries this process has read back from write-ahead log segments because they
/// were no longer held in memory.
pub fn entries_read_back() -> u64 {
    ENTRIES_READ_BACK.load(Ordering::Relaxed)
}

/// What [`ShardLog::plan`] found for a range: records to read back from disk (each with the
/// indexes wanted from it), then the resident entries after them.
pub(crate) struct Plan {
    cold: Vec<(Located, u64, u64)>,
    resident: Vec<Entry>,
}

impl std::fmt::Debug for ShardLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLog")
            .field("meta", &self.meta)
            .field("entries", &self.ids.len())
            .field("resident", &self.entries.len())
            .field("resident_bytes", &self.resident_bytes)
            .finish()
    }
}

impl ShardLog {
    fn new(cache_bytes: usize) -> Self {
        Self {
            meta: ShardMeta::default(),
            ids: VecDeque::new(),
            entries: VecDeque::new(),
            frames: VecDeque::new(),
            cold: 0,
            resident_bytes: 0,
            cache_bytes,
            next_seq: 0,
        }
    }

    fn next_index(&self) -> u64 {
        match self.ids.back() {
            Some(id) => id.index + 1,
            None => self.meta.purged.as_ref().map_or(0, |p| p.index + 1),
        }
    }

    /// Entries and their encoded bytes held in memory.
    #[cfg(test)]
    pub(crate) fn resident(&self) -> (usize, usize) {
        (self.entries.len(), self.resident_bytes)
    }

    /// The last log id present, or the purge point when no entry is left.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.ids.back().copied().or(self.meta.purged)
    }

    /// Appends one record's entries; an entry at an index already present replaces it and
    /// everything after. `bytes` is the record's encoded size; `at` its place on disk if it is
    /// already durable (recovery). Returns the sequence number the writer reports a location
    /// against.
    fn append(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
        bytes: usize,
        at: Option<Located>,
    ) -> Result<u64, String> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut span: Option<(u64, u64)> = None;
        for e in entries {
            let index = e.index();
            if let Some(p) = &self.meta.purged
                && index <= p.index
            {
                continue; // already covered by a snapshot
            }
            // An empty log without a purge point may start anywhere; otherwise no holes.
            let fresh = self.ids.is_empty() && self.meta.purged.is_none();
            if index > self.next_index() && !fresh {
                return Err(format!("log hole: entry {index} after {}", self.next_index()));
            }
            self.truncate_from(index);
            self.ids.push_back(e.log_id());
            self.entries.push_back(e);
            span = Some((span.map_or(index, |s| s.0), index));
        }
        if let Some((first, last)) = span {
            self.frames.push_back(Frame { seq, first, last, bytes, at });
            self.resident_bytes += bytes;
            self.evict();
        }
        Ok(seq)
    }

    /// The writer made record `seq` durable at `at`: its entries may now leave memory.
    fn located(&mut self, seq: u64, at: Located) {
        // Frames are in `seq` order; a record truncated or purged away is no longer here.
        if let Ok(i) = self.frames.binary_search_by_key(&seq, |f| f.seq) {
            self.frames[i].at = Some(at);
            self.evict();
        }
    }

    /// Drops the oldest durable records' entries from memory while over the budget.
    fn evict(&mut self) {
        while self.resident_bytes > self.cache_bytes {
            let Some(frame) = self.frames.get(self.cold) else { break };
            if frame.at.is_none() {
                break; // not durable yet: memory is its only copy that can be read
            }
            while self.entries.front().is_some_and(|e| e.index() <= frame.last) {
                self.entries.pop_front();
            }
            self.resident_bytes -= frame.bytes;
            self.cold += 1;
        }
    }

    fn truncate_from(&mut self, index: u64) {
        while self.ids.back().is_some_and(|id| id.index >= index) {
            self.ids.pop_back();
        }
        while self.entries.back().is_some_and(|e| e.index() >= index) {
            self.entries.pop_back();
        }
        while let Some(frame) = self.frames.back_mut() {
            if frame.first >= index {
                let frame = self.frames.pop_back().expect("back exists");
                if self.frames.len() < self.cold {
                    self.cold = self.frames.len();
                } else {
                    self.resident_bytes -= frame.bytes;
                }
            } else {
                frame.last = frame.last.min(index - 1);
                break;
            }
        }
    }

    fn truncate_after(&mut self, after: Option<&LogId>) {
        self.truncate_from(after.map_or(0, |l| l.index + 1));
    }

    fn purge(&mut self, upto: &LogId) {
        while self.ids.front().is_some_and(|id| id.index <= upto.index) {
            self.ids.pop_front();
        }
        while self.entries.front().is_some_and(|e| e.index() <= upto.index) {
            self.entries.pop_front();
        }
        while let Some(frame) = self.frames.front_mut() {
            if frame.last <= upto.index {
                let frame = self.frames.pop_front().expect("front exists");
                if self.cold > 0 {
                    self.cold -= 1;
                } else {
                    self.resident_bytes -= frame.bytes;
                }
            } else {
                frame.first = frame.first.max(upto.index + 1);
                break;
            }
        }
        if self.meta.purged.as_ref().is_none_or(|p| p.index < upto.index) {
            self.meta.purged = Some(*upto);
        }
    }

    /// What it takes to read the entries in `range`: the cold records to read back and the
    /// resident entries, cloned. Planned under the shard's lock, read outside it.
    pub(crate) fn plan(&self, range: &impl RangeBounds<u64>) -> Plan {
        let mut plan = Plan { cold: Vec::new(), resident: Vec::new() };
        let Some(first) = self.ids.front().map(|id| id.index) else { return plan };
        let start = match range.start_bound() {
            std::ops::Bound::Included(s) => *s,
            std::ops::Bound::Excluded(s) => s + 1,
            std::ops::Bound::Unbounded => first,
        }
        .max(first);
        if !range.contains(&start) {
            return plan;
        }
        for frame in self.frames.iter().take(self.cold) {
            if frame.last < start {
                continue;
            }
            if !range.contains(&frame.first.max(start)) {
                return plan;
            }
            let at = frame.at.clone().expect("a record leaves memory only once located");
            plan.cold.push((at, frame.first.max(start), frame.last));
        }
        let resident_first = self.entries.front().map_or(u64::MAX, |e| e.index());
        let skip = usize::try_from(start.saturating_sub(resident_first)).unwrap_or(usize::MAX);
        plan.resident = self.entries.iter().skip(skip).take_while(|e| range.contains(&e.index())).cloned().collect();
        plan
    }

    fn apply(&mut self, record: Record, bytes: usize, at: Option<Located>) -> Result<(), String> {
        match record {
            Record::Entries { entries, .. } => {
                self.append(entries, bytes, at)?;
            }
            Record::Vote { vote, .. } => self.meta.vote = Some(vote),
            Record::Committed { committed, .. } => self.meta.committed = committed,
            Record::TruncateAfter { after, .. } => self.truncate_after(after.as_ref()),
            Record::Purge { upto, .. } => self.purge(&upto),
            Record::Checkpoint { .. } => {
                unreachable!("checkpoints are applied per shard by the caller")
            }
        }
        Ok(())
    }
}

impl Plan {
    /// Reads the cold records back and returns every planned entry in order. Blocking file
    /// reads: only a lagging follower or a lagging apply comes here.
    pub(crate) fn read(self, range: &impl RangeBounds<u64>) -> io::Result<Vec<Entry>> {
        if self.cold.is_empty() {
            return Ok(self.resident);
        }
        let mut out = Vec::new();
        for (at, from, to) in self.cold {
            let mut frame = vec![0u8; at.frame_len as usize];
            at.file.read_at(at.frame_at, &mut frame)?;
            // Checked again on the way back: the disk may have damaged it since it was written.
            let Ok((Record::Entries { entries, .. }, _)) = decode_frame(&frame, 0) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("write-ahead log record at byte {} does not read back as entries", at.frame_at),
                ));
            };
            let before = out.len();
            out.extend(entries.into_iter().filter(|e| (from..=to).contains(&e.index()) && range.contains(&e.index())));
            ENTRIES_READ_BACK.fetch_add((out.len() - before) as u64, Ordering::Relaxed);
        }
        out.extend(self.resident);
        Ok(out)
    }
}

/// How a queued write reports completion.
pub(crate) enum Done {
    /// Nobody waits.
    Nothing,
    /// openraft's callback for appended entries.
    Flushed(IOFlushed<TypeConfig>),
    /// A caller awaiting durability.
    Notify(oneshot::Sender<io::Result<()>>),
}

impl Done {
    fn complete(self, result: &io::Result<()>) {
        let r = || match result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        match self {
            Done::Nothing => {}
            Done::Flushed(cb) => cb.io_completed(r()),
            Done::Notify(tx) => {
                let _ = tx.send(r());
            }
        }
    }
}

/// What a queued write changes, so the writer can keep its own durable view of every shard.
#[derive(Debug, Clone)]
enum Change {
    Entries { last_index: u64 },
    Vote(Vote),
    Committed(Option<LogId>),
    TruncateAfter,
    Purge(LogId),
}

struct WriteOp {
    shard: u32,
    change: Change,
    frame: Vec<u8>,
    done: Done,
    /// For entries: the shard's log and the record's sequence number there, told where the
    /// record lies once it is durable.
    locate: Option<(Arc<Mutex<ShardLog>>, u64)>,
}

/// How the writer runs: on its own OS thread (production), or as a task on the current runtime
/// (the simulator, whose simulated disk must be used from the simulated host's tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// A dedicated thread does the blocking writes and fsyncs.
    Thread,
    /// A task on the current runtime does them inline.
    Task,
}

impl IoMode {
    /// Runs blocking work that takes seconds for a large state (opening a shard, installing a
    /// snapshot) off the runtime's worker threads: on tokio's blocking threads, started at once
    /// so that several can run together; under the simulator in place when awaited, since its
    /// disk must be used from its own tasks (there a panic propagates as it is).
    pub(crate) fn blocking<T: Send + 'static>(
        self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, tokio::task::JoinError>> + Send {
        let task = match self {
            IoMode::Thread => Err(tokio::task::spawn_blocking(work)),
            IoMode::Task => Ok(work),
        };
        async move {
            match task {
                Ok(work) => Ok(work()),
                Err(handle) => handle.await,
            }
        }
    }
}

/// The write-ahead log shared by every shard of a node.
pub(crate) struct Wal {
    shards: Mutex<BTreeMap<u32, Arc<Mutex<ShardLog>>>>,
    /// Each shard's budget of resident entries (see [`ShardLog`]).
    cache_bytes: usize,
    /// Writes waiting for the writer; `None` once closed. The channel itself has no bound
    /// because its producers have one and must never block (openraft calls them from its own
    /// tasks): a leader has at most `BATCHES_IN_FLIGHT_MAX` (64) proposals per shard not yet
    /// durable, a follower at most 4 AppendEntries per shard in flight (`net::peer`), and a vote
    /// or truncation is awaited before the next. So the queue holds at most about 70 appends per
    /// shard plus their commit and purge records; when fsync is slow, the producers wait on their
    /// own limits, not here.
    queue: Mutex<Option<mpsc::UnboundedSender<WriteOp>>>,
    failed: Arc<Failed>,
    /// Resolves when the writer has drained the queue and exited.
    writer_done: Mutex<Option<oneshot::Receiver<()>>>,
}

fn encode_frame(record: &Record) -> Vec<u8> {
    let payload = postcard::to_allocvec(record).expect("records always serialise");
    assert!(payload.len() <= FRAME_PAYLOAD_MAX, "record of {} bytes exceeds the frame limit", payload.len());
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Decodes the frame at `at`, or says why there is none.
fn decode_frame(bytes: &[u8], at: usize) -> Result<(Record, usize), String> {
    let (payload, len) = frame_payload(bytes, at)?;
    Ok((decode_record(payload)?, len))
}

fn decode_record(payload: &[u8]) -> Result<Record, String> {
    postcard::from_bytes(payload).map_err(|e| format!("undecodable record: {e}"))
}

/// For an `Entries` record, its shard and last index, read without decoding the entries:
/// postcard writes the variant index and then the fields in order, all as varints.
fn entries_head(payload: &[u8]) -> Option<(u32, u64)> {
    const ENTRIES_VARIANT: u32 = 0;
    let ((variant, shard, last), _) = postcard::take_from_bytes::<(u32, u32, u64)>(payload).ok()?;
    (variant == ENTRIES_VARIANT).then_some((shard, last))
}

/// The checksummed payload of the frame at `at` and the frame's whole length.
fn frame_payload(bytes: &[u8], at: usize) -> Result<(&[u8], usize), String> {
    let header = bytes.get(at..at + FRAME_HEADER_BYTES).ok_or("truncated frame header")?;
    if header[..2] != FRAME_MAGIC {
        return Err("bad frame magic".into());
    }
    let len = u32::from_be_bytes(header[2..6].try_into().expect("4 bytes")) as usize;
    if len > FRAME_PAYLOAD_MAX {
        return Err(format!("frame length {len} too large"));
    }
    let crc = u32::from_be_bytes(header[6..10].try_into().expect("4 bytes"));
    let payload = bytes.get(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + len).ok_or("truncated frame payload")?;
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok((payload, FRAME_HEADER_BYTES + len))
}

/// A record read during recovery: entries still encoded (decoded only if no snapshot covers
/// them), everything else decoded.
enum Read {
    Entries { shard: u32, last: u64, payload: std::ops::Range<usize> },
    Other(Record),
}

fn segment_name(no: u64) -> String {
    format!("{no:016x}.wal")
}

struct Segment {
    no: u64,
    /// Highest entry index per shard written into this segment.
    max_index: BTreeMap<u32, u64>,
}

/// A group commit at least this long is logged at debug level.
const SLOW_GROUP_COMMIT_US: u64 = 20_000;

/// The writer's own state: what is durable, not what is in memory.
struct Writer {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    segment_bytes_max: u64,
    segments: VecDeque<Segment>,
    active: Arc<dyn VFile>,
    active_len: u64,
    durable: BTreeMap<u32, ShardMeta>,
    failed: Arc<Failed>,
}

/// Whether the writer has failed, and the first error: once set, never cleared.
#[derive(Default)]
struct Failed {
    flag: AtomicBool,
    why: Mutex<Option<String>>,
}

impl Failed {
    fn set(&self, why: &io::Error) {
        let mut first = self.why.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        first.get_or_insert_with(|| why.to_string());
        self.flag.store(true, Ordering::SeqCst);
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

impl Writer {
    fn write_batch(&mut self, batch: Vec<WriteOp>) {
        let started = std::time::Instant::now();
        let written = self.write_frames(&batch);
        let us = started.elapsed().as_micros() as u64;
        tracing::trace!(ops = batch.len(), us, "wal group commit");
        // Only the slow ones at debug: a tail can be traced without the cost of tracing every
        // commit, which moves the timing it is meant to show.
        if us >= SLOW_GROUP_COMMIT_US {
            tracing::debug!(ops = batch.len(), ms = us / 1000, "slow wal group commit (write and fdatasync)");
        }
        if let Err(e) = &written {
            // A failed fsync leaves the file's durable state unknown; never write again.
            self.failed.set(e);
        }
        let result = written.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string()));
        let mut at = written.ok();
        for op in batch {
            let len = op.frame.len();
            if let (Some((file, offset)), Some((log, seq))) = (&mut at, op.locate) {
                // Told before the caller learns it is durable, so an entry is never resident
                // longer than it must be.
                let here = Located { file: file.clone(), frame_at: *offset, frame_len: len as u32 };
                log.lock().expect("shard log lock").located(seq, here);
            }
            if let Some((_, offset)) = &mut at {
                *offset += len as u64;
            }
            op.done.complete(&result);
        }
        if result.is_ok()
            && let Err(e) = self.collect_garbage()
        {
            tracing::warn!(error = %e, "could not delete an old write-ahead log segment");
        }
    }

    /// Writes and syncs the batch; returns the file it went to and the offset it starts at.
    fn write_frames(&mut self, batch: &[WriteOp]) -> io::Result<(Arc<dyn VFile>, u64)> {
        if self.failed.is_set() {
            return Err(io::Error::other("write-ahead log failed earlier; refusing further writes"));
        }
        let bytes: usize = batch.iter().map(|op| op.frame.len()).sum();
        if self.active_len > 0 && self.active_len + bytes as u64 > self.segment_bytes_max {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(bytes);
        let active = self.segments.back_mut().expect("there is always an active segment");
        for op in batch {
            buf.extend_from_slice(&op.frame);
            let meta = self.durable.entry(op.shard).or_default();
            match &op.change {
                Change::Entries { last_index } => {
                    let m = active.max_index.entry(op.shard).or_insert(0);
                    *m = (*m).max(*last_index);
                }
                Change::Vote(v) => meta.vote = Some(*v),
                Change::Committed(c) => meta.committed = *c,
                Change::TruncateAfter => {}
                Change::Purge(p) => {
                    if meta.purged.as_ref().is_none_or(|old| old.index < p.index) {
                        meta.purged = Some(*p);
                    }
                }
            }
        }
        self.active.append(&buf)?;
        self.active.sync()?;
        let start = self.active_len;
        self.active_len += buf.len() as u64;
        Ok((self.active.clone(), start))
    }

    fn rotate(&mut self) -> io::Result<()> {
        let no = self.segments.back().map_or(0, |s| s.no + 1);
        let path = self.dir.join(segment_name(no));
        let file = self.vfs.open(&path)?;
        let checkpoint =
            encode_frame(&Record::Checkpoint { shards: self.durable.iter().map(|(s, m)| (*s, m.clone())).collect() });
        file.append(&checkpoint)?;
        file.sync()?;
        self.vfs.sync_dir(&self.dir)?;
        self.active = file;
        self.active_len = checkpoint.len() as u64;
        self.segments.push_back(Segment { no, max_index: BTreeMap::new() });
        Ok(())
    }

    /// Deletes the oldest segments whose entries every shard has purged.
    fn collect_garbage(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 {
            let oldest = self.segments.front().expect("len > 1");
            let purged = |shard: &u32| self.durable.get(shard).and_then(|m| m.purged.as_ref()).map_or(0, |p| p.index);
            if !oldest.max_index.iter().all(|(shard, max)| *max <= purged(shard)) {
                break;
            }
            self.vfs.remove(&self.dir.join(segment_name(oldest.no)))?;
            self.segments.pop_front();
        }
        Ok(())
    }

    fn run_thread(mut self, mut rx: mpsc::UnboundedReceiver<WriteOp>, _done: oneshot::Sender<()>) {
        while let Some(first) = rx.blocking_recv() {
            let batch = Self::fill(first, &mut rx);
            self.write_batch(batch);
        }
    }

    async fn run_task(mut self, mut rx: mpsc::UnboundedReceiver<WriteOp>, _done: oneshot::Sender<()>) {
        while let Some(first) = rx.recv().await {
            let batch = Self::fill(first, &mut rx);
            self.write_batch(batch);
        }
    }

    /// Takes everything already queued behind `first`, up to the batch bound.
    fn fill(first: WriteOp, rx: &mut mpsc::UnboundedReceiver<WriteOp>) -> Vec<WriteOp> {
        let mut bytes = first.frame.len();
        let mut batch = vec![first];
        while bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op.frame.len();
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        batch
    }
}

/// What recovery found, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments replayed.
    pub segments: usize,
    /// Records replayed.
    pub records: usize,
    /// Bytes of torn tail cut off the newest segment.
    pub truncated_bytes: u64,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, replays it, and starts the writer.
    /// `cache_bytes` bounds each shard's entries held in memory (see [`ShardLog`]).
    pub(crate) fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        mode: IoMode,
        cache_bytes: usize,
    ) -> Result<(Self, RecoveryReport), WalError> {
        Self::open_with(vfs, dir, mode, SEGMENT_BYTES_MAX, cache_bytes)
    }

    /// [`Wal::open`] with a chosen segment size (tests use small segments to exercise rotation).
    pub(crate) fn open_with(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        mode: IoMode,
        segment_bytes_max: u64,
        cache_bytes: usize,
    ) -> Result<(Self, RecoveryReport), WalError> {
        vfs.create_dir_all(dir)?;
        let mut names: Vec<String> = vfs.list(dir)?.into_iter().filter(|n| n.ends_with(".wal")).collect();
        names.sort();
        let mut shards: BTreeMap<u32, ShardLog> = BTreeMap::new();
        let mut segments = VecDeque::new();
        let mut report = RecoveryReport::default();
        let mut active: Option<(Arc<dyn VFile>, u64)> = None;
        // First every record is read, then replayed: an old segment is deleted once a newer one
        // records a purge past its entries, but that purge record may come after the first
        // entries of the newer segment, whose checkpoint still names the older purge point.
        // Replaying with each shard's final purge point known first skips exactly the entries a
        // snapshot covers, and still finds any gap after them.
        let mut records: Vec<(usize, u64, Read)> = Vec::new();
        let mut contents: Vec<Vec<u8>> = Vec::new();
        // Each segment held open, so entries recovery leaves on disk can be read back.
        let mut files: Vec<Arc<dyn VFile>> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let no = u64::from_str_radix(name.trim_end_matches(".wal"), 16).map_err(|_| WalError::Corrupt {
                segment: name.clone(),
                offset: 0,
                what: "unexpected file name".into(),
            })?;
            let path = dir.join(name);
            let bytes = vfs.read(&path)?;
            let newest = i + 1 == names.len();
            let segment = Segment { no, max_index: BTreeMap::new() };
            let mut at = 0usize;
            while at < bytes.len() {
                let read = frame_payload(&bytes, at).and_then(|(payload, len)| {
                    let start = at + FRAME_HEADER_BYTES;
                    let read = match entries_head(payload) {
                        Some((shard, last)) => Read::Entries { shard, last, payload: start..start + payload.len() },
                        None => Read::Other(decode_record(payload)?),
                    };
                    Ok((read, len))
                });
                match read {
                    Ok((read, len)) => {
                        records.push((segments.len(), at as u64, read));
                        report.records += 1;
                        at += len;
                    }
                    Err(what) => {
                        let valid_after = (at + 1..bytes.len()).any(|p| decode_frame(&bytes, p).is_ok());
                        if !newest || valid_after {
                            return Err(WalError::Corrupt { segment: name.clone(), offset: at as u64, what });
                        }
                        // A torn write from a crash mid-batch: never acknowledged, safe to cut.
                        let file = vfs.open(&path)?;
                        file.truncate(at as u64)?;
                        report.truncated_bytes = (bytes.len() - at) as u64;
                        tracing::warn!(segment = %name, offset = at, bytes = report.truncated_bytes, "truncated torn tail of write-ahead log: {what}");
                        break;
                    }
                }
            }
            let file = vfs.open(&path)?;
            if newest {
                active = Some((file.clone(), at as u64));
            }
            files.push(file);
            segments.push_back(segment);
            contents.push(bytes);
            report.segments += 1;
        }
        for (_, _, read) in &records {
            let purges: Vec<(u32, LogId)> = match read {
                Read::Other(Record::Purge { shard, upto }) => vec![(*shard, *upto)],
                Read::Other(Record::Checkpoint { shards: metas }) => {
                    metas.iter().filter_map(|(s, m)| m.purged.map(|p| (*s, p))).collect()
                }
                _ => Vec::new(),
            };
            for (shard, upto) in purges {
                shards.entry(shard).or_insert_with(|| ShardLog::new(cache_bytes)).purge(&upto);
            }
        }
        for (segment, at, read) in records {
            let corrupt = |what| WalError::Corrupt { segment: names[segment].clone(), offset: at, what };
            let mut bytes = 0;
            let mut here = None;
            let record = match read {
                Read::Entries { shard, last, payload } => {
                    let m = segments[segment].max_index.entry(shard).or_insert(0);
                    *m = (*m).max(last);
                    // Covered by a snapshot: skipped without decoding, which keeps recovery's
                    // cost to the log since the last snapshot, not the whole segment.
                    if shards.get(&shard).and_then(|l| l.meta.purged).is_some_and(|p| last <= p.index) {
                        continue;
                    }
                    bytes = FRAME_HEADER_BYTES + payload.len();
                    here = Some(Located { file: files[segment].clone(), frame_at: at, frame_len: bytes as u32 });
                    decode_record(&contents[segment][payload]).map_err(corrupt)?
                }
                Read::Other(record) => record,
            };
            replay(&mut shards, &mut segments[segment], record, cache_bytes, bytes, here).map_err(corrupt)?;
        }
        let (active, active_len) = match active {
            Some(a) => a,
            None => {
                let file = vfs.open(&dir.join(segment_name(0)))?;
                vfs.sync_dir(dir)?;
                segments.push_back(Segment { no: 0, max_index: BTreeMap::new() });
                (file, 0)
            }
        };
        let failed = Arc::new(Failed::default());
        let writer = Writer {
            vfs,
            dir: dir.to_path_buf(),
            segment_bytes_max,
            segments,
            active,
            active_len,
            durable: shards.iter().map(|(s, l)| (*s, l.meta.clone())).collect(),
            failed: failed.clone(),
        };
        let (queue, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = oneshot::channel();
        match mode {
            IoMode::Thread => {
                std::thread::Builder::new()
                    .name("wal-writer".into())
                    .spawn(move || writer.run_thread(rx, done_tx))
                    .map_err(WalError::Io)?;
            }
            IoMode::Task => {
                tokio::spawn(writer.run_task(rx, done_tx));
            }
        }
        let shards = shards.into_iter().map(|(s, l)| (s, Arc::new(Mutex::new(l)))).collect();
        let wal = Self {
            shards: Mutex::new(shards),
            cache_bytes,
            queue: Mutex::new(Some(queue)),
            failed,
            writer_done: Mutex::new(Some(done_rx)),
        };
        Ok((wal, report))
    }

    /// Stops accepting writes, lets the writer make everything queued durable, and waits for it
    /// to exit. A node must close its log before the same directory is opened again.
    pub(crate) async fn close(&self) {
        drop(self.queue.lock().expect("wal lock").take());
        let done = self.writer_done.lock().expect("wal lock").take();
        if let Some(done) = done {
            let _ = done.await;
        }
    }

    fn send(&self, op: WriteOp) -> io::Result<()> {
        let queue = self.queue.lock().expect("wal lock");
        let queue = queue.as_ref().ok_or_else(|| io::Error::other("write-ahead log is closed"))?;
        queue.send(op).map_err(|_| io::Error::other("write-ahead log writer stopped"))
    }

    /// The in-memory log of `shard`, created empty if the shard is new.
    pub(crate) fn shard(&self, shard: u32) -> Arc<Mutex<ShardLog>> {
        self.shards
            .lock()
            .expect("wal lock")
            .entry(shard)
            .or_insert_with(|| Arc::new(Mutex::new(ShardLog::new(self.cache_bytes))))
            .clone()
    }

    /// The entries of `shard` in `range`, from memory or, for older ones, read back from disk.
    pub(crate) fn read(&self, shard: u32, range: impl RangeBounds<u64>) -> io::Result<Vec<Entry>> {
        let plan = self.shard(shard).lock().expect("shard log lock").plan(&range);
        plan.read(&range)
    }

    /// The first error that stopped the writer, once one has.
    pub(crate) fn failure(&self) -> Option<String> {
        if !self.failed.is_set() {
            return None;
        }
        self.failed.why.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn check(&self) -> io::Result<()> {
        if self.failed.is_set() {
            Err(io::Error::other("write-ahead log failed earlier; this node must restart"))
        } else {
            Ok(())
        }
    }

    fn submit(&self, shard: u32, change: Change, record: &Record, done: Done) -> io::Result<()> {
        self.check()?;
        self.send(WriteOp { shard, change, frame: encode_frame(record), done, locate: None })
    }

    /// Appends entries in memory now; `done` fires once they are durable.
    pub(crate) fn append(&self, shard: u32, entries: Vec<Entry>, done: Done) -> io::Result<()> {
        self.check()?;
        let Some(last_index) = entries.last().map(|e| e.index()) else {
            done.complete(&Ok(()));
            return Ok(());
        };
        let shard_log = self.shard(shard);
        let mut log = shard_log.lock().expect("shard log lock");
        // Encode before the in-memory append so the frame and memory cannot disagree; queue while
        // holding the shard lock so this shard's records reach the writer in memory order.
        let record = Record::Entries { shard, last: last_index, entries };
        let frame = encode_frame(&record);
        let Record::Entries { entries, .. } = record else { unreachable!() };
        let seq = log.append(entries, frame.len(), None).map_err(io::Error::other)?;
        let locate = Some((shard_log.clone(), seq));
        self.send(WriteOp { shard, change: Change::Entries { last_index }, frame, done, locate })
    }

    /// Saves the vote and waits until it is durable: a vote must never be forgotten.
    pub(crate) async fn save_vote(&self, shard: u32, vote: &Vote) -> io::Result<()> {
        let durable = {
            let log = self.shard(shard);
            let mut log = log.lock().expect("shard log lock");
            log.meta.vote = Some(*vote);
            let (tx, rx) = oneshot::channel();
            let record = Record::Vote { shard, vote: *vote };
            self.submit(shard, Change::Vote(*vote), &record, Done::Notify(tx))?;
            rx
        };
        durable.await.map_err(|_| io::Error::other("write-ahead log writer stopped"))?
    }

    /// Records the commit index; durable with the next group commit.
    pub(crate) fn save_committed(&self, shard: u32, committed: Option<LogId>) -> io::Result<()> {
        let log = self.shard(shard);
        let mut log = log.lock().expect("shard log lock");
        log.meta.committed = committed;
        self.submit(shard, Change::Committed(committed), &Record::Committed { shard, committed }, Done::Nothing)
    }

    /// Removes entries after `after`, and waits until that is durable.
    pub(crate) async fn truncate_after(&self, shard: u32, after: Option<LogId>) -> io::Result<()> {
        let durable = {
            let log = self.shard(shard);
            let mut log = log.lock().expect("shard log lock");
            log.truncate_after(after.as_ref());
            let (tx, rx) = oneshot::channel();
            let record = Record::TruncateAfter { shard, after };
            self.submit(shard, Change::TruncateAfter, &record, Done::Notify(tx))?;
            rx
        };
        durable.await.map_err(|_| io::Error::other("write-ahead log writer stopped"))?
    }

    /// Drops entries up to `upto`, which a durable snapshot now covers.
    pub(crate) fn purge(&self, shard: u32, upto: LogId) -> io::Result<()> {
        let log = self.shard(shard);
        let mut log = log.lock().expect("shard log lock");
        log.purge(&upto);
        self.submit(shard, Change::Purge(upto), &Record::Purge { shard, upto }, Done::Nothing)
    }
}

fn replay(
    shards: &mut BTreeMap<u32, ShardLog>,
    segment: &mut Segment,
    record: Record,
    cache_bytes: usize,
    bytes: usize,
    at: Option<Located>,
) -> Result<(), String> {
    match record {
        Record::Checkpoint { shards: metas } => {
            for (shard, meta) in metas {
                let log = shards.entry(shard).or_insert_with(|| ShardLog::new(cache_bytes));
                if let Some(p) = &meta.purged {
                    log.purge(p);
                }
                log.meta.vote = meta.vote;
                log.meta.committed = meta.committed;
            }
            Ok(())
        }
        record => {
            let shard = match &record {
                Record::Entries { shard, entries, .. } => {
                    if let Some(last) = entries.last() {
                        let m = segment.max_index.entry(*shard).or_insert(0);
                        *m = (*m).max(last.index());
                    }
                    *shard
                }
                Record::Vote { shard, .. }
                | Record::Committed { shard, .. }
                | Record::TruncateAfter { shard, .. }
                | Record::Purge { shard, .. } => *shard,
                Record::Checkpoint { .. } => unreachable!("matched above"),
            };
            shards.entry(shard).or_insert_with(|| ShardLog::new(cache_bytes)).apply(record, bytes, at)
        }
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use crate::formats::{log_id, pinned, raft_entries, vote};

    fn record_tag(r: &Record) -> u8 {
        match r {
            Record::Entries { .. } => 0,
            Record::Vote { .. } => 1,
            Record::Committed { .. } => 2,
            Record::TruncateAfter { .. } => 3,
            Record::Purge { .. } => 4,
            Record::Checkpoint { .. } => 5,
        }
    }

    /// A frame of every record kind, byte for byte. Failing means segments written before the
    /// change no longer read back: bump `DATA_FORMAT` (node.json) or make the change additive.
    #[test]
    fn every_record_kind_encodes_as_pinned() {
        let meta = ShardMeta { vote: Some(vote()), committed: Some(log_id(1, 3)), purged: Some(log_id(1, 1)) };
        let all = [
            (
                Record::Entries { shard: 3, last: 4, entries: raft_entries() },
                "574c000000c946dd01ea0003040401010001020180d095ffbc3100010102643105616c69636503455552904e01030180d095ffbc3101010402010301020304010d31302e302e302e313a373030300265750465752d310d31302e302e302e313a38303030020d31302e302e302e323a373030300265750465752d320d31302e302e302e323a38303030030d31302e302e302e333a373030300265750465752d330d31302e302e302e333a38303030040d31302e302e302e343a373030300265750465752d340d31302e302e302e343a38303030",
            ),
            (Record::Vote { shard: 3, vote: vote() }, "574c000000060bc60dec010302010101"),
            (Record::Committed { shard: 3, committed: Some(log_id(1, 3)) }, "574c00000005f2c1d9a90203010103"),
            (Record::TruncateAfter { shard: 3, after: Some(log_id(1, 1)) }, "574c000000052bebc6f20303010101"),
            (Record::Purge { shard: 3, upto: log_id(1, 2) }, "574c000000042bf252c704030102"),
            (
                Record::Checkpoint { shards: vec![(3, meta), (4, ShardMeta::default())] },
                "574c000000122ea760fd050203010201010101010301010104000000",
            ),
        ];
        for (record, expected) in &all {
            let frame = encode_frame(record);
            assert_eq!(frame[FRAME_HEADER_BYTES], record_tag(record), "the payload starts with the tag");
            pinned(&format!("{record:?}"), &frame, expected);
            let (back, len) = decode_frame(&frame, 0).unwrap();
            assert_eq!((encode_frame(&back), len), (frame.clone(), frame.len()));
        }
    }

    #[test]
    fn the_entries_head_is_read_without_decoding_the_entries() {
        let id = |i| openraft::testing::log_id::<TypeConfig>(2, 1, i);
        let entries: Vec<Entry> = (5..=9).map(|i| Entry::new_blank(id(i))).collect();
        let payload = postcard::to_allocvec(&Record::Entries { shard: 300, last: 9, entries }).unwrap();
        assert_eq!(entries_head(&payload), Some((300, 9)));
        for other in [Record::Purge { shard: 300, upto: id(9) }, Record::Checkpoint { shards: Vec::new() }] {
            assert_eq!(entries_head(&postcard::to_allocvec(&other).unwrap()), None);
        }
    }
}
