//! `bench replay`: rebuild of the `profiles` and `sessions` projections
//! (`ProjectionRunner::rebuild`, set-based through
//! `Projector::rebuild_chunk`, both projectors at once on their own tasks)
//! from N stored events, in events per second, against a bulk insert
//! (multi-row `INSERT … SELECT FROM UNNEST`, 10,000 rows per statement) of
//! the very rows the rebuild produced — read-model rows and projector
//! checkpoints — into empty copies of the tables, expressed in the same
//! events per second. For comparison the same rebuild runs through the
//! per-event path (the default `rebuild_chunk`: `Projector::apply` per
//! event, one transaction per chunk), and its rows are checked to be
//! identical to the set-based ones; and the rebuild without downtime
//! (`ProjectionRunner::replay`: shadow tables, catch-up, swap), timed
//! against the in-place one and checked to leave the same rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use projections::profiles::ProfilesProjector;
use projections::runtime::{
    PerEventRebuild, ProjectionRunner, Projector, RebuildStats, ReplayGuard, ReplayOptions,
    DEFAULT_REBUILD_CHUNK,
};
use projections::sessions::SessionsProjector;
use sqlx::PgPool;

use super::data::{seed_users, SeedShape};
use super::{fmt_rate, per_second, ratio, BenchEnv, BenchOptions, Check, Report, Row};

/// Default number of events.
pub const DEFAULT_EVENTS: usize = 1_000_000;
/// Events per chunk (transaction) of the rebuilds.
const REBUILD_CHUNK: usize = DEFAULT_REBUILD_CHUNK;
/// Rows per bulk statement of the baseline.
const BULK_ROWS: i64 = 10_000;

/// Runs the benchmark on `env`.
///
/// # Errors
/// Setup failures, a failed rebuild.
pub async fn run(env: &BenchEnv, o: &BenchOptions) -> anyhow::Result<Report> {
    let pool = env.db.clone();
    let keys = commands::Keyring::derive(&env.settings.master_key()?);
    let shape = SeedShape::REPLAY;
    let users = o.events.unwrap_or(DEFAULT_EVENTS).div_ceil(shape.events_per_user()).max(1);
    let bar = ProgressBar::new(u64::try_from(users)?);
    let seeding = Instant::now();
    seed_users(&pool, &keys, "$argon2id$v=19$m=19456,t=2,p=1$bench$bench", users, shape, &bar).await?;
    bar.finish_and_clear();
    let seeding = seeding.elapsed();
    let n = users * shape.events_per_user();
    sqlx::query("VACUUM ANALYZE events").execute(&pool).await?;

    let set_based: Vec<Arc<dyn Projector>> = vec![Arc::new(ProfilesProjector), Arc::new(SessionsProjector)];
    let Rebuilt { profiles, sessions, profiles_done, wall: rebuild_time } =
        rebuild_both(&pool, set_based).await?;
    let rebuild_rate = per_second(u64::try_from(n)?, rebuild_time);

    let (rows, bulk_time) = bulk_baseline(&pool).await?;
    let bulk_rate = per_second(u64::try_from(n)?, bulk_time);

    let per_event: Vec<Arc<dyn Projector>> = vec![
        Arc::new(PerEventRebuild(Arc::new(ProfilesProjector))),
        Arc::new(PerEventRebuild(Arc::new(SessionsProjector))),
    ];
    let per_event_time = rebuild_both(&pool, per_event).await?.wall;
    let per_event_rate = per_second(u64::try_from(n)?, per_event_time);
    let same = same_rows(&pool).await?;

    // The rebuild without downtime: shadow tables, catch-up, swap.
    let shadow_time = replay_both(&pool).await?;
    let shadow_rate = per_second(u64::try_from(n)?, shadow_time);
    let shadow_same = same_rows(&pool).await?;

    let mut r = Report::new("replay");
    r.note(format!(
        "{n} events ({users} users × {}: UserRegistered, EmailVerified, ProfileUpdated, SessionStarted, 3 × SessionRefreshed, SessionRevoked); seeded in {:.1} s",
        shape.events_per_user(),
        seeding.as_secs_f64()
    ));
    r.note(format!(
        "set-based rebuild: profiles {} events of {} users, sessions {} events of {} sessions, in {:.2} s (both at once, profiles done after {:.2} s; chunks of ~{REBUILD_CHUNK} events, {} + {} transactions)",
        profiles.read,
        profiles.aggregates,
        sessions.read,
        sessions.aggregates,
        rebuild_time.as_secs_f64(),
        profiles_done.as_secs_f64(),
        profiles.chunks,
        sessions.chunks,
    ));
    r.note(format!(
        "bulk insert: {rows} rows (rm_profiles, rm_sessions, projection_checkpoints) in {:.2} s",
        bulk_time.as_secs_f64()
    ));
    r.note(format!(
        "per-event rebuild (Projector::apply per event, one transaction per chunk): {:.2} s",
        per_event_time.as_secs_f64()
    ));
    r.rows.push(Row::ratio(
        "rebuild profiles + sessions, events/s",
        fmt_rate(rebuild_rate),
        format!("{} (bulk insert of the same rows)", fmt_rate(bulk_rate)),
        ratio(rebuild_rate, bulk_rate),
        Check::RatioAtLeast(0.5),
    ));
    r.rows.push(Row::info(
        "same rebuild through the per-event path (default rebuild_chunk), events/s",
        fmt_rate(per_event_rate),
        format!("{} (bulk insert of the same rows)", fmt_rate(bulk_rate)),
        Some(ratio(per_event_rate, bulk_rate)),
    ));
    r.rows
        .push(Row::zero("rows differing between the set-based and the per-event rebuild", u64::from(!same)));
    r.rows.push(Row::info(
        "same rebuild into shadow tables and swapped in (no downtime, `streamforge replay`), events/s",
        fmt_rate(shadow_rate),
        format!("{} (set-based rebuild in place)", fmt_rate(rebuild_rate)),
        Some(ratio(shadow_rate, rebuild_rate)),
    ));
    r.rows.push(Row::zero(
        "rows differing between the shadow replay and the set-based rebuild",
        u64::from(!shadow_same),
    ));
    Ok(r)
}

