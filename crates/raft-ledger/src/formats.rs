//! Golden bytes for the node API and the Raft log's payloads, and the helpers the write-ahead
//! log's and the snapshot file's own format tests share.
//!
//! The node API (package `raftledger.v1`) carries postcard: an enum variant is tagged by its
//! position, a `#[repr(u8)]` enum (serde_repr) by its discriminant, and openraft's own
//! messages by openraft's serde derives (so an openraft upgrade that changes them fails here
//! too). A test that fails means bytes changed: undo it, or bump the format it reaches (the
//! node API's package version, `DATA_FORMAT`, the snapshot or WAL version) and update the pin.
//! The tag functions match without a wildcard, so a new variant does not compile until it has
//! a tag here.

use std::collections::{BTreeMap, BTreeSet};

use openraft::entry::RaftEntry as _;
use openraft::errors::{Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use sha2::{Digest, Sha256};

use crate::api::{
    BalanceView, CommitHealth, LedgerError, MembershipChange, MembershipView, NodeStatus, ReadConsistency, ReplicaRole,
    ShardStatus, VerifyReport,
};
use crate::net::wire::{
    AppendCall, AppendRequest, BalanceRequest, EntriesRequest, Extended, Freshness, InitializeRequest,
    MembershipRequest, PeerError, PieceOutcome, ReplyStamp, ShardMsg, SnapshotChunk, SnapshotIdentity, SnapshotPiece,
    SnapshotProgress, SnapshotProgressRequest, StatusRequest, SubmitBatchRequest, SubmitRequest, VerifyRequest,
};
use crate::raft::{LogId, NodeId, NodeInfo, Proposal, RaftEntry, Reply, Request, SnapshotMeta, StoredMembership, Vote};
use ledger_core::{
    AccountRef, Amount, Balance, ClusterTime, Command, Currency, IdField, Outcome, PlayerId, Receipt, Rejection, TxId,
};

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn postcard<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("serialises")
}

/// Fails when `bytes` are not `expected` (hex), naming what changed.
#[track_caller]
pub(crate) fn pinned(what: &str, bytes: &[u8], expected: &str) {
    assert_eq!(
        hex(bytes),
        expected,
        "the encoding of {what} changed: bump the version of the format it reaches and update the pin"
    );
}

/// As [`pinned`], for an encoding too long to read: its SHA-256.
#[track_caller]
pub(crate) fn pinned_digest(what: &str, bytes: &[u8], expected: &str) {
    pinned(what, &Sha256::digest(bytes), expected);
}

pub(crate) fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<crate::raft::TypeConfig>(term, 1, index)
}

pub(crate) fn node(n: NodeId) -> NodeInfo {
    NodeInfo {
        api_addr: format!("10.0.0.{n}:8000"),
        ..NodeInfo::new(format!("10.0.0.{n}:7000"), "eu", format!("eu-{n}"))
    }
}

pub(crate) fn deposit() -> Command {
    Command::Deposit {
        tx: TxId::new("d1").unwrap(),
        player: PlayerId::new("alice").unwrap(),
        currency: Currency::new("EUR").unwrap(),
        amount: Amount::new(10_000).unwrap(),
    }
}

pub(crate) fn membership() -> openraft::Membership<NodeId, NodeInfo> {
    openraft::Membership::new(vec![BTreeSet::from([1, 2, 3])], BTreeMap::from([1, 2, 3, 4].map(|n| (n, node(n)))))
        .expect("a valid membership")
}

/// One Raft log entry of each payload kind: what the WAL stores and AppendEntries carries.
pub(crate) fn raft_entries() -> Vec<RaftEntry> {
    let at = ClusterTime::from_millis(1_700_000_000_000);
    vec![
        RaftEntry::new_blank(log_id(1, 1)),
        RaftEntry::new_normal(log_id(1, 2), Proposal { at, request: Request::Commands(vec![deposit()]) }),
        RaftEntry::new_normal(log_id(1, 3), Proposal { at, request: Request::Tick }),
        RaftEntry::new_membership(log_id(1, 4), membership()),
    ]
}

pub(crate) fn vote() -> Vote {
    openraft::Vote::new_committed(2, 1)
}

pub(crate) fn snapshot_meta() -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(2, 9)),
        last_membership: StoredMembership::new(Some(log_id(1, 4)), membership()),
    }
}

