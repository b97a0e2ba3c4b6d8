//! Set-based rebuilds (`Projector::rebuild_chunk`) of `profiles` and
//! `sessions`: the read models must come out identical to the per-event
//! path (the live runner, and the default per-event rebuild), from the same
//! generated events — sealed fields, phone registrations, profile updates,
//! re-authentications, refreshes, revocations and odd streams included.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone as _, Utc};
use cqrs_es::DomainEvent;
use domain::envelope::Envelope;
use domain::otp::OtpChannel;
use domain::session::{RevocationReason, SessionEvent};
use domain::user::UserEvent;
use domain::values::{Digest, Sealed};
use projections::pg_feed::{PgFeed, PgFeedConfig};
use projections::profiles::{ProfileRow, ProfilesProjector};
use projections::rebuild::{RebuildChunk, StoredEvent, StreamReader};
use projections::runtime::{ProjectionError, ProjectionRunner, Projector, RunError};
use projections::sessions::{SessionRow, SessionsProjector};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::helpers::{settle, TestDb, INSERT_EVENT};

/// A projector with the default (per-event) `rebuild_chunk` and
/// `apply_many`: the reference.
struct PerEvent(Arc<dyn Projector>);

#[async_trait]
impl Projector for PerEvent {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn handles(&self, aggregate_type: &str) -> bool {
        self.0.handles(aggregate_type)
    }
    fn tables(&self) -> &'static [&'static str] {
        self.0.tables()
    }
    fn ignored_event_types(&self) -> &'static [&'static str] {
        self.0.ignored_event_types()
    }
    async fn apply(&self, conn: &mut PgConnection, envelope: &Envelope) -> Result<(), ProjectionError> {
        self.0.apply(conn, envelope).await
    }
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        self.0.reset(conn).await
    }
}

/// A projector that may only write through
/// [`Projector::push_one_statement`]: its `apply` fails, so a batch that
/// took the transaction path (or the one-by-one retry) fails the runner.
struct OneStatementOnly(Arc<dyn Projector>);

#[async_trait]
impl Projector for OneStatementOnly {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn handles(&self, aggregate_type: &str) -> bool {
        self.0.handles(aggregate_type)
    }
    fn checkpoints(&self) -> projections::runtime::Checkpoints {
        self.0.checkpoints()
    }
    fn tables(&self) -> &'static [&'static str] {
        self.0.tables()
    }
    fn push_one_statement(
        &self,
        q: &mut sqlx::QueryBuilder<'static, sqlx::Postgres>,
        envelopes: &[&Envelope],
    ) -> Result<bool, ProjectionError> {
        self.0.push_one_statement(q, envelopes)
    }
    async fn apply(&self, _: &mut PgConnection, _: &Envelope) -> Result<(), ProjectionError> {
        Err(ProjectionError::Other(anyhow::anyhow!("the transaction path was taken")))
    }
}

fn set_based() -> Vec<Arc<dyn Projector>> {
    vec![Arc::new(ProfilesProjector), Arc::new(SessionsProjector)]
}

fn per_event() -> Vec<Arc<dyn Projector>> {
    set_based().into_iter().map(|p| Arc::new(PerEvent(p)) as Arc<dyn Projector>).collect()
}

/// One generated event: stream, and the event in stored form.
struct Gen {
    aggregate_type: &'static str,
    aggregate_id: String,
    event_type: String,
    payload: serde_json::Value,
}

fn gen<E: DomainEvent>(aggregate_type: &'static str, aggregate_id: &str, event: &E) -> Gen {
    Gen {
        aggregate_type,
        aggregate_id: aggregate_id.to_owned(),
        event_type: event.event_type(),
        payload: serde_json::to_value(event).unwrap(),
    }
}

/// A time with sub-microsecond digits (Postgres truncates them), so that
/// in-memory comparisons must agree with SQL's.
fn time(rng: &mut StdRng) -> DateTime<Utc> {
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    base + chrono::TimeDelta::nanoseconds(rng.gen_range(0..3_600_000_000_000))
}

fn sealed(rng: &mut StdRng, what: &str) -> Sealed {
    Sealed(format!("v1.{what}-{:016x}", rng.gen::<u64>()))
}

