//! The `casino.wallet.v1.Wallet` service on a ledger node, with gRPC health and reflection.
//!
//! Each call is authenticated, validated at the edge, then run on the local replica when it
//! leads the shard, or forwarded once to the leader otherwise (one hop: the leader runs it, it
//! never forwards again), within the caller's gRPC deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use ledger_core::{AccountRef, Command, Outcome};
use raft_ledger::api::{LedgerError, ReadConsistency};
use raft_ledger::client::{ClientError, ClientOptions, LedgerClient};
use raft_ledger::node::LedgerNode;
use tokio::sync::{OnceCell, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::auth::{Authenticator, Caller, Rpc};
use super::convert::{self, PROOF_LINKS_MAX, SCAN_MAX};
use super::edge::{EdgeLayer, RequestDigest};
use super::errors::{self, status};
use super::pb;
use super::pb::wallet_server::{Wallet, WalletServer};

/// Metadata a client sets to get `NOT_LEADER` with the leader's address instead of forwarding.
pub const NO_FORWARD_HEADER: &str = "x-wallet-no-forward";
/// Response metadata on a retried call whose original response is being returned.
pub const REPLAYED_HEADER: &str = "x-wallet-replayed";
/// Deadline of a call that sets none.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(10);
/// Longest deadline honoured; a longer one is cut to this.
pub const DEADLINE_MAX: Duration = Duration::from_secs(60);

struct Inner {
    node: LedgerNode,
    /// Where forwarded calls go; created on first use, once the local node serves.
    forward: OnceCell<LedgerClient>,
    seeds: Vec<String>,
    auth: Authenticator,
    draining: watch::Receiver<bool>,
}

/// The wallet service. Cheap to clone.
#[derive(Clone)]
pub struct WalletService {
    inner: Arc<Inner>,
}

/// Parses the `grpc-timeout` header (an integer and a unit: H, M, S, m, u, n).
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (n, unit) = value.split_at(value.len() - 1);
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
}

/// How much of the caller's deadline the service keeps back for its answer: without it the
/// transport's own timeout fires at the same instant and the caller gets a bare `CANCELLED`
/// instead of `OUTCOME_UNKNOWN`, which says what to do.
const DEADLINE_MARGIN_MAX: Duration = Duration::from_millis(50);

/// When the service must have answered: the caller's deadline (capped, default when absent),
/// less a margin of a tenth, at most 50 ms.
fn deadline_of<T>(req: &Request<T>) -> Instant {
    let wanted = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout)
        .unwrap_or(DEADLINE_DEFAULT)
        .min(DEADLINE_MAX);
    Instant::now() + wanted - (wanted / 10).min(DEADLINE_MARGIN_MAX)
}

fn client_status(e: ClientError) -> Status {
    match e {
        ClientError::Invalid(r) => errors::rejection(r, None),
        ClientError::Ledger(e) => errors::ledger(e),
        ClientError::Indeterminate(..) => errors::ledger(LedgerError::Timeout),
        ClientError::Node { message, .. } => errors::ledger(LedgerError::Unavailable(message)),
        // Our own node's key refused by a peer: a misconfigured cluster, the operator's to fix.
        ClientError::Unauthenticated(why) => {
            tracing::error!("a peer refused this node's cluster key: {why}");
            errors::ledger(LedgerError::Unavailable(why))
        }
    }
}

/// A decided command as the API answers it, and whether it is the replay of an earlier call.
fn answer(key: &str, shard: u32, outcome: Outcome) -> Result<(pb::TransactionResponse, bool), Status> {
    match outcome {
        Outcome::Applied(r) => Ok((convert::transaction(key, shard, &r), false)),
        Outcome::Duplicate(r) => Ok((convert::transaction(key, shard, &r), true)),
        Outcome::Rejected(r) | Outcome::AlreadyFailed(r) => Err(errors::rejection(r, None)),
        Outcome::Conflict => Err(errors::key_reused(key)),
    }
}

/// A single call's response; a replay says so in its metadata.
fn respond(msg: pb::TransactionResponse, replayed: bool) -> Response<pb::TransactionResponse> {
    let mut resp = Response::new(msg);
    if replayed {
        resp.metadata_mut().insert(REPLAYED_HEADER, "true".parse().expect("ascii"));
    }
    resp
}

/// How a mutating request becomes a command: what a single call and a batch item share.
struct Mutation<M> {
    build: fn(&M) -> Result<Command, Status>,
    owner: fn(&M) -> &str,
    key: fn(&M) -> &str,
}

