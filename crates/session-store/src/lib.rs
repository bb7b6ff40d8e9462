//! Session store: access and refresh tokens, step-up authentication and revocation.
//!
//! Not built yet. Its work is tracked in issue 5; until that lands this crate deliberately
//! exports nothing, so nothing can depend on behaviour that does not exist.
