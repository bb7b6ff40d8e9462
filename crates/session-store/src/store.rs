//! The session logic: login, validation, refresh rotation, step-up, listing and revocation.
//!
//! Every path fails closed: a backend error, a missing record or a failed check is a refusal.
//! Validation decisions are cached per session in moka for at most `cache_ttl` of *our* clock
//! (checked on every read, so controlled time works in tests), and dropped at once when another
//! process announces a revocation.

use crate::backend::{Backend, Invalidation, StoreError, session_ttl};
use crate::model::{
    Action, AuthError, Clock, RateLimit, RefreshDecision, RefreshRecord, SecurityEvent, SessionConfig, SessionRecord,
};
use crate::token::{Claims, Keyring};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock, RwLock};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;

/// What a successful login, refresh or step-up hands the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub session_id: String,
    pub access_token: String,
    pub access_expires_ms: u64,
    pub refresh_token: String,
    /// The player the session is for.
    pub player: String,
    /// The session's authentication level.
    pub level: u8,
    /// The session's absolute end (it ends earlier when idle).
    pub session_expires_ms: u64,
}

impl Tokens {
    fn of(rec: &SessionRecord, access_token: String, access_expires_ms: u64, refresh_token: String) -> Self {
        Tokens {
            session_id: rec.sid.clone(),
            access_token,
            access_expires_ms,
            refresh_token,
            player: rec.player.clone(),
            level: rec.level,
            session_expires_ms: rec.expires_ms,
        }
    }
}

/// Who a valid access token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub session_id: String,
    pub player: String,
    pub level: u8,
    pub auth_time_ms: u64,
}

/// What introspection says about a valid access token (RFC 7662 in spirit: an invalid one is
/// an error, which the service answers as `active: false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    pub principal: Principal,
    /// When the access token expires.
    pub token_expires_ms: u64,
    /// When the token was issued.
    pub issued_ms: u64,
    /// The absolute end of its session.
    pub session_expires_ms: u64,
}

/// Receives every security event synchronously, in order, as it happens (the durable audit
/// stream); unlike [`SessionStore::events`] it never drops one.
pub type EventSink = Arc<dyn Fn(&SecurityEvent) + Send + Sync>;

/// A session as its player sees it in a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_id: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub expires_ms: u64,
    pub level: u8,
    pub ip: String,
}

#[derive(Clone)]
struct Cached {
    rec: SessionRecord,
    fetched_ms: u64,
}

struct Inner<B> {
    backend: B,
    keys: RwLock<Keyring>,
    config: SessionConfig,
    clock: Arc<dyn Clock>,
    cache: moka::future::Cache<String, Cached>,
    events: broadcast::Sender<SecurityEvent>,
    sink: OnceLock<EventSink>,
}

/// The session store. Cheap to clone; clones share everything.
pub struct SessionStore<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for SessionStore<B> {
    fn clone(&self) -> Self {
        SessionStore { inner: self.inner.clone() }
    }
}

fn unavailable(e: StoreError) -> AuthError {
    AuthError::Unavailable(e.0)
}

fn random_b64<const N: usize>() -> Result<String, AuthError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| AuthError::Unavailable(format!("OS random source: {e}")))?;
    Ok(B64.encode(b))
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn check_text(s: &str, max: usize, what: &'static str) -> Result<(), AuthError> {
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(AuthError::InvalidInput(what));
    }
    Ok(())
}

