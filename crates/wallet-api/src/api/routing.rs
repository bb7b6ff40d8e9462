//! `casino.wallet.v1.Routing`: pushes who leads each shard this node hosts to the geo-routers
//! in front of the cluster, so they send every call straight to its shard's leader. Only the
//! cluster's own infrastructure may subscribe: a call must carry the cluster's member token.

use std::pin::Pin;

use raft_ledger::api::ShardLeader;
use raft_ledger::net::member::{CLUSTER_AUTH_HEADER, ClusterKey};
use raft_ledger::node::LedgerNode;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::pb;
use super::pb::routing_server::{Routing, RoutingServer};

/// The routing service of one node.
#[derive(Clone)]
pub struct RoutingService {
    node: LedgerNode,
    key: ClusterKey,
    draining: watch::Receiver<bool>,
}

impl RoutingService {
    /// The service for `node`, admitting callers that hold `key`, ending streams on `draining`.
    pub fn new(node: LedgerNode, key: ClusterKey, draining: watch::Receiver<bool>) -> Self {
        Self { node, key, draining }
    }

    /// The tonic server for it.
    pub fn into_server(self) -> RoutingServer<Self> {
        RoutingServer::new(self)
    }

    fn table(&self) -> pb::LeaderTable {
        let info = &self.node.config().info;
        pb::LeaderTable {
            node_id: self.node.id(),
            region: info.region.clone(),
            shards: self.node.leaders().into_iter().map(shard_leader).collect(),
        }
    }
}

fn routing_node(id: u64, info: &ledger_core::NodeInfo) -> pb::RoutingNode {
    pb::RoutingNode {
        node_id: id,
        api_addr: info.api_addr.clone(),
        region: info.region.clone(),
        zone: info.zone.clone(),
    }
}

fn shard_leader(s: ShardLeader) -> pb::ShardLeader {
    pb::ShardLeader {
        shard: s.shard,
        term: s.term,
        leader: s.leader.as_ref().map(|(id, info)| routing_node(*id, info)),
        voters: s.voters.iter().map(|(id, info)| routing_node(*id, info)).collect(),
    }
}

type TableStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LeaderTable, Status>> + Send>>;

#[tonic::async_trait]
impl Routing for RoutingService {
    type WatchLeadersStream = TableStream;

    async fn watch_leaders(
        &self,
        req: Request<pb::WatchLeadersRequest>,
    ) -> Result<Response<Self::WatchLeadersStream>, Status> {
        match req.metadata().get(CLUSTER_AUTH_HEADER) {
            Some(v) if self.key.admits(v.as_bytes()) => {}
            _ => return Err(Status::unauthenticated("routing is for the cluster's own routers: no valid cluster key")),
        }
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut changes = this.node.leadership();
            let mut draining = this.draining.clone();
            loop {
                changes.mark_unchanged();
                if tx.send(Ok(this.table())).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = super::service::wait_true(&mut draining) => {
                        let _ = tx.send(Err(super::errors::shutting_down())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