/// Most items in one batch call (`PlaceBets`, `SettleWins`).
pub const BATCH_ITEMS_MAX: usize = 1000;

/// One batch item's answer: the single call's response, or its status flattened.
fn item_result(r: Result<(pb::TransactionResponse, bool), Status>) -> pb::BatchItemResult {
    use pb::batch_item_result::Result as Item;
    match r {
        Ok((msg, replayed)) => pb::BatchItemResult { result: Some(Item::Ok(msg)), replayed },
        Err(s) => {
            let info = tonic_types::StatusExt::get_details_error_info(&s);
            let (reason, metadata) = info.map(|i| (i.reason, i.metadata)).unwrap_or_default();
            let error =
                pb::BatchItemError { code: s.code() as i32, reason, message: s.message().to_string(), metadata };
            pb::BatchItemResult { result: Some(Item::Error(error)), replayed: false }
        }
    }
}

impl WalletService {
    /// A service on `node`. `seeds` are node addresses for forwarding (the local node's own
    /// address suffices: leaders are found from its hints). `draining` turns true at shutdown.
    pub fn new(node: LedgerNode, seeds: Vec<String>, auth: Authenticator, draining: watch::Receiver<bool>) -> Self {
        Self { inner: Arc::new(Inner { node, forward: OnceCell::new(), seeds, auth, draining }) }
    }

    async fn forwarder(&self) -> Result<&LedgerClient, Status> {
        self.inner
            .forward
            .get_or_try_init(|| async {
                let options = ClientOptions { deadline: Duration::from_secs(5), ..self.inner.node.client_options() };
                LedgerClient::connect(self.inner.seeds.clone(), options).await
            })
            .await
            .map_err(client_status)
    }

    fn check_draining(&self) -> Result<(), Status> {
        if *self.inner.draining.borrow() { Err(errors::shutting_down()) } else { Ok(()) }
    }

    async fn caller<M>(&self, req: &Request<M>, rpc: Rpc) -> Result<Caller, Status> {
        self.check_draining()?;
        let digest = req.extensions().get::<RequestDigest>().map(|d| &d.0);
        self.inner.auth.check(req.metadata(), req.remote_addr(), rpc, digest).await
    }

    /// Runs a command on its shard's leader before `deadline`.
    async fn run(&self, shard: u32, cmd: Command, deadline: Instant, forward: bool) -> Result<Outcome, Status> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.inner.node.submit(Some(shard), cmd.clone(), left).await {
            Err(LedgerError::NotLeader { .. }) if forward => {
                self.forwarder().await?.submit_by(shard, cmd, deadline).await.map_err(client_status)
            }
            other => other.map_err(errors::ledger),
        }
    }

    async fn mutate<M>(
        &self,
        req: Request<M>,
        rpc: Rpc,
        build: fn(&M) -> Result<Command, Status>,
        owner: fn(&M) -> &str,
        key: fn(&M) -> &str,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        let deadline = deadline_of(&req);
        let caller = self.caller(&req, rpc).await?;
        let forward = !req.metadata().contains_key(NO_FORWARD_HEADER);
        let msg = req.into_inner();
        let (resp, replayed) = self.decide(&caller, &Mutation { build, owner, key }, &msg, deadline, forward).await?;
        Ok(respond(resp, replayed))
    }

    /// One mutating request, checked and run on its shard's leader: a single call's whole work,
    /// and a batch item's.
    async fn decide<M>(
        &self,
        caller: &Caller,
        how: &Mutation<M>,
        m: &M,
        deadline: Instant,
        forward: bool,
    ) -> Result<(pb::TransactionResponse, bool), Status> {
        caller.must_own((how.owner)(m))?;
        let cmd = (how.build)(m)?;
        let shard = self.inner.node.route(None, &cmd).map_err(errors::ledger)?;
        let outcome = self.run(shard, cmd, deadline, forward).await?;
        answer((how.key)(m), shard, outcome)
    }

    /// A batch call: every item checked and run on its own, concurrently, so the node packs
    /// them into shared log entries per shard; one result per item, in the request's order.
    async fn batch<B, M>(
        &self,
        req: Request<B>,
        rpc: Rpc,
        items: fn(B) -> Vec<M>,
        field: &str,
        how: Mutation<M>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let deadline = deadline_of(&req);
        let caller = &self.caller(&req, rpc).await?;
        let forward = !req.metadata().contains_key(NO_FORWARD_HEADER);
        let items = items(req.into_inner());
        if items.is_empty() || items.len() > BATCH_ITEMS_MAX {
            return Err(errors::invalid_field(field, format!("a batch holds 1 to {BATCH_ITEMS_MAX} items")));
        }
        let results =
            futures_util::future::join_all(items.iter().map(|m| self.decide(caller, &how, m, deadline, forward))).await;
        Ok(Response::new(pb::BatchResponse { results: results.into_iter().map(item_result).collect() }))
    }

    fn shard_count(&self) -> u32 {
        self.inner.node.config().shards
    }

    /// The shard holding a player's wallets; an id naming a region the cluster lacks is refused.
    fn shard_of(&self, player: &ledger_core::PlayerId) -> Result<u32, Status> {
        self.inner.node.shard_map().shard_for(player).map(|s| s.0).map_err(|e| errors::ledger(e.into()))
    }

    /// The shard a list or watch reads, after checking the caller may read it.
    fn entries_scope(
        &self,
        caller: &Caller,
        player: &str,
        shard: u32,
    ) -> Result<(u32, Option<ledger_core::PlayerId>), Status> {
        if player.is_empty() {
            if !caller.is_operator() {
                return Err(status(Code::PermissionDenied, "NOT_YOUR_WALLET", "players must name themselves", &[]));
            }
            if shard >= self.shard_count() {
                return Err(errors::invalid_field("shard", format!("shard must be below {}", self.shard_count())));
            }
            return Ok((shard, None));
        }
        caller.must_own(player)?;
        let p = convert::player(player, "player_id")?;
        Ok((self.shard_of(&p)?, Some(p)))
    }

    /// Builds the tonic service with the API's message size limit.
    pub fn into_server(self) -> WalletServer<Self> {
        WalletServer::new(self).max_decoding_message_size(super::MESSAGE_BYTES_MAX).max_encoding_message_size(16 << 20)
    }
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<pb::LedgerEntry, Status>> + Send>>;

