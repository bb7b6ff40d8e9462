//! Deterministic simulation of the replicated ledger on turmoil.
//!
//! Not built yet: the seeded simulator, its scenarios and `sim run/sweep/repro/shrink` are issue 7.
//! What exists today is the single turmoil test in `crates/raft-ledger/tests/`, which runs a real
//! 3-node shard over turmoil's network and disk.
