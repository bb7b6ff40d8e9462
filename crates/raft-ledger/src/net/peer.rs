//! Sending Raft messages to peers: one gRPC channel per peer node, shared by every shard.
//!
//! Replication to one follower is a stream of AppendEntries calls. openraft's default sends
//! them strictly one at a time, and after every commit it sends an entry-less call just to
//! carry the new commit index; a write arriving meanwhile waited for that call's round trip, so
//! each commit cost two round trips to the nearest quorum region instead of one. [`ShardPeer`]
//! lets a call overtake entry-less calls still in flight (see [`ShardPeer::stream_append`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::env::{Net, NodeChannel};
use super::generated::raft_transport_client::RaftTransportClient;
use super::member::ClusterKey;
use super::wire::{
    AppendRequest, Extended, Freshness, PeerError, PieceOutcome, ReplyStamp, ShardMsg, SnapshotIdentity, SnapshotPiece,
    SnapshotProgress, SnapshotProgressRequest,
};
use crate::raft::{LogId, NodeId, NodeInfo, TypeConfig, Vote};
use crate::store::LedgerSnapshot;
use futures_util::stream::FuturesOrdered;
use futures_util::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft_multi::GroupRouter;

/// Snapshot bytes per stream message.
const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;
/// Raft messages can be large (batches of entries); allow up to this many bytes.
pub(crate) const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;

type Rpc<T> = Result<T, RPCError<TypeConfig>>;

struct Peer {
    addr: String,
    client: RaftTransportClient<NodeChannel>,
    /// The peer answered an append stream with "unimplemented" (a build from before ordered
    /// streams, during a rolling upgrade): replicate to it with unary calls.
    unary_only: bool,
    /// How long its AppendEntries answers take, for their deadline (shared by every shard: they
    /// travel the same link).
    rto: super::rto::Rto,
}

/// Routes Raft messages of every shard to peer nodes over shared channels.
#[derive(Clone)]
pub(crate) struct PeerRouter {
    me: NodeId,
    net: Net,
    key: ClusterKey,
    peers: Arc<Mutex<BTreeMap<NodeId, Peer>>>,
    /// Each shard's Raft metrics and applied log id on this node, so AppendEntries can tell
    /// followers when this leader last heard from a quorum and what it vouches for.
    metrics: Arc<Mutex<BTreeMap<u32, Watched>>>,
    /// Per follower and shard: what this node, leading, can vouch for about the follower's
    /// freshness (see [`Vouching`]).
    vouching: Arc<Mutex<BTreeMap<(NodeId, u32), Vouching>>>,
    /// The most snapshot bytes one call carries (`NodeConfig::snapshot_piece_bytes`).
    piece_bytes: u64,
    /// The most AppendEntries in flight to one follower for one shard
    /// (`NodeConfig::appends_in_flight`): 1 sends unary calls, more an ordered stream.
    appends_in_flight: usize,
}

type ShardMetrics = openraft::type_config::alias::WatchReceiverOf<TypeConfig, openraft::RaftMetrics<TypeConfig>>;
/// openraft's clock: what its quorum acknowledgements are timed by.
type RaftInstant = openraft::type_config::alias::InstantOf<TypeConfig>;

/// What this node watches of one of its shards.
struct Watched {
    metrics: ShardMetrics,
    /// The shard's last applied log id, published before the replies it acknowledges.
    applied: tokio::sync::watch::Receiver<Option<LogId>>,
}

/// Vouching for one follower's freshness (`wire::Freshness`). A stamp the follower put on an
/// answer becomes a candidate when it is heard, paired with what this node had applied by then
/// (so every write it had acknowledged before the stamp). A candidate is sent only once a
/// quorum has acknowledged a request sent after it was taken: then no later leader had been
/// elected when the follower stamped it, so none had acknowledged anything before it.
#[derive(Default)]
struct Vouching {
    /// The follower's latest stamp heard.
    heard: Option<ReplyStamp>,
    /// Candidates, oldest first: when each was taken, in which of this node's terms as leader,
    /// and what it vouches for.
    candidates: std::collections::VecDeque<(RaftInstant, u64, Freshness)>,
}

