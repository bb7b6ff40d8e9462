//! The node's gRPC services, served by the runtime: the Raft transport peers call and the node
//! API clients call. Their wire types are `net::wire`'s; the network itself is `net`'s.

use std::sync::Arc;
use std::time::Duration;

use openraft::errors::RaftError;
use openraft::raft::AppendEntriesResponse;
use openraft::rt::WatchReceiver as _;
use sha2::Digest as _;
use tonic::{Request, Response, Status, Streaming};

use super::{LedgerNode, NodeInner, Shard};
use crate::net::generated::ledger_node_server::{LedgerNode as LedgerNodeApi, LedgerNodeServer};
use crate::net::generated::raft_transport_server::{RaftTransport, RaftTransportServer};
use crate::net::peer::RAFT_MESSAGE_BYTES_MAX;
use crate::net::wire::*;
use crate::store::state_machine::{SnapshotReceiver, journal_head_of, off_the_apply_path};

/// Largest request the node API accepts: room for a full batch of commands. Anything bigger is
/// refused before it is decoded.
pub(crate) const API_MESSAGE_BYTES_MAX: usize = 1 << 20;
/// Longest deadline a client may ask for.
const SUBMIT_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// Longest a replica change may wait for a newcomer to catch up.
const MEMBERSHIP_TIMEOUT_MAX: Duration = Duration::from_secs(600);

pub(crate) fn routes(node: Arc<NodeInner>) -> tonic::service::Routes {
    let transport = RaftTransportServer::new(Transport { node: node.clone() })
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    let api = LedgerNodeServer::new(Api { node: LedgerNode { inner: node } })
        .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    tonic::service::Routes::new(transport).add_service(api)
}

struct Transport {
    node: Arc<NodeInner>,
}

impl Transport {
    fn shard(&self, shard: u32) -> Result<Arc<Shard>, PeerError> {
        self.node.shard(shard).ok_or(PeerError::UnknownShard(shard))
    }

    /// A snapshot stream of the first format (the whole state in its header), from a sender
    /// that predates pieces: received in one go, through the same checks.
    async fn receive_snapshot(&self, mut stream: Streaming<SnapshotChunk>) -> Result<SnapshotReply, Status> {
        let Some(SnapshotChunk::Header { shard, vote, meta, state, journal_entries, journal_bytes }) =
            stream.message().await?
        else {
            return Ok(Err(PeerError::Snapshot("stream must start with a header".into())));
        };
        let s = match self.shard(shard) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let Some(journal_head) = journal_head_of(&state) else {
            return Ok(Err(PeerError::Snapshot("the snapshot's state does not decode".into())));
        };
        let identity = SnapshotIdentity {
            last_log_id: meta.last_log_id,
            state_bytes: state.len() as u64,
            state_digest: sha2::Sha256::digest(&state).into(),
            journal_entries,
            journal_bytes,
            journal_head,
        };
        let _one_at_a_time = s.snapshot_lock.lock().await;
        let vfs = self.node.env.vfs.as_ref();
        let mut receiver = match SnapshotReceiver::resume(vfs, &s.dir, identity, SnapshotProgress::default()) {
            Ok(r) => r,
            Err(e) => return Ok(Err(receive_error(&e))),
        };
        if let Err(e) = receiver.write_state(&state) {
            return Ok(Err(receive_error(&e)));
        }
        while let Some(chunk) = stream.message().await? {
            let SnapshotChunk::Journal(bytes) = chunk else {
                return Ok(Err(PeerError::Snapshot("a second header in one stream".into())));
            };
            if let Err(e) = receiver.write_journal(&bytes) {
                return Ok(Err(receive_error(&e)));
            }
        }
        if !receiver.is_whole() {
            let got = receiver.progress().journal_bytes;
            return Ok(Err(PeerError::Snapshot(format!("journal ended at {got} of {journal_bytes} bytes"))));
        }
        Ok(self.install(&s, vote, meta, receiver).await)
    }

