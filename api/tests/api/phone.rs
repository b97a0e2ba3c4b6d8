//! Phone passwordless sign-up and SMS two-factor through the Twilio REST API
//! (a wiremock fake: the only HTTP fake, for a third-party API).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::{header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{code_in, spawn_app_with, Feed, TestApp};

const SID: &str = "AC0123456789abcdef0123456789abcdef";

async fn twilio() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/2010-04-01/Accounts/{SID}/Messages.json")))
        .and(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"sid": "SM1", "status": "queued"})))
        .mount(&server)
        .await;
    server
}

async fn app_with_twilio(server: &MockServer, feed: Feed) -> TestApp {
    let base = server.uri();
    spawn_app_with(feed, move |s| {
        s.twilio_api_base = base;
        s.twilio_account_sid = Some(SID.to_owned());
        s.twilio_auth_token = Some("test-auth-token".to_owned());
        s.twilio_from = Some("+15005550006".to_owned());
    })
    .await
}

/// Form fields of the `n`-th (1-based) SMS sent to `to`, waiting up to 15 s.
async fn wait_sms(server: &MockServer, to: &str, n: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let requests = server.received_requests().await.unwrap_or_default();
        let mine: Vec<Vec<(String, String)>> = requests
            .iter()
            .map(|r| url::form_urlencoded::parse(&r.body).into_owned().collect::<Vec<_>>())
            .filter(|f| f.iter().any(|(k, v)| k == "To" && v == to))
            .collect();
        if mine.len() >= n {
            return mine[n - 1].clone();
        }
        assert!(Instant::now() < deadline, "SMS #{n} to {to} not sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sms_code(form: &[(String, String)]) -> String {
    let body = &form.iter().find(|(k, _)| k == "Body").unwrap().1;
    let at = body.find("code is ").unwrap() + "code is ".len();
    body[at..at + 6].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_signup_and_login_through_twilio() {
    let server = twilio().await;
    let app = app_with_twilio(&server, Feed::Kafka).await;
    let phone = "+14155552671";

    // First code: the account does not exist yet.
    let r = app.post("/api/auth/request-otp", json!({"phone": "+1 (415) 555-2671"})).await;
    assert_eq!(r.status(), 202);
    let challenge: Value = r.json().await.unwrap();
    let expires: chrono::DateTime<chrono::Utc> = challenge["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = (expires - chrono::Utc::now()).num_seconds();
    assert!((280..=300).contains(&ttl), "phone codes live 5 minutes, got {ttl} s");
    let form = wait_sms(&server, phone, 1).await;
    assert!(form.contains(&("From".to_owned(), "+15005550006".to_owned())));
    let code = sms_code(&form);

    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    assert_eq!(r.status(), 200);
    let tokens: Value = r.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let (_, me) = app.wait_for("/api/users/me", &access, |s, _| s == 200).await;
    assert_eq!(me["phone"], phone);
    assert_eq!(me["phone_verified"], true);
    assert_eq!(me["email"], Value::Null);
    assert_eq!(me["two_factor_channel"], "sms");
    let user_id = me["user_id"].as_str().unwrap().to_owned();

    // Later, the same number logs into the same account.
    tokio::time::sleep(Duration::from_secs(31)).await; // resend cooldown
    let r = app.post("/api/auth/request-otp", json!({"phone": phone})).await;
    assert_eq!(r.status(), 202);
    let second: Value = r.json().await.unwrap();
    let code = sms_code(&wait_sms(&server, phone, 2).await);
    let r =
        app.post("/api/auth/verify-otp", json!({"challenge_id": second["challenge_id"], "code": code})).await;
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    let (_, me) =
        app.wait_for("/api/users/me", again["access_token"].as_str().unwrap(), |s, _| s == 200).await;
    assert_eq!(me["user_id"], user_id.as_str());

    // The phone number is sealed everywhere.
    let stored: String = sqlx::query_scalar("SELECT string_agg(payload::text, ' ') FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!stored.contains("4155552671"), "plaintext phone in events");
    let users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'UserRegisteredWithPhone'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(users, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_as_second_factor_after_verifying_a_phone() {
    let server = twilio().await;
    let app = app_with_twilio(&server, Feed::Postgres).await;
    let email = "sms2fa@example.com";
    let password = "correct horse battery staple";
    assert_eq!(app.register(email, password, "Sam").await.status(), 201);
    let code = code_in(&app.wait_mail_with(email, "verification code", 1).await);
    assert_eq!(app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await.status(), 204);
    let login: Value = app
        .post("/api/auth/login", json!({"email": email, "password": password}))
        .await
        .json()
        .await
        .unwrap();
    let code = code_in(&app.wait_mail_with(email, "sign-in code", 1).await);
    let tokens: Value = app
        .post("/api/auth/verify-otp", json!({"challenge_id": login["challenge_id"], "code": code}))
        .await
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let authed = |req: reqwest::RequestBuilder| req.bearer_auth(&access);

    // SMS needs a verified phone first.
    let r = authed(app.client.put(format!("{}/api/users/me/two-factor", app.base)))
        .json(&json!({"channel": "sms"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let phone = "+442079460958";
    let r = authed(app.client.post(format!("{}/api/users/me/phone", app.base)))
        .json(&json!({"phone": phone}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let code = sms_code(&wait_sms(&server, phone, 1).await);
    let r = authed(app.client.post(format!("{}/api/users/me/phone/verify", app.base)))
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = authed(app.client.put(format!("{}/api/users/me/two-factor", app.base)))
        .json(&json!({"channel": "sms"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // The next login's code goes by SMS, not mail.
    let r = app.post("/api/auth/login", json!({"email": email, "password": password})).await;
    let login: Value = r.json().await.unwrap();
    assert_eq!(login["channel"], "sms");
    let code = sms_code(&wait_sms(&server, phone, 2).await);
    let r =
        app.post("/api/auth/verify-otp", json!({"challenge_id": login["challenge_id"], "code": code})).await;
    assert_eq!(r.status(), 200);
}
