//! `bench commands`: the VerifyOtp and RefreshSession commands per second
//! and their p99 through the command layer (`commands::Executor` over
//! postgres-es: load the aggregate's events, decide, append with one
//! `INSERT` statement, with conflict retry) against a plain SQL run of the
//! same statements — the same `SELECT` of the stream, then one `INSERT` of
//! one event (its own transaction) — at the same concurrency.
//!
//! FollowUser / UnfollowUser go through the social service (the followee's
//! existence read from the store, the pair's stream loaded, decided,
//! appended) against the same three statements in plain SQL.
//!
//! Each side works on streams of its own, prepared alike: pending OTP
//! challenges (one `OtpIssued` each; a right code verifies each once) and
//! sessions (one `SessionStarted`, then one `SessionRefreshed` per refresh,
//! rotating over 100 sessions per client so streams grow as they do in use).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use commands::keys::Secret32;
use commands::otp_codes::code_mac;
use commands::tokens::new_refresh_token;
use commands::Executor;
use cqrs_es::DomainEvent as _;
use domain::otp::{OtpChallenge, OtpChannel, OtpCommand, OtpEvent, OtpPurpose};
use domain::session::{Session, SessionCommand, SessionEvent};
use domain::social::relationship::{pair_id, RelationshipEvent, UnfollowCause};
use domain::values::{Digest, Sealed};
use sqlx::PgPool;
use uuid::Uuid;

use super::data::{insert_events, EventRow};
use super::{
    closed_loop, error_note, fmt_ms, fmt_rate, ratio, BenchEnv, BenchOptions, Check, Exhausted, Report, Row,
    Sample,
};

/// postgres-es's statements (sql_query.rs of postgres-es 0.5).
const SELECT_EVENTS: &str =
    "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence";
const INSERT_EVENT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Sessions per client.
const SESSIONS_PER_CLIENT: usize = 100;
/// Prepared challenges per side and second of measurement.
const CHALLENGES_PER_SECOND: f64 = 5_000.0;

struct Challenges {
    ids: Vec<(Uuid, String)>,
    next: AtomicUsize,
}

impl Challenges {
    fn take(&self) -> Result<&(Uuid, String), Exhausted> {
        self.ids.get(self.next.fetch_add(1, Ordering::Relaxed)).ok_or(Exhausted)
    }

    fn exhausted(&self) -> bool {
        self.next.load(Ordering::Relaxed) >= self.ids.len()
    }
}

struct Sessions {
    /// (session id, current refresh hash), indexed by `worker + clients * k`.
    current: Vec<Mutex<(Uuid, Digest)>>,
    clients: usize,
}

impl Sessions {
    fn slot(&self, worker: usize, i: u64) -> &Mutex<(Uuid, Digest)> {
        let k = usize::try_from(i).unwrap_or(0) % SESSIONS_PER_CLIENT;
        &self.current[(worker + self.clients * k) % self.current.len()]
    }
}

fn metadata(command: &str) -> HashMap<String, String> {
    HashMap::from([("command".to_owned(), command.to_owned())])
}