fn request_tag(r: &Request) -> u8 {
    match r {
        Request::Commands(_) => 0,
        Request::Tick => 1,
    }
}

fn reply_tag(r: &Reply) -> u8 {
    match r {
        Reply::Outcomes(_) => 0,
        Reply::Ticked => 1,
    }
}

fn ledger_error_tag(e: &LedgerError) -> u8 {
    match e {
        LedgerError::NotLeader { .. } => 0,
        LedgerError::UnknownShard(_) => 1,
        LedgerError::WrongShard { .. } => 2,
        LedgerError::NoShard => 3,
        LedgerError::Invalid(_) => 4,
        LedgerError::Timeout => 5,
        LedgerError::Unavailable(_) => 6,
        LedgerError::Membership(_) => 7,
        LedgerError::UnknownRegion(_) => 8,
    }
}

fn membership_change_tag(c: &MembershipChange) -> u8 {
    match c {
        MembershipChange::AddVoter { .. } => 0,
        MembershipChange::AddLearner { .. } => 1,
        MembershipChange::Remove { .. } => 2,
        MembershipChange::Replace { .. } => 3,
    }
}

fn peer_error_tag(e: &PeerError) -> u8 {
    match e {
        PeerError::UnknownShard(_) => 0,
        PeerError::Raft(_) => 1,
        PeerError::Snapshot(_) => 2,
    }
}

fn snapshot_chunk_tag(c: &SnapshotChunk) -> u8 {
    match c {
        SnapshotChunk::Header { .. } => 0,
        SnapshotChunk::Journal(_) => 1,
    }
}

fn snapshot_piece_tag(p: &SnapshotPiece) -> u8 {
    match p {
        SnapshotPiece::Header { .. } => 0,
        SnapshotPiece::State(_) => 1,
        SnapshotPiece::Journal(_) => 2,
    }
}

fn piece_outcome_tag(o: &PieceOutcome) -> u8 {
    match o {
        PieceOutcome::Stored(_) => 0,
        PieceOutcome::Installed(_) => 1,
    }
}

fn read_consistency_tag(c: ReadConsistency) -> u8 {
    match c {
        ReadConsistency::Linearizable => 0,
        ReadConsistency::Local => 1,
    }
}

fn commit_health_tag(h: CommitHealth) -> u8 {
    match h {
        CommitHealth::Leader => 0,
        CommitHealth::Follower => 1,
        CommitHealth::NoLeader => 2,
        CommitHealth::NoQuorum => 3,
    }
}

fn replica_role_tag(r: ReplicaRole) -> u8 {
    match r {
        ReplicaRole::Leader => 0,
        ReplicaRole::Follower => 1,
        ReplicaRole::Candidate => 2,
        ReplicaRole::Learner => 3,
        ReplicaRole::Shutdown => 4,
    }
}

#[test]
fn the_raft_log_payloads_encode_as_pinned() {
    let entries = raft_entries();
    let expected = [
        "010100",
        "01020180d095ffbc3100010102643105616c69636503455552904e",
        "01030180d095ffbc3101",
        "010402010301020304010d31302e302e302e313a373030300265750465752d310d31302e302e302e313a38303030020d31302e302e302e323a373030300265750465752d320d31302e302e302e323a38303030030d31302e302e302e333a373030300265750465752d330d31302e302e302e333a38303030040d31302e302e302e343a373030300265750465752d340d31302e302e302e343a38303030",
    ];
    for (entry, expected) in entries.iter().zip(expected) {
        pinned(&format!("raft entry {entry}"), &postcard(entry), expected);
    }
    for request in [Request::Commands(vec![deposit()]), Request::Tick] {
        assert_eq!(postcard(&request)[0], request_tag(&request));
    }
    let receipt = Receipt { seq: Some(1), at: ClusterTime::from_millis(5), balances: Vec::new() };
    for (reply, expected) in
        [(Reply::Outcomes(vec![Outcome::Applied(receipt)]), "00010001010500"), (Reply::Ticked, "01")]
    {
        let bytes = postcard(&reply);
        assert_eq!(bytes[0], reply_tag(&reply));
        pinned(&format!("{reply:?}"), &bytes, expected);
    }
}

