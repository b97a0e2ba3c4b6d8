//! Integration tests of the workers crate against a real Postgres (a fresh
//! database per test) and a real Kafka-compatible broker (`KAFKA_BROKERS`,
//! default `127.0.0.1:9092`; the tests fail without it).

// Test helpers (outside `#[test]` functions) may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;
mod leader;
mod pipeline;
mod relay;