/// Runs the benchmark on `env`.
///
/// # Errors
/// Setup failures.
pub async fn run(env: &BenchEnv, o: &BenchOptions) -> anyhow::Result<Report> {
    let pool = env.db.clone();
    let clients = o.concurrency_or(8);
    let d = o.duration;
    let key = Secret32::generate();
    let per_side = ((CHALLENGES_PER_SECOND * d.as_secs_f64()) as usize).max(200);
    let otp_cmd = Arc::new(prepare_challenges(&pool, &key, per_side).await?);
    let otp_sql = Arc::new(prepare_challenges(&pool, &key, per_side).await?);
    let ses_cmd = Arc::new(prepare_sessions(&pool, clients).await?);
    let ses_sql = Arc::new(prepare_sessions(&pool, clients).await?);
    let pairs_cmd = Arc::new(prepare_pairs(&pool, clients).await?);
    let pairs_sql = Arc::new(prepare_pairs(&pool, clients).await?);
    let tracks_cmd = Arc::new(prepare_tracks(&pool, clients).await?);
    let tracks_sql = Arc::new(prepare_tracks(&pool, clients).await?);
    sqlx::query("ANALYZE events").execute(&pool).await?;
    let social = Arc::new(commands::social::SocialService::new(pool.clone()));
    let catalog = Arc::new(commands::catalog::CatalogService::new(
        pool.clone(),
        Arc::new(commands::vault::Vault::new(pool.clone(), Secret32::generate())),
        Secret32::generate(),
    ));
    let engagement =
        Arc::new(commands::social::engagement::EngagementService::new(pool.clone(), social.clone(), catalog));

    let otps = Arc::new(Executor::<OtpChallenge>::new(pool.clone(), ()));
    let sessions = Arc::new(Executor::<Session>::new(pool.clone(), ()));
    let key = Arc::new(key);
    let (mut v_sql, mut v_cmd, mut r_sql, mut r_cmd) =
        (Sample::default(), Sample::default(), Sample::default(), Sample::default());
    let (mut f_sql, mut f_cmd) = (Sample::default(), Sample::default());
    let (mut l_sql, mut l_cmd, mut c_sql, mut c_cmd) =
        (Sample::default(), Sample::default(), Sample::default(), Sample::default());
    for _ in 0..2 {
        l_sql.merge(engage_sql(&pool, &tracks_sql, clients, d / 2).await);
        l_cmd.merge(engage_cmd(&engagement, &tracks_cmd, clients, d / 2).await);
        c_sql.merge(comment_sql(&pool, &tracks_sql, clients, d / 2).await);
        c_cmd.merge(comment_cmd(&engagement, &tracks_cmd, clients, d / 2).await);
        f_sql.merge(follow_sql(&pool, &pairs_sql, clients, d / 2).await);
        f_cmd.merge(follow_cmd(&social, &pairs_cmd, clients, d / 2).await);
        v_sql.merge(verify_sql(&pool, &otp_sql, clients, d / 2).await);
        v_cmd.merge(verify_cmd(&otps, &key, &otp_cmd, clients, d / 2).await);
        r_sql.merge(refresh_sql(&pool, &ses_sql, clients, d / 2).await);
        r_cmd.merge(refresh_cmd(&sessions, &ses_cmd, clients, d / 2).await);
    }

    let mut r = Report::new("commands");
    r.note(format!(
        "{clients} concurrent clients on each side; 2 rounds of {:.1} s per figure, alternating with its baseline",
        (d / 2).as_secs_f64()
    ));
    r.note(format!(
        "{per_side} pending challenges per side; {} sessions per side ({SESSIONS_PER_CLIENT} per client)",
        ses_cmd.current.len()
    ));
    if otp_cmd.exhausted() || otp_sql.exhausted() {
        r.note(
            "the prepared challenges ran out before the end of a phase; rates are over the time they lasted",
        );
    }
    for (what, s) in [
        ("VerifyOtp command", &v_cmd),
        ("VerifyOtp SQL", &v_sql),
        ("RefreshSession command", &r_cmd),
        ("RefreshSession SQL", &r_sql),
        ("FollowUser command", &f_cmd),
        ("FollowUser SQL", &f_sql),
        ("LikeTrack command", &l_cmd),
        ("LikeTrack SQL", &l_sql),
        ("CommentOnTrack command", &c_cmd),
        ("CommentOnTrack SQL", &c_sql),
    ] {
        r.notes.extend(error_note(what, s));
    }
    r.note(format!(
        "FollowUser/UnfollowUser alternate over {PAIRS_PER_CLIENT} pairs per client (a follow, then the unfollow of the same pair {PAIRS_PER_CLIENT} commands later)"
    ));
    r.note(format!(
        "LikeTrack, RepostTrack, UnlikeTrack, UnrepostTrack in turn over {PAIRS_PER_CLIENT} public tracks per client; \
         likes, reposts and comments first read the track's stream and the pair's stream with its owner (blocks), \
         as the plain-SQL side does too"
    ));
    for (name, cmd, sql) in [
        ("VerifyOtp", &v_cmd, &v_sql),
        ("RefreshSession", &r_cmd, &r_sql),
        ("FollowUser + UnfollowUser", &f_cmd, &f_sql),
        ("LikeTrack / RepostTrack (+ undo)", &l_cmd, &l_sql),
        ("CommentOnTrack", &c_cmd, &c_sql),
    ] {
        r.rows.push(Row::ratio(
            format!("{name} commands/s ({clients} clients)"),
            fmt_rate(cmd.rate()),
            format!("{} (plain SQL)", fmt_rate(sql.rate())),
            ratio(cmd.rate(), sql.rate()),
            Check::RatioAtLeast(0.5),
        ));
        r.rows.push(Row::info(
            format!("{name} p99"),
            fmt_ms(cmd.quantile(0.99)),
            format!("{} (plain SQL)", fmt_ms(sql.quantile(0.99))),
            Some(ratio(cmd.quantile(0.99).as_secs_f64(), sql.quantile(0.99).as_secs_f64())),
        ));
    }
    Ok(r)
}

