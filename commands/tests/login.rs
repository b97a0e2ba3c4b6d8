//! The password step of login against a real database: what it writes to
//! the account's failure throttle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use commands::identity::RequestMeta;
use commands::keys::Secret32;
use commands::passwords::PasswordHasher;
use commands::tokens::TokenIssuer;
use commands::{IdentityConfig, IdentityError, IdentityService, Keyring};
use domain::values::{DisplayName, EmailAddress, OtpCode, Password};
use projections::db::testing::{base_url, create_test_database, drop_test_database};
use sqlx::PgPool;
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

async fn service() -> (IdentityService, PgPool, String) {
    let (pool, url) = create_test_database(&base_url()).await.unwrap();
    let tokens = Arc::new(TokenIssuer::new(&Secret32::generate(), "test", "test").unwrap());
    // Small argon2 parameters: this test is about the work around the hash.
    let hasher = PasswordHasher::with_params(2, 1024, 1, 1).unwrap();
    let keys = Keyring::derive(&Secret32::generate());
    // Several logins within seconds: the per-recipient code budget is lifted.
    let config = IdentityConfig {
        otp_codes_per_hour: 1_000,
        otp_resend_interval_secs: 0,
        ..IdentityConfig::default()
    };
    let service = IdentityService::new(pool.clone(), keys, hasher, tokens, config);
    (service, pool, url)
}

/// Registers `email` and verifies it with the code from its delivery record.
async fn verified_account(s: &IdentityService, pool: &PgPool, email: &EmailAddress) {
    let meta = RequestMeta::default();
    let user = s
        .register(
            email,
            &Password::parse(PASSWORD).unwrap(),
            &DisplayName::parse("Lo").unwrap(),
            &Default::default(),
            &meta,
        )
        .await
        .unwrap();
    let payload: serde_json::Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE aggregate_type = 'user' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(user.to_string())
    .fetch_one(pool)
    .await
    .unwrap();
    let challenge =
        Uuid::parse_str(payload["UserRegistered"]["email_challenge_id"].as_str().unwrap()).unwrap();
    let delivery = s.deliveries.get(challenge).await.unwrap().unwrap();
    let code = OtpCode::parse(delivery.code.as_deref().unwrap()).unwrap();
    s.verify_email(email, &code, &meta).await.unwrap();
}

async fn throttle_events(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'throttle' AND aggregate_id LIKE 'password%'
         ORDER BY txid, position",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_resets_earlier_password_failures_and_writes_nothing_without_them() {
    let (s, pool, url) = service().await;
    let email = EmailAddress::parse("throttle@example.com").unwrap();
    verified_account(&s, &pool, &email).await;
    let meta = RequestMeta::default();
    let right = Password::parse(PASSWORD).unwrap();
    let wrong = Password::parse("not the password at all").unwrap();

    // No failures: the login leaves the throttle stream untouched.
    s.start_login(&email, &right, None, &meta).await.unwrap();
    let events = throttle_events(&pool).await;
    assert!(events.is_empty(), "{events:?}");

    // Two failures, then a success: the success resets the count.
    for _ in 0..2 {
        assert!(matches!(
            s.start_login(&email, &wrong, None, &meta).await,
            Err(IdentityError::InvalidCredentials)
        ));
    }
    s.start_login(&email, &right, None, &meta).await.unwrap();
    assert_eq!(throttle_events(&pool).await, ["FailureRecorded", "FailureRecorded", "FailuresReset"]);

    // Counting starts again from zero: 5 free failures before any delay
    // (a count left at 2 would refuse the 5th).
    for n in 1..=5 {
        let r = s.start_login(&email, &wrong, None, &meta).await;
        assert!(matches!(r, Err(IdentityError::InvalidCredentials)), "failure {n}: {r:?}");
    }
    s.start_login(&email, &right, None, &meta).await.unwrap_or_else(|e| panic!("after 5 failures: {e:?}"));

    pool.close().await;
    drop_test_database(&url).await.unwrap();
}

/// Counts the events of `event_type`.
async fn count(pool: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_codes_are_evaluated_no_more_than_the_throttle_allows() {
    let (s, pool, url) = service().await;
    let s = Arc::new(s);
    let email = EmailAddress::parse("parallel@example.com").unwrap();
    verified_account(&s, &pool, &email).await;
    let meta = RequestMeta::default();
    let right = Password::parse(PASSWORD).unwrap();
    // Many challenges of one account, each with its code.
    let mut challenges = Vec::new();
    for _ in 0..20 {
        let c = s.start_login(&email, &right, None, &meta).await.unwrap();
        let code = s.deliveries.get(c.challenge_id).await.unwrap().unwrap().code.unwrap();
        challenges.push((c.challenge_id, code));
    }
    // 200 wrong guesses at once, spread over the challenges.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (challenge_id, code) = challenges[i % challenges.len()].clone();
        let wrong = OtpCode::parse(if code == "000000" { "111111" } else { "000000" }).unwrap();
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { s.verify_otp(challenge_id, &wrong, &RequestMeta::default()).await },
        ));
    }
    let mut outcomes = std::collections::BTreeMap::new();
    for t in tasks {
        let key = match t.await.unwrap() {
            Ok(_) => "signed in".to_owned(),
            Err(e) => format!("{e:?}").split([' ', '{']).next().unwrap_or_default().to_owned(),
        };
        *outcomes.entry(key).or_insert(0) += 1;
    }
    assert!(!outcomes.contains_key("signed in"), "{outcomes:?}");
    // OTP failures (docs/identity.md): 3 free, the 4th imposes 30 s — so at
    // most 4 guesses are evaluated now, whatever the parallelism; every
    // evaluated one is counted on the throttle.
    let evaluated = count(&pool, "OtpVerificationFailed").await;
    let counted = count(&pool, "FailureRecorded").await;
    assert!((1..=4).contains(&evaluated), "{evaluated} evaluated: {outcomes:?}");
    assert!(counted >= evaluated, "{counted} counted < {evaluated} evaluated");
    // The refusals do not grow the stream one event each.
    let refusals = count(&pool, "AttemptThrottled").await;
    assert!(refusals <= 2, "{refusals} refusal events for one delay");

    pool.close().await;
    drop_test_database(&url).await.unwrap();
}
