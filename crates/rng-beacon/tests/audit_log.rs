//! The audit log end to end: a beacon session is logged, verified, re-derived, and every kind of
//! tampering is caught at its position.

use rng_beacon::beacon::{Beacon, BeaconError};
use rng_beacon::csprng::{Entropy, EntropyError, ReseedPolicy};
use rng_beacon::fair::{Game, Mode};
use rng_beacon::log::{self, Event, LogError, LogWriter};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

/// Deterministic stand-in for OS entropy so the session is reproducible.
struct Counter(u8);
impl Entropy for Counter {
    fn fill(&mut self, buf: &mut [u8; 32]) -> Result<(), EntropyError> {
        self.0 = self.0.wrapping_add(1);
        *buf = [self.0; 32];
        Ok(())
    }
}

fn log_all(w: &LogWriter, events: Vec<Event>) {
    w.submit(events, 0).wait().unwrap();
}

/// Writes a session: two pairs, draws of every game, one rotation, rounds across two epoch
/// boundaries, reseeds. Returns (draws under the rotated pair, draws under the active pair).
fn session(path: &Path) -> (u64, u64) {
    let (w, _) = LogWriter::open(path, 0).unwrap();
    let policy = ReseedPolicy { max_outputs: 3, max_age: Duration::from_secs(60) };
    let (mut b, ev) = Beacon::new(Counter(0), policy, 5, Duration::ZERO, None).unwrap();
    log_all(&w, ev);
    for pair in ["alice", "bob"] {
        let (_, ev) = b.commitment(pair, Duration::ZERO).unwrap();
        log_all(&w, ev);
    }
    let games = ["float", "dice", "roulette", "cards:3", "keno", "mines:5", "plinko:12", "limbo", "shuffle"];
    let mut n = 0;
    for (i, g) in games.iter().enumerate() {
        for mode in [Mode::Stake, Mode::Unbiased] {
            let (_, ev) = b.draw("alice", Game::parse(g).unwrap(), mode, "alice's seed", n).unwrap();
            log_all(&w, ev);
            n += 1;
        }
        let (_, ev) = b.draw("bob", Game::parse(g).unwrap(), Mode::Unbiased, "bob's seed", i as u64).unwrap();
        log_all(&w, ev);
    }
    let (_, _, ev) = b.rotate("alice", None, Duration::from_secs(1)).unwrap();
    log_all(&w, ev);
    for r in 0..12 {
        let (_, ev) = b.next_round(r, Duration::from_secs(2)).unwrap();
        log_all(&w, ev);
    }
    log_all(&w, vec![b.reseed(Duration::from_secs(3)).unwrap()]);
    (n, games.len() as u64)
}

#[test]
fn a_session_verifies_and_rederives_every_revealed_outcome_and_round() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (revealed, unrevealed) = session(&path);
    let report = log::verify(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(report.draws, revealed + unrevealed);
    assert_eq!(report.draws_rederived, revealed);
    assert_eq!(report.draws_unrevealed, unrevealed);
    assert_eq!(report.reveals, 1);
    // 12 rounds at 5 per epoch: epochs 0 and 1 are revealed (rounds 0..=9), epoch 2 is live.
    assert_eq!((report.epochs_revealed, report.rounds_rederived), (2, 10));
    assert!(report.reseeds >= 3, "initial, by count, on demand: {report:?}");
}

#[test]
fn a_clean_shutdown_reveals_everything_still_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (w, _) = LogWriter::open(&path, 0).unwrap();
    let (mut b, ev) = Beacon::new(Counter(0), ReseedPolicy::default(), 100, Duration::ZERO, None).unwrap();
    log_all(&w, ev);
    log_all(&w, b.commitment("p", Duration::ZERO).unwrap().1);
    for n in 0..3 {
        log_all(&w, b.draw("p", Game::Keno, Mode::Unbiased, "c", n).unwrap().1);
        log_all(&w, b.next_round(n, Duration::ZERO).unwrap().1);
    }
    log_all(&w, b.retire_all());
    drop(w);
    let report = log::verify(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!((report.draws, report.draws_rederived, report.draws_unrevealed), (3, 3, 0));
    assert_eq!((report.epochs_revealed, report.rounds_rederived), (1, 3));
}

#[test]
fn an_idle_beacon_still_reseeds_on_schedule() {
    let policy = ReseedPolicy { max_outputs: 1000, max_age: Duration::from_secs(60) };
    let (mut b, _) = Beacon::new(Counter(0), policy, 1000, Duration::ZERO, None).unwrap();
    let (_, ev) = b.next_round(0, Duration::from_secs(59)).unwrap();
    assert!(ev.is_empty());
    let (_, ev) = b.next_round(0, Duration::from_secs(60)).unwrap();
    assert!(matches!(&ev[..], [Event::Reseed { reason, generation: 1, .. }] if reason == "schedule"), "{ev:?}");
}

#[test]
fn seeds_never_appear_in_the_log_before_their_reveal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    session(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut revealed_at = None;
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(&line[65..]).unwrap();
        if v["kind"] == "reveal" {
            let seed = v["server_seed"].as_str().unwrap().to_owned();
            revealed_at = Some((i, seed));
        }
    }
    let (at, seed) = revealed_at.expect("one reveal");
    let first_mention = text.lines().position(|l| l.contains(&seed)).unwrap();
    assert_eq!(first_mention, at, "the server seed appears first in its own reveal");
}

