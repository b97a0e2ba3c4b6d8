//! `bench queries`: `GET /api/users/me` requests per second and p99 on the
//! real router (`App::router`: bearer check against the node's revocation
//! set — followed from the feed and authoritative once checked against the
//! store, as on every HTTP node — profile from `rm_profiles`, personal
//! fields opened with the subject key, every middleware) against a bare axum + sqlx handler that does the same
//! JWT check and selects the same row, both served in this process on
//! loopback and driven by the same client loop, in alternating rounds, over
//! a dataset of N seeded users (`streamforge seed`); requests pick among the
//! tokens of up to 10,000 of them.
//!
//! Issue 15 adds the graph: about 10 follows per seeded user (100k users,
//! ~1M follows; [`seed_follows`]), then anonymous `GET
//! /api/users/{id}/followers` (first page of 50, over the 1,000 most
//! followed users) and `GET /api/users/{id}` (the public profile, over the
//! callers) against bare handlers selecting the same rows.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use commands::tokens::TokenIssuer;
use indicatif::ProgressBar;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::data::{seed_feed, seed_follows, seed_users, SeedShape, FOLLOWS_PER_USER, SEED_PASSWORD};
use super::{
    closed_loop, error_note, fmt_ms, fmt_rate, ratio, BenchEnv, BenchOptions, Check, Report, Row, Sample,
};
use api::app::App;

/// Default number of seeded users.
pub const DEFAULT_USERS: usize = 100_000;
/// Most distinct callers.
const MAX_CALLERS: usize = 10_000;
/// The home feed's p99 target (issue 16).
pub const FEED_P99: Duration = Duration::from_millis(20);

