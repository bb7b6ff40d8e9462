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
        self.request_at(&rpc.path(), msg, timeout)
    }

    /// `msg` as a request for the method at `path` (any service's, such as
    /// `/casino.session.v1.Sessions/CreateSession`), signed or carrying the token.
    pub fn request_at<M: Message>(&self, path: &str, msg: M, timeout: Duration) -> Request<M> {
        // prost encodes a message the same way every time, so these are the bytes tonic sends.
        let body = msg.encode_to_vec();
        let mut req = Request::new(msg);
        self.authorize(&mut req, path, &body, timeout);
        req
    }

    /// Already encoded request bytes for `rpc`, signed over exactly those bytes.
    pub fn raw_request(&self, rpc: Rpc, body: Vec<u8>, timeout: Duration) -> Request<Vec<u8>> {
        let mut req = Request::new(Vec::new());
        self.authorize(&mut req, &rpc.path(), &body, timeout);
        *req.get_mut() = body;
        req
    }

    fn authorize<T>(&self, req: &mut Request<T>, path: &str, body: &[u8], timeout: Duration) {
        req.set_timeout(timeout);
        let m = req.metadata_mut();
        match self {
            Credentials::Operator { key_id, secret } => {
                let ts = SystemClock.now_ms();
                let sig = sign(secret, path, ts, body);
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
    }
}

/// Carries request and response messages as the bytes they are, for calls whose messages are
/// built at run time (`walletctl call`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// A channel to a wallet API address (`host:port` or a URL), without a typed client on it.
pub async fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect()
        .await
}

/// A wallet client on a channel to a wallet API address (`host:port` or a URL).
pub async fn connect(addr: &str) -> Result<WalletClient<Channel>, tonic::transport::Error> {
    Ok(WalletClient::new(channel(addr).await?))
}

/// A fresh idempotency key from the OS CSPRNG: `prefix-` and 24 hex digits.
pub fn new_key(prefix: &str) -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("OS random source");
    format!("{prefix}-{}", hex::encode(b))
}
