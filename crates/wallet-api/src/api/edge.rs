//! The wallet API's HTTP edge, below tonic: what has to see the request's bytes as they
//! arrived, and the status line as it leaves.
//!
//! - **The request digest.** Operator signatures cover SHA-256 of the request message exactly
//!   as the client sent it, not of the server's re-encoding (which can differ in field order,
//!   default values and unknown fields). For the wallet service's calls (each request is one
//!   message, as is each of the session service's) this layer reads the request body, bounded by the API's size limit, hashes the
//!   message bytes, and hands the digest to the service through the request's extensions.
//!   Other services (health, reflection's bidirectional stream) pass through unread.
//! - **Plain status messages.** tonic percent-encodes `grpc-message` more eagerly than gRPC
//!   requires (every space), and some clients show it undecoded. The specification only asks
//!   for bytes outside printable ASCII and `%` to be encoded; this layer re-encodes to that, so
//!   a message written for people reads the same in every client.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use sha2::{Digest, Sha256};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::errors;

/// SHA-256 of the request message as received: what an operator signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestDigest(pub [u8; 32]);

/// gRPC frames a message with one byte (compressed or not) and a four-byte length.
const FRAME_HEADER_BYTES: usize = 5;
/// The path prefixes of the services whose calls are one request message each (the wallet's
/// and the session service's), whose request bodies this layer reads.
const READ_AHEAD_PATH_PREFIXES: [&str; 2] = ["/casino.wallet.v1.Wallet/", "/casino.session.v1.Sessions/"];

/// The digest of a request body holding one uncompressed gRPC message; `None` for anything
/// else (which tonic then refuses or decodes as it does).
pub fn message_digest(body: &[u8]) -> Option<RequestDigest> {
    let header = body.get(..FRAME_HEADER_BYTES)?;
    let len = u32::from_be_bytes(header[1..5].try_into().expect("four bytes")) as usize;
    let message = body.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len)?;
    (header[0] == 0 && body.len() == FRAME_HEADER_BYTES + len).then(|| RequestDigest(Sha256::digest(message).into()))
}

/// Re-encodes a `grpc-message` value so that only what gRPC requires is percent-encoded.
fn minimal_percent_encoding(value: &[u8]) -> Option<Vec<u8>> {
    let text = percent_encoding::percent_decode(value).decode_utf8().ok()?;
    let mut out = Vec::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    Some(out)
}

/// The layer; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLayer {
    /// Largest request message accepted, in bytes.
    pub message_bytes_max: usize,
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge { inner, message_bytes_max: self.message_bytes_max }
    }
}

/// The service the layer makes.
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    message_bytes_max: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Edge<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone waits for readiness next time; this call uses the instance that is ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.message_bytes_max + FRAME_HEADER_BYTES;
        // Only the wallet's own calls (each request is one message) are read ahead: reflection
        // is a bidirectional stream whose request body ends only when the client is done.
        if !READ_AHEAD_PATH_PREFIXES.iter().any(|p| request.uri().path().starts_with(p)) {
            return Box::pin(inner.call(request));
        }
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let bytes: Bytes = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    let status = errors::status(
                        Code::OutOfRange,
                        "MESSAGE_TOO_LARGE",
                        format!("a request may be at most {} bytes", limit - FRAME_HEADER_BYTES),
                        &[],
                    );
                    return Ok(status.into_http());
                }
                // The client went away or broke the stream mid-request; nothing was read.
                Err(_) => return Ok(Status::cancelled("the request body was not received").into_http()),
            };
            if let Some(digest) = message_digest(&bytes) {
                parts.extensions.insert(digest);
            }
            let mut response = inner.call(http::Request::from_parts(parts, Body::new(Full::new(bytes)))).await?;
            if let Some(v) = response.headers().get("grpc-message")
                && let Some(plain) = minimal_percent_encoding(v.as_bytes())
                && let Ok(value) = http::HeaderValue::from_bytes(&plain)
            {
                response.headers_mut().insert("grpc-message", value);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_covers_exactly_the_message_bytes_received() {
        let message = b"\x0a\x03abc\x12\x01x";
        let mut body = vec![0, 0, 0, 0, message.len() as u8];
        body.extend_from_slice(message);
        assert_eq!(message_digest(&body), Some(RequestDigest(Sha256::digest(message).into())));
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(message_digest(&compressed), None, "a compressed message is not what was signed");
        assert_eq!(message_digest(&body[..body.len() - 1]), None, "a short body");
        let mut two = body.clone();
        two.extend_from_slice(&body);
        assert_eq!(message_digest(&two), None, "two messages in a unary call");
    }

    #[test]
    fn status_messages_keep_only_the_encoding_grpc_requires() {
        let tonic_style = b"no%20decision%20before%20the%20deadline%3B%20retry";
        assert_eq!(minimal_percent_encoding(tonic_style).unwrap(), b"no decision before the deadline; retry");
        assert_eq!(minimal_percent_encoding(b"50%25%20off").unwrap(), b"50%25 off");
        assert_eq!(minimal_percent_encoding("caf\u{e9}".as_bytes()).unwrap(), b"caf%C3%A9");
    }
}
