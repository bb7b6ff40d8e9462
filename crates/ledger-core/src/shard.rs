//! Shards and the deterministic map from players to shards.
//!
//! In a cluster with home regions, a player id may name its region: `eu-west:alice` lives in a
//! shard homed in `eu-west`, so the player's writes are led, and committed, from there. The
//! front-end that registers a player picks the region (typically where the player signed up, or
//! their jurisdiction) and puts it in the id once; from then on every call routes by the id
//! alone, with no directory to look up. An id without `:` is spread over all shards.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

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
    ShardId(u32::try_from(player_hash(player) % u64::from(shard_count)).expect("remainder is below a u32 shard count"))
}

fn player_hash(player: &PlayerId) -> u64 {
    let digest = Sha256::digest(player.as_str().as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("digest has 32 bytes"))
}

/// What separates a player id's region from the rest: `eu-west:alice`.
pub const REGION_SEPARATOR: char = ':';

/// A player id names a region that is home to no shard of this cluster.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("player id {player:?} names region {region:?}, which is home to no shard (regions: {known})")]
pub struct UnknownRegion {
    /// The player id.
    pub player: String,
    /// The region it names.
    pub region: String,
    /// The regions that are, comma separated.
    pub known: String,
}

/// Which shard each player's wallets live in: the shard count and each shard's home region.
///
/// Every node and client of a cluster must use the same map, so it is fixed for the cluster's
/// life like the shard count (a node refuses a data directory written under another).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    shards: u32,
    /// Region → the shards homed there, ascending.
    regional: BTreeMap<String, Vec<u32>>,
}

impl ShardMap {
    /// `shards` shards, no home regions: every player hashes over all shards.
    pub fn uniform(shards: u32) -> Self {
        Self::new(shards, &BTreeMap::new())
    }

    /// `shards` shards homed as `homes` says (shard → region).
    pub fn new(shards: u32, homes: &BTreeMap<u32, String>) -> Self {
        assert!(shards > 0, "a cluster has at least one shard");
        let mut regional: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (shard, region) in homes {
            assert!(*shard < shards, "home region given for shard {shard} of {shards}");
            regional.entry(region.clone()).or_default().push(*shard);
        }
        Self { shards, regional }
    }

    /// Shards in the cluster.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The region a player id names, if it names one (`eu-west` of `eu-west:alice`).
    pub fn named_region(player: &PlayerId) -> Option<&str> {
        player.as_str().split_once(REGION_SEPARATOR).map(|(region, _)| region)
    }

    /// The shard holding `player`'s wallets. With home regions, an id naming a region is
    /// hashed (SHA-256 of the whole id, first eight bytes) over that region's shards, and an id
    /// naming none over all shards, exactly as [`shard_for_player`]. Without home regions every
    /// id is hashed over all shards, `:` or not.
    pub fn shard_for(&self, player: &PlayerId) -> Result<ShardId, UnknownRegion> {
        let region = match Self::named_region(player) {
            Some(r) if !self.regional.is_empty() => r,
            _ => return Ok(shard_for_player(player, self.shards)),
        };
        let Some(shards) = self.regional.get(region) else {
            return Err(UnknownRegion {
                player: player.as_str().to_string(),
                region: region.to_string(),
                known: self.regional.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let i = player_hash(player) % shards.len() as u64;
        Ok(ShardId(shards[usize::try_from(i).expect("index below a shard list length")]))
    }
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

    fn p(s: &str) -> PlayerId {
        PlayerId::new(s).unwrap()
    }

    #[test]
    fn a_player_naming_a_region_lives_in_a_shard_homed_there() {
        let homes: BTreeMap<u32, String> =
            (0..6).map(|s| (s, ["eu-west", "us-east", "ap-south"][s as usize % 3].to_string())).collect();
        let map = ShardMap::new(6, &homes);
        let mut seen: BTreeMap<&str, std::collections::BTreeSet<u32>> = BTreeMap::new();
        for region in ["eu-west", "us-east", "ap-south"] {
            for i in 0..200 {
                let shard = map.shard_for(&p(&format!("{region}:player-{i}"))).unwrap().0;
                assert_eq!(homes[&shard], region, "{region}:player-{i} went to shard {shard}");
                seen.entry(region).or_default().insert(shard);
            }
        }
        assert!(seen.values().all(|s| s.len() == 2), "both of a region's shards are used: {seen:?}");
        // No region named: the plain hash over every shard, as before regions existed.
        assert_eq!(map.shard_for(&p("alice")).unwrap(), shard_for_player(&p("alice"), 6));
        // A region the cluster does not have is refused, not silently spread.
        let err = map.shard_for(&p("eu-wset:alice")).unwrap_err();
        assert_eq!(err.region, "eu-wset");
        assert!(err.to_string().contains("ap-south, eu-west, us-east"), "{err}");
        // Without home regions a ':' means nothing.
        let plain = ShardMap::uniform(6);
        assert_eq!(plain.shard_for(&p("eu-wset:alice")).unwrap(), shard_for_player(&p("eu-wset:alice"), 6));
    }
}
