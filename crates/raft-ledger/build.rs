//! Generates the tonic client and server code of the node's two gRPC services.
//!
//! Both carry Rust types encoded with postcard (see `src/net/codec.rs`) rather than protobuf:
//! they are internal to the cluster, and the Raft messages they carry are openraft's own types.
//! The public, protobuf-described API is the wallet API crate's job.

use tonic_build::manual::{Builder, Method, Service};

fn unary(name: &str, route: &str, input: &str, output: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("crate::net::wire::{input}"))
        .output_type(format!("crate::net::wire::{output}"))
        .codec_path("crate::net::codec::PostcardCodec")
        .build()
}

fn main() {
    let transport = Service::builder()
        .name("RaftTransport")
        .package("raftledger.v1")
        .method(unary("append", "Append", "AppendCall", "AppendAnswer"))
        .method(
            Method::builder()
                .name("append_stream")
                .route_name("AppendStream")
                .input_type("crate::net::wire::AppendCall")
                .output_type("crate::net::wire::AppendStreamAnswer")
                .codec_path("crate::net::codec::PostcardCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .method(unary("vote", "Vote", "VoteRequest", "VoteReply"))
        .method(unary("pre_vote", "PreVote", "VoteRequest", "VoteReply"))
        .method(unary("transfer_leader", "TransferLeader", "TransferLeaderRequest", "TransferLeaderReply"))
        .method(
            Method::builder()
                .name("install_snapshot")
                .route_name("InstallSnapshot")
                .input_type("crate::net::wire::SnapshotChunk")
                .output_type("crate::net::wire::SnapshotReply")
                .codec_path("crate::net::codec::PostcardCodec")
                .client_streaming()
                .build(),
        )
        .method(unary("snapshot_progress", "SnapshotProgress", "SnapshotProgressRequest", "SnapshotProgressReply"))
        .method(
            Method::builder()
                .name("install_snapshot_piece")
                .route_name("InstallSnapshotPiece")
                .input_type("crate::net::wire::SnapshotPiece")
                .output_type("crate::net::wire::SnapshotPieceReply")
                .codec_path("crate::net::codec::PostcardCodec")
                .client_streaming()
                .build(),
        )
        .build();
    let ledger = Service::builder()
        .name("LedgerNode")
        .package("raftledger.v1")
        .method(unary("submit", "Submit", "SubmitRequest", "SubmitReply"))
        .method(unary("submit_batch", "SubmitBatch", "SubmitBatchRequest", "SubmitBatchReply"))
        .method(unary("balance", "Balance", "BalanceRequest", "BalanceReply"))
        .method(unary("entries", "Entries", "EntriesRequest", "EntriesReply"))
        .method(unary("status", "Status", "StatusRequest", "StatusReply"))
        .method(unary("verify", "Verify", "VerifyRequest", "VerifyReply"))
        .method(unary("change_membership", "ChangeMembership", "MembershipRequest", "MembershipReply"))
        .method(unary("initialize", "Initialize", "InitializeRequest", "InitializeReply"))
        .build();
    Builder::new().compile(&[transport, ledger]);
}