/// Per client: its user and [`PAIRS_PER_CLIENT`] public tracks of one
/// owner (a `TrackCreated` each), for likes, reposts and comments.
struct Tracks {
    users: Vec<Uuid>,
    tracks: Vec<Vec<Uuid>>,
    issued: Vec<AtomicUsize>,
}

impl Tracks {
    /// Worker `w`'s next engagement: its user, the track, and which of
    /// like, repost, unlike, unrepost (passes over its tracks in turn).
    fn next(&self, worker: usize) -> (Uuid, Uuid, usize) {
        let w = worker % self.users.len();
        let k = self.issued[w].fetch_add(1, Ordering::Relaxed);
        let tracks = &self.tracks[w];
        (self.users[w], tracks[k % tracks.len()], (k / tracks.len()) % 4)
    }

    /// Worker `w`'s user and its `i`-th track (comments: any order will do).
    fn pick(&self, worker: usize, i: u64) -> (Uuid, Uuid) {
        let w = worker % self.users.len();
        let tracks = &self.tracks[w];
        (self.users[w], tracks[usize::try_from(i).unwrap_or(0) % tracks.len()])
    }
}

async fn prepare_tracks(pool: &PgPool, clients: usize) -> anyhow::Result<Tracks> {
    use domain::catalog::track::{Processing, TrackEvent, Visibility};
    let now = Utc::now();
    let owner = Uuid::now_v7();
    let mut rows = Vec::new();
    let mut tracks = Vec::new();
    for _ in 0..clients {
        let mut mine = Vec::new();
        for _ in 0..PAIRS_PER_CLIENT {
            let track_id = Uuid::now_v7();
            let event = TrackEvent::TrackCreated {
                track_id,
                owner_id: owner,
                slug: track_id.simple().to_string(),
                title: "bench".to_owned(),
                description: String::new(),
                genre: String::new(),
                tags: Vec::new(),
                duration_ms: 180_000,
                visibility: Visibility::Public,
                secret_token: None,
                processing: Processing::NoAudio,
                created_at: now,
            };
            rows.push(EventRow::new("track", track_id.to_string(), 1, &event)?);
            mine.push(track_id);
        }
        tracks.push(mine);
    }
    insert_events(pool, &rows).await?;
    let users = (0..clients).map(|_| Uuid::now_v7()).collect();
    let issued = (0..clients).map(|_| AtomicUsize::new(0)).collect();
    Ok(Tracks { users, tracks, issued })
}

/// The engagement event of step `step` (0 like, 1 repost, 2 unlike, 3 unrepost).
fn engagement_event(
    user_id: Uuid,
    track_id: Uuid,
    step: usize,
) -> domain::social::engagement::EngagementEvent {
    use domain::social::engagement::EngagementEvent as E;
    let at = Utc::now();
    match step {
        0 => E::TrackLiked { user_id, track_id, owner_id: Some(Uuid::nil()), liked_at: at },
        1 => E::TrackReposted { user_id, track_id, owner_id: Some(Uuid::nil()), reposted_at: at },
        2 => E::TrackUnliked { user_id, track_id, unliked_at: at },
        _ => E::TrackUnreposted { user_id, track_id, unreposted_at: at },
    }
}

/// The statements the service runs before a like or comment: the track's
/// stream, then the pair's stream with the owner (blocks).
async fn access_sql(pool: &PgPool, user: Uuid, track: Uuid) -> anyhow::Result<()> {
    let rows = sqlx::query(SELECT_EVENTS).bind("track").bind(track.to_string()).fetch_all(pool).await?;
    anyhow::ensure!(!rows.is_empty(), "no track");
    let owner = Uuid::nil();
    let _ =
        sqlx::query(SELECT_EVENTS).bind("relationship").bind(pair_id(user, owner)).fetch_all(pool).await?;
    Ok(())
}

async fn engage_sql(pool: &PgPool, tracks: &Arc<Tracks>, clients: usize, d: Duration) -> Sample {
    let (pool, tracks) = (pool.clone(), tracks.clone());
    closed_loop(clients, d, move |worker, _| {
        let (pool, tracks) = (pool.clone(), tracks.clone());
        async move {
            let (user, track, step) = tracks.next(worker);
            if step < 2 {
                access_sql(&pool, user, track).await?;
            }
            let event = engagement_event(user, track, step);
            let (t, v) = (event.event_type(), event.event_version());
            let id = domain::social::engagement::engagement_id(user, track);
            load_and_append(&pool, "engagement", &id, serde_json::to_value(&event)?, t, v).await
        }
    })
    .await
}

