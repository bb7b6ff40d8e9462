//! Session store: short-lived access tokens, rotating refresh tokens, device binding, step-up
//! authentication and revocation, on an in-memory or a Redis backend.
//!
//! - [`token`] (pure): the signed access-token format and the rotating keyring.
//! - [`model`]: records, configuration, errors, security events, the clock.
//! - [`backend`]: the storage trait and the in-memory backend.
//! - [`redis_backend`]: the Redis backend, with pub/sub revocation.
//! - [`store`]: the session logic on top of any backend.

pub mod backend;
pub mod model;
pub mod redis_backend;
pub mod store;
pub mod token;

pub use backend::{Backend, MemoryBackend};
pub use model::{
    Action, AuthError, Clock, ManualClock, RateLimit, RateLimits, SecurityEvent, SessionConfig, SystemClock,
};
pub use redis_backend::RedisBackend;
pub use store::{EventSink, Introspection, Principal, SessionInfo, SessionStore, Tokens};
pub use token::Keyring;
