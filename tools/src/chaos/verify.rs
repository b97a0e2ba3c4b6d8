//! The verifying half of `scripts/chaos`: every acknowledged command of the
//! journal checked in the store, on the topics and in the read models, and
//! the read models against a fresh replay.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use domain::envelope::{Envelope, AGGREGATE_TYPES};
use projections::runtime::{Checkpoints, Projector};
use sqlx::PgPool;
use uuid::Uuid;

use super::{read_journal, summary, Op};
use api::app::App;
use api::config::Settings;

struct Check {
    what: String,
    bad: usize,
    detail: String,
}

fn check(what: impl Into<String>, bad: usize, detail: impl Into<String>) -> Check {
    Check { what: what.into(), bad, detail: detail.into() }
}

/// One stored event, as the checks need it.
#[derive(Debug, Clone)]
struct Stored {
    event_id: Uuid,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
}

/// Waits (≤ `timeout`) until the relay has published every settled event
/// and every projector has applied the last event of every aggregate it
/// handles.
async fn wait_caught_up(pool: &PgPool, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let projectors = App::projectors();
    loop {
        let relay = projections::tail::load_checkpoint(pool, workers::relay::DEFAULT_CHECKPOINT).await?;
        let unpublished = projections::tail::read_after(pool, relay, 1, None).await?.len();
        let mut behind = 0i64;
        for projector in &projectors {
            let types: Vec<String> =
                AGGREGATE_TYPES.iter().filter(|t| projector.handles(t)).map(|t| (*t).to_owned()).collect();
            if projector.checkpoints() == Checkpoints::InReadModel {
                behind += behind_in_read_model(pool, projector.as_ref(), &types).await?;
                continue;
            }
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT aggregate_type, aggregate_id, max(sequence) AS last
                                         FROM events WHERE aggregate_type = ANY($2) GROUP BY 1, 2) e
                 LEFT JOIN projection_checkpoints c
                   ON c.projector = $1 AND c.aggregate_type = e.aggregate_type AND c.aggregate_id = e.aggregate_id
                 WHERE c.sequence IS NULL OR c.sequence < e.last",
            )
            .bind(projector.name())
            .bind(&types)
            .fetch_one(pool)
            .await?;
            behind += n;
        }
        if unpublished == 0 && behind == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "not caught up after {timeout:?}: relay has {unpublished} unpublished, projectors {behind} aggregates behind"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Aggregates of `types` whose last event `projector` — one that keeps its
/// guard in its rows ([`Checkpoints::InReadModel`]), so has no checkpoint
/// rows — has not applied: by its
/// [`Projector::unapplied_condition`], else by asking
/// [`Projector::has_applied`] of each aggregate's last event.
async fn behind_in_read_model(
    pool: &PgPool,
    projector: &dyn Projector,
    types: &[String],
) -> anyhow::Result<i64> {
    if let Some(condition) = projector.unapplied_condition() {
        let sql = format!(
            "SELECT count(DISTINCT (aggregate_type, aggregate_id)) FROM events e \
             WHERE aggregate_type = ANY($1) AND ({condition})"
        );
        return Ok(sqlx::query_scalar(&sql).bind(types).fetch_one(pool).await?);
    }
    let last: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, max(sequence) FROM events WHERE aggregate_type = ANY($1) GROUP BY 1, 2",
    )
    .bind(types)
    .fetch_all(pool)
    .await?;
    let mut behind = 0;
    for (aggregate_type, aggregate_id, sequence) in &last {
        if !projector.has_applied(pool, aggregate_type, aggregate_id, *sequence).await? {
            behind += 1;
        }
    }
    Ok(behind)
}