async fn engage_cmd(
    service: &Arc<commands::social::engagement::EngagementService>,
    tracks: &Arc<Tracks>,
    clients: usize,
    d: Duration,
) -> Sample {
    use commands::social::engagement::Engage;
    let (service, tracks) = (service.clone(), tracks.clone());
    closed_loop(clients, d, move |worker, _| {
        let (service, tracks) = (service.clone(), tracks.clone());
        async move {
            let (user, track, step) = tracks.next(worker);
            let engage = [Engage::Like, Engage::Repost, Engage::Unlike, Engage::Unrepost][step];
            let meta = commands::identity::RequestMeta::default();
            let done =
                service.engage(user, track, engage, None, &meta).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(done.changed, "the command changed nothing");
            Ok(())
        }
    })
    .await
}

async fn comment_sql(pool: &PgPool, tracks: &Arc<Tracks>, clients: usize, d: Duration) -> Sample {
    let (pool, tracks) = (pool.clone(), tracks.clone());
    closed_loop(clients, d, move |worker, i| {
        let (pool, tracks) = (pool.clone(), tracks.clone());
        async move {
            let (user, track) = tracks.pick(worker, i);
            access_sql(&pool, user, track).await?;
            let comment_id = Uuid::now_v7();
            let event = domain::social::comment::CommentEvent::CommentPosted {
                comment_id,
                track_id: track,
                author_id: user,
                body: "nice drop".to_owned(),
                timestamp_ms: Some(61_000),
                reply_to: None,
                track_owner: Some(Uuid::nil()),
                parent_author: None,
                posted_at: Utc::now(),
            };
            let (t, v) = (event.event_type(), event.event_version());
            sqlx::query(INSERT_EVENT)
                .bind("comment")
                .bind(comment_id.to_string())
                .bind(1_i64)
                .bind(t)
                .bind(v)
                .bind(serde_json::to_value(&event)?)
                .bind(serde_json::json!({"command": "bench"}))
                .execute(&pool)
                .await?;
            Ok(())
        }
    })
    .await
}

async fn comment_cmd(
    service: &Arc<commands::social::engagement::EngagementService>,
    tracks: &Arc<Tracks>,
    clients: usize,
    d: Duration,
) -> Sample {
    let (service, tracks) = (service.clone(), tracks.clone());
    closed_loop(clients, d, move |worker, i| {
        let (service, tracks) = (service.clone(), tracks.clone());
        async move {
            let (user, track) = tracks.pick(worker, i);
            let meta = commands::identity::RequestMeta::default();
            service
                .comment(user, track, "nice drop".to_owned(), Some(61_000), None, None, &meta)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }
    })
    .await
}

/// Followee pairs per client (each client follows from its own user).
const PAIRS_PER_CLIENT: usize = 50;

/// Per client: its follower id and [`PAIRS_PER_CLIENT`] followees whose
/// user streams exist (a first event each), so the existence check passes.
struct Pairs {
    followers: Vec<Uuid>,
    followees: Vec<Vec<Uuid>>,
    /// Commands issued per worker, across rounds.
    issued: Vec<AtomicUsize>,
}

impl Pairs {
    /// Worker `w`'s next command: the pair and whether it follows (a pass
    /// over its followees) or unfollows (the next pass), counted across
    /// rounds so every command changes something.
    fn command(&self, worker: usize) -> (Uuid, Uuid, bool) {
        let w = worker % self.followers.len();
        let k = self.issued[w].fetch_add(1, Ordering::Relaxed);
        let followees = &self.followees[w];
        (self.followers[w], followees[k % followees.len()], (k / followees.len()).is_multiple_of(2))
    }
}

