//! Session behaviour on both backends (in-memory and real Redis), with controlled time.
//!
//! Each scenario is a generic function run twice by `both!`: once on `MemoryBackend`, once on
//! `RedisBackend` against the Redis on TEST_REDIS_URL (127.0.0.1:6379 by default) under a fresh
//! key prefix.

mod common;

use common::*;
use session_store::token::{Claims, TokenError};
use session_store::{
    Action, AuthError, Backend, Keyring, ManualClock, RateLimit, RateLimits, SecurityEvent, SessionConfig, SessionStore,
};
use std::sync::Arc;
use std::time::Duration;

const DEV: &str = "device-fingerprint-A";
const IP: &str = "203.0.113.7";

macro_rules! both {
    ($name:ident, $config:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn memory() {
                let clock = clock();
                super::$name(common::memory($config, clock.clone()), clock).await;
            }
            #[tokio::test]
            async fn redis() {
                let clock = clock();
                super::$name(common::redis(stringify!($name), $config, clock.clone()).await, clock).await;
            }
        }
    };
}

fn min(m: u64) -> Duration {
    Duration::from_secs(60 * m)
}

async fn tokens_are_checked<B: Backend>(s: SessionStore<B>, clock: Arc<ManualClock>) {
    let t = s.login("alice", DEV, IP, 1).await.unwrap();
    let who = s.validate(&t.access_token, DEV, IP).await.unwrap();
    assert_eq!((who.player.as_str(), who.level, who.session_id.as_str()), ("alice", 1, t.session_id.as_str()));

    // Forged: claims signed with a key we do not hold, under our key id.
    let forged_claims = Claims {
        sid: t.session_id.clone(),
        sub: "alice".into(),
        dfp: String::new(),
        auth_time: 0,
        acr: 9,
        iat: 0,
        exp: u64::MAX,
    };
    let forged = Keyring::new("k1", [0; 32]).unwrap().sign(&forged_claims);
    assert_eq!(s.validate(&forged, DEV, IP).await, Err(AuthError::Token(TokenError::BadSignature)));
    // Tampered: one character of the payload changed.
    let mut tampered = t.access_token.clone().into_bytes();
    let i = tampered.iter().position(|&b| b == b'.').unwrap() + 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert!(matches!(s.validate(&tampered, DEV, IP).await, Err(AuthError::Token(_))));
    // Wrong key id.
    let other = Keyring::new("k2", common::KEY).unwrap().sign(&forged_claims);
    assert_eq!(s.validate(&other, DEV, IP).await, Err(AuthError::Token(TokenError::UnknownKey)));
    // Wrong device.
    assert_eq!(s.validate(&t.access_token, "device-B", IP).await, Err(AuthError::DeviceMismatch));
    // Garbage and oversize input.
    assert!(matches!(s.validate(&t.access_token, DEV, "bad\nip").await, Err(AuthError::InvalidInput(_))));
    assert!(matches!(s.validate(&t.access_token, DEV, &"1".repeat(65)).await, Err(AuthError::InvalidInput(_))));
    assert!(s.validate("", DEV, IP).await.is_err());
    assert!(s.validate(&"x".repeat(10_000), DEV, IP).await.is_err());
    // Expired: 5 minutes by default.
    clock.advance(Duration::from_secs(299));
    s.validate(&t.access_token, DEV, IP).await.unwrap();
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.validate(&t.access_token, DEV, IP).await, Err(AuthError::Token(TokenError::Expired)));
    // Revoked.
    let t2 = s.login("alice", DEV, IP, 1).await.unwrap();
    s.revoke_session("alice", &t2.session_id).await.unwrap();
    assert_eq!(s.validate(&t2.access_token, DEV, IP).await, Err(AuthError::SessionRevoked));
    assert!(matches!(
        s.refresh(&t2.refresh_token, DEV, IP).await,
        Err(AuthError::SessionRevoked | AuthError::UnknownRefreshToken)
    ));
    // Bad login input.
    assert!(matches!(s.login("", DEV, IP, 1).await, Err(AuthError::InvalidInput(_))));
    assert!(matches!(s.login("alice", "", IP, 1).await, Err(AuthError::InvalidInput(_))));
    assert!(matches!(s.login("alice", DEV, IP, 0).await, Err(AuthError::InvalidInput(_))));
}
both!(tokens_are_checked, SessionConfig::default());

