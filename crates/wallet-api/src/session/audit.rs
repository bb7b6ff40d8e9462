//! The security event log: every session created, stepped up or revoked, every refresh-token
//! reuse, device mismatch and IP change this node saw, on disk, append-only, hash-chained (the
//! same line format as the RNG beacon's audit log), for the compliance team.
//!
//! # Format (version 1)
//! A text file of lines, one record per line:
//!
//! ```text
//! <sha256 of JSON, 64 lower-case hex> <space> <JSON object> <newline>
//! ```
//!
//! The JSON object has `seq` (0, 1, 2, ... with no gap), `prev` (the previous line's hash; 64
//! zeros on the first line), `at_ms` (wall-clock Unix milliseconds) and `kind`, with that kind's
//! fields:
//!
//! | kind | fields |
//! |---|---|
//! | `open` | `version`, `node`: a process started appending |
//! | `session_created` | `player`, `session_id`, `level`, `ip` |
//! | `stepped_up` | `player`, `from_session_id`, `session_id`, `level` |
//! | `refresh_token_reuse` | `player`, `session_id` (its family is revoked next) |
//! | `device_mismatch` | `player`, `session_id` |
//! | `ip_changed` | `player`, `session_id`, `from`, `to` |
//! | `revoked` | `player`, `session_id`, `reason` |
//!
//! No token, key or device fingerprint is ever written. The hash covers the JSON bytes exactly
//! as written and the JSON names the previous hash, so changing, inserting, dropping or
//! reordering any line breaks the chain at the first line touched; `walletd security-log
//! verify` checks it.
//!
//! # Durability
//! Events are appended by a writer thread; many arriving together share one fsync. The session
//! service waits for the events a call caused to be on disk before it answers (a [`flush`]
//! barrier), so an acknowledged login, step-up, revocation or detected reuse is in the log. A
//! torn final line (a crash mid-write) is cut when the log is reopened; other damage refuses the
//! open. After a write error the log stops for good and the session service refuses calls that
//! would create events.
//!
//! [`flush`]: SecurityLog::flush

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use serde_json::{Map, Value, json};
use session_store::SecurityEvent;
use sha2::{Digest, Sha256};

/// The log format's version, written in every `open` record.
pub const FORMAT_VERSION: u32 = 1;
const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event's kind and fields, as the log writes them.
pub fn event_fields(e: &SecurityEvent) -> (&'static str, Value) {
    match e {
        SecurityEvent::SessionCreated { player, sid, level, ip } => {
            ("session_created", json!({ "player": player, "session_id": sid, "level": level, "ip": ip }))
        }
        SecurityEvent::SteppedUp { player, from_sid, sid, level } => {
            ("stepped_up", json!({ "player": player, "from_session_id": from_sid, "session_id": sid, "level": level }))
        }
        SecurityEvent::RefreshTokenReuse { player, sid } => {
            ("refresh_token_reuse", json!({ "player": player, "session_id": sid }))
        }
        SecurityEvent::DeviceMismatch { player, sid } => {
            ("device_mismatch", json!({ "player": player, "session_id": sid }))
        }
        SecurityEvent::IpChanged { player, sid, from, to } => {
            ("ip_changed", json!({ "player": player, "session_id": sid, "from": from, "to": to }))
        }
        SecurityEvent::Revoked { player, sid, reason } => {
            ("revoked", json!({ "player": player, "session_id": sid, "reason": reason }))
        }
    }
}

/// One line: its text and its hash.
fn format_line(seq: u64, prev: &str, at_ms: u64, kind: &str, fields: Value) -> (String, String) {
    let mut object = Map::new();
    object.insert("seq".into(), seq.into());
    object.insert("prev".into(), prev.into());
    object.insert("at_ms".into(), at_ms.into());
    object.insert("kind".into(), kind.into());
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    let text = Value::Object(object).to_string();
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    (format!("{hash} {text}\n"), hash)
}