/// Runs the benchmark on `env`.
///
/// # Errors
/// Setup failures, a server answering something else than 200 to the
/// first request.
pub async fn run(env: &BenchEnv, o: &BenchOptions) -> anyhow::Result<Report> {
    let app = App::build(env.settings.clone()).await?;
    let keys = commands::Keyring::derive(&env.settings.master_key()?);
    let users = o.users.unwrap_or(DEFAULT_USERS).max(1);
    let hash = commands::passwords::PasswordHasher::new(1)?.hash(SEED_PASSWORD).await?;
    let bar = ProgressBar::new(u64::try_from(users)?);
    let seeded = seed_users(&app.pool, &keys, &hash, users, SeedShape::USERS, &bar).await?;
    bar.finish_and_clear();
    let ids: Vec<uuid::Uuid> = seeded.iter().map(|u| u.user_id).collect();
    let follows = seed_follows(&app.pool, &ids, FOLLOWS_PER_USER).await?;
    sqlx::query("VACUUM ANALYZE rm_profiles, rm_sessions, subject_keys, rm_follows, rm_user_stats, events")
        .execute(&app.pool)
        .await?;
    let popular: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT user_id FROM rm_user_stats ORDER BY followers_count DESC LIMIT 1000")
            .fetch_all(&app.pool)
            .await?;
    let profile_ids: Vec<uuid::Uuid> =
        ids.iter().step_by((ids.len() / MAX_CALLERS).max(1)).copied().collect();

    let now = chrono::Utc::now();
    let step = (seeded.len() / MAX_CALLERS).max(1);
    // The home feed (issue 16): at 100k users 800k tracks, 200k reposts,
    // 100 feed rows for each caller and 11 for every other user (≈ 2M).
    let callers: Vec<uuid::Uuid> = seeded.iter().step_by(step).take(MAX_CALLERS).map(|u| u.user_id).collect();
    let n = i64::try_from(ids.len())?;
    let feed_rows = seed_feed(&app.pool, &ids, &callers, (n * 8, n * 2), (100, 11)).await?;
    sqlx::query("VACUUM ANALYZE feed_follows, feed_authors, feed_tracks, feed_reposts, feed_items")
        .execute(&app.pool)
        .await?;
    let tokens: Vec<String> = seeded
        .iter()
        .step_by(step)
        .take(MAX_CALLERS)
        .map(|u| app.tokens.issue_access(u.user_id, u.session_id, now).map(|(t, _)| t))
        .collect::<Result<_, _>>()?;
    let tokens = Arc::new(tokens);

    let (stop, stopped) = watch::channel(false);
    let real = TcpListener::bind("127.0.0.1:0").await?;
    let real_url = format!("http://{}/api/users/me", real.local_addr()?);
    {
        let (app, stopped) = (app.clone(), stopped.clone());
        tokio::spawn(async move { app.serve_http(real, stopped).await });
    }
    {
        // Every HTTP node runs the revocation follower (`App::run`).
        let (app, stopped) = (app.clone(), stopped.clone());
        tokio::spawn(async move { app.run_revocation_follower(stopped).await });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !app.revoked.is_authoritative() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the revocation set never became authoritative"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bare = TcpListener::bind("127.0.0.1:0").await?;
    let bare_url = format!("http://{}/api/users/me", bare.local_addr()?);
    let bare2_url = format!("http://{}/with-revocation/api/users/me", bare.local_addr()?);
    {
        let router = bare_router(app.pool.clone(), app.tokens.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            axum::serve(bare, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
    }

    let clients = o.concurrency_or(16);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(10))
        .build()?;
    for url in [&real_url, &bare_url, &bare2_url] {
        let first = tokens.first().ok_or_else(|| anyhow::anyhow!("no user"))?;
        let status = client.get(url.as_str()).bearer_auth(first).send().await?.status();
        anyhow::ensure!(status == StatusCode::OK, "{url} answered {status}");
    }
    // One request per caller on each side before the rounds: the real
    // node's first request for a user fetches and unwraps the user's data
    // key (`subject_keys`, then cached); with 10,000 callers that first
    // visit would otherwise be most of the measured requests. Its rate is
    // reported on its own row.
    let bare_first = first_visits(&client, &bare_url, &tokens, clients).await?;
    let real_first = first_visits(&client, &real_url, &tokens, clients).await?;
    let d = o.duration;
    let real_base = real_url.trim_end_matches("/api/users/me").to_owned();
    let bare_base = bare_url.trim_end_matches("/api/users/me").to_owned();
    let followers_paths =
        Arc::new(popular.iter().map(|id| format!("/api/users/{id}/followers?limit=50")).collect::<Vec<_>>());
    let profile_paths = Arc::new(profile_ids.iter().map(|id| format!("/api/users/{id}")).collect::<Vec<_>>());
    for (base, paths) in [
        (&real_base, &followers_paths),
        (&bare_base, &followers_paths),
        (&real_base, &profile_paths),
        (&bare_base, &profile_paths),
    ] {
        let first = paths.first().ok_or_else(|| anyhow::anyhow!("no user"))?;
        let status = client.get(format!("{base}{first}")).send().await?.status();
        anyhow::ensure!(status == StatusCode::OK, "{base}{first} answered {status}");
    }
    // The public profile opens sealed fields: one first visit per profile
    // on each side (cold subject-key cache), as for `/api/users/me`.
    let _ = drive_paths(&client, &real_base, &profile_paths, clients, Duration::ZERO).await;
    let (mut fr, mut fb, mut pr, mut pb) =
        (Sample::default(), Sample::default(), Sample::default(), Sample::default());
    // Bare first in the first round, real first in the second: neither
    // side always runs right after the other figure's heavier phase.
    for round in 0..2 {
        for (paths, real, bare) in [(&followers_paths, &mut fr, &mut fb), (&profile_paths, &mut pr, &mut pb)]
        {
            let sides = if round == 0 {
                [(&bare_base, false), (&real_base, true)]
            } else {
                [(&real_base, true), (&bare_base, false)]
            };
            for (base, is_real) in sides {
                let sample = drive_paths(&client, base, paths, clients, d / 2).await;
                if is_real {
                    real.merge(sample);
                } else {
                    bare.merge(sample);
                }
            }
        }
    }
    let (mut feed_real, mut feed_bare) = (Sample::default(), Sample::default());
    let (feed_real_url, feed_bare_url) =
        (format!("{real_base}/api/feed?limit=50"), format!("{bare_base}/api/feed?limit=50"));
    for round in 0..2 {
        let sides = if round == 0 { [false, true] } else { [true, false] };
        for is_real in sides {
            if is_real {
                feed_real.merge(drive(&client, &feed_real_url, &tokens, clients, d / 2).await);
            } else {
                feed_bare.merge(drive(&client, &feed_bare_url, &tokens, clients, d / 2).await);
            }
        }
    }
    // A whole feed rebuilt (issue 16: ≤ 1 s), for 200 callers one at a time.
    let mut rebuilds = Vec::new();
    let mut rebuilt_rows = 0usize;
    for user in callers.iter().step_by((callers.len() / 200).max(1)).take(200) {
        let started = std::time::Instant::now();
        let mut tx = app.pool.begin().await?;
        rebuilt_rows += projections::social::home::rebuild_user_feed(&mut tx, *user).await?;
        tx.commit().await?;
        rebuilds.push(started.elapsed());
    }
    let (mut bare_s, mut real_s, mut bare2_s) = (Sample::default(), Sample::default(), Sample::default());
    for _ in 0..2 {
        bare_s.merge(drive(&client, &bare_url, &tokens, clients, d / 2).await);
        real_s.merge(drive(&client, &real_url, &tokens, clients, d / 2).await);
        bare2_s.merge(drive(&client, &bare2_url, &tokens, clients, d / 2).await);
    }
    let authoritative_after = app.revoked.is_authoritative();
    let _ = stop.send(true);

    let mut r = Report::new("queries");
    r.note(format!(
        "revocation set authoritative before and after the rounds: true / {authoritative_after} \
         (the bearer check then asks no database)"
    ));
    r.note(format!(
        "{} seeded users; requests spread over {} of them; {clients} keep-alive clients (reqwest) in the same process",
        seeded.len(),
        tokens.len()
    ));
    r.note(format!(
        "2 rounds of {:.1} s per side, alternating, after one request per caller on each side (the first-visit pass)",
        (d / 2).as_secs_f64()
    ));
    r.note(format!(
        "graph: {follows} follows; followers pages over the {} most followed users; profiles over {} users; anonymous requests; bare side first in round 1, real side first in round 2",
        popular.len(),
        profile_ids.len()
    ));
    r.notes.extend(error_note("GET /api/users/{id}/followers", &fr));
    r.notes.extend(error_note("bare followers handler", &fb));
    r.notes.extend(error_note("GET /api/users/{id}", &pr));
    r.notes.extend(error_note("bare profile handler", &pb));
    r.note(format!(
        "home feed: {feed_rows} feed rows, {} tracks, {} reposts; first pages of 50 for the {} callers (100 rows each); alternating rounds as above",
        n * 8,
        n * 2,
        callers.len()
    ));
    r.notes.extend(error_note("GET /api/feed", &feed_real));
    r.notes.extend(error_note("bare feed handler", &feed_bare));
    r.notes.extend(error_note("GET /api/users/me", &real_s));
    r.notes.extend(error_note("bare handler", &bare_s));
    r.notes.extend(error_note("bare handler + revocation lookup", &bare2_s));
    r.rows.push(Row::ratio(
        format!("GET /api/users/me req/s ({clients} clients)"),
        fmt_rate(real_s.rate()),
        format!("{} (bare axum + sqlx)", fmt_rate(bare_s.rate())),
        ratio(real_s.rate(), bare_s.rate()),
        Check::RatioAtLeast(0.7),
    ));
    r.rows.push(Row::info(
        "GET /api/users/me p99",
        fmt_ms(real_s.quantile(0.99)),
        format!("{} (bare axum + sqlx)", fmt_ms(bare_s.quantile(0.99))),
        Some(ratio(real_s.quantile(0.99).as_secs_f64(), bare_s.quantile(0.99).as_secs_f64())),
    ));
    r.rows.push(Row::info(
        format!("first visit of each caller (cold subject-key cache) req/s ({clients} clients)"),
        fmt_rate(real_first),
        format!("{} (bare axum + sqlx, same pass)", fmt_rate(bare_first)),
        Some(ratio(real_first, bare_first)),
    ));
    for (name, real, bare) in [
        ("GET /api/users/{id}/followers (first page of 50)", &fr, &fb),
        ("GET /api/users/{id} (public profile)", &pr, &pb),
    ] {
        r.rows.push(Row::ratio(
            format!("{name} req/s ({clients} clients)"),
            fmt_rate(real.rate()),
            format!("{} (bare axum + sqlx)", fmt_rate(bare.rate())),
            ratio(real.rate(), bare.rate()),
            Check::RatioAtLeast(0.7),
        ));
        r.rows.push(Row::info(
            format!("{name} p99"),
            fmt_ms(real.quantile(0.99)),
            format!("{} (bare axum + sqlx)", fmt_ms(bare.quantile(0.99))),
            Some(ratio(real.quantile(0.99).as_secs_f64(), bare.quantile(0.99).as_secs_f64())),
        ));
    }
    r.rows.push(Row::ratio(
        format!("GET /api/feed (first page of 50) req/s ({clients} clients)"),
        fmt_rate(feed_real.rate()),
        format!("{} (bare axum + sqlx)", fmt_rate(feed_bare.rate())),
        ratio(feed_real.rate(), feed_bare.rate()),
        Check::RatioAtLeast(0.7),
    ));
    r.rows.push(Row::ratio(
        "GET /api/feed p99",
        fmt_ms(feed_real.quantile(0.99)),
        format!("{} (issue 16; bare: {})", fmt_ms(FEED_P99), fmt_ms(feed_bare.quantile(0.99))),
        feed_real.quantile(0.99).as_secs_f64() / FEED_P99.as_secs_f64(),
        Check::RatioAtMost(1.0),
    ));
    let rebuild_p99 = super::quantile(&rebuilds, 0.99);
    r.rows.push(Row::ratio(
        format!(
            "one user's feed rebuilt (rebuild_user_feed, {} users, {:.0} rows each), p99",
            rebuilds.len(),
            rebuilt_rows as f64 / rebuilds.len().max(1) as f64
        ),
        fmt_ms(rebuild_p99),
        "1000.00 ms (issue 16)".to_owned(),
        rebuild_p99.as_secs_f64(),
        Check::RatioAtMost(1.0),
    ));
    r.rows.push(Row::info(
        "bare handler + the revocation lookup, req/s",
        fmt_rate(bare2_s.rate()),
        format!("{} (bare axum + sqlx)", fmt_rate(bare_s.rate())),
        Some(ratio(bare2_s.rate(), bare_s.rate())),
    ));
    Ok(r)
}

/// Requests `url` once with every token, `clients` at a time; answers the
/// rate (requests per second).
///
/// # Errors
/// A request failing or answering something else than 200.
async fn first_visits(
    client: &reqwest::Client,
    url: &str,
    tokens: &Arc<Vec<String>>,
    clients: usize,
) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    let started = std::time::Instant::now();
    let statuses: Vec<Result<StatusCode, reqwest::Error>> = futures::stream::iter(tokens.iter())
        .map(|token| async move {
            // The body is read so that the connection goes back to the pool.
            let response = client.get(url).bearer_auth(token).send().await?;
            let status = response.status();
            response.bytes().await.map(|_| status)
        })
        .buffer_unordered(clients.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    for status in statuses {
        let status = status?;
        anyhow::ensure!(status == StatusCode::OK, "{url} answered {status}");
    }
    Ok(super::per_second(tokens.len() as u64, elapsed))
}

async fn drive(
    client: &reqwest::Client,
    url: &str,
    tokens: &Arc<Vec<String>>,
    clients: usize,
    d: Duration,
) -> Sample {
    let (client, url, tokens) = (client.clone(), url.to_owned(), tokens.clone());
    closed_loop(clients, d, move |worker, i| {
        let (client, url, tokens) = (client.clone(), url.clone(), tokens.clone());
        async move {
            // A spread, repeatable walk over the callers.
            let k = (worker as u64).wrapping_mul(7_919).wrapping_add(i.wrapping_mul(104_729));
            let token = &tokens[usize::try_from(k % tokens.len() as u64).unwrap_or(0)];
            let response = client.get(url.as_str()).bearer_auth(token).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            anyhow::ensure!(status == StatusCode::OK, "status {status}");
            anyhow::ensure!(!body.is_empty(), "empty body");
            Ok(())
        }
    })
    .await
}

/// Anonymous requests over `paths` (relative to `base`), spread as
/// [`drive`] spreads callers. A zero `d` requests every path once.
async fn drive_paths(
    client: &reqwest::Client,
    base: &str,
    paths: &Arc<Vec<String>>,
    clients: usize,
    d: Duration,
) -> Sample {
    let (client, base, paths) = (client.clone(), base.to_owned(), paths.clone());
    let once = d.is_zero();
    let d = if once { Duration::from_secs(3_600) } else { d };
    let total = paths.len() as u64;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    closed_loop(clients, d, move |worker, i| {
        let (client, base, paths, next) = (client.clone(), base.clone(), paths.clone(), next.clone());
        async move {
            let k = if once {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                anyhow::ensure!(k < total, super::Exhausted);
                k
            } else {
                (worker as u64).wrapping_mul(7_919).wrapping_add(i.wrapping_mul(104_729)) % total
            };
            let path = &paths[usize::try_from(k).unwrap_or(0)];
            let response = client.get(format!("{base}{path}")).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            anyhow::ensure!(status == StatusCode::OK, "status {status}");
            anyhow::ensure!(!body.is_empty(), "empty body");
            Ok(())
        }
    })
    .await
}

/// The baseline of the followers page: the same `SELECT` as the list
/// query, as JSON.
async fn bare_followers(
    State(s): State<Bare>,
    axum::extract::Path(id): axum::extract::Path<uuid::Uuid>,
) -> Result<Json<serde_json::Value>, StatusCode> {
    use projections::social::graph::{list_edges, EdgeList};
    let rows = list_edges(&s.pool, EdgeList::Followers, id, None, 50)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .ok_or(StatusCode::NOT_FOUND)?;
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| serde_json::json!({"user_id": r.user_id, "username": r.username, "since": r.since}))
        .collect();
    Ok(Json(serde_json::json!({"items": items, "next_cursor": null})))
}

/// The baseline of the public profile: the profile row, the counters and
/// the tracks count read by the same one statement as the route
/// (`graph::public_profile`), as JSON (fields still sealed).
async fn bare_profile(
    State(s): State<Bare>,
    axum::extract::Path(id): axum::extract::Path<uuid::Uuid>,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let row = projections::social::graph::public_profile(&s.pool, id, false)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(serde_json::json!({
        "id": row.user_id, "username": row.username, "display_name": row.name_sealed, "bio": row.bio_sealed,
        "avatar_url": null, "followers_count": row.followers_count, "following_count": row.following_count,
        "tracks_count": row.tracks_count,
    })))
}

