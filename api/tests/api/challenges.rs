//! `GET /api/auth/challenges/{id}`: a client sees its code's delivery
//! outcome (from the challenges read model), never the recipient.

// Test helpers (outside `#[test]` functions) may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{code_in, spawn_app, Feed, TestApp};

const PASSWORD: &str = "correct horse battery staple";

async fn get_challenge(app: &TestApp, id: &str) -> (u16, Value) {
    let r = app.client.get(format!("{}/api/auth/challenges/{id}", app.base)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls the challenge until `ok` holds (≤ 10 s).
async fn wait_challenge(app: &TestApp, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get_challenge(app, id).await;
        if status == 200 && ok(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "challenge {id} never matched: last {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delivery_is_visible(feed: Feed) {
    let app = spawn_app(feed).await;
    let email = "cleo@example.com";
    assert_eq!(app.register(email, PASSWORD, "Cleo").await.status(), 201);
    let mail = app.wait_mail(email, 1).await;
    let challenge_id: String = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'otp_challenge' AND event_type = 'OtpIssued'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    let body = wait_challenge(&app, &challenge_id, |b| b["delivery"] == "delivered").await;
    let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["challenge_id", "channel", "delivery", "expires_at", "status"]);
    assert_eq!(body["challenge_id"], challenge_id.as_str());
    assert_eq!(body["channel"], "email");
    assert_eq!(body["status"], "pending");
    let text = body.to_string();
    assert!(!text.contains("cleo"), "no recipient in {text}");
    assert!(!text.contains(&code_in(&mail)), "no code in {text}");

    // Answering the code shows on the challenge too.
    let r = app.post("/api/auth/verify-email", json!({"email": email, "code": code_in(&mail)})).await;
    assert_eq!(r.status(), 204);
    wait_challenge(&app, &challenge_id, |b| b["status"] == "verified" && b["delivery"] == "delivered").await;

    // Unknown and malformed ids: the same JSON 404.
    for id in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let (status, body) = get_challenge(&app, &id).await;
        assert_eq!(status, 404, "{id}");
        assert_eq!(body["code"], "challenge_not_found");
    }
}

#[tokio::test]
async fn challenge_shows_delivered_after_the_mail_arrives_postgres_feed() {
    delivery_is_visible(Feed::Postgres).await;
}

#[tokio::test]
async fn challenge_shows_delivered_after_the_mail_arrives_kafka_feed() {
    delivery_is_visible(Feed::Kafka).await;
}
