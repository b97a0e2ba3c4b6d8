//! `bench freshness`: commit → read model visible, through Kafka, at half
//! the maximum write rate. The process runs the relay and the projector
//! roles (`App::run`) against the broker; the writes are `StartSession`
//! commands (`commands::Executor<Session>`), each visible once its
//! `rm_sessions` row exists. First the maximum write rate is measured in
//! closed loop; then, once the read model has caught up, the relay and
//! projector are restarted on fresh topics (see [`run`]), and writes are
//! issued at a light rate and then at half the maximum in open loop while
//! a watcher polls the read model every millisecond for the sessions
//! committed but not yet seen. A latency runs from the command's return
//! (after `COMMIT`) to the end of the poll that first saw the row, so it
//! errs on the long side by up to one poll. The stage split (relay, broker,
//! projector) comes from a second half-rate phase on fresh topics with a
//! probe consumer: the probe's fetches are load on the broker it measures,
//! so the figure held to the target is taken without it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use commands::tokens::new_refresh_token;
use commands::Executor;
use domain::session::{Session, SessionCommand};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    closed_loop, error_note, fmt_ms, fmt_rate, open_loop, quantile, ratio, BenchEnv, BenchOptions, Check,
    Report, Row,
};
use api::app::{App, Roles};

/// The target: p99 commit → visible.
pub const LIMIT: Duration = Duration::from_millis(50);

/// Longest wait for a committed write to become visible.
const GIVE_UP: Duration = Duration::from_secs(10);

pub(super) async fn start_session(sessions: &Executor<Session>) -> anyhow::Result<Uuid> {
    let session_id = Uuid::now_v7();
    let cmd = SessionCommand::Start {
        session_id,
        user_id: Uuid::now_v7(),
        refresh_hash: new_refresh_token(session_id).hash,
        at: Utc::now(),
        idle_ttl_secs: 30 * 86_400,
        absolute_ttl_secs: 90 * 86_400,
        client: None,
        quick_factor: false,
    };
    let meta = HashMap::from([("command".to_owned(), "StartSession".to_owned())]);
    sessions.execute(&session_id.to_string(), cmd, meta).await?;
    Ok(session_id)
}

/// Runs the benchmark on `env`.
///
/// # Errors
/// Setup failures, broker unreachable, the projector never catching up.
pub async fn run(env: &BenchEnv, o: &BenchOptions) -> anyhow::Result<Report> {
    let mut settings = env.settings.clone();
    settings.kafka_brokers = Some(o.brokers.clone());
    let pipeline = Pipeline::start(settings.clone()).await?;
    let max = max_phase(&pipeline.app, o).await;
    pipeline.stop().await;
    let max = max?;
    // The measured phases publish to fresh topics (same database, so the
    // relay resumes at its checkpoint and publishes only their writes): on
    // tansu's memory engine a fetch lists every batch stored in the
    // partition, so the max-rate phase's messages would otherwise slow
    // every later fetch — a cost of the test broker, not of Kafka, whose
    // fetch finds its offset through an index.
    let prefix = settings.kafka_topic_prefix.clone();
    settings.kafka_topic_prefix = format!("{prefix}measured.");
    let pipeline = Pipeline::start(settings.clone()).await?;
    let measured = measure(&pipeline.app, o, &max).await;
    pipeline.stop().await;
    let (mut report, rate) = measured?;
    // The stage split: the same rate again, on fresh topics, with the probe.
    settings.kafka_topic_prefix = format!("{prefix}staged.");
    let pipeline = Pipeline::start(settings).await?;
    let staged = staged_phase(&pipeline.app, o, rate).await;
    pipeline.stop().await;
    let (timings, p99) = staged?;
    stage_rows(&mut report, &timings, p99);
    Ok(report)
}

/// The half-rate phase again with a [`TopicProbe`] on the sessions topic;
/// returns the timings and their p99.
async fn staged_phase(app: &App, o: &BenchOptions, rate: f64) -> anyhow::Result<(Vec<Timing>, Duration)> {
    let sessions = Arc::new(Executor::<Session>::new(app.pool.clone(), ()));
    let probe = TopicProbe::start(app, &o.brokers).await?;
    let (_, timings, _) = visible_latencies(&app.pool, &sessions, Some(&probe), rate, o.duration).await?;
    drop(probe);
    let visible: Vec<Duration> = timings.iter().map(|t| t.visible).collect();
    Ok((timings, quantile(&visible, 0.99)))
}

