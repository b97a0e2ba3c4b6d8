//! `bench stream` (issue 16): open SSE connections on one node
//! (`GET /api/stream`, 5,000 by default, `--users` overrides) and the
//! time a like's notification takes to reach its connection, p99, through
//! the whole path: `Like` command → relay → broker → the node's live
//! follower → the connection's hub filter → the client's parser. And the
//! resident memory per open connection.
//!
//! Each connection belongs to a user who owns one track; likes by other
//! users are issued one at a time (a few milliseconds apart) to owners
//! picked across all connections. A latency runs from the command's return
//! (after `COMMIT`) to the client reading the `notification` event. The
//! clients run in the same process as the node: the memory figure is the
//! process's RSS growth per connection, both ends included (an upper bound
//! for the server's share).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use commands::Executor;
use domain::social::engagement::{Engagement, EngagementCommand};
use tokio::sync::watch;
use uuid::Uuid;

use super::freshness::Pipeline;
use super::{fmt_ms, quantile, rss_kib, BenchEnv, BenchOptions, Check, Report, Row};

/// The target: p99 like → notification on its connection (issue 16).
pub const LIMIT: Duration = Duration::from_millis(100);
/// Connections opened when `--users` is not given (issue 16).
pub const DEFAULT_CONNECTIONS: usize = 5_000;
/// Likes measured (`--events` overrides).
pub const LIKES: usize = 300;
/// Longest wait for one notification.
const GIVE_UP: Duration = Duration::from_secs(10);

type Arrivals = Arc<Mutex<HashMap<Uuid, Instant>>>;

/// Runs the benchmark on `env`.
///
/// # Errors
/// Setup failures, broker unreachable, a connection refused, a
/// notification not delivered within 10 s.
pub async fn run(env: &BenchEnv, o: &BenchOptions) -> anyhow::Result<Report> {
    let mut settings = env.settings.clone();
    settings.kafka_brokers = Some(o.brokers.clone());
    let pipeline = Pipeline::start(settings).await?;
    let result = measure(&pipeline, o).await;
    pipeline.stop().await;
    result
}

async fn measure(pipeline: &Pipeline, o: &BenchOptions) -> anyhow::Result<Report> {
    let app = &pipeline.app;
    let (stop, stopped) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    {
        let (app, stopped) = (app.clone(), stopped.clone());
        tokio::spawn(async move { app.serve_http(listener, stopped).await });
    }
    {
        let (app, stopped) = (app.clone(), stopped.clone());
        tokio::spawn(async move { app.run_revocation_follower(stopped).await });
    }
    {
        let (app, stopped) = (app.clone(), stopped.clone());
        tokio::spawn(async move { app.run_live_follower(stopped).await });
    }
    let connections = o.users.unwrap_or(DEFAULT_CONNECTIONS).max(1);
    let owners: Vec<(Uuid, Uuid)> = (0..connections).map(|_| (Uuid::now_v7(), Uuid::now_v7())).collect();
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_before, _) = rss_kib();
    let opening = Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    for (owner, _) in &owners {
        let token = app.tokens.issue_access(*owner, Uuid::now_v7(), Utc::now())?.0;
        let response = client.get(format!("{base}/api/stream")).bearer_auth(token).send().await?;
        anyhow::ensure!(
            response.status() == reqwest::StatusCode::OK,
            "stream answered {}",
            response.status()
        );
        let arrivals = arrivals.clone();
        readers.spawn(read_notifications(response, arrivals));
    }
    let opened_in = opening.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_open, _) = rss_kib();
    let open_now = app.live.connections();

    let likes = Executor::<Engagement>::new(app.pool.clone(), ());
    let n = o.events.unwrap_or(LIKES).max(1);
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let (owner, track) = owners[(i * 7_919) % owners.len()];
        let liker = Uuid::now_v7();
        let cmd =
            EngagementCommand::Like { user_id: liker, track_id: track, owner_id: owner, at: Utc::now() };
        let meta = HashMap::from([("command".to_owned(), "LikeTrack".to_owned())]);
        likes.execute(&format!("{liker}:{track}"), cmd, meta).await?;
        let committed = Instant::now();
        loop {
            let seen = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.remove(&liker);
            if let Some(at) = seen {
                latencies.push(at.saturating_duration_since(committed));
                break;
            }
            anyhow::ensure!(committed.elapsed() < GIVE_UP, "like {i}: no notification within 10 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop.send(true);
    readers.abort_all();

    let mut report = Report::new("stream");
    report.note(format!(
        "{connections} SSE connections opened in {:.1} s ({open_now} counted by the hub); {n} likes, one at a time, \
         each to the owner of one connection; clients (reqwest) in the same process",
        opened_in.as_secs_f64()
    ));
    report.note("latency: Like command returned (after COMMIT) → notification event read by the client");
    let p50 = quantile(&latencies, 0.5);
    let p99 = quantile(&latencies, 0.99);
    report.rows.push(Row::info(
        "like → notification on its connection, p50",
        fmt_ms(p50),
        fmt_ms(LIMIT),
        Some(p50.as_secs_f64() / LIMIT.as_secs_f64()),
    ));
    report.rows.push(Row::ratio(
        "like → notification on its connection, p99",
        fmt_ms(p99),
        format!("{} (issue 16)", fmt_ms(LIMIT)),
        p99.as_secs_f64() / LIMIT.as_secs_f64(),
        Check::RatioAtMost(1.0),
    ));
    let per_connection = rss_open.saturating_sub(rss_before) as f64 / connections as f64;
    report.rows.push(Row::info(
        "RSS per open connection (server and client ends)",
        format!("{per_connection:.1} KiB"),
        format!("{} KiB before, {} KiB open", rss_before, rss_open),
        None,
    ));
    Ok(report)
}

/// Reads one connection's events, recording when each notification's
/// actor was first seen.
async fn read_notifications(mut response: reqwest::Response, arrivals: Arrivals) {
    let mut pending = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let now = Instant::now();
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            if !block.contains("event: notification") && !block.contains("event:notification") {
                continue;
            }
            let data = block.lines().find_map(|l| l.strip_prefix("data:")).map(str::trim);
            let actor = data
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .and_then(|v| v["actor"].as_str().and_then(|a| a.parse::<Uuid>().ok()));
            if let (Some(actor), Ok(mut map)) = (actor, arrivals.lock()) {
                map.entry(actor).or_insert(now);
            }
        }
    }
}
