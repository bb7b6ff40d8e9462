//! The Redis backend: sessions survive a restart of the service, Redis enforces TTLs as well as
//! the logic does, and revocations reach every process through pub/sub.
//!
//! # Keys (all under a configurable prefix `P`)
//! - `P:s:<sid>`: hash of the session's fields. TTL: until the idle timeout or the absolute end.
//! - `P:r:<sha256 of refresh token, hex>`: hash `sid`, `gen`, `rotated`. TTL: the session's end.
//! - `P:p:<player>`: set of the player's session ids.
//! - `P:rl:<bucket>:<window number>`: a rate-limit counter. TTL: its window.
//! - channel `P:revoked`: session ids as they are revoked.
//!
//! Decisions that must be atomic (refresh rotation, touching a session that may have been
//! revoked, regenerating a session id) run as Lua scripts. Commands time out after
//! `timeout`; a Redis outage therefore turns into prompt errors, which the store reports as
//! refusals (fail closed). The connection manager reconnects by itself, and the subscriber task
//! re-subscribes with backoff and then tells the store to drop its whole cache, since messages
//! may have been missed while it was away.

use crate::backend::{Backend, Invalidation, StoreError, session_ttl};
use crate::model::{RefreshDecision, RefreshRecord, SessionRecord};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

pub struct RedisBackend {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(format!("redis: {e}"))
}

const TOUCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1], 'ip', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

// Mirrors model::decide_refresh.
const REFRESH: &str = r"
local gen = redis.call('HGET', KEYS[1], 'gen')
if not gen then return 'unknown' end
gen = tonumber(gen)
local sid = redis.call('HGET', KEYS[1], 'sid')
local skey = ARGV[4] .. sid
if redis.call('EXISTS', skey) == 0 then return 'session_gone' end
local cur = tonumber(redis.call('HGET', skey, 'refresh_gen'))
local rotated = redis.call('HGET', KEYS[1], 'rotated')
local now = tonumber(ARGV[1])
local overlap = tonumber(ARGV[2])
local decision
if (not rotated) and gen == cur then
  decision = 'rotated'
elseif rotated and gen + 1 == cur and overlap >= 0 and now - tonumber(rotated) <= overlap then
  decision = 'retry'
else
  return 'reuse'
end
if not rotated then redis.call('HSET', KEYS[1], 'rotated', ARGV[1]) end
redis.call('HSET', KEYS[2], 'sid', sid, 'gen', cur + 1)
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 1 then ttl = tonumber(ARGV[3]) end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('HSET', skey, 'refresh_gen', cur + 1, 'last_seen', ARGV[1], 'ip', ARGV[5])
redis.call('PEXPIRE', skey, ARGV[6])
return decision
";

const REPLACE: &str = r"
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[2])
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], 'sid', ARGV[2], 'gen', ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('PEXPIRE', KEYS[4], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[1])
return 1
";

// Scripts are hashed once; `invoke_async` sends EVALSHA and loads the script when Redis lacks it.
static TOUCH_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(TOUCH));
static REFRESH_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(REFRESH));
static REPLACE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(REPLACE));

fn session_fields(s: &SessionRecord) -> Vec<(&'static str, String)> {
    vec![
        ("sid", s.sid.clone()),
        ("player", s.player.clone()),
        ("dfp", s.dfp.clone()),
        ("created", s.created_ms.to_string()),
        ("last_seen", s.last_seen_ms.to_string()),
        ("auth_time", s.auth_time_ms.to_string()),
        ("level", s.level.to_string()),
        ("expires", s.expires_ms.to_string()),
        ("ip", s.ip.clone()),
        ("refresh_gen", s.refresh_gen.to_string()),
    ]
}

fn parse_session(mut h: HashMap<String, String>) -> Result<Option<SessionRecord>, StoreError> {
    if h.is_empty() {
        return Ok(None);
    }
    let mut take = |k: &str| h.remove(k).ok_or_else(|| StoreError(format!("session record lacks {k}")));
    let num = |v: String| v.parse::<u64>().map_err(|_| StoreError(format!("bad number {v:?} in session record")));
    Ok(Some(SessionRecord {
        sid: take("sid")?,
        player: take("player")?,
        dfp: take("dfp")?,
        created_ms: num(take("created")?)?,
        last_seen_ms: num(take("last_seen")?)?,
        auth_time_ms: num(take("auth_time")?)?,
        level: u8::try_from(num(take("level")?)?).map_err(|_| StoreError("bad level".into()))?,
        expires_ms: num(take("expires")?)?,
        ip: take("ip")?,
        refresh_gen: num(take("refresh_gen")?)?,
    }))
}

