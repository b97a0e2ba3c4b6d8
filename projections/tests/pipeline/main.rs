//! Integration tests of the projections crate against a real Postgres (a
//! fresh database per test) and, for the Kafka feed, a real broker
//! (`KAFKA_BROKERS`, default `127.0.0.1:9092`; the tests fail without it).

// Test helpers (outside `#[test]` functions) may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod broker_restart;
mod cursor;
mod helpers;
mod ignored;
mod kafka_feed;
mod pg_feed;
mod pool;
mod rebuild;
mod runtime;
