//! The messages of the node's gRPC services.

use openraft::errors::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest as RaftTransferLeader, TransferLeaderResponse, VoteRequest as RaftVote, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::api::{BalanceView, LedgerError, NodeStatus, ReadConsistency, VerifyReport};
use crate::api::{MembershipChange, MembershipView};
use crate::raft::{LogId, SnapshotMeta, TypeConfig, Vote};
use ledger_core::AccountRef;
use ledger_core::Command;
use ledger_core::Entry;
use ledger_core::Outcome;

/// A Raft message addressed to one shard of the receiving node.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShardMsg<T> {
    /// The shard.
    pub shard: u32,
    /// The Raft message.
    pub msg: T,
}

/// Why a peer could not handle a Raft message.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the format tests (`crates/raft-ledger/src/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    /// The peer hosts no replica of the shard.
    #[error("peer hosts no replica of shard {0}")]
    UnknownShard(u32),
    /// The peer's Raft group failed.
    #[error(transparent)]
    Raft(#[from] RaftError<TypeConfig>),
    /// A snapshot stream was malformed or could not be stored.
    #[error("snapshot transfer failed: {0}")]
    Snapshot(String),
}

/// AppendEntries for one shard, with what the leader knows of its own quorum.
#[derive(Debug, Serialize, Deserialize)]
pub struct AppendRequest {
    /// The shard.
    pub shard: u32,
    /// The Raft message.
    pub msg: AppendEntriesRequest<TypeConfig>,
    /// How long before sending this the leader last heard from a quorum, in ms (`None`: not
    /// since it was elected). A follower learns from it whether its leader can commit now,
    /// which is what its health reports.
    pub quorum_age_ms: Option<u64>,
}
pub type AppendReply = Result<AppendEntriesResponse<TypeConfig>, PeerError>;
/// The follower's answer to the request at the same position of an ordered AppendEntries
/// stream (`AppendStream`). A `PeerError` ends the stream.
pub type AppendStreamReply = Result<StreamAppendResult<TypeConfig>, PeerError>;

/// What an `Append` or `AppendStream` call carries: the request, and what the leader can vouch
/// for about the receiver's freshness (added after the first release; see [`Extended`]).
pub type AppendCall = Extended<AppendRequest, Freshness>;
/// An `Append` answer, stamped with the moment the follower answered.
pub type AppendAnswer = Extended<AppendReply, ReplyStamp>;
/// An `AppendStream` answer, stamped with the moment the follower answered.
pub type AppendStreamAnswer = Extended<AppendStreamReply, ReplyStamp>;

/// A message of an earlier build (`head`) followed by a part added later (`ext`), so that
/// builds on either side of the addition keep talking during a rolling upgrade: postcard
/// encodes a pair as one part after the other, an older build reads its message and ignores
/// the bytes after it, and this reads a message that ends after `head` as one without `ext`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extended<H, T> {
    /// The message as the earlier build knows it.
    pub head: H,
    /// The part added later; `None` from an earlier build.
    pub ext: Option<T>,
}

impl<H, T> Extended<H, T> {
    /// A message and its addition.
    pub fn new(head: H, ext: Option<T>) -> Self {
        Self { head, ext }
    }
}

impl<H: Serialize, T: Serialize> Serialize for Extended<H, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple as _;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.head)?;
        t.serialize_element(&self.ext)?;
        t.end()
    }
}

impl<'de, H: Deserialize<'de>, T: Deserialize<'de>> Deserialize<'de> for Extended<H, T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Parts<H, T>(std::marker::PhantomData<(H, T)>);
        impl<'de, H: Deserialize<'de>, T: Deserialize<'de>> serde::de::Visitor<'de> for Parts<H, T> {
            type Value = Extended<H, T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a message, then optionally what later builds add to it")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let head = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(0, &self))?;
                // An earlier build's message ends here (postcard reports the end of its input
                // as an error). What cannot be read is as good as absent: the addition only
                // ever adds information, and the message itself was read whole.
                let ext = seq.next_element::<Option<T>>().ok().flatten().flatten();
                Ok(Extended { head, ext })
            }
        }
        d.deserialize_tuple(2, Parts(std::marker::PhantomData))
    }
}