/// The relay and projector roles of an [`App`], running until stopped.
pub(super) struct Pipeline {
    pub(super) app: App,
    stop: watch::Sender<bool>,
    runner: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Pipeline {
    pub(super) async fn start(settings: api::config::Settings) -> anyhow::Result<Self> {
        let app = App::build(settings).await?;
        let (stop, stopped) = watch::channel(false);
        let roles = Roles { http: false, relay: true, project: true, notify: false };
        let runner = {
            let app = app.clone();
            tokio::spawn(async move { app.run(roles, None, stopped).await })
        };
        // Warm-up: topics created, consumer group joined, first envelope through.
        let sessions = Executor::<Session>::new(app.pool.clone(), ());
        let first = start_session(&sessions).await?;
        wait_until(
            &app.pool,
            "SELECT count(*) FROM rm_sessions WHERE session_id = $1",
            Some(first),
            1,
            Duration::from_secs(60),
        )
        .await?;
        Ok(Self { app, stop, runner })
    }

    pub(super) async fn stop(self) {
        let _ = self.stop.send(true);
        match tokio::time::timeout(Duration::from_secs(20), self.runner).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %format!("{e:#}"), "a role stopped with an error"),
            Ok(_) => {}
            Err(_) => tracing::warn!("the relay and projector did not stop within 20 s"),
        }
        // Each pipeline has its own pool (fixed-size by default): release it
        // before the next one opens.
        self.app.pool.close().await;
    }
}

/// What the closed-loop phase found.
struct MaxPhase {
    /// The closed-loop writes.
    max: super::Sample,
    /// From the phase's end until the read model held every write.
    catch_up: Duration,
    /// Events/s the projector drained over the phase and its catch-up.
    drain_rate: f64,
}

/// The maximum write rate (closed loop, half the phase length), then the
/// wait until the read model caught up.
async fn max_phase(app: &App, o: &BenchOptions) -> anyhow::Result<MaxPhase> {
    let pool = app.pool.clone();
    let d = o.duration;
    let sessions = Arc::new(Executor::<Session>::new(pool.clone(), ()));
    let max = {
        let sessions = sessions.clone();
        closed_loop(o.concurrency_or(8), d / 2, move |_, _| {
            let sessions = sessions.clone();
            async move { start_session(&sessions).await.map(|_| ()) }
        })
        .await
    };
    let written = count_sessions(&pool).await?;
    let catch_up = Instant::now();
    wait_until(
        &pool,
        "SELECT count(*) FROM rm_sessions WHERE $1::uuid IS NULL",
        None,
        written,
        Duration::from_secs(120),
    )
    .await?;
    let catch_up = catch_up.elapsed();
    let drain_rate = super::per_second(max.ok, d / 2 + catch_up);
    Ok(MaxPhase { max, catch_up, drain_rate })
}