#[test]
fn the_node_api_enums_encode_as_their_tags() {
    for c in [ReadConsistency::Linearizable, ReadConsistency::Local] {
        assert_eq!(postcard(&c), [read_consistency_tag(c)]);
    }
    for h in [CommitHealth::Leader, CommitHealth::Follower, CommitHealth::NoLeader, CommitHealth::NoQuorum] {
        assert_eq!(postcard(&h), [commit_health_tag(h)]);
    }
    let roles = [ReplicaRole::Leader, ReplicaRole::Follower, ReplicaRole::Candidate, ReplicaRole::Learner];
    for r in roles.into_iter().chain([ReplicaRole::Shutdown]) {
        assert_eq!(postcard(&r), [replica_role_tag(r)]);
    }
    let errors = [
        (
            LedgerError::not_leader(4, Some(2), Some(&node(2))),
            "00040102010d31302e302e302e323a37303030010d31302e302e302e323a38303030",
        ),
        (LedgerError::UnknownShard(9), "0109"),
        (LedgerError::WrongShard { expected: 1, requested: 2 }, "020102"),
        (LedgerError::NoShard, "03"),
        (LedgerError::Invalid(Rejection::InvalidId(IdField::Player)), "040201"),
        (LedgerError::Timeout, "05"),
        (LedgerError::Unavailable("x".into()), "060178"),
        (LedgerError::Membership("x".into()), "070178"),
        (LedgerError::UnknownRegion("x".into()), "080178"),
    ];
    for (e, expected) in &errors {
        let bytes = postcard(e);
        assert_eq!(bytes[0], ledger_error_tag(e));
        pinned(&format!("{e:?}"), &bytes, expected);
    }
    let changes = [
        (
            MembershipChange::AddVoter { node: 4, info: node(4) },
            "00040d31302e302e302e343a373030300265750465752d340d31302e302e302e343a38303030",
        ),
        (
            MembershipChange::AddLearner { node: 4, info: node(4) },
            "01040d31302e302e302e343a373030300265750465752d340d31302e302e302e343a38303030",
        ),
        (MembershipChange::Remove { node: 4 }, "0204"),
        (
            MembershipChange::Replace { old: 3, node: 4, info: node(4) },
            "0303040d31302e302e302e343a373030300265750465752d340d31302e302e302e343a38303030",
        ),
    ];
    for (c, expected) in &changes {
        let bytes = postcard(c);
        assert_eq!(bytes[0], membership_change_tag(c));
        pinned(&format!("{c:?}"), &bytes, expected);
    }
}

/// An AppendEntries for shard 3 carrying one command entry.
fn append_request() -> AppendRequest {
    AppendRequest {
        shard: 3,
        msg: AppendEntriesRequest {
            vote: vote(),
            prev_log_id: Some(log_id(1, 1)),
            entries: raft_entries()[1..2].to_vec(),
            leader_commit: Some(log_id(1, 1)),
        },
        quorum_age_ms: Some(12),
    }
}

#[test]
fn the_peer_messages_encode_as_pinned() {
    let append = append_request();
    pinned(
        "AppendRequest",
        &postcard(&append),
        "03020101010101010101020180d095ffbc3100010102643105616c69636503455552904e010101010c",
    );
    let append_replies: [(crate::net::wire::AppendReply, &str); 5] = [
        (Ok(AppendEntriesResponse::Success), "0000"),
        (Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(1, 2)))), "0001010102"),
        (Ok(AppendEntriesResponse::Conflict), "0002"),
        (Ok(AppendEntriesResponse::HigherVote(vote())), "000302010101"),
        (Err(PeerError::UnknownShard(3)), "010003"),
    ];
    for (reply, expected) in &append_replies {
        pinned(&format!("{reply:?}"), &postcard(reply), expected);
    }
    use openraft::raft::StreamAppendError;
    let stream_replies: [(crate::net::wire::AppendStreamReply, &str); 5] = [
        (Ok(Ok(Some(log_id(1, 2)))), "0000010102"),
        (Ok(Ok(None)), "000000"),
        (Ok(Err(StreamAppendError::Conflict(log_id(1, 1)))), "0001000101"),
        (Ok(Err(StreamAppendError::HigherVote(vote()))), "00010102010101"),
        (Err(PeerError::UnknownShard(3)), "010003"),
    ];
    for (reply, expected) in &stream_replies {
        pinned(&format!("{reply:?}"), &postcard(reply), expected);
    }
    // What the calls carry since freshness was added: the message as before, then the addition.
    let fresh = Freshness { stamp: ReplyStamp { incarnation: 5, micros: 300 }, applied: 7 };
    let call = Extended::new(append, Some(fresh));
    let call_bytes = postcard(&call);
    pinned(
        "AppendCall",
        &call_bytes,
        "03020101010101010101020180d095ffbc3100010102643105616c69636503455552904e010101010c0105ac0207",
    );
    let answer: crate::net::wire::AppendAnswer =
        Extended::new(Ok(AppendEntriesResponse::Success), Some(ReplyStamp { incarnation: 5, micros: 300 }));
    pinned("AppendAnswer", &postcard(&answer), "00000105ac02");
    let stream_answer: crate::net::wire::AppendStreamAnswer = Extended::new(Ok(Ok(None)), None);
    pinned("AppendStreamAnswer", &postcard(&stream_answer), "00000000");
}

