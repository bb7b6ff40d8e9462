//! The tamper-evident audit log: every commitment, reseed, draw, reveal and epoch key, on disk,
//! hash-chained.
//!
//! # Format (version 1)
//! A text file of lines, one record per line:
//!
//! ```text
//! <sha256 of JSON, 64 lower-case hex> <space> <JSON object> <newline>
//! ```
//!
//! The JSON object has `seq` (0, 1, 2, ... with no gap), `prev` (the previous line's hash; 64
//! zeros on the first line), `at_ms` (wall-clock milliseconds, informational) and `kind` with
//! that kind's fields (see [`Event`]). The hash covers the JSON bytes exactly as written, and
//! the JSON names the previous hash, so changing, inserting, dropping or reordering any byte
//! breaks the chain at the first line touched.
//!
//! # Verification
//! [`verify`] checks the chain and then the meaning: draws use the nonces of their seed in
//! order, once each; a revealed seed hashes to its commitment and re-derives every outcome logged
//! under it; a revealed epoch key re-derives every round of its epoch. A failure names the line
//! and byte offset where it was found.
//!
//! # Durability
//! [`LogWriter`] appends on its own thread and fsyncs before it acknowledges; many records
//! arriving together share one fsync. A torn final line (a crash mid-write, never acknowledged)
//! is cut off when the log is reopened; any other damage refuses the open.

use crate::fair::{self, Game, Mode};
use crate::rounds;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc;

/// One audited event. Secrets appear only in `reveal` and `epoch_reveal`, which are the reveal
/// protocol itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A beacon process started (or restarted) on this log.
    Open { version: u32 },
    /// The CSPRNG was reseeded; `commitment` identifies the new seed without revealing it.
    Reseed { generation: u64, reason: String, commitment: String },
    /// A pair's server seed was committed; no draw under it precedes this line.
    Commit { pair: String, commitment: String, client_seed: Option<String> },
    Draw {
        pair: String,
        commitment: String,
        client_seed: String,
        nonce: u64,
        game: String,
        mode: String,
        outcome: Value,
    },
    /// A retired server seed, revealed.
    Reveal { pair: String, commitment: String, server_seed: String, nonces_used: u64 },
    /// An epoch key committed before its first round. `rounds_per_epoch` bounds the rounds it
    /// can have produced, so a beacon restarted after a crash (which loses the key and the last
    /// round number) starts its next epoch past all of them.
    EpochCommit {
        epoch: u64,
        key_hash: String,
        first_round: u64,
        previous_signature: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rounds_per_epoch: Option<u64>,
    },
    /// An epoch key revealed after its last round.
    EpochReveal { epoch: u64, key: String, last_round: u64, last_signature: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    seq: u64,
    prev: String,
    at_ms: u64,
    #[serde(flatten)]
    event: Event,
}

const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
pub const FORMAT_VERSION: u32 = 1;

/// Where a check failed: the 1-based line, the byte offset where that line starts, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} (byte offset {offset}): {reason}")]
pub struct VerifyError {
    pub line: usize,
    pub offset: u64,
    pub reason: String,
}

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub records: u64,
    pub draws: u64,
    /// Draws whose seed is revealed in the log and whose outcome was recomputed and matched.
    pub draws_rederived: u64,
    /// Draws whose seed is still secret (the pair has not rotated yet).
    pub draws_unrevealed: u64,
    pub reveals: u64,
    pub reseeds: u64,
    pub epochs_revealed: u64,
    pub rounds_rederived: u64,
    /// The hash of the last line: pin it to detect later truncation.
    pub head: String,
    /// The newest epoch committed, where a restarted beacon continues from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_epoch: Option<EpochState>,
}

/// The newest epoch in a log, as a restarted beacon needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EpochState {
    pub epoch: u64,
    pub first_round: u64,
    pub rounds_per_epoch: Option<u64>,
    /// Its last round and that round's signature, once the key was revealed (a clean stop or
    /// the epoch's end); `None` after a crash.
    pub revealed: Option<(u64, String)>,
}

