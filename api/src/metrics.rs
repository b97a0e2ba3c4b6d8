//! What operators see: Prometheus metrics (text format 0.0.4) at `GET
//! /metrics` on a separate listen address (`METRICS_ADDR`), through the
//! `metrics` crate and its Prometheus exporter. Counters and histograms are
//! recorded where things happen (HTTP middleware, the command executor, the
//! projector runtime, the relay, the notifier); gauges that are facts of
//! the moment (lags, queue depths) are read when scraped.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `streamforge_http_requests_total` | counter | `method`, `route` (the matched path), `status` |
//! | `streamforge_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `streamforge_commands_total` | counter | `aggregate`, `command`, `outcome` (`ok`, `unchanged`, `refused`, `conflict`, `error`) |
//! | `streamforge_command_retries_total` | counter | `aggregate` (optimistic-concurrency retries) |
//! | `streamforge_projector_batch_seconds` | histogram | `projector` |
//! | `streamforge_projector_events_total` | counter | `projector`, `result` (`applied`, `skipped`) |
//! | `streamforge_projector_lag_seconds` | gauge | `projector`: age of the last envelope applied (0 when caught up); on the Kafka feed this is the consumer lag |
//! | `streamforge_relay_published_total` | counter | – |
//! | `streamforge_tail_lag_events`, `streamforge_tail_lag_seconds` | gauge | `checkpoint` (the relay, each Postgres-feed group): events and seconds behind the store's head |
//! | `streamforge_deliveries_total` | counter | `channel`, `outcome` (`sent`, `retry`, `failed`) |
//! | `streamforge_notifier_queue_depth` | gauge | delivery records waiting to be sent |
//! | `streamforge_password_hash_queue_depth` | gauge | hashes waiting for a hashing thread |

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

/// Latency buckets in seconds (1 ms … 10 s).
const BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0];

/// The process-wide recorder's handle, installed on first use (one recorder
/// per process: every app in it records into the same registry).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().set_buckets(&BUCKETS).ok()?.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder was already installed; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Middleware: counts every request by method, matched route and status,
/// and records its duration.
pub async fn record_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("streamforge_http_request_duration_seconds", "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("streamforge_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// What the scrape reads at the moment.
#[derive(Clone)]
pub struct Sources {
    pub pool: PgPool,
    pub hasher: commands::passwords::PasswordHasher,
}

/// The `/metrics` router.
pub fn router(sources: Sources) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(sources)
}

async fn scrape(State(sources): State<Sources>) -> Response {
    // usize → f64: queue lengths are far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!("streamforge_password_hash_queue_depth").set(sources.hasher.queued() as f64);
    if let Err(e) = read_gauges(&sources.pool).await {
        tracing::warn!(error = %e, "metrics: gauges could not be read");
    }
    let Some(handle) = handle() else {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no metrics recorder").into_response();
    };
    handle.run_upkeep();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// The gauges read from Postgres: notifier queue depth and, per tail
/// checkpoint, events and seconds behind the store's head (an index walk
/// on the commit-safe cursor, ARCHITECTURE decided 2).
async fn read_gauges(pool: &PgPool) -> Result<(), sqlx::Error> {
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries").fetch_one(pool).await?;
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!("streamforge_notifier_queue_depth").set(queued as f64);
    let rows: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT c.name,
                GREATEST(COALESCE((SELECT position FROM events ORDER BY txid DESC, position DESC LIMIT 1), 0)
                         - c.last_position, 0),
                COALESCE(EXTRACT(EPOCH FROM now() - (SELECT e.recorded_at FROM events e
                                                      WHERE (e.txid, e.position) > (c.last_txid, c.last_position)
                                                      ORDER BY e.txid, e.position LIMIT 1))::float8, 0)
         FROM tail_checkpoints c",
    )
    .fetch_all(pool)
    .await?;
    for (name, events, seconds) in rows {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("streamforge_tail_lag_events", "checkpoint" => name.clone()).set(events as f64);
        metrics::gauge!("streamforge_tail_lag_seconds", "checkpoint" => name).set(seconds.max(0.0));
    }
    Ok(())
}