/// A rolling upgrade mixes builds from before and after an [`Extended`] message's addition:
/// each reads what the other sends, the older one without the addition.
#[test]
fn extended_messages_are_read_by_builds_on_either_side_of_the_addition() {
    let request = append_request;
    let fresh = Freshness { stamp: ReplyStamp { incarnation: u64::MAX, micros: 1 << 40 }, applied: 7 };
    let old_bytes = postcard(&request());
    // An older build's request, read by this one: no addition.
    let read: AppendCall = postcard::from_bytes(&old_bytes).expect("an older build's request reads");
    assert_eq!(postcard(&read.head), old_bytes);
    assert_eq!(read.ext, None);
    // This build's request, read by an older one (the message before the addition) and by this.
    let new_bytes = postcard(&Extended::new(request(), Some(fresh)));
    let by_older: AppendRequest = postcard::from_bytes(&new_bytes).expect("an older build reads it");
    assert_eq!(postcard(&by_older), old_bytes);
    let by_this: AppendCall = postcard::from_bytes(&new_bytes).expect("this build reads it");
    assert_eq!((postcard(&by_this.head), by_this.ext), (old_bytes.clone(), Some(fresh)));
    // A torn addition counts as none: the message itself was whole.
    let torn: AppendCall = postcard::from_bytes(&new_bytes[..new_bytes.len() - 1]).expect("reads");
    assert_eq!(torn.ext, None);
    // A torn message is refused, addition or not.
    assert!(postcard::from_bytes::<AppendCall>(&old_bytes[..old_bytes.len() - 1]).is_err());
    // The answers, both ways.
    let stamp = ReplyStamp { incarnation: 9, micros: 12_345 };
    let old_answer: crate::net::wire::AppendReply = Ok(AppendEntriesResponse::Conflict);
    let read: crate::net::wire::AppendAnswer = postcard::from_bytes(&postcard(&old_answer)).expect("reads");
    assert_eq!((postcard(&read.head), read.ext), (postcard(&old_answer), None));
    let old_answer: crate::net::wire::AppendStreamReply = Ok(Ok(Some(log_id(1, 2))));
    let new_answer: crate::net::wire::AppendStreamAnswer = Extended::new(Ok(Ok(Some(log_id(1, 2)))), Some(stamp));
    let by_older: crate::net::wire::AppendStreamReply =
        postcard::from_bytes(&postcard(&new_answer)).expect("an older build reads it");
    assert_eq!(postcard(&by_older), postcard(&old_answer));
    let by_this: crate::net::wire::AppendStreamAnswer = postcard::from_bytes(&postcard(&new_answer)).expect("reads");
    assert_eq!(by_this.ext, Some(stamp));
    let vote_request =
        ShardMsg { shard: 3, msg: VoteRequest::<crate::raft::TypeConfig>::new(vote(), Some(log_id(1, 2))) };
    pinned("VoteRequest", &postcard(&vote_request), "030201010101010200");
    let vote_reply: crate::net::wire::VoteReply = Ok(VoteResponse::new(vote(), Some(log_id(1, 2)), true));
    pinned("VoteReply", &postcard(&vote_reply), "000201010101010102");
    let transfer = ShardMsg {
        shard: 3,
        msg: openraft::raft::TransferLeaderRequest::<crate::raft::TypeConfig>::new(vote(), 2, Some(log_id(1, 2))),
    };
    pinned("TransferLeaderRequest", &postcard(&transfer), "030201010102010102");
    let snapshot_reply: crate::net::wire::SnapshotReply = Ok(SnapshotResponse::new(vote()));
    pinned("SnapshotReply", &postcard(&snapshot_reply), "0002010101");
    let peer_errors = [
        (PeerError::UnknownShard(3), "0003"),
        (PeerError::Raft(RaftError::Fatal(Fatal::Stopped)), "010102"),
        (PeerError::Snapshot("torn".into()), "0204746f726e"),
    ];
    for (e, expected) in &peer_errors {
        let bytes = postcard(e);
        assert_eq!(bytes[0], peer_error_tag(e));
        pinned(&format!("{e:?}"), &bytes, expected);
    }
    let chunks = [
        (
            SnapshotChunk::Header {
                shard: 3,
                vote: vote(),
                meta: snapshot_meta(),
                state: vec![1, 2, 3],
                journal_entries: 7,
                journal_bytes: 700,
            },
            "000302010101010209010104010301020304010d31302e302e302e313a373030300265750465752d310d31302e302e302e313a38303030020d31302e302e302e323a373030300265750465752d320d31302e302e302e323a38303030030d31302e302e302e333a373030300265750465752d330d31302e302e302e333a38303030040d31302e302e302e343a373030300265750465752d340d31302e302e302e343a38303030000301020307bc05",
        ),
        (SnapshotChunk::Journal(vec![9, 8, 7]), "0103090807"),
    ];
    for (c, expected) in &chunks {
        let bytes = postcard(c);
        assert_eq!(bytes[0], snapshot_chunk_tag(c));
        pinned("a snapshot chunk", &bytes, expected);
    }
}