impl EpochState {
    /// The lowest round number the next epoch may start at: right after the last round when it
    /// is known, else past every round this epoch could have produced.
    pub fn next_round_min(&self) -> Option<u64> {
        match &self.revealed {
            Some((last, _)) => last.checked_add(1),
            None => self.first_round.checked_add(self.rounds_per_epoch?),
        }
    }
}

struct PendingDraw {
    line: usize,
    offset: u64,
    client_seed: String,
    nonce: u64,
    game: String,
    mode: String,
    outcome: Value,
}

#[derive(Default)]
struct SeedState {
    pair: String,
    next_nonce: u64,
    revealed: bool,
    draws: Vec<PendingDraw>,
}

/// Checks a whole log. See the module documentation for what is checked.
pub fn verify(bytes: &[u8]) -> Result<Report, VerifyError> {
    let mut report = Report { head: ZERO_HASH.to_owned(), ..Report::default() };
    let mut seeds: BTreeMap<String, SeedState> = BTreeMap::new();
    let mut epochs: BTreeMap<u64, (String, u64, String)> = BTreeMap::new(); // epoch -> (key hash, first round, prev sig)
    let mut offset = 0u64;
    let mut line_no = 0usize;
    let mut rest = bytes;
    while !rest.is_empty() {
        line_no += 1;
        let fail = |reason: String| VerifyError { line: line_no, offset, reason };
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(fail("torn final line: no newline".into()));
        };
        let line = &rest[..end];
        let (hash, json) = split_line(line).ok_or_else(|| fail("not `<hash> <json>`".into()))?;
        let actual = hex::encode(Sha256::digest(json));
        if actual != hash {
            return Err(fail(format!("record hash mismatch: line says {hash}, content hashes to {actual}")));
        }
        let rec: Record = serde_json::from_slice(json).map_err(|e| fail(format!("malformed record: {e}")))?;
        if rec.seq != report.records {
            return Err(fail(format!("sequence {} where {} was expected", rec.seq, report.records)));
        }
        if rec.prev != report.head {
            return Err(fail("prev does not name the previous line's hash".into()));
        }
        check_event(&rec.event, &mut seeds, &mut epochs, &mut report, line_no, offset).map_err(fail)?;
        report.records += 1;
        report.head = actual;
        offset += end as u64 + 1;
        rest = &rest[end + 1..];
    }
    report.draws_unrevealed = seeds.values().filter(|s| !s.revealed).map(|s| s.draws.len() as u64).sum();
    Ok(report)
}

fn split_line(line: &[u8]) -> Option<(&str, &[u8])> {
    if line.len() < 66 || line[64] != b' ' {
        return None;
    }
    let hash = std::str::from_utf8(&line[..64]).ok()?;
    Some((hash, &line[65..]))
}

fn hex32(s: &str) -> Result<[u8; 32], String> {
    hex::decode(s).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| format!("{s:?} is not 32 bytes of hex"))
}

