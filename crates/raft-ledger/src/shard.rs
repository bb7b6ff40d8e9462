//! Shards and the deterministic map from players to shards.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::PlayerId;

/// A wallet shard: one Raft group with its own ledger chain.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

/// The shard that holds `player`'s wallets when the cluster has `shard_count` shards.
///
/// The first eight bytes of SHA-256(player id), big-endian, modulo the shard count. SHA-256 is
/// used for its stability: the mapping must never change between versions, platforms or
/// processes, which rules out `std`'s randomly keyed hasher.
pub fn shard_for_player(player: &PlayerId, shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "a cluster has at least one shard");
    let digest = Sha256::digest(player.as_str().as_bytes());
    let head = u64::from_be_bytes(digest[..8].try_into().expect("digest has 32 bytes"));
    ShardId(u32::try_from(head % u64::from(shard_count)).expect("remainder is below a u32 shard count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_stable_and_spreads_players() {
        // Pinned values: changing the mapping would strand every existing wallet.
        assert_eq!(shard_for_player(&PlayerId::new("alice").unwrap(), 8), ShardId(7));
        assert_eq!(shard_for_player(&PlayerId::new("bob").unwrap(), 8), ShardId(2));
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            let shard = shard_for_player(&PlayerId::new(format!("p{i}")).unwrap(), 4);
            counts[shard.0 as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