#[test]
fn the_snapshot_piece_messages_encode_as_pinned() {
    let identity = SnapshotIdentity {
        last_log_id: Some(log_id(1, 9)),
        state_bytes: 300,
        state_digest: [7; 32],
        journal_entries: 9,
        journal_bytes: 900,
        journal_head: [8; 32],
    };
    pinned(
        "SnapshotProgressRequest",
        &postcard(&SnapshotProgressRequest { shard: 3, identity: identity.clone() }),
        "03010109ac0207070707070707070707070707070707070707070707070707070707070707070984070808080808080808080808080808080808080808080808080808080808080808",
    );
    let progress = SnapshotProgress { state_bytes: 300, journal_bytes: 5 };
    let progress_reply: crate::net::wire::SnapshotProgressReply = Ok(progress);
    pinned("SnapshotProgressReply", &postcard(&progress_reply), "00ac0205");
    let pieces = [
        (
            SnapshotPiece::Header {
                shard: 3,
                vote: vote(),
                meta: snapshot_meta(),
                identity,
                state_from: 300,
                journal_from: 5,
            },
            "000302010101010209010104010301020304010d31302e302e302e313a373030300265750465752d310d31302e302e302e313a38303030020d31302e302e302e323a373030300265750465752d320d31302e302e302e323a38303030030d31302e302e302e333a373030300265750465752d330d31302e302e302e333a38303030040d31302e302e302e343a373030300265750465752d340d31302e302e302e343a3830303000010109ac0207070707070707070707070707070707070707070707070707070707070707070984070808080808080808080808080808080808080808080808080808080808080808ac0205",
        ),
        (SnapshotPiece::State(vec![1, 2]), "01020102"),
        (SnapshotPiece::Journal(vec![9, 8, 7]), "0203090807"),
    ];
    for (p, expected) in &pieces {
        let bytes = postcard(p);
        assert_eq!(bytes[0], snapshot_piece_tag(p));
        pinned("a snapshot piece", &bytes, expected);
    }
    let outcomes: [(crate::net::wire::SnapshotPieceReply, &str); 3] = [
        (Ok(PieceOutcome::Stored(progress)), "0000ac0205"),
        (Ok(PieceOutcome::Installed(SnapshotResponse::new(vote()))), "000102010101"),
        (Err(PeerError::Snapshot("torn".into())), "010204746f726e"),
    ];
    for (o, expected) in &outcomes {
        let bytes = postcard(o);
        if let Ok(o) = o {
            assert_eq!(bytes[1], piece_outcome_tag(o));
        }
        pinned(&format!("{o:?}"), &bytes, expected);
    }
}