fn check_event(
    event: &Event,
    seeds: &mut BTreeMap<String, SeedState>,
    epochs: &mut BTreeMap<u64, (String, u64, String)>,
    report: &mut Report,
    line: usize,
    offset: u64,
) -> Result<(), String> {
    match event {
        Event::Open { version } if *version != FORMAT_VERSION => return Err(format!("unknown log version {version}")),
        Event::Open { .. } => {}
        Event::Reseed { .. } => report.reseeds += 1,
        Event::Commit { pair, commitment, .. } => {
            if seeds.contains_key(commitment) {
                return Err(format!("commitment {commitment} committed twice"));
            }
            seeds.insert(commitment.clone(), SeedState { pair: pair.clone(), ..SeedState::default() });
        }
        Event::Draw { pair, commitment, client_seed, nonce, game, mode, outcome } => {
            let s = seeds.get_mut(commitment).ok_or_else(|| format!("draw under uncommitted seed {commitment}"))?;
            if s.revealed {
                return Err(format!("draw under seed {commitment} after it was revealed"));
            }
            if &s.pair != pair {
                return Err(format!("draw for pair {pair:?} under pair {:?}'s seed", s.pair));
            }
            if *nonce != s.next_nonce {
                return Err(format!(
                    "nonce {nonce} where {} was expected: nonces are never reused or skipped",
                    s.next_nonce
                ));
            }
            if let Some(first) = s.draws.first()
                && first.client_seed != *client_seed
            {
                return Err("client seed changed without a rotation".into());
            }
            s.next_nonce += 1;
            s.draws.push(PendingDraw {
                line,
                offset,
                client_seed: client_seed.clone(),
                nonce: *nonce,
                game: game.clone(),
                mode: mode.clone(),
                outcome: outcome.clone(),
            });
            report.draws += 1;
        }
        Event::Reveal { commitment, server_seed, nonces_used, .. } => {
            let s = seeds.get_mut(commitment).ok_or_else(|| format!("reveal of uncommitted seed {commitment}"))?;
            if s.revealed {
                return Err(format!("seed {commitment} revealed twice"));
            }
            if hex::encode(fair::commitment(server_seed)) != *commitment {
                return Err(format!("revealed seed does not hash to commitment {commitment}"));
            }
            if *nonces_used != s.next_nonce {
                return Err(format!("reveal says {nonces_used} nonces were used; the log holds {}", s.next_nonce));
            }
            s.revealed = true;
            for d in &s.draws {
                let at = |why: String| format!("{why} (the draw at line {}, byte offset {})", d.line, d.offset);
                let game = Game::parse(&d.game).map_err(|e| at(e.to_string()))?;
                let mode = Mode::parse(&d.mode).map_err(|e| at(e.to_string()))?;
                let again =
                    fair::outcome(server_seed, &d.client_seed, d.nonce, game, mode).map_err(|e| at(e.to_string()))?;
                if again.to_json() != d.outcome {
                    return Err(at(format!(
                        "nonce {} re-derives to {} but the log says {}",
                        d.nonce,
                        again.to_json(),
                        d.outcome
                    )));
                }
                report.draws_rederived += 1;
            }
            report.reveals += 1;
        }
        Event::EpochCommit { epoch, key_hash, first_round, previous_signature, rounds_per_epoch } => {
            if epochs.insert(*epoch, (key_hash.clone(), *first_round, previous_signature.clone())).is_some() {
                return Err(format!("epoch {epoch} committed twice"));
            }
            if let Some(prev) = &report.last_epoch {
                if *epoch != prev.epoch + 1 {
                    return Err(format!("epoch {epoch} follows epoch {}", prev.epoch));
                }
                // Round numbers never repeat: the new epoch starts after every round the last
                // one produced (or could have, if its end is unknown after a crash).
                match prev.next_round_min() {
                    Some(min) if *first_round < min => {
                        return Err(format!("epoch {epoch} starts at round {first_round}, before round {min}"));
                    }
                    None if prev.revealed.is_none() && *first_round <= prev.first_round => {
                        return Err(format!(
                            "epoch {epoch} starts at round {first_round}, not after epoch {}'s",
                            prev.epoch
                        ));
                    }
                    _ => {}
                }
                // A revealed epoch's chain continues through the next one.
                if let Some((_, last_sig)) = &prev.revealed
                    && previous_signature != last_sig
                {
                    return Err(format!("epoch {epoch} does not chain to epoch {}'s last signature", prev.epoch));
                }
            }
            report.last_epoch = Some(EpochState {
                epoch: *epoch,
                first_round: *first_round,
                rounds_per_epoch: *rounds_per_epoch,
                revealed: None,
            });
        }
        Event::EpochReveal { epoch, key, last_round, last_signature } => {
            let (key_hash, first, prev) =
                epochs.get(epoch).ok_or_else(|| format!("reveal of uncommitted epoch {epoch}"))?;
            let key = hex32(key)?;
            if hex::encode(rounds::key_hash(&key)) != *key_hash {
                return Err(format!("epoch {epoch} key does not hash to its commitment"));
            }
            let mut sig = hex32(prev)?;
            for n in *first..=*last_round {
                sig = rounds::signature(&key, &sig, n);
                report.rounds_rederived += 1;
            }
            if hex::encode(sig) != *last_signature {
                return Err(format!(
                    "epoch {epoch}: rounds {first}..={last_round} re-derive to a different last signature"
                ));
            }
            if let Some(rpe) = report.last_epoch.as_ref().filter(|e| e.epoch == *epoch).and_then(|e| e.rounds_per_epoch)
                && last_round.saturating_sub(*first) >= rpe
            {
                return Err(format!("epoch {epoch} reveals more than its {rpe} rounds"));
            }
            if let Some(e) = report.last_epoch.as_mut().filter(|e| e.epoch == *epoch) {
                e.revealed = Some((*last_round, last_signature.clone()));
            }
            report.epochs_revealed += 1;
        }
    }
    Ok(())
}

