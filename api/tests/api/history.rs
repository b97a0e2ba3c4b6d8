//! History for admins (issue 18, first part): the event log with every
//! filter, personal fields opened while the key exists and `[erased]`
//! after, each such read recorded, and aggregate state as of a time or a
//! position.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Feed, TestApp};
use crate::social::member;

async fn get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let r = app.client.get(format!("{}{path}", app.base)).bearer_auth(token).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn types(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_event_log_filters_opens_personal_fields_records_reads_and_folds_as_of() {
    let app = spawn_app(Feed::Postgres).await;
    let (chief, chief_t) = member(&app, "chief").await;
    let (ann, _ann_t) = member(&app, "ann").await;
    let (bob, bob_t) = member(&app, "bob").await;
    let node = api::app::App::build(app.settings.clone()).await.unwrap();
    node.operator_set_role("chief@example.com", "admin", true).await.unwrap();
    node.pool.close().await;

    // Ann's registration, personal fields opened for the admin; the
    // password hash never.
    let path = format!("/api/admin/events?aggregate_type=user&aggregate_id={ann}");
    let (status, page) = get(&app, &path, &chief_t).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(types(&page)[0], "UserRegistered", "{page}");
    let registered = &page["items"][0]["payload"];
    assert_eq!(registered["email"], "ann@example.com");
    assert_eq!(registered["name"], "ann");
    assert!(!page.to_string().contains("argon2"), "no password hash is shown: {page}");
    // The read is recorded: who read whose history.
    let reads: Vec<Value> = sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE aggregate_type = 'access' AND aggregate_id = $1
           AND event_type = 'HistoryRead'",
    )
    .bind(chief.to_string())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0]["HistoryRead"]["subjects"], json!([ann.to_string()]));

    // Filters: event type, actor, time window, and position paging.
    let (_, page) = get(&app, "/api/admin/events?event_type=UsernameChanged", &chief_t).await;
    assert!(types(&page).iter().all(|t| t == "UsernameChanged") && !types(&page).is_empty(), "{page}");
    let before_follow = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = app
        .client
        .post(format!("{}/api/users/{ann}/follow", app.base))
        .bearer_auth(&bob_t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = app
        .client
        .delete(format!("{}/api/users/{ann}/follow", app.base))
        .bearer_auth(&bob_t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, page) =
        get(&app, &format!("/api/admin/events?actor={bob}&aggregate_type=relationship"), &chief_t).await;
    assert_eq!(types(&page), ["UserFollowed", "UserUnfollowed"], "{page}");
    let window = format!(
        "/api/admin/events?aggregate_type=relationship&from={}&to={}",
        urlencode(&before_follow.to_rfc3339()),
        urlencode(&between.to_rfc3339())
    );
    let (_, page) = get(&app, &window, &chief_t).await;
    assert_eq!(types(&page), ["UserFollowed"], "{page}");
    let (_, first) = get(&app, "/api/admin/events?limit=2", &chief_t).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let after = first["next_after_position"].as_i64().unwrap();
    let (_, second) = get(&app, &format!("/api/admin/events?limit=2&after_position={after}"), &chief_t).await;
    assert!(second["items"][0]["position"].as_i64().unwrap() > after);
    for bad in ["/api/admin/events?limit=0", "/api/admin/events?limit=1001"] {
        assert_eq!(get(&app, bad, &chief_t).await.0, 422);
    }

    // The pair's state as of a time between follow and unfollow, as of a
    // position, and now.
    let pair = domain::social::relationship::pair_id(ann, bob);
    let as_of = |q: String| {
        let (app, chief_t, pair) = (&app, chief_t.clone(), pair.clone());
        async move { get(app, &format!("/api/admin/aggregates/relationship/{pair}?as_of={q}"), &chief_t).await }
    };
    let (status, then) = as_of(urlencode(&between.to_rfc3339())).await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(then["state"]["follows"], json!([[bob.to_string(), ann.to_string()]]), "{then}");
    assert_eq!(then["version"], 1);
    let followed_at = then["events"][0]["position"].as_i64().unwrap();
    let (_, by_position) = as_of(followed_at.to_string()).await;
    assert_eq!(by_position["state"], then["state"]);
    let (_, now) = get(&app, &format!("/api/admin/aggregates/relationship/{pair}"), &chief_t).await;
    assert_eq!(now["state"]["follows"], json!([]));
    assert_eq!(now["version"], 2);
    let (status, _) = as_of(urlencode(&before_follow.to_rfc3339())).await;
    assert_eq!(status, 404, "no events by then");
    assert_eq!(as_of("yesterday".to_owned()).await.0, 422);
    let (status, _) = get(&app, &format!("/api/admin/aggregates/playlist/{ann}"), &chief_t).await;
    assert_eq!(status, 422);
    // Every aggregate type folds: the user, a session-less account's own stream.
    let (status, user) = get(&app, &format!("/api/admin/aggregates/user/{ann}"), &chief_t).await;
    assert_eq!(status, 200, "{user}");

    // The projection status page: every projector live, caught up in time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let (code, status) = get(&app, "/api/admin/projections", &chief_t).await;
        assert_eq!(code, 200, "{status}");
        let profiles = status.as_array().unwrap().iter().find(|p| p["name"] == "profiles").cloned().unwrap();
        if profiles["applied"].as_i64().unwrap_or(0) > 0 || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = status.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"home_feed") && names.contains(&"moderation"), "{status}");
    let profiles = status.as_array().unwrap().iter().find(|p| p["name"] == "profiles").unwrap();
    assert_eq!(profiles["state"], "live", "{status}");
    assert!(profiles["position"].as_i64().unwrap() > 0);
    let (code, _) = get(&app, "/api/admin/projections", &bob_t).await;
    assert_eq!(code, 403);

    // The event catalogue: every type with its schema.
    let (code, catalogue) = get(&app, "/api/admin/event-types", &chief_t).await;
    assert_eq!(code, 200);
    let registered =
        catalogue.as_array().unwrap().iter().find(|t| t["event_type"] == "UserRegistered").cloned().unwrap();
    assert_eq!(registered["aggregate_type"], "user");
    assert_eq!(registered["versions"], json!(["1"]));
    assert_eq!(registered["schema"]["additionalProperties"], false);
    assert!(registered["schema"]["required"].as_array().unwrap().contains(&json!("email")));

    // After the subject's key is gone, personal fields read "[erased]".
    sqlx::query("DELETE FROM subject_keys WHERE subject_id = $1").bind(ann).execute(&app.pool).await.unwrap();
    let node = api::app::App::build(app.settings.clone()).await.unwrap();
    let fresh = node.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, fresh).await });
    let r = app.client.get(format!("{base}{path}")).bearer_auth(&chief_t).send().await.unwrap();
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["items"][0]["payload"]["email"], "[erased]", "{page}");
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}
