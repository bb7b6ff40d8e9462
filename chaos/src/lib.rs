//! Chaos scenarios and the runner that injects faults into real processes.
//!
//! Not built yet: no issue has asked for it so far. It exports nothing on purpose.