fn format_line(seq: u64, prev: &str, at_ms: u64, event: Event) -> (String, String) {
    let rec = Record { seq, prev: prev.to_owned(), at_ms, event };
    let json = serde_json::to_string(&rec).expect("records serialize");
    let hash = hex::encode(Sha256::digest(json.as_bytes()));
    (format!("{hash} {json}\n"), hash)
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("audit log io: {0}")]
    Io(#[from] std::io::Error),
    #[error("audit log is damaged, refusing to append to it: {0}")]
    Damaged(VerifyError),
    #[error("audit log writer stopped after an earlier failure")]
    Stopped,
}

type Batch = (Vec<Event>, u64, tokio::sync::oneshot::Sender<Result<(), String>>);

/// Appends records on a dedicated thread; see the module documentation.
pub struct LogWriter {
    tx: mpsc::SyncSender<Batch>,
}

/// Batches waiting for the writer thread, at most. A submitter that finds the queue full waits
/// for the disk (it holds the beacon's lock, so every draw waits): backpressure rather than
/// memory growing while fsync is slow.
const BATCHES_QUEUED_MAX: usize = 4096;

/// Waits for one submitted batch to be durable.
pub struct Ack(tokio::sync::oneshot::Receiver<Result<(), String>>);

impl Ack {
    /// Resolves once the batch is on disk.
    pub async fn durable(self) -> Result<(), LogError> {
        Self::map(self.0.await)
    }

    /// Blocks until the batch is on disk; for callers outside an async runtime.
    pub fn wait(self) -> Result<(), LogError> {
        Self::map(self.0.blocking_recv())
    }

    fn map(r: Result<Result<(), String>, tokio::sync::oneshot::error::RecvError>) -> Result<(), LogError> {
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LogError::Io(std::io::Error::other(e))),
            Err(_) => Err(LogError::Stopped),
        }
    }
}

impl LogWriter {
    /// Opens (or creates) the log, checks it, cuts a torn final line, and appends an `open`
    /// record. Returns the writer and the report of what was already there.
    pub fn open(path: &Path, at_ms: u64) -> Result<(Self, Report), LogError> {
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let keep = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => 0,
        };
        if keep < bytes.len() {
            tracing::warn!(path = %path.display(), cut = bytes.len() - keep, "cutting a torn final line from the audit log");
            file.set_len(keep as u64)?;
            file.sync_all()?;
            bytes.truncate(keep);
        }
        let report = verify(&bytes).map_err(LogError::Damaged)?;
        file.seek(SeekFrom::End(0))?;
        let (tx, rx) = mpsc::sync_channel::<Batch>(BATCHES_QUEUED_MAX);
        let mut state = (report.records, report.head.clone());
        let first = format_line(state.0, &state.1, at_ms, Event::Open { version: FORMAT_VERSION });
        file.write_all(first.0.as_bytes())?;
        file.sync_data()?;
        state = (state.0 + 1, first.1);
        std::thread::Builder::new().name("rng-audit-log".into()).spawn(move || writer_loop(file, rx, state))?;
        Ok((LogWriter { tx }, report))
    }

    /// Queues events in order; the returned [`Ack`] resolves once they are durable.
    pub fn submit(&self, events: Vec<Event>, at_ms: u64) -> Ack {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send((events, at_ms, tx)).is_err() {
            // The writer is gone; the dropped sender makes `wait` report it.
        }
        Ack(rx)
    }
}