/// Candidates kept per follower and shard, at least `VOUCHING_SPACING` apart: together they
/// span the round trip a quorum's acknowledgement takes, even between regions.
const VOUCHING_CANDIDATES_MAX: usize = 64;
/// The least time between two candidates kept for one follower and shard.
const VOUCHING_SPACING: Duration = Duration::from_millis(5);

impl PeerRouter {
    pub(crate) fn new(me: NodeId, net: Net, key: ClusterKey, piece_bytes: u64, appends_in_flight: usize) -> Self {
        Self {
            me,
            net,
            key,
            peers: Arc::new(Mutex::new(BTreeMap::new())),
            metrics: Arc::new(Mutex::new(BTreeMap::new())),
            vouching: Arc::new(Mutex::new(BTreeMap::new())),
            piece_bytes: piece_bytes.max(1),
            appends_in_flight: appends_in_flight.max(1),
        }
    }

    /// Registers a shard's metrics and applied log id once its Raft group exists.
    pub(crate) fn watch_shard(
        &self,
        shard: u32,
        metrics: ShardMetrics,
        applied: tokio::sync::watch::Receiver<Option<LogId>>,
    ) {
        self.metrics.lock().expect("metrics lock").insert(shard, Watched { metrics, applied });
    }

    /// Notes a stamp `target` put on its answer for `shard`: while this node leads with an
    /// entry of its own term applied, a candidate to vouch for (see [`Vouching`]).
    fn heard(&self, target: NodeId, shard: u32, stamp: Option<ReplyStamp>) {
        let Some(stamp) = stamp else { return };
        let mut vouching = self.vouching.lock().expect("vouching lock");
        let link = vouching.entry((target, shard)).or_default();
        // Answers of one run of the follower carry ascending moments; a stamp of another run
        // (the follower restarted) replaces the old one.
        if link.heard.is_some_and(|h| h.incarnation == stamp.incarnation && h.micros >= stamp.micros) {
            return;
        }
        link.heard = Some(stamp);
        // Read after the stamp was heard: every write acknowledged before it is applied here.
        let Some((term, applied)) = self.leading_applied(shard) else {
            link.candidates.clear();
            return;
        };
        let now = <RaftInstant as openraft::Instant>::now();
        let fresh = Freshness { stamp, applied };
        // Within the spacing, or with every slot taken, the newest candidate is replaced: the
        // oldest ones stay, so candidates keep being certified however fast answers come.
        let crowded = link.candidates.len() >= VOUCHING_CANDIDATES_MAX;
        match link.candidates.back_mut() {
            Some(newest) if crowded || now - newest.0 < VOUCHING_SPACING => {
                *newest = (now, term, fresh);
            }
            _ => link.candidates.push_back((now, term, fresh)),
        }
    }

    /// This node's term and applied index for `shard` while it leads the shard and has applied
    /// an entry of its own term (so every entry an earlier leader committed too); `None`
    /// otherwise.
    fn leading_applied(&self, shard: u32) -> Option<(u64, u64)> {
        use openraft::rt::WatchReceiver as _;
        let metrics = self.metrics.lock().expect("metrics lock");
        let watched = metrics.get(&shard)?;
        let applied = (*watched.applied.borrow())?;
        let m = watched.metrics.borrow_watched();
        let leads = m.state == openraft::ServerState::Leader && applied.leader_id.term == m.current_term;
        leads.then_some((m.current_term, applied.index))
    }

    /// What a request to `target` in `shard` sent now says of this node's leadership, from one
    /// look at its metrics: how long ago it last heard from a quorum, in ms, and what it can
    /// vouch for about the follower's freshness ([`Self::vouch`]).
    fn leader_says(&self, target: NodeId, shard: u32) -> (Option<u64>, Option<Freshness>) {
        use openraft::Instant as _;
        use openraft::rt::WatchReceiver as _;
        let (leads, term, acked) = {
            let metrics = self.metrics.lock().expect("metrics lock");
            let Some(watched) = metrics.get(&shard) else { return (None, None) };
            let m = watched.metrics.borrow_watched();
            (m.state == openraft::ServerState::Leader, m.current_term, m.last_quorum_acked.map(|a| a.into_inner()))
        };
        let quorum_age_ms = acked.map(|a| a.elapsed().as_millis() as u64);
        let fresh = acked.filter(|_| leads).and_then(|acked| self.vouch(target, shard, term, acked));
        (quorum_age_ms, fresh)
    }

