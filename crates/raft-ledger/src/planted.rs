//! Known bugs the simulator must find, planted on purpose (feature `planted-bugs`, for the
//! simulator's own tests). A bug is planted per thread, and a turmoil simulation runs on one
//! thread, so other runs in the same process are unaffected. Without the feature, nothing is
//! ever planted and these checks compile to `false`.

/// A bug that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The write-ahead log acknowledges appends without fsyncing them, so a crash of a majority
    /// loses acknowledged writes.
    AckBeforeFsync,
    /// The ledger forgets idempotency keys, so a retry applies a second time.
    SkipIdempotency,
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Plants `bug` on this thread (or removes any with `None`).
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}

/// True when `bug` is planted on this thread.
#[cfg(feature = "planted-bugs")]
pub(crate) fn planted(bug: Bug) -> bool {
    PLANTED.with(|p| p.get() == Some(bug))
}

/// True when `bug` is planted on this thread: never, without the feature.
#[cfg(not(feature = "planted-bugs"))]
pub(crate) fn planted(_bug: Bug) -> bool {
    false
}
