//! Crash files, reproduction and shrinking.
//!
//! A crash file holds the whole configuration of a failing run (not only its seed), so a shrunk
//! run, whose fault schedule and workload no seed derives, replays exactly. Shrinking is greedy:
//! it drops one fault at a time, then fewer clients, operations and shards, keeping every change
//! under which the same check still fails, until nothing more can go.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{FaultKind, SimConfig, Target};
use crate::run::{Violation, run};

/// What a crash file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrashFile {
    /// The run.
    pub config: SimConfig,
    /// The step limit it ran with, if any.
    pub steps: Option<u64>,
    /// What broke.
    pub violation: Violation,
    /// The trace hash of the failing run.
    pub trace_hash: String,
}

impl CrashFile {
    /// Writes the file into `dir` as `crash-<seed>-<scenario>[-<planted bug>].json` (so runs of
    /// one seed with different planted bugs keep their own files); returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let plant = self.config.plant.as_ref().map(|p| format!("-{p}")).unwrap_or_default();
        let path = dir.join(format!("crash-{}-{}{plant}.json", self.config.seed, self.config.scenario));
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// Reads a crash file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The command that reproduces a run from its seed (when nothing was shrunk).
pub fn repro_command(cfg: &SimConfig, steps: Option<u64>) -> String {
    // The release build the README's commands share: a debug build would be a third one.
    let mut cmd = format!("cargo run --release --bin sim -- run --seed {} --scenario {}", cfg.seed, cfg.scenario);
    if let Some(s) = steps {
        cmd += &format!(" --steps {s}");
    }
    if let Some(p) = &cfg.plant {
        cmd += &format!(" --plant {p}");
    }
    if cfg.disk_state {
        cmd += " --state disk";
    }
    cmd
}

/// The final heal and restart every schedule ends with; shrinking keeps them.
fn is_final(cfg: &SimConfig, i: usize) -> bool {
    i + 2 >= cfg.faults.len() && matches!(cfg.faults[i].kind, FaultKind::Heal | FaultKind::Restart(Target::All))
}

/// Shrinks `crash` while its check keeps failing. `progress` hears about every attempt.
pub fn shrink(crash: &CrashFile, mut progress: impl FnMut(&str)) -> CrashFile {
    let check = crash.violation.check.clone();
    let mut best = crash.clone();
    // A smaller configuration, as a crash file, if the same check still fails under it.
    let attempt = |cfg: SimConfig| -> Option<CrashFile> {
        let r = run(&cfg, crash.steps);
        let violation = r.violation.filter(|v| v.check == check)?;
        Some(CrashFile { config: cfg, steps: crash.steps, violation, trace_hash: r.trace_hash })
    };
    loop {
        let mut changed = false;
        let mut i = 0;
        while i < best.config.faults.len() {
            if is_final(&best.config, i) {
                i += 1;
                continue;
            }
            let mut cfg = best.config.clone();
            let removed = cfg.faults.remove(i);
            if let Some(smaller) = attempt(cfg) {
                progress(&format!("dropped fault {:?}: still fails", removed.kind));
                best = smaller;
                changed = true;
            } else {
                progress(&format!("kept fault {:?}: needed", removed.kind));
                i += 1;
            }
        }
        let mut candidates = Vec::new();
        if best.config.clients > 1 {
            let mut c = best.config.clone();
            c.clients -= 1;
            candidates.push(("one client fewer", c));
        }
        if best.config.ops_per_client > 1 {
            let mut c = best.config.clone();
            c.ops_per_client /= 2;
            c.think_ms *= 2;
            candidates.push(("half the operations", c));
        }
        if best.config.shards > 1 {
            let mut c = best.config.clone();
            c.shards = 1;
            for f in &mut c.faults {
                let fix = |t: &mut Target| {
                    if let Target::LeaderOf(s) = t {
                        *s = 0;
                    }
                };
                match &mut f.kind {
                    FaultKind::Crash(t) | FaultKind::Restart(t) | FaultKind::Slow(t, _) => fix(t),
                    FaultKind::Partition(a, b) | FaultKind::OneWay(a, b) | FaultKind::Bridge(a, b, _) => {
                        fix(a);
                        fix(b);
                    }
                    FaultKind::Heal => {}
                }
            }
            candidates.push(("one shard", c));
        }
        if best.config.reuse_same_pct + best.config.reuse_other_pct > 0 {
            let mut c = best.config.clone();
            c.reuse_same_pct = 0;
            c.reuse_other_pct = 0;
            candidates.push(("no id reuse", c));
        }
        for (what, cfg) in candidates {
            if let Some(smaller) = attempt(cfg) {
                progress(&format!("{what}: still fails"));
                best = smaller;
                changed = true;
                break;
            }
            progress(&format!("{what}: passes, kept as it was"));
        }
        if !changed {
            return best;
        }
    }
}
