//! The geo-router: one address for casino front-ends, in front of every region. It serves the
//! same `casino.wallet.v1.Wallet` service as walletd and sends each call straight to its
//! shard's leader (and `casino.session.v1.Sessions` to any usable node, this region's first) (or, for a bounded-stale read, to a replica in its own region), learned from
//! every node's `casino.wallet.v1.Routing/WatchLeaders` stream, with active (health Watch,
//! HTTP/2 keepalive) and passive (failed calls) health, bounded retries on the idempotency key,
//! and the caller's deadline.
//!
//! Layers: `wire`, `route`, `health` and `budget` are pure (time is an argument) and unit-tested
//! alone; `router` holds the state and its feeds; `proxy` and `status` serve calls; `serve`
//! puts them on a port. It depends on `ledger-core` (the shard map and topology), never on the
//! node runtime.

pub mod budget;
pub mod health;
pub mod proxy;
pub mod route;
pub mod router;
pub mod status;
pub mod wire;

pub use router::{Router, RouterConfig};

/// Code generated from `proto/casino/wallet/v1/routing.proto` (the client side).
#[allow(unreachable_pub, missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("casino.wallet.v1");
}

/// The member token of a cluster whose secret is `secret_hex` (the cluster key file's text):
/// what nodes take in `x-cluster-auth`.
pub fn member_token(secret_hex: &str) -> Result<String, String> {
    let secret = hex::decode(secret_hex.trim()).map_err(|_| "the cluster secret must be hex digits".to_string())?;
    if secret.len() < 32 {
        return Err("the cluster secret must be at least 32 bytes (64 hex digits)".into());
    }
    Ok(ledger_core::member_token(&secret))
}

/// Serves the wallet service (routed), health and the admin status on `listener` until `stop`
/// turns true; starts the router's feeds.
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    router.start_feeds(stop.clone());
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    reporter.set_service_status(router::WALLET_SERVICE, tonic_health::ServingStatus::Serving).await;
    reporter.set_service_status(router::SESSION_SERVICE, tonic_health::ServingStatus::Serving).await;
    let mut stop_serving = stop.clone();
    tokio::spawn(async move {
        let _ = stop_serving.wait_for(|s| *s).await;
        reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        reporter.set_service_status(router::WALLET_SERVICE, tonic_health::ServingStatus::NotServing).await;
        reporter.set_service_status(router::SESSION_SERVICE, tonic_health::ServingStatus::NotServing).await;
    });
    let mut stop = stop;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_service(proxy::WalletProxy::new(router.clone()))
        .add_service(proxy::SessionProxy::new(router.clone()))
        .add_service(status::AdminService::new(router))
        .add_service(health)
        // TCP_NODELAY on every accepted connection: without it small gRPC answers wait for
        // Nagle's algorithm (tens of ms behind a delayed ACK), and a listener passed in does not
        // get tonic's own setting.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
        .await
        .map_err(|e| e.to_string())
}
