//! Who is calling: operators and game servers with HMAC-signed API keys, or players with
//! session-store access tokens.
//!
//! We chose HMAC-signed API keys over mTLS for operators because casino platforms already run
//! them for aggregator APIs, they pass through TLS-terminating load balancers intact, and keys
//! rotate without a PKI. The signature covers the method, a timestamp and a SHA-256 of the
//! request message, so a captured signature cannot be replayed against another call or a changed
//! body, and a replay of the same call inside the 5-minute window is harmless because every
//! mutating call is idempotent by its key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use session_store::{Action, AuthError, Clock, MemoryBackend, Principal, RedisBackend, SessionStore, SystemClock};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::errors::status;

/// Metadata key: the operator key id.
pub const KEY_HEADER: &str = "x-wallet-key";
/// Metadata key: Unix milliseconds of signing.
pub const TS_HEADER: &str = "x-wallet-ts";
/// Metadata key: hex HMAC-SHA256 signature.
pub const SIG_HEADER: &str = "x-wallet-sig";
/// Metadata key: the player's device fingerprint, with a bearer token.
pub const DEVICE_HEADER: &str = "x-device-fingerprint";
/// Metadata key: the player's IP when a front-end relays the call.
pub const PLAYER_IP_HEADER: &str = "x-player-ip";
/// How far a signature's timestamp may be from the server's clock.
pub const SKEW_MAX: Duration = Duration::from_secs(300);

/// What an operator key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Game servers: bets, wins, rollbacks, balances.
    Game,
    /// Cashiers and payment providers: wallets, deposits, withdrawals, transfers, balances.
    Cashier,
    /// Auditors: entries, streams, proofs, balances.
    Audit,
    /// Login front-ends: open and step up players' sessions, list and revoke any player's
    /// (`casino.session.v1`).
    Session,
}

impl Role {
    /// The role's name in key files.
    pub fn name(self) -> &'static str {
        match self {
            Role::Game => "game",
            Role::Cashier => "cashier",
            Role::Audit => "audit",
            Role::Session => "session",
        }
    }
}

/// The API's calls, for authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    OpenWallet,
    Deposit,
    ReserveWithdrawal,
    CommitWithdrawal,
    CancelWithdrawal,
    PlaceBet,
    SettleWin,
    RollbackBet,
    Transfer,
    GetBalance,
    ListEntries,
    WatchEntries,
    GetEntryProof,
    PlaceBets,
    SettleWins,
}

impl Rpc {
    /// Every call, for lookups by name.
    pub const ALL: [Rpc; 15] = [
        Rpc::OpenWallet,
        Rpc::Deposit,
        Rpc::ReserveWithdrawal,
        Rpc::CommitWithdrawal,
        Rpc::CancelWithdrawal,
        Rpc::PlaceBet,
        Rpc::SettleWin,
        Rpc::RollbackBet,
        Rpc::Transfer,
        Rpc::GetBalance,
        Rpc::ListEntries,
        Rpc::WatchEntries,
        Rpc::GetEntryProof,
        Rpc::PlaceBets,
        Rpc::SettleWins,
    ];

