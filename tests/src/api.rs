//! A wallet API cluster for end-to-end tests: three `walletd` processes serving
//! `casino.wallet.v1` with operator keys and player tokens in real Redis, and helpers to drive it.

// Amounts are written as euros_cents: 100_00 is 100.00 EUR.
#![allow(clippy::inconsistent_digit_grouping)]

use std::time::Duration;

use session_store::{Keyring, RedisBackend, SessionConfig, SessionStore, SystemClock};
use tonic::transport::Channel;
use tonic::{Code, Status};
use wallet_api::api::auth::Rpc;
use wallet_api::api::client::{Credentials, connect};
use wallet_api::api::errors::reason_of;
use wallet_api::api::pb::{self, wallet_client::WalletClient};

use crate::{Walletd, free_port, walletctl_bin};

pub const SHARDS: u32 = 2;
pub const T: Duration = Duration::from_secs(10);
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct Cluster {
    pub secrets: Vec<String>,
    pub nodes: Vec<Walletd>,
    pub api: Vec<String>,
    pub raft: Vec<String>,
    pub dir: tempfile::TempDir,
    pub game: Credentials,
    pub cashier: Credentials,
    pub audit: Credentials,
    /// An operator key with the `session` role (the login front-end's).
    pub session: Credentials,
    pub sessions: SessionStore<RedisBackend>,
    /// The session signing key (hex), to forge tokens in tests.
    pub session_key: String,
}

pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

pub fn op(id: &str, secret: &str) -> Credentials {
    Credentials::Operator { key_id: id.into(), secret: hex::decode(secret).unwrap() }
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with_session_settings("").await
    }

    /// Like [`Cluster::start`], with extra lines for the session key file (its `[limits]`).
    pub async fn start_with_session_settings(settings: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secrets: Vec<String> = (0..4).map(|_| random_hex(32)).collect();
        let keys = format!(
            "[[operator]]\nid = \"game\"\nsecret = \"{}\"\nroles = [\"game\"]\n\n\
             [[operator]]\nid = \"cashier\"\nsecret = \"{}\"\nroles = [\"cashier\"]\n\n\
             [[operator]]\nid = \"audit\"\nsecret = \"{}\"\nroles = [\"audit\"]\n\n\
             [[operator]]\nid = \"login\"\nsecret = \"{}\"\nroles = [\"session\"]\n",
            secrets[0], secrets[1], secrets[2], secrets[3]
        );
        let keys_path = dir.path().join("operators.toml");
        std::fs::write(&keys_path, keys).unwrap();
        // A prefix of its own, so concurrent test runs never share sessions.
        let prefix = format!("t40-{}", random_hex(6));
        let session_key = random_hex(32);
        let session_path = dir.path().join("session-key.toml");
        std::fs::write(
            &session_path,
            format!("kid = \"k1\"\nkey = \"{session_key}\"\nprefix = \"{prefix}\"\n{settings}\n"),
        )
        .unwrap();

        let raft: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let api: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        // Each member with its wallet API address, so NOT_LEADER can name where to go.
        let peers: Vec<(u64, String)> =
            raft.iter().zip(&api).enumerate().map(|(i, (a, w))| (i as u64 + 1, format!("{a},api={w}"))).collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let extra = vec![
                "--api-listen".to_string(),
                api[i].clone(),
                "--operator-keys".into(),
                keys_path.display().to_string(),
                "--redis-url".into(),
                redis_url(),
                "--session-key".into(),
                session_path.display().to_string(),
                "--rtt-ms".into(),
                "5".into(),
            ];
            let id = i as u64 + 1;
            nodes.push(Walletd::start_with(
                id,
                &raft[i],
                &dir.path().join(format!("n{id}")),
                SHARDS,
                &peers,
                i == 0,
                &extra,
            ));
        }
        let backend = RedisBackend::connect(&redis_url(), &prefix, Duration::from_secs(2)).await.expect("redis");
        let key: [u8; 32] = hex::decode(&session_key).unwrap().try_into().unwrap();
        let sessions = SessionStore::new(
            backend,
            Keyring::new("k1", key).unwrap(),
            SessionConfig::default(),
            std::sync::Arc::new(SystemClock),
        );
        let c = Cluster {
            secrets: secrets.clone(),
            nodes,
            api,
            raft,
            dir,
            game: op("game", &secrets[0]),
            cashier: op("cashier", &secrets[1]),
            audit: op("audit", &secrets[2]),
            session: op("login", &secrets[3]),
            sessions,
            session_key,
        };
        c.wait_serving().await;
        c
    }

    pub async fn client(&self, i: usize) -> WalletClient<Channel> {
        connect(&self.api[i]).await.expect("connect to the wallet API")
    }

    /// Waits until every node's health service says SERVING (every shard has a leader).
    pub async fn wait_serving(&self) {
        for addr in &self.api {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(ch) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
                    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                    let req = tonic_health::pb::HealthCheckRequest { service: "casino.wallet.v1.Wallet".into() };
                    if let Ok(r) = h.check(req).await
                        && r.into_inner().status
                            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                    {
                        break;
                    }
                }
                assert!(std::time::Instant::now() < deadline, "{addr} never became healthy");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub fn code_reason(r: Result<impl Sized, Status>) -> (Code, String) {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(s) => (s.code(), reason_of(&s).unwrap_or_else(|| format!("<no ErrorInfo: {}>", s.message()))),
    }
}

