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
    // The handle's event is in the registration's append; a feed batch may
    // still split the two, so wait for both.
    let (_, me) = app.wait_for("/api/users/me", &access, |s, b| s == 200 && b["username"].is_string()).await;
    assert_eq!(me["phone"], phone);
    assert_eq!(me["phone_verified"], true);
    assert_eq!(me["email"], Value::Null);
    assert_eq!(me["two_factor_channel"], "sms");
    let user_id = me["user_id"].as_str().unwrap().to_owned();
    // A phone sign-up gets a generated handle: `user-` and 8 digits.
    let handle = me["username"].as_str().unwrap();
    assert!(
        handle.len() == 13 && handle.starts_with("user-") && handle[5..].bytes().all(|b| b.is_ascii_digit()),
        "{handle}"
    );
    let (_, public) =
        app.wait_for(&format!("/api/users/by-username/{handle}"), &access, |s, _| s == 200).await;
    assert_eq!(public["id"], user_id.as_str());

    // Later, the same number logs into the same account.
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

/// Signs in by phone: request, code from the fake, verify. Returns the
/// verify-otp answer (tokens, or the second step) and its status.
async fn phone_sign_in(app: &TestApp, server: &MockServer, phone: &str, nth: usize) -> (u16, Value) {
    let r = app.post("/api/auth/request-otp", json!({"phone": phone})).await;
    assert_eq!(r.status(), 202);
    let challenge: Value = r.json().await.unwrap();
    let code = sms_code(&wait_sms(server, phone, nth).await);
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn user_id_of(app: &TestApp, tokens: &Value) -> String {
    let (_, me) =
        app.wait_for("/api/users/me", tokens["access_token"].as_str().unwrap(), |s, _| s == 200).await;
    me["user_id"].as_str().unwrap().to_owned()
}

/// An email account signed in with password + mailed code (fresh `auth_time`).
async fn email_account(app: &TestApp, email: &str) -> Value {
    let password = "correct horse battery staple";
    assert_eq!(app.register(email, password, "Pat").await.status(), 201);
    let code = code_in(&app.wait_mail_with(email, "verification code", 1).await);
    assert_eq!(app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await.status(), 204);
    let login: Value = app
        .post("/api/auth/login", json!({"email": email, "password": password}))
        .await
        .json()
        .await
        .unwrap();
    let code = code_in(&app.wait_mail_with(email, "sign-in code", 1).await);
    let r =
        app.post("/api/auth/verify-otp", json!({"challenge_id": login["challenge_id"], "code": code})).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn post_bearer(app: &TestApp, path: &str, tokens: &Value, body: Value) -> reqwest::Response {
    app.client
        .post(format!("{}{path}", app.base))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Adds and verifies `phone` on the account of `tokens`; `nth` is the
/// number of SMS `phone` will then have received.
async fn verified_phone(app: &TestApp, server: &MockServer, tokens: &Value, phone: &str, nth: usize) {
    let r = post_bearer(app, "/api/users/me/phone", tokens, json!({"phone": phone})).await;
    assert_eq!(r.status(), 202);
    let code = sms_code(&wait_sms(server, phone, nth).await);
    let r = post_bearer(app, "/api/users/me/phone/verify", tokens, json!({"code": code})).await;
    assert_eq!(r.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_phone_is_no_way_into_the_account_that_typed_it() {
    let server = twilio().await;
    let app = app_with_twilio(&server, Feed::Postgres).await;
    // The squatter types someone else's number and never verifies it.
    let squatter = email_account(&app, "squatter@example.com").await;
    let squatter_id = user_id_of(&app, &squatter).await;
    let phone = "+14155550142";
    let r = post_bearer(&app, "/api/users/me/phone", &squatter, json!({"phone": phone})).await;
    assert_eq!(r.status(), 202);
    wait_sms(&server, phone, 1).await; // the verification code, which the squatter never sees

    // The number's real holder signs up by phone: a new account of their
    // own, not the squatter's (the takeover), and nothing blocks them.
    let (status, owner) = phone_sign_in(&app, &server, phone, 2).await;
    assert_eq!(status, 200, "{owner}");
    let owner_id = user_id_of(&app, &owner).await;
    assert_ne!(owner_id, squatter_id, "an unverified number signed into the account that typed it");
    let (_, me) =
        app.wait_for("/api/users/me", owner["access_token"].as_str().unwrap(), |s, _| s == 200).await;
    assert_eq!(me["phone"], phone);
    assert_eq!(me["phone_verified"], true);

    // Typing a number another account verified answers exactly like an
    // accepted add; the owner gets a notice, not a code.
    let r = post_bearer(&app, "/api/users/me/phone", &squatter, json!({"phone": phone})).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert!(body["challenge_id"].is_string() && body["expires_at"].is_string(), "{body}");
    let notice = wait_sms(&server, phone, 3).await;
    let text = &notice.iter().find(|(k, _)| k == "Body").unwrap().1;
    assert!(text.contains("tried to add this number"), "{text}");
    assert!(!text.contains("code is"), "the squatter's add must send no code: {text}");
    // No code answers the squatter's pending challenge.
    for code in ["000000", "123456"] {
        let r = post_bearer(&app, "/api/users/me/phone/verify", &squatter, json!({"code": code})).await;
        assert_eq!(r.status(), 400);
    }
    // The owner still signs into their own account with the number.
    let (status, again) = phone_sign_in(&app, &server, phone, 4).await;
    assert_eq!(status, 200);
    assert_eq!(user_id_of(&app, &again).await, owner_id);
    let reserved: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT owner_id FROM reservations WHERE kind = 'phone'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        reserved,
        vec![owner_id.parse::<uuid::Uuid>().unwrap()],
        "only the verified number is reserved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_or_removing_a_phone_releases_it() {
    let server = twilio().await;
    let app = app_with_twilio(&server, Feed::Postgres).await;
    let tokens = email_account(&app, "mover@example.com").await;
    let user_id = user_id_of(&app, &tokens).await;
    let (first, second) = ("+14155550143", "+14155550144");
    verified_phone(&app, &server, &tokens, first, 1).await;
    // While a replacement is pending, the verified number keeps working.
    let r = post_bearer(&app, "/api/users/me/phone", &tokens, json!({"phone": second})).await;
    assert_eq!(r.status(), 202);
    let (status, still) = phone_sign_in(&app, &server, first, 2).await;
    assert_eq!(status, 200);
    assert_eq!(user_id_of(&app, &still).await, user_id);
    // Verified: the old number no longer leads here.
    let code = sms_code(&wait_sms(&server, second, 1).await);
    let r = post_bearer(&app, "/api/users/me/phone/verify", &tokens, json!({"code": code})).await;
    assert_eq!(r.status(), 204);
    let (status, other) = phone_sign_in(&app, &server, first, 3).await;
    assert_eq!(status, 200);
    assert_ne!(user_id_of(&app, &other).await, user_id, "a replaced number still signed into the account");
    // Removed: neither does the new one.
    let r = app
        .client
        .delete(format!("{}/api/users/me/phone", app.base))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, other) = phone_sign_in(&app, &server, second, 2).await;
    assert_eq!(status, 200);
    assert_ne!(user_id_of(&app, &other).await, user_id, "a removed number still signed into the account");
    // The account that number now signs into was made by an SMS code alone:
    // its session is not fresh, so removing the phone needs a step-up.
    let phone_only = other;
    let r = app
        .client
        .delete(format!("{}/api/users/me/phone", app.base))
        .bearer_auth(phone_only["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a session from an SMS code alone is not fresh for step-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_code_is_one_factor() {
    let server = twilio().await;
    let app = app_with_twilio(&server, Feed::Postgres).await;
    let tokens = email_account(&app, "twofactor@example.com").await;
    let user_id = user_id_of(&app, &tokens).await;
    let phone = "+14155550145";
    verified_phone(&app, &server, &tokens, phone, 1).await;

    // Without a stronger factor: a session, but not fresh for step-up.
    let (status, sms_only) = phone_sign_in(&app, &server, phone, 2).await;
    assert_eq!(status, 200);
    assert_eq!(user_id_of(&app, &sms_only).await, user_id);
    let r = post_bearer(&app, "/api/users/me/totp", &sms_only, json!({})).await;
    assert_eq!(r.status(), 403, "an SMS-only session passed step-up");

    // With TOTP: the code leads to the TOTP step, never to tokens.
    let r = post_bearer(&app, "/api/users/me/totp", &tokens, json!({})).await;
    assert_eq!(r.status(), 200);
    let secret = r.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_owned();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let code = commands::identity::totp_code_at(&secret, now()).unwrap();
    let r = post_bearer(&app, "/api/users/me/totp/confirm", &tokens, json!({"code": code})).await;
    assert_eq!(r.status(), 200);
    let (status, step) = phone_sign_in(&app, &server, phone, 3).await;
    assert_eq!(status, 200);
    assert!(step.get("access_token").is_none(), "an SMS code alone signed into a TOTP account: {step}");
    assert_eq!(step["second_factor"], "totp");
    let code = commands::identity::totp_code_at(&secret, now() + 30).unwrap();
    let r =
        app.post("/api/auth/verify-otp", json!({"challenge_id": step["challenge_id"], "code": code})).await;
    assert_eq!(r.status(), 200);
    let full: Value = r.json().await.unwrap();
    assert_eq!(user_id_of(&app, &full).await, user_id);
    // Two factors: fresh enough for a sensitive change.
    let r = app
        .client
        .delete(format!("{}/api/users/me/totp", app.base))
        .bearer_auth(full["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_pumping_guards_refuse_before_anything_is_sent() {
    let server = twilio().await;
    // Twilio Lookup: one VOIP number, everything else mobile.
    Mock::given(method("GET"))
        .and(path("/v2/PhoneNumbers/+14155550199"))
        .and(header_exists("authorization"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"line_type_intelligence": {"type": "nonFixedVoip"}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header_exists("authorization"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"line_type_intelligence": {"type": "mobile"}})),
        )
        .mount(&server)
        .await;
    let base = server.uri();
    let app = spawn_app_with(Feed::Postgres, move |s| {
        s.twilio_api_base = base.clone();
        s.twilio_lookup_base = base;
        s.twilio_account_sid = Some(SID.to_owned());
        s.twilio_auth_token = Some("test-auth-token".to_owned());
        s.twilio_from = Some("+15005550006".to_owned());
        s.sms_allowed_countries = vec!["US".to_owned(), "GB".to_owned()];
        s.sms_block_voip = true;
        s.sms_country_hourly_budget = Some(2);
        s.sms_hourly_budget = Some(3);
    })
    .await;
    let request = |phone: &'static str| app.post("/api/auth/request-otp", json!({"phone": phone}));

    // A country outside the list and a VOIP line: 422, nothing written or sent.
    for phone in ["+33612345678", "+14155550199"] {
        let r = request(phone).await;
        assert_eq!(r.status(), 422, "{phone}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "phone_not_supported");
    }
    // Two per country per hour, three in all.
    assert_eq!(request("+14155550101").await.status(), 202);
    assert_eq!(request("+14155550102").await.status(), 202);
    let r = request("+14155550103").await;
    assert_eq!(r.status(), 429, "the country's budget is spent");
    let retry: i64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "until the next hour: {retry}");
    assert_eq!(request("+442079460958").await.status(), 202, "another country still has budget");
    assert_eq!(request("+442079460959").await.status(), 429, "the global budget is spent");
    let challenges: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'OtpIssued'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(challenges, 3, "refused requests issue no code");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().ends_with("/Messages.json"))
        .count();
    assert_eq!(sent, 3);
}