fn writer_loop(mut file: File, rx: mpsc::Receiver<Batch>, (mut seq, mut head): (u64, String)) {
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = match &failed {
            Some(e) => Err(e.clone()),
            None => {
                let mut buf = String::new();
                let (mut s, mut h) = (seq, head.clone());
                for (events, at_ms, _) in &mut batch {
                    for ev in events.drain(..) {
                        let (line, hash) = format_line(s, &h, *at_ms, ev);
                        buf.push_str(&line);
                        s += 1;
                        h = hash;
                    }
                }
                match file.write_all(buf.as_bytes()).and_then(|()| file.sync_data()) {
                    Ok(()) => {
                        (seq, head) = (s, h);
                        Ok(())
                    }
                    Err(e) => {
                        // A partial write would leave the chain in an unknown state: stop for good.
                        failed = Some(e.to_string());
                        Err(e.to_string())
                    }
                }
            }
        };
        for (_, _, ack) in batch {
            let _ = ack.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_chain_and_verify() {
        let (a, ha) = format_line(0, ZERO_HASH, 1, Event::Open { version: 1 });
        let (b, hb) =
            format_line(1, &ha, 2, Event::Reseed { generation: 0, reason: "initial".into(), commitment: "00".into() });
        let r = verify(format!("{a}{b}").as_bytes()).unwrap();
        assert_eq!((r.records, r.reseeds, r.head), (2, 1, hb));
        // Swapping the lines breaks the chain at line 1.
        let e = verify(format!("{b}{a}").as_bytes()).unwrap_err();
        assert_eq!((e.line, e.offset), (1, 0));
    }

    /// A log of epoch commits (epoch, first round), each after an `open` as a restart writes it.
    fn restarts(epochs: &[(u64, u64)]) -> Result<Report, VerifyError> {
        let mut text = String::new();
        let (mut seq, mut head) = (0, ZERO_HASH.to_owned());
        for (epoch, first_round) in epochs {
            for event in [
                Event::Open { version: 1 },
                Event::EpochCommit {
                    epoch: *epoch,
                    key_hash: "00".repeat(32),
                    first_round: *first_round,
                    previous_signature: "00".repeat(32),
                    rounds_per_epoch: Some(5),
                },
            ] {
                let (line, hash) = format_line(seq, &head, 0, event);
                text.push_str(&line);
                (seq, head) = (seq + 1, hash);
            }
        }
        verify(text.as_bytes())
    }

    #[test]
    fn epochs_after_a_crash_continue_without_reusing_numbers_or_rounds() {
        let r = restarts(&[(0, 0), (1, 5), (2, 10)]).unwrap();
        assert_eq!(r.last_epoch.map(|e| (e.epoch, e.first_round)), Some((2, 10)));
        let twice = restarts(&[(0, 0), (0, 5)]).unwrap_err();
        assert!(twice.reason.contains("committed twice"), "{twice}");
        let reused = restarts(&[(0, 0), (1, 3)]).unwrap_err();
        assert!(reused.reason.contains("before round 5"), "{reused}");
        let skipped = restarts(&[(0, 0), (2, 5)]).unwrap_err();
        assert!(skipped.reason.contains("follows epoch 0"), "{skipped}");
    }
}
