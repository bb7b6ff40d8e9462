//! What a run leaves in its folder: `journal.json` (shaped like a Chaos Toolkit journal:
//! `status`, `deviated`, `steady_states` before/after/during, `run`, `rollbacks`, start, end,
//! duration; our measurements under `measurements`), `checker.json` (the checker's verdict,
//! every violation named), `timeline.csv` (per second), `attempts.csv` (every attempt: start,
//! end, shard, error), `report.md` and its plots
//! (`timeline.svg`: throughput, errors and p99 over time with the fault windows shaded;
//! `rto.svg`: every fault's RTO by kind).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::json;

use crate::run::{Outcome, Window};
use crate::scenario::Scenario;

/// One second of the run.
struct Second {
    acked: u64,
    failed: u64,
    p99_ms: f64,
}

fn per_second(out: &Outcome) -> Vec<Second> {
    let last = out.attempts.iter().map(|a| a.end_ms).fold(0.0, f64::max);
    let n = (last / 1000.0).ceil() as usize + 1;
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut failed = vec![0u64; n];
    for a in &out.attempts {
        let s = (a.end_ms / 1000.0) as usize;
        match a.error {
            None => lat[s].push(a.end_ms - a.start_ms),
            Some(_) => failed[s] += 1,
        }
    }
    lat.into_iter()
        .zip(failed)
        .map(|(mut l, failed)| {
            l.sort_by(f64::total_cmp);
            let p99 = if l.is_empty() { 0.0 } else { l[((l.len() - 1) as f64 * 0.99).round() as usize] };
            Second { acked: l.len() as u64, failed, p99_ms: p99 }
        })
        .collect()
}

fn iso(unix_ms: u64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm), to avoid a date crate
    // for one timestamp format.
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, unix_ms % 1000)
}

fn window_json(w: &Window) -> serde_json::Value {
    serde_json::to_value(w).unwrap_or_default()
}

/// Writes every output of a run into `dir`.
pub fn write(dir: &Path, s: &Scenario, out: &Outcome) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probes = |window: &str| {
        out.probes
            .iter()
            .filter(|p| p.0 == window)
            .map(|(_, name, tol, val, ok)| {
                json!({"activity": {"type": "probe", "name": name, "tolerance": tol}, "output": val, "tolerance_met": ok})
            })
            .collect::<Vec<_>>()
    };
    let met = |window: &str| out.probes.iter().filter(|p| p.0 == window).all(|p| p.4);
    let run: Vec<serde_json::Value> = out
        .faults
        .iter()
        .map(|f| {
            json!({
                "activity": {"type": "action", "name": f.kind, "target": f.target},
                "status": if f.error.is_none() { "succeeded" } else { "failed" },
                "start_ms": f.at_ms,
                "end_ms": f.healed_ms,
                "output": {"rto_ms_per_shard": f.rto_ms, "rto_ms": f.worst_rto(), "note": f.note},
                "exception": f.error,
            })
        })
        .collect();
    let status = if out.interrupted {
        "interrupted"
    } else if out.passed {
        "completed"
    } else {
        "failed"
    };
    let journal = json!({
        "chaoslib-version": null,
        "platform": std::env::consts::OS,
        "node": "chaos (walletd)",
        "experiment": s,
        "start": iso(out.started_unix_ms),
        "end": iso(out.ended_unix_ms),
        "duration": (out.ended_unix_ms.saturating_sub(out.started_unix_ms)) as f64 / 1000.0,
        "status": status,
        "deviated": !(met("before") && met("after")),
        "steady_states": {
            "before": {"steady_state_met": met("before"), "probes": probes("before")},
            "after": {"steady_state_met": met("after"), "probes": probes("after")},
            "during": out.windows.iter().filter(|w| w.name.starts_with("during")).map(window_json).collect::<Vec<_>>(),
        },
        "run": run,
        "rollbacks": [{
            "activity": {"type": "action", "name": "heal everything: proxy faults cleared (the emulated network kept), iptables flushed, links up, paused processes continued, stopped processes started"},
            "status": "succeeded",
        }],
        "measurements": {
            "root": out.root,
            "rto_p99_ms": out.rto_p99_ms,
            "rpo_lost_acknowledged": out.verdict.lost,
            "windows": out.windows.iter().map(window_json).collect::<Vec<_>>(),
            "leader_changes": out.leader_changes,
            "passed": out.passed,
            "failures": out.failures,
        },
    });
    std::fs::write(dir.join("journal.json"), serde_json::to_string_pretty(&journal).unwrap_or_default())?;
    std::fs::write(dir.join("checker.json"), serde_json::to_string_pretty(&out.verdict).unwrap_or_default())?;
    let seconds = per_second(out);
    let mut csv = String::from("second,acked,failed,p99_ms\n");
    for (i, s) in seconds.iter().enumerate() {
        let _ = writeln!(csv, "{i},{},{},{:.2}", s.acked, s.failed, s.p99_ms);
    }
    std::fs::write(dir.join("timeline.csv"), csv)?;
    let mut raw = String::from("start_ms,end_ms,shard,error\n");
    for a in &out.attempts {
        let _ = writeln!(raw, "{:.1},{:.1},{},{}", a.start_ms, a.end_ms, a.shard, a.error.as_deref().unwrap_or(""));
    }
    std::fs::write(dir.join("attempts.csv"), raw)?;
    let plots_ok =
        plot_timeline(&dir.join("timeline.svg"), out, &seconds).is_ok() && plot_rto(&dir.join("rto.svg"), out).is_ok();
    std::fs::write(dir.join("report.md"), markdown(s, out, plots_ok))?;
    Ok(())
}