    /// What this node, leading `shard` in `term` with a quorum's last acknowledgement of a
    /// request sent at `acked`, can vouch for about `target`'s freshness: the newest candidate
    /// taken strictly before `acked` (strictly: a request stamped in the same instant may
    /// predate it), in the same term: a quorum's acknowledgement in a later term says nothing
    /// of the leaders elected between the two.
    fn vouch(&self, target: NodeId, shard: u32, term: u64, acked: RaftInstant) -> Option<Freshness> {
        let mut vouching = self.vouching.lock().expect("vouching lock");
        let link = vouching.get_mut(&(target, shard))?;
        link.candidates.retain(|(_, taken_in, _)| *taken_in == term);
        let newest = link.candidates.iter().rposition(|(taken, _, _)| *taken < acked)?;
        link.candidates.drain(..newest);
        link.candidates.front().map(|(_, _, f)| *f)
    }

    /// Remembers (or updates) a peer's address; the channel is created on first use.
    fn learn(&self, id: NodeId, addr: &str) {
        let mut peers = self.peers.lock().expect("peers lock");
        if peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        match self.net.node_channel(addr, &self.key) {
            Ok(channel) => {
                let client = RaftTransportClient::new(channel)
                    .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
                peers.insert(id, Peer { addr: addr.to_string(), client, unary_only: false, rto: Default::default() });
            }
            Err(e) => tracing::warn!(peer = id, addr, "invalid peer address: {e}"),
        }
    }

    fn client(&self, target: NodeId) -> Result<RaftTransportClient<NodeChannel>, Unreachable<TypeConfig>> {
        self.peers
            .lock()
            .expect("peers lock")
            .get(&target)
            .map(|p| p.client.clone())
            .ok_or_else(|| Unreachable::from_string(format!("no address known for node {target}")))
    }

    /// Whether appends to `target` may go as an ordered stream.
    fn streams_appends(&self, target: NodeId) -> bool {
        self.appends_in_flight > 1 && self.peers.lock().expect("peers lock").get(&target).is_none_or(|p| !p.unary_only)
    }

    fn timeout(&self, action: RPCTypes, target: NodeId, timeout: Duration) -> Timeout<TypeConfig> {
        Timeout { action, id: self.me, target, timeout }
    }

    /// The deadline of an AppendEntries to `target`: what its link has been taking (see
    /// [`super::rto`]), never less than openraft's `floor`.
    fn append_deadline(&self, target: NodeId, floor: Duration) -> Duration {
        self.peers.lock().expect("peers lock").get(&target).map_or(floor, |p| p.rto.deadline(floor))
    }

    /// Records how an AppendEntries to `target` ended: answered after `Some(rtt)`, or past its
    /// deadline (`None`).
    fn append_ended(&self, target: NodeId, answered: Option<Duration>) {
        if let Some(p) = self.peers.lock().expect("peers lock").get_mut(&target) {
            match answered {
                Some(rtt) => p.rto.answered(rtt),
                None => p.rto.timed_out(),
            }
        }
    }

