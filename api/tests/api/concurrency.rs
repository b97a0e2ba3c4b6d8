//! Concurrent writers on one aggregate (issue 5, fault tests): optimistic
//! concurrency on the events primary key, bounded retries, and 409 for a
//! conflict that outlasts them. Nothing is lost or doubled either way.

use std::collections::HashMap;
use std::sync::Arc;

use axum::response::IntoResponse;
use chrono::Utc;
use commands::executor::{ExecError, Executor};
use domain::throttle::{Policy, Throttle, ThrottleCommand, ThrottleEvent};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Barrier;

use crate::helpers::{code_in, spawn_app, spawn_app_with, Feed, TestApp};

const WRITERS: usize = 16;
const PASSWORD: &str = "correct horse battery staple";

/// Sequences stored for one aggregate, in order.
async fn sequences(pool: &PgPool, aggregate_type: &str, aggregate_id: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT sequence FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Asserts `1..=n` with no gap and no repeat.
fn assert_contiguous(seqs: &[i64]) {
    let expected: Vec<i64> = (1..=i64::try_from(seqs.len()).unwrap()).collect();
    assert_eq!(seqs, expected.as_slice(), "sequences must be 1..=n without gaps or duplicates");
}

/// Runs 16 `RecordFailure` commands on one throttle at once, released by a
/// barrier; returns each writer's outcome (`Ok(attempts)` or the error).
async fn sixteen_failures(
    executor: Arc<Executor<Throttle>>,
    id: &str,
) -> Vec<Result<u32, ExecError<domain::throttle::ThrottleError>>> {
    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (executor, barrier, id) = (executor.clone(), barrier.clone(), id.to_owned());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let command = ThrottleCommand::RecordFailure { policy: Policy::PasswordFailures, at: Utc::now() };
            executor.execute(&id, command, HashMap::new()).await.map(|done| done.attempts)
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

/// The `consecutive_failures` of every `FailureRecorded` of `id`, in order.
async fn failure_counts(pool: &PgPool, id: &str) -> Vec<u32> {
    let payloads: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'throttle' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    payloads
        .into_iter()
        .filter_map(|p| match serde_json::from_value::<ThrottleEvent>(p).unwrap() {
            ThrottleEvent::FailureRecorded { consecutive_failures, .. } => Some(consecutive_failures),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_writers_retry_conflicts_and_lose_no_update() {
    let (pool, _url) =
        projections::db::testing::create_test_database(&projections::db::testing::base_url()).await.unwrap();
    let executor = Arc::new(Executor::<Throttle>::new(pool.clone(), ()).with_max_attempts(50));
    let id = format!("password_failures:{}", uuid::Uuid::new_v4());
    let outcomes = sixteen_failures(executor, &id).await;

    let attempts: Vec<u32> = outcomes.into_iter().map(|o| o.expect("every writer succeeds")).collect();
    let retried = attempts.iter().filter(|&&a| a > 1).count();
    assert!(retried > 0, "16 writers released together must collide at least once: {attempts:?}");
    // Every command committed exactly one event, each built on the one before:
    // the counts are 1..=16 (a lost update would repeat a count).
    assert_contiguous(&sequences(&pool, "throttle", &id).await);
    let counts = failure_counts(&pool, &id).await;
    assert_eq!(counts, (1..=u32::try_from(WRITERS).unwrap()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conflict_outlasting_the_retries_is_a_409_and_writes_nothing() {
    let (pool, _url) =
        projections::db::testing::create_test_database(&projections::db::testing::base_url()).await.unwrap();
    // One attempt only: a writer that loses the race answers Conflict.
    let executor = Arc::new(Executor::<Throttle>::new(pool.clone(), ()).with_max_attempts(1));
    let mut conflicts = 0;
    let mut committed = 0;
    let id = format!("password_failures:{}", uuid::Uuid::new_v4());
    for round in 0..10 {
        // A fresh throttle per round keeps it below the lock threshold (20).
        let id = format!("{id}:{round}");
        let outcomes = sixteen_failures(executor.clone(), &id).await;
        let ok = outcomes.iter().filter(|o| o.is_ok()).count();
        for outcome in outcomes {
            match outcome {
                Ok(attempts) => assert_eq!(attempts, 1),
                Err(ExecError::Conflict) => conflicts += 1,
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        // Only the winners wrote, once each, without gaps.
        let seqs = sequences(&pool, "throttle", &id).await;
        assert_eq!(seqs.len(), ok);
        assert_contiguous(&seqs);
        assert_eq!(failure_counts(&pool, &id).await, (1..=u32::try_from(ok).unwrap()).collect::<Vec<_>>());
        committed += ok;
        if conflicts > 0 && round >= 1 {
            break;
        }
    }
    assert!(committed > 0);
    assert!(conflicts > 0, "16 writers with one attempt each never collided");

    // The HTTP answer for a final conflict.
    let response = api::error::ApiError::from(commands::identity::IdentityError::Conflict).into_response();
    assert_eq!(response.status(), 409);
    let body: Value =
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap())
            .unwrap();
    assert_eq!(body["code"], "conflict");
}

async fn signed_in(app: &TestApp, email: &str) -> String {
    assert_eq!(app.register(email, PASSWORD, "Writers").await.status(), 201);
    let code = code_in(&app.wait_mail_with(email, "verification code", 1).await);
    assert_eq!(app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await.status(), 204);
    let challenge: Value = app
        .post("/api/auth/login", json!({"email": email, "password": PASSWORD}))
        .await
        .json()
        .await
        .unwrap();
    let code = code_in(&app.wait_mail_with(email, "sign-in code", 1).await);
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    assert_eq!(r.status(), 200);
    let tokens: Value = r.json().await.unwrap();
    tokens["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_profile_updates_over_http() {
    let app = spawn_app(Feed::Postgres).await;
    let token = signed_in(&app, "writers@example.com").await;
    let me: Value = app.get_auth("/api/users/me", &token).await.json().await.unwrap();
    let user_id = me["user_id"].as_str().unwrap().to_owned();
    let before = sequences(&app.pool, "user", &user_id).await.len();

    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let (client, base, token, barrier) =
            (app.client.clone(), app.base.clone(), token.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let name = format!("Writer {i}");
            let r = client
                .put(format!("{base}/api/users/me"))
                .bearer_auth(&token)
                .json(&json!({"name": name}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            if status == 200 {
                // Answered from the command's result: the change is there
                // even before the read model has it.
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["name"], name.as_str());
                assert_eq!(body["email"], "writers@example.com");
            }
            (name, status)
        }));
    }
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut accepted = Vec::new();
    for task in tasks {
        let (name, status) = task.await.unwrap();
        *statuses.entry(status).or_default() += 1;
        if status == 200 {
            accepted.push(name);
        }
    }
    assert!(statuses.keys().all(|s| *s == 200 || *s == 409), "only 200 or 409: {statuses:?}");
    assert!(!accepted.is_empty());

    // One ProfileUpdated per 200, none for a 409, sequences without gaps.
    let seqs = sequences(&app.pool, "user", &user_id).await;
    assert_contiguous(&seqs);
    let updates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'user' AND aggregate_id = $1
           AND event_type = 'ProfileUpdated'",
    )
    .bind(&user_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(usize::try_from(updates).unwrap(), accepted.len());
    assert_eq!(seqs.len(), before + accepted.len());
    // The read model settles on a name some 200 answered for.
    let (_, profile) = app
        .wait_for("/api/users/me", &token, |s, b| {
            s == 200 && b["name"].as_str().is_some_and(|n| n.starts_with("Writer "))
        })
        .await;
    assert!(accepted.iter().any(|n| profile["name"] == n.as_str()), "{profile} not among {accepted:?}");

    // A session id that is not a UUID is a JSON 404 like an unknown one
    // (axum's own path rejection is plain text; found by schemathesis).
    let r = app
        .client
        .delete(format!("{}/api/users/me/sessions/null%2Cnull", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
}

/// Parallel password logins of one account: each writes its password step,
/// the address's code count and its challenge in one statement
/// (`append_together`), so conflicts on the account's and the budget's
/// streams are retried and every answer is all or none: a 200 has its
/// three events, and nothing is written twice or left half.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_logins_of_one_account_write_each_login_whole() {
    let app = spawn_app_with(Feed::Postgres, |s| {
        s.otp_codes_per_hour = 1_000;
        s.otp_resend_interval_secs = 0;
    })
    .await;
    let email = "parallel-logins@example.com";
    assert_eq!(app.register(email, PASSWORD, "Parallel").await.status(), 201);
    let code = code_in(&app.wait_mail_with(email, "verification code", 1).await);
    assert_eq!(app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await.status(), 204);
    let user_id: String = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'user' AND event_type = 'EmailVerified'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    let codes_counted = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM events WHERE aggregate_type = 'throttle' AND event_type = 'RequestRecorded'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let counted_before = codes_counted().await;

    // More than a fixed five attempts could carry (each conflict is
    // another login committing): 8 failed now and then with five (CI,
    // stop 25).
    const LOGINS: usize = 16;
    let barrier = Arc::new(Barrier::new(LOGINS));
    let mut tasks = Vec::new();
    for _ in 0..LOGINS {
        let (client, base, barrier) = (app.client.clone(), app.base.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = client
                .post(format!("{base}/api/auth/login"))
                .json(&json!({"email": email, "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let mut challenges = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        challenges.push(body["challenge_id"].as_str().unwrap().to_owned());
    }
    challenges.sort();
    challenges.dedup();
    assert_eq!(challenges.len(), LOGINS, "one challenge per login");

    // Each challenge: its `OtpIssued`, and one password step naming it.
    for challenge in &challenges {
        assert_eq!(sequences(&app.pool, "otp_challenge", challenge).await.first(), Some(&1));
        let steps: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'user' AND aggregate_id = $1
             AND event_type = 'LoginPasswordAccepted' AND payload->'LoginPasswordAccepted'->>'challenge_id' = $2",
        )
        .bind(&user_id)
        .bind(challenge)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(steps, 1, "{challenge}");
    }
    // No step without its challenge, and the account's stream is whole.
    let steps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'user' AND aggregate_id = $1
         AND event_type = 'LoginPasswordAccepted'",
    )
    .bind(&user_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(steps, LOGINS as i64);
    assert_contiguous(&sequences(&app.pool, "user", &user_id).await);
    // The address's budget counted every login's code once.
    assert_eq!(codes_counted().await - counted_before, LOGINS as i64);
    for mail in 1..=LOGINS {
        app.wait_mail_with(email, "sign-in code", mail).await;
    }
}