    /// One piece of a snapshot: stored after what this shard already holds of it, made durable
    /// (also when the stream breaks, so the next piece resumes after what did arrive), and once
    /// the snapshot is whole, verified and handed to Raft. Disk work here is small appends and
    /// one fsync per piece; verifying and installing a whole snapshot reads it back.
    async fn receive_piece(&self, mut stream: Streaming<SnapshotPiece>) -> Result<SnapshotPieceReply, Status> {
        let Some(SnapshotPiece::Header { shard, vote, meta, identity, state_from, journal_from }) =
            stream.message().await?
        else {
            return Ok(Err(PeerError::Snapshot("a piece must start with a header".into())));
        };
        let s = match self.shard(shard) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        // A deposed leader's snapshot is not stored (it would displace the current leader's
        // transfer); it learns of the newer vote as from a refused install.
        let current = s.raft.metrics().borrow_watched().vote;
        if vote < current {
            return Ok(Ok(PieceOutcome::Installed(openraft::raft::SnapshotResponse::new(current))));
        }
        let _one_at_a_time = s.snapshot_lock.lock().await;
        let vfs = self.node.env.vfs.as_ref();
        let from = SnapshotProgress { state_bytes: state_from, journal_bytes: journal_from };
        let mut receiver = match SnapshotReceiver::resume(vfs, &s.dir, identity, from) {
            Ok(r) => r,
            Err(e) => return Ok(Err(receive_error(&e))),
        };
        /// How the piece's stream ended.
        enum End {
            Done,
            Refused(PeerError),
            Broken(Status),
        }
        let end = loop {
            let written = match stream.message().await {
                Ok(None) => break End::Done,
                Ok(Some(SnapshotPiece::State(bytes))) => receiver.write_state(&bytes),
                Ok(Some(SnapshotPiece::Journal(bytes))) => receiver.write_journal(&bytes),
                Ok(Some(SnapshotPiece::Header { .. })) => {
                    break End::Refused(PeerError::Snapshot("a second header".into()));
                }
                Err(status) => break End::Broken(status),
            };
            if let Err(e) = written {
                break End::Refused(receive_error(&e));
            }
        };
        // What arrived counts even if the stream broke (if the connection is torn down before
        // this runs, it is a torn tail that the next piece's resume cuts). Its fsyncs run off the
        // runtime's workers, which the node's commits share.
        let vfs_owned = self.node.env.vfs.clone();
        let saving = self.node.env.io.blocking(move || {
            let saved = receiver.save(vfs_owned.as_ref());
            (receiver, saved)
        });
        let (receiver, saved) = saving.await.map_err(|_| Status::internal("saving a snapshot piece failed"))?;
        if let Err(e) = saved {
            return Ok(Err(receive_error(&e)));
        }
        match end {
            End::Refused(e) => return Ok(Err(e)),
            End::Broken(status) => return Err(status),
            End::Done if !receiver.is_whole() => return Ok(Ok(PieceOutcome::Stored(receiver.progress()))),
            End::Done => {}
        }
        Ok(self.install(&s, vote, meta, receiver).await.map(PieceOutcome::Installed))
    }

    /// Verifies a whole received snapshot and installs it; the received files are removed
    /// either way (a bad one is received again from the start).
    async fn install(
        &self,
        s: &Shard,
        vote: crate::raft::Vote,
        meta: crate::raft::SnapshotMeta,
        receiver: SnapshotReceiver,
    ) -> SnapshotReply {
        let vfs = self.node.env.vfs.as_ref();
        let started = tokio::time::Instant::now();
        // Reading the state and journal back (in 1 MiB pieces) and checking the state's digest
        // and every entry's hash from genesis is seconds of CPU for a large shard: off the
        // runtime's workers, where it stalled the commits of every shard sharing them, and at
        // the lowest priority, like the install after it (BENCHMARKS.md, "Catching up by
        // snapshot under load").
        let (vfs_owned, shard) = (self.node.env.vfs.clone(), s.id);
        let finish = move || receiver.finish(vfs_owned.as_ref(), shard);
        let snapshot =
            off_the_apply_path(self.node.env.io, &s.cell.background, finish).await.map_err(|e| receive_error(&e))?;
        tracing::info!(
            shard = s.id.0,
            journal_entries = snapshot.journal.entries,
            ms = started.elapsed().as_millis() as u64,
            "received a whole snapshot and verified it"
        );
        let installed = s.raft.install_full_snapshot(vote, openraft::Snapshot { meta, snapshot }).await;
        if let Err(e) = SnapshotReceiver::discard(vfs, &s.dir) {
            tracing::warn!(shard = s.id.0, error = %e, "could not remove a received snapshot's files");
        }
        installed.map_err(|f| PeerError::Raft(RaftError::Fatal(f)))
    }
}

/// A receive that failed: the sender's mistake is refused with its reason; a disk error here is
/// logged and reported without detail.
fn receive_error(e: &std::io::Error) -> PeerError {
    if e.kind() == std::io::ErrorKind::InvalidInput {
        return PeerError::Snapshot(e.to_string());
    }
    tracing::error!(error = %e, "cannot store a snapshot being received");
    PeerError::Snapshot("the receiver could not store the snapshot".into())
}