    /// The method's name in the proto.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::OpenWallet => "OpenWallet",
            Rpc::Deposit => "Deposit",
            Rpc::ReserveWithdrawal => "ReserveWithdrawal",
            Rpc::CommitWithdrawal => "CommitWithdrawal",
            Rpc::CancelWithdrawal => "CancelWithdrawal",
            Rpc::PlaceBet => "PlaceBet",
            Rpc::SettleWin => "SettleWin",
            Rpc::RollbackBet => "RollbackBet",
            Rpc::Transfer => "Transfer",
            Rpc::GetBalance => "GetBalance",
            Rpc::ListEntries => "ListEntries",
            Rpc::WatchEntries => "WatchEntries",
            Rpc::GetEntryProof => "GetEntryProof",
            Rpc::PlaceBets => "PlaceBets",
            Rpc::SettleWins => "SettleWins",
        }
    }

    /// The call a method name (`PlaceBet`, or a full path) stands for.
    pub fn from_name(name: &str) -> Option<Rpc> {
        let short = name.rsplit('/').next().unwrap_or(name);
        Rpc::ALL.into_iter().find(|r| r.name() == short)
    }

    /// True for calls that can move money: their failures may leave the outcome unknown.
    pub fn is_write(self) -> bool {
        !matches!(self, Rpc::GetBalance | Rpc::ListEntries | Rpc::WatchEntries | Rpc::GetEntryProof)
    }

    /// The gRPC method path, which signatures cover.
    pub fn path(self) -> String {
        format!("/{}/{}", super::SERVICE_NAME, self.name())
    }

    /// The operator role the call needs; `None` means any role.
    fn role(self) -> Option<Role> {
        use Rpc::*;
        match self {
            OpenWallet | Deposit | ReserveWithdrawal | CommitWithdrawal | CancelWithdrawal | Transfer => {
                Some(Role::Cashier)
            }
            PlaceBet | SettleWin | RollbackBet | PlaceBets | SettleWins => Some(Role::Game),
            ListEntries | WatchEntries | GetEntryProof => Some(Role::Audit),
            GetBalance => None,
        }
    }

    /// What a player's own token may do, and whether it needs a recent step-up.
    fn player_action(self) -> Option<Action> {
        use Rpc::*;
        match self {
            GetBalance | ListEntries | WatchEntries | Transfer | CancelWithdrawal => Some(Action::Play),
            ReserveWithdrawal => Some(Action::Withdraw),
            _ => None,
        }
    }
}

/// One operator key as the key file lists it. Debug output never shows the secret.
#[derive(Clone, Deserialize)]
pub struct OperatorKey {
    /// The key id sent in `x-wallet-key`.
    pub id: String,
    /// The shared secret, hex, at least 32 bytes.
    pub secret: String,
    /// What the key may do.
    pub roles: BTreeSet<Role>,
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorKey").field("id", &self.id).field("roles", &self.roles).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    operator: Vec<OperatorKey>,
}

/// Loads operator keys from a TOML file of `[[operator]]` tables (see README).
pub fn load_keys(path: &Path) -> Result<Vec<OperatorKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: KeyFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for k in &file.operator {
        let secret = hex::decode(&k.secret).map_err(|_| format!("operator key {}: secret is not hex", k.id))?;
        if secret.len() < 32 {
            return Err(format!("operator key {}: secret must be at least 32 bytes", k.id));
        }
        if k.roles.is_empty() {
            return Err(format!("operator key {}: no roles", k.id));
        }
    }
    Ok(file.operator)
}

/// The string an operator signs, given SHA-256 of the request message bytes.
fn signing_input(path: &str, ts_ms: u64, body_sha256: &[u8; 32]) -> Vec<u8> {
    format!("casino.wallet.v1\n{path}\n{ts_ms}\n{}", hex::encode(body_sha256)).into_bytes()
}

/// Signs a call whose request message is `body` (the exact protobuf bytes sent): the value for
/// `x-wallet-sig`. The key secret is used as the bytes its hex spells.
pub fn sign(secret: &[u8], path: &str, ts_ms: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(&signing_input(path, ts_ms, &Sha256::digest(body).into()));
    hex::encode(mac.finalize().into_bytes())
}

/// The session store behind player tokens.
#[derive(Clone)]
pub enum Sessions {
    /// In process; for the demo and single-process setups.
    Memory(SessionStore<MemoryBackend>),
    /// Shared through Redis, so every node sees logins and revocations.
    Redis(SessionStore<RedisBackend>),
}

impl Sessions {
    /// Sends every security event of the store to `sink` (the durable security log).
    pub fn set_event_sink(&self, sink: session_store::EventSink) -> bool {
        match self {
            Sessions::Memory(s) => s.set_event_sink(sink),
            Sessions::Redis(s) => s.set_event_sink(sink),
        }
    }