    /// Runs one unary call with the option's deadline (an AppendEntries: its link's, see
    /// [`Self::append_deadline`]) and maps every failure to an RPC error.
    async fn call<T, F, Fut>(&self, action: RPCTypes, target: NodeId, option: RPCOption, f: F) -> Rpc<T>
    where
        F: FnOnce(RaftTransportClient<NodeChannel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Result<T, PeerError>>, tonic::Status>>,
    {
        let client = self.client(target)?;
        let append = matches!(action, RPCTypes::AppendEntries);
        let ttl = if append { self.append_deadline(target, option.hard_ttl()) } else { option.hard_ttl() };
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(ttl, f(client, ttl)).await;
        if append {
            match &outcome {
                Ok(Ok(_)) => self.append_ended(target, Some(started.elapsed())),
                Err(_) => self.append_ended(target, None),
                Ok(Err(_)) => {}
            }
        }
        let reply = self.settle(action, target, ttl, outcome)?;
        reply.into_inner().map_err(|e| peer_error(&e))
    }

    /// Maps a call made under a `ttl` deadline to an RPC error when it failed or ran out of time.
    fn settle<T>(
        &self,
        action: RPCTypes,
        target: NodeId,
        ttl: Duration,
        outcome: Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>,
    ) -> Result<T, RPCError<TypeConfig>> {
        match outcome {
            Err(_) => Err(RPCError::Timeout(self.timeout(action, target, ttl))),
            Ok(r) => r.map_err(|status| status_error(&status)),
        }
    }
}

/// The messages of one piece after its header: the state from `at`, then the journal, until
/// `budget` bytes are sent or the snapshot ends. A read that fails ends the piece early;
/// the receiver keeps what arrived and the next piece resumes there.
fn piece_body(
    state: crate::store::state_machine::StateSource,
    journal: crate::store::JournalPrefix,
    at: SnapshotProgress,
    budget: u64,
) -> impl Stream<Item = SnapshotPiece> {
    futures_util::stream::unfold((at, budget), move |(at, budget)| {
        let (state, journal) = (state.clone(), journal.clone());
        async move {
            let n = SNAPSHOT_CHUNK_BYTES.min(budget);
            if n == 0 {
                return None;
            }
            let state_len = state.len();
            if at.state_bytes < state_len {
                let end = (at.state_bytes + n).min(state_len);
                let mut chunk = vec![0u8; (end - at.state_bytes) as usize];
                if let Err(e) = state.read_at(at.state_bytes, &mut chunk) {
                    tracing::warn!("snapshot state read failed at {}: {e}", at.state_bytes);
                    return None;
                }
                let next = SnapshotProgress { state_bytes: end, ..at };
                return Some((SnapshotPiece::State(chunk), (next, budget - (end - at.state_bytes))));
            }
            if at.journal_bytes >= journal.bytes {
                return None;
            }
            let n = n.min(journal.bytes - at.journal_bytes);
            let mut buf = vec![0u8; n as usize];
            if let Err(e) = journal.read_at(at.journal_bytes, &mut buf) {
                tracing::warn!("snapshot journal read failed at {}: {e}", at.journal_bytes);
                return None;
            }
            let next = SnapshotProgress { journal_bytes: at.journal_bytes + n, ..at };
            Some((SnapshotPiece::Journal(buf), (next, budget - n)))
        }
    })
}

fn status_error(status: &tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::from_string(status.to_string())),
        _ => RPCError::Network(NetworkError::from_string(status.to_string())),
    }
}