/// The light phase, then the half-rate phase whose p99 is held to
/// [`LIMIT`]; returns the report and the half rate (writes/s).
async fn measure(app: &App, o: &BenchOptions, max_phase: &MaxPhase) -> anyhow::Result<(Report, f64)> {
    let pool = app.pool.clone();
    let d = o.duration;
    let clients = o.concurrency_or(8);
    let sessions = Arc::new(Executor::<Session>::new(pool.clone(), ()));
    let &MaxPhase { ref max, catch_up, drain_rate } = max_phase;

    // The pipeline's floor: a light load, well within what the projector drains.
    let low_rate = (drain_rate / 10.0).clamp(5.0, 50.0);
    let (_, low_timings, _) = visible_latencies(&pool, &sessions, None, low_rate, d / 2).await?;
    let low_visible: Vec<Duration> = low_timings.iter().map(|t| t.visible).collect();
    let written = count_sessions(&pool).await?;
    wait_until(
        &pool,
        "SELECT count(*) FROM rm_sessions WHERE $1::uuid IS NULL",
        None,
        written,
        Duration::from_secs(120),
    )
    .await?;

    let rate = max.rate() / 2.0;
    let (open, timings, unseen) = visible_latencies(&pool, &sessions, None, rate, d).await?;
    let visible: Vec<Duration> = timings.iter().map(|t| t.visible).collect();

    let p50 = quantile(&visible, 0.5);
    let p99 = quantile(&visible, 0.99);
    let mut r = Report::new("freshness");
    r.note(format!(
        "relay + projector in process, broker {}, {} partitions per topic, consumer fetch.wait.max.ms={}, producer linger.ms={}; the light and half-rate phases on fresh topics",
        o.brokers,
        app.settings.kafka_topic_partitions,
        app.settings.kafka_fetch_wait_max_ms,
        workers::kafka::DEFAULT_LINGER_MS
    ));
    r.note(format!(
        "maximum write rate: {} StartSession commands ({clients} clients, {:.1} s); read model caught up {:.2} s later",
        fmt_rate(max.rate()),
        (d / 2).as_secs_f64(),
        catch_up.as_secs_f64()
    ));
    r.note(format!(
        "measured at {} (half of it) for {:.1} s: {} writes, {} seen",
        fmt_rate(open.rate()),
        d.as_secs_f64(),
        open.ok,
        visible.len()
    ));
    r.note(format!(
        "the projector drained {} events during the max-rate phase and its catch-up (one transaction per feed batch and projector, batches of up to {})",
        fmt_rate(drain_rate),
        projections::runtime::DEFAULT_BATCH_SIZE
    ));
    r.notes.extend(error_note("max-rate writes", max));
    r.notes.extend(error_note("open-loop writes", &open));
    r.rows.push(Row::info(
        "commit → read model visible, p50",
        fmt_ms(p50),
        format!("{} (limit)", fmt_ms(LIMIT)),
        Some(ratio(p50.as_secs_f64(), LIMIT.as_secs_f64())),
    ));
    r.rows.push(Row::ratio(
        "commit → read model visible, p99",
        fmt_ms(p99),
        format!("{} (limit)", fmt_ms(LIMIT)),
        ratio(p99.as_secs_f64(), LIMIT.as_secs_f64()),
        Check::RatioAtMost(1.0),
    ));
    r.rows.push(Row::zero(
        format!("writes not visible within {} s", GIVE_UP.as_secs()),
        u64::try_from(unseen)?,
    ));
    thirds_row(&mut r, &timings, d);
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let lat = quantile(&low_visible, p);
        r.rows.push(Row::info(
            format!("commit → visible {name} at a light {} (floor)", fmt_rate(low_rate)),
            fmt_ms(lat),
            format!("{} (limit)", fmt_ms(LIMIT)),
            Some(ratio(lat.as_secs_f64(), LIMIT.as_secs_f64())),
        ));
    }
    Ok((r, rate))
}

/// An info row: p99 of the writes committed in each third of the phase.
/// On tansu's memory engine a fetch lists every batch stored in the
/// partition, so a rising p99 over the phase shows the broker's cost
/// growing with the topic's history.
fn thirds_row(r: &mut Report, timings: &[Timing], phase: Duration) {
    let third = phase / 3;
    let p99s: Vec<String> = (0..3u32)
        .map(|i| {
            let (from, to) = (third * i, if i == 2 { Duration::MAX } else { third * (i + 1) });
            let v: Vec<Duration> = timings
                .iter()
                .filter(|t| t.since_start >= from && t.since_start < to)
                .map(|t| t.visible)
                .collect();
            fmt_ms(quantile(&v, 0.99))
        })
        .collect();
    r.rows.push(Row::info(
        "commit → visible p99 by third of the half-rate phase (first / second / last)",
        p99s.join(" / "),
        format!("{} (limit)", fmt_ms(LIMIT)),
        None,
    ));
}

