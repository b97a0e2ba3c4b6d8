//! streamforge's read side: the projector runtime and the event feeds it
//! consumes.
//!
//! - [`db`]: connecting to (and creating + migrating) the database;
//!   [`db::testing`] makes a fresh database per test for every crate.
//! - [`tail`]: the commit-safe cursor over the `events` table
//!   (ARCHITECTURE decided 2), shared by the relay and the Postgres feed.
//! - [`feed`]: the [`feed::EventFeed`] trait (decided 4) with two
//!   implementations, [`pg_feed::PgFeed`] (Postgres tail, the embedded
//!   default) and [`kafka_feed::KafkaFeed`] (consumer group, production).
//! - [`runtime`]: [`runtime::Projector`] and [`runtime::ProjectionRunner`],
//!   which apply each feed batch and its per-aggregate checkpoints in one
//!   Postgres transaction per projector (decided 5), then acknowledge the
//!   feed; and rebuild read models from the store.
//! - [`rebuild`]: reading the store's settled events in whole-stream chunks
//!   for set-based rebuilds ([`runtime::Projector::rebuild_chunk`]).
//!
//! Among streamforge's crates this one depends on `domain` only (for the
//! envelope); it must never depend on `commands`, `workers` or `api`.

pub mod access;
pub mod catalog;
pub mod db;
pub mod error;
pub mod feed;
pub mod identity;
pub mod kafka_feed;
pub mod moderation;
pub mod pg_feed;
pub mod rebuild;
pub mod runtime;
pub mod social;
pub mod tail;

pub use identity::{challenges, factors, passkeys, pins, profiles, sessions};
