//! Exit codes of `walletctl` and `walletd` (client, admin and the rest), one table for both, so a
//! script can tell a refusal from an unknown outcome from a typo.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (applied, or the original result of a retried key) |
//! | 1 | failed: no answer to a read, a connection or configuration problem; nothing changed |
//! | 2 | refused: the ledger (or the API) said no and changed nothing |
//! | 3 | a chain or proof did not verify |
//! | 4 | outcome unknown: a write may have applied; run it again with the same key to learn which |
//! | 64 | usage: the command line is wrong (an unknown flag, a missing argument, a value that cannot be sent such as an amount with too many decimals); nothing was sent |

use tonic::{Code, Status};

/// Done.
pub const OK: i32 = 0;
/// Failed without changing anything, for a reason other than a refusal.
pub const FAILED: i32 = 1;
/// Refused; nothing changed.
pub const REFUSED: i32 = 2;
/// A verification failed.
pub const VERIFY_FAILED: i32 = 3;
/// A write's outcome is unknown.
pub const UNKNOWN: i32 = 4;
/// The command line is wrong (sysexits' EX_USAGE).
pub const USAGE: i32 = 64;

/// Exits quietly, as Unix tools do, when the reader of standard output goes away
/// (`walletctl history alice | head`): Rust's `println!` panics on a closed pipe instead.
pub fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            // 128 + SIGPIPE: what a shell reports for a process the signal ended.
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Parses a command line, exiting 64 on a usage error (0 for `--help` and `--version`).
pub fn parse_or_exit<C: clap::Parser>() -> C {
    match C::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { USAGE } else { OK };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// The canonical name of a gRPC code, as the gRPC specification writes it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether a failed call that could have moved money is a definite refusal (nothing changed) or
/// leaves its outcome unknown. Only answers the server gives before acting are refusals: a
/// deadline, a lost connection, or an unavailable shard may have applied the call.
pub fn is_definite_refusal(status: &Status) -> bool {
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unauthenticated
        | Code::Unimplemented => true,
        // Unavailable is unknown unless the reason says the call was turned away before it ran.
        Code::Unavailable => crate::api::errors::reason_of(status).is_some_and(|r| {
            matches!(r.as_str(), "NOT_LEADER" | "SHUTTING_DOWN" | "SESSIONS_UNAVAILABLE" | "NO_HEALTHY_REPLICA")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::errors;
    use raft_ledger::api::LedgerError;

    #[test]
    fn deadlines_and_lost_connections_are_unknown_and_refusals_are_not() {
        assert!(!is_definite_refusal(&errors::ledger(LedgerError::Timeout)));
        assert!(!is_definite_refusal(&errors::ledger(LedgerError::Unavailable("no quorum".into()))));
        assert!(!is_definite_refusal(&Status::cancelled("Timeout expired")));
        assert!(!is_definite_refusal(&Status::unavailable("connection reset")));
        assert!(!is_definite_refusal(&Status::unknown("h2 protocol error")));
        assert!(is_definite_refusal(&errors::rejection(ledger_core::Rejection::InsufficientFunds, None)));
        assert!(is_definite_refusal(&errors::key_reused("k")));
        assert!(is_definite_refusal(&errors::shutting_down()));
        assert!(is_definite_refusal(&errors::ledger(LedgerError::NotLeader {
            shard: 1,
            leader: None,
            leader_addr: None,
            leader_api: None
        })));
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
