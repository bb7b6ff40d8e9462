//! The node's gRPC services, served by the runtime: the Raft transport peers call and the node
//! API clients call. Their wire types are `net::wire`'s; the network itself is `net`'s.

use std::sync::Arc;
use std::time::Duration;

use openraft::errors::RaftError;
use openraft::raft::AppendEntriesResponse;
use tonic::{Request, Response, Status, Streaming};

use super::{LedgerNode, NodeInner, Shard};
use crate::net::generated::ledger_node_server::{LedgerNode as LedgerNodeApi, LedgerNodeServer};
use crate::net::generated::raft_transport_server::{RaftTransport, RaftTransportServer};
use crate::net::peer::RAFT_MESSAGE_BYTES_MAX;
use crate::net::wire::*;
use crate::store::state_machine::SnapshotReceiver;

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
        let _one_at_a_time = s.snapshot_lock.lock().await;
        let io = |e: std::io::Error| Status::internal(format!("storing snapshot: {e}"));
        let mut receiver = SnapshotReceiver::begin(self.node.env.vfs.as_ref(), &s.dir).map_err(io)?;
        let mut written = 0u64;
        while let Some(chunk) = stream.message().await? {
            let SnapshotChunk::Journal(bytes) = chunk else {
                return Ok(Err(PeerError::Snapshot("a second header in one stream".into())));
            };
            written += bytes.len() as u64;
            if written > journal_bytes {
                return Ok(Err(PeerError::Snapshot("more journal than the header announced".into())));
            }
            receiver.write(&bytes).map_err(io)?;
        }
        if written != journal_bytes {
            return Ok(Err(PeerError::Snapshot(format!("journal ended at {written} of {journal_bytes} bytes"))));
        }
        let snapshot = openraft::Snapshot { meta, snapshot: receiver.finish(state, journal_entries) };
        Ok(s.raft.install_full_snapshot(vote, snapshot).await.map_err(|f| PeerError::Raft(RaftError::Fatal(f))))
    }
}

#[tonic::async_trait]
impl RaftTransport for Transport {
    async fn append(&self, request: Request<AppendRequest>) -> Result<Response<AppendReply>, Status> {
        let AppendRequest { shard, msg, quorum_age_ms } = request.into_inner();
        let received = tokio::time::Instant::now();
        let commit = msg.leader_commit.as_ref().map_or(0, |l| l.index);
        let reply = match self.shard(shard) {
            Ok(s) => {
                let reply = s.raft.append_entries(msg).await.map_err(PeerError::Raft);
                // Accepted: the sender leads, and had acknowledged nothing past `commit` when
                // it sent this; what bounds the staleness of local reads here. Its quorum's age
                // tells whether it can still commit (health).
                if let Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)) = &reply {
                    s.heard_from_leader(received, commit, quorum_age_ms.map(Duration::from_millis));
                }
                reply
            }
            Err(e) => Err(e),
        };
        Ok(Response::new(reply))
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
        Ok(Response::new(self.node.verify(request.into_inner().shard)))
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
