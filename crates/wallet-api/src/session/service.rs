//! The `casino.session.v1.Sessions` service: the session store's operations over gRPC.
//!
//! Who may call what (also in `session.proto`): creating and stepping up sessions needs an
//! operator key with the `session` role; refreshing needs only the refresh token; listing and
//! revoking take the player's own access token or a `session` operator key; introspection takes
//! any operator key. Rate limits on creation and refresh are the store's (shared through its
//! backend, so they hold across nodes). A call that caused security events answers only once
//! they are in the node's security log.

use std::sync::Arc;

use session_store::{AuthError, Backend, Principal, SessionStore, Tokens};
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use super::audit::SecurityLog;
use super::pb;
use super::pb::sessions_server::{Sessions, SessionsServer};
use crate::api::auth::{Authenticator, Role, meta, player_ip, unauthenticated};
use crate::api::edge::RequestDigest;
use crate::api::errors::{self, status};

/// The highest authentication level a session records.
const LEVEL_MAX: u32 = 9;

/// The session service. Cheap to clone.
pub struct SessionsService<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for SessionsService<B> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

struct Inner<B> {
    store: SessionStore<B>,
    auth: Authenticator,
    log: Option<SecurityLog>,
    draining: watch::Receiver<bool>,
}

/// Who is calling a method that takes either credential.
enum Who {
    Operator,
    Player(Principal),
}

/// Which call an error came from: the same library error reads differently in each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Refresh,
    Other,
}

fn auth_error(e: AuthError, call: Call) -> Status {
    match e {
        AuthError::Token(_) | AuthError::IpChanged => unauthenticated("TOKEN_INVALID", &e.to_string()),
        AuthError::DeviceMismatch if call == Call::Refresh => status(
            Code::Unauthenticated,
            "DEVICE_MISMATCH",
            "the refresh token belongs to a session on another device",
            &[],
        ),
        AuthError::DeviceMismatch => unauthenticated("TOKEN_INVALID", "the access token is bound to another device"),
        AuthError::SessionRevoked | AuthError::SessionExpired(_) => unauthenticated("SESSION_REVOKED", &e.to_string()),
        AuthError::UnknownRefreshToken => unauthenticated(
            "REFRESH_TOKEN_UNKNOWN",
            "not a refresh token of a live session; the player must log in again",
        ),
        AuthError::RefreshTokenReused => unauthenticated(
            "REFRESH_TOKEN_REUSED",
            "this refresh token was already used: the session and all its tokens are revoked; the player must log in again",
        ),
        AuthError::InsufficientUserAuthentication { .. } => {
            status(Code::PermissionDenied, "STEP_UP_REQUIRED", e.to_string(), &[])
        }
        AuthError::InvalidInput(what) => errors::invalid_field(field_of(what), format!("invalid {what}")),
        AuthError::RateLimited { retry_after_ms, .. } => status(
            Code::ResourceExhausted,
            "RATE_LIMITED",
            e.to_string(),
            &[("retry_after_ms", retry_after_ms.to_string().as_str())],
        ),
        // The store's own text names Redis internals: for the operator's log only.
        AuthError::Unavailable(why) => {
            tracing::warn!("session store unavailable: {why}");
            status(
                Code::Unavailable,
                "SESSIONS_UNAVAILABLE",
                "the session store cannot be reached; nothing was done",
                &[],
            )
        }
    }
}

/// The request field a library input error is about.
fn field_of(what: &str) -> &'static str {
    match what {
        "player id" => "player_id",
        "device fingerprint" => "device_fingerprint",
        "ip" => "ip",
        w if w.starts_with("auth time") => "auth_time_ms",
        w if w.starts_with("auth level") => "auth_level",
        _ => "request",
    }
}

fn tokens(t: Tokens, now_ms: u64) -> pb::SessionTokens {
    pb::SessionTokens {
        session_id: t.session_id,
        access_token: t.access_token,
        access_expires_ms: t.access_expires_ms,
        access_expires_in_s: t.access_expires_ms.saturating_sub(now_ms) / 1000,
        refresh_token: t.refresh_token,
        session_expires_ms: t.session_expires_ms,
        player_id: t.player,
        auth_level: u32::from(t.level),
    }
}

fn wall_ms() -> u64 {
    session_store::Clock::now_ms(&session_store::SystemClock)
}

fn level(value: u32, min: u32, field: &str) -> Result<u8, Status> {
    if (min..=LEVEL_MAX).contains(&value) {
        Ok(value as u8)
    } else {
        Err(errors::invalid_field(field, format!("{field} must be {min} to {LEVEL_MAX}")))
    }
}

impl<B: Backend> SessionsService<B> {
    /// The service over `store`, with operator keys from `auth`, writing security events to
    /// `log` (which the caller has made the store's event sink).
    pub fn new(
        store: SessionStore<B>,
        auth: Authenticator,
        log: Option<SecurityLog>,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Self { inner: Arc::new(Inner { store, auth, log, draining }) }
    }

