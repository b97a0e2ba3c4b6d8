//! Tracks' metadata over HTTP (issue 15): create, read, edit, delete,
//! private links, lists, the slug resolver, and bad input writing nothing.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Feed, TestApp};
use crate::social::{get_after, member};

async fn create(app: &TestApp, token: &str, body: Value) -> (u16, Value, Option<String>) {
    let r = app
        .client
        .post(format!("{}/api/tracks", app.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let consistency = r.headers().get("x-consistency-token").map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap_or(Value::Null), consistency)
}

async fn events(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'track'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tracks_are_created_read_edited_and_deleted() {
    let app = spawn_app(Feed::Kafka).await;
    let (ann, ann_t) = member(&app, "ann").await;
    let (_bob, bob_t) = member(&app, "bob").await;
    let body = json!({"title": "Night Drive", "description": "late", "genre": "synthwave",
                      "tags": ["retro", "Retro", "drive"], "duration_ms": 180000});
    let (status, t, token) = create(&app, &ann_t, body.clone()).await;
    assert_eq!(status, 201, "{t}");
    assert_eq!((t["slug"].as_str(), t["visibility"].as_str()), (Some("night-drive"), Some("public")));
    assert_eq!(t["processing"], "no_audio");
    assert_eq!(t["tags"], json!(["retro", "drive"]), "duplicate tags dropped");
    assert_eq!(t["counts"], json!({"likes": 0, "reposts": 0, "comments": 0, "plays": 0}));
    assert!(t.get("secret_token").is_none());
    let id = t["id"].as_str().unwrap().to_owned();
    // A second track of the same title gets the next slug.
    let (_, t2, _) = create(&app, &ann_t, body).await;
    assert_eq!(t2["slug"], "night-drive-2");

    // Read back at once with the token, by anyone.
    let (status, got) = get_after(&app, &format!("/api/tracks/{id}"), Some(&bob_t), token.as_deref()).await;
    assert_eq!((status, got["title"].as_str()), (200, Some("Night Drive")));
    // Resolve /{username}/{slug} and /{username}.
    let (status, r) = get_after(&app, "/api/resolve?url=/ann/night-drive", None, token.as_deref()).await;
    assert_eq!((status, r["type"].as_str(), r["id"].as_str()), (200, Some("track"), Some(id.as_str())));
    let (_, r) = get_after(&app, "/api/resolve?url=https://streamforge.example/ann", None, None).await;
    assert_eq!((r["type"].as_str(), r["id"].as_str()), (Some("user"), Some(ann.to_string().as_str())));
    assert_eq!(get_after(&app, "/api/resolve?url=/ann/no-such-track", None, None).await.0, 404);

    // Only the owner edits or deletes.
    let put = |t: &str, body: Value| {
        app.client.put(format!("{}/api/tracks/{id}", app.base)).bearer_auth(t.to_owned()).json(&body).send()
    };
    let r = put(&bob_t, json!({"title": "Mine now"})).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_track_owner");
    let r = put(&ann_t, json!({"title": "Night Drive (Remix)", "genre": "house"})).await.unwrap();
    assert_eq!(r.status(), 200);
    let token = r.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let (_, got) = get_after(&app, &format!("/api/tracks/{id}"), None, Some(&token)).await;
    assert_eq!((got["title"].as_str(), got["genre"].as_str()), (Some("Night Drive (Remix)"), Some("house")));
    assert_eq!(got["slug"], "night-drive", "links do not move when a title changes");
    let r =
        app.client.delete(format!("{}/api/tracks/{id}", app.base)).bearer_auth(&bob_t).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r =
        app.client.delete(format!("{}/api/tracks/{id}", app.base)).bearer_auth(&ann_t).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let token = r.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let (status, _) = get_after(&app, &format!("/api/tracks/{id}"), None, Some(&token)).await;
    assert_eq!(status, 404);
    let (_, list) = get_after(&app, &format!("/api/users/{ann}/tracks"), None, Some(&token)).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let r =
        app.client.delete(format!("{}/api/tracks/{id}", app.base)).bearer_auth(&ann_t).send().await.unwrap();
    assert_eq!(r.status(), 404, "deleted is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_track_is_seen_by_its_owner_and_token_holders_only() {
    let app = spawn_app(Feed::Postgres).await;
    let (ann, ann_t) = member(&app, "ann").await;
    let (_bob, bob_t) = member(&app, "bob").await;
    let (status, t, token) =
        create(&app, &ann_t, json!({"title": "Demo", "duration_ms": 1000, "visibility": "private"})).await;
    assert_eq!(status, 201);
    let secret = t["secret_token"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 22, "at least 128 bits");
    let id = t["id"].as_str().unwrap().to_owned();
    let path = format!("/api/tracks/{id}");
    // The owner sees it (and its token); others do not, unless they hold it.
    let (status, own) = get_after(&app, &path, Some(&ann_t), token.as_deref()).await;
    assert_eq!((status, own["secret_token"].as_str()), (200, Some(secret.as_str())));
    assert_eq!(get_after(&app, &path, Some(&bob_t), None).await.0, 404);
    assert_eq!(get_after(&app, &path, None, None).await.0, 404);
    assert_eq!(get_after(&app, &format!("{path}?secret_token=wrong"), None, None).await.0, 404);
    let (status, shared) = get_after(&app, &format!("{path}?secret_token={secret}"), None, None).await;
    assert_eq!(status, 200);
    assert!(shared.get("secret_token").is_none(), "only the owner is shown the token");
    // Never listed or counted for others.
    let (_, list) = get_after(&app, &format!("/api/users/{ann}/tracks"), Some(&bob_t), None).await;
    assert!(list["items"].as_array().unwrap().is_empty());
    let (_, profile) = get_after(&app, &format!("/api/users/{ann}"), Some(&bob_t), None).await;
    assert_eq!(profile["tracks_count"], 0);
    let (_, list) = get_after(&app, &format!("/api/users/{ann}/tracks"), Some(&ann_t), None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(get_after(&app, "/api/resolve?url=/ann/demo", None, None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_track_input_names_the_field_and_writes_nothing() {
    let app = spawn_app(Feed::Postgres).await;
    let (_ann, ann_t) = member(&app, "ann").await;
    let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    let cases = [
        (json!({"title": "", "duration_ms": 1}), "title"),
        (json!({"title": "x".repeat(101), "duration_ms": 1}), "title"),
        (json!({"title": "bell\u{7}", "duration_ms": 1}), "title"),
        (json!({"title": "ok", "duration_ms": 1, "tags": eleven}), "tags"),
        (json!({"title": "ok", "duration_ms": 1, "tags": ["x".repeat(31)]}), "tags"),
        (json!({"title": "ok", "duration_ms": -5}), "duration_ms"),
        (json!({"title": "ok", "duration_ms": 86_400_001}), "duration_ms"),
        (json!({"title": "ok", "duration_ms": 1, "visibility": "unlisted"}), "visibility"),
        (json!({"title": "ok", "duration_ms": 1, "description": "d".repeat(4001)}), "description"),
    ];
    for (body, field) in cases {
        let (status, err, _) = create(&app, &ann_t, body.clone()).await;
        assert_eq!((status, err["field"].as_str()), (422, Some(field)), "{body}: {err}");
    }
    let (status, err, _) = create(&app, &ann_t, json!({"title": "ok"})).await;
    assert_eq!((status, err["code"].as_str()), (422, Some("invalid_body")));
    let r = app
        .client
        .put(format!("{}/api/tracks/not-a-uuid", app.base))
        .bearer_auth(&ann_t)
        .json(&json!({"title": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(events(&app).await, 0, "nothing written");
    let (_, t, _) = create(&app, &ann_t, json!({"title": "ok", "duration_ms": 5})).await;
    let id = t["id"].as_str().unwrap();
    let r = app
        .client
        .put(format!("{}/api/tracks/{id}", app.base))
        .bearer_auth(&ann_t)
        .json(&json!({"duration_ms": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(events(&app).await, 1, "a refused edit writes nothing");
}