#[test]
fn the_client_messages_encode_as_pinned() {
    let eur = Currency::new("EUR").unwrap();
    let alice = AccountRef::player(PlayerId::new("alice").unwrap(), eur);
    pinned(
        "SubmitRequest",
        &postcard(&SubmitRequest { shard: None, command: deposit(), timeout_ms: 2_000 }),
        "000102643105616c69636503455552904ed00f",
    );
    pinned(
        "SubmitBatchRequest",
        &postcard(&SubmitBatchRequest { shard: 1, commands: vec![deposit(), deposit()], timeout_ms: 2_000 }),
        "01020102643105616c69636503455552904e0102643105616c69636503455552904ed00f",
    );
    let rejected: crate::net::wire::SubmitReply = Ok(Outcome::Rejected(Rejection::InsufficientFunds));
    pinned("SubmitReply", &postcard(&rejected), "00020a");
    let balance = BalanceRequest { shard: Some(1), account: alice, consistency: ReadConsistency::Local };
    pinned("BalanceRequest", &postcard(&balance), "01010005616c6963650345555201");
    let view: crate::net::wire::BalanceReply = Ok(BalanceView {
        shard: 1,
        balance: Some(Balance { posted: 10_000, held: 2_500 }),
        applied_index: Some(41),
        journal_len: 17,
        last_at: ClusterTime::from_millis(1_700_000_000_000),
        consistency: ReadConsistency::Local,
        staleness_ms: Some(250),
    });
    pinned("BalanceReply", &postcard(&view), "000101a09c01882701291180d095ffbc310101fa01");
    pinned("EntriesRequest", &postcard(&EntriesRequest { shard: 1, from_seq: 5, limit: 100 }), "010564");
    pinned("StatusRequest", &postcard(&StatusRequest), "");
    let status = NodeStatus {
        node_id: 2,
        info: node(2),
        shard_count: 4,
        home_regions: BTreeMap::from([(0, "eu".to_string())]),
        shards: vec![ShardStatus {
            shard: 0,
            state: ReplicaRole::Follower,
            term: 3,
            leader: Some(1),
            last_log_index: Some(40),
            committed: Some(40),
            applied: Some(39),
            snapshot: Some(10),
            purged: Some(8),
            journal_len: 30,
            head_hash: "ab".into(),
            voters: vec![1, 2, 3],
            learners: vec![4],
            leader_region: Some("eu".into()),
            home_region: Some("eu".into()),
            leader_changes: 2,
            health: CommitHealth::Follower,
            leader_heard_ms: Some(40),
        }],
    };
    pinned(
        "StatusReply",
        &postcard(&status),
        "020d31302e302e302e323a373030300265750465752d320d31302e302e302e323a38303030040100026575010001030101012801280127010a01081e026162030102030104010265750102657502010128",
    );
    pinned("VerifyRequest", &postcard(&VerifyRequest { shard: 1 }), "01");
    let report: crate::net::wire::VerifyReply =
        Ok(VerifyReport { shard: 1, entries: 17, head_hash: "ab".into(), error: None, balances_match: true });
    pinned("VerifyReply", &postcard(&report), "0001110261620001");
    let change = MembershipRequest { shard: 1, change: MembershipChange::Remove { node: 4 }, timeout_ms: 5_000 };
    pinned("MembershipRequest", &postcard(&change), "0102048827");
    let view: crate::net::wire::MembershipReply =
        Ok(MembershipView { shard: 1, leader: 1, voters: vec![1, 2, 3], learners: Vec::new(), log_index: Some(9) });
    pinned("MembershipReply", &postcard(&view), "00010103010203000109");
    let init = InitializeRequest { shard: 1, members: BTreeMap::from([1, 2, 3].map(|n| (n, node(n)))) };
    pinned(
        "InitializeRequest",
        &postcard(&init),
        "0103010d31302e302e302e313a373030300265750465752d310d31302e302e302e313a38303030020d31302e302e302e323a373030300265750465752d320d31302e302e302e323a38303030030d31302e302e302e333a373030300265750465752d330d31302e302e302e333a38303030",
    );
    let initialized: crate::net::wire::InitializeReply = Ok(true);
    pinned("InitializeReply", &postcard(&initialized), "0001");
}