async fn refresh_rotates_and_reuse_revokes_the_family<B: Backend>(s: SessionStore<B>, _clock: Arc<ManualClock>) {
    let mut events = s.events();
    let t0 = s.login("bob", DEV, IP, 1).await.unwrap();
    let t1 = s.refresh(&t0.refresh_token, DEV, IP).await.unwrap();
    assert_eq!(t1.session_id, t0.session_id);
    assert_ne!(t1.refresh_token, t0.refresh_token);
    assert!(t1.refresh_token.len() >= 43, "at least 256 bits, base64url");
    let t2 = s.refresh(&t1.refresh_token, DEV, IP).await.unwrap();
    s.validate(&t2.access_token, DEV, IP).await.unwrap();
    // Wrong device: refused, nothing rotated.
    assert_eq!(s.refresh(&t2.refresh_token, "device-B", IP).await.unwrap_err(), AuthError::DeviceMismatch);
    // Reusing t0's (already rotated) token: the whole family dies.
    assert_eq!(s.refresh(&t0.refresh_token, DEV, IP).await.unwrap_err(), AuthError::RefreshTokenReused);
    assert_eq!(s.validate(&t2.access_token, DEV, IP).await, Err(AuthError::SessionRevoked));
    assert!(s.refresh(&t2.refresh_token, DEV, IP).await.is_err());
    // Replaying any of them now gets nothing.
    for old in [&t0.refresh_token, &t1.refresh_token, &t2.refresh_token] {
        assert!(s.refresh(old, DEV, IP).await.is_err());
    }
    assert_eq!(s.refresh("not-a-token", DEV, IP).await.unwrap_err(), AuthError::UnknownRefreshToken);
    let mut saw_reuse = false;
    while let Ok(e) = events.try_recv() {
        saw_reuse |= matches!(e, SecurityEvent::RefreshTokenReuse { ref player, .. } if player == "bob");
    }
    assert!(saw_reuse, "reuse emits a security event");
}
both!(refresh_rotates_and_reuse_revokes_the_family, SessionConfig::default());

async fn racing_refreshes_have_one_winner<B: Backend>(s: SessionStore<B>, _clock: Arc<ManualClock>) {
    for round in 0..20 {
        let t = s.login("carol", DEV, IP, 1).await.unwrap();
        let (a, b) = tokio::join!(s.refresh(&t.refresh_token, DEV, IP), s.refresh(&t.refresh_token, DEV, IP));
        let wins = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        // The loser presented a rotated token: reuse, so the family (and the winner's tokens) die.
        assert_eq!(loser.unwrap_err(), AuthError::RefreshTokenReused, "round {round}");
        assert_eq!(s.validate(&t.access_token, DEV, IP).await, Err(AuthError::SessionRevoked));
    }
}
both!(racing_refreshes_have_one_winner, SessionConfig::default());

fn with_overlap() -> SessionConfig {
    SessionConfig { refresh_overlap: Some(Duration::from_secs(10)), ..SessionConfig::default() }
}

async fn overlap_window_allows_a_benign_retry<B: Backend>(s: SessionStore<B>, clock: Arc<ManualClock>) {
    let t0 = s.login("dave", DEV, IP, 1).await.unwrap();
    let _lost = s.refresh(&t0.refresh_token, DEV, IP).await.unwrap();
    clock.advance(Duration::from_secs(5));
    let retry = s.refresh(&t0.refresh_token, DEV, IP).await.expect("within the window: a retry");
    s.validate(&retry.access_token, DEV, IP).await.unwrap();
    // The retried token again, after the window: reuse.
    let t1 = s.refresh(&retry.refresh_token, DEV, IP).await.unwrap();
    clock.advance(Duration::from_secs(11));
    assert_eq!(s.refresh(&retry.refresh_token, DEV, IP).await.unwrap_err(), AuthError::RefreshTokenReused);
    assert!(s.validate(&t1.access_token, DEV, IP).await.is_err());
}
both!(overlap_window_allows_a_benign_retry, with_overlap());