fn user_stream(rng: &mut StdRng, odd: usize) -> Vec<Gen> {
    let user_id = Uuid::new_v4();
    let id = user_id.to_string();
    let mut events = Vec::new();
    // Odd streams: updates before the registration, a registration of
    // another user id, a double registration, no registration at all.
    if odd == 1 {
        let e = UserEvent::EmailVerified {
            challenge_id: Uuid::new_v4(),
            verified_at: time(rng),
            delivery_id: None,
        };
        events.push(gen("user", &id, &e));
    }
    let registered_user = if odd == 2 { Uuid::new_v4() } else { user_id };
    if odd != 4 {
        if rng.gen_bool(0.7) {
            events.push(gen(
                "user",
                &id,
                &UserEvent::UserRegistered {
                    user_id: registered_user,
                    email: sealed(rng, "email"),
                    email_hash: Digest(format!("{:064x}", rng.gen::<u128>())),
                    name: sealed(rng, "name"),
                    password_hash: "$argon2id$test".to_owned(),
                    email_challenge_id: Uuid::new_v4(),
                    registered_at: time(rng),
                },
            ));
        } else {
            events.push(gen(
                "user",
                &id,
                &UserEvent::UserRegisteredWithPhone {
                    user_id: registered_user,
                    phone: sealed(rng, "phone"),
                    phone_hash: Digest("ab".repeat(32)),
                    challenge_id: Uuid::new_v4(),
                    registered_at: time(rng),
                },
            ));
        }
    }
    if odd == 3 {
        events.push(gen(
            "user",
            &id,
            &UserEvent::UserRegisteredWithPhone {
                user_id,
                phone: sealed(rng, "phone2"),
                phone_hash: Digest("cd".repeat(32)),
                challenge_id: Uuid::new_v4(),
                registered_at: time(rng),
            },
        ));
    }
    for _ in 0..rng.gen_range(0..8) {
        let e = match rng.gen_range(0..13) {
            0 => UserEvent::EmailVerified {
                challenge_id: Uuid::new_v4(),
                verified_at: time(rng),
                delivery_id: None,
            },
            1 => UserEvent::ProfileUpdated {
                name: rng.gen_bool(0.5).then(|| sealed(rng, "name")),
                bio: rng.gen_bool(0.5).then(|| sealed(rng, "bio")),
                updated_at: time(rng),
            },
            2 => UserEvent::PhoneAdded {
                phone: sealed(rng, "phone"),
                phone_hash: Digest("ef".repeat(32)),
                challenge_id: Uuid::new_v4(),
                added_at: time(rng),
            },
            3 => UserEvent::PhoneVerified {
                challenge_id: Uuid::new_v4(),
                verified_at: time(rng),
                // Events written before the phone was carried have none.
                phone: rng.gen_bool(0.5).then(|| sealed(rng, "phone")),
                phone_hash: None,
                replaced_phone_hash: None,
            },
            8 => UserEvent::PhoneRemoved { phone_hash: None, removed_at: time(rng) },
            9 => UserEvent::AllSessionsRevoked {
                reason: domain::session::RevocationReason::Logout,
                revoked_before: time(rng),
            },
            10 => UserEvent::PhoneClaimAttempted { delivery_id: Uuid::new_v4(), attempted_at: time(rng) },
            11 => UserEvent::RegistrationExpired { expired_at: time(rng) },
            4 => UserEvent::TwoFactorChannelChanged {
                channel: [OtpChannel::Email, OtpChannel::Sms, OtpChannel::Totp][rng.gen_range(0..3)],
                changed_at: time(rng),
            },
            5 => UserEvent::LoginPasswordAccepted { challenge_id: Uuid::new_v4(), accepted_at: time(rng) },
            6 => UserEvent::PasswordResetRequested { challenge_id: Uuid::new_v4(), requested_at: time(rng) },
            7 => UserEvent::DuplicateRegistrationAttempted {
                delivery_id: Uuid::new_v4(),
                attempted_at: time(rng),
            },
            _ => UserEvent::PasswordReset {
                reset_id: Uuid::new_v4(),
                password_hash: "$argon2id$new".to_owned(),
                delivery_id: None,
                reset_at: time(rng),
            },
        };
        events.push(gen("user", &id, &e));
    }
    events
}

