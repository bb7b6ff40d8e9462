//! The beacon's state: seed pairs, nonces, retired seeds and the round chain.
//!
//! Pure apart from the entropy source it is handed: every call takes the time as an input and
//! returns the audit events it caused, which the caller appends to the log *before* it lets the
//! result out. That order is what makes the log complete: no outcome and no round is ever seen
//! that the log does not hold.

use crate::csprng::{Csprng, Entropy, EntropyError, Reseed, ReseedPolicy, ReseedReason};
use crate::fair::{self, FairError, Game, KeyedSeed, Mode};
use crate::log::{EpochState, Event};
use crate::rounds::{self, Round};
use std::collections::BTreeMap;
use std::time::Duration;

/// The longest pair id accepted, in bytes.
pub const PAIR_ID_LEN_MAX: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    #[error(transparent)]
    Input(#[from] FairError),
    #[error("pair id must be 1 to {PAIR_ID_LEN_MAX} bytes of printable ASCII")]
    BadPairId,
    #[error("unknown pair {0:?}; call GetCommitment first so the player sees the commitment before any draw")]
    UnknownPair(String),
    #[error("nonce {got} is already used for this seed; the next nonce is {expected}")]
    NonceReused { got: u64, expected: u64 },
    #[error("nonce {got} skips ahead; the next nonce is {expected}")]
    NonceSkipped { got: u64, expected: u64 },
    #[error("every nonce of this seed is used; rotate the seed")]
    NonceExhausted,
    #[error("client seed differs from the one bound to this pair; rotate the seed to change it")]
    ClientSeedMismatch,
    #[error("commitment {0} is still active; rotate the pair's seed to reveal it")]
    StillActive(String),
    #[error("unknown commitment {0}")]
    UnknownCommitment(String),
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    #[error(
        "the audit log's last epoch gives no round number to continue from (an old log whose epoch did not end cleanly); start a new log"
    )]
    CannotResume,
}

struct Pair {
    server_seed: String,
    keyed: KeyedSeed,
    commitment: [u8; 32],
    client_seed: Option<String>,
    /// The nonce the next draw must carry; `None` once u64::MAX has been used.
    next_nonce: Option<u64>,
}

impl Pair {
    fn used(&self) -> u64 {
        self.next_nonce.unwrap_or(u64::MAX)
    }
}

struct Retired {
    pair_id: String,
    server_seed: String,
    nonces_used: u64,
}