fn peer_error(e: &PeerError) -> RPCError<TypeConfig> {
    // The peer answered but cannot take part for this shard right now (no replica yet, or its
    // Raft group stopped): back off as from an unreachable peer.
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

fn request<T>(shard: u32, msg: T, ttl: Duration) -> tonic::Request<ShardMsg<T>> {
    let mut req = tonic::Request::new(ShardMsg { shard, msg });
    req.set_timeout(ttl);
    req
}

impl GroupRouter<TypeConfig, u32> for PeerRouter {
    type SnapshotData = LedgerSnapshot;

    async fn append_entries(
        &self,
        target: NodeId,
        shard: u32,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<TypeConfig>> {
        let (quorum_age_ms, fresh) = self.leader_says(target, shard);
        let router = self.clone();
        self.call(RPCTypes::AppendEntries, target, option, |mut c, ttl| async move {
            let mut req = tonic::Request::new(Extended::new(AppendRequest { shard, msg: rpc, quorum_age_ms }, fresh));
            req.set_timeout(ttl);
            let answer = c.append(req).await?;
            Ok(answer.map(|a| {
                router.heard(target, shard, a.ext);
                a.head
            }))
        })
        .await
    }

    async fn vote(
        &self,
        target: NodeId,
        shard: u32,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<TypeConfig>> {
        self.call(RPCTypes::Vote, target, option, |mut c, ttl| async move { c.vote(request(shard, rpc, ttl)).await })
            .await
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        shard: u32,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<TypeConfig>> {
        self.call(
            RPCTypes::Vote,
            target,
            option,
            |mut c, ttl| async move { c.pre_vote(request(shard, rpc, ttl)).await },
        )
        .await
    }

    async fn full_snapshot(
        &self,
        target: NodeId,
        shard: u32,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, LedgerSnapshot>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let client = self.client(target)?;
        let data = snapshot.snapshot;
        let started = tokio::time::Instant::now();
        // A checkpoint on disk is encoded into a file here, off the apply path.
        let state = data.state_source().await.map_err(|e| {
            tracing::warn!("cannot read the snapshot to send: {e}");
            StreamingError::Unreachable(Unreachable::from_string(format!("cannot read the snapshot to send: {e}")))
        })?;
        tracing::info!(
            shard,
            target,
            state_bytes = state.len(),
            journal_bytes = data.journal.bytes,
            ms = started.elapsed().as_millis() as u64,
            "sending a snapshot"
        );
        let identity = SnapshotIdentity {
            last_log_id: snapshot.meta.last_log_id,
            state_bytes: state.len(),
            state_digest: state.digest(),
            journal_entries: data.journal.entries,
            journal_bytes: data.journal.bytes,
            journal_head: data.journal_head,
        };
        let (meta, ttl) = (snapshot.meta, option.hard_ttl());
        // Each call has the deadline openraft gives a snapshot, and carries at most one piece:
        // a large snapshot arrives over several calls, each resuming at the receiver's progress.
        let transfer = async move {
            let ask = SnapshotProgressRequest { shard, identity: identity.clone() };
            let mut at = self
                .call(RPCTypes::InstallSnapshot, target, option, |mut c, ttl| async move {
                    let mut req = tonic::Request::new(ask);
                    req.set_timeout(ttl);
                    c.snapshot_progress(req).await
                })
                .await?;
            if at != SnapshotProgress::default() {
                tracing::info!(
                    shard,
                    target,
                    state_bytes = at.state_bytes,
                    journal_bytes = at.journal_bytes,
                    "resuming a snapshot transfer"
                );
            }
            loop {
                let header = SnapshotPiece::Header {
                    shard,
                    vote,
                    meta: meta.clone(),
                    identity: identity.clone(),
                    state_from: at.state_bytes,
                    journal_from: at.journal_bytes,
                };
                let body = piece_body(state.clone(), data.journal.clone(), at, self.piece_bytes);
                let chunks = futures_util::stream::once(async move { header }).chain(body);
                let mut c = client.clone();
                let mut req = tonic::Request::new(chunks);
                req.set_timeout(ttl);
                let outcome = match tokio::time::timeout(ttl, c.install_snapshot_piece(req)).await {
                    Err(_) => {
                        return Err(StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, target, ttl)));
                    }
                    Ok(Err(status)) => return Err(status_error(&status).into()),
                    Ok(Ok(reply)) => reply.into_inner().map_err(|e| StreamingError::from(peer_error(&e)))?,
                };
                match outcome {
                    PieceOutcome::Installed(response) => return Ok(response),
                    PieceOutcome::Stored(next) if next == at => {
                        // Nothing arrived (the stream broke at once): openraft retries later.
                        return Err(StreamingError::Unreachable(Unreachable::from_string(
                            "a snapshot piece made no progress",
                        )));
                    }
                    PieceOutcome::Stored(next) => at = next,
                }
            }
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = transfer => result,
        }
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        shard: u32,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<TransferLeaderResponse<TypeConfig>> {
        self.call(RPCTypes::TransferLeader, target, option, |mut c, ttl| async move {
            c.transfer_leader(request(shard, req, ttl)).await
        })
        .await
    }
}

/// A request of an ordered stream still waiting for its answer.
struct Sent {
    at: tokio::time::Instant,
    last: Option<crate::raft::LogId>,
}

/// Pipelined replication: one shard's AppendEntries to one follower as one bidirectional gRPC
/// stream, so they arrive in the order sent (unary calls on separate HTTP/2 streams may not),
/// with up to `appends_in_flight` unanswered, answers in request order.
///
/// Each request has the deadline of a unary AppendEntries to that peer (its link's, see
/// [`PeerRouter::append_deadline`]), counted from when it was sent: an answer that long
/// overdue ends the stream with a timeout, as a unary call's would. An
/// idle stream (nothing unanswered) waits without a deadline, since openraft keeps a stream
/// open between writes. As in the unary path, a refusal, an error or a partial success ends
/// the stream after it is reported: what was sent after it was built on it.
///
/// The work is in [`ordered_stream_open`]; this boxes it, because openraft's trait method
/// returns a `BoxFuture`, whose lifetime an `async fn` in the trait's impl cannot name.
fn ordered_stream<S>(
    router: PeerRouter,
    target: NodeId,
    shard: u32,
    input: S,
    option: RPCOption,
) -> BoxFuture<'static, Result<AppendResults, RPCError<TypeConfig>>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    Box::pin(ordered_stream_open(router, target, shard, input, option))
}

type AppendResults = BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

async fn ordered_stream_open<S>(
    router: PeerRouter,
    target: NodeId,
    shard: u32,
    input: S,
    option: RPCOption,
) -> Result<AppendResults, RPCError<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let mut client = router.client(target)?;
    // openraft's deadline: the least a request is given (the link's estimate may add to it).
    let floor = option.hard_ttl();
    // openraft backs off after a failed stream inside its input, when the input is next polled:
    // so the call is opened only once there is a first request to send. Opening it first would
    // turn an unreachable peer into a reconnect loop without pause (every try a new connection).
    let mut input = input;
    let Some(first) = input.next().await else {
        return Ok(Box::pin(futures_util::stream::empty()) as AppendResults);
    };
    let input = futures_util::stream::once(std::future::ready(first)).chain(input);
    // The window's free permits are `appends_in_flight` minus the length of `sent`: the
    // semaphore is what a request waits on, `sent` is what an answer is matched against.
    let window = Arc::new(tokio::sync::Semaphore::new(router.appends_in_flight));
    let sent = Arc::new(Mutex::new(std::collections::VecDeque::<Sent>::new()));
    let (sender_window, sender_sent, sender_router) = (window.clone(), sent.clone(), router.clone());
    let requests = input.then(move |msg| {
        let (window, sent, router) = (sender_window.clone(), sender_sent.clone(), sender_router.clone());
        async move {
            // A slot is given back when this request's answer arrives.
            if let Ok(permit) = window.acquire().await {
                permit.forget();
            }
            let last = msg.entries.last().map(|e| e.log_id).or(msg.prev_log_id);
            sent.lock().expect("sent lock").push_back(Sent { at: tokio::time::Instant::now(), last });
            let (quorum_age_ms, fresh) = router.leader_says(target, shard);
            Extended::new(AppendRequest { shard, msg, quorum_age_ms }, fresh)
        }
    });
    // The request stream is polled by the HTTP/2 connection's task, not by openraft. openraft's
    // stream holds its replication state's lock while it waits for new entries, and a stream
    // left running after its session ended would go on taking entries out of that state for
    // a dead stream; so the input ends when the results are dropped (`guard`), whatever the
    // connection does.
    let (abort, registration) = futures_util::stream::AbortHandle::new_pair();
    let guard = EndInput(abort);
    let requests = futures_util::stream::Abortable::new(requests, registration);
    let mut req = tonic::Request::new(requests);
    req.metadata_mut()
        .insert(super::wire::APPEND_STREAM_SHARD_KEY, shard.to_string().parse().expect("digits are ASCII"));
    let ttl = router.append_deadline(target, floor);
    let opened = tokio::time::timeout(ttl, client.append_stream(req)).await;
    if opened.is_err() {
        // Opening takes a round trip (the peer's response headers): a link slower than the
        // deadline must back it off here too, or no stream would ever open to measure it.
        router.append_ended(target, None);
    }
    if let Ok(Err(status)) = &opened
        && status.code() == tonic::Code::Unimplemented
    {
        // An older peer: from now on it gets unary calls (openraft retries after its backoff,
        // with a new session).
        tracing::info!(peer = target, "peer does not take ordered append streams: unary calls from now on");
        if let Some(p) = router.peers.lock().expect("peers lock").get_mut(&target) {
            p.unary_only = true;
        }
    }
    let replies = router.settle(RPCTypes::AppendEntries, target, ttl, opened)?.into_inner();
    let results = futures_util::stream::unfold(Some((replies, guard, false)), move |state| {
        let (router, window, sent) = (router.clone(), window.clone(), sent.clone());
        async move {
            // `answered`: whether the peer has answered anything on this stream yet.
            let (mut replies, guard, answered) = state?;
            loop {
                let front = sent.lock().expect("sent lock").front().map(|s| s.at);
                let ttl = router.append_deadline(target, floor);
                let next = match front {
                    Some(at) => match tokio::time::timeout_at(at + ttl, replies.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            router.append_ended(target, None);
                            let e = RPCError::Timeout(router.timeout(RPCTypes::AppendEntries, target, ttl));
                            return Some((Err(e), None));
                        }
                    },
                    // Nothing unanswered: wait for the next request's answer, however long
                    // openraft takes to send one; a request sent meanwhile is checked on the
                    // next turn (its answer, or the stream's end, wakes this).
                    None => tokio::select! {
                        next = replies.next() => next,
                        () = tokio::time::sleep(ttl) => continue,
                    },
                };
                let reply = match next {
                    // The follower ended the stream. After the last answer that is the end of
                    // the input; with requests unanswered, or before any answer, its Raft group
                    // or the node stopped: an error, so that openraft backs off before it opens
                    // the next stream.
                    None => {
                        let unanswered = sent.lock().expect("sent lock").len();
                        if unanswered == 0 && answered {
                            return None;
                        }
                        let why = if answered {
                            format!("the peer ended an append stream with {unanswered} requests unanswered")
                        } else {
                            "the peer ended an append stream before answering".to_string()
                        };
                        return Some((Err(RPCError::Unreachable(Unreachable::from_string(why))), None));
                    }
                    Some(Err(status)) => return Some((Err(status_error(&status)), None)),
                    Some(Ok(Extended { head: reply, ext: stamp })) => {
                        router.heard(target, shard, stamp);
                        match reply {
                            // The peer cannot take part for this shard (it may say so before it
                            // reads a request): as from a unary call.
                            Err(e) => return Some((Err(peer_error(&e)), None)),
                            Ok(result) => result,
                        }
                    }
                };
                let Some(request) = sent.lock().expect("sent lock").pop_front() else {
                    let e =
                        RPCError::Network(NetworkError::from_string("an append stream answered a request not sent"));
                    return Some((Err(e), None));
                };
                window.add_permits(1);
                router.append_ended(target, Some(request.at.elapsed()));
                let go_on = matches!(&reply, Ok(matching) if *matching == request.last);
                return Some((Ok(reply), go_on.then_some((replies, guard, true))));
            }
        }
    });
    Ok(Box::pin(results) as AppendResults)
}