async fn idle_and_absolute_timeouts<B: Backend>(s: SessionStore<B>, clock: Arc<ManualClock>) {
    // Idle: 30 minutes without use ends the session.
    let t = s.login("erin", DEV, IP, 1).await.unwrap();
    clock.advance(min(30));
    let e = s.refresh(&t.refresh_token, DEV, IP).await.unwrap_err();
    assert_eq!(e, AuthError::SessionExpired("idle timeout"));

    // Activity keeps it alive, but never past 12 hours, and refresh never extends that.
    let t = s.login("erin", DEV, IP, 1).await.unwrap();
    let end = clock.now_ms() + 12 * 3600 * 1000;
    let mut refresh = t.refresh_token.clone();
    let mut last = None;
    for _ in 0..(12 * 60 / 20 - 1) {
        clock.advance(min(20));
        let n = s.refresh(&refresh, DEV, IP).await.unwrap();
        assert!(n.access_expires_ms <= end, "an access token never outlives its session");
        refresh = n.refresh_token.clone();
        last = Some(n);
    }
    let last = last.unwrap();
    clock.advance(min(19));
    let near_end = s.refresh(&refresh, DEV, IP).await.unwrap();
    assert_eq!(near_end.access_expires_ms, end, "capped at the absolute end");
    let _ = last;
    clock.advance(min(1));
    assert_eq!(s.validate(&near_end.access_token, DEV, IP).await.unwrap_err(), AuthError::Token(TokenError::Expired));
    assert_eq!(
        s.refresh(&near_end.refresh_token, DEV, IP).await.unwrap_err(),
        AuthError::SessionExpired("absolute lifetime reached")
    );
}
both!(idle_and_absolute_timeouts, SessionConfig::default());

use session_store::Clock as _;

async fn step_up_is_required_for_withdrawals<B: Backend>(s: SessionStore<B>, clock: Arc<ManualClock>) {
    let t = s.login("frank", DEV, IP, 1).await.unwrap();
    let who = s.validate(&t.access_token, DEV, IP).await.unwrap();
    s.authorize(&who, Action::Play).unwrap();
    let e = s.authorize(&who, Action::Withdraw).unwrap_err();
    assert_eq!(e, AuthError::InsufficientUserAuthentication { required_acr: 2, max_age_secs: 300 });
    let challenge = e.www_authenticate().unwrap();
    assert!(challenge.contains("error=\"insufficient_user_authentication\""), "{challenge}");
    assert!(challenge.contains("acr_values=\"2\"") && challenge.contains("max_age=300"), "{challenge}");
    assert!(s.authorize(&who, Action::ChangeAccountDetails).is_err());

    clock.advance(min(1));
    let up = s.step_up(&t.access_token, DEV, IP, 2).await.unwrap();
    assert_ne!(up.session_id, t.session_id, "the session id is regenerated on privilege change");
    assert_eq!(s.validate(&t.access_token, DEV, IP).await, Err(AuthError::SessionRevoked));
    assert!(s.refresh(&t.refresh_token, DEV, IP).await.is_err());
    let who = s.validate(&up.access_token, DEV, IP).await.unwrap();
    assert_eq!(who.level, 2);
    s.authorize(&who, Action::Withdraw).unwrap();
    // The privileged window is 5 minutes from the step-up.
    clock.advance(Duration::from_secs(299));
    s.authorize(&who, Action::Withdraw).unwrap();
    clock.advance(Duration::from_secs(2));
    assert!(matches!(s.authorize(&who, Action::Withdraw), Err(AuthError::InsufficientUserAuthentication { .. })));
    // Step-up does not extend the absolute lifetime.
    let sessions = s.list_sessions("frank").await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].expires_ms, sessions[0].created_ms + 12 * 3600 * 1000);
}
both!(step_up_is_required_for_withdrawals, SessionConfig::default());