/// A moment on a follower's own clock at which it answered its leader: microseconds since the
/// follower's process started its node, tagged with a number drawn at that start so that a
/// moment from an earlier run of the process is never taken for one of this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyStamp {
    /// Drawn when the node started.
    pub incarnation: u64,
    /// Since the node started, in microseconds.
    pub micros: u64,
}

/// What a leader vouches for about one follower: every write acknowledged before the follower
/// stamped `stamp` (on the follower's clock), by this leader or any other, is at or below index
/// `applied`. So once the follower has applied `applied`, every such write is in its state. A
/// leader vouches only once it has applied an entry of its own term (so every entry an earlier
/// leader committed), with `applied` read after it heard the stamp (so every write it had
/// acknowledged itself), and once a quorum has acknowledged its leadership, in the same term,
/// after it heard the stamp (so no later leader had been elected by then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    /// The follower's stamp the leader had heard.
    pub stamp: ReplyStamp,
    /// The leader's applied index after it heard it.
    pub applied: u64,
}
/// The request metadata key naming the shard of an `AppendStream`, so the follower can attach
/// the stream to the shard's Raft group before the first request arrives.
pub const APPEND_STREAM_SHARD_KEY: &str = "raft-shard";
pub type VoteRequest = ShardMsg<RaftVote<TypeConfig>>;
pub type VoteReply = Result<VoteResponse<TypeConfig>, PeerError>;
pub type TransferLeaderRequest = ShardMsg<RaftTransferLeader<TypeConfig>>;
pub type TransferLeaderReply = Result<TransferLeaderResponse<TypeConfig>, PeerError>;
pub type SnapshotReply = Result<SnapshotResponse<TypeConfig>, PeerError>;

/// One message of a snapshot stream of the first format: a header holding the whole state, then
/// the journal in chunks. Senders now use [`SnapshotPiece`]s; receivers still accept this.
///
/// Encoded by position: postcard writes the variant's index (0 for the first) as its tag,
/// pinned by the format tests (`crates/raft-ledger/src/formats.rs`).
/// Add variants at the end; never reorder or remove one.
#[derive(Debug, Serialize, Deserialize)]
pub enum SnapshotChunk {
    /// Sent first.
    Header {
        /// The shard.
        shard: u32,
        /// The sender's vote.
        vote: Vote,
        /// The snapshot's metadata.
        meta: SnapshotMeta,
        /// The encoded ledger state.
        #[serde(with = "serde_bytes")]
        state: Vec<u8>,
        /// Entries in the journal that follows.
        journal_entries: u64,
        /// Bytes of journal that follow.
        journal_bytes: u64,
    },
    /// A piece of the journal, in order.
    Journal(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Which snapshot a transfer carries, so a receiver can tell whether the bytes it kept from an
/// earlier, interrupted transfer belong to the same one and may be resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotIdentity {
    /// The last log entry the snapshot includes.
    pub last_log_id: Option<LogId>,
    /// Length of the encoded state.
    pub state_bytes: u64,
    /// SHA-256 of the encoded state: checked before the state is installed.
    pub state_digest: [u8; 32],
    /// Entries in the journal prefix.
    pub journal_entries: u64,
    /// Bytes of that prefix.
    pub journal_bytes: u64,
    /// Hash of the prefix's last entry (the chain head the state names): the received journal
    /// is verified to end there before the snapshot is installed.
    pub journal_head: [u8; 32],
}

/// Asks a receiver how much of a snapshot it already holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotProgressRequest {
    /// The shard.
    pub shard: u32,
    /// The snapshot.
    pub identity: SnapshotIdentity,
}

/// How much of a snapshot a receiver holds durably: a transfer resumes from here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// Bytes of the encoded state.
    pub state_bytes: u64,
    /// Bytes of the journal (only once the state is whole).
    pub journal_bytes: u64,
}
pub type SnapshotProgressReply = Result<SnapshotProgress, PeerError>;

