//! The wallet service as the router serves it: every call to `/casino.wallet.v1.Wallet/*` is
//! read (bounded), routed by its shard, and forwarded byte for byte with the caller's metadata
//! (credentials, idempotency key, deadline) to the node the routing decision names.
//!
//! Retries: a call whose attempt failed without an answer from the ledger (transport error,
//! reset, `UNAVAILABLE`) is tried on the next candidate while the caller's deadline allows and
//! the retry budget has room. This is safe because every mutation carries its idempotency key
//! (a node refuses one without), so the ledger applies it at most once however often it
//! arrives; reads change nothing. An answer that carries a message is passed on as it streams
//! and never retried: only trailers-only answers (`UNAVAILABLE`) and attempts without any answer
//! are.
//! The deadline is the caller's (`grpc-timeout`, default 10 s, at most 60 s): each attempt
//! gets what is left of it, never more.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use ledger_core::{NodeId, PlayerId};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::Service;

use crate::route::{Need, decide};
use crate::router::Router;
use crate::wire::{classify, unframe};

/// `ErrorInfo` domain of every wallet refusal, the router's included.
const DOMAIN: &str = "wallet.casino";
/// Largest request body forwarded: the wallet's message limit plus the gRPC frame header.
const BODY_BYTES_MAX: usize = 64 * 1024 + 5;
/// Deadline of a call that states none, and the longest one honoured (as walletd).
const DEADLINE_DEFAULT_MS: u64 = 10_000;
const DEADLINE_MAX_MS: u64 = 60_000;
/// Most attempts of one call.
const ATTEMPTS_MAX: u32 = 6;
/// Pause between rounds of attempts when every candidate failed, times the round.
const BACKOFF_MS: u64 = 25;
/// Longest a call waits for a shard without a usable leader to elect one (an election at
/// 150 ms RTT timing takes up to about 2 s).
const LEADER_WAIT_MAX_MS: u64 = 2_500;

/// The router's own refusal, with `ErrorInfo` so clients branch on `reason`.
pub(crate) fn refusal(code: Code, reason: &str, message: &str) -> Status {
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, DOMAIN, []))
}

fn respond(status: Status) -> http::Response<Body> {
    status.into_http()
}

/// A service the router forwards: its name, and whether its calls route by shard.
pub trait Forwarded: Clone + Send + Sync + 'static {
    /// The fully qualified gRPC service name.
    const NAME: &'static str;
    /// True when a call goes to its shard's leader (wallet calls); false when any usable node
    /// takes it, this region's first (session calls: every node shares the session store).
    const BY_SHARD: bool;
}

/// `casino.wallet.v1.Wallet`: routed by shard.
#[derive(Clone)]
pub struct Wallet;

impl Forwarded for Wallet {
    const NAME: &'static str = crate::router::WALLET_SERVICE;
    const BY_SHARD: bool = true;
}

/// `casino.session.v1.Sessions`: any node, with the wallet calls' deadline, retries and
/// byte-for-byte forwarding.
#[derive(Clone)]
pub struct Sessions;

impl Forwarded for Sessions {
    const NAME: &'static str = crate::router::SESSION_SERVICE;
    const BY_SHARD: bool = false;
}

/// The tower service tonic mounts under a forwarded service's name.
#[derive(Clone)]
pub struct Proxy<S> {
    router: Router,
    service: std::marker::PhantomData<S>,
}

/// The wallet service's proxy.
pub type WalletProxy = Proxy<Wallet>;
/// The session service's proxy.
pub type SessionProxy = Proxy<Sessions>;

impl<S> Proxy<S> {
    /// The proxy for `router`.
    pub fn new(router: Router) -> Self {
        Self { router, service: std::marker::PhantomData }
    }
}

impl<S: Forwarded> NamedService for Proxy<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: Forwarded> Service<http::Request<Body>> for Proxy<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let router = self.router.clone();
        Box::pin(async move { Ok(handle(router, req, S::BY_SHARD).await) })
    }
}

/// Parses `grpc-timeout` (`<digits><unit>`), capped.
fn deadline_of(headers: &http::HeaderMap) -> Duration {
    let parsed = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(|v| {
        let (n, unit) = v.split_at(v.len().checked_sub(1)?);
        let n: u64 = n.parse().ok()?;
        Some(match unit {
            "H" => Duration::from_secs(n.saturating_mul(3600)),
            "M" => Duration::from_secs(n.saturating_mul(60)),
            "S" => Duration::from_secs(n),
            "m" => Duration::from_millis(n),
            "u" => Duration::from_micros(n),
            "n" => Duration::from_nanos(n),
            _ => return None,
        })
    });
    parsed.unwrap_or(Duration::from_millis(DEADLINE_DEFAULT_MS)).min(Duration::from_millis(DEADLINE_MAX_MS))
}

