//! The public gRPC session service (`casino.session.v1.Sessions`): how a casino's login
//! front-end opens players' sessions, and how players refresh, step up, list and end them, on
//! top of the `session-store` library; and the durable security event log those calls (and the
//! wallet API's token checks) write to.
//!
//! - [`service`]: the service; who may call what, rate limits, errors.
//! - [`audit`]: the hash-chained security event log and its verifier.
//! - [`ctl`]: `walletctl session …`.

pub mod audit;
pub mod ctl;
pub mod service;

/// Code generated from `proto/casino/session/v1/session.proto`.
#[allow(unreachable_pub, missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("casino.session.v1");
}

/// The fully qualified service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "casino.session.v1.Sessions";

/// The gRPC path of one of the service's methods, which operator signatures cover.
pub fn path(method: &str) -> String {
    format!("/{SERVICE_NAME}/{method}")
}