#[tonic::async_trait]
impl Wallet for WalletService {
    async fn open_wallet(
        &self,
        req: Request<pb::OpenWalletRequest>,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        self.mutate(req, Rpc::OpenWallet, convert::open, |m| &m.player_id, |m| &m.idempotency_key).await
    }

    async fn deposit(&self, req: Request<pb::DepositRequest>) -> Result<Response<pb::TransactionResponse>, Status> {
        self.mutate(req, Rpc::Deposit, convert::deposit, |m| &m.player_id, |m| &m.idempotency_key).await
    }

    async fn reserve_withdrawal(
        &self,
        req: Request<pb::ReserveWithdrawalRequest>,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        self.mutate(req, Rpc::ReserveWithdrawal, convert::reserve, |m| &m.player_id, |m| &m.idempotency_key).await
    }

    async fn commit_withdrawal(
        &self,
        req: Request<pb::CommitWithdrawalRequest>,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        self.mutate(req, Rpc::CommitWithdrawal, convert::commit, |m| &m.player_id, |m| &m.idempotency_key).await
    }

    async fn cancel_withdrawal(
        &self,
        req: Request<pb::CancelWithdrawalRequest>,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        self.mutate(req, Rpc::CancelWithdrawal, convert::cancel, |m| &m.player_id, |m| &m.idempotency_key).await
    }

    async fn place_bet(&self, req: Request<pb::PlaceBetRequest>) -> Result<Response<pb::TransactionResponse>, Status> {
        self.mutate(req, Rpc::PlaceBet, convert::bet, |m| &m.player_id, |m| &m.idempotency_key).await
    }

    async fn settle_win(
        &self,
        req: Request<pb::SettleWinRequest>,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        self.mutate(req, Rpc::SettleWin, convert::win, |m| &m.player_id, |m| &m.idempotency_key).await
    }

    async fn rollback_bet(
        &self,
        req: Request<pb::RollbackBetRequest>,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        self.mutate(req, Rpc::RollbackBet, convert::rollback, |m| &m.player_id, |m| &m.idempotency_key).await
    }

    async fn transfer(&self, req: Request<pb::TransferRequest>) -> Result<Response<pb::TransactionResponse>, Status> {
        self.mutate(req, Rpc::Transfer, convert::transfer, |m| &m.from_player_id, |m| &m.idempotency_key).await
    }