fn session_stream(rng: &mut StdRng, odd: usize) -> Vec<Gen> {
    let session_id = Uuid::new_v4();
    let id = session_id.to_string();
    let mut events = Vec::new();
    if odd == 1 {
        events.push(gen(
            "session",
            &id,
            &SessionEvent::SessionRevoked { reason: RevocationReason::Admin, revoked_at: time(rng) },
        ));
    }
    if odd != 4 {
        let started_at = time(rng);
        let start = |rng: &mut StdRng, session_id| SessionEvent::SessionStarted {
            session_id,
            user_id: Uuid::new_v4(),
            refresh_hash: Digest("00".repeat(32)),
            started_at,
            idle_expires_at: started_at + chrono::TimeDelta::days(30),
            expires_at: started_at + chrono::TimeDelta::days(90),
            client: rng.gen_bool(0.5).then(|| sealed(rng, "client")),
            quick_factor: rng.gen_bool(0.2),
        };
        let e = start(rng, if odd == 2 { Uuid::new_v4() } else { session_id });
        events.push(gen("session", &id, &e));
        if odd == 3 {
            let e = start(rng, session_id);
            events.push(gen("session", &id, &e));
        }
    }
    for _ in 0..rng.gen_range(0..7) {
        let e = match rng.gen_range(0..5) {
            0 => SessionEvent::SessionReauthenticated { reauthenticated_at: time(rng) },
            1 | 2 => SessionEvent::SessionRefreshed {
                refresh_hash: Digest("11".repeat(32)),
                generation: if rng.gen_bool(0.05) { u64::MAX } else { rng.gen_range(1..100) },
                refreshed_at: time(rng),
                idle_expires_at: time(rng),
            },
            3 => SessionEvent::RefreshTokenReuseDetected { detected_at: time(rng) },
            _ => SessionEvent::SessionRevoked {
                reason: [
                    RevocationReason::Logout,
                    RevocationReason::RefreshTokenReuse,
                    RevocationReason::Erased,
                ][rng.gen_range(0..3)],
                revoked_at: time(rng),
            },
        };
        events.push(gen("session", &id, &e));
    }
    events
}