async fn ip_change_is_a_risk_signal<B: Backend>(s: SessionStore<B>, _clock: Arc<ManualClock>) {
    let mut events = s.events();
    let t = s.login("gina", DEV, IP, 1).await.unwrap();
    s.validate(&t.access_token, DEV, "198.51.100.1").await.unwrap();
    let created = events.recv().await.unwrap();
    assert!(matches!(created, SecurityEvent::SessionCreated { level: 1, .. }), "{created:?}");
    let e = events.recv().await.unwrap();
    assert_eq!(
        e,
        SecurityEvent::IpChanged {
            player: "gina".into(),
            sid: t.session_id.clone(),
            from: IP.into(),
            to: "198.51.100.1".into()
        }
    );
    // Recorded: the next call from the new address is not a change.
    s.validate(&t.access_token, DEV, "198.51.100.1").await.unwrap();
    assert!(events.try_recv().is_err());
}
both!(ip_change_is_a_risk_signal, SessionConfig::default());

async fn ip_change_can_be_rejected<B: Backend>(s: SessionStore<B>, _clock: Arc<ManualClock>) {
    let t = s.login("hank", DEV, IP, 1).await.unwrap();
    assert_eq!(s.validate(&t.access_token, DEV, "198.51.100.1").await, Err(AuthError::IpChanged));
    s.validate(&t.access_token, DEV, IP).await.unwrap();
}
both!(ip_change_can_be_rejected, SessionConfig { reject_ip_change: true, ..SessionConfig::default() });

async fn sessions_are_listed_and_revoked_three_ways<B: Backend>(s: SessionStore<B>, clock: Arc<ManualClock>) {
    let a = s.login("ivy", "phone", IP, 1).await.unwrap();
    clock.advance(Duration::from_secs(1));
    let b = s.login("ivy", "laptop", IP, 1).await.unwrap();
    clock.advance(Duration::from_secs(1));
    let c = s.login("ivy", "tablet", IP, 1).await.unwrap();
    let other = s.login("jack", DEV, IP, 1).await.unwrap();
    let ids: Vec<String> = s.list_sessions("ivy").await.unwrap().into_iter().map(|i| i.session_id).collect();
    assert_eq!(ids, vec![a.session_id.clone(), b.session_id.clone(), c.session_id.clone()]);
    // Not someone else's, not by guessing an id.
    assert!(!s.revoke_session("jack", &a.session_id).await.unwrap());
    assert!(!s.revoke_session("ivy", "no-such-session").await.unwrap());
    s.validate(&a.access_token, "phone", IP).await.unwrap();
    // One.
    assert!(s.revoke_session("ivy", &a.session_id).await.unwrap());
    assert_eq!(s.validate(&a.access_token, "phone", IP).await, Err(AuthError::SessionRevoked));
    // All but the current one.
    assert_eq!(s.revoke_others("ivy", &c.session_id).await.unwrap(), 1);
    assert_eq!(s.validate(&b.access_token, "laptop", IP).await, Err(AuthError::SessionRevoked));
    s.validate(&c.access_token, "tablet", IP).await.unwrap();
    // All (force logout).
    assert_eq!(s.revoke_all("ivy").await.unwrap(), 1);
    assert_eq!(s.validate(&c.access_token, "tablet", IP).await, Err(AuthError::SessionRevoked));
    assert!(s.list_sessions("ivy").await.unwrap().is_empty());
    // Nobody else was touched.
    s.validate(&other.access_token, DEV, IP).await.unwrap();
}
both!(sessions_are_listed_and_revoked_three_ways, SessionConfig::default());