/// What [`rebuild_both`] measured.
struct Rebuilt {
    profiles: RebuildStats,
    sessions: RebuildStats,
    /// From the start until the `profiles` rebuild ended.
    profiles_done: Duration,
    /// From the start until both ended.
    wall: Duration,
}

/// Rebuilds `profiles` and `sessions` of `projectors` at once, each on its
/// own task (so both cores work).
async fn rebuild_both(pool: &PgPool, projectors: Vec<Arc<dyn Projector>>) -> anyhow::Result<Rebuilt> {
    let runner = ProjectionRunner::new(pool.clone(), projectors);
    let started = Instant::now();
    let spawn = |name: &'static str| {
        let runner = runner.clone();
        tokio::spawn(async move {
            let stats = runner.rebuild(name, REBUILD_CHUNK).await;
            (stats, started.elapsed())
        })
    };
    let (profiles, sessions) = (spawn("profiles"), spawn("sessions"));
    let ((profiles, profiles_done), (sessions, _)) = (profiles.await?, sessions.await?);
    Ok(Rebuilt { profiles: profiles?, sessions: sessions?, profiles_done, wall: started.elapsed() })
}

/// Replays `profiles` and `sessions` into shadow tables and swaps them in
/// (`ProjectionRunner::replay`), both at once on their own tasks; returns
/// the wall time.
async fn replay_both(pool: &PgPool) -> anyhow::Result<Duration> {
    let runner = ProjectionRunner::new(
        pool.clone(),
        vec![Arc::new(ProfilesProjector) as Arc<dyn Projector>, Arc::new(SessionsProjector)],
    );
    let started = Instant::now();
    let spawn = |name: &'static str| {
        let (runner, pool) = (runner.clone(), pool.clone());
        tokio::spawn(async move {
            let guard = ReplayGuard::acquire(&pool, name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("a replay of {name} is running"))?;
            runner.replay(&guard, ReplayOptions::default(), &|_| {}).await?;
            Ok::<_, anyhow::Error>(())
        })
    };
    let (profiles, sessions) = (spawn("profiles"), spawn("sessions"));
    profiles.await??;
    sessions.await??;
    Ok(started.elapsed())
}

