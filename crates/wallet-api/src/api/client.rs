//! Client-side helpers of the wallet API: credentials that sign or authorize each request.
//! `walletctl`, the demo's load generator, the benchmark and the end-to-end tests use them.

use std::time::Duration;

use session_store::{Clock, SystemClock};

use prost::Message;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

use super::auth::{DEVICE_HEADER, KEY_HEADER, Rpc, SIG_HEADER, TS_HEADER, sign};
use super::pb::wallet_client::WalletClient;

/// How a client proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// An operator API key.
    Operator {
        /// Key id.
        key_id: String,
        /// Shared secret.
        secret: Vec<u8>,
    },
    /// A player's access token and the device it is bound to.
    Player {
        /// Access token from the session store.
        token: String,
        /// Device fingerprint the session was opened with.
        device: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Operator { key_id, .. } => write!(f, "Operator({key_id})"),
            Credentials::Player { .. } => f.write_str("Player(..)"),
        }
    }
}

impl Credentials {
    /// `msg` as a request for `rpc`, signed or carrying the token, with a deadline.
    pub fn request<M: Message>(&self, rpc: Rpc, msg: M, timeout: Duration) -> Request<M> {
        let body = msg.encode_to_vec();
        let mut req = Request::new(msg);
        req.set_timeout(timeout);
        let m = req.metadata_mut();
        match self {
            Credentials::Operator { key_id, secret } => {
                let ts = SystemClock.now_ms();
                let sig = sign(secret, &rpc.path(), ts, &body);
                m.insert(KEY_HEADER, key_id.parse().expect("key ids are ASCII"));
                m.insert(TS_HEADER, ts.to_string().parse().expect("digits"));
                m.insert(SIG_HEADER, sig.parse().expect("hex"));
            }
            Credentials::Player { token, device } => {
                if let Ok(v) = format!("Bearer {token}").parse() {
                    m.insert("authorization", v);
                }
                if let Ok(v) = device.parse() {
                    m.insert(DEVICE_HEADER, v);
                }
            }
        }
        req
    }
}

/// A channel to a wallet API address (`host:port` or a URL).
pub async fn connect(addr: &str) -> Result<WalletClient<Channel>, tonic::transport::Error> {
    let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let channel = Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(WalletClient::new(channel))
}

/// A fresh idempotency key from the OS CSPRNG: `prefix-` and 24 hex digits.
pub fn new_key(prefix: &str) -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("OS random source");
    format!("{prefix}-{}", hex::encode(b))
}
