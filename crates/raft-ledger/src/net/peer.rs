//! Sending Raft messages to peers: one gRPC channel per peer node, shared by every shard.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft_multi::{GroupNetworkAdapter, GroupRouter};
use tonic::transport::Channel;

use super::env::Net;
use super::generated::raft_transport_client::RaftTransportClient;
use super::wire::{PeerError, ShardMsg, SnapshotChunk};
use crate::raft::{NodeId, NodeInfo, TypeConfig, Vote};
use crate::store::LedgerSnapshot;

/// Journal bytes per snapshot stream message.
const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;
/// Raft messages can be large (batches of entries); allow up to this many bytes.
pub(crate) const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;

type Rpc<T> = Result<T, RPCError<TypeConfig>>;

struct Peer {
    addr: String,
    client: RaftTransportClient<Channel>,
}

/// Routes Raft messages of every shard to peer nodes over shared channels.
#[derive(Clone)]
pub(crate) struct PeerRouter {
    me: NodeId,
    net: Net,
    peers: Arc<Mutex<BTreeMap<NodeId, Peer>>>,
}

impl PeerRouter {
    pub(crate) fn new(me: NodeId, net: Net) -> Self {
        Self { me, net, peers: Arc::new(Mutex::new(BTreeMap::new())) }
    }

    /// Remembers (or updates) a peer's address; the channel is created on first use.
    fn learn(&self, id: NodeId, addr: &str) {
        let mut peers = self.peers.lock().expect("peers lock");
        if peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        match self.net.channel(addr) {
            Ok(channel) => {
                let client = RaftTransportClient::new(channel)
                    .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
                peers.insert(id, Peer { addr: addr.to_string(), client });
            }
            Err(e) => tracing::warn!(peer = id, addr, "invalid peer address: {e}"),
        }
    }

    fn client(&self, target: NodeId) -> Result<RaftTransportClient<Channel>, Unreachable<TypeConfig>> {
        self.peers
            .lock()
            .expect("peers lock")
            .get(&target)
            .map(|p| p.client.clone())
            .ok_or_else(|| Unreachable::from_string(format!("no address known for node {target}")))
    }

    fn timeout(&self, action: RPCTypes, target: NodeId, timeout: Duration) -> Timeout<TypeConfig> {
        Timeout { action, id: self.me, target, timeout }
    }

    /// Runs one unary call with the option's deadline and maps every failure to an RPC error.
    async fn call<T, F, Fut>(&self, action: RPCTypes, target: NodeId, option: RPCOption, f: F) -> Rpc<T>
    where
        F: FnOnce(RaftTransportClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Result<T, PeerError>>, tonic::Status>>,
    {
        let client = self.client(target)?;
        let ttl = option.hard_ttl();
        match tokio::time::timeout(ttl, f(client)).await {
            Err(_) => Err(RPCError::Timeout(self.timeout(action, target, ttl))),
            Ok(Err(status)) => Err(status_error(&status)),
            Ok(Ok(reply)) => reply.into_inner().map_err(|e| peer_error(&e)),
        }
    }
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
        let ttl = option.hard_ttl();
        self.call(
            RPCTypes::AppendEntries,
            target,
            option,
            |mut c| async move { c.append(request(shard, rpc, ttl)).await },
        )
        .await
    }

    async fn vote(
        &self,
        target: NodeId,
        shard: u32,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<TypeConfig>> {
        let ttl = option.hard_ttl();
        self.call(RPCTypes::Vote, target, option, |mut c| async move { c.vote(request(shard, rpc, ttl)).await }).await
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        shard: u32,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<TypeConfig>> {
        let ttl = option.hard_ttl();
        self.call(RPCTypes::Vote, target, option, |mut c| async move { c.pre_vote(request(shard, rpc, ttl)).await })
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
        let mut client = self.client(target)?;
        let data = snapshot.snapshot;
        let journal = data.journal.clone();
        let header = SnapshotChunk::Header {
            shard,
            vote,
            meta: snapshot.meta,
            state: data.state.to_vec(),
            journal_entries: journal.entries,
            journal_bytes: journal.bytes,
        };
        let body = futures_util::stream::unfold(0u64, move |offset| {
            let journal = journal.clone();
            async move {
                if offset >= journal.bytes {
                    return None;
                }
                let n = SNAPSHOT_CHUNK_BYTES.min(journal.bytes - offset);
                let mut buf = vec![0u8; n as usize];
                if let Err(e) = journal.read_at(offset, &mut buf) {
                    // Ending early makes the receiver reject the snapshot as short; the leader
                    // retries the transfer.
                    tracing::warn!("snapshot journal read failed at {offset}: {e}");
                    return None;
                }
                Some((SnapshotChunk::Journal(buf), offset + n))
            }
        });
        let chunks = futures_util::stream::once(async move { header }).chain(body);
        let ttl = option.hard_ttl();
        let send = tokio::time::timeout(ttl, client.install_snapshot(chunks));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => match result {
                Err(_) => Err(StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, target, ttl))),
                Ok(Err(status)) => Err(status_error(&status).into()),
                Ok(Ok(reply)) => reply.into_inner().map_err(|e| {
                    StreamingError::Unreachable(Unreachable::from_string(e.to_string()))
                }),
            },
        }
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        shard: u32,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<TransferLeaderResponse<TypeConfig>> {
        let ttl = option.hard_ttl();
        self.call(RPCTypes::TransferLeader, target, option, |mut c| async move {
            c.transfer_leader(request(shard, req, ttl)).await
        })
        .await
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
    type Network = GroupNetworkAdapter<TypeConfig, u32, PeerRouter>;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        self.router.learn(target, &node.addr);
        GroupNetworkAdapter::new(self.router.clone(), target, self.shard)
    }
}
