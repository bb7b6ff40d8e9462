//! The per-shard journal: every ledger entry of the shard, in order, on disk.
//!
//! Frames are `u32 BE length | canonical entry encoding | 32-byte SHA-256 of the encoding`. The
//! journal is rebuilt deterministically from the Raft log, so it is not fsynced on every append:
//! it is fsynced before each snapshot, and on restart everything past the snapshot is cut and
//! re-applied from the log.
//!
//! # The index, and why a restart does not read the history
//!
//! Beside `journal.log` lies `journal.idx`: the byte offset of every [`INDEX_STRIDE`]th entry
//! (entries 1, 1 + stride, ...), as `u64` BE, appended as the journal grows. An entry is found
//! by reading its stride's block and walking at most a stride of frames. The index is derived
//! data, never fsynced: on open it is checked against the journal and whatever is missing is
//! rebuilt by walking the frames from the last good index point.
//!
//! Opening therefore costs the index (8 bytes per stride of entries) plus a walk of at most one
//! stride up to the snapshot's point, and checks that the entry the snapshot names sits exactly
//! at the byte length the snapshot recorded, decodes, and has the snapshot's head hash. It does
//! not re-verify the whole history at every start (that took time proportional to history);
//! `walletd client verify` (a full replay) does, and every entry read is checked against its
//! stored hash.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::vfs::{VFile, VFileReader, Vfs};
use ledger_core::ShardId;
use ledger_core::verify::{Verifier, VerifyError};
use ledger_core::{Entry, Hash, genesis_hash};

/// Entries per index point: the most frames a read walks, and 8 bytes of index per this many
/// entries (about 1.25 MB of index per 10 million entries).
pub(crate) const INDEX_STRIDE: u64 = 64;
const FRAME_OVERHEAD_BYTES: usize = 4 + 32;

/// Why a journal cannot be used.
#[derive(Debug, Error)]
pub enum JournalError {
    /// The disk failed.
    #[error("journal IO error: {0}")]
    Io(#[from] io::Error),
    /// Entries the snapshot depends on are missing or damaged.
    #[error(
        "journal {path} is damaged: {source}. The entries up to {needed} are covered by a snapshot and must be \
         intact; restore the disk, or wipe this node's data directory and add it back under a new node id"
    )]
    Damaged {
        /// The journal file.
        path: String,
        /// The first problem found.
        source: VerifyError,
        /// How many entries must be intact.
        needed: u64,
    },
    /// Fewer intact entries than the snapshot needs.
    #[error("journal {path} holds {found} intact entries but the snapshot needs {needed}")]
    TooShort {
        /// The journal file.
        path: String,
        /// Intact entries found.
        found: u64,
        /// Entries needed.
        needed: u64,
    },
    /// A received journal does not end where its snapshot says.
    #[error("received journal ends at entry {found_seq} but the snapshot expects {expected_seq} with another hash")]
    HeadMismatch {
        /// Entries received.
        found_seq: u64,
        /// Entries the snapshot expects.
        expected_seq: u64,
    },
}

/// A stable prefix of a journal: what a snapshot hands to a peer.
#[derive(Clone)]
pub struct JournalPrefix {
    pub(crate) file: Arc<dyn VFile>,
    /// Number of entries.
    pub entries: u64,
    /// Byte length of those entries' frames.
    pub bytes: u64,
}

impl JournalPrefix {
    /// Reads `buf.len()` bytes of the prefix at `offset`.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        assert!(offset + buf.len() as u64 <= self.bytes, "read past the snapshot's journal prefix");
        self.file.read_at(offset, buf)
    }

    /// Feeds the prefix's entries, from the shard's first, to a fresh `verifier` in one pass
    /// over its bytes (each stored entry hashed once). Needs no lock: the bytes of a prefix
    /// never change. The error is the first entry that fails, for people.
    pub(crate) fn verify_into(&self, shard: ShardId, verifier: &mut Verifier) -> Result<(), String> {
        let found = scan_into(shard, verifier, self.file.as_ref(), self.bytes).map_err(|e| e.to_string())?;
        if let Some(problem) = found.problem {
            return Err(problem.to_string());
        }
        if found.entries != self.entries {
            return Err(format!("the journal holds {} entries where {} were expected", found.entries, self.entries));
        }
        Ok(())
    }
}