async fn keys_rotate_without_cutting_tokens_short<B: Backend>(s: SessionStore<B>, clock: Arc<ManualClock>) {
    let t = s.login("kim", DEV, IP, 1).await.unwrap();
    s.rotate_key("k2", [9; 32]).unwrap();
    let fresh = s.refresh(&t.refresh_token, DEV, IP).await.unwrap();
    assert!(fresh.access_token.starts_with("v1.k2."));
    // The old token stays valid until it expires...
    clock.advance(Duration::from_secs(299));
    s.validate(&t.access_token, DEV, IP).await.unwrap();
    s.validate(&fresh.access_token, DEV, IP).await.unwrap();
    // ...and the old key is gone once every token it signed has expired.
    clock.advance(Duration::from_secs(31));
    let e = s.validate(&t.access_token, DEV, IP).await.unwrap_err();
    assert!(matches!(e, AuthError::Token(TokenError::Expired | TokenError::RetiredKey)), "{e:?}");
}
both!(keys_rotate_without_cutting_tokens_short, SessionConfig::default());

fn tight_limits() -> SessionConfig {
    let per_min = |max| Some(RateLimit { max, window: Duration::from_secs(60) });
    SessionConfig {
        limits: RateLimits {
            create_per_player: per_min(3),
            create_per_ip: per_min(5),
            refresh_per_player: per_min(2),
            refresh_per_ip: per_min(4),
        },
        ..SessionConfig::default()
    }
}

async fn creation_and_refresh_are_rate_limited<B: Backend>(s: SessionStore<B>, clock: Arc<ManualClock>) {
    let limited = |r: Result<session_store::Tokens, AuthError>| matches!(r, Err(AuthError::RateLimited { .. }));
    // Per player: the fourth session for lena within a minute is refused, from any address.
    let mut lena = Vec::new();
    for i in 0..3 {
        lena.push(s.login("lena", DEV, &format!("198.51.100.{i}"), 1).await.unwrap());
    }
    let e = s.login("lena", DEV, "198.51.100.9", 1).await.unwrap_err();
    let AuthError::RateLimited { retry_after_ms, .. } = e else { panic!("{e:?}") };
    assert!(retry_after_ms > 0 && retry_after_ms <= 60_000, "{retry_after_ms}");
    // Per IP: five sessions from one address, whoever they are for.
    for i in 0..5 {
        s.login(&format!("p{i}"), DEV, IP, 1).await.unwrap();
    }
    assert!(limited(s.login("p9", DEV, IP, 1).await));
    // Refresh per player: two rotations, then refused (the token stays live: nothing rotated).
    let mut refresh = lena[0].refresh_token.clone();
    for _ in 0..2 {
        refresh = s.refresh(&refresh, DEV, "198.51.100.20").await.unwrap().refresh_token;
    }
    assert!(limited(s.refresh(&refresh, DEV, "198.51.100.21").await));
    // The next window lets both through again, and the refused refresh was not a rotation.
    clock.advance(Duration::from_secs(61));
    let next = s.refresh(&refresh, DEV, "198.51.100.20").await.unwrap();
    s.validate(&next.access_token, DEV, "198.51.100.20").await.unwrap();
    s.login("lena", DEV, IP, 1).await.unwrap();
}
both!(creation_and_refresh_are_rate_limited, tight_limits());

async fn refreshes_from_one_address_are_rate_limited<B: Backend>(s: SessionStore<B>, _clock: Arc<ManualClock>) {
    let a = s.login("mia", DEV, "198.51.100.1", 1).await.unwrap();
    let b = s.login("noah", DEV, "198.51.100.2", 1).await.unwrap();
    let (mut ra, mut rb) = (a.refresh_token, b.refresh_token);
    for _ in 0..2 {
        ra = s.refresh(&ra, DEV, IP).await.unwrap().refresh_token;
        rb = s.refresh(&rb, DEV, IP).await.unwrap().refresh_token;
    }
    assert!(matches!(s.refresh(&ra, DEV, IP).await, Err(AuthError::RateLimited { .. })));
    // Another address is not affected.
    s.refresh(&ra, DEV, "198.51.100.3").await.unwrap();
}
both!(
    refreshes_from_one_address_are_rate_limited,
    SessionConfig {
        limits: RateLimits {
            refresh_per_ip: Some(RateLimit { max: 4, window: Duration::from_secs(60) }),
            ..RateLimits::OFF
        },
        ..SessionConfig::default()
    }
);

