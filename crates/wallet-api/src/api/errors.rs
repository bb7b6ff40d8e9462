//! Every refusal as a gRPC status carrying a `google.rpc.ErrorInfo` with a stable reason.
//!
//! The reasons and their codes are documented in `wallet.proto`; this module is their one
//! source in code, so a new rejection cannot reach a client without a code.

use std::collections::HashMap;

use ledger_core::Rejection;
use raft_ledger::api::LedgerError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every wallet error.
pub const DOMAIN: &str = "wallet.casino";

/// A status with an `ErrorInfo` of `reason` and optional metadata pairs.
pub fn status(code: Code, reason: &str, message: impl Into<String>, meta: &[(&str, &str)]) -> Status {
    let metadata: HashMap<String, String> = meta.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, DOMAIN, metadata))
}

/// A bad field that the ledger's own rejections do not name.
pub fn invalid_field(field: &str, message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, "INVALID_ARGUMENT", message, &[("field", field)])
}

/// A mutating call without an idempotency key.
pub fn missing_key() -> Status {
    status(
        Code::InvalidArgument,
        "IDEMPOTENCY_KEY_MISSING",
        "idempotency_key is required on every call that moves money",
        &[("field", "idempotency_key")],
    )
}

/// The key was used before with a different payload.
pub fn key_reused(key: &str) -> Status {
    status(
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
        format!("idempotency key {key:?} was already used with a different request; nothing changed"),
        &[("field", "idempotency_key")],
    )
}

/// The gRPC code a ledger rejection maps to.
pub fn rejection_code(r: Rejection) -> Code {
    use Rejection::*;
    match r {
        AmountNotPositive | AmountTooLarge | InvalidId(_) | UnknownCurrency | InvalidReason | SameAccount
        | InvalidHoldTimeout => Code::InvalidArgument,
        UnknownAccount | UnknownHold | UnknownRound => Code::NotFound,
        AccountExists => Code::AlreadyExists,
        CurrencyMismatch | InsufficientFunds | BalanceOverflow | HoldSettled | RoundRolledBack | BetRolledBack
        | BetAlreadyRolledBack | BetMismatch | NotABet => Code::FailedPrecondition,
    }
}

/// A ledger rejection as a status; `field` names the request field at fault, when one does.
pub fn rejection(r: Rejection, field: Option<&str>) -> Status {
    let meta: Vec<(&str, &str)> = field.map(|f| ("field", f)).into_iter().collect();
    status(rejection_code(r), r.code(), r.to_string(), &meta)
}

/// A node error as a status. `Timeout` and `Unavailable` leave the outcome of a write unknown,
/// and the messages say so.
pub fn ledger(e: LedgerError) -> Status {
    match e {
        LedgerError::Invalid(r) => rejection(r, None),
        LedgerError::Timeout => status(
            Code::DeadlineExceeded,
            "OUTCOME_UNKNOWN",
            "no decision before the deadline; the call may still apply, so retry with the same idempotency key",
            &[],
        ),
        LedgerError::NotLeader { shard, leader, leader_api, .. } => {
            // The hint names the leader's wallet API address, which a client can call; the
            // node (Raft) address is the cluster's business, not the caller's.
            let api = leader_api.unwrap_or_default();
            let id = leader.map(|l| l.to_string()).unwrap_or_default();
            let message = if api.is_empty() {
                format!("this node does not lead shard {shard} and knows no leader to name; retry shortly")
            } else {
                format!("this node does not lead shard {shard}; retry at {api}")
            };
            status(
                Code::Unavailable,
                "NOT_LEADER",
                message,
                &[("leader", api.as_str()), ("leader_id", id.as_str()), ("shard", shard.to_string().as_str())],
            )
        }
        LedgerError::WrongShard { expected, requested } => status(
            Code::FailedPrecondition,
            "CROSS_SHARD_TRANSFER",
            format!(
                "payer and payee live in different shards ({requested} and {expected}); transfers stay inside one shard"
            ),
            &[],
        ),
        LedgerError::UnknownShard(s) => {
            status(Code::InvalidArgument, "INVALID_ARGUMENT", format!("no shard {s}"), &[("field", "shard")])
        }
        LedgerError::NoShard => status(Code::InvalidArgument, "INVALID_ARGUMENT", "no player or shard given", &[]),
        LedgerError::Unavailable(why) => {
            // `why` comes from inside the cluster (Raft's view of the membership, node
            // addresses): for the operator's log, never for the caller.
            tracing::debug!(reason = %why, "shard unavailable");
            status(
                Code::Unavailable,
                "SHARD_UNAVAILABLE",
                "the shard cannot take calls right now (no quorum, a leader change, or overload); a write's outcome \
                 is unknown, so retry with the same idempotency key",
                &[],
            )
        }
        // Wallet calls never change replicas; a node API error reached here only by mistake.
        LedgerError::Membership(why) => status(Code::FailedPrecondition, "MEMBERSHIP_REFUSED", why, &[]),
        LedgerError::UnknownRegion(why) => {
            status(Code::InvalidArgument, "UNKNOWN_REGION", why, &[("field", "player_id")])
        }
    }
}

