//! Chaos engineering against real `walletd` processes: scenario files, a fault proxy on every
//! link, a runner that starts a cluster, injects the faults, measures RTO and RPO, and checks
//! the ledger afterwards.
//!
//! - [`scenario`]: the file format, validated and bounded.
//! - [`proxy`]: the user-space fault proxy (latency and jitter in place of netem, one-way
//!   blackholes, resets, timeouts, slicing; per link and direction, in layers).
//! - [`cluster`]: nodes and routers as processes, a network namespace each when root.
//! - [`run`]: the workload, the method, the rollbacks, the measurements.
//! - [`lazyfs`]: a FUSE file system that loses unsynced writes at a power cut.
//! - [`checker`]: history against the ledger, every violation named.
//! - [`report`]: journal.json, checker.json, timeline.csv, report.md, plots.

// Floats here are times, rates and percentiles for reports, never money: the checker works
// on balances in integer minor units.
#![allow(clippy::float_arithmetic)]

pub mod checker;
pub mod cluster;
pub mod lazyfs;
pub mod proxy;
pub mod report;
pub mod run;
pub mod scenario;