/// How an attempt ended, for the retry decision.
enum Attempt {
    /// A definite answer (success or a refusal by the ledger or its API): passed to the caller.
    Answer(http::Response<Body>),
    /// No answer that settles the call: try elsewhere if time and budget allow.
    Retry { why: String, answer: Option<http::Response<Body>> },
    /// The node the router believed to lead refused as not the leader (nothing was done) and
    /// named the leader, which the table now holds: try again at once, no failure counted.
    Redirect { why: String },
}

/// Asks a node not to forward: set when the router sends a call to the node it believes leads
/// the call's shard, so a stale belief comes back as `NOT_LEADER` with the leader's name
/// instead of costing a forwarding hop (walletd's `x-wallet-no-forward`).
const NO_FORWARD_HEADER: &str = "x-wallet-no-forward";

/// Routes one call. `by_shard`: a wallet call, routed by its shard; otherwise (a session call)
/// there is no shard and any node takes it.
async fn handle(router: Router, req: http::Request<Body>, by_shard: bool) -> http::Response<Body> {
    let Ok(_permit) = router.inner.in_flight.clone().try_acquire_owned() else {
        return respond(refusal(Code::ResourceExhausted, "ROUTER_OVERLOADED", "the router is overloaded; retry later"));
    };
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let deadline = started + deadline_of(&parts.headers);
    let body = match Limited::new(body, BODY_BYTES_MAX).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return respond(refusal(
                Code::OutOfRange,
                "MESSAGE_TOO_LARGE",
                "the request is larger than the 64 KiB the wallet API accepts",
            ));
        }
    };
    let method = parts.uri.path().rsplit('/').next().unwrap_or_default().to_string();
    let call = if by_shard { unframe(&body).and_then(|m| classify(&method, m)) } else { None };
    let shard = call.as_ref().and_then(|c| match (&c.player, c.shard) {
        (Some(p), _) => PlayerId::new(p).ok().and_then(|p| router.inner.map.shard_for(&p).ok()).map(|s| s.0),
        (None, s) => s,
    });
    let need = if call.as_ref().is_some_and(|c| c.stale_ok) { Need::Stale } else { Need::Leader };
    router.inner.budget.lock().expect("budget").deposit();

    let mut last: Option<(NodeId, String, Option<http::Response<Body>>)> = None;
    // A redirect (a NOT_LEADER that named the leader) is not a failure: the next attempt
    // after one does not draw on the retry budget.
    let mut redirected = false;
    for attempt in 0..ATTEMPTS_MAX {
        if attempt > 0 && !std::mem::take(&mut redirected) && !router.inner.budget.lock().expect("budget").withdraw() {
            tracing::debug!(method, "retry budget exhausted");
            break;
        }
        // A call for a shard in an election waits for the new leader (leaving part of the
        // deadline for the call itself) rather than hanging in a follower's forward to the old
        // one; without a leader by then it goes to a follower as before.
        if let (Need::Leader, Some(s)) = (need, shard)
            && !router.leader_alive(s)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.saturating_sub(left / 3).min(Duration::from_millis(LEADER_WAIT_MAX_MS));
            router.wait_for_leader(s, Instant::now() + wait).await;
        }
        let Some(target) = pick(&router, shard, need, last.as_ref().map(|l| l.0)) else {
            return respond(refusal(
                Code::Unavailable,
                "NO_HEALTHY_REPLICA",
                "no node of the cluster can take the call now; retry",
            ));
        };
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let left = deadline - now;
        let believed_leader = shard.and_then(|s| router.inner.table.read().expect("table").shards.get(&s)?.leader);
        let to_leader = believed_leader == Some(target) && !parts.headers.contains_key(NO_FORWARD_HEADER);
        match forward(&router, target, &parts, body.clone(), left, shard.filter(|_| to_leader)).await {
            Attempt::Answer(resp) => {
                router.record(target, None);
                return resp;
            }
            Attempt::Redirect { why } => {
                tracing::info!(method, node = target, "{why}");
                router.record(target, None);
                redirected = true;
                continue;
            }
            Attempt::Retry { why, answer } => {
                tracing::debug!(method, node = target, attempt, "attempt failed: {why}");
                router.record(target, Some(&why));
                last = Some((target, why, answer));
            }
        }
        // Whole rounds of candidates failing: give the cluster a moment (an election).
        let pause = Duration::from_millis(BACKOFF_MS * u64::from(attempt + 1));
        if Instant::now() + pause >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    match last {
        Some((_, _, Some(answer))) => answer,
        Some((_, why, None)) if Instant::now() >= deadline => respond(refusal(
            Code::DeadlineExceeded,
            "OUTCOME_UNKNOWN",
            &format!(
                "the deadline passed before a node answered ({why}); the call may have been applied: retry with the same idempotency key"
            ),
        )),
        Some((_, why, None)) => respond(refusal(
            Code::Unavailable,
            "NO_HEALTHY_REPLICA",
            &format!("no node answered ({why}); the call may have been applied: retry with the same idempotency key"),
        )),
        None => respond(refusal(
            Code::DeadlineExceeded,
            "OUTCOME_UNKNOWN",
            "the deadline passed before the call could be sent",
        )),
    }
}

