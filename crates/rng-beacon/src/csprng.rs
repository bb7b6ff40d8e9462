//! The beacon's CSPRNG: ChaCha20, seeded from OS entropy, reseeded on a schedule, after a number
//! of outputs, and on demand.
//!
//! rand 0.9's `ReseedingRng` would reseed silently; we need every reseed to produce a log record,
//! so this small wrapper does the bookkeeping around `rand_chacha::ChaCha20Rng`.
//!
//! A reseed mixes fresh entropy with 32 bytes of the current stream:
//! `seed' = sha256(domain || entropy || current_output)`. Fresh OS entropy makes the new state
//! unpredictable from the old one; mixing in the old stream means a weak entropy read alone
//! cannot make the state predictable either.
//!
//! The seed never leaves this type. What a reseed reports is a commitment,
//! `sha256(commit_domain || seed)`, which identifies the generation in the log and reveals
//! nothing about the seed. Time is an input (`now`, a monotonic duration from the caller's
//! clock), so the schedule is testable without sleeping.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Where fresh entropy comes from.
pub trait Entropy: Send {
    fn fill(&mut self, buf: &mut [u8; 32]) -> Result<(), EntropyError>;
}

/// The operating system's entropy source (`getrandom`).
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8; 32]) -> Result<(), EntropyError> {
        getrandom::fill(buf).map_err(|e| EntropyError(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entropy source failed: {0}")]
pub struct EntropyError(pub String);

/// When to reseed by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReseedPolicy {
    /// Reseed after this many outputs (calls to [`Csprng::fill`]).
    pub max_outputs: u64,
    /// Reseed when the current seed is older than this.
    pub max_age: Duration,
}

impl Default for ReseedPolicy {
    fn default() -> Self {
        ReseedPolicy { max_outputs: 1 << 16, max_age: Duration::from_secs(3600) }
    }
}

/// Why a reseed happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReseedReason {
    Initial,
    Outputs,
    Schedule,
    Demand,
}

impl ReseedReason {
    pub fn name(self) -> &'static str {
        match self {
            ReseedReason::Initial => "initial",
            ReseedReason::Outputs => "outputs",
            ReseedReason::Schedule => "schedule",
            ReseedReason::Demand => "demand",
        }
    }
}

/// A reseed as the log records it: never the seed, only its commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reseed {
    pub generation: u64,
    pub reason: ReseedReason,
    pub commitment: [u8; 32],
}

pub struct Csprng<E> {
    rng: ChaCha20Rng,
    entropy: E,
    policy: ReseedPolicy,
    generation: u64,
    outputs: u64,
    seeded_at: Duration,
}

const SEED_DOMAIN: &[u8] = b"rng-beacon/v1/reseed";
const COMMIT_DOMAIN: &[u8] = b"rng-beacon/v1/reseed-commitment";

fn commit(seed: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(COMMIT_DOMAIN);
    h.update(seed);
    h.finalize().into()
}

impl<E: Entropy> Csprng<E> {
    /// Seeds from `entropy`. The returned [`Reseed`] is generation 0, reason `initial`.
    pub fn new(mut entropy: E, policy: ReseedPolicy, now: Duration) -> Result<(Self, Reseed), EntropyError> {
        let mut fresh = [0; 32];
        entropy.fill(&mut fresh)?;
        let seed = mix(&fresh, &[0; 32]);
        let rng = ChaCha20Rng::from_seed(seed);
        let event = Reseed { generation: 0, reason: ReseedReason::Initial, commitment: commit(&seed) };
        Ok((Csprng { rng, entropy, policy, generation: 0, outputs: 0, seeded_at: now }, event))
    }

    /// Fills `out`, reseeding first if the policy says so; the reseed, if any, is returned so the
    /// caller can log it before using the output.
    pub fn fill(&mut self, now: Duration, out: &mut [u8]) -> Result<Option<Reseed>, EntropyError> {
        let event = self.reseed_if_due(now)?;
        self.rng.fill_bytes(out);
        self.outputs += 1;
        Ok(event)
    }

    /// Reseeds if the output count or the seed's age says so. Called on every output, and by
    /// the beacon's round ticker so that an idle beacon still reseeds on schedule.
    pub fn reseed_if_due(&mut self, now: Duration) -> Result<Option<Reseed>, EntropyError> {
        let due = if self.outputs >= self.policy.max_outputs {
            Some(ReseedReason::Outputs)
        } else if now.saturating_sub(self.seeded_at) >= self.policy.max_age {
            Some(ReseedReason::Schedule)
        } else {
            None
        };
        match due {
            Some(reason) => self.reseed(reason, now).map(Some),
            None => Ok(None),
        }
    }

