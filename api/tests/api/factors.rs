//! Device PIN and TOTP (issue 4), end to end over HTTP: real Postgres, the
//! real SMTP listener, the Kafka feed for the PIN read model, codes computed
//! with totp-rs as an authenticator app would.

use std::time::Duration;

use chrono::Utc;
use commands::identity::totp_code_at;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{code_in, spawn_app, Feed, TestApp};

const PASSWORD: &str = "correct horse battery staple";

/// Registers and verifies `email`; returns the user id.
async fn verified_account(app: &TestApp, email: &str) -> Uuid {
    let r = app.register(email, PASSWORD, "Test").await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["user_id"].as_str().unwrap().parse().unwrap();
    let code = code_in(&app.wait_mail_with(email, "verification code", 1).await);
    let r = app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await;
    assert_eq!(r.status(), 204);
    id
}

/// Full login (password + the `nth` mailed sign-in code); the token body.
async fn login(app: &TestApp, email: &str, nth: usize) -> Value {
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(r.status(), 200);
    let challenge: Value = r.json().await.unwrap();
    assert_eq!(challenge["channel"], "email");
    let code = code_in(&app.wait_mail_with(email, "sign-in code", nth).await);
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// An access token of the same session whose last authentication was 10
/// minutes ago (outside the step-up window).
fn stale_token(app: &TestApp, user_id: Uuid, tokens: &Value) -> String {
    let session: Uuid = tokens["session_id"].as_str().unwrap().parse().unwrap();
    let now = Utc::now();
    app.tokens.issue_access_at(user_id, session, now, now - chrono::Duration::minutes(10)).unwrap().0
}

async fn post_auth(app: &TestApp, path: &str, token: &str, body: Value) -> reqwest::Response {
    app.client.post(format!("{}{path}", app.base)).bearer_auth(token).json(&body).send().await.unwrap()
}

async fn delete_auth(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client.delete(format!("{}{path}", app.base)).bearer_auth(token).send().await.unwrap()
}

async fn count_events(app: &TestApp, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Waits (≤ 10 s) until check-session from `device` lists `pin` or not.
async fn wait_quick_factor(app: &TestApp, token: &str, device: &str, pin: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app
            .client
            .get(format!("{}/api/auth/check-session", app.base))
            .bearer_auth(token)
            .header("x-device-id", device)
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        let has = body["quick_factors"].as_array().unwrap().iter().any(|f| f == "pin");
        if has == pin {
            assert_eq!(body["valid"], true);
            return;
        }
        assert!(std::time::Instant::now() < deadline, "check-session from {device}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn verify_pin(app: &TestApp, device: &str, pin: &str, secret: &str) -> reqwest::Response {
    app.post("/api/auth/pin/verify", json!({"device_id": device, "pin": pin, "device_secret": secret})).await
}

/// The device secret a successful `POST /api/auth/pin` answered.
async fn device_secret(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 200);
    let secret = r.json::<Value>().await.unwrap()["device_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 43, "256 bits, base64url");
    secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_pin_signs_in_and_five_wrong_pins_disable_it() {
    let app = spawn_app(Feed::Kafka).await;
    let email = "pin@example.com";
    let user_id = verified_account(&app, email).await;
    let tokens = login(&app, email, 1).await;
    let fresh = access(&tokens);
    app.wait_for("/api/users/me", &fresh, |s, _| s == 200).await;

    // Setting a PIN needs a recent authentication.
    let stale = stale_token(&app, user_id, &tokens);
    let r = post_auth(&app, "/api/auth/pin", &stale, json!({"device_id": "phone-A", "pin": "4826"})).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "reauthentication_required");
    // And a PIN of 4–8 digits.
    for pin in ["123", "123456789", "12a4"] {
        let r = post_auth(&app, "/api/auth/pin", &fresh, json!({"device_id": "phone-A", "pin": pin})).await;
        assert_eq!(r.status(), 422, "{pin}");
        assert_eq!(r.json::<Value>().await.unwrap()["field"], "pin");
    }
    let r = post_auth(&app, "/api/auth/pin", &fresh, json!({"device_id": "phone-A", "pin": "4826"})).await;
    let secret = device_secret(r).await;
    // Only hashes are stored: sealed for the PIN, SHA-256 for the secret.
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'device_pin'
           AND (payload::text LIKE '%4826%' OR payload::text LIKE '%$argon2%' OR payload::text LIKE '%' || $1 || '%')",
    )
    .bind(&secret)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);

    // check-session offers the PIN on that device only.
    wait_quick_factor(&app, &fresh, "phone-A", true).await;
    wait_quick_factor(&app, &fresh, "laptop-B", false).await;

    // Without the device's secret the PIN is not even tried (nothing counted).
    for other in ["", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let r = verify_pin(&app, "phone-A", "4826", other).await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_pin");
    }
    assert_eq!(count_events(&app, "PinVerificationFailed").await, 0);

    // The PIN signs in: working access and refresh tokens, a new session.
    let r = verify_pin(&app, "phone-A", "4826", &secret).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["set-cookie"].to_str().unwrap().starts_with("__Host-refresh="));
    let pin_tokens: Value = r.json().await.unwrap();
    assert_ne!(pin_tokens["session_id"], tokens["session_id"]);
    let (_, me) = app.wait_for("/api/users/me", &access(&pin_tokens), |s, _| s == 200).await;
    assert_eq!(me["user_id"], user_id.to_string());
    let r = app.post("/api/auth/refresh", json!({"refresh_token": pin_tokens["refresh_token"]})).await;
    assert_eq!(r.status(), 200);
    // With the user id too.
    let r = app
        .post(
            "/api/auth/pin/verify",
            json!({"device_id": "phone-A", "pin": "4826", "device_secret": secret, "user_id": user_id}),
        )
        .await;
    assert_eq!(r.status(), 200);

    // An unknown device answers exactly like a wrong PIN.
    let unknown = verify_pin(&app, "laptop-B", "4826", &secret).await;
    assert_eq!(unknown.status(), 401);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(unknown["code"], "invalid_pin");

    // Five wrong PINs disable it; then even the right PIN fails.
    for wrong in ["0000", "1111", "2222", "3333", "4444"] {
        let r = verify_pin(&app, "phone-A", wrong, &secret).await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.unwrap(), unknown, "same answer as an unknown device");
    }
    let r = verify_pin(&app, "phone-A", "4826", &secret).await;
    assert_eq!(r.status(), 401);
    assert_eq!(count_events(&app, "PinVerificationFailed").await, 5);
    assert_eq!(count_events(&app, "PinDisabled").await, 1);
    assert_eq!(count_events(&app, "PinVerificationRefused").await, 1, "the refusal is an event");
    wait_quick_factor(&app, &fresh, "phone-A", false).await;

    // The session that authenticated before the lock cannot re-enable it…
    let r = post_auth(&app, "/api/auth/pin", &fresh, json!({"device_id": "phone-A", "pin": "5937"})).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "reauthentication_required");
    // …a full login after it can.
    let again = login(&app, email, 2).await;
    let r = post_auth(&app, "/api/auth/pin", &access(&again), json!({"device_id": "phone-A", "pin": "5937"}))
        .await;
    let renewed = device_secret(r).await;
    assert_eq!(
        verify_pin(&app, "phone-A", "5937", &secret).await.status(),
        401,
        "the old secret died with the PIN"
    );
    assert_eq!(verify_pin(&app, "phone-A", "5937", &renewed).await.status(), 200);
    wait_quick_factor(&app, &fresh, "phone-A", true).await;

    // Removed: the PIN stops working and is no longer offered.
    let r = delete_auth(&app, "/api/auth/pin?device_id=phone-A", &access(&again)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(verify_pin(&app, "phone-A", "5937", &renewed).await.status(), 401);
    let r = delete_auth(&app, "/api/auth/pin?device_id=phone-A", &access(&again)).await;
    assert_eq!(r.status(), 404);
    wait_quick_factor(&app, &fresh, "phone-A", false).await;
    crate::helpers::assert_events_match_schemas(&app.pool).await;
}

