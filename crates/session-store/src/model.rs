//! Records, configuration, errors, security events and the clock.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where time comes from. Tests use [`ManualClock`] so that expiry is tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How sessions and tokens behave. Defaults in brackets.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Access-token lifetime [5 min].
    pub access_ttl: Duration,
    /// A session unused for this long ends [30 min].
    pub idle_timeout: Duration,
    /// A session ends this long after login, whatever happens [12 h]. Neither refresh nor
    /// step-up extends it.
    pub absolute_lifetime: Duration,
    /// A rotated refresh token presented again within this window is treated as a benign retry
    /// (the client lost the response) rather than reuse [off].
    pub refresh_overlap: Option<Duration>,
    /// The auth level high-risk actions require [2].
    pub step_up_level: u8,
    /// How recent authentication must be for high-risk actions [5 min].
    pub privileged_max_age: Duration,
    /// Reject a token used from a new IP address, instead of only recording a risk event [false].
    pub reject_ip_change: bool,
    /// How long a process may rely on a cached session decision without asking the backend
    /// [1 s]. This bounds how late a revocation can take effect in another process even if
    /// pub/sub messages are lost; with pub/sub working it takes effect in milliseconds.
    pub cache_ttl: Duration,
    /// `last_seen` is written back at most this often per session [15 s]; idle timeouts are
    /// therefore exact to within this.
    pub touch_interval: Duration,
    /// Tolerated clock difference between issuing and checking processes [30 s].
    pub clock_skew: Duration,
    /// How often sessions may be created and refreshed, per player and per IP address.
    pub limits: RateLimits,
}

/// At most `max` attempts per `window`, counted in fixed windows shared by every process of a
/// backend (a burst can reach twice `max` across a window boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub window: Duration,
}

impl RateLimit {
    /// Parses `"<max>/<seconds>s"`, for example `"10/60s"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a rate limit like \"10/60s\" (attempts per seconds)");
        let (max, window) = text.split_once('/').ok_or_else(bad)?;
        let secs = window.strip_suffix('s').unwrap_or(window);
        let max: u32 = max.trim().parse().map_err(|_| bad())?;
        let secs: u64 = secs.trim().parse().map_err(|_| bad())?;
        if max == 0 || secs == 0 || secs > 86_400 {
            return Err(bad());
        }
        Ok(RateLimit { max, window: Duration::from_secs(secs) })
    }
}

/// Rate limits of the calls an attacker would hammer. `None` turns one off. Defaults in
/// brackets: generous for people, tight for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Sessions created for one player [20 per minute].
    pub create_per_player: Option<RateLimit>,
    /// Sessions created from one IP address [120 per minute; many players share NAT].
    pub create_per_ip: Option<RateLimit>,
    /// Refreshes of one player's sessions [60 per minute].
    pub refresh_per_player: Option<RateLimit>,
    /// Refreshes from one IP address [600 per minute].
    pub refresh_per_ip: Option<RateLimit>,
}

impl RateLimits {
    /// No limits (benchmarks, tests of other things).
    pub const OFF: RateLimits =
        RateLimits { create_per_player: None, create_per_ip: None, refresh_per_player: None, refresh_per_ip: None };
}

impl Default for RateLimits {
    fn default() -> Self {
        let per_minute = |max| Some(RateLimit { max, window: Duration::from_secs(60) });
        RateLimits {
            create_per_player: per_minute(20),
            create_per_ip: per_minute(120),
            refresh_per_player: per_minute(60),
            refresh_per_ip: per_minute(600),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            access_ttl: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(1800),
            absolute_lifetime: Duration::from_secs(12 * 3600),
            refresh_overlap: None,
            step_up_level: 2,
            privileged_max_age: Duration::from_secs(300),
            reject_ip_change: false,
            cache_ttl: Duration::from_secs(1),
            touch_interval: Duration::from_secs(15),
            clock_skew: Duration::from_secs(30),
            limits: RateLimits::default(),
        }
    }
}

