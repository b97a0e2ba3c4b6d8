//! streamforge's edge: axum routers, extractors, bearer authentication,
//! error → HTTP mapping, the OpenAPI document, configuration, and the wiring
//! that runs the HTTP, relay, projector and notifier roles. The
//! `streamforge` binary (`src/main.rs`) is a thin CLI over [`app::App`].
//!
//! Depends on every other crate of the workspace; none depends on it.

pub mod app;
pub mod auth;
pub mod bench;
pub mod chaos;
pub mod client_ip;
pub mod config;
pub mod consistency;
pub mod cookies;
pub mod error;
pub mod extract;
pub mod http;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod replay;
pub mod revocations;
pub mod routes;
pub mod state;
pub mod telemetry;