#[test]
fn every_flipped_byte_is_reported_on_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    session(&path);
    let good = std::fs::read(&path).unwrap();
    let line_starts: Vec<usize> =
        std::iter::once(0).chain(good.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1)).collect();
    // Every 7th byte, covering hashes, JSON and newlines of every line.
    for pos in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        let err = log::verify(&bad).expect_err(&format!("flip at byte {pos} must be caught"));
        let line = line_starts.iter().rposition(|&s| s <= pos).unwrap() + 1;
        if good[pos] == b'\n' {
            // A damaged newline merges two lines: caught on the line it ends or the next.
            assert!(err.line == line || err.line == line + 1, "byte {pos}: {err}");
        } else {
            assert_eq!(err.line, line, "byte {pos}: {err}");
            assert_eq!(err.offset, line_starts[line - 1] as u64, "byte {pos}: {err}");
        }
    }
}

#[test]
fn a_rewritten_chain_is_still_caught_by_rederivation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    session(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    // The attacker edits a revealed dice outcome and recomputes every hash after it.
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    let mut edited_line = 0;
    for (i, line) in text.lines().enumerate() {
        let mut v: serde_json::Value = serde_json::from_str(&line[65..]).unwrap();
        if edited_line == 0 && v["kind"] == "draw" && v["pair"] == "alice" && v["game"] == "dice" {
            v["outcome"] = serde_json::json!(99.99);
            edited_line = i + 1;
        }
        v["prev"] = serde_json::Value::from(prev.clone());
        let json = serde_json::to_string(&v).unwrap();
        let hash = hex::encode(Sha256::digest(json.as_bytes()));
        out.push_str(&format!("{hash} {json}\n"));
        prev = hash;
    }
    let err = log::verify(out.as_bytes()).unwrap_err();
    assert!(err.reason.contains("re-derives to"), "{err}");
    assert!(err.reason.contains(&format!("the draw at line {edited_line}")), "{err}");
}

#[test]
fn a_torn_tail_is_cut_on_open_and_other_damage_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    session(&path);
    let good = std::fs::read(&path).unwrap();
    // A crash mid-append leaves half a line: cut, then the log continues and verifies.
    let mut torn = good.clone();
    torn.extend_from_slice(b"0123abcd {\"seq\":");
    std::fs::write(&path, &torn).unwrap();
    let (w, report) = LogWriter::open(&path, 0).unwrap();
    drop(w);
    assert!(report.records > 0);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(&after[..good.len()], &good[..]);
    log::verify(&after).unwrap();
    // Damage inside the log is not a torn tail: refuse to append to it.
    let mut bad = good.clone();
    bad[100] ^= 0x20;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(LogWriter::open(&path, 0), Err(LogError::Damaged(_))));
}

#[test]
fn nonces_client_seeds_and_reveals_follow_the_rules() {
    let (mut b, _) = Beacon::new(Counter(0), ReseedPolicy::default(), 10, Duration::ZERO, None).unwrap();
    let dice = Game::Dice;
    assert!(matches!(b.draw("p", dice, Mode::Stake, "c", 0), Err(BeaconError::UnknownPair(_))));
    let (c, _) = b.commitment("p", Duration::ZERO).unwrap();
    assert_eq!((c.next_nonce, c.client_seed.clone()), (0, None));
    assert!(matches!(b.draw("p", dice, Mode::Stake, "c", 1), Err(BeaconError::NonceSkipped { got: 1, expected: 0 })));
    b.draw("p", dice, Mode::Stake, "c", 0).unwrap();
    assert!(matches!(b.draw("p", dice, Mode::Stake, "c", 0), Err(BeaconError::NonceReused { got: 0, expected: 1 })));
    assert!(matches!(b.draw("p", dice, Mode::Stake, "other", 1), Err(BeaconError::ClientSeedMismatch)));
    assert!(matches!(b.draw("p", dice, Mode::Stake, "", 1), Err(BeaconError::Input(_))));
    assert!(matches!(b.draw("p", dice, Mode::Stake, &"x".repeat(257), 1), Err(BeaconError::Input(_))));
    assert!(matches!(b.commitment("", Duration::ZERO), Err(BeaconError::BadPairId)));
    assert!(matches!(b.commitment("a b", Duration::ZERO), Err(BeaconError::BadPairId)));
    assert!(matches!(b.reveal(&c.server_seed_hash), Err(BeaconError::StillActive(_))));
    assert!(matches!(b.reveal("00"), Err(BeaconError::UnknownCommitment(_))));
    let (revealed, next, _) = b.rotate("p", Some("new client".into()), Duration::ZERO).unwrap();
    assert_eq!(revealed.nonces_used, 1);
    assert_eq!(hex::encode(Sha256::digest(revealed.server_seed.as_bytes())), c.server_seed_hash);
    assert_eq!(b.reveal(&c.server_seed_hash).unwrap().server_seed, revealed.server_seed);
    assert_ne!(next.server_seed_hash, c.server_seed_hash);
    assert_eq!((next.next_nonce, next.client_seed.as_deref()), (0, Some("new client")));
    assert!(matches!(b.draw("p", dice, Mode::Stake, "c", 0), Err(BeaconError::ClientSeedMismatch)));
    b.draw("p", dice, Mode::Stake, "new client", 0).unwrap();
}