    async fn get_balance(
        &self,
        req: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let deadline = deadline_of(&req);
        let caller = self.caller(&req, Rpc::GetBalance).await?;
        let forward = !req.metadata().contains_key(NO_FORWARD_HEADER);
        let msg = req.into_inner();
        caller.must_own(&msg.player_id)?;
        let player = convert::player(&msg.player_id, "player_id")?;
        let currency = convert::currency(&msg.currency)?;
        let account = AccountRef::player(player.clone(), currency);
        let shard = self.shard_of(&player)?;
        let node = &self.inner.node;
        // A stale read is served here only if this node holds a replica that can bound its
        // staleness within what the caller accepts; otherwise it is read at the leader.
        let local = if msg.consistency == pb::ReadConsistency::Stale as i32 {
            let bound_ms = staleness_bound_ms(msg.max_staleness_ms);
            match node.balance(Some(shard), &account, ReadConsistency::Local).await {
                Ok(view) if view.staleness_ms.is_some_and(|s| s <= bound_ms) => Some(view),
                _ => None,
            }
        } else {
            None
        };
        let stale = local.is_some();
        let (view, lag) = match local {
            Some(view) => (view, node.apply_lag(shard).unwrap_or(0)),
            None => {
                let view = match node.balance(Some(shard), &account, ReadConsistency::Linearizable).await {
                    Err(LedgerError::NotLeader { .. }) if forward => {
                        self.forwarder().await?.balance_until(&account, shard, deadline).await.map_err(client_status)?
                    }
                    other => other.map_err(errors::ledger)?,
                };
                (view, 0)
            }
        };
        let Some(balance) = view.balance else {
            return Err(errors::rejection(ledger_core::Rejection::UnknownAccount, Some("player_id")));
        };
        Ok(Response::new(pb::GetBalanceResponse {
            balance: Some(convert::balance(&account, balance)),
            consistency: if stale { pb::ReadConsistency::Stale } else { pb::ReadConsistency::Linearizable } as i32,
            shard,
            as_of_seq: view.journal_len,
            as_of_unix_ms: i64::try_from(view.last_at.as_millis()).unwrap_or(i64::MAX),
            lag_entries: lag,
            // Linearizable views carry Some(0); a local one only got here with a known bound.
            staleness_ms: view.staleness_ms.unwrap_or(0),
        }))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let caller = self.caller(&req, Rpc::ListEntries).await?;
        let msg = req.into_inner();
        let (shard, player) = self.entries_scope(&caller, &msg.player_id, msg.shard)?;
        let page = convert::page_size(msg.page_size)? as usize;
        let node = &self.inner.node;
        let head_seq = node.head(shard).map_or(0, |h| h.0);
        let mut next = msg.from_seq.max(1);
        let scan_end = next.saturating_add(SCAN_MAX);
        let mut entries = Vec::new();
        'scan: while entries.len() < page && next < scan_end {
            let chunk = node.entries(shard, next, 1000).map_err(errors::ledger)?;
            if chunk.is_empty() {
                break;
            }
            for e in &chunk {
                if player.as_ref().is_none_or(|p| convert::touches(e, p)) {
                    entries.push(convert::entry(e));
                }
                next = e.seq + 1;
                if entries.len() == page || next >= scan_end {
                    break 'scan;
                }
            }
        }
        Ok(Response::new(pb::ListEntriesResponse { entries, next_seq: next, head_seq }))
    }

    type WatchEntriesStream = EntryStream;

    async fn watch_entries(
        &self,
        req: Request<pb::WatchEntriesRequest>,
    ) -> Result<Response<Self::WatchEntriesStream>, Status> {
        let caller = self.caller(&req, Rpc::WatchEntries).await?;
        let msg = req.into_inner();
        let (shard, player) = self.entries_scope(&caller, &msg.player_id, msg.shard)?;
        let (tx, rx) = mpsc::channel(256);
        let node = self.inner.node.clone();
        let mut draining = self.inner.draining.clone();
        let mut next = msg.from_seq.max(1);
        tokio::spawn(async move {
            loop {
                let chunk = match node.entries(shard, next, 512) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(errors::ledger(e))).await;
                        return;
                    }
                };
                if chunk.is_empty() {
                    tokio::select! {
                        _ = node.wait_for_entries(shard, next - 1, Duration::from_secs(1)) => {}
                        _ = tx.closed() => return,
                        _ = wait_true(&mut draining) => {
                            // Tell the client to resume elsewhere rather than end silently.
                            let _ = tx.send(Err(errors::shutting_down())).await;
                            return;
                        }
                    }
                    continue;
                }
                for e in chunk {
                    next = e.seq + 1;
                    if player.as_ref().is_none_or(|p| convert::touches(&e, p))
                        && tx.send(Ok(convert::entry(&e))).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn place_bets(&self, req: Request<pb::PlaceBetsRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        let how = Mutation { build: convert::bet, owner: |m| &m.player_id, key: |m| &m.idempotency_key };
        self.batch(req, Rpc::PlaceBets, |m| m.bets, "bets", how).await
    }

    async fn settle_wins(&self, req: Request<pb::SettleWinsRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        let how = Mutation { build: convert::win, owner: |m| &m.player_id, key: |m| &m.idempotency_key };
        self.batch(req, Rpc::SettleWins, |m| m.wins, "wins", how).await
    }

    async fn get_entry_proof(
        &self,
        req: Request<pb::GetEntryProofRequest>,
    ) -> Result<Response<pb::GetEntryProofResponse>, Status> {
        self.caller(&req, Rpc::GetEntryProof).await?;
        let msg = req.into_inner();
        if msg.shard >= self.shard_count() {
            return Err(errors::invalid_field("shard", format!("shard must be below {}", self.shard_count())));
        }
        if msg.seq == 0 {
            return Err(errors::invalid_field("seq", "seq starts at 1"));
        }
        let head = self.inner.node.head(msg.shard).map_or(0, |h| h.0);
        let not_found = |seq: u64| {
            status(
                Code::NotFound,
                "ENTRY_NOT_FOUND",
                format!("shard {} has no entry {seq} yet (head {head})", msg.shard),
                &[],
            )
        };
        if msg.seq > head {
            return Err(not_found(msg.seq));
        }
        let anchor = if msg.anchor_seq == 0 { head.min(msg.seq + PROOF_LINKS_MAX - 1) } else { msg.anchor_seq };
        if anchor < msg.seq {
            return Err(errors::invalid_field("anchor_seq", "anchor_seq must not be below seq"));
        }
        if anchor > head {
            return Err(not_found(anchor));
        }
        if anchor - msg.seq >= PROOF_LINKS_MAX {
            return Err(status(
                Code::OutOfRange,
                "PROOF_TOO_LONG",
                format!("a proof spans at most {PROOF_LINKS_MAX} entries; choose a nearer anchor"),
                &[("field", "anchor_seq")],
            ));
        }
        let count = (anchor - msg.seq + 1) as u32;
        let chain = self.inner.node.entries(msg.shard, msg.seq, count).map_err(errors::ledger)?;
        let (Some(first), Some(last)) = (chain.first(), chain.last()) else {
            return Err(not_found(msg.seq));
        };
        Ok(Response::new(pb::GetEntryProofResponse {
            entry: Some(convert::entry(first)),
            anchor_seq: last.seq,
            anchor_hash: last.compute_hash().to_vec(),
            links: chain.iter().map(|e| pb::ChainLink { seq: e.seq, encoding: e.encode() }).collect(),
        }))
    }
}

/// Default staleness a STALE read accepts when the request names none.
const STALENESS_DEFAULT_MS: u64 = 5_000;
/// Most staleness a STALE read may accept.
const STALENESS_MAX_MS: u64 = 60_000;

/// The staleness bound of a STALE read: the request's, 0 meaning the default, capped.
fn staleness_bound_ms(requested: u32) -> u64 {
    match u64::from(requested) {
        0 => STALENESS_DEFAULT_MS,
        ms => ms.min(STALENESS_MAX_MS),
    }
}

/// Resolves once `flag` is true (or its sender is gone).
pub(crate) async fn wait_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|d| *d).await;
}

