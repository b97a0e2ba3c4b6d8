//! The home feed over HTTP (issue 16): fan-out on write through the real
//! broker, pulls on follow, removals, blocks and mutes at read, the repost
//! dedupe, the read-time merge of authors above the fan-out threshold, the
//! cap, the per-user rebuild and a full replay.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, Feed, TestApp};
use crate::social::{get_after, member, send};

fn token_of(r: &reqwest::Response) -> String {
    r.headers().get("x-consistency-token").expect("a write answers a token").to_str().unwrap().to_owned()
}

/// Posts a track; its id and the consistency token.
async fn post_track(app: &TestApp, token: &str, title: &str, private: bool) -> (String, String) {
    let visibility = if private { "private" } else { "public" };
    let r = app
        .client
        .post(format!("{}/api/tracks", app.base))
        .bearer_auth(token)
        .json(&json!({"title": title, "duration_ms": 60000, "visibility": visibility}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let t = token_of(&r);
    let body: Value = r.json().await.unwrap();
    (body["id"].as_str().unwrap().to_owned(), t)
}

/// `(type, actor, track title)` of each item of `user`'s first feed page,
/// read after `after`.
async fn feed_of(app: &TestApp, token: &str, after: Option<&str>) -> Vec<(String, String, String)> {
    let (status, page) = get_after(app, "/api/feed", Some(token), after).await;
    assert_eq!(status, 200, "{page}");
    items(&page)
}

fn items(page: &Value) -> Vec<(String, String, String)> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["type"].as_str().unwrap().to_owned(),
                i["actor"].as_str().unwrap().to_owned(),
                i["track"]["title"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn item(kind: &str, actor: Uuid, title: &str) -> (String, String, String) {
    (kind.to_owned(), actor.to_string(), title.to_owned())
}

/// Waits until the home feed projector has applied every relationship,
/// track and repost event in the store.
async fn wait_home_feed(app: &TestApp) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let projector = projections::social::home::HomeFeedProjector::default();
    loop {
        let heads: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, max(sequence) FROM events
             WHERE aggregate_type IN ('relationship', 'track', 'engagement') GROUP BY 1, 2",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        let mut behind = 0;
        for (kind, id, seq) in heads {
            use projections::runtime::Projector;
            if !projector.has_applied(&app.pool, &kind, &id, seq).await.unwrap() {
                behind += 1;
            }
        }
        if behind == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{behind} streams not in the home feed");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_home_feed_fans_out_pulls_removes_and_hides_through_the_broker() {
    let app = spawn_app(Feed::Kafka).await;
    let (ann, ann_t) = member(&app, "ann").await;
    let (_bob, bob_t) = member(&app, "bob").await;
    let (cid, cid_t) = member(&app, "cid").await;
    let (dan, dan_t) = member(&app, "dan").await;
    let (_eve, eve_t) = member(&app, "eve").await;
    let follow = |token: String, who: Uuid| {
        let app = &app;
        async move {
            let r = send(app, reqwest::Method::POST, &format!("/api/users/{who}/follow"), &token).await;
            assert_eq!(r.status(), 201);
            token_of(&r)
        }
    };
    follow(bob_t.clone(), ann).await;
    follow(bob_t.clone(), cid).await;
    let t = follow(dan_t.clone(), cid).await;
    assert!(feed_of(&app, &dan_t, Some(&t)).await.is_empty(), "nothing posted yet");

    // A post reaches its author's followers, a private one nobody.
    let (one, t) = post_track(&app, &ann_t, "One", false).await;
    let (_secret, t2) = post_track(&app, &ann_t, "Secret", true).await;
    assert_eq!(feed_of(&app, &bob_t, Some(&t)).await, vec![item("post", ann, "One")]);
    assert_eq!(feed_of(&app, &bob_t, Some(&t2)).await, vec![item("post", ann, "One")]);
    assert!(feed_of(&app, &ann_t, Some(&t)).await.is_empty(), "one's own posts are not in one's feed");

    // A repost reaches the reposter's followers; bob, who already has the
    // track among his newest 40 items, is not given it again.
    let r = send(&app, reqwest::Method::POST, &format!("/api/tracks/{one}/repost"), &cid_t).await;
    assert_eq!(r.status(), 201);
    let t = token_of(&r);
    assert_eq!(feed_of(&app, &dan_t, Some(&t)).await, vec![item("repost", cid, "One")]);
    assert_eq!(feed_of(&app, &bob_t, Some(&t)).await, vec![item("post", ann, "One")]);

    // The reader's own like and repost, and the counters, come with the item.
    let r = send(&app, reqwest::Method::POST, &format!("/api/tracks/{one}/like"), &bob_t).await;
    let t = token_of(&r);
    let (_, page) = get_after(&app, "/api/feed", Some(&bob_t), Some(&t)).await;
    let track = &page["items"][0]["track"];
    assert_eq!(track["liked_by_me"], true, "{page}");
    assert_eq!(track["reposted_by_me"], false);
    assert_eq!(track["counts"], json!({"likes": 1, "reposts": 1, "comments": 0}));
    assert_eq!(track["owner"], ann.to_string());

    // Following pulls the followee's newest posts in; unfollowing removes them.
    let t = follow(eve_t.clone(), ann).await;
    assert_eq!(feed_of(&app, &eve_t, Some(&t)).await, vec![item("post", ann, "One")]);
    let r = send(&app, reqwest::Method::DELETE, &format!("/api/users/{ann}/follow"), &eve_t).await;
    assert!(feed_of(&app, &eve_t, Some(&token_of(&r))).await.is_empty());

    // A mute hides the muted owner's track even as someone else's repost;
    // unmuting shows it again; a block by the owner hides it too.
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{ann}/mute"), &dan_t).await;
    assert!(feed_of(&app, &dan_t, Some(&token_of(&r))).await.is_empty());
    let r = send(&app, reqwest::Method::DELETE, &format!("/api/users/{ann}/mute"), &dan_t).await;
    assert_eq!(feed_of(&app, &dan_t, Some(&token_of(&r))).await, vec![item("repost", cid, "One")]);
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{dan}/block"), &ann_t).await;
    assert_eq!(r.status(), 204);
    assert!(feed_of(&app, &dan_t, Some(&token_of(&r))).await.is_empty());

    // Made private: gone from the feed; public again: back.
    let (two, t) = post_track(&app, &ann_t, "Two", false).await;
    assert_eq!(
        feed_of(&app, &bob_t, Some(&t)).await,
        vec![item("post", ann, "Two"), item("post", ann, "One")]
    );
    let update = |visibility: &'static str| {
        let (app, ann_t, two) = (&app, ann_t.clone(), two.clone());
        async move {
            let r = app
                .client
                .put(format!("{}/api/tracks/{two}", app.base))
                .bearer_auth(&ann_t)
                .json(&json!({"visibility": visibility}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            token_of(&r)
        }
    };
    let t = update("private").await;
    assert_eq!(feed_of(&app, &bob_t, Some(&t)).await, vec![item("post", ann, "One")]);
    let t = update("public").await;
    assert_eq!(
        feed_of(&app, &bob_t, Some(&t)).await,
        vec![item("post", ann, "Two"), item("post", ann, "One")]
    );

    // Live feeds survive a full replay of the home feed projector.
    wait_home_feed(&app).await;
    let mut live = Vec::new();
    for t in [&ann_t, &bob_t, &cid_t, &dan_t, &eve_t] {
        live.push(feed_of(&app, t, None).await);
    }
    let runner = projections::runtime::ProjectionRunner::new(
        app.pool.clone(),
        vec![std::sync::Arc::new(projections::social::home::HomeFeedProjector::default())],
    );
    runner.rebuild("home_feed", 7).await.unwrap();
    let mut replayed = Vec::new();
    for t in [&ann_t, &bob_t, &cid_t, &dan_t, &eve_t] {
        replayed.push(feed_of(&app, t, None).await);
    }
    assert_eq!(live, replayed);

    crate::helpers::assert_events_match_schemas(&app.pool).await;
    // Deleting a track removes it from every feed (rows included).
    let r = send(&app, reqwest::Method::DELETE, &format!("/api/tracks/{one}"), &ann_t).await;
    assert_eq!(r.status(), 204);
    assert_eq!(feed_of(&app, &bob_t, Some(&token_of(&r))).await, vec![item("post", ann, "Two")]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM feed_items WHERE track_id = $1")
        .bind(one.parse::<Uuid>().unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authors_above_the_fan_out_threshold_are_merged_at_read_time() {
    let app = spawn_app_with(Feed::Postgres, |s| s.feed_fanout_max_followers = 1).await;
    let (ann, ann_t) = member(&app, "ann").await;
    let (bob, bob_t) = member(&app, "bob").await;
    let (_cid, cid_t) = member(&app, "cid").await;
    let (dan, dan_t) = member(&app, "dan").await;
    for (token, who) in [(&bob_t, ann), (&cid_t, ann), (&bob_t, dan)] {
        let r = send(&app, reqwest::Method::POST, &format!("/api/users/{who}/follow"), token).await;
        assert_eq!(r.status(), 201);
    }
    // Ann has two followers (> 1): not fanned out. Dan has one: fanned out.
    let (a1, _) = post_track(&app, &ann_t, "A1", false).await;
    let (_, _) = post_track(&app, &dan_t, "D1", false).await;
    let (_, t) = post_track(&app, &ann_t, "A2", false).await;
    let expected = vec![item("post", ann, "A2"), item("post", dan, "D1"), item("post", ann, "A1")];
    assert_eq!(feed_of(&app, &bob_t, Some(&t)).await, expected);
    let fanned: i64 = sqlx::query_scalar("SELECT count(*) FROM feed_items WHERE actor_id = $1")
        .bind(ann)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(fanned, 0, "ann's posts are merged at read, not written per follower");

    // Pages of one walk the merged and fanned-out items in order.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/feed?limit=1&cursor={c}"),
            None => "/api/feed?limit=1".to_owned(),
        };
        let (status, page) = get_after(&app, &path, Some(&bob_t), None).await;
        assert_eq!(status, 200, "{page}");
        walked.extend(items(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(walked.len() <= 3, "{walked:?}");
    }
    assert_eq!(walked, expected);

    // A large account's repost is merged too; unfollowing ends the merge.
    let r = send(&app, reqwest::Method::POST, &format!("/api/tracks/{a1}/repost"), &ann_t).await;
    assert_eq!(r.status(), 201);
    let got = feed_of(&app, &cid_t, Some(&token_of(&r))).await;
    assert_eq!(got, vec![item("repost", ann, "A1"), item("post", ann, "A2"), item("post", ann, "A1")]);
    let r = send(&app, reqwest::Method::DELETE, &format!("/api/users/{ann}/follow"), &cid_t).await;
    assert!(feed_of(&app, &cid_t, Some(&token_of(&r))).await.is_empty());

    // Bad pages are refused.
    for path in ["/api/feed?limit=0", "/api/feed?limit=51", "/api/feed?cursor=nope"] {
        let (status, body) = get_after(&app, path, Some(&bob_t), None).await;
        assert_eq!(status, 422, "{path}: {body}");
    }
    let (status, _) = get_after(&app, "/api/feed", None, None).await;
    assert_eq!(status, 401);

    // Bob's rebuilt feed equals his live one (ann's items stay merged).
    wait_home_feed(&app).await;
    let live = feed_of(&app, &bob_t, None).await;
    let mut conn = app.pool.acquire().await.unwrap();
    let written = projections::social::home::rebuild_user_feed(&mut conn, bob).await.unwrap();
    assert_eq!(written, 1, "dan's one post; ann's are merged at read");
    assert_eq!(feed_of(&app, &bob_t, None).await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_keeps_its_newest_800_items() {
    let app = spawn_app(Feed::Postgres).await;
    let (ann, ann_t) = member(&app, "ann").await;
    let (bob, bob_t) = member(&app, "bob").await;
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{ann}/follow"), &bob_t).await;
    let t = token_of(&r);
    assert!(feed_of(&app, &bob_t, Some(&t)).await.is_empty());
    // 879 older items already in bob's feed, 79 of them since the last
    // trim: the next insertion is the 80th and trims back to 800.
    sqlx::query(
        "INSERT INTO feed_tracks (track_id, owner_id, created_at, title, public, fanned_out, seq)
         SELECT md5('old' || n)::uuid, $1, now() - make_interval(days => n), 'old ' || n, true, true, 1
         FROM generate_series(1, 879) n",
    )
    .bind(ann)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO feed_items (user_id, kind, actor_id, track_id, at, item_id)
         SELECT $2, 'post', $1, track_id, created_at, feed_item_id('post', $1, track_id)
         FROM feed_tracks WHERE owner_id = $1",
    )
    .bind(ann)
    .bind(bob)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO feed_sizes (user_id, since_trim) VALUES ($1, 79)
         ON CONFLICT (user_id) DO UPDATE SET since_trim = 79",
    )
    .bind(bob)
    .execute(&app.pool)
    .await
    .unwrap();
    let (_, t) = post_track(&app, &ann_t, "Newest", false).await;
    assert_eq!(feed_of(&app, &bob_t, Some(&t)).await[0], item("post", ann, "Newest"));
    let (rows, oldest_kept): (i64, String) = sqlx::query_as(
        "SELECT count(*), min(t.title) FILTER (WHERE t.title LIKE 'old %' AND i.at = (SELECT min(at) FROM feed_items WHERE user_id = $1))
         FROM feed_items i JOIN feed_tracks t USING (track_id) WHERE i.user_id = $1",
    )
    .bind(bob)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows, 800, "the newest 800 kept");
    assert_eq!(oldest_kept, "old 799", "the oldest ones went");

    // A rebuild keeps the newest 800 too.
    let mut conn = app.pool.acquire().await.unwrap();
    let written = projections::social::home::rebuild_user_feed(&mut conn, bob).await.unwrap();
    assert_eq!(written, 800);
}