/// Info rows splitting the latency at half the max rate into stages: p50
/// and p99 of each stage, and each stage's mean over the writes at or above
/// the overall p99 (what makes the tail).
fn stage_rows(r: &mut Report, timings: &[Timing], p99: Duration) {
    let staged: Vec<(Duration, Stages)> =
        timings.iter().filter_map(|t| t.stages.map(|s| (t.visible, s))).collect();
    r.note(format!(
        "stages from a second half-rate phase on fresh topics (p99 {}; a probe consumer outside any group reads partition 0 of the sessions topic; split at the message's CreateTime and at the probe's receipt): {} of {} writes",
        fmt_ms(p99),
        staged.len(),
        timings.len()
    ));
    type Pick = (&'static str, fn(&Stages) -> Duration);
    let pick: [Pick; 3] = [
        ("commit → relay produced", |s| s.to_relay),
        ("produced → consumed (broker, linger, fetch wait)", |s| s.to_consumer),
        ("consumed → read model visible (projector)", |s| s.to_read_model),
    ];
    let tail: Vec<&Stages> = staged.iter().filter(|(v, _)| *v >= p99).map(|(_, s)| s).collect();
    for (name, get) in pick {
        let values: Vec<Duration> = staged.iter().map(|(_, s)| get(s)).collect();
        let tail_mean = if tail.is_empty() {
            Duration::ZERO
        } else {
            tail.iter().map(|s| get(s)).sum::<Duration>() / u32::try_from(tail.len()).unwrap_or(u32::MAX)
        };
        r.rows.push(Row::info(
            format!("stage {name}: p50 / p99 / mean in the slowest 1 %"),
            format!(
                "{} / {} / {}",
                fmt_ms(quantile(&values, 0.5)),
                fmt_ms(quantile(&values, 0.99)),
                fmt_ms(tail_mean)
            ),
            "–".to_owned(),
            None,
        ));
    }
}

async fn count_sessions(pool: &PgPool) -> anyhow::Result<i64> {
    // Every `session` stream has exactly one event here.
    Ok(sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'session'")
        .fetch_one(pool)
        .await?)
}

/// Writes at `rate` for `duration` in open loop while watching the read
/// model; returns the writes, the commit → visible latencies, and how many
/// writes were still unseen [`GIVE_UP`] after the end.
async fn visible_latencies(
    pool: &PgPool,
    sessions: &Arc<Executor<Session>>,
    probe: Option<&TopicProbe>,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(super::Sample, Vec<Timing>, usize)> {
    let pending: Arc<Mutex<HashMap<Uuid, Committed>>> = Arc::new(Mutex::new(HashMap::new()));
    let done = Arc::new(AtomicBool::new(false));
    let probed = probe.map_or_else(Arc::default, |p| p.seen.clone());
    let started = Instant::now();
    let watcher = tokio::spawn(watch_visible(pool.clone(), pending.clone(), probed, done.clone(), started));
    let open = {
        let (sessions, pending) = (sessions.clone(), pending.clone());
        open_loop(rate, duration, move |_| {
            let (sessions, pending) = (sessions.clone(), pending.clone());
            async move {
                let id = start_session(&sessions).await?;
                let committed = Committed { at: Instant::now(), wall_ms: Utc::now().timestamp_millis() };
                pending.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(id, committed);
                Ok(())
            }
        })
        .await
    };
    done.store(true, Ordering::Relaxed);
    let visible = watcher.await??;
    let unseen = pending.lock().map(|p| p.len()).unwrap_or(0);
    Ok((open, visible, unseen))
}

/// When a write's command returned (after `COMMIT`).
#[derive(Debug, Clone, Copy)]
struct Committed {
    at: Instant,
    /// Wall clock, Unix milliseconds, to compare with the Kafka timestamp.
    wall_ms: i64,
}

/// One write's way through the pipeline.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Commit → read model row seen.
    visible: Duration,
    /// Start of the phase → commit.
    since_start: Duration,
    /// Stages, when the topic probe saw the message before the row was seen.
    stages: Option<Stages>,
}

/// The stages of one write, split at the relay's produce call (the Kafka
/// message's `CreateTime`, milliseconds) and at the probe's receipt.
#[derive(Debug, Clone, Copy)]
struct Stages {
    /// Commit → the relay produced it (millisecond resolution; ≥ 0).
    to_relay: Duration,
    /// Produced → received by a consumer of the topic (broker, linger, fetch wait).
    to_consumer: Duration,
    /// Received by a consumer → read model row seen (projector transaction, watcher poll).
    to_read_model: Duration,
}

/// A consumer of partition 0 of the sessions topic outside any group
/// (assigned from its end), recording when each session's message arrived
/// and its `CreateTime`; it splits the latency of the writes on that
/// partition into stages. It reads with the same `fetch.wait.max.ms` as the
/// projector. One partition only, because on tansu's memory engine every
/// fetch that finds new data lists all stored batches of the partition, so
/// a probe over the whole topic would add a second full load of fetches to
/// the broker it measures (docs/performance.md, freshness).
struct TopicProbe {
    seen: Arc<Mutex<HashMap<Uuid, (Instant, i64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TopicProbe {
    async fn start(app: &App, brokers: &str) -> anyhow::Result<Self> {
        use rdkafka::message::Message as _;

        let topic = format!("{}session", app.settings.kafka_topic_prefix);
        let consumer = projections::kafka_feed::partition_reader(
            brokers,
            &topic,
            0,
            rdkafka::Offset::End,
            app.settings.kafka_fetch_wait_max_ms,
        )?;
        let seen: Arc<Mutex<HashMap<Uuid, (Instant, i64)>>> = Arc::default();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(message) = consumer.recv().await else { continue };
                    let now = Instant::now();
                    let (Some(key), Some(created)) = (message.key(), message.timestamp().to_millis()) else {
                        continue;
                    };
                    let Some(id) = std::str::from_utf8(key).ok().and_then(|k| Uuid::parse_str(k).ok()) else {
                        continue;
                    };
                    if let Ok(mut seen) = seen.lock() {
                        seen.insert(id, (now, created));
                    }
                }
            })
        };
        Ok(Self { seen, task })
    }
}