/// How often health is re-evaluated. Well under the Raft lease, so a lost quorum shows within
/// about a lease plus this.
const HEALTH_PERIOD: Duration = Duration::from_millis(200);

/// Keeps `grpc.health.v1` current. Each replica this node hosts reports under
/// `casino.wallet.v1.Wallet/shard/<n>`: SERVING when a write sent here now can be committed (the
/// replica leads and a quorum acknowledged it within the lease, or it follows a leader that
/// reached it, with a quorum behind it, within the lease; see `raft_ledger::api::CommitHealth`).
/// The service as a whole (and `""`) is SERVING when every hosted replica is.
/// `casino.wallet.v1.Wallet/node` is SERVING while the node takes calls at all (until it
/// drains): what geo-routers watch, since a node whose one shard lost its leader still serves
/// the others, and still forwards.
pub async fn report_health(
    node: LedgerNode,
    reporter: tonic_health::server::HealthReporter,
    mut draining: watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    let node_service = format!("{}/node", super::SERVICE_NAME);
    reporter.set_service_status(&node_service, ServingStatus::Serving).await;
    loop {
        let status = node.status();
        let mut all = true;
        for s in &status.shards {
            let ok = s.health.serving();
            all &= ok;
            let st = if ok { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status(format!("{}/shard/{}", super::SERVICE_NAME, s.shard), st).await;
        }
        let overall = if all { ServingStatus::Serving } else { ServingStatus::NotServing };
        reporter.set_service_status(super::SERVICE_NAME, overall).await;
        reporter.set_service_status("", overall).await;
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_PERIOD) => {}
            _ = wait_true(&mut draining) => {
                reporter.set_service_status(&node_service, ServingStatus::NotServing).await;
                reporter.set_service_status(super::SERVICE_NAME, ServingStatus::NotServing).await;
                reporter.set_service_status("", ServingStatus::NotServing).await;
                return;
            }
        }
    }
}