/// Where a check failed: the 1-based line, the byte offset where it starts, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} (byte offset {offset}): {reason}")]
pub struct VerifyError {
    /// 1-based line number.
    pub line: usize,
    /// Byte offset of the line's start.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

/// What a verified log holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Records in the log.
    pub records: u64,
    /// Records per kind, by name.
    pub kinds: std::collections::BTreeMap<String, u64>,
    /// The hash of the last line (pin it to detect a later truncation).
    pub head: String,
}

/// Checks a whole log: every line's hash, its `seq` and its link to the line before.
pub fn verify(bytes: &[u8]) -> Result<Report, VerifyError> {
    let mut report = Report { head: ZERO_HASH.into(), ..Report::default() };
    let mut offset = 0u64;
    for (i, raw) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let fail = |reason: String| VerifyError { line: i + 1, offset, reason };
        let line = raw.strip_suffix(b"\n").ok_or_else(|| fail("the last line is not complete".into()))?;
        let text = std::str::from_utf8(line).map_err(|_| fail("not UTF-8".into()))?;
        let (hash, json) = text.split_once(' ').ok_or_else(|| fail("no space after the hash".into()))?;
        if hex::encode(Sha256::digest(json.as_bytes())) != hash {
            return Err(fail("the hash does not match the record".into()));
        }
        let record: Value = serde_json::from_str(json).map_err(|e| fail(format!("not JSON: {e}")))?;
        if record.get("seq").and_then(Value::as_u64) != Some(report.records) {
            return Err(fail(format!("expected seq {}", report.records)));
        }
        if record.get("prev").and_then(Value::as_str) != Some(report.head.as_str()) {
            return Err(fail("prev does not name the previous line's hash".into()));
        }
        let kind = record.get("kind").and_then(Value::as_str).ok_or_else(|| fail("no kind".into()))?;
        *report.kinds.entry(kind.to_string()).or_default() += 1;
        report.records += 1;
        report.head = hash.to_string();
        offset += raw.len() as u64;
    }
    Ok(report)
}

