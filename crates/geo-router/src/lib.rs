//! Health-checked, region-aware failover in front of the regions.
//!
//! Not built yet. Its work is tracked in issue 3; until that lands this crate deliberately
//! exports nothing, so nothing can depend on behaviour that does not exist.