/// Whether the tables now hold exactly the rows copied into `bench_*`.
async fn same_rows(pool: &PgPool) -> anyhow::Result<bool> {
    let mut same = true;
    for t in ["rm_profiles", "rm_sessions", "projection_checkpoints"] {
        let differing: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM ((TABLE {t} EXCEPT ALL TABLE bench_{t}) UNION ALL (TABLE bench_{t} EXCEPT ALL TABLE {t})) d"
        ))
        .fetch_one(pool)
        .await?;
        same &= differing == 0;
    }
    Ok(same)
}

/// Copies the rebuilt rows into memory, then times their bulk insert into
/// empty copies of the three tables. Returns the row count and the time.
async fn bulk_baseline(pool: &PgPool) -> anyhow::Result<(i64, std::time::Duration)> {
    for t in ["rm_profiles", "rm_sessions", "projection_checkpoints"] {
        sqlx::query(&format!("CREATE TABLE bench_{t} (LIKE {t} INCLUDING ALL)")).execute(pool).await?;
    }
    type Profile = (
        uuid::Uuid,
        Option<String>,
        Option<String>,
        Option<String>,
        bool,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        Option<String>,
        bool,
        String,
    );
    let profiles: Vec<Profile> = sqlx::query_as(
        "SELECT user_id, email_sealed, name_sealed, bio_sealed, email_verified, created_at, updated_at,
                phone_sealed, phone_verified, two_factor_channel FROM rm_profiles",
    )
    .fetch_all(pool)
    .await?;
    let sessions: Vec<projections::sessions::SessionRow> = sqlx::query_as(
        "SELECT session_id, user_id, status, generation, created_at, last_used_at, idle_expires_at,
                expires_at, revoked_at, revoked_reason, client_sealed, authenticated_at FROM rm_sessions",
    )
    .fetch_all(pool)
    .await?;
    let checkpoints: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT projector, aggregate_type, aggregate_id, sequence FROM projection_checkpoints",
    )
    .fetch_all(pool)
    .await?;
    let rows = i64::try_from(profiles.len() + sessions.len() + checkpoints.len())?;
    let chunk = usize::try_from(BULK_ROWS)?;

    let started = Instant::now();
    for c in profiles.chunks(chunk) {
        sqlx::query(
            "INSERT INTO bench_rm_profiles (user_id, email_sealed, name_sealed, bio_sealed, email_verified,
                 created_at, updated_at, phone_sealed, phone_verified, two_factor_channel)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[],
                 $6::timestamptz[], $7::timestamptz[], $8::text[], $9::bool[], $10::text[])",
        )
        .bind(c.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.1.as_deref()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.2.as_deref()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.3.as_deref()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.4).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.5).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.6).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.7.as_deref()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.8).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.9.as_str()).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    }
    for c in sessions.chunks(chunk) {
        sqlx::query(
            "INSERT INTO bench_rm_sessions (session_id, user_id, status, generation, created_at, last_used_at,
                 idle_expires_at, expires_at, revoked_at, revoked_reason, client_sealed, authenticated_at)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::timestamptz[],
                 $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::text[],
                 $11::text[], $12::timestamptz[])",
        )
        .bind(c.iter().map(|r| r.session_id).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.user_id).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.generation).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.last_used_at).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.idle_expires_at).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.expires_at).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.revoked_at).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.revoked_reason.as_deref()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.client_sealed.as_deref()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.authenticated_at).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    }
    for c in checkpoints.chunks(chunk) {
        sqlx::query(
            "INSERT INTO bench_projection_checkpoints (projector, aggregate_type, aggregate_id, sequence)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[])",
        )
        .bind(c.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.3).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    }
    Ok((rows, started.elapsed()))
}