/// Stores the streams, interleaved at random (per-stream order kept), in a
/// few transactions. Returns the number of events.
async fn store(pool: &PgPool, rng: &mut StdRng, streams: Vec<Vec<Gen>>) -> usize {
    let mut queues: Vec<std::collections::VecDeque<(i64, Gen)>> = streams
        .into_iter()
        .map(|s| s.into_iter().enumerate().map(|(i, g)| (i64::try_from(i).unwrap() + 1, g)).collect())
        .collect();
    let mut order = Vec::new();
    for (k, q) in queues.iter().enumerate() {
        order.extend(std::iter::repeat_n(k, q.len()));
    }
    order.shuffle(rng);
    let n = order.len();
    for part in order.chunks(500) {
        let mut tx = pool.begin().await.unwrap();
        for &k in part {
            let (sequence, g) = queues[k].pop_front().unwrap();
            sqlx::query(INSERT_EVENT)
                .bind(g.aggregate_type)
                .bind(&g.aggregate_id)
                .bind(sequence)
                .bind(&g.event_type)
                .bind("1")
                .bind(&g.payload)
                .bind(serde_json::json!({ "request_id": "gen" }))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    n
}

async fn generate(pool: &PgPool, seed: u64, users: usize) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut streams = Vec::new();
    for i in 0..users {
        // Every 10th stream is odd in one of four ways.
        let odd = if i % 10 == 9 { 1 + (i / 10) % 4 } else { 0 };
        streams.push(user_stream(&mut rng, odd));
        streams.push(session_stream(&mut rng, odd));
    }
    // A user stream whose id is not a UUID, registered only (apply accepts it).
    let e = UserEvent::UserRegistered {
        user_id: Uuid::new_v4(),
        email: sealed(&mut rng, "email"),
        email_hash: Digest("12".repeat(32)),
        name: sealed(&mut rng, "name"),
        password_hash: "$argon2id$test".to_owned(),
        email_challenge_id: Uuid::new_v4(),
        registered_at: time(&mut rng),
    };
    streams.push(vec![gen("user", "not-a-uuid", &e)]);
    // Events no projector here handles.
    streams.push(vec![Gen {
        aggregate_type: "throttle",
        aggregate_id: "t".into(),
        event_type: "Whatever".into(),
        payload: serde_json::json!({ "Whatever": {} }),
    }]);
    store(pool, &mut rng, streams).await
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    profiles: Vec<ProfileRow>,
    sessions: Vec<SessionRow>,
    checkpoints: Vec<(String, String, String, i64)>,
}

async fn snapshot(pool: &PgPool) -> Snapshot {
    Snapshot {
        profiles: sqlx::query_as(
            "SELECT user_id, email_sealed, name_sealed, bio_sealed, email_verified, phone_sealed,
                    phone_verified, two_factor_channel, username, created_at, updated_at
             FROM rm_profiles ORDER BY user_id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        sessions: sqlx::query_as(
            "SELECT session_id, user_id, status, generation, created_at, last_used_at, idle_expires_at,
                    expires_at, revoked_at, revoked_reason, client_sealed, authenticated_at
             FROM rm_sessions ORDER BY session_id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        checkpoints: sqlx::query_as(
            "SELECT projector, aggregate_type, aggregate_id, sequence FROM projection_checkpoints
             ORDER BY projector, aggregate_type, aggregate_id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    }
}

/// Drains `feed` through `runner` (the live, batched path).
async fn drain(runner: &ProjectionRunner, feed: &mut PgFeed, batch: usize) {
    while runner.run_once(feed, batch, Duration::ZERO).await.unwrap() > 0 {}
}

#[tokio::test]
async fn set_based_rebuild_equals_the_per_event_paths() {
    let db = TestDb::new().await;
    let n = generate(&db.pool, 7, 400).await;
    settle(&db.pool).await;

    // 1. The live path, in small batches (duplicates across batches too).
    let live = ProjectionRunner::new(db.pool.clone(), set_based());
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("live")).await.unwrap();
    drain(&live, &mut feed, 37).await;
    let from_live = snapshot(&db.pool).await;
    assert!(from_live.profiles.len() > 300, "{} profiles", from_live.profiles.len());
    assert!(from_live.sessions.len() > 300);
    assert!(from_live.profiles.iter().any(|p| p.bio_sealed.is_some() && p.phone_sealed.is_some()));
    assert!(from_live.sessions.iter().any(|s| s.status == "revoked"));
    assert!(from_live.sessions.iter().any(|s| s.generation == i64::MAX));

    // 1b. The live path through `apply` one envelope at a time (the default
    // `apply_many`) leaves the same rows as the set-based `apply_many`.
    sqlx::query("TRUNCATE rm_profiles, rm_sessions, projection_checkpoints").execute(&db.pool).await.unwrap();
    let live_per_event = ProjectionRunner::new(db.pool.clone(), per_event());
    let mut reference_feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("live-per-event")).await.unwrap();
    drain(&live_per_event, &mut reference_feed, 37).await;
    assert_eq!(
        snapshot(&db.pool).await,
        from_live,
        "live per-envelope path differs from the live set-based path"
    );

    // 2. The default per-event rebuild.
    let reference = ProjectionRunner::new(db.pool.clone(), per_event());
    for name in ["profiles", "sessions"] {
        let stats = reference.rebuild(name, 50).await.unwrap();
        assert_eq!(stats.replayed_chunks, 0);
    }
    assert_eq!(snapshot(&db.pool).await, from_live, "per-event rebuild differs from the live path");

    // 3. The set-based rebuild, in several chunk sizes.
    let runner = ProjectionRunner::new(db.pool.clone(), set_based());
    for chunk in [2, 50, 100_000] {
        let (profiles, sessions) =
            tokio::join!(runner.rebuild("profiles", chunk), runner.rebuild("sessions", chunk));
        let (profiles, sessions) = (profiles.unwrap(), sessions.unwrap());
        assert_eq!(profiles.replayed_chunks + sessions.replayed_chunks, 0);
        assert_eq!(profiles.read + sessions.read, n - 1, "all but the throttle event");
        assert_eq!(snapshot(&db.pool).await, from_live, "set-based rebuild (chunks of {chunk}) differs");
    }

    // 4. The live runner resumes after the rebuild without applying anything again.
    let mut fresh = PgFeed::new(db.pool.clone(), PgFeedConfig::new("after-rebuild")).await.unwrap();
    drain(&live, &mut fresh, 1000).await;
    assert_eq!(snapshot(&db.pool).await, from_live);
    drop((feed, reference_feed, fresh));
    db.drop().await;
}

/// A set-based projector with a live runner racing its rebuild: before the
/// first chunk is written, the first stream's first event is applied and
/// checkpointed and committed elsewhere, as a live runner left running
/// would do.
struct RacedByLive {
    inner: Arc<dyn Projector>,
    pool: PgPool,
    raced: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Projector for RacedByLive {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn handles(&self, aggregate_type: &str) -> bool {
        self.inner.handles(aggregate_type)
    }
    fn tables(&self) -> &'static [&'static str] {
        self.inner.tables()
    }
    fn ignored_event_types(&self) -> &'static [&'static str] {
        self.inner.ignored_event_types()
    }
    async fn apply(&self, conn: &mut PgConnection, envelope: &Envelope) -> Result<(), ProjectionError> {
        self.inner.apply(conn, envelope).await
    }
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        self.inner.reset(conn).await
    }
    async fn rebuild_chunk(
        &self,
        conn: &mut PgConnection,
        chunk: &RebuildChunk,
    ) -> Result<(), ProjectionError> {
        if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let first = &chunk.events()[0];
            let mut live = self.pool.begin().await?;
            self.inner.apply(&mut live, &first.to_envelope()?).await?;
            sqlx::query(
                "INSERT INTO projection_checkpoints (projector, aggregate_type, aggregate_id, sequence)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(self.name())
            .bind(&first.aggregate_type)
            .bind(&first.aggregate_id)
            .bind(first.sequence)
            .execute(&mut *live)
            .await?;
            live.commit().await?;
        }
        self.inner.rebuild_chunk(conn, chunk).await
    }
}