/// One message of a snapshot piece: a header, then state bytes, then journal bytes, each
/// continuing from where the header says. A transfer is a sequence of pieces, each one call
/// of bounded size, so no call outlives its deadline however large the snapshot is, and a
/// transfer cut off resumes at the receiver's progress instead of starting over.
///
/// Encoded by position (pinned by the format tests); add variants at the end only.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant, reason = "one header per piece of up to 16 MiB")]
pub enum SnapshotPiece {
    /// Sent first.
    Header {
        /// The shard.
        shard: u32,
        /// The sender's vote.
        vote: Vote,
        /// The snapshot's metadata.
        meta: SnapshotMeta,
        /// The snapshot.
        identity: SnapshotIdentity,
        /// Where this piece's state bytes start (the receiver's progress).
        state_from: u64,
        /// Where its journal bytes start.
        journal_from: u64,
    },
    /// Encoded state, in order.
    State(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Journal, in order, after the whole state.
    Journal(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// What a receiver did with a piece.
///
/// Encoded by position (pinned by the format tests); add variants at the end only.
#[derive(Debug, Serialize, Deserialize)]
pub enum PieceOutcome {
    /// Stored; the snapshot is not whole yet. Send the next piece from here.
    Stored(SnapshotProgress),
    /// The snapshot was whole and verified, and was handed to Raft, which answered this.
    Installed(SnapshotResponse<TypeConfig>),
}
pub type SnapshotPieceReply = Result<PieceOutcome, PeerError>;

/// Asks a node to run a command.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The shard, or `None` to route by the command's player.
    pub shard: Option<u32>,
    /// The command.
    pub command: Command,
    /// How long the caller will wait, in milliseconds.
    pub timeout_ms: u64,
}
pub type SubmitReply = Result<Outcome, LedgerError>;

/// Asks a node to run several commands of one shard, in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitBatchRequest {
    /// The shard every command belongs to.
    pub shard: u32,
    /// The commands; at most [`crate::api::BATCH_COMMANDS_MAX`].
    pub commands: Vec<Command>,
    /// How long the caller will wait, in milliseconds.
    pub timeout_ms: u64,
}
pub type SubmitBatchReply = Result<Vec<Outcome>, LedgerError>;

/// Asks for an account's balance.
#[derive(Debug, Serialize, Deserialize)]
pub struct BalanceRequest {
    /// The shard, or `None` to route by the account's player.
    pub shard: Option<u32>,
    /// The account.
    pub account: AccountRef,
    /// Linearizable (leader only) or a local read that reports its staleness.
    pub consistency: ReadConsistency,
}
pub type BalanceReply = Result<BalanceView, LedgerError>;

/// Asks for journal entries.
#[derive(Debug, Serialize, Deserialize)]
pub struct EntriesRequest {
    /// The shard.
    pub shard: u32,
    /// First sequence number wanted.
    pub from_seq: u64,
    /// At most this many.
    pub limit: u32,
}
pub type EntriesReply = Result<Vec<Entry>, LedgerError>;

/// Asks for the node's status.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusRequest;
pub type StatusReply = NodeStatus;

/// Asks the node to verify one shard's journal.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// The shard.
    pub shard: u32,
}
pub type VerifyReply = Result<VerifyReport, LedgerError>;

/// Asks a shard's leader to change the shard's replicas.
#[derive(Debug, Serialize, Deserialize)]
pub struct MembershipRequest {
    /// The shard.
    pub shard: u32,
    /// The change.
    pub change: MembershipChange,
    /// How long the caller will wait, in milliseconds (a newcomer may need time to catch up).
    pub timeout_ms: u64,
}
pub type MembershipReply = Result<MembershipView, LedgerError>;

/// Asks a node to give a never-initialized shard its first voters (bootstrap by topology: the
/// bootstrapping node asks a planned voter of each shard it is not one of itself).
#[derive(Debug, Serialize, Deserialize)]
pub struct InitializeRequest {
    /// The shard.
    pub shard: u32,
    /// Its first voters; must include the node asked.
    pub members: std::collections::BTreeMap<crate::raft::NodeId, crate::raft::NodeInfo>,
}
/// `true` if this call initialized the shard, `false` if it already was.
pub type InitializeReply = Result<bool, LedgerError>;
