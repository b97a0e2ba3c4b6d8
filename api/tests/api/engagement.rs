//! Likes, reposts and timestamped comments over HTTP (issue 16), through
//! the real broker: idempotency, access rules, counters exact live and
//! after a rebuild.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Feed, TestApp};
use crate::social::{get_after, member, send};

async fn track(app: &TestApp, token: &str, body: Value) -> (String, Option<String>) {
    let r = app
        .client
        .post(format!("{}/api/tracks", app.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let t: Value = r.json().await.unwrap();
    (t["id"].as_str().unwrap().to_owned(), t["secret_token"].as_str().map(str::to_owned))
}

fn token_of(r: &reqwest::Response) -> Option<String> {
    r.headers().get("x-consistency-token").map(|v| v.to_str().unwrap().to_owned())
}

async fn post_json(app: &TestApp, path: &str, token: &str, body: Value) -> reqwest::Response {
    app.client.post(format!("{}{path}", app.base)).bearer_auth(token).json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn likes_and_reposts_count_once_and_follow_the_access_rules() {
    let app = spawn_app(Feed::Kafka).await;
    let (_ann, ann_t) = member(&app, "ann").await;
    let (bob, bob_t) = member(&app, "bob").await;
    let (_cid, cid_t) = member(&app, "cid").await;
    let (public, _) = track(&app, &ann_t, json!({"title": "Open", "duration_ms": 60000})).await;
    let (private, secret) =
        track(&app, &ann_t, json!({"title": "Closed", "duration_ms": 60000, "visibility": "private"})).await;
    let secret = secret.unwrap();

    // A like: 201 with a token, then 200 and no event.
    let r = send(&app, reqwest::Method::POST, &format!("/api/tracks/{public}/like"), &bob_t).await;
    assert_eq!(r.status(), 201);
    let t = token_of(&r).unwrap();
    let r = send(&app, reqwest::Method::POST, &format!("/api/tracks/{public}/like"), &bob_t).await;
    assert_eq!(r.status(), 200);
    assert!(token_of(&r).is_none());
    // Sixteen concurrent likes from one user count once.
    let mut likes = Vec::new();
    for _ in 0..16 {
        let (client, url, tok) =
            (app.client.clone(), format!("{}/api/tracks/{public}/like", app.base), cid_t.clone());
        likes.push(tokio::spawn(async move {
            client.post(url).bearer_auth(tok).send().await.unwrap().status().as_u16()
        }));
    }
    let mut created = 0;
    for l in likes {
        if l.await.unwrap() == 201 {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    let liked: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'TrackLiked'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(liked, 2);
    let (status, got) = get_after(&app, &format!("/api/tracks/{public}"), None, Some(&t)).await;
    assert_eq!(status, 200, "{got}");
    let r = send(&app, reqwest::Method::POST, &format!("/api/tracks/{public}/repost"), &bob_t).await;
    assert_eq!(r.status(), 201);
    let t = token_of(&r).unwrap();
    let (_, got2) = get_after(&app, &format!("/api/tracks/{public}"), None, Some(&t)).await;
    assert!(got["counts"]["likes"].as_i64().unwrap() >= 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut counts = got2["counts"].clone();
    while counts["likes"] != 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        counts = get_after(&app, &format!("/api/tracks/{public}"), None, None).await.1["counts"].clone();
    }
    assert_eq!(counts, json!({"likes": 2, "reposts": 1, "comments": 0, "plays": 0}));
    let (_, likers) = get_after(&app, &format!("/api/tracks/{public}/likers"), None, None).await;
    assert_eq!(likers["items"].as_array().unwrap().len(), 2);
    let (_, mine) = get_after(&app, &format!("/api/users/{bob}/likes"), None, None).await;
    assert_eq!(mine["items"][0]["track_id"], public.as_str());
    let (_, reposts) = get_after(&app, &format!("/api/users/{bob}/reposts"), None, None).await;
    assert_eq!(reposts["items"].as_array().unwrap().len(), 1);

    // Private: refused without the token (404), allowed with it; never
    // listed for others.
    let path = format!("/api/tracks/{private}/like");
    assert_eq!(send(&app, reqwest::Method::POST, &path, &bob_t).await.status(), 404);
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("{path}?secret_token=nope"), &bob_t).await.status(),
        404
    );
    let r = send(&app, reqwest::Method::POST, &format!("{path}?secret_token={secret}"), &bob_t).await;
    assert_eq!(r.status(), 201);
    let t = token_of(&r).unwrap();
    let (_, theirs) = get_after(&app, &format!("/api/users/{bob}/likes"), Some(&cid_t), Some(&t)).await;
    assert_eq!(theirs["items"].as_array().unwrap().len(), 1, "the private like is not listed: {theirs}");

    // Between blocked users: refused; unliking stays possible.
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/block"), &ann_t).await.status(),
        204
    );
    let r = send(&app, reqwest::Method::POST, &format!("/api/tracks/{public}/repost"), &bob_t).await;
    assert_eq!(r.status(), 404, "refused between blocked users");
    let (other, _) = track(&app, &ann_t, json!({"title": "Another", "duration_ms": 1000})).await;
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/tracks/{other}/like"), &bob_t).await.status(),
        404
    );
    let r = send(&app, reqwest::Method::DELETE, &format!("/api/tracks/{public}/like"), &bob_t).await;
    assert_eq!(r.status(), 204);
    assert!(token_of(&r).is_some());
    let r = send(&app, reqwest::Method::DELETE, &format!("/api/tracks/{public}/like"), &bob_t).await;
    assert!(token_of(&r).is_none(), "nothing to unlike: no event");

    // Counters equal their edge sets, live and after a rebuild.
    wait_engagement(&app).await;
    let exact = || async {
        let wrong: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rm_track_stats s WHERE
                s.likes_count <> (SELECT count(*) FROM rm_likes l WHERE l.track_id = s.track_id AND l.active)
             OR s.reposts_count <> (SELECT count(*) FROM rm_reposts r WHERE r.track_id = s.track_id AND r.active)
             OR s.comments_count <> (SELECT count(*) FROM rm_comments c WHERE c.track_id = s.track_id AND NOT c.deleted)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(wrong, 0);
    };
    exact().await;
    let before: Vec<(uuid::Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT track_id, likes_count, reposts_count, comments_count FROM rm_track_stats ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let runner = projections::runtime::ProjectionRunner::new(
        app.pool.clone(),
        vec![std::sync::Arc::new(projections::social::engagement::EngagementProjector)],
    );
    runner.rebuild("engagement", 10).await.unwrap();
    let after: Vec<(uuid::Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT track_id, likes_count, reposts_count, comments_count FROM rm_track_stats ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(before, after);
    exact().await;
}

/// Waits until every engagement and comment event is in the read model.
async fn wait_engagement(app: &TestApp) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT aggregate_type, aggregate_id, max(sequence) AS s FROM events
                                   WHERE aggregate_type IN ('engagement', 'comment') GROUP BY 1, 2) e
             WHERE e.s > COALESCE(CASE WHEN e.aggregate_type = 'comment'
                 THEN (SELECT seq FROM rm_comments WHERE comment_id::text = e.aggregate_id)
                 ELSE GREATEST(
                     (SELECT seq FROM rm_likes WHERE user_id::text || ':' || track_id::text = e.aggregate_id),
                     (SELECT seq FROM rm_reposts WHERE user_id::text || ':' || track_id::text = e.aggregate_id)) END, 0)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if behind == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{behind} streams not projected");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timestamped_comments_replies_and_deletion() {
    let app = spawn_app(Feed::Postgres).await;
    let (_ann, ann_t) = member(&app, "ann").await;
    let (bob, bob_t) = member(&app, "bob").await;
    let (_cid, cid_t) = member(&app, "cid").await;
    let (id, _) = track(&app, &ann_t, json!({"title": "Waves", "duration_ms": 120000})).await;
    let path = format!("/api/tracks/{id}/comments");

    let r = post_json(&app, &path, &bob_t, json!({"body": "the drop", "timestamp_ms": 90000})).await;
    assert_eq!(r.status(), 201);
    let late: Value = r.json().await.unwrap();
    let r = post_json(&app, &path, &cid_t, json!({"body": "intro", "timestamp_ms": 1000})).await;
    let early: Value = r.json().await.unwrap();
    let r = post_json(&app, &path, &cid_t, json!({"body": "untimed"})).await;
    assert_eq!(r.status(), 201);
    let r = post_json(&app, &path, &ann_t, json!({"body": "thanks", "reply_to": late["id"]})).await;
    assert_eq!(r.status(), 201);
    let t = token_of(&r).unwrap();
    let reply: Value = r.json().await.unwrap();

    // Refusals name the field and write nothing.
    let comments_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'comment'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    for (body, field) in [
        (json!({"body": "", "timestamp_ms": 1}), "body"),
        (json!({"body": "x".repeat(1001)}), "body"),
        (json!({"body": "late", "timestamp_ms": 120001}), "timestamp_ms"),
        (json!({"body": "neg", "timestamp_ms": -1}), "timestamp_ms"),
        (json!({"body": "deep", "reply_to": reply["id"]}), "reply_to"),
        (json!({"body": "nowhere", "reply_to": uuid::Uuid::now_v7()}), "reply_to"),
    ] {
        let r = post_json(&app, &path, &bob_t, body.clone()).await;
        let status = r.status().as_u16();
        let err: Value = r.json().await.unwrap();
        assert_eq!((status, err["field"].as_str()), (422, Some(field)), "{body}: {err}");
    }
    let comments_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'comment'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(comments_before, comments_after);

    // By the moment of the track (untimed last), or newest first.
    let (_, page) = get_after(&app, &format!("{path}?order=timestamp"), None, Some(&t)).await;
    let bodies: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|c| c["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["intro", "the drop", "untimed", "thanks"], "{page}");
    let (_, page) = get_after(&app, &format!("{path}?order=newest&limit=2"), None, None).await;
    let bodies: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|c| c["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["thanks", "untimed"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page2) =
        get_after(&app, &format!("{path}?order=newest&limit=2&cursor={cursor}"), None, None).await;
    let bodies: Vec<&str> =
        page2["items"].as_array().unwrap().iter().map(|c| c["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["intro", "the drop"]);
    assert_eq!(get_after(&app, &format!("{path}?order=random"), None, None).await.0, 422);

    // Deletion: a stranger may not; the author and the track's owner may.
    let del = |id: &str, t: &str| {
        let (path, t, app) = (format!("/api/comments/{id}"), t.to_owned(), &app);
        async move { send(app, reqwest::Method::DELETE, &path, &t).await }
    };
    assert_eq!(del(late["id"].as_str().unwrap(), &cid_t).await.status(), 403);
    let r = del(late["id"].as_str().unwrap(), &ann_t).await;
    assert_eq!(r.status(), 204, "the track's owner");
    let t = token_of(&r).unwrap();
    assert_eq!(del(early["id"].as_str().unwrap(), &cid_t).await.status(), 204, "the author");
    assert_eq!(del(early["id"].as_str().unwrap(), &cid_t).await.status(), 404, "already gone");
    let (_, page) = get_after(&app, &format!("{path}?order=timestamp"), None, Some(&t)).await;
    let drop = page["items"].as_array().unwrap().iter().find(|c| c["id"] == late["id"]).unwrap().clone();
    assert_eq!((drop["deleted"].as_bool(), drop["body"].is_null()), (Some(true), true), "tombstone: {drop}");
    assert!(page["items"].as_array().unwrap().iter().any(|c| c["id"] == reply["id"]), "the reply stays");

    // A block hides each side's comments from the other.
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/block"), &cid_t).await.status(),
        204
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, page) = get_after(&app, &format!("{path}?order=newest"), Some(&cid_t), None).await;
        let by_bob =
            page["items"].as_array().unwrap().iter().any(|c| c["author_id"] == bob.to_string().as_str());
        if !by_bob {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bob's comments still shown to cid");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let (_, page) = get_after(&app, &format!("{path}?order=newest"), Some(&ann_t), None).await;
    assert!(page["items"].as_array().unwrap().iter().any(|c| c["author_id"] == bob.to_string().as_str()));
    let (_, t) = get_after(&app, &format!("/api/tracks/{id}"), None, None).await;
    assert_eq!(t["counts"]["comments"], 2, "four posted, two deleted: {t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifications_group_per_track_and_kind_and_honour_mutes() {
    let app = spawn_app(Feed::Kafka).await;
    let (ann, ann_t) = member(&app, "ann").await;
    let (bob, bob_t) = member(&app, "bob").await;
    let (cid, cid_t) = member(&app, "cid").await;
    let (dan, dan_t) = member(&app, "dan").await;
    let (id, _) = track(&app, &ann_t, json!({"title": "Waves", "duration_ms": 120000})).await;
    for t in [&bob_t, &cid_t] {
        assert_eq!(
            send(&app, reqwest::Method::POST, &format!("/api/tracks/{id}/like"), t).await.status(),
            201
        );
    }
    // Liking one's own track tells nobody.
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/tracks/{id}/like"), &ann_t).await.status(),
        201
    );
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/users/{ann}/follow"), &dan_t).await.status(),
        201
    );
    let r = post_json(&app, &format!("/api/tracks/{id}/comments"), &bob_t, json!({"body": "nice"})).await;
    let parent: Value = r.json().await.unwrap();
    let r = post_json(
        &app,
        &format!("/api/tracks/{id}/comments"),
        &cid_t,
        json!({"body": "agreed", "reply_to": parent["id"]}),
    )
    .await;
    assert_eq!(r.status(), 201);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let page = loop {
        let (status, page) = get_after(&app, "/api/notifications", Some(&ann_t), None).await;
        assert_eq!(status, 200, "{page}");
        // Wait for all five notices (two likes, a follow, a comment and a
        // reply), not just three groups: the reply may land a moment later.
        let notices: u64 = page["items"].as_array().unwrap().iter().filter_map(|g| g["count"].as_u64()).sum();
        if notices == 5 || std::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let items = page["items"].as_array().unwrap();
    let find = |kind: &str| items.iter().find(|g| g["kind"] == kind).cloned().unwrap_or(Value::Null);
    assert_eq!(find("like")["count"], 2, "{page}");
    assert_eq!(find("like")["actors"].as_array().unwrap().len(), 2);
    assert_eq!(find("follow")["actors"], json!([dan.to_string()]));
    assert_eq!(find("comment")["count"], 2, "bob's comment and cid's reply on ann's track: {page}");
    // Bob is told of the reply to his comment.
    let (_, bobs) = app
        .wait_for("/api/notifications", &bob_t, |_, b| b["items"].as_array().is_some_and(|i| !i.is_empty()))
        .await;
    assert_eq!(bobs["items"][0]["kind"], "reply");
    assert_eq!(bobs["items"][0]["actors"], json!([cid.to_string()]));

    let (_, unread) = get_after(&app, "/api/notifications/unread", Some(&ann_t), None).await;
    assert_eq!(unread["unread"], 5, "two likes, a follow, two comments");
    // A mute hides the muted one's notices (and lifting it shows them).
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/mute"), &ann_t).await;
    let t = token_of(&r).unwrap();
    let (_, unread) = get_after(&app, "/api/notifications/unread", Some(&ann_t), Some(&t)).await;
    assert_eq!(unread["unread"], 3);
    // Marking read up to the newest group's time: nothing unread; an
    // older mark afterwards changes nothing.
    let newest = items[0]["latest_at"].clone();
    let r = post_json(&app, "/api/notifications/read", &ann_t, json!({"up_to": newest})).await;
    assert_eq!(r.status(), 204);
    let t = token_of(&r).unwrap();
    let (_, unread) = get_after(&app, "/api/notifications/unread", Some(&ann_t), Some(&t)).await;
    assert_eq!(unread["unread"], 0);
    let r =
        post_json(&app, "/api/notifications/read", &ann_t, json!({"up_to": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(r.status(), 204);
    assert!(token_of(&r).is_none(), "marks only move forward");
    let (_, page) = get_after(&app, "/api/notifications", Some(&ann_t), None).await;
    assert!(page["items"].as_array().unwrap().iter().all(|g| g["unread"] == false), "{page}");
}
