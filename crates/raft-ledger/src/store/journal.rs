//! The per-shard journal: every ledger entry of the shard, in order, on disk.
//!
//! Frames are `u32 BE length | canonical entry encoding | 32-byte SHA-256 of the encoding`. The
//! journal is rebuilt deterministically from the Raft log, so it is not fsynced on every append:
//! it is fsynced before each snapshot, and on restart everything past the snapshot is cut and
//! re-applied from the log. What the snapshot covers is verified hash by hash on every open.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::vfs::{VFile, Vfs};
use crate::entry::{Entry, Hash, genesis_hash};
use crate::shard::ShardId;
use crate::verify::{Verifier, VerifyError};

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
}

/// One shard's journal.
pub(crate) struct Journal {
    shard: ShardId,
    path: PathBuf,
    file: Arc<dyn VFile>,
    /// `offsets[i]` is where entry `i + 1` starts; `offsets.len()` is the entry count.
    offsets: Vec<u64>,
    end: u64,
    head: Hash,
}

/// Splits `bytes` into frames, verifying the chain, and returns (frame offsets, end, head, first
/// problem). Stops at the first problem.
fn scan(shard: ShardId, bytes: &[u8]) -> (Vec<u64>, u64, Hash, Option<VerifyError>) {
    let mut verifier = Verifier::new(shard);
    let mut offsets = Vec::new();
    let mut at = 0usize;
    let mut head = genesis_hash(shard);
    while at < bytes.len() {
        let position = offsets.len() as u64 + 1;
        let truncated = |what| VerifyError::Decode { position, source: crate::codec::DecodeError::Truncated(what) };
        let Some(len) = bytes.get(at..at + 4) else {
            return (offsets, at as u64, head, Some(truncated("frame length")));
        };
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(body) = bytes.get(at + 4..at + 4 + len) else {
            return (offsets, at as u64, head, Some(truncated("entry")));
        };
        let Some(stored) = bytes.get(at + 4 + len..at + 4 + len + 32) else {
            return (offsets, at as u64, head, Some(truncated("entry hash")));
        };
        let stored: Hash = stored.try_into().expect("32 bytes");
        if let Err(e) = verifier.push_raw(body, &stored) {
            return (offsets, at as u64, head, Some(e));
        }
        offsets.push(at as u64);
        head = stored;
        at += 4 + len + 32;
    }
    (offsets, at as u64, head, None)
}

fn frame(entry: &Entry, out: &mut Vec<u8>) {
    let body = entry.encode();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&entry.hash);
}

impl Journal {
    /// Opens the journal at `path`, verifies its first `keep` entries, and cuts everything after
    /// them (it will be re-applied from the Raft log).
    pub(crate) fn open(vfs: &dyn Vfs, path: &Path, shard: ShardId, keep: u64) -> Result<Self, JournalError> {
        let bytes = match vfs.read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let (mut offsets, end, head, problem) = scan(shard, &bytes);
        let display = path.display().to_string();
        if (offsets.len() as u64) < keep {
            return Err(match problem {
                Some(source) => JournalError::Damaged { path: display, source, needed: keep },
                None => JournalError::TooShort { path: display, found: offsets.len() as u64, needed: keep },
            });
        }
        let file = vfs.open(path)?;
        let (keep_end, keep_head) = if (offsets.len() as u64) == keep {
            (end, head)
        } else {
            let cut = offsets[keep as usize];
            let head = match keep {
                0 => genesis_hash(shard),
                k => {
                    let start = offsets[k as usize - 1] as usize;
                    let len = u32::from_be_bytes(bytes[start..start + 4].try_into().expect("4 bytes")) as usize;
                    bytes[start + 4 + len..start + 4 + len + 32].try_into().expect("32 bytes")
                }
            };
            (cut, head)
        };
        offsets.truncate(keep as usize);
        if (bytes.len() as u64) != keep_end {
            file.truncate(keep_end)?;
        }
        Ok(Self { shard, path: path.to_path_buf(), file, offsets, end: keep_end, head: keep_head })
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Hash of the last entry.
    pub(crate) fn head(&self) -> Hash {
        self.head
    }

    /// Appends entries with one write. They must continue the chain.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(entries.len() * 256);
        let mut offsets = Vec::with_capacity(entries.len());
        let mut head = self.head;
        for e in entries {
            assert_eq!(e.shard, self.shard, "entry of another shard");
            assert_eq!(e.seq, self.len() + offsets.len() as u64 + 1, "journal sequence must be contiguous");
            assert_eq!(e.prev_hash, head, "journal hash chain must link");
            offsets.push(self.end + buf.len() as u64);
            frame(e, &mut buf);
            head = e.hash;
        }
        self.file.append(&buf)?;
        self.offsets.extend(offsets);
        self.end += buf.len() as u64;
        self.head = head;
        Ok(())
    }