/// Where a journal must end: what a snapshot recorded of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JournalPoint {
    /// Entries.
    pub(crate) entries: u64,
    /// Byte length of their frames.
    pub(crate) bytes: u64,
    /// Hash of the last one.
    pub(crate) head: Hash,
}

impl JournalPoint {
    /// The empty journal of `shard`.
    pub(crate) fn empty(shard: ShardId) -> Self {
        Self { entries: 0, bytes: 0, head: genesis_hash(shard) }
    }
}

/// One shard's journal.
pub(crate) struct Journal {
    shard: ShardId,
    path: PathBuf,
    file: Arc<dyn VFile>,
    index_file: Arc<dyn VFile>,
    /// `index[i]` is where entry `i * INDEX_STRIDE + 1` starts.
    index: Vec<u64>,
    len: u64,
    end: u64,
    head: Hash,
}

/// What a scan of a journal from its start found: the index points (every stride's first
/// offset), how many entries are intact, where they end, the last one's hash, and what stopped
/// the scan before the end, if anything.
struct Scanned {
    index: Vec<u64>,
    entries: u64,
    end: u64,
    head: Hash,
    problem: Option<VerifyError>,
}

/// Scans the first `size` bytes of a journal in order, checking each entry's hash and its link
/// to the one before, in one pass over a buffered reader: a received journal is the shard's
/// whole history, and is never read into memory whole.
fn scan(shard: ShardId, file: &dyn VFile, size: u64) -> io::Result<Scanned> {
    scan_into(shard, &mut Verifier::new(shard), file, size)
}

/// [`scan`] with a verifier of the caller's, which goes on from where the scan stopped.
fn scan_into(shard: ShardId, verifier: &mut Verifier, file: &dyn VFile, size: u64) -> io::Result<Scanned> {
    let mut reader = io::BufReader::with_capacity(1 << 20, VFileReader::new(file, size));
    let mut found = Scanned { index: Vec::new(), entries: 0, end: 0, head: genesis_hash(shard), problem: None };
    let mut body = Vec::new();
    let mut stored: Hash = [0; 32];
    while found.end < size {
        let at = found.end;
        let position = found.entries + 1;
        let truncated = |what| VerifyError::Decode { position, source: ledger_core::DecodeError::Truncated(what) };
        let left = size - at;
        if left < 4 {
            found.problem = Some(truncated("frame length"));
            break;
        }
        let mut len = [0u8; 4];
        io::Read::read_exact(&mut reader, &mut len)?;
        let len = u64::from(u32::from_be_bytes(len));
        if left - 4 < len {
            found.problem = Some(truncated("entry"));
            break;
        }
        body.resize(len as usize, 0);
        io::Read::read_exact(&mut reader, &mut body)?;
        if left - 4 - len < 32 {
            found.problem = Some(truncated("entry hash"));
            break;
        }
        io::Read::read_exact(&mut reader, &mut stored)?;
        if let Err(e) = verifier.push_raw(&body, &stored) {
            found.problem = Some(e);
            break;
        }
        if found.entries.is_multiple_of(INDEX_STRIDE) {
            found.index.push(at);
        }
        found.entries += 1;
        found.head = stored;
        found.end = at + 4 + len + 32;
    }
    Ok(found)
}

/// The frames in `block` (which starts at a frame boundary): each frame's start and length.
/// Stops at the end of the block or at a frame that does not fit in it.
fn frames(block: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let len = u32::from_be_bytes(block.get(at..at + 4)?.try_into().expect("4 bytes")) as usize;
        let total = len.checked_add(FRAME_OVERHEAD_BYTES)?;
        block.get(at..at + total)?;
        let frame = (at, total);
        at += total;
        Some(frame)
    })
}

/// Decodes one frame and checks its bytes against its stored hash.
fn decode_frame(frame: &[u8], position: u64) -> Result<Entry, VerifyError> {
    let body = &frame[4..frame.len() - 32];
    // `decode` sets the hash to SHA-256 of the bytes it decoded.
    let entry = Entry::decode(body).map_err(|source| VerifyError::Decode { position, source })?;
    if entry.hash[..] != frame[frame.len() - 32..] {
        return Err(VerifyError::HashMismatch { position, seq: entry.seq });
    }
    Ok(entry)
}