    /// The tonic server, with the API's message size limit.
    pub fn into_server(self) -> SessionsServer<Self> {
        SessionsServer::new(self).max_decoding_message_size(crate::api::MESSAGE_BYTES_MAX)
    }

    /// Refuses calls while draining or when security events can no longer be made durable.
    fn admit(&self) -> Result<(), Status> {
        if *self.inner.draining.borrow() {
            return Err(errors::shutting_down());
        }
        if self.inner.log.as_ref().is_some_and(|l| !l.healthy()) {
            return Err(status(
                Code::Unavailable,
                "SESSIONS_UNAVAILABLE",
                "this node cannot record security events right now; retry on another node",
                &[],
            ));
        }
        Ok(())
    }

    /// Waits until the events this call caused are in the security log.
    async fn logged(&self) {
        if let Some(log) = &self.inner.log
            && let Err(e) = log.flush().await
        {
            tracing::error!("security events of a session call may not be durable: {e}");
        }
    }

    fn operator<T>(&self, req: &Request<T>, method: &str, need: Option<Role>) -> Result<Option<String>, Status> {
        let digest = req.extensions().get::<RequestDigest>().map(|d| &d.0);
        self.inner.auth.operator(req.metadata(), &super::path(method), need, digest)
    }

    /// An operator key with `need`, or the refusal.
    fn require_operator<T>(&self, req: &Request<T>, method: &str, need: Option<Role>) -> Result<(), Status> {
        match self.operator(req, method, need)? {
            Some(_) => Ok(()),
            None if meta(req.metadata(), "authorization").is_some() => Err(status(
                Code::PermissionDenied,
                "ROLE_FORBIDDEN",
                format!("{method} takes an operator key, not a player's token"),
                &[],
            )),
            None => Err(unauthenticated("CREDENTIALS_MISSING", "sign the call with an operator key")),
        }
    }

    /// A `session` operator key or the player's own access token.
    async fn operator_or_player<T>(&self, req: &Request<T>, method: &str) -> Result<Who, Status> {
        if self.operator(req, method, Some(Role::Session))?.is_some() {
            return Ok(Who::Operator);
        }
        let m = req.metadata();
        let Some(auth) = meta(m, "authorization") else {
            return Err(unauthenticated(
                "CREDENTIALS_MISSING",
                "send the player's bearer token (with x-device-fingerprint) or sign with an operator key",
            ));
        };
        let token = auth
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthenticated("TOKEN_INVALID", "authorization must be `Bearer <access token>`"))?;
        let device = meta(m, crate::api::auth::DEVICE_HEADER).unwrap_or("");
        let ip = player_ip(m, req.remote_addr());
        let who = self.inner.store.validate(token, device, &ip).await.map_err(|e| auth_error(e, Call::Other))?;
        Ok(Who::Player(who))
    }
}

/// The player a call acts on: the token's own (a named other player is refused) or, for an
/// operator, the one named.
fn subject(who: &Who, named: &str) -> Result<String, Status> {
    match who {
        Who::Player(p) if named.is_empty() || named == p.player => Ok(p.player.clone()),
        Who::Player(_) => Err(status(
            Code::PermissionDenied,
            "NOT_YOUR_SESSION",
            "a player token may only list or end its own player's sessions",
            &[],
        )),
        Who::Operator if named.is_empty() => Err(errors::invalid_field("player_id", "player_id is required")),
        Who::Operator => Ok(named.to_string()),
    }
}

fn metadata_ip(m: &MetadataMap, remote: Option<std::net::SocketAddr>, given: &str) -> String {
    if given.is_empty() { player_ip(m, remote) } else { given.to_string() }
}