fn markdown(s: &Scenario, out: &Outcome, plots: bool) -> String {
    let mut m = String::new();
    let verdict = if out.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(m, "# {} — {verdict}\n", s.title);
    if !s.description.is_empty() {
        let _ = writeln!(m, "{}\n", s.description.trim());
    }
    let _ = writeln!(
        m,
        "Mode: {}. Workload: {} bets/s offered for {} s over {} players, {} ms per attempt, retried with the same key.\n",
        if out.root {
            "a network namespace per node and router, every link through the fault proxy"
        } else {
            "loopback (not root): per-destination proxy faults only"
        },
        s.workload.rate,
        s.workload.duration_s,
        s.workload.players,
        s.workload.deadline_ms
    );
    if !out.failures.is_empty() {
        let _ = writeln!(m, "## Why it failed\n");
        for f in &out.failures {
            let _ = writeln!(m, "- {f}");
        }
        m.push('\n');
    }
    let _ = writeln!(m, "## Results\n");
    let rto = out.rto_p99_ms.map_or("never recovered".into(), |v| format!("{v:.0} ms"));
    let _ = writeln!(m, "| measure | value | target |\n|---|---|---|");
    let _ = writeln!(m, "| RPO (acknowledged operations lost) | {} | {} |", out.verdict.lost, s.targets.rpo);
    let _ = writeln!(m, "| RTO p99 over {} fault(s) | {rto} | ≤ {} ms |", out.faults.len(), s.targets.rto_p99_ms);
    let _ = writeln!(m, "| acknowledged operations checked | {} | every one exactly once |", out.verdict.acked);
    let _ = writeln!(
        m,
        "| outcome unknown at the end | {} ({} applied once) | at most once |",
        out.verdict.unknown, out.verdict.unknown_applied
    );
    let _ = writeln!(m, "| checker violations | {} | 0 |", out.verdict.violations.len());
    let changes: Vec<String> = out.leader_changes.iter().map(|(s, n)| format!("shard {s}: {n}")).collect();
    let _ = writeln!(m, "| leader changes | {} | |\n", changes.join(", "));
    let _ = writeln!(m, "## Steady state and fault windows\n");
    let _ = writeln!(
        m,
        "| window | from s | to s | attempts | errors % | acked/s | p50 ms | p99 ms | p999 ms |\n|---|---|---|---|---|---|---|---|---|"
    );
    for w in &out.windows {
        let _ = writeln!(
            m,
            "| {} | {:.1} | {:.1} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} |",
            w.name,
            w.from_ms / 1000.0,
            w.to_ms / 1000.0,
            w.attempts,
            w.error_percent,
            w.acked_per_s,
            w.p50_ms,
            w.p99_ms,
            w.p999_ms
        );
    }
    let _ = writeln!(m, "\n| window | probe | tolerance | value | met |\n|---|---|---|---|---|");
    for (w, name, tol, val, ok) in &out.probes {
        let _ = writeln!(m, "| {w} | {name} | {tol} | {val} | {} |", if *ok { "yes" } else { "**no**" });
    }
    let _ = writeln!(m, "\n## Faults\n");
    let _ = writeln!(
        m,
        "| # | fault | target | at s | healed s | RTO ms (slowest shard) | RTO per shard ms |\n|---|---|---|---|---|---|---|"
    );
    for (i, f) in out.faults.iter().enumerate() {
        let per: Vec<String> =
            f.rto_ms.iter().map(|(s, v)| format!("{s}: {}", v.map_or("-".into(), |v| format!("{v:.0}")))).collect();
        let _ = writeln!(
            m,
            "| {} | {} | {} | {:.1} | {} | {} | {} |",
            i + 1,
            f.kind,
            f.target,
            f.at_ms / 1000.0,
            f.healed_ms.map_or("-".into(), |h| format!("{:.1}", h / 1000.0)),
            f.worst_rto().map_or("never".into(), |v| format!("{v:.0}")),
            per.join(", ")
        );
    }
    for (i, f) in out.faults.iter().enumerate() {
        if let Some(note) = &f.note {
            let _ = writeln!(m, "\nFault {} at healing: {note}.", i + 1);
        }
    }
    let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for f in &out.faults {
        if let Some(r) = f.worst_rto() {
            by_kind.entry(f.kind.as_str()).or_default().push(r);
        }
    }
    let _ = writeln!(m, "\n| fault kind | n | RTO p50 ms | RTO p99 ms | max ms |\n|---|---|---|---|---|");
    for (k, mut v) in by_kind {
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        let _ = writeln!(m, "| {k} | {} | {:.0} | {:.0} | {:.0} |", v.len(), q(0.5), q(0.99), v[v.len() - 1]);
    }
    let _ = writeln!(m, "\n## Checker\n");
    if out.verdict.violations.is_empty() {
        let _ = writeln!(
            m,
            "No violation: every acknowledged bet is in the ledger exactly once, no refused one is, nothing else is, every balance is the sum of its entries and not negative, every replica verifies and all agree."
        );
    } else {
        for v in &out.verdict.violations {
            let _ = writeln!(m, "- `{}`", serde_json::to_string(v).unwrap_or_default());
        }
    }
    if plots {
        let _ = writeln!(m, "\n## Plots\n\n![timeline](timeline.svg)\n\n![RTO](rto.svg)");
    }
    m
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Every fault's window, from the strike to the heal, as a shaded band up to `y_max`.
fn shading(out: &Outcome, y_max: f64) -> Vec<Rectangle<(f64, f64)>> {
    out.faults
        .iter()
        .map(|f| {
            let (a, b) = (f.at_ms / 1000.0, f.healed_ms.unwrap_or(f.at_ms + 100.0) / 1000.0);
            Rectangle::new([(a, 0.0), (b.max(a + 0.1), y_max)], RED.mix(0.12).filled())
        })
        .collect()
}

fn plot_timeline(path: &Path, out: &Outcome, seconds: &[Second]) -> PlotResult {
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(320);
    let x_max = seconds.len().max(1) as f64;
    let y_max = seconds.iter().map(|s| s.acked.max(s.failed)).max().unwrap_or(1).max(1) as f64 * 1.15;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("{}: per second", out.title), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart.configure_mesh().x_desc("seconds").y_desc("operations/s").draw()?;
    chart.draw_series(shading(out, y_max))?;
    chart
        .draw_series(LineSeries::new(seconds.iter().enumerate().map(|(i, s)| (i as f64, s.acked as f64)), &BLUE))?
        .label("acknowledged")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(seconds.iter().enumerate().map(|(i, s)| (i as f64, s.failed as f64)), &RED))?
        .label("failed attempts")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    let p_max = seconds.iter().map(|s| s.p99_ms).fold(1.0, f64::max) * 1.15;
    let mut lat = ChartBuilder::on(&bottom)
        .caption("p99 latency of acknowledged attempts (fault windows shaded)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..p_max)?;
    lat.configure_mesh().x_desc("seconds").y_desc("ms").draw()?;
    lat.draw_series(shading(out, p_max))?;
    lat.draw_series(LineSeries::new(seconds.iter().enumerate().map(|(i, s)| (i as f64, s.p99_ms)), &BLACK))?;
    root.present()?;
    Ok(())
}

fn plot_rto(path: &Path, out: &Outcome) -> PlotResult {
    let root = SVGBackend::new(path, (800, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let kinds: Vec<&str> = {
        let mut k: Vec<&str> = out.faults.iter().map(|f| f.kind.as_str()).collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    let y_max = out.faults.iter().filter_map(|f| f.worst_rto()).fold(100.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("RTO of every fault (slowest shard), by kind", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..(kinds.len() as f64 - 0.5).max(0.5), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_labels(kinds.len().max(1))
        .x_label_formatter(&|x| kinds.get(x.round().max(0.0) as usize).map_or(String::new(), |k| (*k).to_string()))
        .y_desc("ms")
        .draw()?;
    let points = out.faults.iter().filter_map(|f| {
        let k = kinds.iter().position(|k| *k == f.kind)?;
        Some(Circle::new((k as f64, f.worst_rto()?), 4, BLUE.filled()))
    });
    chart.draw_series(points)?;
    root.present()?;
    Ok(())
}
