//! The network, injected: real TCP sockets in production, turmoil's simulated network in the
//! simulator. Channels and listeners of both kinds carry the same tonic services.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use super::member::ClusterKey;

/// A channel to a node that proves cluster membership on every call (see [`super::member`]).
pub type NodeChannel = InterceptedService<Channel, ClusterKey>;

/// Which network a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// Operating-system TCP.
    Tcp,
    /// turmoil's simulated TCP (only inside a turmoil simulation).
    #[cfg(feature = "turmoil")]
    Turmoil,
}

/// How long to wait for a TCP connection to a peer before treating it as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl Net {
    /// A lazily connecting channel to the node at `addr` (`host:port`) whose calls carry `key`.
    /// It reconnects by itself after failures, and all shards share it.
    pub(crate) fn node_channel(&self, addr: &str, key: &ClusterKey) -> Result<NodeChannel, tonic::transport::Error> {
        Ok(InterceptedService::new(self.channel(addr)?, key.clone()))
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        match self {
            Net::Tcp => Ok(endpoint.connect_lazy()),
            #[cfg(feature = "turmoil")]
            Net::Turmoil => Ok(endpoint.connect_with_connector_lazy(tower::service_fn(|uri: http::Uri| async move {
                let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
                let stream = turmoil::net::TcpStream::connect(authority).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
            }))),
        }
    }
}

/// A bound listener of either network.
pub enum Listener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A turmoil listener.
    #[cfg(feature = "turmoil")]
    Turmoil(turmoil::net::TcpListener),
}

impl Listener {
    /// Binds a TCP listener; port 0 picks a free port.
    pub async fn bind_tcp(addr: &str) -> io::Result<Self> {
        Ok(Self::Tcp(tokio::net::TcpListener::bind(addr).await?))
    }

    /// The address peers should dial.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr(),
            #[cfg(feature = "turmoil")]
            Self::Turmoil(l) => l.local_addr(),
        }
    }

    pub(crate) fn incoming(self) -> Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> {
        match self {
            Self::Tcp(l) => Box::pin(futures_util::stream::unfold(l, |l| async move {
                let next = l.accept().await.map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Conn::Tcp(s)
                });
                Some((next, l))
            })),
            #[cfg(feature = "turmoil")]
            Self::Turmoil(l) => Box::pin(futures_util::stream::unfold(l, |l| async move {
                Some((l.accept().await.map(|(s, _)| Conn::Turmoil(s)), l))
            })),
        }
    }
}

/// An accepted connection of either network.
pub(crate) enum Conn {
    Tcp(tokio::net::TcpStream),
    #[cfg(feature = "turmoil")]
    Turmoil(turmoil::net::TcpStream),
}

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "turmoil")]
            Conn::Turmoil(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "turmoil")]
            Conn::Turmoil(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "turmoil")]
            Conn::Turmoil(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "turmoil")]
            Conn::Turmoil(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Streams one connection may have open at once. A client that cancels calls (deadlines during a
/// failover) can leave at most this many reset before the server accepted them.
pub const HTTP2_STREAMS_MAX: u32 = 1024;
/// Streams a client may reset before the server accepted them, before the connection is torn
/// down. h2's default (20) is meant against "rapid reset" floods, but a client whose calls all
/// time out while a node is paused resets every one of them, and the GOAWAY that follows fails
/// every other call on the connection. Deadlines and retries can reset several rounds of
/// in-flight calls during one pause, so the bound is a few times the stream limit: still a
/// bound on memory, never reached by cancellation under failover.
pub const HTTP2_PENDING_RESETS_MAX: usize = 8 * HTTP2_STREAMS_MAX as usize;

/// The HTTP/2 settings every gRPC server of a node uses (the node port and the wallet API).
/// Flow-control windows stay hyper's (1 MiB per stream and per connection): a wallet call is a
/// few hundred bytes, and adaptive windows measured no faster while connections were torn down
/// under open-loop bursts (BENCHMARKS.md, "HTTP/2 windows").
pub fn http2<L>(server: tonic::transport::Server<L>) -> tonic::transport::Server<L> {
    server
        .tcp_nodelay(true)
        .max_concurrent_streams(HTTP2_STREAMS_MAX)
        .http2_max_pending_accept_reset_streams(Some(HTTP2_PENDING_RESETS_MAX))
}