/// Serves the wallet API, health and reflection on `listener` until `draining` turns true,
/// then stops accepting calls and waits for those in flight.
/// With `sessions`, the session service (`casino.session.v1`) is served beside it.
pub async fn serve(
    service: WalletService,
    sessions: Option<crate::session::service::SessionApi>,
    listener: tokio::net::TcpListener,
    mut draining: watch::Receiver<bool>,
) -> Result<(), String> {
    use crate::session::service::SessionApi;
    let (reporter, health) = tonic_health::server::health_reporter();
    if sessions.is_some() {
        // SERVING until the node drains; the store's own outages answer each call instead.
        let (reporter, mut draining) = (reporter.clone(), draining.clone());
        tokio::spawn(async move {
            use tonic_health::ServingStatus;
            let name = crate::session::SERVICE_NAME;
            reporter.set_service_status(name, ServingStatus::Serving).await;
            wait_true(&mut draining).await;
            reporter.set_service_status(name, ServingStatus::NotServing).await;
        });
    }
    tokio::spawn(report_health(service.inner.node.clone(), reporter, draining.clone()));
    let (memory_sessions, redis_sessions) = match sessions {
        Some(SessionApi::Memory(s)) => (Some(s.into_server()), None),
        Some(SessionApi::Redis(s)) => (None, Some(s.into_server())),
        None => (None, None),
    };
    let node = service.inner.node.clone();
    let routing = super::routing::RoutingService::new(node.clone(), node.client_options().key, draining.clone());
    // Both reflection protocols (grpcurl before 1.8.8 speaks only v1alpha), with the
    // descriptors of google.rpc's error details so tools can decode every ErrorInfo.
    let descriptors =
        [pb::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET, tonic_types::pb::FILE_DESCRIPTOR_SET];
    let mut reflection = tonic_reflection::server::Builder::configure();
    let mut reflection_alpha = tonic_reflection::server::Builder::configure();
    for set in descriptors {
        reflection = reflection.register_encoded_file_descriptor_set(set);
        reflection_alpha = reflection_alpha.register_encoded_file_descriptor_set(set);
    }
    let reflection = reflection.build_v1().map_err(|e| e.to_string())?;
    let reflection_alpha = reflection_alpha.build_v1alpha().map_err(|e| e.to_string())?;
    raft_ledger::net::env::http2(tonic::transport::Server::builder())
        .layer(EdgeLayer { message_bytes_max: super::MESSAGE_BYTES_MAX })
        .add_service(service.into_server())
        .add_service(routing.into_server())
        .add_optional_service(memory_sessions)
        .add_optional_service(redis_sessions)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        // TCP_NODELAY on every accepted connection: without it small gRPC answers wait for
        // Nagle's algorithm (tens of ms behind a delayed ACK), and a listener passed in does not
        // get tonic's own setting.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = draining.wait_for(|d| *d).await;
            },
        )
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_read_accepts_the_default_bound_or_the_callers_capped() {
        assert_eq!(staleness_bound_ms(0), STALENESS_DEFAULT_MS);
        assert_eq!(staleness_bound_ms(250), 250);
        assert_eq!(staleness_bound_ms(u32::MAX), STALENESS_MAX_MS);
    }
}