#[tonic::async_trait]
impl RaftTransport for Transport {
    async fn append(&self, request: Request<AppendCall>) -> Result<Response<AppendAnswer>, Status> {
        let Extended { head: AppendRequest { shard, msg, quorum_age_ms }, ext: fresh } = request.into_inner();
        let received = tokio::time::Instant::now();
        let commit = msg.leader_commit.as_ref().map_or(0, |l| l.index);
        let reply = match self.shard(shard) {
            Ok(s) => {
                let reply = s.raft.append_entries(msg).await.map_err(PeerError::Raft);
                // Accepted: the sender leads. Its message tells that it is alive, its quorum's
                // age whether it can still commit (health), and what it vouches for bounds the
                // staleness of local reads here.
                if let Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)) = &reply {
                    let fresh = self.node.answers.vouched(fresh);
                    s.heard_from_leader(received, commit, quorum_age_ms.map(Duration::from_millis), fresh);
                }
                reply
            }
            Err(e) => Err(e),
        };
        Ok(Response::new(Extended::new(reply, Some(self.node.answers.stamp()))))
    }

    type AppendStreamStream = futures_util::stream::BoxStream<'static, Result<AppendStreamAnswer, Status>>;

    /// An ordered stream of one shard's AppendEntries from its leader (pipelined replication):
    /// openraft's `stream_append` hands each request to the Raft core in arrival order without
    /// waiting for the one before to be flushed, and answers in the same order.
    async fn append_stream(
        &self,
        request: Request<Streaming<AppendCall>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        use futures_util::StreamExt as _;
        // A node set to one append in flight takes no part in pipelined replication either
        // way: it answers as a build without this method would, and its leaders fall back to
        // unary calls. So streams can be switched off for a node (or, one node at a time, for
        // the cluster) with a restart and no other change.
        if self.node.config.appends_in_flight <= 1 {
            return Err(Status::unimplemented("this node takes no ordered append streams (appends_in_flight = 1)"));
        }
        let shard = request
            .metadata()
            .get(APPEND_STREAM_SHARD_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| Status::invalid_argument("an append stream must name its shard"))?;
        let s = match self.shard(shard) {
            Ok(s) => s,
            Err(e) => {
                let answer = Extended::new(Err(e), None);
                return Ok(Response::new(futures_util::stream::once(async move { Ok(answer) }).boxed()));
            }
        };
        // What each request said about its leader, kept until its answer says it was accepted.
        let contacts = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let pushed = contacts.clone();
        // A broken stream or a request for another shard ends the input; openraft answers
        // what it was given, then the stream ends.
        let (vouching, answering) = (self.node.clone(), self.node.clone());
        let requests = request.into_inner().scan((), move |(), r| {
            let msg = match r {
                Ok(Extended { head: AppendRequest { shard: named, msg, quorum_age_ms }, ext: fresh })
                    if named == shard =>
                {
                    let commit = msg.leader_commit.as_ref().map_or(0, |l| l.index);
                    pushed.lock().expect("contacts lock").push_back((
                        tokio::time::Instant::now(),
                        commit,
                        quorum_age_ms,
                        vouching.answers.vouched(fresh),
                    ));
                    Some(msg)
                }
                Ok(Extended { head: other, .. }) => {
                    tracing::warn!(shard, other = other.shard, "an append stream named another shard: ended");
                    None
                }
                Err(_) => None,
            };
            std::future::ready(msg)
        });
        let replies = s.raft.stream_append(requests).map(move |r| {
            let contact = contacts.lock().expect("contacts lock").pop_front();
            let reply = match r {
                Ok(Ok(matching)) => {
                    if let Some((received, commit, age, fresh)) = contact {
                        s.heard_from_leader(received, commit, age.map(Duration::from_millis), fresh);
                    }
                    Ok(Ok(matching))
                }
                Ok(Err(refused)) => Ok(Err(refused)),
                Err(fatal) => Err(PeerError::Raft(RaftError::Fatal(fatal))),
            };
            Ok(Extended::new(reply, Some(answering.answers.stamp())))
        });
        // The stream lives as long as its leader keeps it open, which a graceful shutdown
        // would wait for forever: it ends when this node stops.
        let mut stop = self.node.stop.subscribe();
        let replies = replies.take_until(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        Ok(Response::new(replies.boxed()))
    }

    async fn vote(&self, request: Request<VoteRequest>) -> Result<Response<VoteReply>, Status> {
        let ShardMsg { shard, msg } = request.into_inner();
        let reply = match self.shard(shard) {
            Ok(s) => s.raft.vote(msg).await.map_err(PeerError::Raft),
            Err(e) => Err(e),
        };
        Ok(Response::new(reply))
    }

    async fn pre_vote(&self, request: Request<VoteRequest>) -> Result<Response<VoteReply>, Status> {
        let ShardMsg { shard, msg } = request.into_inner();
        let reply = match self.shard(shard) {
            Ok(s) => {
                let asker_log = msg.last_log_id;
                let reply = s.raft.pre_vote(msg).await.map_err(PeerError::Raft);
                if let Ok(r) = &reply
                    && !r.vote_granted
                    && r.last_log_id > asker_log
                {
                    s.outranks_candidate.notify_one();
                }
                reply
            }
            Err(e) => Err(e),
        };
        Ok(Response::new(reply))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderReply>, Status> {
        let ShardMsg { shard, msg } = request.into_inner();
        let reply = match self.shard(shard) {
            Ok(s) => s.raft.handle_transfer_leader(msg).await.map_err(|f| PeerError::Raft(RaftError::Fatal(f))),
            Err(e) => Err(e),
        };
        Ok(Response::new(reply))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotReply>, Status> {
        self.receive_snapshot(request.into_inner()).await.map(Response::new)
    }

    async fn snapshot_progress(
        &self,
        request: Request<SnapshotProgressRequest>,
    ) -> Result<Response<SnapshotProgressReply>, Status> {
        let SnapshotProgressRequest { shard, identity } = request.into_inner();
        let reply = self.shard(shard).map(|s| SnapshotReceiver::held(self.node.env.vfs.as_ref(), &s.dir, &identity));
        Ok(Response::new(reply))
    }

    async fn install_snapshot_piece(
        &self,
        request: Request<Streaming<SnapshotPiece>>,
    ) -> Result<Response<SnapshotPieceReply>, Status> {
        self.receive_piece(request.into_inner()).await.map(Response::new)
    }
}

struct Api {
    node: LedgerNode,
}

#[tonic::async_trait]
impl LedgerNodeApi for Api {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        let SubmitRequest { shard, command, timeout_ms } = request.into_inner();
        let timeout = Duration::from_millis(timeout_ms.max(1)).min(SUBMIT_TIMEOUT_MAX);
        Ok(Response::new(self.node.submit(shard, command, timeout).await))
    }

    async fn submit_batch(&self, request: Request<SubmitBatchRequest>) -> Result<Response<SubmitBatchReply>, Status> {
        let SubmitBatchRequest { shard, commands, timeout_ms } = request.into_inner();
        let timeout = Duration::from_millis(timeout_ms.max(1)).min(SUBMIT_TIMEOUT_MAX);
        Ok(Response::new(self.node.submit_batch(shard, commands, timeout).await))
    }

    async fn balance(&self, request: Request<BalanceRequest>) -> Result<Response<BalanceReply>, Status> {
        let BalanceRequest { shard, account, consistency } = request.into_inner();
        Ok(Response::new(self.node.balance(shard, &account, consistency).await))
    }

    async fn entries(&self, request: Request<EntriesRequest>) -> Result<Response<EntriesReply>, Status> {
        let EntriesRequest { shard, from_seq, limit } = request.into_inner();
        Ok(Response::new(self.node.entries(shard, from_seq, limit)))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(self.node.status()))
    }

    async fn verify(&self, request: Request<VerifyRequest>) -> Result<Response<VerifyReply>, Status> {
        // A replay of the whole history is seconds of CPU and reads for a long journal: off the
        // runtime's workers, which the node's commits share (in place under the simulator).
        let (node, shard) = (self.node.clone(), request.into_inner().shard);
        let report = self.node.inner.env.io.blocking(move || node.verify(shard)).await;
        Ok(Response::new(report.map_err(|_| Status::internal("the verification failed unexpectedly"))?))
    }

    async fn change_membership(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let MembershipRequest { shard, change, timeout_ms } = request.into_inner();
        let timeout = Duration::from_millis(timeout_ms.max(1)).min(MEMBERSHIP_TIMEOUT_MAX);
        Ok(Response::new(self.node.change_membership(shard, change, timeout).await))
    }

    async fn initialize(&self, request: Request<InitializeRequest>) -> Result<Response<InitializeReply>, Status> {
        let InitializeRequest { shard, members } = request.into_inner();
        Ok(Response::new(self.node.initialize_shard(shard, &members).await))
    }
}