/// Checks the journal against the store, the topics and the read models;
/// prints a table and fails if any check fails.
///
/// # Errors
/// A failed check, or the store / broker cannot be read.
pub async fn verify(settings: &Settings, journal_path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let journal = read_journal(journal_path)?;
    let app = App::build(settings.clone()).await?;
    let pool = app.pool.clone();
    let caught_up = wait_caught_up(&pool, timeout).await?;
    println!("caught up {:.1} s after the load ended", caught_up.as_secs_f64());
    println!("{}", summary(&journal));

    let stored: Vec<Stored> = sqlx::query_as::<_, (Uuid, String, String, i64, String)>(
        "SELECT event_id, aggregate_type, aggregate_id, sequence, event_type FROM events",
    )
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|(event_id, aggregate_type, aggregate_id, sequence, event_type)| Stored {
        event_id,
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
    })
    .collect();
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for e in &stored {
        *counts.entry((e.aggregate_id.clone(), e.event_type.clone())).or_default() += 1;
    }
    let count_of = |id: Option<Uuid>, event_type: &str| {
        id.map_or(0, |id| counts.get(&(id.to_string(), event_type.to_owned())).copied().unwrap_or(0))
    };

    let mut checks = Vec::new();
    checks.push(check(
        "answers 5xx",
        journal.iter().filter(|r| r.status.is_some_and(|s| s >= 500)).count(),
        "commands the API answered with a server error",
    ));

    // 1. Store: every acknowledged command has its event; per stream, the
    //    number of events lies between the acknowledged and the
    //    acknowledged-plus-unanswered commands (nothing lost, nothing doubled).
    let mut missing = Vec::new();
    let single = [
        (Op::Register, "UserRegistered", "user"),
        (Op::VerifyEmail, "EmailVerified", "user"),
        (Op::Login, "OtpIssued", "challenge"),
        (Op::VerifyOtp, "SessionStarted", "session"),
        (Op::Logout, "SessionRevoked", "session"),
    ];
    for (op, event_type, key) in single {
        for r in journal.iter().filter(|r| r.op == op && r.acknowledged()) {
            let id = match key {
                "user" => r.user_id,
                "challenge" => r.challenge_id,
                _ => r.session_id,
            };
            if count_of(id, event_type) != 1 {
                missing.push(format!("{op:?} {id:?}: {} × {event_type}", count_of(id, event_type)));
            }
        }
    }
    let mut per_stream: HashMap<(Op, Uuid), (usize, usize)> = HashMap::new();
    for r in &journal {
        let id = match r.op {
            Op::UpdateProfile => r.user_id,
            Op::Refresh => r.session_id,
            _ => None,
        };
        if let Some(id) = id {
            let entry = per_stream.entry((r.op, id)).or_default();
            if r.acknowledged() {
                entry.0 += 1;
            } else if r.unknown() {
                entry.1 += 1;
            }
        }
    }
    for ((op, id), (acked, unknown)) in &per_stream {
        let event_type = if *op == Op::UpdateProfile { "ProfileUpdated" } else { "SessionRefreshed" };
        let n = count_of(Some(*id), event_type);
        if n < *acked || n > acked + unknown {
            missing
                .push(format!("{op:?} {id}: {n} × {event_type}, {acked} acknowledged, {unknown} unanswered"));
        }
    }
    checks.push(check(
        "acknowledged commands without exactly their events in the store",
        missing.len(),
        missing.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
    ));

    // 2. Topics: every stored event is on its topic, nothing else is.
    let topic = read_topics(settings, &stored).await?;
    checks.push(check("stored events missing from the topics", topic.missing, ""));
    checks.push(check("messages on the topics that are not stored events", topic.foreign, ""));
    checks.push(check(
        "messages whose envelope differs from the stored event",
        topic.mismatched,
        "aggregate, sequence or event type",
    ));
    println!(
        "topics: {} messages, {} distinct events, {} republished copies (at-least-once relay; consumers skip them by sequence)",
        topic.received, topic.distinct, topic.duplicates
    );

    // 3. Read models: each acknowledged effect is there.
    let mut rm_bad = Vec::new();
    let sessions: HashMap<Uuid, (String, i64)> =
        sqlx::query_as::<_, (Uuid, String, i64)>("SELECT session_id, status, generation FROM rm_sessions")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .map(|(id, status, generation)| (id, (status, generation)))
            .collect();
    for r in journal.iter().filter(|r| r.acknowledged()) {
        let Some(sid) = r.session_id else { continue };
        match r.op {
            Op::VerifyOtp | Op::Refresh => match sessions.get(&sid) {
                None => rm_bad.push(format!("session {sid} missing from rm_sessions")),
                Some((_, generation)) => {
                    let refreshed = i64::try_from(count_of(Some(sid), "SessionRefreshed")).unwrap_or(-1);
                    if *generation != refreshed {
                        rm_bad.push(format!(
                            "session {sid}: generation {generation}, {refreshed} refreshes stored"
                        ));
                    }
                }
            },
            Op::Logout if sessions.get(&sid).map(|s| s.0.as_str()) != Some("revoked") => {
                rm_bad.push(format!("session {sid} logged out but not revoked in rm_sessions"));
            }
            _ => {}
        }
    }
    // The profile name: the last acknowledged update, unless an unanswered
    // one came after it.
    let mut last_names: HashMap<Uuid, (Option<String>, Vec<String>)> = HashMap::new();
    for r in journal.iter().filter(|r| r.op == Op::UpdateProfile) {
        let (Some(user), Some(name)) = (r.user_id, r.name.clone()) else { continue };
        let entry = last_names.entry(user).or_default();
        if r.acknowledged() {
            *entry = (Some(name), Vec::new());
        } else if r.unknown() {
            entry.1.push(name);
        }
    }
    for (user, (acked, later_unknown)) in &last_names {
        let Some(acked) = acked else { continue };
        let row = projections::profiles::find_profile(&pool, *user).await?;
        let name = match row.and_then(|r| r.name_sealed) {
            Some(sealed) => app.identity.vault.open(*user, &domain::values::Sealed(sealed)).await?,
            None => None,
        };
        let ok = name.as_deref() == Some(acked.as_str())
            || name.as_ref().is_some_and(|n| later_unknown.contains(n));
        if !ok {
            rm_bad.push(format!("profile {user}: name {name:?}, last acknowledged {acked:?}"));
        }
    }
    checks.push(check(
        "acknowledged effects missing or wrong in the read models",
        rm_bad.len(),
        rm_bad.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
    ));

    println!("| check | failures | note |\n|---|---:|---|");
    for c in &checks {
        println!("| {} | {} | {} |", c.what, c.bad, c.detail);
    }
    println!(
        "store: {} events; journal: {} commands, {} acknowledged, {} unanswered",
        stored.len(),
        journal.len(),
        journal.iter().filter(|r| r.acknowledged()).count(),
        journal.iter().filter(|r| r.unknown()).count()
    );
    let failed = checks.iter().filter(|c| c.bad > 0).count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    println!("verify: PASS");
    Ok(())
}

