//! Synthetic data written straight into the store: the dataset generator
//! behind `streamforge seed --users N`, and the events the `relay`,
//! `replay` and `queries` benchmarks start from.
//!
//! A seeded user is what the write side would have stored for a
//! registration with a verified email and one login: `UserRegistered` +
//! `EmailVerified` on the `user` stream, `SessionStarted` on a `session`
//! stream, the subject key (sealing email and name, decided 7), the email
//! reservation, and — unless asked not to — the `rm_profiles` and
//! `rm_sessions` rows with the projectors' checkpoints, exactly as the
//! projectors would have left them. Optional extra events (profile updates,
//! refresh rotations, a revocation) give the replay benchmark a realistic mix.
//! Every seeded account shares one argon2id hash (of [`SEED_PASSWORD`]):
//! hashing 100,000 passwords would take longer than the rest together.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use commands::keys::{hmac_hex, Keyring, Secret32};
use commands::tokens::new_refresh_token;
use commands::vault::seal_bytes;
use cqrs_es::DomainEvent;
use domain::session::{RevocationReason, SessionEvent};
use domain::user::UserEvent;
use domain::values::{Digest, Sealed};
use futures::{StreamExt as _, TryStreamExt as _};
use indicatif::ProgressBar;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// The password of every seeded account.
pub const SEED_PASSWORD: &str = "seeded-password-correct-horse";

/// Users per insert transaction.
const CHUNK: usize = 1_000;
/// Chunks written at once.
const PARALLEL_CHUNKS: usize = 3;

/// One row of the `events` table as postgres-es writes it.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// `user`, `session`, …
    pub aggregate_type: &'static str,
    /// Stream id.
    pub aggregate_id: String,
    /// 1-based sequence in the stream.
    pub sequence: i64,
    /// `DomainEvent::event_type`.
    pub event_type: String,
    /// `DomainEvent::event_version`.
    pub event_version: String,
    /// serde's externally tagged form, as postgres-es stores it.
    pub payload: String,
    /// Metadata JSON.
    pub metadata: String,
}

impl EventRow {
    /// The row postgres-es would write for `event`.
    ///
    /// # Errors
    /// Serialisation failure.
    pub fn new<E: DomainEvent + Serialize>(
        aggregate_type: &'static str,
        aggregate_id: String,
        sequence: i64,
        event: &E,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            aggregate_type,
            aggregate_id,
            sequence,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload: serde_json::to_string(event)?,
            metadata: r#"{"command":"Seed"}"#.to_owned(),
        })
    }
}

/// Appends `rows` with multi-row inserts (`UNNEST`) of at most 5,000 rows.
///
/// # Errors
/// Database errors (e.g. a sequence already taken).
pub async fn insert_events(pool: &PgPool, rows: &[EventRow]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    insert_events_in(&mut tx, rows).await?;
    tx.commit().await
}

async fn insert_events_in(conn: &mut sqlx::PgConnection, rows: &[EventRow]) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(5_000) {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT t, i, s, et, ev, p::json, m::json
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[])
                  AS u(t, i, s, et, ev, p, m)",
        )
        .bind(chunk.iter().map(|r| r.aggregate_type).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.aggregate_id.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.sequence).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.event_type.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.event_version.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.metadata.as_str()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// What each seeded user gets beyond registration, verification and one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedShape {
    /// `ProfileUpdated` events per user.
    pub profile_updates: usize,
    /// `SessionRefreshed` events per session.
    pub refreshes: usize,
    /// Whether each session ends with `SessionRevoked`.
    pub revoke: bool,
    /// Whether to write the read-model rows and checkpoints too.
    pub read_models: bool,
}

impl SeedShape {
    /// `streamforge seed`: registered, verified, logged in once; read models written.
    pub const USERS: Self = Self { profile_updates: 0, refreshes: 0, revoke: false, read_models: true };

    /// The replay mix: 3 user events and 5 session events per user, no read models.
    pub const REPLAY: Self = Self { profile_updates: 1, refreshes: 3, revoke: true, read_models: false };

    /// Events written per user.
    pub fn events_per_user(&self) -> usize {
        2 + self.profile_updates + 1 + self.refreshes + usize::from(self.revoke)
    }
}

/// A seeded account.
#[derive(Debug, Clone)]
pub struct SeededUser {
    /// User aggregate id.
    pub user_id: Uuid,
    /// Its one session.
    pub session_id: Uuid,
    /// Its email address (password: [`SEED_PASSWORD`]).
    pub email: String,
}

