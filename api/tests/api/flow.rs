//! The identity walking skeleton end to end: register → mailed code →
//! verify → login → mailed second factor → tokens → profile → refresh →
//! reuse detection → logout, on both feeds; then the hygiene checks on the
//! store and the topics (no code, no plaintext email).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::helpers::{code_in, spawn_app, Feed, TestApp};

const PASSWORD: &str = "correct horse battery staple";

async fn login(app: &TestApp, email: &str, nth_mail: usize) -> Value {
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(r.status(), 200);
    let challenge: Value = r.json().await.unwrap();
    assert_eq!(challenge["channel"], "email");
    let mail = app.wait_mail_with(email, "sign-in code", nth_mail).await;
    let code = code_in(&mail);
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    assert_eq!(r.status(), 200);
    let cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-refresh="), "{cookie}");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "cookie lacks {attr}: {cookie}");
    }
    let tokens: Value = r.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    tokens
}

async fn full_flow(feed: Feed) {
    let app = spawn_app(feed).await;
    let email = "ann@example.com";

    // Register: 201 and a verification code by mail.
    let r = app.register(email, PASSWORD, "Ann").await;
    assert_eq!(r.status(), 201);
    let user_id = r.json::<Value>().await.unwrap()["user_id"].as_str().unwrap().to_owned();
    let mail = app.wait_mail(email, 1).await;
    let code = code_in(&mail);

    // Login before verification: 403 after the right password.
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "email_not_verified");

    // A wrong code is refused, the right one verifies.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = app.post("/api/auth/verify-email", json!({"email": email, "code": wrong})).await;
    assert_eq!(r.status(), 400);
    let r = app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await;
    assert_eq!(r.status(), 204);

    // Wrong password and unknown email: same status and body.
    let a = app.post("/api/auth/login", json!({"email": email, "password": "not the password"})).await;
    let b = app
        .post("/api/auth/login", json!({"email": "nobody@example.com", "password": "not the password"}))
        .await;
    assert_eq!(
        (a.status(), b.status()),
        (reqwest::StatusCode::UNAUTHORIZED, reqwest::StatusCode::UNAUTHORIZED)
    );
    assert_eq!(a.json::<Value>().await.unwrap(), b.json::<Value>().await.unwrap());

    // Login with the mailed second factor.
    let tokens = login(&app, email, 1).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh1 = tokens["refresh_token"].as_str().unwrap().to_owned();

    // Profile from the read model (email opened there).
    let (_, me) =
        app.wait_for("/api/users/me", &access, |s, b| s == 200 && b["email_verified"] == true).await;
    assert_eq!(me["user_id"], user_id);
    assert_eq!(me["email"], email);
    assert_eq!(me["name"], "Ann");
    let r = app
        .client
        .put(format!("{}/api/users/me", app.base))
        .bearer_auth(&access)
        .json(&json!({"bio": "ambient & field recordings"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.wait_for("/api/users/me", &access, |s, b| s == 200 && b["bio"] == "ambient & field recordings").await;

    // Session from the sessions read model.
    let (_, session) = app.wait_for("/api/auth/session", &access, |s, _| s == 200).await;
    assert_eq!(session["session_id"], tokens["session_id"]);
    assert_eq!(session["status"], "active");

    // Refresh rotates; the cookie works as well as the body.
    let r = app
        .client
        .post(format!("{}/api/auth/refresh", app.base))
        .header("cookie", format!("__Host-refresh={refresh1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rotated: Value = r.json().await.unwrap();
    let refresh2 = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh1, refresh2);
    assert_eq!(rotated["session_id"], tokens["session_id"]);

    // Reuse of the spent token revokes the family: the new token dies too,
    // and the access token stops working once the revocation is projected.
    let r = app.post("/api/auth/refresh", json!({"refresh_token": refresh1})).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "refresh_token_reused");
    let r = app.post("/api/auth/refresh", json!({"refresh_token": refresh2})).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "session_revoked");
    app.wait_for("/api/users/me", &access, |s, _| s == 401).await;

    // A second session, ended by logout.
    let tokens = login(&app, email, 2).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    app.wait_for("/api/users/me", &access, |s, _| s == 200).await;
    let r =
        app.client.post(format!("{}/api/auth/logout", app.base)).bearer_auth(&access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    app.wait_for("/api/users/me", &access, |s, _| s == 401).await;
    let r = app.post("/api/auth/refresh", json!({"refresh_token": tokens["refresh_token"]})).await;
    assert_eq!(r.status(), 401);

    // No code and no plaintext email anywhere in the store.
    let codes: Vec<String> = app
        .inbox
        .lock()
        .unwrap()
        .iter()
        .filter_map(|m| m.data.find("code is ").map(|_| code_in(m)))
        .collect();
    assert_eq!(codes.len(), 3);
    let (events, stored): (i64, String) = sqlx::query_as(
        "SELECT count(*), coalesce(string_agg(payload::text || metadata::text, ' '), '') FROM events",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(events >= 15, "expected the whole flow as events, got {events}");
    assert_clean(&stored, email, &codes);
    assert!(!stored.contains(PASSWORD));
    for table in ["rm_profiles", "rm_sessions"] {
        let dump: String =
            sqlx::query_scalar(&format!("SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} t"))
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_clean(&dump, email, &codes);
    }
    crate::helpers::assert_events_match_schemas(&app.pool).await;
    // Delivery records are deleted once sent.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries").fetch_one(&app.pool).await.unwrap();
    assert_eq!(left, 0);

    if feed == Feed::Kafka {
        let on_topic = read_topics(&app, events as usize).await;
        assert_eq!(on_topic.len(), events as usize, "every event relayed exactly once");
        for (key, value, event_type_header) in &on_topic {
            assert_clean(value, email, &codes);
            let env: Value = serde_json::from_str(value).unwrap();
            assert_eq!(env["aggregate_id"].as_str().unwrap(), key, "key = aggregate id");
            assert_eq!(env["event_type"].as_str().unwrap(), event_type_header);
            for field in [
                "event_id",
                "aggregate_type",
                "sequence",
                "position",
                "event_version",
                "occurred_at",
                "payload",
                "metadata",
            ] {
                assert!(env.get(field).is_some(), "envelope lacks {field}: {env}");
            }
        }
    }
}

fn assert_clean(text: &str, email: &str, codes: &[String]) {
    assert!(!text.to_lowercase().contains(email), "plaintext email found");
    assert!(!text.contains("$argon2"), "a readable password hash found (hashes are sealed)");
    for code in codes {
        assert!(!text.contains(code.as_str()), "an OTP code was found");
    }
}

/// Every message on the test's topics: (key, value, event-type header).
pub(crate) async fn read_topics(app: &TestApp, expected: usize) -> Vec<(String, String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &app.brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let topics: Vec<String> =
        domain::envelope::AGGREGATE_TYPES.iter().map(|t| format!("{}{t}", app.topic_prefix)).collect();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Read until the expected count, then a little longer to catch duplicates.
    let mut quiet_until: Option<std::time::Instant> = None;
    while std::time::Instant::now() < deadline {
        if let Some(q) = quiet_until {
            if std::time::Instant::now() > q {
                break;
            }
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            let header = m
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "event-type")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                })
                .unwrap_or_default();
            out.push((key, value, header));
            if out.len() >= expected && quiet_until.is_none() {
                quiet_until = Some(std::time::Instant::now() + Duration::from_secs(2));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flow_through_kafka_and_smtp() {
    full_flow(Feed::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flow_through_postgres_feed() {
    full_flow(Feed::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_registration_answers_the_same_and_warns_the_owner() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "bo@example.com";
    let first = app.register(email, PASSWORD, "Bo").await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    app.wait_mail(email, 1).await;
    let second = app.register("  BO@example.com ", "another long password", "Impostor").await;
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await.unwrap();
    assert_eq!(
        first.as_object().unwrap().keys().collect::<Vec<_>>(),
        second.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    assert_ne!(first["user_id"], second["user_id"], "the real id is not revealed");
    let notice = app.wait_mail(email, 2).await;
    assert!(notice.data.contains("already has one"), "{}", notice.data);
    assert!(!notice.data.contains("code is"));
    // The decoy id carries the time a real id minted then would (UUIDv7).
    let decoy = uuid::Uuid::parse_str(second["user_id"].as_str().unwrap()).unwrap();
    let (secs, _) = decoy.get_timestamp().expect("a UUIDv7").to_unix();
    let age = chrono::Utc::now().timestamp() - i64::try_from(secs).unwrap();
    assert!((0..10).contains(&age), "decoy id time {age} s ago");
    // More sign-ups with the address within the hour: the same answer, no
    // further notice (one per address per hour).
    for _ in 0..2 {
        assert_eq!(app.register(email, "yet another password", "Again").await.status(), 201);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mails = app.inbox.lock().unwrap().iter().filter(|m| m.to.iter().any(|t| t == email)).count();
    assert_eq!(mails, 2, "the verification code and one notice");
    let users: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'user'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(users, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_wrong_codes_lock_the_challenge() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "cy@example.com";
    assert_eq!(app.register(email, PASSWORD, "Cy").await.status(), 201);
    let code = code_in(&app.wait_mail(email, 1).await);
    assert_eq!(app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await.status(), 204);
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    let challenge: Value = r.json().await.unwrap();
    let code = code_in(&app.wait_mail_with(email, "sign-in code", 1).await);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let body = json!({"challenge_id": challenge["challenge_id"], "code": wrong});
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(app.post("/api/auth/verify-otp", body.clone()).await.status().as_u16());
        }
        v
    };
    assert_eq!(statuses, vec![400, 400, 403]);
    // Even the right code is refused now.
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "challenge_locked");
    let locked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'OtpChallengeLocked'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(locked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_of_another_purpose_cannot_log_in() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "di@example.com";
    assert_eq!(app.register(email, PASSWORD, "Di").await.status(), 201);
    let code = code_in(&app.wait_mail(email, 1).await);
    let challenge: String =
        sqlx::query_scalar("SELECT aggregate_id FROM events WHERE event_type = 'OtpIssued'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    // The email-verification challenge answered at the login endpoint.
    let r = app.post("/api/auth/verify-otp", json!({"challenge_id": challenge, "code": code})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_code");
}

async fn revocation_reaches_a_second_node(feed: Feed) {
    let app = spawn_app(feed).await;
    let (node_b, _stop_b) = app.second_node().await;
    let email = "two-nodes@example.com";
    assert_eq!(app.register(email, PASSWORD, "Two").await.status(), 201);
    let code = code_in(&app.wait_mail(email, 1).await);
    assert_eq!(app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await.status(), 204);
    let tokens = login(&app, email, 1).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let on_b = |path: &str| app.client.get(format!("{node_b}{path}")).bearer_auth(&access).send();
    // Node B accepts the token (once the profile is projected)…
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while on_b("/api/users/me").await.unwrap().status() != 200 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …and refuses it within 2 s of a logout on node A.
    let r =
        app.client.post(format!("{}/api/auth/logout", app.base)).bearer_auth(&access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let started = std::time::Instant::now();
    while on_b("/api/users/me").await.unwrap().status() != 401 {
        assert!(started.elapsed() < Duration::from_secs(2), "node B still accepts a revoked session");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("revocation seen by node B after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_a_second_node_through_kafka() {
    revocation_reaches_a_second_node(Feed::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_a_second_node_through_postgres() {
    revocation_reaches_a_second_node(Feed::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_requests_commands_projectors_and_queues_after_a_login() {
    // A free port for METRICS_ADDR.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = crate::helpers::spawn_app_with(Feed::Postgres, move |s| {
        s.metrics_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    })
    .await;
    let email = "metrics@example.com";
    assert_eq!(app.register(email, PASSWORD, "Met").await.status(), 201);
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
    app.wait_for("/api/users/me", tokens["access_token"].as_str().unwrap(), |s, _| s == 200).await;

    // The sessions projector's gauge is set when its batch (the session
    // started by this login) commits, which may come after the profile.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let r = app.client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        let text = r.text().await.unwrap();
        if text.contains(r#"streamforge_projector_lag_seconds{projector="sessions"}"#)
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let has = |needle: &str| {
        assert!(text.lines().any(|l| l.starts_with(needle)), "{needle} missing:\n{text}");
    };
    has(r#"streamforge_http_requests_total{method="POST",route="/api/auth/login",status="200"}"#);
    has(r#"streamforge_http_request_duration_seconds_bucket{method="POST",route="/api/auth/verify-otp""#);
    has(r#"streamforge_commands_total{aggregate="user",command="RegisterUser",outcome="ok"}"#);
    has(r#"streamforge_commands_total{aggregate="user",command="StartLogin",outcome="ok"}"#);
    has(r#"streamforge_projector_batch_seconds_bucket{projector="profiles""#);
    has(r#"streamforge_projector_lag_seconds{projector="sessions"}"#);
    has(r#"streamforge_deliveries_total{channel="email",outcome="sent"}"#);
    has("streamforge_notifier_queue_depth");
    has("streamforge_password_hash_queue_depth");
    has(r#"streamforge_tail_lag_events{checkpoint="#);
    // Secrets and personal data never reach the metrics.
    assert!(!text.contains(email) && !text.contains(&code), "personal data in /metrics");
}