/// Ends an ordered stream's input when dropped.
struct EndInput(futures_util::stream::AbortHandle);

impl Drop for EndInput {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Builds the per-shard network clients openraft asks for, all backed by one [`PeerRouter`].
pub(crate) struct ShardNetworkFactory {
    router: PeerRouter,
    shard: u32,
}

impl ShardNetworkFactory {
    pub(crate) fn new(router: PeerRouter, shard: u32) -> Self {
        Self { router, shard }
    }
}

impl RaftNetworkFactory<TypeConfig> for ShardNetworkFactory {
    type Network = ShardPeer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        self.router.learn(target, &node.addr);
        ShardPeer { router: self.router.clone(), target, shard: self.shard }
    }
}

/// Most AppendEntries calls in flight to one follower for one shard: at most one carrying
/// entries, the rest entry-less (commit or heartbeat carriers).
const APPENDS_IN_FLIGHT_MAX: usize = 4;

/// One shard's Raft messages to one peer.
pub(crate) struct ShardPeer {
    router: PeerRouter,
    target: NodeId,
    shard: u32,
}

type AppendCall = BoxFuture<
    'static,
    (bool, Option<crate::raft::LogId>, Option<crate::raft::LogId>, Rpc<AppendEntriesResponse<TypeConfig>>),