/// Seals `plain` for `subject` in the vault's format (`v1.` + base64url).
fn seal(key: &Secret32, subject: Uuid, plain: &str) -> anyhow::Result<Sealed> {
    Ok(Sealed(format!(
        "v1.{}",
        URL_SAFE_NO_PAD.encode(seal_bytes(key, subject.as_bytes(), plain.as_bytes())?)
    )))
}

/// `rm_profiles` row: user, email, name, bio (sealed), created, updated.
type ProfileRm = (Uuid, String, String, Option<String>, DateTime<Utc>, DateTime<Utc>);

#[derive(Default)]
struct Batch {
    users: Vec<SeededUser>,
    events: Vec<EventRow>,
    key_subjects: Vec<Uuid>,
    key_wrapped: Vec<Vec<u8>>,
    reservation_hashes: Vec<Vec<u8>>,
    profiles: Vec<ProfileRm>,
    sessions: Vec<SessionRm>,
}

struct SessionRm {
    session_id: Uuid,
    user_id: Uuid,
    revoked: bool,
    generation: i64,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    idle_expires_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

fn generate(
    keys: &Keyring,
    tag: &str,
    password_hash: &str,
    first: usize,
    count: usize,
    shape: SeedShape,
) -> anyhow::Result<Batch> {
    let mut b = Batch::default();
    let now = Utc::now();
    for i in first..first + count {
        let user_id = Uuid::now_v7();
        let session_id = Uuid::now_v7();
        let email = format!("seed-{tag}-{i}@seed.streamforge.test");
        let name = format!("Seed User {i}");
        let key = Secret32::generate();
        b.key_subjects.push(user_id);
        b.key_wrapped.push(seal_bytes(&keys.wrap, user_id.as_bytes(), &key.0)?);
        let email_hash = Digest(hmac_hex(&keys.lookup, &[b"email:", email.as_bytes()]));
        b.reservation_hashes.push(hex::decode(&email_hash.0)?);
        let at = now - Duration::days(1);
        let uid = user_id.to_string();
        let mut seq = 0i64;
        let mut user_event = |b: &mut Batch, e: &UserEvent| -> anyhow::Result<()> {
            seq += 1;
            b.events.push(EventRow::new("user", uid.clone(), seq, e)?);
            Ok(())
        };
        let challenge_id = Uuid::new_v4();
        let email_sealed = seal(&key, user_id, &email)?;
        let mut name_sealed = seal(&key, user_id, &name)?;
        let mut bio_sealed = None;
        user_event(
            &mut b,
            &UserEvent::UserRegistered {
                user_id,
                email: email_sealed.clone(),
                email_hash,
                name: name_sealed.clone(),
                password_hash: password_hash.to_owned(),
                email_challenge_id: challenge_id,
                registered_at: at,
            },
        )?;
        user_event(&mut b, &UserEvent::EmailVerified { challenge_id, verified_at: at, delivery_id: None })?;
        for u in 0..shape.profile_updates {
            name_sealed = seal(&key, user_id, &format!("Seed User {i} ({u})"))?;
            let bio = seal(&key, user_id, "Listens to field recordings and late-night radio.")?;
            bio_sealed = Some(bio.clone());
            user_event(
                &mut b,
                &UserEvent::ProfileUpdated {
                    name: Some(name_sealed.clone()),
                    bio: Some(bio),
                    updated_at: at,
                },
            )?;
        }
        let sid = session_id.to_string();
        let started = now - Duration::hours(1);
        let expires_at = started + Duration::days(90);
        let mut idle_expires_at = started + Duration::days(30);
        let mut s_seq = 1i64;
        b.events.push(EventRow::new(
            "session",
            sid.clone(),
            s_seq,
            &SessionEvent::SessionStarted {
                session_id,
                user_id,
                refresh_hash: new_refresh_token(session_id).hash,
                started_at: started,
                idle_expires_at,
                expires_at,
                client: None,
                quick_factor: false,
            },
        )?);
        let mut last_used = started;
        for g in 0..shape.refreshes {
            s_seq += 1;
            last_used = started + Duration::minutes(i64::try_from(g).unwrap_or(0) + 1);
            idle_expires_at = last_used + Duration::days(30);
            b.events.push(EventRow::new(
                "session",
                sid.clone(),
                s_seq,
                &SessionEvent::SessionRefreshed {
                    refresh_hash: new_refresh_token(session_id).hash,
                    generation: u64::try_from(g).unwrap_or(0) + 1,
                    refreshed_at: last_used,
                    idle_expires_at,
                },
            )?);
        }
        if shape.revoke {
            s_seq += 1;
            b.events.push(EventRow::new(
                "session",
                sid,
                s_seq,
                &SessionEvent::SessionRevoked { reason: RevocationReason::Logout, revoked_at: last_used },
            )?);
        }
        b.profiles.push((user_id, email_sealed.0, name_sealed.0, bio_sealed.map(|s| s.0), at, at));
        b.sessions.push(SessionRm {
            session_id,
            user_id,
            revoked: shape.revoke,
            generation: i64::try_from(shape.refreshes).unwrap_or(0),
            created_at: started,
            last_used_at: last_used,
            idle_expires_at,
            expires_at,
        });
        b.users.push(SeededUser { user_id, session_id, email });
    }
    Ok(b)
}

impl Batch {
    async fn write(&self, pool: &PgPool, shape: SeedShape) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        insert_events_in(&mut tx, &self.events).await?;
        sqlx::query("INSERT INTO subject_keys (subject_id, wrapped_key) SELECT * FROM UNNEST($1::uuid[], $2::bytea[])")
            .bind(&self.key_subjects)
            .bind(&self.key_wrapped)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO reservations (kind, key_hash, owner_id)
             SELECT 'email', h, o FROM UNNEST($1::bytea[], $2::uuid[]) AS u(h, o)",
        )
        .bind(&self.reservation_hashes)
        .bind(&self.key_subjects)
        .execute(&mut *tx)
        .await?;
        if shape.read_models {
            self.write_read_models(&mut tx, shape).await?;
        }
        tx.commit().await
    }

    async fn write_read_models(
        &self,
        conn: &mut sqlx::PgConnection,
        shape: SeedShape,
    ) -> Result<(), sqlx::Error> {
        let p = &self.profiles;
        sqlx::query(
            "INSERT INTO rm_profiles (user_id, email_sealed, name_sealed, bio_sealed, email_verified, created_at, updated_at)
             SELECT u, e, n, b, true, c, m
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[])
                  AS x(u, e, n, b, c, m)",
        )
        .bind(p.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.3.as_deref()).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.4).collect::<Vec<_>>())
        .bind(p.iter().map(|r| r.5).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        let s = &self.sessions;
        sqlx::query(
            "INSERT INTO rm_sessions (session_id, user_id, status, generation, created_at, last_used_at,
                                      idle_expires_at, expires_at, revoked_at, revoked_reason, authenticated_at)
             SELECT s, u, CASE WHEN r THEN 'revoked' ELSE 'active' END, g, c, l, i, e,
                    CASE WHEN r THEN l END, CASE WHEN r THEN 'logout' END, c
             FROM UNNEST($1::uuid[], $2::uuid[], $3::bool[], $4::int8[], $5::timestamptz[], $6::timestamptz[],
                         $7::timestamptz[], $8::timestamptz[]) AS x(s, u, r, g, c, l, i, e)",
        )
        .bind(s.iter().map(|r| r.session_id).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.user_id).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.revoked).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.generation).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.last_used_at).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.idle_expires_at).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.expires_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        // The projectors' checkpoints: the last sequence of each stream.
        let user_seq = i64::try_from(2 + shape.profile_updates).unwrap_or(i64::MAX);
        let session_seq = i64::try_from(1 + shape.refreshes + usize::from(shape.revoke)).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO projection_checkpoints (projector, aggregate_type, aggregate_id, sequence)
             SELECT 'profiles', 'user', u::text, $2 FROM UNNEST($1::uuid[]) AS x(u)
             UNION ALL
             SELECT 'sessions', 'session', s::text, $4 FROM UNNEST($3::uuid[]) AS y(s)",
        )
        .bind(p.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(user_seq)
        .bind(s.iter().map(|r| r.session_id).collect::<Vec<_>>())
        .bind(session_seq)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Seeds `users` accounts of `shape` into `pool`'s database (see the module
/// docs), advancing `progress` per user written. Returns the accounts.
///
/// # Errors
/// Database errors; what was committed before stays.
pub async fn seed_users(
    pool: &PgPool,
    keys: &Keyring,
    password_hash: &str,
    users: usize,
    shape: SeedShape,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<SeededUser>> {
    let tag = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let chunks: Vec<(usize, usize)> =
        (0..users).step_by(CHUNK).map(|first| (first, CHUNK.min(users - first))).collect();
    let batches: Vec<Vec<SeededUser>> = futures::stream::iter(chunks)
        .map(|(first, count)| {
            let tag = tag.clone();
            async move {
                let batch = generate(keys, &tag, password_hash, first, count, shape)?;
                batch.write(pool, shape).await?;
                progress.inc(u64::try_from(count).unwrap_or(0));
                anyhow::Ok(batch.users)
            }
        })
        .buffered(PARALLEL_CHUNKS)
        .try_collect()
        .await?;
    Ok(batches.into_iter().flatten().collect())
}

/// Follows per seeded user ([`seed_follows`]): 100k users give about 1M
/// follows (issue 15's dataset).
pub const FOLLOWS_PER_USER: i64 = 10;

/// Seeds about `per_user` follows from each of `users` (set-based, in
/// SQL): user number `n` (in id order) follows users of lower numbers,
/// picked as `floor(n · r²)` for uniform `r`, so low numbers are popular
/// (the first has thousands of followers at 100k users, most have a few) —
/// a skewed graph like a real one. Writes the `UserFollowed` events (one
/// pair stream each: the followee always has the lower number, so no pair
/// repeats) and the graph read model (`rm_follows`, `rm_user_stats`) as the
/// projector would. Returns the number of follows.
///
/// # Errors
/// Database errors.
pub async fn seed_follows(pool: &PgPool, users: &[Uuid], per_user: i64) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("CREATE TEMP TABLE seed_users (n bigint PRIMARY KEY, user_id uuid NOT NULL) ON COMMIT DROP")
        .execute(&mut *tx)
        .await?;
    let mut sorted = users.to_vec();
    sorted.sort_unstable();
    let numbers: Vec<i64> = (0..i64::try_from(sorted.len()).unwrap_or(i64::MAX)).collect();
    sqlx::query("INSERT INTO seed_users SELECT * FROM UNNEST($1::int8[], $2::uuid[])")
        .bind(&numbers)
        .bind(&sorted)
        .execute(&mut *tx)
        .await?;
    let follows = sqlx::query(
        "INSERT INTO rm_follows (follower_id, followee_id, active, since, seq)
         SELECT a.user_id, b.user_id, true, now() - make_interval(secs => random() * 31536000), 1
         FROM (SELECT user_id, floor(n * power(random(), 2))::bigint AS t
               FROM seed_users CROSS JOIN generate_series(1, $1) WHERE n > 0) a
         JOIN seed_users b ON b.n = a.t
         ON CONFLICT (follower_id, followee_id) DO NOTHING",
    )
    .bind(per_user)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'relationship', least(follower_id, followee_id)::text || ':' || greatest(follower_id, followee_id)::text,
                1, 'UserFollowed', '1',
                json_build_object('UserFollowed', json_build_object(
                    'follower', follower_id, 'followee', followee_id,
                    'followed_at', to_char(since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))),
                '{"command": "seed"}'::json
         FROM rm_follows f JOIN seed_users s ON s.user_id = f.follower_id"#,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO rm_user_stats (user_id, followers_count, following_count)
         SELECT s.user_id,
                (SELECT count(*) FROM rm_follows f WHERE f.followee_id = s.user_id AND f.active),
                (SELECT count(*) FROM rm_follows f WHERE f.follower_id = s.user_id AND f.active)
         FROM seed_users s
         ON CONFLICT (user_id) DO UPDATE
             SET followers_count = EXCLUDED.followers_count, following_count = EXCLUDED.following_count",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(follows)
}

/// `streamforge seed --users N`: seeds `users` accounts ([`SeedShape::USERS`])
/// into the configured database with a progress bar on the terminal.
///
/// # Errors
/// Database unreachable, bad keys, insert failures.
pub async fn seed_command(settings: &api::config::Settings, users: usize) -> anyhow::Result<()> {
    let pool = projections::db::connect_with(&settings.database_url, 8).await?;
    let keys = Keyring::derive(&settings.master_key()?);
    let hash = commands::passwords::PasswordHasher::new(1)?.hash(SEED_PASSWORD).await?;
    let bar = ProgressBar::new(u64::try_from(users).unwrap_or(u64::MAX));
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} seeding users [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    let started = std::time::Instant::now();
    let seeded = seed_users(&pool, &keys, &hash, users, SeedShape::USERS, &bar).await?;
    bar.finish();
    let ids: Vec<Uuid> = seeded.iter().map(|u| u.user_id).collect();
    let follows = seed_follows(&pool, &ids, FOLLOWS_PER_USER).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seeded {} users ({} events, read models included) and {follows} follows in {secs:.1} s; password of every seeded account: {SEED_PASSWORD}",
        seeded.len(),
        seeded.len() * SeedShape::USERS.events_per_user(),
    );
    if let Some(u) = seeded.first() {
        println!("first seeded account: {}", u.email);
    }
    pool.close().await;
    Ok(())
}