#[tonic::async_trait]
impl<B: Backend> Sessions for SessionsService<B> {
    async fn create_session(
        &self,
        req: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::SessionTokens>, Status> {
        self.admit()?;
        self.require_operator(&req, "CreateSession", Some(Role::Session))?;
        let m = req.get_ref();
        let level = level(m.auth_level, 1, "auth_level")?;
        let at = (m.auth_time_ms != 0).then_some(m.auth_time_ms);
        let result = self.inner.store.login_at(&m.player_id, &m.device_fingerprint, &m.ip, level, at).await;
        self.logged().await;
        let t = result.map_err(|e| auth_error(e, Call::Other))?;
        Ok(Response::new(tokens(t, wall_ms())))
    }

    async fn refresh(&self, req: Request<pb::RefreshRequest>) -> Result<Response<pb::SessionTokens>, Status> {
        self.admit()?;
        let ip = player_ip(req.metadata(), req.remote_addr());
        let m = req.get_ref();
        let result = self.inner.store.refresh(&m.refresh_token, &m.device_fingerprint, &ip).await;
        self.logged().await;
        let t = result.map_err(|e| auth_error(e, Call::Refresh))?;
        Ok(Response::new(tokens(t, wall_ms())))
    }

    async fn step_up(&self, req: Request<pb::StepUpRequest>) -> Result<Response<pb::SessionTokens>, Status> {
        self.admit()?;
        self.require_operator(&req, "StepUp", Some(Role::Session))?;
        let ip = metadata_ip(req.metadata(), req.remote_addr(), &req.get_ref().ip);
        let m = req.get_ref();
        let level = level(m.auth_level, 2, "auth_level")?;
        let result = self.inner.store.step_up(&m.access_token, &m.device_fingerprint, &ip, level).await;
        self.logged().await;
        let t = result.map_err(|e| auth_error(e, Call::Other))?;
        Ok(Response::new(tokens(t, wall_ms())))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        self.admit()?;
        let who = self.operator_or_player(&req, "ListSessions").await?;
        let player = subject(&who, &req.get_ref().player_id)?;
        let current = match &who {
            Who::Player(p) => p.session_id.as_str(),
            Who::Operator => "",
        };
        let list = self.inner.store.list_sessions(&player).await.map_err(|e| auth_error(e, Call::Other))?;
        let sessions = list
            .into_iter()
            .map(|s| pb::SessionSummary {
                current: s.session_id == current,
                session_id: s.session_id,
                created_ms: s.created_ms,
                last_seen_ms: s.last_seen_ms,
                expires_ms: s.expires_ms,
                auth_level: u32::from(s.level),
                ip: s.ip,
            })
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn revoke(&self, req: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        use pb::revoke_request::Scope;
        self.admit()?;
        let who = self.operator_or_player(&req, "Revoke").await?;
        let m = req.get_ref();
        let player = subject(&who, &m.player_id)?;
        let store = &self.inner.store;
        let result = match (Scope::try_from(m.scope).unwrap_or(Scope::Unspecified), &who) {
            (Scope::One, _) if m.session_id.is_empty() => {
                return Err(errors::invalid_field("session_id", "session_id is required with scope ONE"));
            }
            (Scope::One, _) => match store.revoke_session(&player, &m.session_id).await {
                Ok(true) => Ok(1),
                Ok(false) => {
                    return Err(status(
                        Code::NotFound,
                        "SESSION_NOT_FOUND",
                        "the player has no live session with that id",
                        &[("field", "session_id")],
                    ));
                }
                Err(e) => Err(e),
            },
            (Scope::Others, Who::Player(p)) => store.revoke_others(&player, &p.session_id).await,
            (Scope::Others, Who::Operator) => {
                return Err(errors::invalid_field(
                    "scope",
                    "OTHERS keeps the caller's own session, so it takes a player token; an operator revokes ONE or ALL",
                ));
            }
            (Scope::All, _) => store.revoke_all(&player).await,
            (Scope::Unspecified, _) => return Err(errors::invalid_field("scope", "scope must be ONE, OTHERS or ALL")),
        };
        self.logged().await;
        let n = result.map_err(|e| auth_error(e, Call::Other))?;
        Ok(Response::new(pb::RevokeResponse { revoked: u32::try_from(n).unwrap_or(u32::MAX) }))
    }

    async fn introspect(
        &self,
        req: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        self.admit()?;
        self.require_operator(&req, "Introspect", None)?;
        let m = req.get_ref();
        let device = (!m.device_fingerprint.is_empty()).then_some(m.device_fingerprint.as_str());
        let inactive = Response::new(pb::IntrospectResponse::default());
        if m.token.is_empty() || m.token.len() > 4096 {
            return Ok(inactive);
        }
        match self.inner.store.introspect(&m.token, device).await {
            Ok(i) => Ok(Response::new(pb::IntrospectResponse {
                active: true,
                player_id: i.principal.player,
                session_id: i.principal.session_id,
                auth_level: u32::from(i.principal.level),
                auth_time_ms: i.principal.auth_time_ms,
                issued_ms: i.issued_ms,
                expires_ms: i.token_expires_ms,
            })),
            // The store could not say: that is not "inactive", it is "ask again".
            Err(e @ AuthError::Unavailable(_)) => Err(auth_error(e, Call::Other)),
            Err(_) => {
                self.logged().await;
                Ok(inactive)
            }
        }
    }
}

/// The service over whichever session store a node runs, for [`crate::api::service::serve`].
pub enum SessionApi {
    /// In process (the demo).
    Memory(SessionsService<session_store::MemoryBackend>),
    /// Shared through Redis (every node of a cluster).
    Redis(SessionsService<session_store::RedisBackend>),
}

impl SessionApi {
    /// The service over `sessions`' store, with operator keys from `auth`.
    pub fn new(
        sessions: &crate::api::auth::Sessions,
        auth: Authenticator,
        log: Option<SecurityLog>,
        draining: watch::Receiver<bool>,
    ) -> Self {
        use crate::api::auth::Sessions as Store;
        match sessions {
            Store::Memory(s) => SessionApi::Memory(SessionsService::new(s.clone(), auth, log, draining)),
            Store::Redis(s) => SessionApi::Redis(SessionsService::new(s.clone(), auth, log, draining)),
        }
    }
}
