//! The simulator's promises: a seed reproduces its run exactly, and known bugs planted in the
//! real node code are found within a bounded number of seeds.

use sim::config::SimConfig;
use sim::run::run;

#[test]
fn the_same_seed_gives_the_same_trace_hash() {
    for (seed, scenario) in [(11, "leader-crash"), (12, "region-partition"), (13, "random")] {
        let cfg = SimConfig::derive(seed, scenario).unwrap();
        let a = run(&cfg, None);
        let b = run(&cfg, None);
        assert!(a.violation.is_none(), "seed {seed} {scenario}: {:?}", a.violation);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} {scenario} is not deterministic");
        assert!(a.acked > 0, "the workload ran");
    }
    // And different seeds give different runs.
    let x = run(&SimConfig::derive(1, "bridge").unwrap(), Some(3_000));
    let y = run(&SimConfig::derive(2, "bridge").unwrap(), Some(3_000));
    assert_ne!(x.trace_hash, y.trace_hash);
}

#[test]
fn with_the_state_on_disk_runs_pass_their_checks_through_crashes_and_reproduce() {
    // Real fjall stores under each node (crashed, restarted, sent snapshots as checkpoints):
    // the same checks, and the same trace twice.
    for (seed, scenario) in [(21, "leader-crash"), (22, "restart-all")] {
        let mut cfg = SimConfig::derive(seed, scenario).unwrap();
        cfg.disk_state = true;
        let a = run(&cfg, None);
        assert!(a.violation.is_none(), "seed {seed} {scenario} on disk: {:?}", a.violation);
        assert!(a.acked > 0, "the workload ran");
        assert!(a.disk_bytes > 0, "the nodes kept their state in stores on disk");
        let b = run(&cfg, None);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} {scenario} on disk is not deterministic");
    }
}

/// Runs seeds until one fails; returns the failing check.
fn find(bug: &str, scenario: &str, seeds: u64) -> Option<(u64, String)> {
    (0..seeds).find_map(|seed| {
        let mut cfg = SimConfig::derive(seed, scenario).unwrap();
        cfg.plant = Some(bug.to_string());
        run(&cfg, None).violation.map(|v| (seed, v.check))
    })
}

#[test]
fn a_planted_ack_before_fsync_is_found_within_five_seeds() {
    let found = find("ack-before-fsync", "restart-all", 5);
    assert!(found.is_some(), "acknowledging before fsync went unnoticed");
    eprintln!("ack-before-fsync found: {found:?}");
}

#[test]
fn a_planted_missing_idempotency_check_is_found_within_five_seeds() {
    let found = find("skip-idempotency", "leader-crash", 5);
    let (_, check) = found.expect("skipping the idempotency check went unnoticed");
    assert!(["retry-mismatch", "double-apply", "lost-ack"].contains(&check.as_str()), "{check}");
}

#[test]
fn every_checked_in_scenario_file_runs_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no scenario files in {}", dir.display());
    for f in files {
        let cfg: SimConfig = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let r = run(&cfg, None);
        assert!(r.violation.is_none(), "{}: {:?}", f.display(), r.violation);
    }
}