/// The baseline of the home feed: JWT check, the same page query as the
/// route (`home::home_page`), the rows as JSON.
async fn bare_feed(State(s): State<Bare>, headers: HeaderMap) -> Result<Json<serde_json::Value>, StatusCode> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    let claims = s.tokens.verify_access(token).map_err(|_| StatusCode::UNAUTHORIZED)?;
    let rows = projections::social::home::home_page(&s.pool, claims.sub, None, 50)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            serde_json::json!({"type": r.kind, "actor": r.actor_id, "at": r.at, "track": {
                "id": r.track_id, "title": r.title, "owner": r.owner_id,
                "counts": {"likes": r.likes, "reposts": r.reposts, "comments": r.comments},
                "liked_by_me": r.liked_by_me, "reposted_by_me": r.reposted_by_me}})
        })
        .collect();
    Ok(Json(serde_json::json!({"items": items, "next_cursor": null})))
}

#[derive(Clone)]
struct Bare {
    pool: PgPool,
    tokens: Arc<TokenIssuer>,
}

fn bare_router(pool: PgPool, tokens: Arc<TokenIssuer>) -> Router {
    Router::new()
        .route("/api/users/me", get(bare_me))
        .route("/with-revocation/api/users/me", get(bare_me_with_revocation))
        .route("/api/users/{id}/followers", get(bare_followers))
        .route("/api/users/{id}", get(bare_profile))
        .route("/api/feed", get(bare_feed))
        .with_state(Bare { pool, tokens })
}

/// The baseline plus the real extractor's revocation lookup: tells how much
/// of a gap that second round trip explains.
async fn bare_me_with_revocation(
    State(s): State<Bare>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    let claims = s.tokens.verify_access(token).map_err(|_| StatusCode::UNAUTHORIZED)?;
    if projections::sessions::is_revoked(&s.pool, claims.sid)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
    {
        return Err(StatusCode::UNAUTHORIZED);
    }
    bare_me(State(s), headers).await
}

/// The baseline: JWT check, one `SELECT`, the row as JSON (fields still sealed).
async fn bare_me(State(s): State<Bare>, headers: HeaderMap) -> Result<Json<serde_json::Value>, StatusCode> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    let claims = s.tokens.verify_access(token).map_err(|_| StatusCode::UNAUTHORIZED)?;
    let row = projections::profiles::find_profile(&s.pool, claims.sub)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(serde_json::json!({
        "user_id": row.user_id,
        "email": row.email_sealed,
        "name": row.name_sealed,
        "bio": row.bio_sealed,
        "email_verified": row.email_verified,
        "phone": row.phone_sealed,
        "phone_verified": row.phone_verified,
        "two_factor_channel": row.two_factor_channel,
        "created_at": row.created_at,
    })))
}
