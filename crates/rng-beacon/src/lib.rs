//! Commit-reveal RNG beacon shared by game nodes.
//!
//! Not built yet. Its work is tracked in issue 6; until that lands this crate deliberately
//! exports nothing, so nothing can depend on behaviour that does not exist.