impl<B: Backend> SessionStore<B> {
    pub fn new(backend: B, keys: Keyring, config: SessionConfig, clock: Arc<dyn Clock>) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(100_000)
            // A memory backstop only; freshness is checked against our own clock on each read.
            .time_to_live(config.cache_ttl.max(std::time::Duration::from_millis(1)) * 2)
            .build();
        let (events, _) = broadcast::channel(1024);
        let inner =
            Arc::new(Inner { backend, keys: RwLock::new(keys), config, clock, cache, events, sink: OnceLock::new() });
        if let Some(mut rx) = inner.backend.subscribe() {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    let Some(inner) = weak.upgrade() else { return };
                    match msg {
                        Invalidation::Session(sid) => inner.cache.invalidate(&sid).await,
                        Invalidation::All => inner.cache.invalidate_all(),
                    }
                }
            });
        }
        SessionStore { inner }
    }

    /// Security events (reuse, device mismatch, IP change, revocation) as they happen.
    pub fn events(&self) -> broadcast::Receiver<SecurityEvent> {
        self.inner.events.subscribe()
    }

    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// Sends every later security event to `sink` as well, before anything else sees it. Only
    /// one sink can be set; returns false if one already was.
    pub fn set_event_sink(&self, sink: EventSink) -> bool {
        self.inner.sink.set(sink).is_ok()
    }

    fn emit(&self, e: SecurityEvent) {
        match &e {
            SecurityEvent::SessionCreated { .. } | SecurityEvent::SteppedUp { .. } => {
                tracing::info!(event = ?e, "security event")
            }
            _ => tracing::warn!(event = ?e, "security event"),
        }
        if let Some(sink) = self.inner.sink.get() {
            sink(&e);
        }
        let _ = self.inner.events.send(e);
    }

    /// Counts an attempt against `limit` in `bucket`; refuses it once the window is full.
    async fn limit(&self, limit: Option<RateLimit>, bucket: String, what: &'static str) -> Result<(), AuthError> {
        let Some(limit) = limit else { return Ok(()) };
        let window = Self::ms(limit.window);
        let now = self.now();
        let n = self.inner.backend.hit(&bucket, window, now).await.map_err(unavailable)?;
        if n > u64::from(limit.max) {
            let retry_after_ms = window - now % window.max(1);
            return Err(AuthError::RateLimited { what, retry_after_ms });
        }
        Ok(())
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    fn ms(d: std::time::Duration) -> u64 {
        d.as_millis() as u64
    }

    /// Makes `key` the signing key; the previous one verifies until its tokens have expired.
    pub fn rotate_key(&self, kid: &str, key: [u8; 32]) -> Result<(), AuthError> {
        let grace = Self::ms(self.inner.config.access_ttl) + Self::ms(self.inner.config.clock_skew);
        self.inner
            .keys
            .write()
            .expect("keyring lock")
            .rotate(kid, key, self.now(), grace)
            .map_err(|_| AuthError::InvalidInput("key id"))
    }

    fn access_token(&self, s: &SessionRecord, now: u64) -> (String, u64) {
        let exp = (now + Self::ms(self.inner.config.access_ttl)).min(s.expires_ms);
        let claims = Claims {
            sid: s.sid.clone(),
            sub: s.player.clone(),
            dfp: s.dfp.clone(),
            auth_time: s.auth_time_ms,
            acr: s.level,
            iat: now,
            exp,
        };
        (self.inner.keys.read().expect("keyring lock").sign(&claims), exp)
    }

    /// Opens a session after the player authenticated at `level` on the device with
    /// `device_fingerprint`, from `ip`.
    pub async fn login(
        &self,
        player: &str,
        device_fingerprint: &str,
        ip: &str,
        level: u8,
    ) -> Result<Tokens, AuthError> {
        self.login_at(player, device_fingerprint, ip, level, None).await
    }

    /// [`Self::login`] for an authentication that happened at `auth_time_ms` (now if `None`):
    /// what an identity front-end reports after it checked the player. A time in the future
    /// (beyond the clock skew) or older than the idle timeout is refused. Creation is rate
    /// limited per player and per IP address.
    pub async fn login_at(
        &self,
        player: &str,
        device_fingerprint: &str,
        ip: &str,
        level: u8,
        auth_time_ms: Option<u64>,
    ) -> Result<Tokens, AuthError> {
        check_text(player, 128, "player id")?;
        check_text(device_fingerprint, 1024, "device fingerprint")?;
        check_text(ip, 64, "ip")?;
        if level == 0 {
            return Err(AuthError::InvalidInput("auth level must be at least 1"));
        }
        let now = self.now();
        let c = &self.inner.config;
        let auth_time_ms = match auth_time_ms {
            None => now,
            Some(t) if t > now + Self::ms(c.clock_skew) => {
                return Err(AuthError::InvalidInput("auth time is in the future"));
            }
            Some(t) if now.saturating_sub(t) > Self::ms(c.idle_timeout) => {
                return Err(AuthError::InvalidInput("auth time is too old to open a session"));
            }
            Some(t) => t.min(now),
        };
        self.limit(c.limits.create_per_ip, format!("create:ip:{ip}"), "sessions created from this address").await?;
        self.limit(c.limits.create_per_player, format!("create:player:{player}"), "sessions created for this player")
            .await?;
        let rec = SessionRecord {
            sid: random_b64::<16>()?,
            player: player.to_owned(),
            dfp: sha256_hex(device_fingerprint),
            created_ms: now,
            last_seen_ms: now,
            auth_time_ms,
            level,
            expires_ms: now + Self::ms(self.inner.config.absolute_lifetime),
            ip: ip.to_owned(),
            refresh_gen: 0,
        };
        let refresh = random_b64::<32>()?;
        let rr = RefreshRecord { sid: rec.sid.clone(), generation: 0, rotated_ms: None };
        let idle = Self::ms(self.inner.config.idle_timeout);
        self.inner.backend.create(&rec, &sha256_hex(&refresh), &rr, now, idle).await.map_err(unavailable)?;
        self.emit(SecurityEvent::SessionCreated {
            player: rec.player.clone(),
            sid: rec.sid.clone(),
            level,
            ip: ip.to_owned(),
        });
        let (access_token, access_expires_ms) = self.access_token(&rec, now);
        Ok(Tokens::of(&rec, access_token, access_expires_ms, refresh))
    }

    async fn session(&self, sid: &str, now: u64) -> Result<SessionRecord, AuthError> {
        if let Some(c) = self.inner.cache.get(sid).await
            && now.saturating_sub(c.fetched_ms) <= Self::ms(self.inner.config.cache_ttl)
        {
            return Ok(c.rec);
        }
        let rec = self.inner.backend.get_session(sid).await.map_err(unavailable)?.ok_or(AuthError::SessionRevoked)?;
        self.inner.cache.insert(sid.to_owned(), Cached { rec: rec.clone(), fetched_ms: now }).await;
        Ok(rec)
    }

    /// Ends sessions whose time is up, and reports which limit ended them.
    async fn check_lifetime(&self, rec: &SessionRecord, now: u64) -> Result<(), AuthError> {
        let why = if now >= rec.expires_ms {
            "absolute lifetime reached"
        } else if now.saturating_sub(rec.last_seen_ms) >= Self::ms(self.inner.config.idle_timeout) {
            "idle timeout"
        } else {
            return Ok(());
        };
        self.revoke_sids(&rec.player, vec![rec.sid.clone()], "expired").await?;
        Err(AuthError::SessionExpired(why))
    }

    /// The claims of a well-signed, unexpired `access_token` and its live session; with
    /// `device_fingerprint`, only if the token is bound to that device.
    async fn live_session(
        &self,
        access_token: &str,
        device_fingerprint: Option<&str>,
        now: u64,
    ) -> Result<(Claims, SessionRecord), AuthError> {
        let claims = self.inner.keys.read().expect("keyring lock").verify(
            access_token,
            now,
            Self::ms(self.inner.config.clock_skew),
        )?;
        if let Some(device) = device_fingerprint
            && !ct_eq(&claims.dfp, &sha256_hex(device))
        {
            self.emit(SecurityEvent::DeviceMismatch { player: claims.sub.clone(), sid: claims.sid.clone() });
            return Err(AuthError::DeviceMismatch);
        }
        let rec = self.session(&claims.sid, now).await?;
        if rec.player != claims.sub {
            return Err(AuthError::SessionRevoked);
        }
        self.check_lifetime(&rec, now).await?;
        Ok((claims, rec))
    }

    /// Checks an access token presented from `device_fingerprint` at `ip`.
    pub async fn validate(
        &self,
        access_token: &str,
        device_fingerprint: &str,
        ip: &str,
    ) -> Result<Principal, AuthError> {
        check_text(ip, 64, "ip")?;
        let now = self.now();
        let (claims, rec) = self.live_session(access_token, Some(device_fingerprint), now).await?;
        let ip_changed = rec.ip != ip;
        if ip_changed {
            self.emit(SecurityEvent::IpChanged {
                player: rec.player.clone(),
                sid: rec.sid.clone(),
                from: rec.ip.clone(),
                to: ip.to_owned(),
            });
            if self.inner.config.reject_ip_change {
                return Err(AuthError::IpChanged);
            }
        }
        if ip_changed || now.saturating_sub(rec.last_seen_ms) >= Self::ms(self.inner.config.touch_interval) {
            let ttl = session_ttl(&rec, now, Self::ms(self.inner.config.idle_timeout));
            if !self.inner.backend.touch(&rec.sid, now, ip, ttl).await.map_err(unavailable)? {
                self.inner.cache.invalidate(&rec.sid).await;
                return Err(AuthError::SessionRevoked);
            }
            let rec = SessionRecord { last_seen_ms: now, ip: ip.to_owned(), ..rec };
            self.inner.cache.insert(rec.sid.clone(), Cached { rec, fetched_ms: now }).await;
        }
        Ok(Principal { session_id: claims.sid, player: claims.sub, level: claims.acr, auth_time_ms: claims.auth_time })
    }

    /// Whether `access_token` is valid now, for whom and at what level, for other services
    /// (RFC 7662 in spirit). With `device_fingerprint`, a token bound to another device is
    /// invalid. Unlike [`Self::validate`] it does not count as the player's activity: it neither
    /// extends the idle timeout nor records an IP address.
    pub async fn introspect(
        &self,
        access_token: &str,
        device_fingerprint: Option<&str>,
    ) -> Result<Introspection, AuthError> {
        let (claims, rec) = self.live_session(access_token, device_fingerprint, self.now()).await?;
        Ok(Introspection {
            principal: Principal {
                session_id: claims.sid,
                player: claims.sub,
                level: claims.acr,
                auth_time_ms: claims.auth_time,
            },
            token_expires_ms: claims.exp,
            issued_ms: claims.iat,
            session_expires_ms: rec.expires_ms,
        })
    }

    /// Refuses a high-risk action unless the session authenticated at the step-up level within
    /// the privileged window (RFC 9470 `insufficient_user_authentication`).
    pub fn authorize(&self, who: &Principal, action: Action) -> Result<(), AuthError> {
        if !action.high_risk() {
            return Ok(());
        }
        let c = &self.inner.config;
        let fresh = self.now().saturating_sub(who.auth_time_ms) <= Self::ms(c.privileged_max_age);
        if who.level >= c.step_up_level && fresh {
            Ok(())
        } else {
            Err(AuthError::InsufficientUserAuthentication {
                required_acr: c.step_up_level,
                max_age_secs: c.privileged_max_age.as_secs(),
            })
        }
    }

    /// Rotates a refresh token: the old one stops working and a new pair is returned. A token
    /// that was already rotated revokes the whole session (its token family).
    pub async fn refresh(&self, refresh_token: &str, device_fingerprint: &str, ip: &str) -> Result<Tokens, AuthError> {
        if refresh_token.is_empty() || refresh_token.len() > 128 {
            return Err(AuthError::UnknownRefreshToken);
        }
        check_text(ip, 64, "ip")?;
        let limits = self.inner.config.limits;
        self.limit(limits.refresh_per_ip, format!("refresh:ip:{ip}"), "refreshes from this address").await?;
        let now = self.now();
        let old_hash = sha256_hex(refresh_token);
        let rr = self
            .inner
            .backend
            .get_refresh(&old_hash)
            .await
            .map_err(unavailable)?
            .ok_or(AuthError::UnknownRefreshToken)?;
        let rec =
            self.inner.backend.get_session(&rr.sid).await.map_err(unavailable)?.ok_or(AuthError::SessionRevoked)?;
        if !ct_eq(&rec.dfp, &sha256_hex(device_fingerprint)) {
            self.emit(SecurityEvent::DeviceMismatch { player: rec.player.clone(), sid: rec.sid.clone() });
            return Err(AuthError::DeviceMismatch);
        }
        self.check_lifetime(&rec, now).await?;
        self.limit(limits.refresh_per_player, format!("refresh:player:{}", rec.player), "refreshes for this player")
            .await?;
        let fresh = random_b64::<32>()?;
        let overlap = self.inner.config.refresh_overlap.map(Self::ms);
        let ttl = session_ttl(&rec, now, Self::ms(self.inner.config.idle_timeout));
        let decision = self
            .inner
            .backend
            .refresh(&old_hash, &sha256_hex(&fresh), now, overlap, ip, ttl)
            .await
            .map_err(unavailable)?;
        match decision {
            RefreshDecision::Rotated | RefreshDecision::RetryWithinOverlap => {}
            RefreshDecision::Unknown => return Err(AuthError::UnknownRefreshToken),
            RefreshDecision::SessionGone => return Err(AuthError::SessionRevoked),
            RefreshDecision::Reuse => {
                self.emit(SecurityEvent::RefreshTokenReuse { player: rec.player.clone(), sid: rec.sid.clone() });
                self.revoke_sids(&rec.player, vec![rec.sid.clone()], "refresh token reuse").await?;
                return Err(AuthError::RefreshTokenReused);
            }
        }
        // The rotation touched the session atomically; a revocation racing with it (for example
        // by the loser of a refresh race) takes effect when these tokens are next used.
        let rec = SessionRecord { last_seen_ms: now, ip: ip.to_owned(), ..rec };
        self.inner.cache.invalidate(&rec.sid).await;
        let (access_token, access_expires_ms) = self.access_token(&rec, now);
        Ok(Tokens::of(&rec, access_token, access_expires_ms, fresh))
    }

    /// Raises the session's auth level after the player re-authenticated at `level`. The
    /// session id is regenerated (the old id and all its tokens stop working), the auth time is
    /// now, and the absolute lifetime is unchanged.
    pub async fn step_up(
        &self,
        access_token: &str,
        device_fingerprint: &str,
        ip: &str,
        level: u8,
    ) -> Result<Tokens, AuthError> {
        let who = self.validate(access_token, device_fingerprint, ip).await?;
        let now = self.now();
        let old = self
            .inner
            .backend
            .get_session(&who.session_id)
            .await
            .map_err(unavailable)?
            .ok_or(AuthError::SessionRevoked)?;
        let rec = SessionRecord {
            sid: random_b64::<16>()?,
            auth_time_ms: now,
            last_seen_ms: now,
            level: level.max(old.level),
            refresh_gen: 0,
            ip: ip.to_owned(),
            ..old.clone()
        };
        let refresh = random_b64::<32>()?;
        let rr = RefreshRecord { sid: rec.sid.clone(), generation: 0, rotated_ms: None };
        let idle = Self::ms(self.inner.config.idle_timeout);
        let replaced = self
            .inner
            .backend
            .replace(&old.sid, &rec, &sha256_hex(&refresh), &rr, now, idle)
            .await
            .map_err(unavailable)?;
        self.inner.cache.invalidate(&old.sid).await;
        if !replaced {
            return Err(AuthError::SessionRevoked);
        }
        self.emit(SecurityEvent::SteppedUp {
            player: rec.player.clone(),
            from_sid: old.sid.clone(),
            sid: rec.sid.clone(),
            level: rec.level,
        });
        let (access_token, access_expires_ms) = self.access_token(&rec, now);
        Ok(Tokens::of(&rec, access_token, access_expires_ms, refresh))
    }

    /// The player's live sessions, oldest first.
    pub async fn list_sessions(&self, player: &str) -> Result<Vec<SessionInfo>, AuthError> {
        let now = self.now();
        let idle = Self::ms(self.inner.config.idle_timeout);
        let all = self.inner.backend.player_sessions(player).await.map_err(unavailable)?;
        Ok(all
            .into_iter()
            .filter(|s| now < s.expires_ms && now.saturating_sub(s.last_seen_ms) < idle)
            .map(|s| SessionInfo {
                session_id: s.sid,
                created_ms: s.created_ms,
                last_seen_ms: s.last_seen_ms,
                expires_ms: s.expires_ms,
                level: s.level,
                ip: s.ip,
            })
            .collect())
    }

    async fn revoke_sids(&self, player: &str, sids: Vec<String>, reason: &'static str) -> Result<(), AuthError> {
        if sids.is_empty() {
            return Ok(());
        }
        self.inner.backend.revoke(player, &sids).await.map_err(unavailable)?;
        for sid in sids {
            self.inner.cache.invalidate(&sid).await;
            self.emit(SecurityEvent::Revoked { player: player.to_owned(), sid, reason });
        }
        Ok(())
    }

    /// Ends one session of `player`. Returns false, changing nothing, when `player` has no live
    /// session `sid` (it ended, or it is someone else's).
    pub async fn revoke_session(&self, player: &str, sid: &str) -> Result<bool, AuthError> {
        let owned = self.inner.backend.get_session(sid).await.map_err(unavailable)?.is_some_and(|s| s.player == player);
        if owned {
            self.revoke_sids(player, vec![sid.to_owned()], "revoked").await?;
        }
        Ok(owned)
    }

    /// Ends every session of `player` except `keep`.
    pub async fn revoke_others(&self, player: &str, keep: &str) -> Result<usize, AuthError> {
        let sids: Vec<String> = self
            .inner
            .backend
            .player_sessions(player)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|s| s.sid)
            .filter(|s| s != keep)
            .collect();
        let n = sids.len();
        self.revoke_sids(player, sids, "revoked (all others)").await?;
        Ok(n)
    }

    /// Ends every session of `player`: force logout on compromise.
    pub async fn revoke_all(&self, player: &str) -> Result<usize, AuthError> {
        let sids: Vec<String> =
            self.inner.backend.player_sessions(player).await.map_err(unavailable)?.into_iter().map(|s| s.sid).collect();
        let n = sids.len();
        self.revoke_sids(player, sids, "revoked (all)").await?;
        Ok(n)
    }
}