struct TopicCheck {
    received: usize,
    distinct: usize,
    duplicates: usize,
    missing: usize,
    foreign: usize,
    mismatched: usize,
}

/// Reads every partition of every topic from the beginning, assigned
/// explicitly (no consumer group: the check must not depend on the group
/// coordinator it is checking around), until every stored event arrived or
/// nothing new came for 60 s (120 s before the first message; tansu's
/// SQLite engine reads a partition from its start slowly). Progress goes to
/// stderr every 10 s, and the messages received per topic at the end.
async fn read_topics(settings: &Settings, stored: &[Stored]) -> anyhow::Result<TopicCheck> {
    use rdkafka::message::Message as _;

    let brokers = settings.kafka_brokers.clone().context("KAFKA_BROKERS is required")?;
    let topics: Vec<String> =
        AGGREGATE_TYPES.iter().map(|t| format!("{}{t}", settings.kafka_topic_prefix)).collect();
    let consumer =
        projections::kafka_feed::assigned_reader(&brokers, &topics, rdkafka::Offset::Beginning, 5)?;
    let by_id: HashMap<Uuid, &Stored> = stored.iter().map(|e| (e.event_id, e)).collect();
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(stored.len());
    let (mut received, mut duplicates, mut foreign, mut mismatched) = (0, 0, 0, 0);
    let started = Instant::now();
    let mut last_progress: Option<Instant> = None;
    let mut last_report = Instant::now();
    let mut per_topic: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    while seen.len() < by_id.len() {
        let idle = match last_progress {
            Some(at) => at.elapsed() > Duration::from_secs(60),
            None => started.elapsed() > Duration::from_secs(120),
        };
        if idle {
            eprintln!("topic read: nothing new for 60 s; stopping at {} of {}", seen.len(), by_id.len());
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "topic read: {} of {} stored events after {:.0} s",
                seen.len(),
                by_id.len(),
                started.elapsed().as_secs_f64()
            );
        }
        let message = match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Err(_) => continue,
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "topic read failed; retrying");
                continue;
            }
            Ok(Ok(message)) => message,
        };
        last_progress = Some(Instant::now());
        received += 1;
        *per_topic.entry(message.topic().to_owned()).or_default() += 1;
        let Some(e) = message.payload().and_then(|v| serde_json::from_slice::<Envelope>(v).ok()) else {
            foreign += 1;
            continue;
        };
        let Some(s) = by_id.get(&e.event_id) else {
            foreign += 1;
            continue;
        };
        if s.aggregate_type != e.aggregate_type
            || s.aggregate_id != e.aggregate_id
            || s.sequence != e.sequence
            || s.event_type != e.event_type
        {
            mismatched += 1;
        }
        if !seen.insert(e.event_id) {
            duplicates += 1;
        }
    }
    eprintln!("topic read: messages per topic {per_topic:?} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(TopicCheck {
        received,
        distinct: seen.len(),
        duplicates,
        missing: by_id.len() - seen.len(),
        foreign,
        mismatched,
    })
}