/// The node is draining for shutdown.
pub fn shutting_down() -> Status {
    status(Code::Unavailable, "SHUTTING_DOWN", "this node is shutting down; retry on another node", &[])
}

/// Reads the `ErrorInfo` reason of a status, for clients and tests.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|i| i.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_has_a_code_and_its_reason_round_trips() {
        use ledger_core::IdField;
        let all = [
            Rejection::AmountNotPositive,
            Rejection::AmountTooLarge,
            Rejection::InvalidId(IdField::Tx),
            Rejection::UnknownCurrency,
            Rejection::SameAccount,
            Rejection::UnknownAccount,
            Rejection::AccountExists,
            Rejection::InsufficientFunds,
            Rejection::HoldSettled,
            Rejection::BetRolledBack,
        ];
        for r in all {
            let s = rejection(r, Some("amount"));
            assert_eq!(s.code(), rejection_code(r));
            assert_eq!(reason_of(&s).as_deref(), Some(r.code()));
            assert_eq!(s.get_details_error_info().expect("info").domain, DOMAIN);
        }
        assert_eq!(rejection_code(Rejection::InsufficientFunds), Code::FailedPrecondition);
        assert_eq!(rejection_code(Rejection::UnknownAccount), Code::NotFound);
        assert_eq!(reason_of(&ledger(LedgerError::Timeout)).as_deref(), Some("OUTCOME_UNKNOWN"));
        let region = ledger(LedgerError::UnknownRegion("player id \"mars:zed\" names region \"mars\"".into()));
        assert_eq!((region.code(), reason_of(&region).as_deref()), (Code::InvalidArgument, Some("UNKNOWN_REGION")));
        assert_eq!(
            region.get_details_error_info().expect("info").metadata.get("field").map(String::as_str),
            Some("player_id")
        );
    }

    #[test]
    fn messages_reveal_no_topology_and_need_no_escaping() {
        let inside = "has to forward request to: Some(2), Some(NodeInfo { addr: \"10.0.0.2:7001\", region: \"eu\" })";
        let s = ledger(LedgerError::Unavailable(inside.into()));
        assert_eq!(reason_of(&s).as_deref(), Some("SHARD_UNAVAILABLE"));
        for leak in ["10.0.0.2", "NodeInfo", "Some(", "forward"] {
            assert!(!s.message().contains(leak), "{leak} in {:?}", s.message());
        }
        let not_leader = ledger(LedgerError::NotLeader {
            shard: 3,
            leader: Some(2),
            leader_addr: Some("10.0.0.2:7001".into()),
            leader_api: Some("api.eu.example:8001".into()),
        });
        assert!(!not_leader.message().contains("10.0.0.2:7001"), "{}", not_leader.message());
        let info = not_leader.get_details_error_info().expect("info");
        assert_eq!(info.metadata["leader"], "api.eu.example:8001");
        // Every message is printable ASCII without '%', so no client ever shows it encoded.
        let all = [
            s,
            not_leader,
            ledger(LedgerError::Timeout),
            key_reused("k-1"),
            shutting_down(),
            rejection(Rejection::InsufficientFunds, Some("amount")),
        ];
        for st in all {
            assert!(st.message().bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'%'), "{:?}", st.message());
        }
    }
}