    /// Reseeds now.
    pub fn reseed(&mut self, reason: ReseedReason, now: Duration) -> Result<Reseed, EntropyError> {
        let mut fresh = [0; 32];
        self.entropy.fill(&mut fresh)?;
        let mut current = [0; 32];
        self.rng.fill_bytes(&mut current);
        let seed = mix(&fresh, &current);
        self.rng = ChaCha20Rng::from_seed(seed);
        self.generation += 1;
        self.outputs = 0;
        self.seeded_at = now;
        Ok(Reseed { generation: self.generation, reason, commitment: commit(&seed) })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

fn mix(fresh: &[u8; 32], current: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SEED_DOMAIN);
    h.update(fresh);
    h.update(current);
    h.finalize().into()
}

/// Raw ChaCha20 output from a given seed, for external statistical batteries (dieharder,
/// PractRand). A separate type so the beacon's own generator is never exposed.
pub struct ExportStream(ChaCha20Rng);

impl ExportStream {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        ExportStream(ChaCha20Rng::from_seed(seed))
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        self.0.fill_bytes(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter standing in for the OS, so the test is deterministic. Its outputs differ on
    /// every call, as real entropy would.
    struct Counter(u8);
    impl Entropy for Counter {
        fn fill(&mut self, buf: &mut [u8; 32]) -> Result<(), EntropyError> {
            self.0 += 1;
            *buf = [self.0; 32];
            Ok(())
        }
    }

    struct Broken;
    impl Entropy for Broken {
        fn fill(&mut self, _: &mut [u8; 32]) -> Result<(), EntropyError> {
            Err(EntropyError("no entropy".into()))
        }
    }

    fn policy() -> ReseedPolicy {
        ReseedPolicy { max_outputs: 3, max_age: Duration::from_secs(10) }
    }

    #[test]
    fn reseeds_after_n_outputs() {
        let (mut g, first) = Csprng::new(Counter(0), policy(), Duration::ZERO).unwrap();
        assert_eq!(first.reason, ReseedReason::Initial);
        let mut out = [0; 8];
        for _ in 0..3 {
            assert_eq!(g.fill(Duration::ZERO, &mut out).unwrap(), None);
        }
        let ev = g.fill(Duration::ZERO, &mut out).unwrap().expect("fourth output reseeds");
        assert_eq!((ev.generation, ev.reason), (1, ReseedReason::Outputs));
        assert_ne!(ev.commitment, first.commitment);
    }

    #[test]
    fn reseeds_on_schedule_with_injected_time() {
        let (mut g, _) = Csprng::new(Counter(0), policy(), Duration::from_secs(100)).unwrap();
        let mut out = [0; 8];
        assert_eq!(g.fill(Duration::from_secs(109), &mut out).unwrap(), None);
        let ev = g.fill(Duration::from_secs(110), &mut out).unwrap().expect("seed is 10 s old");
        assert_eq!(ev.reason, ReseedReason::Schedule);
        assert_eq!(g.fill(Duration::from_secs(111), &mut out).unwrap(), None, "the age restarts at the reseed");
    }

    #[test]
    fn reseeds_on_demand_and_changes_the_stream() {
        let (mut a, _) = Csprng::new(Counter(0), policy(), Duration::ZERO).unwrap();
        let (mut b, _) = Csprng::new(Counter(0), policy(), Duration::ZERO).unwrap();
        let ev = a.reseed(ReseedReason::Demand, Duration::ZERO).unwrap();
        assert_eq!((ev.generation, ev.reason), (1, ReseedReason::Demand));
        let (mut x, mut y) = ([0; 32], [0; 32]);
        a.fill(Duration::ZERO, &mut x).unwrap();
        b.fill(Duration::ZERO, &mut y).unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn a_failing_entropy_source_is_an_error_not_a_weak_seed() {
        assert!(Csprng::new(Broken, policy(), Duration::ZERO).is_err());
    }

    #[test]
    fn the_commitment_is_not_the_seed_or_the_output() {
        let (mut g, ev) = Csprng::new(Counter(0), policy(), Duration::ZERO).unwrap();
        let seed = mix(&[1; 32], &[0; 32]);
        assert_ne!(ev.commitment, seed);
        assert_eq!(ev.commitment, commit(&seed));
        let mut out = [0; 32];
        g.fill(Duration::ZERO, &mut out).unwrap();
        assert_ne!(out, ev.commitment);
    }
}