#[tokio::test]
async fn a_row_written_by_a_racing_live_runner_sends_the_chunk_to_the_replay() {
    let db = TestDb::new().await;
    generate(&db.pool, 11, 60).await;
    settle(&db.pool).await;
    let live = ProjectionRunner::new(db.pool.clone(), set_based());
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("live")).await.unwrap();
    drain(&live, &mut feed, 100).await;
    let from_live = snapshot(&db.pool).await;

    // The set-based writes insert without ON CONFLICT: the raced row (and
    // its checkpoint) fail the chunk, which the replay then applies through
    // `apply`, keeping the higher checkpoint.
    let raced: Vec<Arc<dyn Projector>> = set_based()
        .into_iter()
        .map(|inner| {
            Arc::new(RacedByLive { inner, pool: db.pool.clone(), raced: false.into() }) as Arc<dyn Projector>
        })
        .collect();
    let runner = ProjectionRunner::new(db.pool.clone(), raced);
    for name in ["profiles", "sessions"] {
        let stats = runner.rebuild(name, 40).await.unwrap();
        assert_eq!(stats.replayed_chunks, 1, "{name}: {stats:?}");
        assert!(stats.chunks > 1, "{name}: {stats:?}");
    }
    assert_eq!(snapshot(&db.pool).await, from_live, "the replayed chunk differs from the live path");
    drop(feed);
    db.drop().await;
}

#[tokio::test]
async fn rebuild_reads_only_settled_events_and_the_live_runner_takes_the_rest() {
    let db = TestDb::new().await;
    let mut rng = StdRng::seed_from_u64(1);
    let stream = session_stream(&mut rng, 0);
    store(&db.pool, &mut rng, vec![stream]).await;
    settle(&db.pool).await;

    // An append still in flight, then a later one committed: neither is settled.
    let mut open = db.pool.begin().await.unwrap();
    let held = Uuid::new_v4();
    let started = |session_id: Uuid| SessionEvent::SessionStarted {
        session_id,
        user_id: Uuid::new_v4(),
        refresh_hash: Digest("00".repeat(32)),
        started_at: Utc::now(),
        idle_expires_at: Utc::now(),
        expires_at: Utc::now(),
        client: None,
        quick_factor: false,
    };
    let insert = |id: Uuid| {
        let e = started(id);
        sqlx::query(INSERT_EVENT)
            .bind("session")
            .bind(id.to_string())
            .bind(1_i64)
            .bind(e.event_type())
            .bind("1")
            .bind(serde_json::to_value(&e).unwrap())
            .bind(serde_json::json!({}))
    };
    insert(held).execute(&mut *open).await.unwrap();
    let later = Uuid::new_v4();
    insert(later).execute(&db.pool).await.unwrap();

    let runner = ProjectionRunner::new(db.pool.clone(), set_based());
    let stats = runner.rebuild("sessions", 100).await.unwrap();
    assert_eq!(stats.aggregates, 1);
    let seen: Vec<Uuid> =
        sqlx::query_scalar("SELECT session_id FROM rm_sessions").fetch_all(&db.pool).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert!(!seen.contains(&held) && !seen.contains(&later));

    open.commit().await.unwrap();
    settle(&db.pool).await;
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("live")).await.unwrap();
    drain(&runner, &mut feed, 100).await;
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_sessions").fetch_one(&db.pool).await.unwrap();
    assert_eq!(count, 3);
    drop(feed);
    db.drop().await;
}

#[tokio::test]
async fn a_failing_rebuild_names_the_event() {
    let db = TestDb::new().await;
    let mut rng = StdRng::seed_from_u64(2);
    let mut good = user_stream(&mut rng, 0);
    good.truncate(1);
    // An update on a stream whose id is not a UUID: `apply` fails on it.
    let registered = UserEvent::UserRegistered {
        user_id: Uuid::new_v4(),
        email: sealed(&mut rng, "email"),
        email_hash: Digest("12".repeat(32)),
        name: sealed(&mut rng, "name"),
        password_hash: "x".to_owned(),
        email_challenge_id: Uuid::new_v4(),
        registered_at: time(&mut rng),
    };
    let verified = UserEvent::EmailVerified {
        challenge_id: Uuid::new_v4(),
        verified_at: time(&mut rng),
        delivery_id: None,
    };
    let bad = vec![gen("user", "bad-id", &registered), gen("user", "bad-id", &verified)];
    store(&db.pool, &mut rng, vec![good, bad]).await;
    settle(&db.pool).await;

    let runner = ProjectionRunner::new(db.pool.clone(), set_based());
    let error = runner.rebuild("profiles", 100).await.unwrap_err();
    assert!(
        matches!(
            &error,
            RunError::Projector { projector: "profiles", aggregate_id, sequence: 2, .. } if aggregate_id == "bad-id"
        ),
        "{error:?}"
    );
    db.drop().await;
}