/// Seeds the home feed's tables for `bench queries` (issue 16): the
/// projector's copy of the follows (from `rm_follows`), `tracks` public
/// tracks spread over `users`, `reposts` reposts of them, and
/// `items_per_caller` feed rows for each of `callers` plus `items_per_user`
/// for every other user (rows point at seeded tracks, newest first as
/// fan-out leaves them). Returns the number of feed rows.
///
/// # Errors
/// Database errors.
pub async fn seed_feed(
    pool: &PgPool,
    users: &[Uuid],
    callers: &[Uuid],
    (tracks, reposts): (i64, i64),
    (items_per_caller, items_per_user): (i64, i64),
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO feed_follows (follower_id, followee_id, active, since, seq)
         SELECT follower_id, followee_id, active, since, seq FROM rm_follows",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO feed_authors (user_id, followers)
         SELECT followee_id, count(*) FROM feed_follows WHERE active GROUP BY 1",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "CREATE TEMP TABLE seed_numbered (n bigint PRIMARY KEY, user_id uuid NOT NULL) ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await?;
    let numbers: Vec<i64> = (0..i64::try_from(users.len()).unwrap_or(i64::MAX)).collect();
    sqlx::query("INSERT INTO seed_numbered SELECT * FROM UNNEST($1::int8[], $2::uuid[])")
        .bind(&numbers)
        .bind(users)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TEMP TABLE seed_tracks (n bigint PRIMARY KEY, track_id uuid NOT NULL, owner_id uuid NOT NULL,
                                        created_at timestamptz NOT NULL) ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await?;
    let n_users = i64::try_from(users.len()).unwrap_or(1).max(1);
    sqlx::query(
        "INSERT INTO seed_tracks
         SELECT g, gen_random_uuid(), u.user_id, now() - make_interval(secs => g::double precision)
         FROM generate_series(1, $1) g JOIN seed_numbered u ON u.n = g % $2",
    )
    .bind(tracks)
    .bind(n_users)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO feed_tracks (track_id, owner_id, created_at, title, public, fanned_out, seq)
         SELECT track_id, owner_id, created_at, 'Track ' || n, true, true, 1 FROM seed_tracks",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO feed_reposts (user_id, track_id, active, since, fanned_out, seq)
         SELECT u.user_id, t.track_id, true, t.created_at + interval '1 minute', true, 1
         FROM generate_series(1, $1) g
         JOIN seed_tracks t ON t.n = 1 + (g * 7919) % $3
         JOIN seed_numbered u ON u.n = (g * 104729) % $2
         ON CONFLICT DO NOTHING",
    )
    .bind(reposts)
    .bind(n_users)
    .bind(tracks.max(1))
    .execute(&mut *tx)
    .await?;
    sqlx::query("CREATE TEMP TABLE seed_callers (user_id uuid PRIMARY KEY) ON COMMIT DROP;")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO seed_callers SELECT DISTINCT * FROM UNNEST($1::uuid[])")
        .bind(callers)
        .execute(&mut *tx)
        .await?;
    let items = sqlx::query(
        "INSERT INTO feed_items (user_id, kind, actor_id, track_id, at, item_id)
         SELECT u.user_id, 'post', t.owner_id, t.track_id, t.created_at, feed_item_id('post', t.owner_id, t.track_id)
         FROM seed_numbered u
         CROSS JOIN LATERAL generate_series(1, CASE WHEN u.user_id IN (SELECT user_id FROM seed_callers)
                                                    THEN $1 ELSE $2 END) k
         JOIN seed_tracks t ON t.n = 1 + (u.n * 1009 + k * 7) % $3
         ON CONFLICT DO NOTHING",
    )
    .bind(items_per_caller)
    .bind(items_per_user)
    .bind(tracks.max(1))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(items)
}