async fn introspection_reports_without_touching<B: Backend>(s: SessionStore<B>, clock: Arc<ManualClock>) {
    let t = s.login_at("olga", DEV, IP, 2, Some(clock.now_ms() - 5_000)).await.unwrap();
    let i = s.introspect(&t.access_token, None).await.unwrap();
    assert_eq!((i.principal.player.as_str(), i.principal.level), ("olga", 2));
    assert_eq!(i.principal.auth_time_ms, clock.now_ms() - 5_000, "the reported auth time is kept");
    assert_eq!(i.token_expires_ms, t.access_expires_ms);
    assert!(s.introspect(&t.access_token, Some(DEV)).await.is_ok());
    assert_eq!(s.introspect(&t.access_token, Some("other")).await, Err(AuthError::DeviceMismatch));
    assert!(matches!(s.introspect("v1.k1.forged", None).await, Err(AuthError::Token(_))));
    // Introspection is not activity: the session idles out 30 minutes after its last use,
    // however often it was introspected meanwhile (tokens here outlive the idle timeout).
    clock.advance(min(20));
    s.introspect(&t.access_token, None).await.unwrap();
    clock.advance(min(11));
    assert!(matches!(s.introspect(&t.access_token, None).await, Err(AuthError::SessionExpired(_))));
}
both!(introspection_reports_without_touching, SessionConfig { access_ttl: min(60), ..SessionConfig::default() });

async fn login_times_are_checked<B: Backend>(s: SessionStore<B>, clock: Arc<ManualClock>) {
    let now = clock.now_ms();
    assert!(matches!(s.login_at("pia", DEV, IP, 1, Some(now + 60_000)).await, Err(AuthError::InvalidInput(_))));
    assert!(matches!(s.login_at("pia", DEV, IP, 1, Some(now - 31 * 60_000)).await, Err(AuthError::InvalidInput(_))));
    s.login_at("pia", DEV, IP, 1, Some(now + 1_000)).await.unwrap();
}
both!(login_times_are_checked, SessionConfig::default());

async fn every_event_reaches_the_sink_in_order<B: Backend>(s: SessionStore<B>, _clock: Arc<ManualClock>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    assert!(s.set_event_sink(Arc::new(move |e: &SecurityEvent| sink.lock().unwrap().push(e.clone()))));
    assert!(!s.set_event_sink(Arc::new(|_: &SecurityEvent| {})), "one sink only");
    let t = s.login("quinn", DEV, IP, 1).await.unwrap();
    let up = s.step_up(&t.access_token, DEV, IP, 2).await.unwrap();
    let r1 = s.refresh(&up.refresh_token, DEV, IP).await.unwrap();
    let _ = r1;
    assert_eq!(s.refresh(&up.refresh_token, DEV, IP).await, Err(AuthError::RefreshTokenReused));
    let kinds: Vec<&'static str> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| match e {
            SecurityEvent::SessionCreated { .. } => "created",
            SecurityEvent::SteppedUp { .. } => "stepped_up",
            SecurityEvent::RefreshTokenReuse { .. } => "reuse",
            SecurityEvent::Revoked { .. } => "revoked",
            SecurityEvent::DeviceMismatch { .. } => "device",
            SecurityEvent::IpChanged { .. } => "ip",
        })
        .collect();
    assert_eq!(kinds, ["created", "stepped_up", "reuse", "revoked"]);
    let events = seen.lock().unwrap();
    let SecurityEvent::SteppedUp { from_sid, sid, level, .. } = &events[1] else { unreachable!() };
    assert_eq!((from_sid, sid, *level), (&t.session_id, &up.session_id, 2));
}
both!(every_event_reaches_the_sink_in_order, SessionConfig::default());
