//! The `Throttle` aggregate: streamforge's one lockout model. Every limit on
//! guessing and on sending — wrong OTPs, wrong passwords, codes requested per
//! phone or email — is a `Throttle` stream keyed `<policy>:<subject>` and
//! governed by a [`Policy`]; every failure, refusal and lock is an event, so
//! lockouts are auditable and replayable.
//!
//! Sources: NIST SP 800-63B-4 §3.2.2 (a failure counter that a new code does
//! not reset, capped well under 100 consecutive failures), seed 003 (3 codes
//! per phone per hour), SECURITY.md.

mod aggregate;
mod policy;

pub use aggregate::{Throttle, ThrottleCommand, ThrottleError, ThrottleEvent};
pub use policy::{FailurePolicy, Policy, RequestPolicy};