pub async fn open_and_fund(c: &mut WalletClient<Channel>, cashier: &Credentials, player: &str, minor: i64) {
    let open = pb::OpenWalletRequest {
        idempotency_key: format!("open-{player}"),
        player_id: player.into(),
        currency: "EUR".into(),
    };
    c.open_wallet(cashier.request(Rpc::OpenWallet, open, T)).await.expect("open");
    let dep = pb::DepositRequest {
        idempotency_key: format!("dep-{player}"),
        player_id: player.into(),
        currency: "EUR".into(),
        amount: minor,
    };
    c.deposit(cashier.request(Rpc::Deposit, dep, T)).await.expect("deposit");
}

pub async fn available(c: &mut WalletClient<Channel>, who: &Credentials, player: &str) -> i64 {
    let m =
        pb::GetBalanceRequest { player_id: player.into(), currency: "EUR".into(), consistency: 0, max_staleness_ms: 0 };
    c.get_balance(who.request(Rpc::GetBalance, m, T)).await.expect("balance").into_inner().balance.unwrap().available
}

/// Two players that live in the same shard, for transfers.
pub fn same_shard_pair(prefix: &str) -> (String, String) {
    let shard = |p: &str| ledger_core::shard_for_player(&ledger_core::PlayerId::new(p).unwrap(), SHARDS).0;
    let a = format!("{prefix}-a");
    let b = (0..).map(|i| format!("{prefix}-b{i}")).find(|b| shard(b) == shard(&a)).unwrap();
    (a, b)
}

/// The shard leader's node index, from the node API's status.
pub async fn leader_of(cl: &Cluster, shard: u32) -> usize {
    let client = raft_ledger::client::LedgerClient::connect(cl.raft.clone(), crate::client_options()).await.unwrap();
    for _ in 0..100 {
        for (i, addr) in cl.raft.iter().enumerate() {
            if !cl.nodes[i].is_running() {
                continue;
            }
            if let Ok(st) = client.status(addr).await
                && let Some(s) = st.shards.iter().find(|s| s.shard == shard)
                && s.state == raft_ledger::api::ReplicaRole::Leader
            {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader for shard {shard}");
}

/// Runs walletctl with the given operator key; returns (exit code, stdout, stderr).
pub fn ctl(cl: &Cluster, key: usize, args: &[&str]) -> (i32, String, String) {
    ctl_at(cl, 1, key, args)
}

/// Runs walletctl against node `node`'s wallet API with operator key `key` (0 game, 1 cashier,
/// 2 audit, 3 login: the session role); returns (exit code, stdout, stderr).
pub fn ctl_at(cl: &Cluster, node: usize, key: usize, args: &[&str]) -> (i32, String, String) {
    let ids = ["game", "cashier", "audit", "login"];
    let out = std::process::Command::new(walletctl_bin())
        .args(args)
        .env("WALLET_ADDR", &cl.api[node])
        .env("WALLET_KEY_ID", ids[key])
        .env("WALLET_KEY_SECRET", &cl.secrets[key])
        .env_remove("WALLET_TOKEN")
        .output()
        .expect("run walletctl");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// Runs `walletd client` (the node API) against the cluster, with its key; returns (exit code,
/// stdout, stderr).
pub fn walletd_client(cl: &Cluster, args: &[&str]) -> (i32, String, String) {
    let out = crate::walletd_command()
        .arg("client")
        .args(args)
        .env("WALLETD_NODES", cl.raft.join(","))
        .output()
        .expect("run walletd client");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// The health of `service` on node `node`'s wallet API: SERVING or not.
pub async fn serving(cl: &Cluster, node: usize, service: &str) -> bool {
    let Ok(ch) = Channel::from_shared(format!("http://{}", cl.api[node])).unwrap().connect().await else {
        return false;
    };
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    h.check(req).await.is_ok_and(|r| r.into_inner().status == serving)
}
