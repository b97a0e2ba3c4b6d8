//! Sessions and devices (ASVS 10.4.9), logout everywhere, the session check
//! and step-up re-authentication (ASVS 7.5.1), and the reuse notice.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{code_in, spawn_app, spawn_app_roles, Feed, TestApp};

const PASSWORD: &str = "correct horse battery staple";

pub(crate) async fn account(app: &TestApp, email: &str) {
    assert_eq!(app.register(email, PASSWORD, "Sessions").await.status(), 201);
    let code = code_in(&app.wait_mail_with(email, "verification code", 1).await);
    assert_eq!(app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await.status(), 204);
}

/// Logs in from a device; returns the token response.
pub(crate) async fn login_from(app: &TestApp, email: &str, device: &str, label: &str, nth: usize) -> Value {
    let send = |path: &str, body: Value| {
        app.client
            .post(format!("{}{path}", app.base))
            .header("x-device-id", device)
            .header("x-device-label", label)
            .header("user-agent", "streamforge-test/1.0")
            .json(&body)
            .send()
    };
    let challenge: Value = send("/api/auth/login", json!({"email": email, "password": PASSWORD}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = code_in(&app.wait_mail_with(email, "sign-in code", nth).await);
    let r = send("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_devices_can_be_listed_and_revoked() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "devices@example.com";
    account(&app, email).await;
    let phone = login_from(&app, email, "device-phone-1", "Ann's phone", 1).await;
    let laptop = login_from(&app, email, "device-laptop-1", "Ann's laptop", 2).await;
    let token = laptop["access_token"].as_str().unwrap().to_owned();

    let (_, list) = app
        .wait_for("/api/users/me/sessions", &token, |s, b| {
            s == 200 && b.as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
    let list = list.as_array().unwrap();
    let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["session_id"], laptop["session_id"]);
    assert_eq!(current[0]["device_label"], "Ann's laptop");
    assert_eq!(current[0]["user_agent"], "streamforge-test/1.0");
    assert_eq!(current[0]["ip_prefix"], "127.0.0.0/24");
    let (_, devices) =
        app.get_auth("/api/users/me/devices", &token).await.json::<Value>().await.map(|d| (0, d)).unwrap();
    assert_eq!(devices.as_array().unwrap().len(), 2);
    // Client info is personal data: sealed in the store.
    let stored: String = sqlx::query_scalar("SELECT string_agg(payload::text, ' ') FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!stored.contains("Ann's laptop") && !stored.contains("streamforge-test"));

    // Revoke the phone's session from the laptop.
    let r = app
        .client
        .delete(format!("{}/api/users/me/sessions/{}", app.base, phone["session_id"].as_str().unwrap()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    app.wait_for("/api/users/me", phone["access_token"].as_str().unwrap(), |s, _| s == 401).await;
    // Someone else's session cannot be revoked.
    let r = app
        .client
        .delete(format!("{}/api/users/me/sessions/{}", app.base, uuid::Uuid::new_v4()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // check-session: valid with a token, not without.
    let r: Value = app.get_auth("/api/auth/check-session", &token).await.json().await.unwrap();
    assert_eq!(r["valid"], true);
    assert_eq!(r["session_id"], laptop["session_id"]);
    let r: Value = app
        .client
        .get(format!("{}/api/auth/check-session", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["valid"], false);

    // Logout everywhere.
    let r = app
        .client
        .post(format!("{}/api/auth/logout-all", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    app.wait_for("/api/users/me", &token, |s, _| s == 401).await;
    let r = app.post("/api/auth/refresh", json!({"refresh_token": laptop["refresh_token"]})).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_changes_need_a_recent_authentication() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "stepup@example.com";
    account(&app, email).await;
    let tokens = login_from(&app, email, "d1", "d1", 1).await;
    let claims = app.tokens.verify_access(tokens["access_token"].as_str().unwrap()).unwrap();
    // A token whose authentication is 10 minutes old.
    let now = chrono::Utc::now();
    let (stale, _) =
        app.tokens.issue_access_at(claims.sub, claims.sid, now, now - chrono::Duration::minutes(10)).unwrap();
    let put_2fa = |token: String| {
        app.client
            .put(format!("{}/api/users/me/two-factor", app.base))
            .bearer_auth(token)
            .json(&json!({"channel": "email"}))
            .send()
    };
    let r = put_2fa(stale.clone()).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "reauthentication_required");

    // Wrong password: refused.
    let reauth = |body: Value| {
        app.client
            .post(format!("{}/api/auth/reauthenticate", app.base))
            .bearer_auth(&stale)
            .json(&body)
            .send()
    };
    assert_eq!(reauth(json!({"password": "not my password"})).await.unwrap().status(), 401);
    assert_eq!(reauth(json!({})).await.unwrap().status(), 422);
    // Right password: a fresh token, and the change goes through.
    let r = reauth(json!({"password": PASSWORD})).await.unwrap();
    assert_eq!(r.status(), 200);
    let fresh = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(put_2fa(fresh).await.unwrap().status(), 204);

    // Step-up by emailed code works as well.
    let r = app
        .client
        .post(format!("{}/api/auth/reauthenticate/code", app.base))
        .bearer_auth(&stale)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let challenge: Value = r.json().await.unwrap();
    let code = code_in(&app.wait_mail_with(email, "sign-in code", 2).await);
    let r = reauth(json!({"challenge_id": challenge["challenge_id"], "code": code})).await.unwrap();
    assert_eq!(r.status(), 200);
    let reauths: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SessionReauthenticated'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(reauths, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_reuse_is_reported_to_the_owner() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "reuse@example.com";
    account(&app, email).await;
    let tokens = login_from(&app, email, "d1", "d1", 1).await;
    let first = tokens["refresh_token"].clone();
    assert_eq!(app.post("/api/auth/refresh", json!({"refresh_token": first})).await.status(), 200);
    let r = app.post("/api/auth/refresh", json!({"refresh_token": first})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "refresh_token_reused");
    let mail = app.wait_mail_with(email, "used twice", 1).await;
    assert!(!mail.data.contains("rt1."), "the token itself is never mailed");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let noticed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type IN ('RefreshTokenReuseDetected', 'RefreshTokenReuseNoticed')")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(noticed, 2);
}

/// Whether `token` passes the bearer check (`check-session` answers
/// `valid: false` when the extractor refuses it).
async fn bearer_valid(app: &TestApp, token: &str) -> bool {
    let r: Value = app.get_auth("/api/auth/check-session", token).await.json().await.unwrap();
    r["valid"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_reaches_sessions_the_read_model_never_saw() {
    // No projector: the sessions read model stays empty throughout.
    let roles = api::app::Roles { http: true, relay: false, project: false, notify: true };
    let app = spawn_app_roles(Feed::Postgres, roles, |_| {}).await;
    let email = "everywhere@example.com";
    account(&app, email).await;
    let phone = login_from(&app, email, "phone-1", "Phone", 1).await;
    let laptop = login_from(&app, email, "laptop-1", "Laptop", 2).await;
    let listed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_sessions").fetch_one(&app.pool).await.unwrap();
    assert_eq!(listed, 0, "the projector is stopped");
    let phone_token = phone["access_token"].as_str().unwrap().to_owned();
    assert!(bearer_valid(&app, &phone_token).await);

    let r = app
        .client
        .post(format!("{}/api/auth/logout-all", app.base))
        .bearer_auth(laptop["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Refresh is refused at once (decided on the write side)…
    for tokens in [&phone, &laptop] {
        let r = app.post("/api/auth/refresh", json!({"refresh_token": tokens["refresh_token"]})).await;
        assert_eq!(r.status(), 401, "a session unknown to the read model survived logout-all");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "session_revoked");
    }
    // …and the access tokens within the follower's seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while bearer_valid(&app, &phone_token).await {
        assert!(std::time::Instant::now() < deadline, "the access token still passes after logout-all");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Step-up cannot revive it either; a new login works.
    let r = app
        .client
        .post(format!("{}/api/auth/reauthenticate", app.base))
        .bearer_auth(&phone_token)
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let again = login_from(&app, email, "phone-1", "Phone", 3).await;
    assert!(bearer_valid(&app, again["access_token"].as_str().unwrap()).await, "a session started after it");
}