/// Mails to `to` whose text contains `needle`, so far.
fn mails(app: &TestApp, to: &str, needle: &str) -> usize {
    app.inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.to.iter().any(|t| t == to) && m.data.replace("=\r\n", "").contains(needle))
        .count()
}

fn now_secs() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap()
}

async fn login_challenge(app: &TestApp, email: &str) -> Value {
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_replaces_the_mailed_code_steps_and_recovery_codes_work_once() {
    let app = spawn_app(Feed::Postgres).await;
    let doc: Value =
        app.client.get(format!("{}/openapi.json", app.base)).send().await.unwrap().json().await.unwrap();
    for (method, path) in [
        ("post", "/api/auth/pin"),
        ("delete", "/api/auth/pin"),
        ("post", "/api/auth/pin/verify"),
        ("post", "/api/users/me/totp"),
        ("delete", "/api/users/me/totp"),
        ("post", "/api/users/me/totp/confirm"),
        ("post", "/api/auth/verify-recovery-code"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from openapi.json");
    }
    let email = "totp@example.com";
    let user_id = verified_account(&app, email).await;
    let tokens = login(&app, email, 1).await;
    let fresh = access(&tokens);

    // Enrollment needs a recent authentication.
    let stale = stale_token(&app, user_id, &tokens);
    let r = post_auth(&app, "/api/users/me/totp", &stale, json!({})).await;
    assert_eq!(r.status(), 403);
    let r = post_auth(&app, "/api/users/me/totp", &fresh, json!({})).await;
    assert_eq!(r.status(), 200);
    let enrollment: Value = r.json().await.unwrap();
    let secret = enrollment["secret"].as_str().unwrap().to_owned();
    let uri = enrollment["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/streamforge:totp%40example.com?"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")) && uri.contains("issuer=streamforge"), "{uri}");
    assert!(enrollment["qr_svg"].as_str().unwrap().contains("<svg"));
    // The secret is sealed in the event, never in clear.
    let leaked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'")
            .bind(&secret)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(leaked, 0);

    // Confirm: a wrong code is refused, the app's current code enables TOTP.
    let now = now_secs();
    let good = totp_code_at(&secret, now).unwrap();
    let wrong = if good == "000000" { "111111" } else { "000000" };
    let r = post_auth(&app, "/api/users/me/totp/confirm", &fresh, json!({"code": wrong})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_code");
    let r = post_auth(&app, "/api/users/me/totp/confirm", &fresh, json!({"code": good})).await;
    assert_eq!(r.status(), 200);
    let recovery: Vec<String> = r.json::<Value>().await.unwrap()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    assert!(recovery.iter().all(|c| c.len() == 9 && c.as_bytes()[4] == b'-'), "{recovery:?}");
    let r = post_auth(&app, "/api/users/me/totp", &fresh, json!({})).await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "totp_already_enabled");

    // Log out; the next login asks for the app's code and mails nothing.
    let r = post_auth(&app, "/api/auth/logout", &fresh, json!({})).await;
    assert_eq!(r.status(), 204);
    let challenge = login_challenge(&app, email).await;
    assert_eq!(challenge["channel"], "totp");
    // The next step's code (the confirming step is used up), within the skew.
    let code = totp_code_at(&secret, now + 30).unwrap();
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    assert_eq!(r.status(), 200);
    let totp_tokens: Value = r.json().await.unwrap();
    app.wait_for("/api/users/me", &access(&totp_tokens), |s, _| s == 200).await;

    // The same code again, on a new challenge: its step was used.
    let challenge = login_challenge(&app, email).await;
    assert_eq!(challenge["channel"], "totp");
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_code");
    let replays: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events
         WHERE event_type = 'TotpCodeRejected' AND (payload->'TotpCodeRejected'->>'replayed')::boolean",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(replays, 1);

    // A recovery code answers the same challenge, once (any case, dash optional).
    let typed = recovery[0].to_lowercase().replace('-', "");
    let r = app
        .post(
            "/api/auth/verify-recovery-code",
            json!({"challenge_id": challenge["challenge_id"], "code": typed}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let recovered: Value = r.json().await.unwrap();
    app.wait_for("/api/users/me", &access(&recovered), |s, _| s == 200).await;
    let challenge = login_challenge(&app, email).await;
    let r = app
        .post(
            "/api/auth/verify-recovery-code",
            json!({"challenge_id": challenge["challenge_id"], "code": recovery[0]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = app
        .post(
            "/api/auth/verify-recovery-code",
            json!({"challenge_id": challenge["challenge_id"], "code": recovery[1]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(count_events(&app, "RecoveryCodeUsed").await, 2);
    let r = app
        .post(
            "/api/auth/verify-recovery-code",
            json!({"challenge_id": challenge["challenge_id"], "code": "123456"}),
        )
        .await;
    assert_eq!(r.status(), 422);

    // A TOTP challenge has nothing to resend.
    let r = app.post("/api/auth/otp/resend", json!({"challenge_id": challenge["challenge_id"]})).await;
    assert_eq!(r.status(), 202);
    // No sign-in code was mailed for any TOTP login.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mails(&app, email, "sign-in code"), 1);

    // Disabling needs a recent authentication; then mailed codes are back.
    let latest = access(&recovered);
    let stale = stale_token(&app, user_id, &recovered);
    assert_eq!(delete_auth(&app, "/api/users/me/totp", &stale).await.status(), 403);
    assert_eq!(delete_auth(&app, "/api/users/me/totp", &latest).await.status(), 204);
    assert_eq!(delete_auth(&app, "/api/users/me/totp", &latest).await.status(), 404);
    login(&app, email, 2).await;
    crate::helpers::assert_events_match_schemas(&app.pool).await;
}
