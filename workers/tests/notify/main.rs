//! Integration tests of the notifier (`workers::notify`, `workers::sms`)
//! against real parts: Postgres (a fresh database per test), a real SMTP
//! listener (mailin-embedded) and an HTTP fake of Twilio (wiremock). The
//! tests drive the notifier's steps (`handle`, `retry_due`, `run_once`)
//! directly.

// Test helpers (outside `#[test]` functions) may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;
mod smtp;
mod twilio;
