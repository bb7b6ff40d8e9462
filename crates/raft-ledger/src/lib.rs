//! A double-entry wallet ledger, one Raft group per shard, replicated with openraft.
//!
//! The crate has two layers:
//!
//! - **The pure core**: [`Ledger`] applies [`Command`]s at a given [`ClusterTime`] and appends
//!   hash-chained [`Entry`]s. It does no IO, reads no clock and draws no random numbers, so the
//!   same log always yields the same chain on every replica. [`verify`] re-checks a chain from its
//!   entries alone.
//! - **The replicated shell** (`raft` and `node`): openraft storage and network adapters, a
//!   node-wide write-ahead log with group commit, per-shard journals and snapshots, and
//!   [`node::LedgerNode`], which hosts many shards in one process. Time, randomness, the network
//!   and the disk are injected, so the same code runs in `walletd` and under turmoil.
//!
//! See `ARCHITECTURE.md` at the repository root for the code map and invariants.

mod account;
pub mod client;
mod codec;
mod command;
mod entry;
mod ids;
mod ledger;
pub mod membership;
mod money;
pub mod net;
pub mod node;
mod outcome;
pub mod placement;
pub mod planted;
pub mod raft;
mod shard;
pub mod store;
mod time;
pub mod verify;

pub use account::{AccountKind, AccountRef};
pub use codec::DecodeError;
pub use command::{Command, CommandKind, HOLD_TIMEOUT_DEFAULT_MS, HOLD_TIMEOUT_MAX_MS, HOLD_TIMEOUT_MIN_MS};
pub use entry::{ENTRY_FORMAT_VERSION, Entry, EntryKind, Hash, genesis_hash};
pub use ids::{ID_LEN_MAX, PlayerId, REASON_LEN_MAX, Reason, RoundId, TxId};
pub use ledger::{ID_RETENTION_DEFAULT_MS, Ledger, LedgerConfig, LedgerImage, Recall};
pub use money::{AMOUNT_MAX, Amount, Balance, Currency};
pub use outcome::{IdField, Outcome, Receipt, Rejection};
pub use shard::{REGION_SEPARATOR, ShardId, ShardMap, UnknownRegion, shard_for_player};
pub use time::{Clock, ClusterTime, RuntimeClock, WallClock};
