//! The deploy pipeline: analyse → validate/pin → secrets → plan → deploy → health gate → switch.
//!
//! It runs inside the pre-receive hook, between "objects received" and "ref updated", so a push whose
//! analysis, validation, secrets or health check fails is rejected and the ref never moves.

pub mod analyse;
pub mod deploy;
pub mod enrich;
pub mod registry;
pub mod secrets;
pub mod source;
pub mod validate;