async fn prepare_pairs(pool: &PgPool, clients: usize) -> anyhow::Result<Pairs> {
    let now = Utc::now();
    let mut rows = Vec::new();
    let user = |rows: &mut Vec<EventRow>| -> anyhow::Result<Uuid> {
        let id = Uuid::now_v7();
        let event =
            domain::user::UserEvent::DuplicateRegistrationAttempted { delivery_id: id, attempted_at: now };
        rows.push(EventRow::new("user", id.to_string(), 1, &event)?);
        Ok(id)
    };
    let mut followers = Vec::new();
    let mut followees = Vec::new();
    for _ in 0..clients {
        followers.push(user(&mut rows)?);
        followees.push((0..PAIRS_PER_CLIENT).map(|_| user(&mut rows)).collect::<anyhow::Result<Vec<_>>>()?);
    }
    insert_events(pool, &rows).await?;
    let issued = (0..clients).map(|_| AtomicUsize::new(0)).collect();
    Ok(Pairs { followers, followees, issued })
}

/// The statement the social service's existence check runs.
const USER_EXISTS: &str = commands::identity::ACCOUNT_EXISTS_SQL;

async fn follow_sql(pool: &PgPool, pairs: &Arc<Pairs>, clients: usize, d: Duration) -> Sample {
    let (pool, pairs) = (pool.clone(), pairs.clone());
    closed_loop(clients, d, move |worker, _| {
        let (pool, pairs) = (pool.clone(), pairs.clone());
        async move {
            let (follower, followee, follow) = pairs.command(worker);
            let at = Utc::now();
            let event = if follow {
                let exists: bool =
                    sqlx::query_scalar(USER_EXISTS).bind(followee.to_string()).fetch_one(&pool).await?;
                anyhow::ensure!(exists, "the followee does not exist");
                RelationshipEvent::UserFollowed { follower, followee, followed_at: at }
            } else {
                RelationshipEvent::UserUnfollowed {
                    follower,
                    followee,
                    cause: UnfollowCause::Unfollowed,
                    unfollowed_at: at,
                }
            };
            let (t, v) = (event.event_type(), event.event_version());
            load_and_append(
                &pool,
                "relationship",
                &pair_id(follower, followee),
                serde_json::to_value(&event)?,
                t,
                v,
            )
            .await
        }
    })
    .await
}

async fn follow_cmd(
    social: &Arc<commands::social::SocialService>,
    pairs: &Arc<Pairs>,
    clients: usize,
    d: Duration,
) -> Sample {
    use commands::social::Relation;
    let (social, pairs) = (social.clone(), pairs.clone());
    closed_loop(clients, d, move |worker, _| {
        let (social, pairs) = (social.clone(), pairs.clone());
        async move {
            let (follower, followee, follow) = pairs.command(worker);
            let relation = if follow { Relation::Follow } else { Relation::Unfollow };
            let meta = commands::identity::RequestMeta::default();
            let done = social
                .relate(follower, relation, followee, &meta)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(done.changed, "the command changed nothing");
            Ok(())
        }
    })
    .await
}

async fn prepare_challenges(pool: &PgPool, key: &Secret32, n: usize) -> anyhow::Result<Challenges> {
    let now = Utc::now();
    let mut ids = Vec::with_capacity(n);
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let id = Uuid::new_v4();
        let code = format!("{:06}", (i * 7_919) % 1_000_000);
        let event = OtpEvent::OtpIssued {
            challenge_id: id,
            delivery_id: id,
            subject_id: Uuid::now_v7(),
            attempts_key: format!("user:{id}"),
            recipient: Sealed("v1.bench".to_owned()),
            purpose: OtpPurpose::TwoFactor,
            channel: OtpChannel::Email,
            code_mac: code_mac(key, id, &code),
            issued_at: now,
            expires_at: now + chrono::Duration::hours(1),
        };
        rows.push(EventRow::new("otp_challenge", id.to_string(), 1, &event)?);
        ids.push((id, code));
    }
    insert_events(pool, &rows).await?;
    Ok(Challenges { ids, next: AtomicUsize::new(0) })
}

async fn prepare_sessions(pool: &PgPool, clients: usize) -> anyhow::Result<Sessions> {
    let now = Utc::now();
    let mut current = Vec::new();
    let mut rows = Vec::new();
    for _ in 0..clients * SESSIONS_PER_CLIENT {
        let session_id = Uuid::now_v7();
        let hash = new_refresh_token(session_id).hash;
        let event = SessionEvent::SessionStarted {
            session_id,
            user_id: Uuid::now_v7(),
            refresh_hash: hash.clone(),
            started_at: now,
            idle_expires_at: now + chrono::Duration::days(30),
            expires_at: now + chrono::Duration::days(90),
            client: None,
            quick_factor: false,
        };
        rows.push(EventRow::new("session", session_id.to_string(), 1, &event)?);
        current.push(Mutex::new((session_id, hash)));
    }
    insert_events(pool, &rows).await?;
    Ok(Sessions { current, clients })
}