    async fn validate(&self, token: &str, device: &str, ip: &str) -> Result<Principal, AuthError> {
        match self {
            Sessions::Memory(s) => s.validate(token, device, ip).await,
            Sessions::Redis(s) => s.validate(token, device, ip).await,
        }
    }

    fn authorize(&self, who: &Principal, action: Action) -> Result<(), AuthError> {
        match self {
            Sessions::Memory(s) => s.authorize(who, action),
            Sessions::Redis(s) => s.authorize(who, action),
        }
    }
}

/// The session signing key file: `kid`, `key` (64 hex digits), the Redis key `prefix`, and the
/// session service's rate limits. Every node of a cluster reads the same file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKeyFile {
    /// Key id, as in the tokens.
    pub kid: String,
    /// 32-byte HMAC key, hex.
    pub key: String,
    /// Prefix of the session store's Redis keys; every issuer and validator must agree on it.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Rate limits of session creation and refresh: `"<attempts>/<seconds>s"` or `"off"`.
    #[serde(default)]
    pub limits: LimitsFile,
}

/// The `[limits]` table of the session key file; an absent entry keeps the default.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Sessions created per player (default `"20/60s"`).
    pub create_per_player: Option<String>,
    /// Sessions created per IP address (default `"120/60s"`).
    pub create_per_ip: Option<String>,
    /// Refreshes per player (default `"60/60s"`).
    pub refresh_per_player: Option<String>,
    /// Refreshes per IP address (default `"600/60s"`).
    pub refresh_per_ip: Option<String>,
}

impl LimitsFile {
    /// The limits these entries give.
    pub fn limits(&self) -> Result<session_store::RateLimits, String> {
        let one = |v: &Option<String>, default: Option<session_store::RateLimit>, name: &str| match v.as_deref() {
            None => Ok(default),
            Some("off") => Ok(None),
            Some(text) => session_store::RateLimit::parse(text).map(Some).map_err(|e| format!("limits.{name}: {e}")),
        };
        let d = session_store::RateLimits::default();
        Ok(session_store::RateLimits {
            create_per_player: one(&self.create_per_player, d.create_per_player, "create_per_player")?,
            create_per_ip: one(&self.create_per_ip, d.create_per_ip, "create_per_ip")?,
            refresh_per_player: one(&self.refresh_per_player, d.refresh_per_player, "refresh_per_player")?,
            refresh_per_ip: one(&self.refresh_per_ip, d.refresh_per_ip, "refresh_per_ip")?,
        })
    }
}

fn default_prefix() -> String {
    "walletd-sessions".into()
}

/// Connects the Redis-backed session store that issuers of player tokens share.
pub async fn redis_sessions(url: &str, key_file: &Path) -> Result<Sessions, String> {
    let text = std::fs::read_to_string(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let f: SessionKeyFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let key: [u8; 32] = hex::decode(&f.key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| format!("{}: key must be 64 hex digits", key_file.display()))?;
    let keys = session_store::Keyring::new(&f.kid, key).map_err(|_| format!("{}: bad kid", key_file.display()))?;
    let limits = f.limits.limits().map_err(|e| format!("{}: {e}", key_file.display()))?;
    let backend = RedisBackend::connect(url, &f.prefix, Duration::from_secs(2))
        .await
        .map_err(|e| format!("session store at {url}: {}", e.0))?;
    Ok(Sessions::Redis(SessionStore::new(
        backend,
        keys,
        session_store::SessionConfig { limits, ..session_store::SessionConfig::default() },
        std::sync::Arc::new(SystemClock),
    )))
}

/// Who made a call.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An operator key, by id.
    Operator(String),
    /// A player's session.
    Player(Principal),
}

impl Caller {
    /// Refuses a player token acting on another player's wallet.
    pub fn must_own(&self, player: &str) -> Result<(), Status> {
        match self {
            Caller::Player(p) if p.player != player => Err(status(
                Code::PermissionDenied,
                "NOT_YOUR_WALLET",
                "a player token may only act on its own wallets",
                &[],
            )),
            _ => Ok(()),
        }
    }