>;

/// The state of one replication stream: requests still to come, and calls in flight, whose
/// results are reported in the order the calls were made.
struct Pipeline<S> {
    input: Option<S>,
    in_flight: FuturesOrdered<AppendCall>,
    /// In-flight calls that carry entries (0 or 1).
    with_entries: usize,
    stopped: bool,
}

impl RaftNetworkV2<TypeConfig> for ShardPeer {
    type SnapshotData = LedgerSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<TypeConfig>> {
        self.router.append_entries(self.target, self.shard, rpc, option).await
    }

    /// Sends the stream's requests, letting a request go out while only entry-less ones are in
    /// flight, and reports results in request order (what openraft requires).
    ///
    /// Why overtaking an entry-less call is safe: it carries no entries, so it cannot truncate
    /// or add anything; its `prev_log_id` is the last id already sent, which the follower holds
    /// whether the later call arrives first or not; and the follower only ever moves its commit
    /// and accepted positions forward, so the older commit index it carries is ignored if it
    /// lands second. A call carrying entries is never overtaken: a later call's `prev_log_id`
    /// would name entries the follower may not have yet, and it would refuse it as a conflict.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let (router, target, shard) = (self.router.clone(), self.target, self.shard);
        if router.streams_appends(target) {
            let open = ordered_stream(router, target, shard, input, option);
            return Box::pin(async move { open.await.map(|results| results as BoxStream<'s, _>) });
        }
        let start = Pipeline { input: Some(input), in_flight: FuturesOrdered::new(), with_entries: 0, stopped: false };
        let results = futures_util::stream::unfold(start, move |mut p| {
            let (router, option) = (router.clone(), option.clone());
            async move {
                loop {
                    if p.stopped {
                        return None;
                    }
                    let may_send =
                        p.input.is_some() && p.with_entries == 0 && p.in_flight.len() < APPENDS_IN_FLIGHT_MAX;
                    if !may_send && p.in_flight.is_empty() {
                        return None;
                    }
                    let has_in_flight = !p.in_flight.is_empty();
                    let (input, in_flight) = (&mut p.input, &mut p.in_flight);
                    // Evaluated even when its branch is disabled, so it must not assume input.
                    let next_request = async move {
                        match input {
                            Some(input) => input.next().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        // Results first: they free the slot a request may be waiting for.
                        biased;
                        Some((entries, prev, last, result)) = in_flight.next(), if has_in_flight => {
                            if entries {
                                p.with_entries -= 1;
                            }
                            let item = match result {
                                Ok(resp) => {
                                    // A partial success or a refusal ends the stream, as in
                                    // openraft's sequential sender: what follows was built on it.
                                    let complete = match &resp {
                                        AppendEntriesResponse::PartialSuccess(partial) => *partial == last,
                                        _ => true,
                                    };
                                    let r = resp.into_stream_result(prev, last);
                                    p.stopped = r.is_err() || !complete;
                                    Ok(r)
                                }
                                Err(e) => {
                                    p.stopped = true;
                                    Err(e)
                                }
                            };
                            return Some((item, p));
                        }
                        // `next()` on the request stream is cancel-safe: the stream keeps its own
                        // pending state when this branch loses the race.
                        req = next_request, if may_send => {
                            let Some(req) = req else {
                                p.input = None;
                                continue;
                            };
                            let prev = req.prev_log_id;
                            let last = req.entries.last().map(|e| e.log_id).or(prev);
                            let entries = !req.entries.is_empty();
                            if entries {
                                p.with_entries += 1;
                            }
                            let (router, option) = (router.clone(), option.clone());
                            p.in_flight.push_back(Box::pin(async move {
                                let result = router.append_entries(target, shard, req, option).await;
                                (entries, prev, last, result)
                            }));
                        }
                    }
                }
            }
        });
        Box::pin(async move { Ok(Box::pin(results) as BoxStream<'s, _>) })
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Rpc<VoteResponse<TypeConfig>> {
        self.router.vote(self.target, self.shard, rpc, option).await
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Rpc<VoteResponse<TypeConfig>> {
        self.router.pre_vote(self.target, self.shard, rpc, option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, LedgerSnapshot>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        self.router.full_snapshot(self.target, self.shard, vote, snapshot, cancel, option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<TransferLeaderResponse<TypeConfig>> {
        self.router.transfer_leader(self.target, self.shard, req, option).await
    }
}
