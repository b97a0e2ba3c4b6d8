//! End-to-end tests of the `streamforge` HTTP API against real parts:
//! Postgres (a fresh database per test), the tansu Kafka broker
//! (`KAFKA_BROKERS`, default 127.0.0.1:9092) and a real SMTP listener.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod abuse;
mod admin;
mod challenges;
mod concurrency;
mod engagement;
mod factors;
mod feed;
mod flow;
mod helpers;
mod history;
mod http_edges;
mod live;
mod moderation;
mod passkeys;
mod phone;
mod replay;
mod sessions;
mod social;
mod tracks;