/// A server-side session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub sid: String,
    pub player: String,
    /// Hex SHA-256 of the device fingerprint the session is bound to.
    pub dfp: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub auth_time_ms: u64,
    pub level: u8,
    /// The absolute end of the session.
    pub expires_ms: u64,
    pub ip: String,
    /// The generation of the refresh token that is currently valid.
    pub refresh_gen: u64,
}

/// A refresh token, stored under the SHA-256 of the token, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub sid: String,
    pub generation: u64,
    /// Unix ms when it was rotated; `None` while it is the live token.
    pub rotated_ms: Option<u64>,
}

/// What the backend decided about a refresh attempt, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshDecision {
    /// The token was live; it is now rotated and the new one is live.
    Rotated,
    /// The token was rotated moments ago (within the overlap window) and is the live token's
    /// immediate predecessor: treated as a retry; the new one is live.
    RetryWithinOverlap,
    /// Not a token we know, or its session has ended.
    Unknown,
    SessionGone,
    /// A rotated or superseded token: the family must be revoked.
    Reuse,
}

/// The refresh decision, shared by both backends (the Redis backend runs the same rules in a
/// Lua script so that they are atomic there too).
pub fn decide_refresh(rec: &RefreshRecord, session_gen: u64, now_ms: u64, overlap_ms: Option<u64>) -> RefreshDecision {
    match rec.rotated_ms {
        None if rec.generation == session_gen => RefreshDecision::Rotated,
        Some(at) if rec.generation + 1 == session_gen && overlap_ms.is_some_and(|w| now_ms.saturating_sub(at) <= w) => {
            RefreshDecision::RetryWithinOverlap
        }
        _ => RefreshDecision::Reuse,
    }
}

/// Why authentication failed. Every variant is a refusal: nothing fails open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid access token: {0}")]
    Token(#[from] crate::token::TokenError),
    #[error("session revoked or unknown")]
    SessionRevoked,
    #[error("session expired: {0}")]
    SessionExpired(&'static str),
    #[error("token is bound to another device")]
    DeviceMismatch,
    #[error("token used from a new IP address, which this deployment rejects")]
    IpChanged,
    #[error("unknown refresh token")]
    UnknownRefreshToken,
    #[error("refresh token reuse detected; the session and all its tokens are revoked")]
    RefreshTokenReused,
    /// RFC 9470: the action needs a higher or fresher authentication.
    #[error("insufficient_user_authentication: requires acr {required_acr} within max_age {max_age_secs} s")]
    InsufficientUserAuthentication { required_acr: u8, max_age_secs: u64 },
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// Too many attempts of one kind for one player or address; try again after the delay.
    #[error("too many {what}; try again in {retry_after_ms} ms")]
    RateLimited { what: &'static str, retry_after_ms: u64 },
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The `WWW-Authenticate` challenge for a step-up failure, in the form RFC 9470 gives.
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            AuthError::InsufficientUserAuthentication { required_acr, max_age_secs } => Some(format!(
                "Bearer error=\"insufficient_user_authentication\", error_description=\"A different authentication level is required\", acr_values=\"{required_acr}\", max_age={max_age_secs}"
            )),
            _ => None,
        }
    }
}

/// Something a security team wants to see. Never carries a token or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    /// A session was opened after the player authenticated at `level`.
    SessionCreated {
        player: String,
        sid: String,
        level: u8,
        ip: String,
    },
    /// A session was stepped up: `from_sid` ended and `sid` replaced it at `level`.
    SteppedUp {
        player: String,
        from_sid: String,
        sid: String,
        level: u8,
    },
    RefreshTokenReuse {
        player: String,
        sid: String,
    },
    DeviceMismatch {
        player: String,
        sid: String,
    },
    IpChanged {
        player: String,
        sid: String,
        from: String,
        to: String,
    },
    Revoked {
        player: String,
        sid: String,
        reason: &'static str,
    },
}

/// A high-risk or ordinary action, for step-up checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Play,
    Withdraw,
    ChangeAccountDetails,
}

impl Action {
    pub fn high_risk(self) -> bool {
        matches!(self, Action::Withdraw | Action::ChangeAccountDetails)
    }
}