fn frame(entry: &Entry, out: &mut Vec<u8>) {
    let body = entry.encode();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&entry.hash);
}

fn index_path(journal: &Path) -> PathBuf {
    journal.with_extension("idx")
}

fn index_bytes(points: &[u64]) -> Vec<u8> {
    points.iter().flat_map(|o| o.to_be_bytes()).collect()
}

impl Journal {
    /// Opens the journal at `path` holding exactly the entries up to `keep` (what the latest
    /// snapshot recorded), and cuts everything after them (it will be re-applied from the Raft
    /// log). See the module docs for what is checked.
    pub(crate) fn open(vfs: &dyn Vfs, path: &Path, shard: ShardId, keep: JournalPoint) -> Result<Self, JournalError> {
        let file = vfs.open(path)?;
        let index_file = vfs.open(&index_path(path))?;
        // Either may have just been created: make their directory entries durable before any
        // checkpoint can name the journal's entries. A snapshot file written beside it syncs the
        // directory too, but a checkpoint of the state on disk lives in the store, outside the
        // `Vfs`, and a crash could otherwise lose the journal a durable checkpoint needs (found
        // by the simulator with the state on disk).
        vfs.sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        let display = path.display().to_string();
        let size = file.size()?;
        if size < keep.bytes {
            // Too short for what the snapshot covers: find how much is intact, for the error.
            let scanned = scan(shard, file.as_ref(), size)?;
            return Err(match scanned.problem {
                Some(source) => JournalError::Damaged { path: display, source, needed: keep.entries },
                None => JournalError::TooShort { path: display, found: scanned.entries, needed: keep.entries },
            });
        }
        let mut index = Self::load_index(vfs, path, keep)?;
        // Walk from the last index point to the snapshot's point, adding the index points
        // the walk passes, and check that its last entry is the one the snapshot names.
        let (mut seq, at) = match index.last() {
            Some(o) => ((index.len() as u64 - 1) * INDEX_STRIDE + 1, *o),
            None => (1, 0),
        };
        if keep.entries > 0 {
            let mut block = vec![0u8; (keep.bytes - at) as usize];
            file.read_at(at, &mut block)?;
            let mut last = None;
            let mut walked = 0usize;
            for (start, len) in frames(&block) {
                if (seq - 1).is_multiple_of(INDEX_STRIDE) && (seq - 1) / INDEX_STRIDE == index.len() as u64 {
                    index.push(at + start as u64);
                }
                last = Some((seq, start, len));
                walked = start + len;
                seq += 1;
            }
            let damaged = |source| JournalError::Damaged { path: display.clone(), source, needed: keep.entries };
            let Some((last_seq, start, len)) = last.filter(|(s, _, _)| *s == keep.entries) else {
                return Err(damaged(VerifyError::Decode {
                    position: keep.entries,
                    source: ledger_core::DecodeError::Truncated("entry at the snapshot's point"),
                }));
            };
            if walked != block.len() {
                return Err(damaged(VerifyError::Decode {
                    position: last_seq,
                    source: ledger_core::DecodeError::Truncated("frames at the snapshot's point"),
                }));
            }
            let entry = decode_frame(&block[start..start + len], last_seq).map_err(damaged)?;
            if entry.seq != keep.entries || entry.hash != keep.head {
                return Err(damaged(VerifyError::HashMismatch { position: last_seq, seq: entry.seq }));
            }
        }
        index.truncate(keep.entries.div_ceil(INDEX_STRIDE) as usize);
        if size != keep.bytes {
            file.truncate(keep.bytes)?;
        }
        index_file.truncate(0)?;
        index_file.append(&index_bytes(&index))?;
        Ok(Self {
            shard,
            path: path.to_path_buf(),
            file,
            index_file,
            index,
            len: keep.entries,
            end: keep.bytes,
            head: keep.head,
        })
    }