/// The node for the next attempt: the decision's best candidate, or the next one after the
/// node that just failed.
fn pick(router: &Router, shard: Option<u32>, need: Need, failed: Option<NodeId>) -> Option<NodeId> {
    let table = router.inner.table.read().expect("table");
    let candidates = match shard.and_then(|s| decide(&table, s, need, &router.inner.region, |n| router.usable(n))) {
        Some(d) => d.candidates,
        // No shard to route by (a message a node must refuse, or an unknown region): any node
        // answers it as well as another; ours first.
        None => {
            let mut all: Vec<NodeId> = table.members.keys().copied().collect();
            all.sort_by_key(|id| (!router.usable(*id), table.members[id].region != router.inner.region, *id));
            all
        }
    };
    match failed {
        Some(f) if candidates.len() > 1 => {
            let at = candidates.iter().position(|c| *c == f).map_or(0, |i| i + 1);
            Some(candidates[at % candidates.len()])
        }
        _ => candidates.first().copied(),
    }
}

/// Codes that mean the call did not reach a decision in the ledger, so another node may take it.
fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable)
}

/// One attempt at `node`. `leads_shard`: the shard `node` is believed to lead, when the router
/// asks it not to forward (and so may learn from its `NOT_LEADER`).
async fn forward(
    router: &Router,
    node: NodeId,
    parts: &http::request::Parts,
    body: Bytes,
    left: Duration,
    leads_shard: Option<u32>,
) -> Attempt {
    let addr = match router.inner.table.read().expect("table").members.get(&node) {
        Some(m) => m.api_addr.clone(),
        None => return Attempt::Retry { why: format!("node {node} is unknown"), answer: None },
    };
    let channel = match router.channel(&addr) {
        Ok(c) => c,
        Err(e) => return Attempt::Retry { why: e, answer: None },
    };
    let mut req = http::Request::builder().method(parts.method.clone()).uri(parts.uri.path()).version(parts.version);
    for (k, v) in &parts.headers {
        if k != "grpc-timeout" && k != http::header::HOST {
            req = req.header(k, v);
        }
    }
    req = req.header("grpc-timeout", format!("{}m", left.as_millis().max(1)));
    if leads_shard.is_some() {
        req = req.header(NO_FORWARD_HEADER, "1");
    }
    let req = req.body(Body::new(Full::new(body).map_err(|never| match never {}))).expect("a valid request");
    let mut channel = channel;
    let sent = tokio::time::timeout(left, async {
        std::future::poll_fn(|cx| Service::poll_ready(&mut channel, cx)).await?;
        channel.call(req).await
    })
    .await;
    let resp = match sent {
        Err(_) => return Attempt::Retry { why: "no answer before the deadline".into(), answer: None },
        Ok(Err(e)) => return Attempt::Retry { why: format!("transport: {e}"), answer: None },
        Ok(Ok(r)) => r,
    };
    // A trailers-only answer carries its status in the headers.
    if let (Some(shard), Some(leader)) = (leads_shard, not_leader_hint(resp.headers()))
        && router.learn_hint(shard, node, leader)
    {
        return Attempt::Redirect { why: format!("node {node} answered NOT_LEADER naming node {leader}") };
    }
    if let Some(code) = status_of(resp.headers()) {
        return if retryable(code) {
            // An answer to a call the router asked not to forward (a NOT_LEADER without a
            // leader to name, say) is the router's business, not the caller's: it never
            // reaches the caller, whose call did not ask for it and must not learn node
            // addresses from it.
            let answer = leads_shard.is_none().then(|| resp.map(Body::new));
            Attempt::Retry { why: format!("node answered {code:?}"), answer }
        } else {
            Attempt::Answer(resp.map(Body::new))
        };
    }
    // No status in the headers: the node is answering with a message (and its status will
    // follow in the trailers). Answers that refuse or fail come trailers-only from walletd, so
    // this one is passed through as it streams, unread, unary or not.
    Attempt::Answer(resp.map(Body::new))
}

/// The leader a trailers-only `NOT_LEADER` answer names (`leader_id` in its `ErrorInfo`).
fn not_leader_hint(headers: &http::HeaderMap) -> Option<NodeId> {
    let status = Status::from_header_map(headers)?;
    let details = status.get_error_details();
    let info = details.error_info()?;
    if info.reason != "NOT_LEADER" {
        return None;
    }
    info.metadata.get("leader_id")?.parse().ok()
}

fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_read_capped_and_defaulted() {
        let mut h = http::HeaderMap::new();
        assert_eq!(deadline_of(&h), Duration::from_secs(10));
        h.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(deadline_of(&h), Duration::from_millis(250));
        h.insert("grpc-timeout", "2H".parse().unwrap());
        assert_eq!(deadline_of(&h), Duration::from_secs(60));
        h.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(deadline_of(&h), Duration::from_secs(10));
    }
}