impl Drop for TopicProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `sql` (bound to `id`) counts at least `n`.
pub(super) async fn wait_until(
    pool: &PgPool,
    sql: &str,
    id: Option<Uuid>,
    n: i64,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let count: i64 = sqlx::query_scalar(sql).bind(id).fetch_one(pool).await?;
        if count >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the read model did not catch up within {within:?} ({count} of {n})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `rm_sessions` every millisecond for the pending ids; returns the
/// latencies of those seen. Ends when `done` is set and nothing is pending,
/// or [`GIVE_UP`] after `done`.
async fn watch_visible(
    pool: PgPool,
    pending: Arc<Mutex<HashMap<Uuid, Committed>>>,
    probed: Arc<Mutex<HashMap<Uuid, (Instant, i64)>>>,
    done: Arc<AtomicBool>,
    started: Instant,
) -> anyhow::Result<Vec<Timing>> {
    let mut latencies = Vec::new();
    let mut done_at: Option<Instant> = None;
    loop {
        let ids: Vec<Uuid> =
            pending.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.keys().copied().collect();
        if done.load(Ordering::Relaxed) {
            let since = *done_at.get_or_insert_with(Instant::now);
            if ids.is_empty() || since.elapsed() > GIVE_UP {
                return Ok(latencies);
            }
        }
        if !ids.is_empty() {
            let seen: Vec<Uuid> =
                sqlx::query_scalar("SELECT session_id FROM rm_sessions WHERE session_id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&pool)
                    .await?;
            let now = Instant::now();
            let mut p = pending.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let mut probed = probed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            for id in seen {
                if let Some(committed) = p.remove(&id) {
                    let stages = probed.remove(&id).map(|(received, created_ms)| {
                        let to_relay =
                            Duration::from_millis(u64::try_from(created_ms - committed.wall_ms).unwrap_or(0));
                        let to_received = received.saturating_duration_since(committed.at);
                        Stages {
                            to_relay,
                            to_consumer: to_received.saturating_sub(to_relay),
                            to_read_model: now.saturating_duration_since(received),
                        }
                    });
                    latencies.push(Timing {
                        visible: now - committed.at,
                        since_start: committed.at.saturating_duration_since(started),
                        stages,
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