    /// The index points stored for entries up to `keep`, as far as they are consistent (each
    /// offset after the previous and before the snapshot's byte length, the first at 0).
    fn load_index(vfs: &dyn Vfs, path: &Path, keep: JournalPoint) -> io::Result<Vec<u64>> {
        let bytes = match vfs.read(&index_path(path)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let wanted = keep.entries.div_ceil(INDEX_STRIDE) as usize;
        let mut index: Vec<u64> = Vec::with_capacity(wanted);
        for chunk in bytes.chunks_exact(8).take(wanted) {
            let offset = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
            let sane = match index.last() {
                None => offset == 0,
                Some(prev) => offset > *prev && offset < keep.bytes,
            };
            if !sane {
                break;
            }
            index.push(offset);
        }
        if index.len() < wanted {
            tracing::info!(journal = %path.display(), have = index.len(), wanted, "rebuilding the journal index");
        }
        Ok(index)
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Hash of the last entry.
    pub(crate) fn head(&self) -> Hash {
        self.head
    }

    /// Where the journal ends now.
    pub(crate) fn point(&self) -> JournalPoint {
        JournalPoint { entries: self.len, bytes: self.end, head: self.head }
    }

    /// Appends entries with one write. They must continue the chain.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(entries.len() * 256);
        let mut points = Vec::new();
        let mut head = self.head;
        for (i, e) in entries.iter().enumerate() {
            let seq = self.len + i as u64 + 1;
            assert_eq!(e.shard, self.shard, "entry of another shard");
            assert_eq!(e.seq, seq, "journal sequence must be contiguous");
            assert_eq!(e.prev_hash, head, "journal hash chain must link");
            if (seq - 1).is_multiple_of(INDEX_STRIDE) {
                points.push(self.end + buf.len() as u64);
            }
            frame(e, &mut buf);
            head = e.hash;
        }
        self.file.append(&buf)?;
        if !points.is_empty() {
            self.index_file.append(&index_bytes(&points))?;
            self.index.extend(points);
        }
        self.len += entries.len() as u64;
        self.end += buf.len() as u64;
        self.head = head;
        Ok(())
    }

    /// Makes every appended entry durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync()
    }

    /// Byte range of the index block holding entry `seq`: from its index point to the next one
    /// (or the end).
    fn block_of(&self, seq: u64) -> (u64, u64) {
        let slot = ((seq - 1) / INDEX_STRIDE) as usize;
        (self.index[slot], self.index.get(slot + 1).copied().unwrap_or(self.end))
    }

    /// The entry with sequence number `seq`.
    #[cfg(test)]
    pub(crate) fn read(&self, seq: u64) -> io::Result<Option<Entry>> {
        Ok(self.read_range(seq, 1)?.pop())
    }

