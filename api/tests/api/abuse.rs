//! Password reset, throttles and enumeration (issue 3), end to end over
//! HTTP with the real SMTP listener.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{code_in, spawn_app, spawn_app_with, Feed, TestApp};

const PASSWORD: &str = "correct horse battery staple";

/// Registers and verifies `email`; returns the user id.
async fn verified_account(app: &TestApp, email: &str) -> String {
    let r = app.register(email, PASSWORD, "Test").await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["user_id"].as_str().unwrap().to_owned();
    let code = code_in(&app.wait_mail_with(email, "verification code", 1).await);
    let r = app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await;
    assert_eq!(r.status(), 204);
    id
}

async fn login(app: &TestApp, email: &str, password: &str, nth: usize) -> Value {
    let r = app.post("/api/auth/login", json!({"email": email, "password": password})).await;
    assert_eq!(r.status(), 200);
    let challenge: Value = r.json().await.unwrap();
    let code = code_in(&app.wait_mail_with(email, "sign-in code", nth).await);
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn other_code(code: &str) -> String {
    if code == "000000" {
        "111111".into()
    } else {
        "000000".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_reset_revokes_sessions_and_tokens_are_single_use() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "reset@example.com";
    verified_account(&app, email).await;
    app.wait_mail_with(email, "", 2).await; // welcome mail
    let tokens = login(&app, email, PASSWORD, 1).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    app.wait_for("/api/users/me", &access, |s, _| s == 200).await;

    // Request: 202 for known and unknown addresses alike.
    for who in [email, "nobody@example.com"] {
        let r = app.post("/api/auth/password-reset/request", json!({"email": who})).await;
        assert_eq!(r.status(), 202);
    }
    let code = code_in(&app.wait_mail_with(email, "password reset code", 1).await);
    let r =
        app.post("/api/auth/password-reset/verify", json!({"email": email, "code": other_code(&code)})).await;
    assert_eq!(r.status(), 400);
    let r = app.post("/api/auth/password-reset/verify", json!({"email": email, "code": code})).await;
    assert_eq!(r.status(), 200);
    let reset: Value = r.json().await.unwrap();
    let reset_token = reset["reset_token"].as_str().unwrap().to_owned();
    assert_eq!(reset["expires_in"], 600);

    // A reset token is not an access token.
    assert_eq!(app.get_auth("/api/users/me", &reset_token).await.status(), 401);
    // Creation rules apply to the new password.
    let r = app
        .post(
            "/api/auth/password-reset/complete",
            json!({"reset_token": reset_token, "new_password": "password"}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let new_password = "a brand new long passphrase";
    let r = app
        .post(
            "/api/auth/password-reset/complete",
            json!({"reset_token": reset_token, "new_password": new_password}),
        )
        .await;
    assert_eq!(r.status(), 204);
    // Single use.
    let r = app
        .post(
            "/api/auth/password-reset/complete",
            json!({"reset_token": reset_token, "new_password": "yet another passphrase"}),
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_reset_token");

    // Every session ended; a notice was mailed.
    app.wait_for("/api/users/me", &access, |s, _| s == 401).await;
    let r = app.post("/api/auth/refresh", json!({"refresh_token": tokens["refresh_token"]})).await;
    assert_eq!(r.status(), 401);
    app.wait_mail_with(email, "password", 1).await;
    let changed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'PasswordReset'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(changed, 1);

    // Old password refused, new one works.
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(r.status(), 401);
    login(&app, email, new_password, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_guesses_never_succeed() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "target@example.com";
    verified_account(&app, email).await;
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    let challenge: Value = r.json().await.unwrap();
    let real = code_in(&app.wait_mail_with(email, "sign-in code", 1).await);
    // 9,999 wrong guesses, then the right code as guess 10,000.
    let mut guesses: Vec<String> =
        (0..20_000u32).map(|n| format!("{n:06}")).filter(|c| *c != real).take(9_999).collect();
    guesses.push(real.clone());
    let url = format!("{}/api/auth/verify-otp", app.base);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let started = Instant::now();
    for chunk in guesses.chunks(16) {
        let futures = chunk.iter().map(|code| {
            app.client
                .post(&url)
                .json(&json!({"challenge_id": challenge["challenge_id"], "code": code}))
                .send()
        });
        for r in futures::future::join_all(futures).await {
            *statuses.entry(r.unwrap().status().as_u16()).or_default() += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(statuses.values().sum::<usize>(), 10_000);
    assert!(!statuses.contains_key(&200), "a guess succeeded: {statuses:?}");
    assert!(statuses.keys().all(|s| [400, 403, 409, 429].contains(s)), "{statuses:?}");
    let evaluated: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'OtpVerificationFailed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(evaluated <= 3, "only 3 codes may be checked per challenge, {evaluated} were");
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SessionStarted'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0);
    eprintln!("10,000 guesses in {elapsed:?}: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_code_does_not_reset_the_failure_count() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "nist@example.com";
    verified_account(&app, email).await;
    // Challenge A: three wrong codes lock it.
    let a: Value = app
        .post("/api/auth/login", json!({"email": email, "password": PASSWORD}))
        .await
        .json()
        .await
        .unwrap();
    let code_a = code_in(&app.wait_mail_with(email, "sign-in code", 1).await);
    for _ in 0..3 {
        app.post(
            "/api/auth/verify-otp",
            json!({"challenge_id": a["challenge_id"], "code": other_code(&code_a)}),
        )
        .await;
    }
    // Challenge B: a fresh code; the password step is not affected by OTP failures.
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(r.status(), 200, "OTP failures must not lock the password step");
    let b: Value = r.json().await.unwrap();
    let code_b = code_in(&app.wait_mail_with(email, "sign-in code", 2).await);
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": b["challenge_id"], "code": other_code(&code_b)}))
        .await;
    assert_eq!(r.status(), 400, "4th failure is evaluated");
    // The 4th failure imposed a delay: even the right code waits.
    let r =
        app.post("/api/auth/verify-otp", json!({"challenge_id": b["challenge_id"], "code": code_b})).await;
    assert_eq!(r.status(), 429);
    let retry: i64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "too_many_attempts");
    let throttled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'AttemptThrottled'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(throttled, 1, "the refusal is an event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_get_growing_delays_for_known_and_unknown_accounts() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "pw@example.com";
    verified_account(&app, email).await;
    for who in [email, "ghost@example.com"] {
        let mut statuses = Vec::new();
        for _ in 0..7 {
            statuses.push(
                app.post("/api/auth/login", json!({"email": who, "password": "wrong password!"}))
                    .await
                    .status()
                    .as_u16(),
            );
        }
        // 5 free failures, the 6th sets a 1 s delay, the 7th at once is refused.
        assert_eq!(statuses, vec![401, 401, 401, 401, 401, 401, 429], "{who}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(r.status(), 200, "after the delay the right password works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_per_phone_per_hour_and_resend_cooldown() {
    let app = spawn_app_with(Feed::Postgres, |s| {
        s.otp_codes_per_hour = 3;
        s.otp_resend_interval_secs = 30;
    })
    .await;
    let phone = "+14155552671";
    let r = app.post("/api/auth/request-otp", json!({"phone": phone})).await;
    assert_eq!(r.status(), 202);
    let first: Value = r.json().await.unwrap();
    // Resend within the 30 s cooldown: refused with Retry-After.
    let r = app.post("/api/auth/otp/resend", json!({"challenge_id": first["challenge_id"]})).await;
    assert_eq!(r.status(), 429);
    let retry: i64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry));
    // Same number again at once: cooldown too.
    assert_eq!(app.post("/api/auth/request-otp", json!({"phone": phone})).await.status(), 429);
    // Bad numbers are 422 and send nothing.
    for bad in ["12345", "+1 555", "not a phone"] {
        let r = app.post("/api/auth/request-otp", json!({"phone": bad})).await;
        assert_eq!(r.status(), 422, "{bad}");
    }
    // Three recorded codes per hour: simulate the earlier two by moving the
    // first request back in time is not possible through HTTP, so count
    // what the store recorded and check the refusals are events.
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'RequestRecorded'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let refused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'AttemptThrottled'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    // Both refusals fall in the same cooldown: the first is recorded, the
    // repeat adds nothing (refusals do not grow the stream).
    assert_eq!((recorded, refused), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_codes_count_toward_the_recipients_budget() {
    // The default budget of 3 codes an hour, without the interval so that
    // the hourly cap is what refuses.
    let app = spawn_app_with(Feed::Postgres, |s| {
        s.otp_codes_per_hour = 3;
        s.otp_resend_interval_secs = 0;
    })
    .await;
    let email = "budget@example.com";
    verified_account(&app, email).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let retry: i64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((3_500..=3_600).contains(&retry), "the hour's oldest code must leave: {retry}");
        }
    }
    assert_eq!(statuses, vec![200, 200, 200, 429], "a 4th login code within the hour is refused");
    // Three sign-in codes were mailed, not four.
    app.wait_mail_with(email, "sign-in code", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mailed = app
        .inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.to.iter().any(|t| t == email) && m.data.replace("=\r\n", "").contains("sign-in code"))
        .count();
    assert_eq!(mailed, 3);
}

/// Mean of `f` over alternating samples of two paths; returns (a, b) in ms.
async fn timing_gap<FA, FB, A, B>(n: usize, mut a: FA, mut b: FB) -> (f64, f64)
where
    FA: FnMut(usize) -> A,
    FB: FnMut(usize) -> B,
    A: std::future::Future<Output = u16>,
    B: std::future::Future<Output = u16>,
{
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for i in 0..n {
        let s = Instant::now();
        a(i).await;
        ta.push(s.elapsed().as_secs_f64() * 1000.0);
        let s = Instant::now();
        b(i).await;
        tb.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    // Trimmed means (drop the slowest 10 %) resist scheduler noise.
    let trimmed = |mut v: Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        let keep = v.len() - v.len() / 10;
        v[..keep].iter().sum::<f64>() / keep as f64
    };
    (trimmed(ta), trimmed(tb))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enumeration_timing_gap_is_under_ten_percent() {
    let app = spawn_app(Feed::Postgres).await;
    let known: Vec<String> = (0..8).map(|i| format!("known{i}@example.com")).collect();
    for e in &known {
        verified_account(&app, e).await;
    }
    let n = 32; // 4 wrong passwords per known account: under the 5 free failures.
    let (known_ms, unknown_ms) = timing_gap(
        n,
        |i| {
            let body = json!({"email": known[i % known.len()], "password": "wrong password!"});
            async { app.post("/api/auth/login", body).await.status().as_u16() }
        },
        |i| {
            let body = json!({"email": format!("unknown{i}@example.com"), "password": "wrong password!"});
            async { app.post("/api/auth/login", body).await.status().as_u16() }
        },
    )
    .await;
    let gap = (known_ms - unknown_ms).abs() / known_ms.max(unknown_ms);
    eprintln!("login: known {known_ms:.1} ms, unknown {unknown_ms:.1} ms, gap {:.1} %", gap * 100.0);
    assert!(
        gap < 0.10,
        "login timing gap {:.1} % (known {known_ms:.1} ms, unknown {unknown_ms:.1} ms)",
        gap * 100.0
    );

    let (dup_ms, new_ms) = timing_gap(
        24,
        |i| {
            let body = json!({"email": known[i % known.len()], "password": PASSWORD, "name": "X"});
            async { app.post("/api/auth/register", body).await.status().as_u16() }
        },
        |i| {
            let body = json!({"email": format!("fresh{i}@example.com"), "password": PASSWORD, "name": "X"});
            async { app.post("/api/auth/register", body).await.status().as_u16() }
        },
    )
    .await;
    let gap = (dup_ms - new_ms).abs() / dup_ms.max(new_ms);
    eprintln!("register: existing {dup_ms:.1} ms, new {new_ms:.1} ms, gap {:.1} %", gap * 100.0);
    assert!(gap < 0.10, "register timing gap {:.1} %", gap * 100.0);

    let (k_ms, u_ms) = timing_gap(
        16,
        |i| {
            let body = json!({"email": known[i % known.len()]});
            async { app.post("/api/auth/password-reset/request", body).await.status().as_u16() }
        },
        |i| {
            let body = json!({"email": format!("nobody{i}@example.com")});
            async { app.post("/api/auth/password-reset/request", body).await.status().as_u16() }
        },
    )
    .await;
    let gap = (k_ms - u_ms).abs() / k_ms.max(u_ms).max(1.0);
    eprintln!("reset request: known {k_ms:.2} ms, unknown {u_ms:.2} ms");
    assert!(gap < 0.10 || (k_ms - u_ms).abs() < 1.0, "reset timing gap {:.1} %", gap * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_registration_expires_and_frees_its_address() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "lapsed@example.com";
    assert_eq!(app.register(email, PASSWORD, "Lapsed").await.status(), 201);
    app.wait_mail_with(email, "verification code", 1).await;
    // The projector has the profile (the expiry job finds candidates there).
    let deadline = Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rm_profiles").fetch_one(&app.pool).await.unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "profile not projected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The job, on this database with this app's keys, a day and an hour on.
    let s = &app.settings;
    let tokens = std::sync::Arc::new(
        commands::tokens::TokenIssuer::new(&s.jwt_key().unwrap(), &s.jwt_issuer, &s.jwt_audience).unwrap(),
    );
    let identity = commands::IdentityService::new(
        app.pool.clone(),
        commands::Keyring::derive(&s.master_key().unwrap()),
        commands::passwords::PasswordHasher::new(1).unwrap(),
        tokens,
        commands::IdentityConfig::default(),
    );
    let meta = commands::identity::RequestMeta::default();
    let now = chrono::Utc::now();
    assert_eq!(identity.expire_unverified_registrations(now, 100, &meta).await.unwrap(), 0, "not yet");
    let later = now + chrono::Duration::hours(25);
    assert_eq!(identity.expire_unverified_registrations(later, 100, &meta).await.unwrap(), 1);
    assert_eq!(identity.expire_unverified_registrations(later, 100, &meta).await.unwrap(), 0, "once");
    // The address registers anew: a verification code, not a duplicate notice.
    assert_eq!(app.register(email, PASSWORD, "Lapsed again").await.status(), 201);
    let code = code_in(&app.wait_mail_with(email, "verification code", 2).await);
    let r = app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await;
    assert_eq!(r.status(), 204);
    login(&app, email, PASSWORD, 1).await;
    let registered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'UserRegistered'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(registered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_elsewhere_do_not_lock_out_a_device_that_signed_in_before() {
    let app = spawn_app(Feed::Postgres).await;
    let email = "known-device@example.com";
    verified_account(&app, email).await;
    // A complete sign-in: the answer carries the device cookie.
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
    let device = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("__Host-device="))
        .and_then(|c| c.split(';').next())
        .expect("a device cookie")
        .to_owned();
    // Someone else guesses: the account's shared count delays everyone else…
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = app.post("/api/auth/login", json!({"email": email, "password": "wrong password!"})).await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 401, 429]);
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(r.status(), 429, "no cookie: the shared count applies");
    // …but not the device that signed in before.
    let with_cookie = |password: &'static str, cookie: String| {
        app.client
            .post(format!("{}/api/auth/login", app.base))
            .header("cookie", format!("__Host-device={cookie}"))
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    let r = with_cookie(PASSWORD, device.clone()).await.unwrap();
    assert_eq!(r.status(), 200, "the known device was locked out by failures from elsewhere");
    // A forged or another account's cookie is no key.
    let mut forged = device.clone();
    forged.pop();
    forged.push(if device.ends_with('0') { '1' } else { '0' });
    assert_eq!(with_cookie(PASSWORD, forged).await.unwrap().status(), 429);
}

/// Statuses of `n` wrong codes for `email` at `path`.
async fn wrong_codes(app: &TestApp, path: &str, email: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let r = app.post(path, json!({"email": email, "code": "000000"})).await;
        statuses.push(r.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_known_verified_unverified_and_unknown_answer_alike() {
    let app = spawn_app(Feed::Postgres).await;
    // verify-email: a pending registration, a verified account, nobody.
    let pending = "pending@example.com";
    assert_eq!(app.register(pending, PASSWORD, "P").await.status(), 201);
    let pending_code = code_in(&app.wait_mail_with(pending, "verification code", 1).await);
    assert_ne!(pending_code, "000000", "a one-in-a-million code; rerun");
    verified_account(&app, "verified@example.com").await;
    let mut sequences = Vec::new();
    for email in [pending, "verified@example.com", "nobody@example.com"] {
        sequences.push(wrong_codes(&app, "/api/auth/verify-email", email, 6).await);
    }
    // 3 free failures, the 4th evaluated and delayed, then 429 — for all three.
    assert_eq!(sequences[0], vec![400, 400, 400, 400, 429, 429], "{sequences:?}");
    assert!(sequences.iter().all(|s| *s == sequences[0]), "verify-email: {sequences:?}");

    // password-reset/verify: a requested reset, an account without one, nobody.
    let asked = "asked@example.com";
    verified_account(&app, asked).await;
    verified_account(&app, "quiet@example.com").await;
    assert_eq!(app.post("/api/auth/password-reset/request", json!({"email": asked})).await.status(), 202);
    let reset_code = code_in(&app.wait_mail_with(asked, "password reset code", 1).await);
    assert_ne!(reset_code, "000000", "a one-in-a-million code; rerun");
    let mut sequences = Vec::new();
    for email in [asked, "quiet@example.com", "nobody2@example.com"] {
        sequences.push(wrong_codes(&app, "/api/auth/password-reset/verify", email, 6).await);
    }
    assert_eq!(sequences[0], vec![400, 400, 400, 400, 429, 429], "{sequences:?}");
    assert!(sequences.iter().all(|s| *s == sequences[0]), "password-reset/verify: {sequences:?}");

    // The address-taking requests: one status and body whoever it is.
    for path in ["/api/auth/verify-email/resend", "/api/auth/password-reset/request"] {
        let mut answers = Vec::new();
        for email in ["fresh-pending@example.com", "verified@example.com", "nobody3@example.com"] {
            let r = app.post(path, json!({"email": email})).await;
            answers.push((r.status().as_u16(), r.text().await.unwrap()));
        }
        assert_eq!(answers[0].0, 202, "{path}");
        assert!(answers.iter().all(|a| *a == answers[0]), "{path}: {answers:?}");
    }
    for phone in ["+14155552671", "+14155552672"] {
        let r = app.post("/api/auth/request-otp", json!({"phone": phone})).await;
        assert_eq!(r.status(), 202, "{phone}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_by_address_take_as_long_for_known_and_unknown_addresses() {
    let app = spawn_app(Feed::Postgres).await;
    let pending: Vec<String> = (0..12).map(|i| format!("pending{i}@example.com")).collect();
    for e in &pending {
        assert_eq!(app.register(e, PASSWORD, "P").await.status(), 201);
    }
    for e in &pending {
        app.wait_mail_with(e, "verification code", 1).await;
    }
    // Warm up the pad with refusals of pending challenges (not measured).
    for e in pending.iter().take(4) {
        app.post("/api/auth/verify-email", json!({"email": e, "code": "000000"})).await;
    }
    let (known_ms, unknown_ms) = timing_gap(
        16,
        |i| {
            let body = json!({"email": pending[4 + i % 8], "code": "000000"});
            async { app.post("/api/auth/verify-email", body).await.status().as_u16() }
        },
        |i| {
            let body = json!({"email": format!("stranger{}@example.com", i % 8), "code": "000000"});
            async { app.post("/api/auth/verify-email", body).await.status().as_u16() }
        },
    )
    .await;
    let gap = (known_ms - unknown_ms).abs() / known_ms.max(unknown_ms);
    eprintln!("verify-email: pending {known_ms:.2} ms, unknown {unknown_ms:.2} ms, gap {:.1} %", gap * 100.0);
    assert!(gap < 0.10, "verify-email timing gap {:.1} % ({known_ms:.2} vs {unknown_ms:.2} ms)", gap * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_by_username_takes_as_long_as_by_email_or_for_an_unknown_handle() {
    let app = spawn_app(Feed::Postgres).await;
    for i in 0..16 {
        let body = json!({"email": format!("timer{i}@example.com"), "password": PASSWORD, "name": "T",
                          "username": format!("timer_{i}")});
        assert_eq!(app.post("/api/auth/register", body).await.status(), 201);
    }
    let wrong = |login: String| {
        let body = json!({"email": login, "password": "wrong password!"});
        let app = &app;
        async move { app.post("/api/auth/login", body).await.status().as_u16() }
    };
    // Accounts 0–7: by handle and by email, 2 wrong passwords each way
    // (under the 5 free failures).
    let (by_name, by_email) = timing_gap(
        16,
        |i| wrong(format!("timer_{}", i % 8)),
        |i| wrong(format!("timer{}@example.com", i % 8)),
    )
    .await;
    let gap = (by_name - by_email).abs() / by_name.max(by_email);
    eprintln!("login: by username {by_name:.1} ms, by email {by_email:.1} ms, gap {:.1} %", gap * 100.0);
    assert!(gap < 0.10, "username vs email login timing gap {:.1} %", gap * 100.0);
    // Accounts 8–15 by handle against handles nobody has.
    let (known, unknown) =
        timing_gap(32, |i| wrong(format!("timer_{}", 8 + i % 8)), |i| wrong(format!("nobody_{i}"))).await;
    let gap = (known - unknown).abs() / known.max(unknown);
    eprintln!("login: known handle {known:.1} ms, unknown handle {unknown:.1} ms, gap {:.1} %", gap * 100.0);
    assert!(gap < 0.10, "known vs unknown handle timing gap {:.1} %", gap * 100.0);
}
