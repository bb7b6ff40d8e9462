//! Where sessions and refresh tokens live: the [`Backend`] trait and the in-memory backend.
//!
//! Every operation that decides something is atomic in the backend, so that two processes (or
//! two tasks) racing on one refresh token cannot both win. Times are passed in; backends never
//! read a clock, except Redis enforcing the TTLs it is given.

use crate::model::{RefreshDecision, RefreshRecord, SessionRecord, decide_refresh};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// A backend failure. The store turns it into a refusal: it fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// What another process told us to forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Session(String),
    /// We may have missed messages (the subscription was re-established): forget everything.
    All,
}

/// The storage operations the session logic needs.
pub trait Backend: Send + Sync + 'static {
    /// Stores a new session and its first refresh token.
    fn create(
        &self,
        session: &SessionRecord,
        refresh_hash: &str,
        refresh: &RefreshRecord,
        now_ms: u64,
        idle_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn get_session(&self, sid: &str) -> impl Future<Output = Result<Option<SessionRecord>, StoreError>> + Send;

    /// Records activity; returns false if the session no longer exists (it is never recreated).
    fn touch(
        &self,
        sid: &str,
        last_seen_ms: u64,
        ip: &str,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn get_refresh(&self, hash: &str) -> impl Future<Output = Result<Option<RefreshRecord>, StoreError>> + Send;

    /// Decides and applies a refresh atomically; see [`decide_refresh`]. On `Rotated` and
    /// `RetryWithinOverlap` a new record `new_hash` is live with the next generation, and the
    /// session is touched (`last_seen = now_ms`, `ip`, TTL `session_ttl_ms`) in the same step.
    fn refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        now_ms: u64,
        overlap_ms: Option<u64>,
        ip: &str,
        session_ttl_ms: u64,
    ) -> impl Future<Output = Result<RefreshDecision, StoreError>> + Send;

    /// Replaces session `old_sid` by `new` (a regenerated id) with a new refresh token, and
    /// announces the old id as revoked. Returns false if the old session no longer exists.
    fn replace(
        &self,
        old_sid: &str,
        new: &SessionRecord,
        refresh_hash: &str,
        refresh: &RefreshRecord,
        now_ms: u64,
        idle_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes sessions and announces them to every process.
    fn revoke(&self, player: &str, sids: &[String]) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn player_sessions(&self, player: &str) -> impl Future<Output = Result<Vec<SessionRecord>, StoreError>> + Send;

    /// Counts one attempt in `bucket`'s fixed window of `window_ms` that holds `now_ms`, and
    /// returns the window's count so far (this attempt included). Shared by every process of a
    /// shared backend, so a limit holds across nodes.
    fn hit(&self, bucket: &str, window_ms: u64, now_ms: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// A stream of invalidations from other processes, if the backend is shared. The queue holds
    /// at most [`INVALIDATIONS_QUEUED_MAX`]; when it is full (the cache cannot keep up) an
    /// invalidation is dropped, which stays within the documented revocation bound: a cached
    /// decision lives at most `cache_ttl` anyway.
    fn subscribe(&self) -> Option<mpsc::Receiver<Invalidation>>;
}

/// Invalidations waiting for a process's cache, at most.
pub const INVALIDATIONS_QUEUED_MAX: usize = 4096;

/// TTL of a session key: until the idle timeout or the absolute end, whichever is first.
pub(crate) fn session_ttl(s: &SessionRecord, now_ms: u64, idle_ms: u64) -> u64 {
    s.expires_ms.saturating_sub(now_ms).min(idle_ms).max(1)
}

#[derive(Default)]
struct Mem {
    sessions: BTreeMap<String, SessionRecord>,
    refresh: BTreeMap<String, RefreshRecord>,
    players: BTreeMap<String, BTreeSet<String>>,
    /// Rate-limit counters by (bucket, window start).
    hits: BTreeMap<(String, u64), u64>,
}

/// Rate-limit counters kept before old windows are swept out.
const HIT_COUNTERS_SWEEP_AT: usize = 10_000;

/// The embedded default: everything in this process, nothing survives a restart. Expiry is
/// enforced by the session logic (records past their time are refused and then removed).
#[derive(Default)]
pub struct MemoryBackend {
    state: Mutex<Mem>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backend for MemoryBackend {
    async fn create(
        &self,
        session: &SessionRecord,
        refresh_hash: &str,
        refresh: &RefreshRecord,
        _now_ms: u64,
        _idle_ms: u64,
    ) -> Result<(), StoreError> {
        let mut m = self.state.lock().expect("memory backend lock");
        m.sessions.insert(session.sid.clone(), session.clone());
        m.refresh.insert(refresh_hash.to_owned(), refresh.clone());
        m.players.entry(session.player.clone()).or_default().insert(session.sid.clone());
        Ok(())
    }

    async fn get_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.state.lock().expect("memory backend lock").sessions.get(sid).cloned())
    }

    async fn touch(&self, sid: &str, last_seen_ms: u64, ip: &str, _ttl_ms: u64) -> Result<bool, StoreError> {
        let mut m = self.state.lock().expect("memory backend lock");
        Ok(match m.sessions.get_mut(sid) {
            Some(s) => {
                s.last_seen_ms = last_seen_ms;
                ip.clone_into(&mut s.ip);
                true
            }
            None => false,
        })
    }

    async fn get_refresh(&self, hash: &str) -> Result<Option<RefreshRecord>, StoreError> {
        Ok(self.state.lock().expect("memory backend lock").refresh.get(hash).cloned())
    }

    async fn refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        now_ms: u64,
        overlap_ms: Option<u64>,
        ip: &str,
        _session_ttl_ms: u64,
    ) -> Result<RefreshDecision, StoreError> {
        let mut m = self.state.lock().expect("memory backend lock");
        let Some(rec) = m.refresh.get(old_hash).cloned() else { return Ok(RefreshDecision::Unknown) };
        let Some(session_gen) = m.sessions.get(&rec.sid).map(|s| s.refresh_gen) else {
            return Ok(RefreshDecision::SessionGone);
        };
        let decision = decide_refresh(&rec, session_gen, now_ms, overlap_ms);
        if matches!(decision, RefreshDecision::Rotated | RefreshDecision::RetryWithinOverlap) {
            if let Some(r) = m.refresh.get_mut(old_hash) {
                r.rotated_ms.get_or_insert(now_ms);
            }
            let next = session_gen + 1;
            m.refresh.insert(
                new_hash.to_owned(),
                RefreshRecord { sid: rec.sid.clone(), generation: next, rotated_ms: None },
            );
            if let Some(s) = m.sessions.get_mut(&rec.sid) {
                s.refresh_gen = next;
                s.last_seen_ms = now_ms;
                ip.clone_into(&mut s.ip);
            }
        }
        Ok(decision)
    }

    async fn replace(
        &self,
        old_sid: &str,
        new: &SessionRecord,
        refresh_hash: &str,
        refresh: &RefreshRecord,
        _now_ms: u64,
        _idle_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut m = self.state.lock().expect("memory backend lock");
        if m.sessions.remove(old_sid).is_none() {
            return Ok(false);
        }
        let set = m.players.entry(new.player.clone()).or_default();
        set.remove(old_sid);
        set.insert(new.sid.clone());
        m.sessions.insert(new.sid.clone(), new.clone());
        m.refresh.insert(refresh_hash.to_owned(), refresh.clone());
        Ok(true)
    }

    async fn revoke(&self, player: &str, sids: &[String]) -> Result<(), StoreError> {
        let mut m = self.state.lock().expect("memory backend lock");
        for sid in sids {
            m.sessions.remove(sid);
            if let Some(set) = m.players.get_mut(player) {
                set.remove(sid);
            }
        }
        // Refresh records of ended sessions stay, as in Redis (where they expire with the
        // session's lifetime): presenting one is answered "session revoked".
        Ok(())
    }

    async fn player_sessions(&self, player: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let m = self.state.lock().expect("memory backend lock");
        let Some(set) = m.players.get(player) else { return Ok(Vec::new()) };
        let mut out: Vec<SessionRecord> = set.iter().filter_map(|sid| m.sessions.get(sid).cloned()).collect();
        out.sort_by(|a, b| (a.created_ms, &a.sid).cmp(&(b.created_ms, &b.sid)));
        Ok(out)
    }

    async fn hit(&self, bucket: &str, window_ms: u64, now_ms: u64) -> Result<u64, StoreError> {
        let window_ms = window_ms.max(1);
        let start = now_ms - now_ms % window_ms;
        let mut m = self.state.lock().expect("memory backend lock");
        if m.hits.len() >= HIT_COUNTERS_SWEEP_AT {
            // Windows are at most a day long (RateLimit::parse), so anything older is done.
            m.hits.retain(|(_, at), _| now_ms.saturating_sub(*at) <= 86_400_000);
        }
        let n = m.hits.entry((bucket.to_owned(), start)).or_insert(0);
        *n += 1;
        Ok(*n)
    }

    fn subscribe(&self) -> Option<mpsc::Receiver<Invalidation>> {
        None
    }
}