    /// Up to `limit` entries from `from` on (fewer at the end of the journal), reading each
    /// index block once.
    pub(crate) fn read_range(&self, from: u64, limit: u64) -> io::Result<Vec<Entry>> {
        let from = from.max(1);
        let last = from.saturating_add(limit).saturating_sub(1).min(self.len);
        let mut out = Vec::new();
        let mut seq = from;
        while seq <= last {
            let (start, stop) = self.block_of(seq);
            let mut block = vec![0u8; (stop - start) as usize];
            self.file.read_at(start, &mut block)?;
            let first_in_block = (seq - 1) / INDEX_STRIDE * INDEX_STRIDE + 1;
            for (at_seq, (s, len)) in (first_in_block..).zip(frames(&block)) {
                if at_seq >= seq && at_seq <= last {
                    let entry = decode_frame(&block[s..s + len], at_seq)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if entry.seq != at_seq {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("journal entry {at_seq} holds sequence {}", entry.seq),
                        ));
                    }
                    out.push(entry);
                }
            }
            let next = ((seq - 1) / INDEX_STRIDE + 1) * INDEX_STRIDE + 1;
            if (out.len() as u64) < next.min(last + 1) - from {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("journal block of entry {seq} ends early"),
                ));
            }
            seq = next;
        }
        Ok(out)
    }

    /// Where entry `seq` starts (`end` for `len + 1`).
    fn offset_of(&self, seq: u64) -> io::Result<u64> {
        if seq > self.len {
            return Ok(self.end);
        }
        let (start, stop) = self.block_of(seq);
        let mut block = vec![0u8; (stop - start) as usize];
        self.file.read_at(start, &mut block)?;
        let skip = ((seq - 1) % INDEX_STRIDE) as usize;
        frames(&block).nth(skip).map(|(s, _)| start + s as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("journal block of entry {seq} ends early"))
        })
    }

    /// The whole journal as it is now, as a snapshot's prefix.
    pub(crate) fn whole(&self) -> JournalPrefix {
        JournalPrefix { file: self.file.clone(), entries: self.len, bytes: self.end }
    }

    /// The stable prefix holding entries `1..=entries`, for a snapshot.
    pub(crate) fn prefix(&self, entries: u64) -> io::Result<JournalPrefix> {
        assert!(entries <= self.len, "prefix past the end of the journal");
        Ok(JournalPrefix { file: self.file.clone(), entries, bytes: self.offset_of(entries + 1)? })
    }

    /// Checks a journal received from a peer: every frame intact and the chain from the shard's
    /// genesis ending at `expected` (entry count, head hash). What a receiver does before it
    /// hands a snapshot to Raft, so a bad transfer is refused rather than failing the install.
    /// The scan's result (where the frames are) goes with it to [`replace`](Self::replace), which
    /// then need not read the journal again.
    pub(crate) fn verify_received(
        vfs: &dyn Vfs,
        received: &Path,
        shard: ShardId,
        expected: (u64, Hash),
    ) -> Result<ReceivedJournal, JournalError> {
        let file = vfs.open(received)?;
        let found = scan(shard, file.as_ref(), file.size()?)?;
        if let Some(source) = found.problem {
            return Err(JournalError::Damaged { path: received.display().to_string(), source, needed: expected.0 });
        }
        if (found.entries, found.head) != expected {
            return Err(JournalError::HeadMismatch { found_seq: found.entries, expected_seq: expected.0 });
        }
        Ok(ReceivedJournal {
            path: received.to_path_buf(),
            shard,
            index: found.index,
            point: JournalPoint { entries: found.entries, bytes: found.end, head: found.head },
        })
    }

    /// Replaces this journal with a verified copy received from a peer, atomically.
    pub(crate) fn replace(&mut self, vfs: &dyn Vfs, received: &ReceivedJournal) -> io::Result<()> {
        assert_eq!(received.shard, self.shard, "a journal received for another shard");
        vfs.open(&received.path)?.sync()?;
        vfs.rename(&received.path, &self.path)?;
        self.file = vfs.open(&self.path)?;
        self.index.clone_from(&received.index);
        self.index_file.truncate(0)?;
        self.index_file.append(&index_bytes(&self.index))?;
        self.len = received.point.entries;
        self.end = received.point.bytes;
        self.head = received.point.head;
        Ok(())
    }
}

/// A journal received from a peer and verified ([`Journal::verify_received`]): where it is, and
/// what the verifying scan found, so installing it does not scan it again. The file is the
/// receiver's own, written before the scan and not touched after it.
#[derive(Debug, Clone)]
pub(crate) struct ReceivedJournal {
    path: PathBuf,
    shard: ShardId,
    /// Index points: every [`INDEX_STRIDE`]th frame's offset.
    index: Vec<u64>,
    point: JournalPoint,
}

