//! Edges of the HTTP surface: OpenAPI coverage, security headers, body
//! limits, malformed and invalid input, authentication failures.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Feed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_endpoint_and_docs_are_served() {
    let app = spawn_app(Feed::Postgres).await;
    let doc: Value =
        app.client.get(format!("{}/openapi.json", app.base)).send().await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in [
        ("post", "/api/auth/register"),
        ("post", "/api/auth/verify-email"),
        ("post", "/api/auth/login"),
        ("post", "/api/auth/verify-otp"),
        ("post", "/api/auth/refresh"),
        ("post", "/api/auth/logout"),
        ("get", "/api/auth/session"),
        ("get", "/api/users/me"),
        ("put", "/api/users/me"),
        ("get", "/.well-known/jwks.json"),
        ("get", "/health/live"),
        ("get", "/health/ready"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from openapi.json"
        );
    }
    let docs = app.client.get(format!("{}/docs/", app.base)).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    let csp = docs.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let jwks: Value = app
        .client
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_security_headers_and_json_errors() {
    let app = spawn_app(Feed::Postgres).await;
    for r in [
        app.client.get(format!("{}/health/live", app.base)).send().await.unwrap(),
        app.client.get(format!("{}/no/such/route", app.base)).send().await.unwrap(),
        app.post("/api/auth/login", json!({})).await,
    ] {
        let h = r.headers();
        assert!(h["strict-transport-security"].to_str().unwrap().contains("max-age="));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(h["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
        assert!(h.contains_key("x-request-id"));
        if !r.status().is_success() {
            let body: Value = r.json().await.unwrap();
            assert!(body["code"].is_string() && body["message"].is_string(), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx_and_writes_nothing() {
    let app = spawn_app(Feed::Postgres).await;
    let big = "x".repeat(70 * 1024);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            app.client
                .post(format!("{}/api/auth/register", app.base))
                .header("content-type", "application/json")
                .body(format!("{{\"email\":\"{big}\"}}")),
            413,
            "payload_too_large",
        ),
        (
            app.client
                .post(format!("{}/api/auth/register", app.base))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "malformed_json",
        ),
        (
            app.client.post(format!("{}/api/auth/register", app.base)).body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            app.client.post(format!("{}/api/auth/register", app.base)).json(&json!({"email": 5})),
            422,
            "invalid_body",
        ),
        // JSON that is not an object (serde would read an array into a
        // struct field by field; found by schemathesis).
        (
            app.client.post(format!("{}/api/auth/passkeys/login/start", app.base)).json(&json!([])),
            422,
            "invalid_body",
        ),
        (
            app.client.post(format!("{}/api/auth/register", app.base)).json(&json!([
                "a@example.com",
                "correct horse battery",
                "N"
            ])),
            422,
            "invalid_body",
        ),
        (
            app.client
                .post(format!("{}/api/auth/login", app.base))
                .header("content-type", "application/vnd.api+json")
                .body("\"x\""),
            422,
            "invalid_body",
        ),
        (
            app.client
                .post(format!("{}/api/auth/register", app.base))
                .json(&json!({"email": "nope", "password": "correct horse battery", "name": "N"})),
            422,
            "validation_failed",
        ),
        (
            app.client
                .post(format!("{}/api/auth/register", app.base))
                .json(&json!({"email": "a@example.com", "password": "password", "name": "N"})),
            422,
            "validation_failed",
        ),
        (
            app.client
                .post(format!("{}/api/auth/register", app.base))
                .json(&json!({"email": "a@example.com", "password": "short", "name": "N"})),
            422,
            "validation_failed",
        ),
        (
            app.client
                .post(format!("{}/api/auth/verify-otp", app.base))
                .json(&json!({"challenge_id": "not-a-uuid", "code": "123456"})),
            422,
            "invalid_body",
        ),
        (
            app.client
                .post(format!("{}/api/auth/verify-otp", app.base))
                .json(&json!({"challenge_id": uuid::Uuid::new_v4(), "code": "12ab56"})),
            422,
            "validation_failed",
        ),
        (
            app.client
                .post(format!("{}/api/auth/verify-otp", app.base))
                .json(&json!({"challenge_id": uuid::Uuid::new_v4(), "code": "123456"})),
            400,
            "invalid_code",
        ),
        (
            app.client
                .post(format!("{}/api/auth/refresh", app.base))
                .json(&json!({"refresh_token": "rt1.garbage.x"})),
            401,
            "invalid_refresh_token",
        ),
        (app.client.get(format!("{}/api/users/me", app.base)), 401, "unauthorized"),
        (
            app.client.get(format!("{}/api/users/me", app.base)).bearer_auth("eyJhbGciOiJub25lIn0.e30."),
            401,
            "unauthorized",
        ),
        (app.client.delete(format!("{}/api/users/me", app.base)), 405, "method_not_allowed"),
    ];
    for (req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "expected {status} {code}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&app.pool).await.unwrap();
    assert_eq!(events, 0, "bad input changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_routes_are_rate_limited_per_ip() {
    let app = crate::helpers::spawn_app_with(Feed::Postgres, |s| {
        s.auth_rate_per_minute = 60;
        s.auth_rate_burst = 5;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = app
            .post("/api/auth/verify-otp", json!({"challenge_id": uuid::Uuid::new_v4(), "code": "123456"}))
            .await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry));
            assert_eq!(r.json::<Value>().await.unwrap()["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, vec![400, 400, 400, 400, 400, 429, 429]);
    // So is adding a phone (it sends an SMS), whoever is signed in: the
    // address's bucket is spent, so it is refused before authentication.
    let r = app.post("/api/users/me/phone", json!({"phone": "+14155552671"})).await;
    assert_eq!(r.status(), 429);
    // Other routes are not limited.
    assert_eq!(app.client.get(format!("{}/health/live", app.base)).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_believed_from_trusted_proxies_only() {
    let verify = |app: &crate::helpers::TestApp, client: &'static str| {
        app.client
            .post(format!("{}/api/auth/verify-otp", app.base))
            .header("x-forwarded-for", client)
            .json(&json!({"challenge_id": uuid::Uuid::new_v4(), "code": "123456"}))
            .send()
    };
    for trusted in [false, true] {
        let app = crate::helpers::spawn_app_with(Feed::Postgres, |s| {
            s.auth_rate_per_minute = 60;
            s.auth_rate_burst = 2;
            if trusted {
                s.trusted_proxies = vec!["127.0.0.1".to_owned()];
            }
        })
        .await;
        let mut statuses = Vec::new();
        for client in ["198.51.100.1", "198.51.100.1", "198.51.100.1", "198.51.100.2"] {
            statuses.push(verify(&app, client).await.unwrap().status().as_u16());
        }
        if trusted {
            // Each client behind the proxy has its own bucket.
            assert_eq!(statuses, vec![400, 400, 429, 400]);
        } else {
            // The header is ignored: one bucket, the connection's.
            assert_eq!(statuses, vec![400, 400, 429, 429]);
        }
    }
}

/// Serves `router` on a free port; returns its base URL.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_routes_are_shed_while_the_hash_queue_is_full() {
    use axum::routing::post;
    // One hashing thread kept busy: the jobs behind the first one wait.
    let hasher = commands::passwords::PasswordHasher::new(1).unwrap();
    let mut busy = Vec::new();
    for _ in 0..6 {
        let h = hasher.clone();
        busy.push(tokio::spawn(async move { h.hash("a long enough password").await }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while hasher.queued() < 2 {
        assert!(Instant::now() < deadline, "the queue never filled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let router = axum::Router::new()
        .route("/api/auth/login", post(|| async { "hashed" }))
        .route("/api/auth/other", post(|| async { "no hash" }))
        .layer(axum::middleware::from_fn_with_state((hasher.clone(), 1usize), api::http::shed_hashing));
    let base = serve(router).await;
    let client = reqwest::Client::new();
    let r = client.post(format!("{base}/api/auth/login")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "hashing_busy");
    // Routes that do not hash are not shed.
    assert_eq!(client.post(format!("{base}/api/auth/other")).send().await.unwrap().status(), 200);
    for b in busy {
        b.await.unwrap().unwrap();
    }
    // Drained: served again.
    assert_eq!(client.post(format!("{base}/api/auth/login")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_time_limit_is_answered_503() {
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/fast", get(|| async { "on time" }))
        .layer(axum::middleware::from_fn_with_state(Duration::from_millis(200), api::http::time_limit));
    let base = serve(router).await;
    let started = Instant::now();
    let r = reqwest::get(format!("{base}/slow")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(2), "answered at the limit, not after the handler");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "request_timeout");
    assert_eq!(reqwest::get(format!("{base}/fast")).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_is_the_servers_and_the_clients_is_kept_beside_it() {
    let app = spawn_app(Feed::Postgres).await;
    let r = app
        .client
        .post(format!("{}/api/auth/register", app.base))
        .header("x-request-id", "client-chosen-id")
        .json(&json!({"email": "rid@example.com", "password": "correct horse battery staple", "name": "Rid",
                      "username": "rid_user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let answered = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(answered, "client-chosen-id");
    assert!(answered.parse::<uuid::Uuid>().is_ok(), "a server-made UUID: {answered}");
    let metadata: Value = sqlx::query_scalar(
        "SELECT metadata::jsonb FROM events WHERE aggregate_type = 'user' AND event_type = 'UserRegistered'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(metadata["request_id"], answered.as_str(), "{metadata}");
    assert_eq!(metadata["client_request_id"], "client-chosen-id");
    // An over-long or odd client id is dropped, never stored.
    let r = app
        .client
        .get(format!("{}/health/ready", app.base))
        .header("x-request-id", "x".repeat(65))
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"].to_str().unwrap(), "x".repeat(65));
}
