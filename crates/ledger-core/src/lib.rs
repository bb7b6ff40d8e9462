//! The pure double-entry wallet ledger: validated ids and money, accounts, commands and their
//! outcomes, hash-chained entries and their canonical encoding, [`Ledger::apply`], an
//! independent chain [`verify`]er, which shard a player lives in ([`ShardMap`]), the topology
//! and placement model, cluster time and node identities.
//!
//! Nothing here does IO, reads a clock, draws a random number or knows about Raft, the network
//! or the disk: this crate does not depend on tokio, openraft, tonic or the filesystem, so the
//! rule is a compile error, not a convention. The same log therefore yields the same chain on
//! every replica, and the simulator, the geo-router and the chaos checker can use these types
//! without the node runtime. Time is an argument, stamped by the leader.
//!
//! Module order is dependency order: `codec`, `rejection`, `ids`, `money`, `time`, `shard`,
//! `identity`, `account`, `command`, `outcome`, `entry`, `ledger`, `verify`, `placement`; no
//! module imports one after it.

mod account;
mod codec;
mod command;
mod entry;
mod identity;
mod ids;
mod ledger;
mod money;
mod outcome;
pub mod placement;
mod rejection;
mod shard;
mod time;
pub mod verify;

pub use account::{AccountKind, AccountRef};
pub use codec::DecodeError;
pub use command::{Command, CommandKind, HOLD_TIMEOUT_DEFAULT_MS, HOLD_TIMEOUT_MAX_MS, HOLD_TIMEOUT_MIN_MS};
pub use entry::{ENTRY_FORMAT_VERSION, Entry, EntryKind, Hash, genesis_hash};
pub use identity::{NodeId, NodeInfo, member_token};
pub use ids::{ID_LEN_MAX, PlayerId, REASON_LEN_MAX, Reason, RoundId, TxId};
pub use ledger::{
    CoreImage, ID_RETENTION_DEFAULT_MS, IdRecord, ImageAfter, ImageBefore, ImageHolds, Ledger, LedgerConfig,
    LedgerImage, LedgerState, MemState, Recall, Retained, RetainedImage, Round, StateKey, state_key_of,
};
pub use money::{AMOUNT_MAX, Amount, Balance, Currency};
pub use outcome::{Outcome, Receipt};
pub use rejection::{IdField, Rejection};
pub use shard::{REGION_SEPARATOR, ShardId, ShardMap, UnknownRegion, shard_for_player};
pub use time::ClusterTime;