impl RedisBackend {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`); every key and the channel are under
    /// `prefix`. Commands that take longer than `timeout` fail.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(timeout * 2, client.get_connection_manager_with_config(config))
            .await
            .map_err(|_| StoreError("redis: connect timed out".into()))?
            .map_err(err)?;
        Ok(RedisBackend { client, conn, prefix: prefix.to_owned(), timeout })
    }

    fn skey(&self, sid: &str) -> String {
        format!("{}:s:{sid}", self.prefix)
    }
    fn rkey(&self, hash: &str) -> String {
        format!("{}:r:{hash}", self.prefix)
    }
    fn pkey(&self, player: &str) -> String {
        format!("{}:p:{player}", self.prefix)
    }
    fn channel(&self) -> String {
        format!("{}:revoked", self.prefix)
    }

    /// The remaining TTL Redis holds for a session, in ms (for tests and operators).
    pub async fn session_pttl(&self, sid: &str) -> Result<i64, StoreError> {
        let mut c = self.conn.clone();
        c.pttl(self.skey(sid)).await.map_err(err)
    }
}

impl Backend for RedisBackend {
    async fn create(
        &self,
        s: &SessionRecord,
        refresh_hash: &str,
        r: &RefreshRecord,
        now_ms: u64,
        idle_ms: u64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let skey = self.skey(&s.sid);
        let rkey = self.rkey(refresh_hash);
        let pkey = self.pkey(&s.player);
        let life = s.expires_ms.saturating_sub(now_ms).max(1);
        redis::pipe()
            .atomic()
            .hset_multiple(&skey, &session_fields(s))
            .pexpire(&skey, session_ttl(s, now_ms, idle_ms) as i64)
            .hset_multiple(&rkey, &[("sid", r.sid.clone()), ("gen", r.generation.to_string())])
            .pexpire(&rkey, life as i64)
            .sadd(&pkey, &s.sid)
            .pexpire(&pkey, life as i64)
            .query_async::<()>(&mut c)
            .await
            .map_err(err)
    }

    async fn get_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        let mut c = self.conn.clone();
        let h: HashMap<String, String> = c.hgetall(self.skey(sid)).await.map_err(err)?;
        parse_session(h)
    }

    async fn touch(&self, sid: &str, last_seen_ms: u64, ip: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let n: i64 = TOUCH_SCRIPT
            .key(self.skey(sid))
            .arg(last_seen_ms)
            .arg(ip)
            .arg(ttl_ms.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(n == 1)
    }

    async fn get_refresh(&self, hash: &str) -> Result<Option<RefreshRecord>, StoreError> {
        let mut c = self.conn.clone();
        let mut h: HashMap<String, String> = c.hgetall(self.rkey(hash)).await.map_err(err)?;
        if h.is_empty() {
            return Ok(None);
        }
        let sid = h.remove("sid").ok_or_else(|| StoreError("refresh record lacks sid".into()))?;
        let generation =
            h.remove("gen").and_then(|g| g.parse().ok()).ok_or_else(|| StoreError("bad refresh gen".into()))?;
        let rotated_ms = h.remove("rotated").and_then(|r| r.parse().ok());
        Ok(Some(RefreshRecord { sid, generation, rotated_ms }))
    }

    async fn refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        now_ms: u64,
        overlap_ms: Option<u64>,
        ip: &str,
        session_ttl_ms: u64,
    ) -> Result<RefreshDecision, StoreError> {
        let mut c = self.conn.clone();
        let overlap = overlap_ms.map_or(-1, |w| w as i64);
        let out: String = REFRESH_SCRIPT
            .key(self.rkey(old_hash))
            .key(self.rkey(new_hash))
            .arg(now_ms)
            .arg(overlap)
            .arg(60_000)
            .arg(format!("{}:s:", self.prefix))
            .arg(ip)
            .arg(session_ttl_ms.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(match out.as_str() {
            "rotated" => RefreshDecision::Rotated,
            "retry" => RefreshDecision::RetryWithinOverlap,
            "unknown" => RefreshDecision::Unknown,
            "session_gone" => RefreshDecision::SessionGone,
            _ => RefreshDecision::Reuse,
        })
    }

    async fn replace(
        &self,
        old_sid: &str,
        new: &SessionRecord,
        refresh_hash: &str,
        r: &RefreshRecord,
        now_ms: u64,
        idle_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let mut script = REPLACE_SCRIPT.prepare_invoke();
        script
            .key(self.skey(old_sid))
            .key(self.skey(&new.sid))
            .key(self.rkey(refresh_hash))
            .key(self.pkey(&new.player))
            .arg(old_sid)
            .arg(&new.sid)
            .arg(session_ttl(new, now_ms, idle_ms))
            .arg(r.generation)
            .arg(new.expires_ms.saturating_sub(now_ms).max(1))
            .arg(self.channel());
        for (k, v) in session_fields(new) {
            script.arg(k).arg(v);
        }
        let n: i64 = script.invoke_async(&mut c).await.map_err(err)?;
        Ok(n == 1)
    }

    async fn revoke(&self, player: &str, sids: &[String]) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        p.atomic();
        for sid in sids {
            p.del(self.skey(sid)).ignore().srem(self.pkey(player), sid).ignore().publish(self.channel(), sid).ignore();
        }
        p.query_async::<()>(&mut c).await.map_err(err)
    }

    async fn player_sessions(&self, player: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let mut c = self.conn.clone();
        let sids: Vec<String> = c.smembers(self.pkey(player)).await.map_err(err)?;
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for sid in &sids {
            p.hgetall(self.skey(sid));
        }
        let all: Vec<HashMap<String, String>> = p.query_async(&mut c).await.map_err(err)?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (sid, h) in sids.into_iter().zip(all) {
            match parse_session(h)? {
                Some(s) => out.push(s),
                None => gone.push(sid),
            }
        }
        if !gone.is_empty() {
            // Expired by TTL: tidy the index.
            let _: Result<(), _> = c.srem(self.pkey(player), gone).await;
        }
        out.sort_by_key(|s| s.created_ms);
        Ok(out)
    }

    async fn hit(&self, bucket: &str, window_ms: u64, now_ms: u64) -> Result<u64, StoreError> {
        let window_ms = window_ms.max(1);
        let key = format!("{}:rl:{bucket}:{}", self.prefix, now_ms / window_ms);
        let mut c = self.conn.clone();
        // INCR and PEXPIRE in one MULTI: a counter never outlives its window.
        let (n,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, 1u64)
            .pexpire(&key, window_ms as i64)
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(n)
    }

    fn subscribe(&self) -> Option<mpsc::Receiver<Invalidation>> {
        let (tx, rx) = mpsc::channel(crate::backend::INVALIDATIONS_QUEUED_MAX);
        let client = self.client.clone();
        let channel = self.channel();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            while !tx.is_closed() {
                let connected = async {
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(&channel).await?;
                    redis::RedisResult::Ok(ps)
                };
                match tokio::time::timeout(timeout * 2, connected).await {
                    Ok(Ok(ps)) => {
                        backoff = Duration::from_millis(50);
                        // Anything published while we were not subscribed is lost: start clean.
                        if tx.send(Invalidation::All).await.is_err() {
                            return;
                        }
                        let mut msgs = ps.into_on_message();
                        while let Some(msg) = msgs.next().await {
                            let sid: String = match msg.get_payload() {
                                Ok(s) => s,
                                Err(_) => continue,
                            };
                            match tx.try_send(Invalidation::Session(sid)) {
                                Ok(()) => {}
                                // The cache is behind: dropping this one is safe, since a cached
                                // decision expires within `cache_ttl` anyway.
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    tracing::warn!("revocation queue full; relying on the cache TTL for one session")
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => return,
                            }
                        }
                        tracing::warn!("revocation subscription lost; reconnecting");
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "revocation subscription failed; retrying"),
                    Err(_) => tracing::warn!("revocation subscription timed out; retrying"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        Some(rx)
    }
}