#[tokio::test]
async fn the_reader_never_splits_a_stream() {
    let db = TestDb::new().await;
    for (id, len) in [("a", 3), ("b", 1), ("c", 2), ("d", 5), ("e", 1)] {
        for sequence in 1..=len {
            crate::helpers::insert_event(&db.pool, "test", id, sequence, "Happened", serde_json::json!({}))
                .await;
        }
    }
    settle(&db.pool).await;
    let horizon = projections::rebuild::Horizon::now(&db.pool).await.unwrap();
    for size in [2, 3, 4, 100] {
        let mut reader = StreamReader::new("test", horizon, size);
        let mut seen: Vec<(String, i64)> = Vec::new();
        while let Some(chunk) = reader.next_chunk(&db.pool).await.unwrap() {
            let streams: Vec<(String, Vec<i64>)> = chunk
                .streams()
                .map(|s| (s.aggregate_id.to_owned(), s.events.iter().map(|e| e.sequence).collect()))
                .collect();
            for (id, sequences) in &streams {
                let expected = sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM events WHERE aggregate_type = 'test' AND aggregate_id = $1",
                )
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
                assert_eq!(*sequences, (1..=expected).collect::<Vec<_>>(), "chunk size {size}: {id} split");
            }
            seen.extend(chunk.events().iter().map(|e| (e.aggregate_id.clone(), e.sequence)));
        }
        assert_eq!(seen.len(), 12, "chunk size {size}");
    }
    db.drop().await;
}

