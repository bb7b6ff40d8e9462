//! `geo-router status`: the routing table as operators read it, per shard the leader, its term
//! and region, per node its health, ejections and why it last left rotation, and the last route
//! changes with how long each failover took. Served as JSON at `/georouter.v1.Admin/Status` on
//! the router's port (HTTP/2, any request method), so it needs no extra listener. It names
//! nodes, addresses and leaders, so like the nodes' routing feed it answers only callers that
//! present the cluster's member token in `x-cluster-auth` (compared in constant time).

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;

use serde_json::json;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use crate::health::Active;
use crate::router::Router;

/// The status as JSON.
pub fn snapshot(router: &Router) -> serde_json::Value {
    let now = Instant::now();
    let inner = &router.inner;
    let table = inner.table.read().expect("table");
    let health = inner.health.lock().expect("health");
    let shards: Vec<_> = table
        .shards
        .iter()
        .map(|(s, r)| {
            json!({
                "shard": s,
                "term": r.term,
                "leader": r.leader,
                "leader_region": r.leader.and_then(|l| table.members.get(&l)).map(|m| m.region.clone()),
                "voters": r.voters,
            })
        })
        .collect();
    let nodes: Vec<_> = table
        .members
        .iter()
        .map(|(id, m)| {
            let h = health.get(id).cloned().unwrap_or_default();
            json!({
                "node": id,
                "api_addr": m.api_addr,
                "region": m.region,
                "in_rotation": h.usable(now),
                "health_stream": match h.active() { Active::Unknown => "unknown", Active::Serving(_) => "serving", Active::NotServing => "not serving" },
                "ejections": h.ejections,
                "ejected_for_ms": h.ejected_until().map(|t| t.saturating_duration_since(now).as_millis() as u64),
                "last_reason": h.last_reason,
            })
        })
        .collect();
    let failovers: Vec<_> = inner
        .failovers
        .lock()
        .expect("failovers")
        .iter()
        .rev()
        .map(|f| {
            json!({
                "shard": f.shard,
                "from": f.from,
                "to": f.to,
                "ago_ms": now.saturating_duration_since(f.at).as_millis() as u64,
                "took_ms": f.took.map(|d| d.as_millis() as u64),
            })
        })
        .collect();
    json!({
        "region": inner.region,
        "uptime_ms": now.saturating_duration_since(inner.started).as_millis() as u64,
        "shards": shards,
        "nodes": nodes,
        "failovers": failovers,
    })
}

/// Serves [`snapshot`].
#[derive(Clone)]
pub struct AdminService {
    router: Router,
}

impl AdminService {
    /// The admin service of `router`.
    pub fn new(router: Router) -> Self {
        Self { router }
    }
}

impl NamedService for AdminService {
    const NAME: &'static str = "georouter.v1.Admin";
}

impl Service<http::Request<Body>> for AdminService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        use subtle::ConstantTimeEq;
        let presented = req.headers().get(crate::router::CLUSTER_AUTH_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        if !bool::from(presented.ct_eq(self.router.inner.token.as_bytes())) {
            let refused = crate::proxy::refusal(
                tonic::Code::Unauthenticated,
                "CREDENTIALS_MISSING",
                "the router's status is for the cluster's operators: present the cluster key",
            );
            return std::future::ready(Ok(refused.into_http()));
        }
        let text = serde_json::to_string_pretty(&snapshot(&self.router)).expect("JSON");
        let resp = http::Response::builder()
            .header("content-type", "application/json")
            .body(Body::new(http_body_util::Full::new(bytes::Bytes::from(text)).map_err(|never| match never {})))
            .expect("a valid response");
        std::future::ready(Ok(resp))
    }
}

use http_body_util::BodyExt as _;
