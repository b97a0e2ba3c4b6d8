//! streamforge's edge: axum routers, extractors, bearer authentication,
//! error → HTTP mapping, the OpenAPI document, configuration, and the wiring
//! that runs the HTTP, relay, projector and notifier roles. The
//! `streamforge` binary (the `streamforge` crate, `cli/`) is a thin CLI
//! over [`app::App`]; benchmarks, the dataset generator and the chaos
//! tooling live in the `tools` crate (ARCHITECTURE decided 15).
//!
//! Depends on the domain, commands, projections and workers crates; only
//! `tools` and the binary depend on it.

pub mod app;
pub mod auth;
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