#[test]
fn stored_events_decode_like_envelopes() {
    let event = |payload: &str, event_type: &str| StoredEvent {
        event_id: Uuid::nil(),
        aggregate_type: "session".into(),
        aggregate_id: "s".into(),
        sequence: 1,
        position: 1,
        event_type: event_type.into(),
        event_version: "1".into(),
        occurred_at: Utc::now(),
        payload: payload.into(),
        metadata: "{}".into(),
    };
    let ok = event(
        r#"{"RefreshTokenReuseDetected":{"detected_at":"2026-01-01T00:00:00Z"}}"#,
        "RefreshTokenReuseDetected",
    );
    assert!(matches!(ok.decode::<SessionEvent>(), Ok(SessionEvent::RefreshTokenReuseDetected { .. })));
    let envelope = ok.to_envelope().unwrap();
    assert_eq!(envelope.payload, serde_json::json!({ "detected_at": "2026-01-01T00:00:00Z" }));
    // A payload tagged with another variant than `event_type` is not taken at its word.
    let mislabelled =
        event(r#"{"RefreshTokenReuseDetected":{"detected_at":"2026-01-01T00:00:00Z"}}"#, "SessionRevoked");
    assert!(mislabelled.decode::<SessionEvent>().is_err());
    assert!(event("not json", "X").decode::<SessionEvent>().is_err());
    let chunk = RebuildChunk::from_events(vec![ok.clone(), ok]);
    assert_eq!(chunk.streams().len(), 1);
    assert_eq!(chunk.checkpoints().collect::<Vec<_>>(), [("session", "s", 1)]);
}

/// A challenge's stream: issued, then a random run of what can follow
/// (resends, wrong codes, delivery outcomes, verified or locked).
fn challenge_stream(rng: &mut StdRng) -> Vec<Gen> {
    use domain::otp::{OtpEvent, OtpPurpose};
    let challenge_id = Uuid::new_v4();
    let id = challenge_id.to_string();
    let purposes = [
        OtpPurpose::EmailVerification,
        OtpPurpose::PhoneVerification,
        OtpPurpose::TwoFactor,
        OtpPurpose::Login,
        OtpPurpose::PasswordReset,
    ];
    let issued_at = time(rng);
    let mut events = vec![gen(
        "otp_challenge",
        &id,
        &OtpEvent::OtpIssued {
            challenge_id,
            delivery_id: challenge_id,
            subject_id: Uuid::new_v4(),
            attempts_key: "otp:test".to_owned(),
            recipient: sealed(rng, "to"),
            purpose: purposes[rng.gen_range(0..purposes.len())],
            channel: if rng.gen_bool(0.5) { OtpChannel::Email } else { OtpChannel::Sms },
            code_mac: Digest(format!("{:064x}", rng.gen::<u128>())),
            issued_at,
            expires_at: issued_at + chrono::TimeDelta::minutes(10),
        },
    )];
    for _ in 0..rng.gen_range(0..5) {
        let at = time(rng);
        let event = match rng.gen_range(0..6) {
            0 => OtpEvent::OtpReissued {
                delivery_id: Uuid::new_v4(),
                code_mac: Digest(format!("{:064x}", rng.gen::<u128>())),
                issued_at: at,
                expires_at: at + chrono::TimeDelta::minutes(10),
            },
            1 => OtpEvent::OtpVerificationFailed { failed_attempts: 1, failed_at: at },
            2 => OtpEvent::OtpDelivered { attempts: 1, delivered_at: at },
            3 => OtpEvent::OtpDeliveryFailed {
                attempts: 3,
                reason: format!("smtp: {}", rng.gen::<u16>()),
                failed_at: at,
            },
            4 => OtpEvent::OtpVerified { verified_at: at },
            _ => OtpEvent::OtpChallengeLocked { locked_at: at },
        };
        events.push(gen("otp_challenge", &id, &event));
    }
    events
}

/// While a shadow rebuild's swap holds the projector's lock, a batch that
/// fits one statement writes nothing (its try-lock fails) and goes by the
/// transaction, which waits for the swap; then it is written.
#[tokio::test]
async fn a_one_statement_batch_waits_for_a_swap() {
    use projections::challenges::ChallengesProjector;
    let db = TestDb::new().await;
    let mut rng = StdRng::seed_from_u64(12);
    let streams = (0..20).map(|_| challenge_stream(&mut rng)).collect();
    store(&db.pool, &mut rng, streams).await;
    settle(&db.pool).await;
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Arc::new(ChallengesProjector)]);
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("swap-held")).await.unwrap();
    // What a swap takes (shadow.rs: SWAP_LOCK).
    let mut swap = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(1801, hashtext('challenges'))")
        .execute(&mut *swap)
        .await
        .unwrap();
    let step = tokio::spawn(async move {
        let n = runner.run_once(&mut feed, 1, Duration::ZERO).await.unwrap();
        (n, runner, feed)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_challenges").fetch_one(&db.pool).await.unwrap();
    assert_eq!(rows, 0, "written while the swap held the lock");
    assert!(!step.is_finished(), "the batch did not wait for the swap");
    swap.commit().await.unwrap();
    let (n, runner, mut feed) = tokio::time::timeout(Duration::from_secs(10), step).await.unwrap().unwrap();
    assert_eq!(n, 1);
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_challenges").fetch_one(&db.pool).await.unwrap();
    assert_eq!(rows, 1, "the batch was written once the swap let go");
    drain(&runner, &mut feed, 50).await;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_challenges").fetch_one(&db.pool).await.unwrap();
    assert_eq!(rows, 20);
    db.drop().await;
}

/// `rm_challenges`, every column, in key order.
async fn challenges_snapshot(pool: &PgPool) -> Vec<projections::challenges::ChallengeRow> {
    sqlx::query_as(
        "SELECT challenge_id, purpose, channel, status, delivery, delivery_error, expires_at, updated_at
         FROM rm_challenges ORDER BY challenge_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Each challenge's row and the sequence it has reached (its duplicate
/// guard, `Checkpoints::InReadModel`).
async fn challenge_sequences(pool: &PgPool) -> Vec<(uuid::Uuid, i64)> {
    sqlx::query_as("SELECT challenge_id, sequence FROM rm_challenges ORDER BY challenge_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The challenges projector's set-based `apply_many` (one `INSERT` for the
/// issued, one `UPDATE` for the changes, one by one when a challenge
/// changes twice in a batch) leaves what `apply` leaves event by event,
/// in batches small and large, sequences included; its guard in the rows
/// makes a redelivery of everything a no-op and answers `has_applied`;
/// and it leaves no `projection_checkpoints` rows.
#[tokio::test]
async fn challenges_apply_many_equals_one_by_one() {
    use projections::challenges::ChallengesProjector;
    let db = TestDb::new().await;
    let mut rng = StdRng::seed_from_u64(11);
    let streams = (0..200).map(|_| challenge_stream(&mut rng)).collect();
    store(&db.pool, &mut rng, streams).await;
    settle(&db.pool).await;

    let reference =
        ProjectionRunner::new(db.pool.clone(), vec![Arc::new(PerEvent(Arc::new(ChallengesProjector)))]);
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("challenges-per-event")).await.unwrap();
    drain(&reference, &mut feed, 37).await;
    let expected = challenges_snapshot(&db.pool).await;
    let expected_sequences = challenge_sequences(&db.pool).await;
    let last: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT aggregate_id::uuid, max(sequence) FROM events WHERE aggregate_type = 'otp_challenge'
         GROUP BY aggregate_id ORDER BY aggregate_id::uuid",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(expected_sequences, last, "every row at its stream's last event");
    assert_eq!(expected.len(), 200);
    for status in ["pending", "verified", "locked"] {
        assert!(expected.iter().any(|c| c.status == status), "no {status} challenge");
    }
    for delivery in ["pending", "delivered", "failed"] {
        assert!(expected.iter().any(|c| c.delivery == delivery), "no {delivery} delivery");
    }

    let set_based = ProjectionRunner::new(db.pool.clone(), vec![Arc::new(ChallengesProjector)]);
    for (i, batch) in [3_usize, 37, 5_000].into_iter().enumerate() {
        sqlx::query("TRUNCATE rm_challenges, projection_checkpoints").execute(&db.pool).await.unwrap();
        let mut feed =
            PgFeed::new(db.pool.clone(), PgFeedConfig::new(format!("challenges-set-{i}"))).await.unwrap();
        drain(&set_based, &mut feed, batch).await;
        assert_eq!(challenges_snapshot(&db.pool).await, expected, "batches of {batch}");
        assert_eq!(challenge_sequences(&db.pool).await, expected_sequences, "batches of {batch}");
    }
    let checkpoints: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projection_checkpoints").fetch_one(&db.pool).await.unwrap();
    assert_eq!(checkpoints, 0, "the guard is in the rows");

    // Everything delivered again, with a row changed behind the
    // projector's back: the redelivery writes nothing (the row keeps the
    // change), in the set-based and the per-event path alike.
    // (A challenge with an event that writes `delivery_error`.)
    let marked: uuid::Uuid = sqlx::query_scalar(
        "SELECT aggregate_id::uuid FROM events WHERE aggregate_type = 'otp_challenge'
         AND event_type IN ('OtpDelivered', 'OtpDeliveryFailed', 'OtpReissued') LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE rm_challenges SET delivery_error = 'marked' WHERE challenge_id = $1")
        .bind(marked)
        .execute(&db.pool)
        .await
        .unwrap();
    for (name, runner) in [("again-set", &set_based), ("again-per-event", &reference)] {
        let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new(name)).await.unwrap();
        drain(runner, &mut feed, 50).await;
        let error: Option<String> =
            sqlx::query_scalar("SELECT delivery_error FROM rm_challenges WHERE challenge_id = $1")
                .bind(marked)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(error.as_deref(), Some("marked"), "{name}: a redelivered event was applied again");
        assert_eq!(challenge_sequences(&db.pool).await, expected_sequences, "{name}");
    }

    // Batches of one event each always fit one statement: written with no
    // transaction at all (the wrapper's `apply` fails), the same rows.
    sqlx::query("TRUNCATE rm_challenges, projection_checkpoints").execute(&db.pool).await.unwrap();
    let one_statement = ProjectionRunner::new(
        db.pool.clone(),
        vec![Arc::new(OneStatementOnly(Arc::new(ChallengesProjector)))],
    );
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("challenges-one-statement")).await.unwrap();
    drain(&one_statement, &mut feed, 1).await;
    assert_eq!(challenges_snapshot(&db.pool).await, expected, "one statement per event");
    assert_eq!(challenge_sequences(&db.pool).await, expected_sequences, "one statement per event");

    // Read-your-writes asks the rows.
    let projector = ChallengesProjector;
    // And so does a parked projector's catch-up (what it still has to read).
    let condition = projector.unapplied_condition().unwrap();
    let unapplied = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>(&format!(
            "SELECT count(*) FROM events e WHERE aggregate_type = 'otp_challenge' AND ({condition})"
        ))
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(unapplied(db.pool.clone()).await, 0);
    sqlx::query("UPDATE rm_challenges SET sequence = sequence - 1 WHERE challenge_id = $1")
        .bind(marked)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(unapplied(db.pool.clone()).await, 1, "the last event of the set-back challenge");
    sqlx::query("UPDATE rm_challenges SET sequence = sequence + 1 WHERE challenge_id = $1")
        .bind(marked)
        .execute(&db.pool)
        .await
        .unwrap();
    let (id, at) = expected_sequences[1];
    let id = id.to_string();
    assert!(projector.has_applied(&db.pool, "otp_challenge", &id, at).await.unwrap());
    assert!(!projector.has_applied(&db.pool, "otp_challenge", &id, at + 1).await.unwrap());
    let unknown = uuid::Uuid::new_v4().to_string();
    assert!(!projector.has_applied(&db.pool, "otp_challenge", &unknown, 1).await.unwrap());
    db.drop().await;
}