enum Message {
    Event { at_ms: u64, kind: &'static str, fields: Value },
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The log's writer; cheap to clone (clones share the thread).
#[derive(Clone)]
pub struct SecurityLog {
    tx: mpsc::Sender<Message>,
    failed: Arc<AtomicBool>,
}

fn now_ms() -> u64 {
    // The wall clock is informational here (the order is the chain's): an IO edge, never a
    // decision.
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl SecurityLog {
    /// Opens (or creates) the log at `path`, checks it, cuts a torn final line, and appends an
    /// `open` record naming `node`. Returns the writer and what was already there.
    pub fn open(path: &Path, node: &str) -> Result<(Self, Report), String> {
        let show = |e: std::io::Error| format!("security log {}: {e}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(show)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path).map_err(show)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(show)?;
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if keep < bytes.len() {
            tracing::warn!(path = %path.display(), cut = bytes.len() - keep, "cutting a torn final line from the security log");
            file.set_len(keep as u64).map_err(show)?;
            bytes.truncate(keep);
        }
        let report = verify(&bytes)
            .map_err(|e| format!("security log {} is damaged, refusing to append: {e}", path.display()))?;
        file.seek(SeekFrom::End(0)).map_err(show)?;
        let (line, head) = format_line(
            report.records,
            &report.head,
            now_ms(),
            "open",
            json!({ "version": FORMAT_VERSION, "node": node }),
        );
        file.write_all(line.as_bytes()).and_then(|()| file.sync_data()).map_err(show)?;
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let state = (report.records + 1, head);
        let flag = failed.clone();
        std::thread::Builder::new()
            .name("security-log".into())
            .spawn(move || writer(file, rx, state, flag))
            .map_err(|e| format!("security log writer: {e}"))?;
        Ok((SecurityLog { tx, failed }, report))
    }

    /// Queues an event (never blocks, never drops one while the writer runs).
    pub fn record(&self, e: &SecurityEvent) {
        let (kind, fields) = event_fields(e);
        if self.tx.send(Message::Event { at_ms: now_ms(), kind, fields }).is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
    }

    /// Resolves once every event queued before it is on disk.
    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Message::Flush(tx)).map_err(|_| "the security log writer has stopped".to_string())?;
        rx.await.map_err(|_| "the security log writer has stopped".to_string())?
    }

    /// False once a write failed: nothing more can be made durable.
    pub fn healthy(&self) -> bool {
        !self.failed.load(Ordering::SeqCst)
    }

    /// The store's event sink that appends to this log.
    pub fn sink(&self) -> session_store::EventSink {
        let log = self.clone();
        Arc::new(move |e: &SecurityEvent| log.record(e))
    }
}

fn writer(mut file: File, rx: mpsc::Receiver<Message>, (mut seq, mut head): (u64, String), failed: Arc<AtomicBool>) {
    let mut error: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut buf = String::new();
        let mut waiting = Vec::new();
        let (mut s, mut h) = (seq, head.clone());
        for m in std::iter::once(first).chain(rx.try_iter()) {
            match m {
                Message::Event { at_ms, kind, fields } => {
                    let (line, hash) = format_line(s, &h, at_ms, kind, fields);
                    buf.push_str(&line);
                    s += 1;
                    h = hash;
                }
                Message::Flush(ack) => waiting.push(ack),
            }
        }
        if error.is_none() && !buf.is_empty() {
            match file.write_all(buf.as_bytes()).and_then(|()| file.sync_data()) {
                Ok(()) => (seq, head) = (s, h),
                Err(e) => {
                    // A partial write leaves the chain's end unknown: stop for good.
                    tracing::error!("security log write failed: {e}; session calls that log events are refused");
                    failed.store(true, Ordering::SeqCst);
                    error = Some(e.to_string());
                }
            }
        }
        for ack in waiting {
            let _ = ack.send(error.clone().map_or(Ok(()), Err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Vec<SecurityEvent> {
        vec![
            SecurityEvent::SessionCreated { player: "alice".into(), sid: "s1".into(), level: 1, ip: "10.0.0.1".into() },
            SecurityEvent::SteppedUp { player: "alice".into(), from_sid: "s1".into(), sid: "s2".into(), level: 2 },
            SecurityEvent::RefreshTokenReuse { player: "alice".into(), sid: "s2".into() },
            SecurityEvent::Revoked { player: "alice".into(), sid: "s2".into(), reason: "refresh token reuse" },
        ]
    }

    #[tokio::test]
    async fn events_are_chained_durable_at_flush_and_any_change_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("security-events.log");
        let (log, before) = SecurityLog::open(&path, "node-1").unwrap();
        assert_eq!(before.records, 0);
        for e in events() {
            log.record(&e);
        }
        log.flush().await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let report = verify(&bytes).unwrap();
        assert_eq!(report.records, 5);
        assert_eq!(report.kinds["revoked"], 1);
        assert!(!String::from_utf8_lossy(&bytes).contains("token\":"), "no token is ever written");
        drop(log);

        // A reopen continues the chain after a torn tail is cut.
        let mut torn = bytes.clone();
        torn.extend_from_slice(b"abc {\"seq\":");
        std::fs::write(&path, &torn).unwrap();
        let (log, again) = SecurityLog::open(&path, "node-1").unwrap();
        assert_eq!((again.records, again.head.clone()), (5, report.head.clone()));
        log.record(&events()[0]);
        log.flush().await.unwrap();
        assert_eq!(verify(&std::fs::read(&path).unwrap()).unwrap().records, 7);

        // Changing one byte, dropping a line or swapping two are each found at the line touched.
        let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let changed = text.replacen("\"alice\"", "\"mallory\"", 1);
        assert_eq!(verify(changed.as_bytes()).unwrap_err().line, 2);
        let dropped: String =
            lines.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, l)| format!("{l}\n")).collect();
        assert_eq!(verify(dropped.as_bytes()).unwrap_err().line, 3);
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        let swapped: String = swapped.iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(verify(swapped.as_bytes()).unwrap_err().line, 4);
        // A damaged log is not appended to.
        std::fs::write(&path, changed).unwrap();
        assert!(SecurityLog::open(&path, "node-1").is_err());
    }
}