impl ReceivedJournal {
    /// Where it ends.
    pub(crate) fn point(&self) -> JournalPoint {
        self.point
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::vfs::StdFs;
    use ledger_core::{ClusterTime, Command, Currency, Ledger, LedgerConfig, PlayerId, TxId};

    /// `n` chained entries of shard 1 (account openings).
    pub(crate) fn entries(n: usize) -> Vec<Entry> {
        let mut ledger = Ledger::new(ShardId(1), LedgerConfig::default());
        let mut out = Vec::new();
        for i in 0..n {
            let cmd = Command::OpenAccount {
                tx: TxId::new(format!("o{i}")).unwrap(),
                player: PlayerId::new(format!("p{i}")).unwrap(),
                currency: Currency::new("EUR").unwrap(),
            };
            ledger.apply(&cmd, ClusterTime::from_millis(i as u64), &mut out);
        }
        out
    }

    /// Appends `all` in two writes and returns the point after each entry.
    fn written(path: &Path, all: &[Entry]) -> Vec<JournalPoint> {
        let mut j = Journal::open(&StdFs, path, ShardId(1), JournalPoint::empty(ShardId(1))).unwrap();
        let mut points = vec![j.point()];
        for e in all {
            j.append(std::slice::from_ref(e)).unwrap();
            points.push(j.point());
        }
        j.sync().unwrap();
        points
    }

    #[test]
    fn append_reopen_and_cut_past_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let all = entries(10);
        let points = written(&path, &all);
        let j = Journal::open(&StdFs, &path, ShardId(1), points[10]).unwrap();
        assert_eq!(j.read(7).unwrap().unwrap(), all[6]);
        assert_eq!(j.read(11).unwrap(), None);

        let j = Journal::open(&StdFs, &path, ShardId(1), points[4]).unwrap();
        assert_eq!((j.len(), j.head()), (4, all[3].hash));
        let j = Journal::open(&StdFs, &path, ShardId(1), points[4]).unwrap();
        assert_eq!(j.len(), 4, "the cut is durable");
        assert!(matches!(
            Journal::open(&StdFs, &path, ShardId(1), points[5]),
            Err(JournalError::TooShort { found: 4, needed: 5, .. })
        ));
    }

    #[test]
    fn the_index_finds_every_entry_and_is_rebuilt_when_lost_or_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let n = 3 * INDEX_STRIDE as usize + 5;
        let all = entries(n);
        let points = written(&path, &all);
        let check = |j: &Journal, upto: usize| {
            assert_eq!(j.len(), upto as u64);
            for (i, e) in all[..upto].iter().enumerate() {
                assert_eq!(j.read(i as u64 + 1).unwrap().as_ref(), Some(e), "entry {}", i + 1);
            }
            let range = j.read_range(60, 80).unwrap();
            assert_eq!(range, all[59..upto.min(139)].to_vec(), "a range across index blocks");
            assert_eq!(j.prefix(upto as u64).unwrap().bytes, points[upto].bytes);
            if upto > 70 {
                assert_eq!(j.prefix(70).unwrap().bytes, points[70].bytes);
            }
        };
        check(&Journal::open(&StdFs, &path, ShardId(1), points[n]).unwrap(), n);
        let idx = index_path(&path);
        std::fs::remove_file(&idx).unwrap();
        check(&Journal::open(&StdFs, &path, ShardId(1), points[n]).unwrap(), n);
        std::fs::write(&idx, [0xffu8; 24]).unwrap();
        check(&Journal::open(&StdFs, &path, ShardId(1), points[n]).unwrap(), n);
        for cut in [2 * INDEX_STRIDE as usize + 1, 2 * INDEX_STRIDE as usize, 100] {
            let j = Journal::open(&StdFs, &path, ShardId(1), points[cut]).unwrap();
            check(&j, cut);
        }
    }

    #[test]
    fn a_damaged_entry_at_the_snapshots_point_is_an_error_and_any_read_finds_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let all = entries(5);
        let points = written(&path, &all);
        let third = points[2].bytes as usize;
        let fifth = points[4].bytes as usize;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[fifth + 20] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        match Journal::open(&StdFs, &path, ShardId(1), points[5]) {
            Err(JournalError::Damaged { source: VerifyError::HashMismatch { position: 5, .. }, .. }) => {}
            Err(JournalError::Damaged { source: VerifyError::Decode { position: 5, .. }, .. }) => {}
            other => panic!("expected damage at entry 5, got {:?}", other.err()),
        }
        // Damage past what the snapshot needs is simply cut off.
        assert_eq!(Journal::open(&StdFs, &path, ShardId(1), points[4]).unwrap().len(), 4);
        // Damage before the snapshot's point is not read at open, but every read checks.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[third + 20] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let j = Journal::open(&StdFs, &path, ShardId(1), points[4]).unwrap();
        assert!(j.read(3).is_err(), "a damaged entry never reads as valid");
        assert!(j.read(2).is_ok());
    }
}