    /// True for operator keys (whose roles were already checked).
    pub fn is_operator(&self) -> bool {
        matches!(self, Caller::Operator(_))
    }
}

/// Checks credentials of every call.
pub struct Authenticator {
    keys: BTreeMap<String, (Vec<u8>, BTreeSet<Role>)>,
    sessions: Option<Sessions>,
}

/// An `UNAUTHENTICATED` status with an `ErrorInfo` reason.
pub fn unauthenticated(reason: &str, message: &str) -> Status {
    status(Code::Unauthenticated, reason, message, &[])
}

/// A metadata value as text, if present and printable.
pub fn meta<'a>(m: &'a MetadataMap, key: &str) -> Option<&'a str> {
    m.get(key).and_then(|v| v.to_str().ok())
}

fn now_ms() -> u64 {
    SystemClock.now_ms()
}

impl Authenticator {
    /// Operator keys (already validated by [`load_keys`]) and the session store, if players call.
    pub fn new(keys: Vec<OperatorKey>, sessions: Option<Sessions>) -> Self {
        let keys = keys
            .into_iter()
            .map(|k| (k.id, (hex::decode(&k.secret).expect("keys are validated when loaded"), k.roles)))
            .collect();
        Self { keys, sessions }
    }

    /// Authenticates and authorizes one call. `body_sha256` is SHA-256 of the request message
    /// bytes as received (see [`super::edge`]), which operator signatures cover; `remote` is the
    /// peer address, the player's IP unless a front-end relays it.
    pub async fn check(
        &self,
        metadata: &MetadataMap,
        remote: Option<SocketAddr>,
        rpc: Rpc,
        body_sha256: Option<&[u8; 32]>,
    ) -> Result<Caller, Status> {
        if let Some(key_id) = meta(metadata, KEY_HEADER) {
            return self.check_operator(metadata, key_id, rpc, body_sha256);
        }
        if let Some(auth) = meta(metadata, "authorization") {
            return self.check_player(metadata, remote, auth, rpc).await;
        }
        Err(unauthenticated(
            "CREDENTIALS_MISSING",
            "sign the call with an operator key (x-wallet-key, x-wallet-ts, x-wallet-sig) or send a player's bearer token",
        ))
    }

    fn check_operator(
        &self,
        m: &MetadataMap,
        key_id: &str,
        rpc: Rpc,
        body_sha256: Option<&[u8; 32]>,
    ) -> Result<Caller, Status> {
        self.check_signed(m, key_id, &rpc.path(), rpc.role(), body_sha256).map(Caller::Operator)
    }

    /// Checks an operator's signature of a call to `path` (any service's method path) and that
    /// the key holds `need` (`None`: any role). `Ok(None)` when the call carries no operator key.
    pub fn operator(
        &self,
        m: &MetadataMap,
        path: &str,
        need: Option<Role>,
        body_sha256: Option<&[u8; 32]>,
    ) -> Result<Option<String>, Status> {
        let Some(key_id) = meta(m, KEY_HEADER) else { return Ok(None) };
        self.check_signed(m, key_id, path, need, body_sha256).map(Some)
    }

    fn check_signed(
        &self,
        m: &MetadataMap,
        key_id: &str,
        path: &str,
        need: Option<Role>,
        body_sha256: Option<&[u8; 32]>,
    ) -> Result<String, Status> {
        let bad = || unauthenticated("SIGNATURE_INVALID", "unknown operator key or bad signature");
        let (secret, roles) = self.keys.get(key_id).ok_or_else(bad)?;
        let ts: u64 = meta(m, TS_HEADER).and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let sig = meta(m, SIG_HEADER).and_then(|s| hex::decode(s).ok()).ok_or_else(bad)?;
        let body_sha256 = body_sha256.ok_or_else(bad)?;
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(&signing_input(path, ts, body_sha256));
        // verify_slice compares in constant time.
        mac.verify_slice(&sig).map_err(|_| bad())?;
        if now_ms().abs_diff(ts) > SKEW_MAX.as_millis() as u64 {
            return Err(unauthenticated("TIMESTAMP_SKEW", "signature timestamp is more than 5 minutes off"));
        }
        if let Some(need) = need
            && !roles.contains(&need)
        {
            return Err(status(
                Code::PermissionDenied,
                "ROLE_FORBIDDEN",
                format!("operator key {key_id} lacks the {} role this call needs", need.name()),
                &[],
            ));
        }
        Ok(key_id.to_string())
    }