/// Read-model tables compared by [`replay_check`], with the checkpoints.
pub const READ_MODEL_TABLES: &[&str] = &[
    "rm_profiles",
    "rm_sessions",
    "rm_challenges",
    "rm_passkeys",
    "rm_device_pins",
    "projection_checkpoints",
];

/// With the projectors stopped: copies every read-model table, rebuilds
/// every projection from the store, and counts rows that differ (both
/// directions, duplicates included). Leaves the rebuilt read models.
///
/// # Errors
/// A difference, or a database error.
pub async fn replay_check(settings: &Settings) -> anyhow::Result<()> {
    let pool = projections::db::connect(&settings.database_url).await?;
    for table in READ_MODEL_TABLES {
        sqlx::query(&format!("DROP TABLE IF EXISTS chaos_live_{table}")).execute(&pool).await?;
        sqlx::query(&format!("CREATE TABLE chaos_live_{table} AS TABLE {table}")).execute(&pool).await?;
    }
    let runner = projections::runtime::ProjectionRunner::new(pool.clone(), App::projectors());
    let started = Instant::now();
    for name in runner.names() {
        let stats = runner.rebuild(name, 1_000).await?;
        println!("rebuilt {name}: {} events read, {} applied", stats.read, stats.applied);
    }
    println!("rebuild took {:.1} s", started.elapsed().as_secs_f64());
    println!("| read model | rows live | rows replayed | live rows not in replay | replayed rows not live |");
    println!("|---|---:|---:|---:|---:|");
    let mut differing = 0i64;
    for table in READ_MODEL_TABLES {
        let count = |sql: String| {
            let pool = pool.clone();
            async move { sqlx::query_scalar::<_, i64>(&sql).fetch_one(&pool).await }
        };
        let live = count(format!("SELECT count(*) FROM chaos_live_{table}")).await?;
        let replayed = count(format!("SELECT count(*) FROM {table}")).await?;
        let only_live =
            count(format!("SELECT count(*) FROM (TABLE chaos_live_{table} EXCEPT ALL TABLE {table}) d"))
                .await?;
        let only_replayed =
            count(format!("SELECT count(*) FROM (TABLE {table} EXCEPT ALL TABLE chaos_live_{table}) d"))
                .await?;
        println!("| {table} | {live} | {replayed} | {only_live} | {only_replayed} |");
        differing += only_live + only_replayed;
    }
    for table in READ_MODEL_TABLES {
        sqlx::query(&format!("DROP TABLE IF EXISTS chaos_live_{table}")).execute(&pool).await?;
    }
    anyhow::ensure!(differing == 0, "{differing} read-model rows differ from a fresh replay");
    println!("replay-check: PASS (read models equal a fresh replay)");
    Ok(())
}
