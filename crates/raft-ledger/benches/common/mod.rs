//! What the storage benchmarks (`apply_rate`, `state_store`) measure alike: this process's
//! resident memory and the bytes of files under a directory.

use std::path::Path;

/// Resident memory of this process, bytes (Linux's `/proc/self/status`; zeros elsewhere).
pub(crate) struct Memory {
    /// Now (`VmRSS`).
    pub(crate) resident: u64,
    /// The most it has been (`VmHWM`).
    pub(crate) peak: u64,
}

pub(crate) fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb << 10)
    };
    Memory { resident: field("VmRSS:"), peak: field("VmHWM:") }
}

/// Bytes of the files under `dir`, recursively.
pub(crate) fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}