/// What a caller sees of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitmentView {
    pub pair_id: String,
    pub server_seed_hash: String,
    pub client_seed: Option<String>,
    pub next_nonce: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DrawView {
    pub pair_id: String,
    pub server_seed_hash: String,
    pub client_seed: String,
    pub nonce: u64,
    pub game: Game,
    pub mode: Mode,
    pub outcome: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevealView {
    pub pair_id: String,
    pub server_seed: String,
    pub server_seed_hash: String,
    pub nonces_used: u64,
}

struct Epoch {
    number: u64,
    key: [u8; 32],
    key_hash: [u8; 32],
    first_round: u64,
}

pub struct Beacon<E> {
    csprng: Csprng<E>,
    pairs: BTreeMap<String, Pair>,
    retired: BTreeMap<[u8; 32], Retired>,
    epoch: Epoch,
    rounds_per_epoch: u64,
    next_round: u64,
    previous_signature: [u8; 32],
}

fn reseed_event(r: Reseed) -> Event {
    Event::Reseed {
        generation: r.generation,
        reason: r.reason.name().to_owned(),
        commitment: hex::encode(r.commitment),
    }
}

fn check_pair_id(id: &str) -> Result<(), BeaconError> {
    let ok = !id.is_empty() && id.len() <= PAIR_ID_LEN_MAX && id.bytes().all(|b| b.is_ascii_graphic());
    if ok { Ok(()) } else { Err(BeaconError::BadPairId) }
}

impl<E: Entropy> Beacon<E> {
    /// A beacon with a fresh CSPRNG and its first epoch key, continuing after `resume` (the
    /// newest epoch of the log it appends to) if there is one: the next epoch number, round
    /// numbers past every round already produced, and the chain of signatures when the last
    /// epoch's key was revealed (a clean stop). Returns the events to log first.
    pub fn new(
        entropy: E,
        policy: ReseedPolicy,
        rounds_per_epoch: u64,
        now: Duration,
        resume: Option<&EpochState>,
    ) -> Result<(Self, Vec<Event>), BeaconError> {
        let (csprng, initial) = Csprng::new(entropy, policy, now)?;
        let mut events = vec![reseed_event(initial)];
        let placeholder = Epoch { number: 0, key: [0; 32], key_hash: [0; 32], first_round: 0 };
        let mut b = Beacon {
            csprng,
            pairs: BTreeMap::new(),
            retired: BTreeMap::new(),
            epoch: placeholder,
            rounds_per_epoch: rounds_per_epoch.max(1),
            next_round: 0,
            previous_signature: [0; 32],
        };
        let mut key = [0; 32];
        b.random(now, &mut key, &mut events)?;
        let key_hash = rounds::key_hash(&key);
        let (number, first_round, previous) = match resume {
            None => (0, 0, key_hash),
            Some(last) => {
                let first = last.next_round_min().ok_or(BeaconError::CannotResume)?;
                // After a crash the last signature died with the key: the chain restarts from
                // this epoch's key hash, as the first epoch's does.
                let previous = match &last.revealed {
                    Some((_, sig)) => hex::decode(sig)
                        .ok()
                        .and_then(|v| <[u8; 32]>::try_from(v).ok())
                        .ok_or(BeaconError::CannotResume)?,
                    None => key_hash,
                };
                (last.epoch + 1, first, previous)
            }
        };
        b.previous_signature = previous;
        b.next_round = first_round;
        b.epoch = Epoch { number, key, key_hash, first_round };
        events.push(b.epoch_commit_event());
        Ok((b, events))
    }

    fn epoch_commit_event(&self) -> Event {
        Event::EpochCommit {
            epoch: self.epoch.number,
            key_hash: hex::encode(self.epoch.key_hash),
            first_round: self.epoch.first_round,
            previous_signature: hex::encode(self.previous_signature),
            rounds_per_epoch: Some(self.rounds_per_epoch),
        }
    }

    fn random(&mut self, now: Duration, out: &mut [u8], events: &mut Vec<Event>) -> Result<(), BeaconError> {
        if let Some(r) = self.csprng.fill(now, out)? {
            events.push(reseed_event(r));
        }
        Ok(())
    }

    /// A fresh server seed: 32 CSPRNG bytes as 64 lower-case hex characters (the HMAC key is
    /// that text, as the widely used scheme has it).
    fn new_pair(
        &mut self,
        now: Duration,
        client_seed: Option<String>,
        events: &mut Vec<Event>,
    ) -> Result<Pair, BeaconError> {
        let mut raw = [0; 32];
        self.random(now, &mut raw, events)?;
        let server_seed = hex::encode(raw);
        let commitment = fair::commitment(&server_seed);
        Ok(Pair { keyed: KeyedSeed::new(&server_seed), server_seed, commitment, client_seed, next_nonce: Some(0) })
    }

    fn view(id: &str, p: &Pair) -> CommitmentView {
        CommitmentView {
            pair_id: id.to_owned(),
            server_seed_hash: hex::encode(p.commitment),
            client_seed: p.client_seed.clone(),
            next_nonce: p.used(),
        }
    }

    /// The pair's active commitment, creating the pair on first use.
    pub fn commitment(&mut self, pair_id: &str, now: Duration) -> Result<(CommitmentView, Vec<Event>), BeaconError> {
        check_pair_id(pair_id)?;
        let mut events = Vec::new();
        if !self.pairs.contains_key(pair_id) {
            let pair = self.new_pair(now, None, &mut events)?;
            events.push(Event::Commit {
                pair: pair_id.to_owned(),
                commitment: hex::encode(pair.commitment),
                client_seed: None,
            });
            self.pairs.insert(pair_id.to_owned(), pair);
        }
        Ok((Self::view(pair_id, &self.pairs[pair_id]), events))
    }

    /// Retires the pair's seed, revealing it, and commits to a new one.
    pub fn rotate(
        &mut self,
        pair_id: &str,
        new_client_seed: Option<String>,
        now: Duration,
    ) -> Result<(RevealView, CommitmentView, Vec<Event>), BeaconError> {
        check_pair_id(pair_id)?;
        if let Some(c) = &new_client_seed {
            fair::check_seed("client", c)?;
        }
        if !self.pairs.contains_key(pair_id) {
            return Err(BeaconError::UnknownPair(pair_id.to_owned()));
        }
        let mut events = Vec::new();
        let fresh = self.new_pair(now, new_client_seed.clone(), &mut events)?;
        let old = self.pairs.insert(pair_id.to_owned(), fresh).expect("checked above");
        let revealed = RevealView {
            pair_id: pair_id.to_owned(),
            server_seed: old.server_seed.clone(),
            server_seed_hash: hex::encode(old.commitment),
            nonces_used: old.used(),
        };
        events.push(Event::Reveal {
            pair: pair_id.to_owned(),
            commitment: revealed.server_seed_hash.clone(),
            server_seed: old.server_seed.clone(),
            nonces_used: revealed.nonces_used,
        });
        let next = &self.pairs[pair_id];
        events.push(Event::Commit {
            pair: pair_id.to_owned(),
            commitment: hex::encode(next.commitment),
            client_seed: new_client_seed,
        });
        self.retired.insert(
            old.commitment,
            Retired { pair_id: pair_id.to_owned(), server_seed: old.server_seed, nonces_used: revealed.nonces_used },
        );
        Ok((revealed, Self::view(pair_id, next), events))
    }

    /// Draws one outcome under the pair's active seed.
    pub fn draw(
        &mut self,
        pair_id: &str,
        game: Game,
        mode: Mode,
        client_seed: &str,
        nonce: u64,
    ) -> Result<(DrawView, Vec<Event>), BeaconError> {
        check_pair_id(pair_id)?;
        fair::check_seed("client", client_seed)?;
        let pair = self.pairs.get_mut(pair_id).ok_or_else(|| BeaconError::UnknownPair(pair_id.to_owned()))?;
        if pair.client_seed.as_deref().is_some_and(|c| c != client_seed) {
            return Err(BeaconError::ClientSeedMismatch);
        }
        let Some(expected) = pair.next_nonce else { return Err(BeaconError::NonceExhausted) };
        if nonce < expected {
            return Err(BeaconError::NonceReused { got: nonce, expected });
        }
        if nonce > expected {
            return Err(BeaconError::NonceSkipped { got: nonce, expected });
        }
        let outcome = fair::draw(&mut pair.keyed.stream(client_seed, nonce), game, mode).to_json();
        pair.client_seed.get_or_insert_with(|| client_seed.to_owned());
        pair.next_nonce = nonce.checked_add(1);
        let view = DrawView {
            pair_id: pair_id.to_owned(),
            server_seed_hash: hex::encode(pair.commitment),
            client_seed: client_seed.to_owned(),
            nonce,
            game,
            mode,
            outcome,
        };
        let event = Event::Draw {
            pair: pair_id.to_owned(),
            commitment: view.server_seed_hash.clone(),
            client_seed: client_seed.to_owned(),
            nonce,
            game: game.spec(),
            mode: mode.name().to_owned(),
            outcome: view.outcome.clone(),
        };
        Ok((view, vec![event]))
    }

    /// The seed behind a retired commitment.
    pub fn reveal(&self, commitment_hex: &str) -> Result<RevealView, BeaconError> {
        let unknown = || BeaconError::UnknownCommitment(commitment_hex.to_owned());
        let bytes: [u8; 32] = hex::decode(commitment_hex).ok().and_then(|v| v.try_into().ok()).ok_or_else(unknown)?;
        if let Some(r) = self.retired.get(&bytes) {
            return Ok(RevealView {
                pair_id: r.pair_id.clone(),
                server_seed: r.server_seed.clone(),
                server_seed_hash: commitment_hex.to_ascii_lowercase(),
                nonces_used: r.nonces_used,
            });
        }
        if self.pairs.values().any(|p| p.commitment == bytes) {
            return Err(BeaconError::StillActive(commitment_hex.to_owned()));
        }
        Err(unknown())
    }

    /// Produces the next round. At an epoch boundary the old key is revealed and a new one is
    /// committed first; those events come back for the log.
    pub fn next_round(&mut self, timestamp_ms: u64, now: Duration) -> Result<(Round, Vec<Event>), BeaconError> {
        let mut events = Vec::new();
        // The ticker runs even when nobody draws, so the reseed schedule holds for an idle beacon.
        if let Some(r) = self.csprng.reseed_if_due(now)? {
            events.push(reseed_event(r));
        }
        if self.next_round >= self.epoch.first_round + self.rounds_per_epoch {
            events.push(Event::EpochReveal {
                epoch: self.epoch.number,
                key: hex::encode(self.epoch.key),
                last_round: self.next_round - 1,
                last_signature: hex::encode(self.previous_signature),
            });
            let mut key = [0; 32];
            self.random(now, &mut key, &mut events)?;
            self.epoch = Epoch {
                number: self.epoch.number + 1,
                key,
                key_hash: rounds::key_hash(&key),
                first_round: self.next_round,
            };
            events.push(self.epoch_commit_event());
        }
        let n = self.next_round;
        let signature = rounds::signature(&self.epoch.key, &self.previous_signature, n);
        let round = Round {
            round: n,
            timestamp_ms,
            randomness: rounds::randomness(&signature),
            signature,
            previous_signature: self.previous_signature,
            epoch: self.epoch.number,
            epoch_key_hash: self.epoch.key_hash,
        };
        self.previous_signature = signature;
        self.next_round += 1;
        Ok((round, events))
    }

    /// Reveals every active server seed and the current epoch key, for a clean shutdown: after
    /// it, every outcome and round in the log can be re-derived. The beacon must not be used
    /// afterwards (its pairs are gone).
    pub fn retire_all(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for (pair_id, p) in std::mem::take(&mut self.pairs) {
            let nonces_used = p.used();
            events.push(Event::Reveal {
                pair: pair_id.clone(),
                commitment: hex::encode(p.commitment),
                server_seed: p.server_seed.clone(),
                nonces_used,
            });
            self.retired.insert(p.commitment, Retired { pair_id, server_seed: p.server_seed, nonces_used });
        }
        if self.next_round > self.epoch.first_round {
            events.push(Event::EpochReveal {
                epoch: self.epoch.number,
                key: hex::encode(self.epoch.key),
                last_round: self.next_round - 1,
                last_signature: hex::encode(self.previous_signature),
            });
        }
        events
    }

    /// Reseeds the CSPRNG now.
    pub fn reseed(&mut self, now: Duration) -> Result<Event, BeaconError> {
        Ok(reseed_event(self.csprng.reseed(ReseedReason::Demand, now)?))
    }
}