    async fn check_player(
        &self,
        m: &MetadataMap,
        remote: Option<SocketAddr>,
        auth: &str,
        rpc: Rpc,
    ) -> Result<Caller, Status> {
        let token = auth
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthenticated("TOKEN_INVALID", "authorization must be `Bearer <access token>`"))?;
        let sessions = self
            .sessions
            .as_ref()
            .ok_or_else(|| unauthenticated("TOKEN_INVALID", "this node accepts no player tokens"))?;
        let Some(action) = rpc.player_action() else {
            return Err(status(
                Code::PermissionDenied,
                "ROLE_FORBIDDEN",
                format!("players cannot call {} themselves", rpc.name()),
                &[],
            ));
        };
        let device = meta(m, DEVICE_HEADER).unwrap_or("");
        let ip = player_ip(m, remote);
        let who = sessions.validate(token, device, &ip).await.map_err(auth_status)?;
        sessions.authorize(&who, action).map_err(auth_status)?;
        Ok(Caller::Player(who))
    }
}

/// The player's IP address: what a relaying front-end put in `x-player-ip`, else the peer's.
pub fn player_ip(m: &MetadataMap, remote: Option<SocketAddr>) -> String {
    match meta(m, PLAYER_IP_HEADER) {
        Some(ip) => ip.to_string(),
        None => remote.map(|a| a.ip().to_string()).unwrap_or_else(|| "unknown".into()),
    }
}