/// The plain-SQL side: the stream's `SELECT`, then one `INSERT` (a
/// statement is its own transaction, as the executor's append is).
async fn load_and_append(
    pool: &PgPool,
    aggregate_type: &str,
    id: &str,
    event: serde_json::Value,
    event_type: String,
    version: String,
) -> anyhow::Result<()> {
    let rows = sqlx::query(SELECT_EVENTS).bind(aggregate_type).bind(id).fetch_all(pool).await?;
    let sequence = i64::try_from(rows.len())? + 1;
    sqlx::query(INSERT_EVENT)
        .bind(aggregate_type)
        .bind(id)
        .bind(sequence)
        .bind(event_type)
        .bind(version)
        .bind(event)
        .bind(serde_json::json!({"command": "bench"}))
        .execute(pool)
        .await?;
    Ok(())
}

async fn verify_sql(pool: &PgPool, ch: &Arc<Challenges>, clients: usize, d: Duration) -> Sample {
    let (pool, ch) = (pool.clone(), ch.clone());
    closed_loop(clients, d, move |_, _| {
        let (pool, ch) = (pool.clone(), ch.clone());
        async move {
            let (id, _) = ch.take()?;
            let event = OtpEvent::OtpVerified { verified_at: Utc::now() };
            let (t, v) = (event.event_type(), event.event_version());
            load_and_append(&pool, "otp_challenge", &id.to_string(), serde_json::to_value(&event)?, t, v)
                .await
        }
    })
    .await
}

async fn verify_cmd(
    otps: &Arc<Executor<OtpChallenge>>,
    key: &Arc<Secret32>,
    ch: &Arc<Challenges>,
    clients: usize,
    d: Duration,
) -> Sample {
    let (otps, key, ch) = (otps.clone(), key.clone(), ch.clone());
    closed_loop(clients, d, move |_, _| {
        let (otps, key, ch) = (otps.clone(), key.clone(), ch.clone());
        async move {
            let (id, code) = ch.take()?;
            let cmd = OtpCommand::Verify { candidate_mac: code_mac(&key, *id, code), at: Utc::now() };
            let done = otps.execute(&id.to_string(), cmd, metadata("VerifyOtp")).await?;
            anyhow::ensure!(
                done.events.iter().any(|e| matches!(e, OtpEvent::OtpVerified { .. })),
                "the code was not accepted"
            );
            Ok(())
        }
    })
    .await
}

async fn refresh_sql(pool: &PgPool, sessions: &Arc<Sessions>, clients: usize, d: Duration) -> Sample {
    let (pool, sessions) = (pool.clone(), sessions.clone());
    closed_loop(clients, d, move |worker, i| {
        let (pool, sessions) = (pool.clone(), sessions.clone());
        async move {
            let session_id = sessions.slot(worker, i).lock().map_err(|_| anyhow::anyhow!("poisoned"))?.0;
            let now = Utc::now();
            let event = SessionEvent::SessionRefreshed {
                refresh_hash: new_refresh_token(session_id).hash,
                generation: i + 1,
                refreshed_at: now,
                idle_expires_at: now + chrono::Duration::days(30),
            };
            let (t, v) = (event.event_type(), event.event_version());
            load_and_append(&pool, "session", &session_id.to_string(), serde_json::to_value(&event)?, t, v)
                .await
        }
    })
    .await
}

async fn refresh_cmd(
    executor: &Arc<Executor<Session>>,
    sessions: &Arc<Sessions>,
    clients: usize,
    d: Duration,
) -> Sample {
    let (executor, sessions) = (executor.clone(), sessions.clone());
    closed_loop(clients, d, move |worker, i| {
        let (executor, sessions) = (executor.clone(), sessions.clone());
        async move {
            let (session_id, presented) =
                sessions.slot(worker, i).lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
            let next = new_refresh_token(session_id).hash;
            let cmd =
                SessionCommand::Refresh { presented_hash: presented, new_hash: next.clone(), at: Utc::now() };
            let done = executor.execute(&session_id.to_string(), cmd, metadata("RefreshSession")).await?;
            anyhow::ensure!(
                done.events.iter().any(|e| matches!(e, SessionEvent::SessionRefreshed { .. })),
                "the refresh was refused"
            );
            *sessions.slot(worker, i).lock().map_err(|_| anyhow::anyhow!("poisoned"))? = (session_id, next);
            Ok(())
        }
    })
    .await
}