    /// Makes every appended entry durable.
    #[cfg(test)]
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync()
    }

    /// The entry with sequence number `seq`.
    pub(crate) fn read(&self, seq: u64) -> io::Result<Option<Entry>> {
        if seq == 0 || seq > self.len() {
            return Ok(None);
        }
        let start = self.offsets[seq as usize - 1];
        let stop = self.offsets.get(seq as usize).copied().unwrap_or(self.end);
        let mut buf = vec![0u8; (stop - start) as usize];
        self.file.read_at(start, &mut buf)?;
        let body = &buf[4..buf.len() - 32];
        let entry = Entry::decode(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if entry.hash[..] != buf[buf.len() - 32..] {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("journal entry {seq} fails its hash")));
        }
        Ok(Some(entry))
    }

    /// The stable prefix holding entries `1..=entries`, for a snapshot.
    pub(crate) fn prefix(&self, entries: u64) -> JournalPrefix {
        assert!(entries <= self.len(), "prefix past the end of the journal");
        let bytes = self.offsets.get(entries as usize).copied().unwrap_or(self.end);
        JournalPrefix { file: self.file.clone(), entries, bytes }
    }

    /// Replaces this journal with a verified copy received from a peer, atomically.
    pub(crate) fn replace(
        &mut self,
        vfs: &dyn Vfs,
        received: &Path,
        expected: (u64, Hash),
    ) -> Result<(), JournalError> {
        let bytes = vfs.read(received)?;
        let (offsets, end, head, problem) = scan(self.shard, &bytes);
        if let Some(source) = problem {
            return Err(JournalError::Damaged { path: received.display().to_string(), source, needed: expected.0 });
        }
        if (offsets.len() as u64, head) != expected {
            return Err(JournalError::HeadMismatch { found_seq: offsets.len() as u64, expected_seq: expected.0 });
        }
        vfs.open(received)?.sync()?;
        vfs.rename(received, &self.path)?;
        self.file = vfs.open(&self.path)?;
        self.offsets = offsets;
        self.end = end;
        self.head = head;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::vfs::StdFs;
    use crate::{ClusterTime, Command, Currency, Ledger, LedgerConfig, PlayerId, TxId};

    fn entries(n: usize) -> Vec<Entry> {
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

    #[test]
    fn append_reopen_and_cut_past_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let all = entries(10);
        let mut j = Journal::open(&StdFs, &path, ShardId(1), 0).unwrap();
        j.append(&all[..6]).unwrap();
        j.append(&all[6..]).unwrap();
        j.sync().unwrap();
        assert_eq!(j.read(7).unwrap().unwrap(), all[6]);
        assert_eq!(j.read(11).unwrap(), None);

        let j = Journal::open(&StdFs, &path, ShardId(1), 4).unwrap();
        assert_eq!((j.len(), j.head()), (4, all[3].hash));
        let j = Journal::open(&StdFs, &path, ShardId(1), 4).unwrap();
        assert_eq!(j.len(), 4, "the cut is durable");
        assert!(matches!(
            Journal::open(&StdFs, &path, ShardId(1), 5),
            Err(JournalError::TooShort { found: 4, needed: 5, .. })
        ));
    }

    #[test]
    fn a_damaged_entry_the_snapshot_needs_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let all = entries(5);
        let mut j = Journal::open(&StdFs, &path, ShardId(1), 0).unwrap();
        j.append(&all).unwrap();
        let third = j.offsets[2] as usize;
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[third + 20] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        match Journal::open(&StdFs, &path, ShardId(1), 5) {
            Err(JournalError::Damaged { source: VerifyError::HashMismatch { position: 3, .. }, .. }) => {}
            Err(JournalError::Damaged { source: VerifyError::Decode { position: 3, .. }, .. }) => {}
            other => panic!("expected damage at entry 3, got {:?}", other.err()),
        }
        // Damage past what the snapshot needs is simply cut off.
        assert_eq!(Journal::open(&StdFs, &path, ShardId(1), 2).unwrap().len(), 2);
    }
}