fn auth_status(e: AuthError) -> Status {
    match e {
        AuthError::InsufficientUserAuthentication { .. } => {
            let challenge = e.www_authenticate().unwrap_or_default();
            status(Code::PermissionDenied, "STEP_UP_REQUIRED", e.to_string(), &[("www-authenticate", &challenge)])
        }
        AuthError::SessionRevoked | AuthError::SessionExpired(_) => unauthenticated("SESSION_REVOKED", &e.to_string()),
        AuthError::Unavailable(_) => status(Code::Unavailable, "SESSIONS_UNAVAILABLE", e.to_string(), &[]),
        _ => unauthenticated("TOKEN_INVALID", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        let key = |id: &str, roles: &[Role]| OperatorKey {
            id: id.into(),
            secret: "11".repeat(32),
            roles: roles.iter().copied().collect(),
        };
        Authenticator::new(vec![key("game-1", &[Role::Game]), key("cashier-1", &[Role::Cashier])], None)
    }

    fn digest(body: &[u8]) -> [u8; 32] {
        Sha256::digest(body).into()
    }

    fn signed(key: &str, rpc: Rpc, body: &[u8], ts: u64, secret: &[u8]) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(KEY_HEADER, key.parse().unwrap());
        m.insert(TS_HEADER, ts.to_string().parse().unwrap());
        m.insert(SIG_HEADER, sign(secret, &rpc.path(), ts, body).parse().unwrap());
        m
    }

    #[tokio::test]
    async fn signatures_cover_method_body_and_time_and_roles_are_enforced() {
        let a = auth();
        let secret = [0x11u8; 32];
        let now = now_ms();
        let m = signed("game-1", Rpc::PlaceBet, b"body", now, &secret);
        assert!(a.check(&m, None, Rpc::PlaceBet, Some(&digest(b"body"))).await.is_ok());
        let reason = |r: Result<Caller, Status>| super::super::errors::reason_of(&r.unwrap_err()).unwrap();
        // Another body, another method, another key, a stale timestamp, a wrong secret.
        assert_eq!(reason(a.check(&m, None, Rpc::PlaceBet, Some(&digest(b"bodY"))).await), "SIGNATURE_INVALID");
        assert_eq!(reason(a.check(&m, None, Rpc::SettleWin, Some(&digest(b"body"))).await), "SIGNATURE_INVALID");
        let stale = signed("game-1", Rpc::PlaceBet, b"body", now - 600_000, &secret);
        assert_eq!(reason(a.check(&stale, None, Rpc::PlaceBet, Some(&digest(b"body"))).await), "TIMESTAMP_SKEW");
        let forged = signed("game-1", Rpc::PlaceBet, b"body", now, &[0x12; 32]);
        assert_eq!(reason(a.check(&forged, None, Rpc::PlaceBet, Some(&digest(b"body"))).await), "SIGNATURE_INVALID");
        let unknown = signed("nobody", Rpc::PlaceBet, b"body", now, &secret);
        assert_eq!(reason(a.check(&unknown, None, Rpc::PlaceBet, Some(&digest(b"body"))).await), "SIGNATURE_INVALID");
        // A game key cannot deposit.
        let dep = signed("game-1", Rpc::Deposit, b"d", now, &secret);
        assert_eq!(reason(a.check(&dep, None, Rpc::Deposit, Some(&digest(b"d"))).await), "ROLE_FORBIDDEN");
        assert_eq!(
            reason(a.check(&MetadataMap::new(), None, Rpc::Deposit, Some(&digest(b"d"))).await),
            "CREDENTIALS_MISSING"
        );
        // No digest (the body was not one plain message): nothing to check a signature against.
        assert_eq!(reason(a.check(&m, None, Rpc::PlaceBet, None).await), "SIGNATURE_INVALID");
    }

    #[test]
    fn calls_are_named_as_in_the_proto() {
        for rpc in Rpc::ALL {
            assert_eq!(Rpc::from_name(rpc.name()), Some(rpc));
            assert_eq!(Rpc::from_name(&rpc.path()), Some(rpc));
        }
        assert_eq!(Rpc::PlaceBet.path(), "/casino.wallet.v1.Wallet/PlaceBet");
        assert_eq!(Rpc::from_name("Nope"), None);
        assert!(Rpc::PlaceBet.is_write() && !Rpc::GetBalance.is_write());
    }

    #[test]
    fn session_limits_come_from_the_key_file_with_defaults_and_off() {
        let parse = |text: &str| toml::from_str::<SessionKeyFile>(text).map_err(|e| e.to_string());
        let base = "kid = \"k1\"\nkey = \"00\"\n";
        let defaults = parse(base).unwrap().limits.limits().unwrap();
        assert_eq!(defaults, session_store::RateLimits::default());
        let f = parse(&format!("{base}[limits]\ncreate_per_player = \"3/10s\"\nrefresh_per_ip = \"off\"\n")).unwrap();
        let l = f.limits.limits().unwrap();
        let three = session_store::RateLimit { max: 3, window: Duration::from_secs(10) };
        assert_eq!((l.create_per_player, l.refresh_per_ip), (Some(three), None));
        assert_eq!(l.create_per_ip, defaults.create_per_ip);
        for bad in ["0/60s", "ten/60s", "5/0s", "5", "5/100000s"] {
            let f = parse(&format!("{base}[limits]\ncreate_per_ip = \"{bad}\"\n")).unwrap();
            let e = f.limits.limits().unwrap_err();
            assert!(e.contains("limits.create_per_ip"), "{bad}: {e}");
        }
        assert!(parse(&format!("{base}[limits]\nlogin_per_day = \"1/60s\"\n")).is_err(), "unknown keys are refused");
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let k = OperatorKey { id: "k".into(), secret: "ab".repeat(32), roles: BTreeSet::new() };
        assert!(!format!("{k:?}").contains("abab"));
    }
}
