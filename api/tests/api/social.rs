//! The social graph over HTTP (issue 15): follow, block, mute, lists,
//! suggestions, profiles and handles, read-your-writes, and the graph's
//! invariants under concurrency — through the real broker.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{code_in, spawn_app, Feed, TestApp};

const PASSWORD: &str = "correct horse battery staple";

/// A registered account with handle `username` and an access token minted
/// for it (a session id of its own).
pub async fn member(app: &TestApp, username: &str) -> (Uuid, String) {
    let r = app
        .post(
            "/api/auth/register",
            json!({"email": format!("{username}@example.com"), "password": PASSWORD, "name": username,
                   "username": username}),
        )
        .await;
    assert_eq!(r.status(), 201, "register {username}");
    let body: Value = r.json().await.unwrap();
    let id: Uuid = body["user_id"].as_str().unwrap().parse().unwrap();
    let token = app.tokens.issue_access(id, Uuid::new_v4(), Utc::now()).unwrap().0;
    // Registration answers no consistency token (it stays silent about
    // whether the address was new): wait until the profile is projected,
    // so later reads that name other streams' tokens find the account.
    // The handle's event is in the same append, but a feed batch may split
    // the two: wait for the handle too.
    app.wait_for(&format!("/api/users/{id}"), &token, |s, b| s == 200 && b["username"].is_string()).await;
    (id, token)
}

pub async fn send(app: &TestApp, method: reqwest::Method, path: &str, token: &str) -> reqwest::Response {
    app.client.request(method, format!("{}{path}", app.base)).bearer_auth(token).send().await.unwrap()
}

pub async fn get_after(app: &TestApp, path: &str, token: Option<&str>, after: Option<&str>) -> (u16, Value) {
    let mut req = app.client.get(format!("{}{path}", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(a) = after {
        req = req.header("X-Consistency-Token", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn consistency(r: &reqwest::Response) -> Option<String> {
    r.headers().get("x-consistency-token").map(|v| v.to_str().unwrap().to_owned())
}

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|i| i["user_id"].as_str().unwrap().to_owned()).collect()
}

async fn count_events(app: &TestApp, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn follow_lists_read_your_writes(feed: Feed) {
    let app = spawn_app(feed).await;
    let (ann, ann_t) = member(&app, "ann").await;
    let (bob, bob_t) = member(&app, "bob").await;

    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/follow"), &ann_t).await;
    assert_eq!(r.status(), 201);
    let token = consistency(&r).expect("a command that wrote answers a consistency token");
    // Read-your-writes: the list answers with the follow, no polling.
    let (status, page) = get_after(&app, &format!("/api/users/{ann}/following"), None, Some(&token)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), vec![bob.to_string()]);
    assert_eq!(page["items"][0]["username"], "bob");
    let (_, page) = get_after(&app, &format!("/api/users/{bob}/followers"), None, Some(&token)).await;
    assert_eq!(ids(&page), vec![ann.to_string()]);
    // …on another node too (the wait reads checkpoints in Postgres).
    let (base2, _stop) = app.second_node().await;
    let r2 = app
        .client
        .get(format!("{base2}/api/users/{bob}"))
        .bearer_auth(&ann_t)
        .header("X-Consistency-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r2.status(), 200);
    let profile: Value = r2.json().await.unwrap();
    assert_eq!(profile["followers_count"], 1, "{profile}");
    assert_eq!(profile["followed_by_me"], true);
    assert_eq!(profile["follows_me"], false);
    assert_eq!(profile["blocked"], false);
    assert_eq!(profile["username"], "bob");
    assert_eq!(profile["display_name"], "bob");
    assert!(profile["avatar_url"].is_null());

    // Following twice is one follow: 200, no event, no token.
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/follow"), &ann_t).await;
    assert_eq!(r.status(), 200);
    assert!(consistency(&r).is_none());
    assert_eq!(count_events(&app, "UserFollowed").await, 1);

    // Unfollow: 204 with a token; again: 204, no event.
    let r = send(&app, reqwest::Method::DELETE, &format!("/api/users/{bob}/follow"), &ann_t).await;
    assert_eq!(r.status(), 204);
    let token = consistency(&r).unwrap();
    let (_, page) = get_after(&app, &format!("/api/users/{bob}/followers"), Some(&bob_t), Some(&token)).await;
    assert!(ids(&page).is_empty(), "{page}");
    let r = send(&app, reqwest::Method::DELETE, &format!("/api/users/{bob}/follow"), &ann_t).await;
    assert_eq!(r.status(), 204);
    assert!(consistency(&r).is_none());
    assert_eq!(count_events(&app, "UserUnfollowed").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follows_are_read_back_at_once_with_the_token_kafka_feed() {
    follow_lists_read_your_writes(Feed::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follows_are_read_back_at_once_with_the_token_postgres_feed() {
    follow_lists_read_your_writes(Feed::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_graph_requests_are_refused_and_write_nothing() {
    let app = crate::helpers::spawn_app_with(Feed::Kafka, |s| s.consistency_wait_ms = 500).await;
    let (ann, ann_t) = member(&app, "ann").await;
    let relationship_events = || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE aggregate_type = 'relationship'")
            .fetch_one(&app.pool)
    };
    let before = relationship_events().await.unwrap();
    let post = |path: String| {
        let (app, t) = (&app, ann_t.clone());
        async move { send(app, reqwest::Method::POST, &path, &t).await }
    };
    let r = post(format!("/api/users/{ann}/follow")).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "self_relation");
    let r = post(format!("/api/users/{}/follow", Uuid::now_v7())).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "user_not_found");
    let r = post("/api/users/not-a-uuid/follow".to_owned()).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let r = post(format!("/api/users/{}/block", Uuid::now_v7())).await;
    assert_eq!(r.status(), 404);
    let r = app.client.post(format!("{}/api/users/{ann}/follow", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 401, "anonymous");
    for (query, field) in [("limit=0", "limit"), ("limit=101", "limit"), ("cursor=zzz", "cursor")] {
        let (status, body) =
            get_after(&app, &format!("/api/users/{ann}/followers?{query}"), None, None).await;
        assert_eq!((status, body["field"].as_str()), (422, Some(field)), "{query}: {body}");
    }
    let (status, body) = get_after(&app, &format!("/api/users/{ann}/followers?limit=x"), None, None).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_query")));
    // A token this API never issued: 400; one it could have issued but
    // that never lands: 503 with Retry-After after the wait.
    let (status, body) = get_after(&app, &format!("/api/users/{ann}"), None, Some("nonsense")).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_consistency_token")));
    let forged = format!("v1.999999.7.relationship.{}:{}", Uuid::nil(), ann);
    let r = app
        .client
        .get(format!("{}/api/users/{ann}/followers", app.base))
        .header("X-Consistency-Token", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "consistency_timeout");
    assert_eq!(before, relationship_events().await.unwrap(), "refused requests wrote nothing");
    assert_eq!(before, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_ends_follows_both_ways_and_hides_each_from_the_other() {
    let app = spawn_app(Feed::Kafka).await;
    let (ann, ann_t) = member(&app, "ann").await;
    let (bob, bob_t) = member(&app, "bob").await;
    let (_cid, cid_t) = member(&app, "cid").await;
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/follow"), &ann_t).await.status(),
        201
    );
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/users/{ann}/follow"), &bob_t).await.status(),
        201
    );

    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/block"), &ann_t).await;
    assert_eq!(r.status(), 204);
    let token = consistency(&r).unwrap();
    // Both follows ended in the same write; the counters say so.
    let (status, me) = get_after(&app, &format!("/api/users/{ann}"), Some(&ann_t), Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!((me["followers_count"].as_i64(), me["following_count"].as_i64()), (Some(0), Some(0)), "{me}");
    assert_eq!(count_events(&app, "UserUnfollowed").await, 2);
    // Each side's profile, lists and follow answer 404 to the other…
    for (viewer, other) in [(&ann_t, bob), (&bob_t, ann)] {
        for path in [
            format!("/api/users/{other}"),
            format!("/api/users/{other}/followers"),
            format!("/api/users/{other}/tracks"),
        ] {
            let (status, body) = get_after(&app, &path, Some(viewer), None).await;
            assert_eq!((status, body["code"].as_str()), (404, Some("user_not_found")), "{path}");
        }
    }
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{ann}/follow"), &bob_t).await;
    assert_eq!(r.status(), 404, "the blocked one learns nothing");
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/follow"), &ann_t).await;
    assert_eq!(r.status(), 403, "the blocker is told to unblock first");
    // …while a third user still sees both.
    assert_eq!(get_after(&app, &format!("/api/users/{bob}"), Some(&cid_t), None).await.0, 200);
    // The block list is the blocker's own.
    let (_, blocks) = get_after(&app, "/api/users/me/blocks", Some(&ann_t), Some(&token)).await;
    assert_eq!(ids(&blocks), vec![bob.to_string()]);
    let (_, blocks) = get_after(&app, "/api/users/me/blocks", Some(&bob_t), None).await;
    assert!(ids(&blocks).is_empty());

    // Unblocking brings nothing back but allows a new follow.
    let r = send(&app, reqwest::Method::DELETE, &format!("/api/users/{bob}/block"), &ann_t).await;
    assert_eq!(r.status(), 204);
    let token = consistency(&r).unwrap();
    let (_, me) = get_after(&app, &format!("/api/users/{ann}"), Some(&ann_t), Some(&token)).await;
    assert_eq!(me["followers_count"], 0);
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/users/{ann}/follow"), &bob_t).await.status(),
        201
    );

    // Mutes: idempotent, private, and change no follow.
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/mute"), &ann_t).await;
    assert_eq!(r.status(), 204);
    assert!(consistency(&r).is_some());
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/mute"), &ann_t).await;
    assert!(consistency(&r).is_none());
    let r = send(&app, reqwest::Method::DELETE, &format!("/api/users/{bob}/mute"), &ann_t).await;
    assert_eq!(r.status(), 204);
    assert_eq!(count_events(&app, "UserMuted").await, 1);
    assert_eq!(count_events(&app, "UserUnmuted").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suggestions_rank_friends_of_friends_and_leave_out_the_excluded() {
    let app = spawn_app(Feed::Postgres).await;
    let (me_id, me_t) = member(&app, "me_user").await;
    let mut users = HashMap::new();
    for name in ["fol1", "fol2", "fol3", "sug1", "sug2", "sug3", "blk", "mut"] {
        users.insert(name, member(&app, name).await);
    }
    let follow = |who: &'static str, whom: &'static str| {
        let (app, users) = (&app, &users);
        async move {
            let r = send(
                app,
                reqwest::Method::POST,
                &format!("/api/users/{}/follow", users[whom].0),
                &users[who].1,
            )
            .await;
            assert!(r.status().is_success());
        }
    };
    for f in ["fol1", "fol2", "fol3"] {
        let r = send(&app, reqwest::Method::POST, &format!("/api/users/{}/follow", users[f].0), &me_t).await;
        assert_eq!(r.status(), 201);
    }
    // sug1 is followed by three of my follows, sug2 by two, sug3 by one;
    // blk and mut by three each but excluded; fol2 is followed by fol1 but
    // I follow fol2 already.
    for f in ["fol1", "fol2", "fol3"] {
        follow(f, "sug1").await;
        follow(f, "blk").await;
        follow(f, "mut").await;
    }
    for f in ["fol1", "fol2"] {
        follow(f, "sug2").await;
    }
    follow("fol3", "sug3").await;
    follow("fol1", "fol2").await;
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{}/mute", users["mut"].0), &me_t).await;
    assert_eq!(r.status(), 204);
    // blk blocks me: its relationship with me is one I cannot see.
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{me_id}/block"), &users["blk"].1).await;
    let token = consistency(&r).unwrap();
    // The follows are on other streams than the block's token names: poll
    // until the graph has them all.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let (status, body) = get_after(&app, "/api/users/me/suggestions", Some(&me_t), Some(&token)).await;
        assert_eq!(status, 200);
        let names: Vec<&str> =
            body.as_array().unwrap().iter().map(|s| s["username"].as_str().unwrap()).collect();
        if names == ["sug1", "sug2", "sug3"] || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = body.as_array().unwrap().iter().map(|s| s["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["sug1", "sug2", "sug3"], "{body}");
    assert_eq!(body[0]["followed_by_your_follows"], 3);
}

/// All of a stream's rows of the graph tables and the counters, sorted.
async fn graph_dump(pool: &sqlx::PgPool) -> (Vec<(Uuid, Uuid, bool, i64)>, BTreeMap<Uuid, (i64, i64)>) {
    let edges: Vec<(Uuid, Uuid, bool, i64)> = sqlx::query_as(
        "SELECT follower_id, followee_id, active, seq FROM rm_follows
         UNION ALL SELECT blocker_id, blocked_id, active, seq FROM rm_blocks
         UNION ALL SELECT muter_id, muted_id, active, seq FROM rm_mutes ORDER BY 1, 2, 4",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let stats: Vec<(Uuid, i64, i64)> =
        sqlx::query_as("SELECT user_id, followers_count, following_count FROM rm_user_stats WHERE followers_count > 0 OR following_count > 0")
            .fetch_all(pool)
            .await
            .unwrap();
    (edges, stats.into_iter().map(|(u, a, b)| (u, (a, b))).collect())
}

/// Counters equal to `COUNT(*)` of the active follow edges, for everyone.
async fn assert_counters_exact(pool: &sqlx::PgPool) {
    let wrong: Vec<(Uuid, i64, i64, i64, i64)> = sqlx::query_as(
        "WITH fc AS (SELECT followee_id AS u, count(*) AS n FROM rm_follows WHERE active GROUP BY 1),
              gc AS (SELECT follower_id AS u, count(*) AS n FROM rm_follows WHERE active GROUP BY 1),
              everyone AS (SELECT u FROM fc UNION SELECT u FROM gc UNION SELECT user_id FROM rm_user_stats)
         SELECT e.u, COALESCE(s.followers_count, 0), COALESCE(fc.n, 0), COALESCE(s.following_count, 0), COALESCE(gc.n, 0)
         FROM everyone e LEFT JOIN rm_user_stats s ON s.user_id = e.u
         LEFT JOIN fc ON fc.u = e.u LEFT JOIN gc ON gc.u = e.u
         WHERE COALESCE(s.followers_count, 0) <> COALESCE(fc.n, 0) OR COALESCE(s.following_count, 0) <> COALESCE(gc.n, 0)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(wrong.is_empty(), "counters differ from the edge sets: {wrong:?}");
}

/// Waits until the graph projector has applied every relationship event
/// in the store (the highest seq per pair reached).
async fn wait_graph_caught_up(app: &TestApp) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT aggregate_id, max(sequence) AS s FROM events
                                   WHERE aggregate_type = 'relationship' GROUP BY 1) e
             WHERE e.s > COALESCE((SELECT max(seq) FROM (
                 SELECT seq FROM rm_follows WHERE follower_id::text || ':' || followee_id::text = e.aggregate_id
                                               OR followee_id::text || ':' || follower_id::text = e.aggregate_id
                 UNION ALL SELECT seq FROM rm_blocks WHERE blocker_id::text || ':' || blocked_id::text = e.aggregate_id
                                               OR blocked_id::text || ':' || blocker_id::text = e.aggregate_id
                 UNION ALL SELECT seq FROM rm_mutes WHERE muter_id::text || ':' || muted_id::text = e.aggregate_id
                                               OR muted_id::text || ':' || muter_id::text = e.aggregate_id) x), 0)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if behind == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "graph projector still {behind} streams behind");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_equal_the_edge_sets_live_after_replay_and_in_any_order() {
    use rand::{Rng, SeedableRng};
    let app = spawn_app(Feed::Kafka).await;
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(member(&app, &format!("load_{i}")).await);
    }
    let users = std::sync::Arc::new(users);
    // Four clients drive a random workload of follows, unfollows, blocks
    // and unblocks among eight users, concurrently.
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let (client, base, users) = (app.client.clone(), app.base.clone(), users.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            for _ in 0..60 {
                let (a, b) = (rng.gen_range(0..users.len()), rng.gen_range(0..users.len()));
                if a == b {
                    continue;
                }
                let (verb, method) = match rng.gen_range(0..10) {
                    0..=4 => ("follow", reqwest::Method::POST),
                    5..=7 => ("follow", reqwest::Method::DELETE),
                    8 => ("block", reqwest::Method::POST),
                    _ => ("block", reqwest::Method::DELETE),
                };
                let r = client
                    .request(method, format!("{base}/api/users/{}/{verb}", users[b].0))
                    .bearer_auth(&users[a].1)
                    .send()
                    .await
                    .unwrap();
                assert!([200, 201, 204, 403, 404].contains(&r.status().as_u16()), "{}", r.status());
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    wait_graph_caught_up(&app).await;
    assert_counters_exact(&app.pool).await;
    // Nothing negative (the CHECK would have failed the projector).
    let live = graph_dump(&app.pool).await;
    assert!(!live.0.is_empty());
    // No follow stands between users of which one blocks the other.
    let standing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rm_follows f JOIN rm_blocks b ON b.active
           AND ((b.blocker_id = f.follower_id AND b.blocked_id = f.followee_id)
             OR (b.blocker_id = f.followee_id AND b.blocked_id = f.follower_id))
         WHERE f.active",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(standing, 0);

    // Replayed in two different orders of the streams (each stream in its
    // own order), the read model converges to the same rows.
    let envelopes = projections_envelopes(&app.pool).await;
    let projector = projections::social::graph::GraphProjector;
    for order in [Order::StreamByStream, Order::Interleaved] {
        let mut tx = app.pool.begin().await.unwrap();
        use projections::runtime::Projector;
        projector.reset(&mut tx).await.unwrap();
        for e in arrange(&envelopes, order) {
            projector.apply(&mut tx, e).await.unwrap();
        }
        // And a duplicate of everything changes nothing.
        for e in &envelopes {
            projector.apply(&mut tx, e).await.unwrap();
        }
        tx.commit().await.unwrap();
        assert_eq!(graph_dump(&app.pool).await, live, "{order:?}");
        assert_counters_exact(&app.pool).await;
    }
    // And after a full rebuild by the runner.
    let runner = projections::runtime::ProjectionRunner::new(
        app.pool.clone(),
        vec![std::sync::Arc::new(projections::social::graph::GraphProjector)],
    );
    runner.rebuild("graph", 50).await.unwrap();
    assert_eq!(graph_dump(&app.pool).await, live, "rebuild");
    let checkpoints: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projection_checkpoints WHERE projector = 'graph'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(checkpoints, 0, "the graph keeps no checkpoint row per edge");
}

#[derive(Debug, Clone, Copy)]
enum Order {
    StreamByStream,
    Interleaved,
}

/// A stored event's columns, as the envelope is built from them.
type StoredRow = (Uuid, String, String, i64, i64, String, String, chrono::DateTime<Utc>, Value, Value);

async fn projections_envelopes(pool: &sqlx::PgPool) -> Vec<domain::envelope::Envelope> {
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT event_id, aggregate_type, aggregate_id, sequence, position, event_type, event_version,
                    recorded_at, payload::jsonb, metadata::jsonb
             FROM events WHERE aggregate_type = 'relationship' ORDER BY txid, position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, t, a, s, p, et, ev, at, payload, meta)| {
            domain::envelope::Envelope::from_stored(id, t, a, s, p, et, ev, at, payload, meta)
        })
        .collect()
}

/// The envelopes reordered across streams, each stream's kept in order.
fn arrange(all: &[domain::envelope::Envelope], order: Order) -> Vec<&domain::envelope::Envelope> {
    let mut streams: BTreeMap<&str, Vec<&domain::envelope::Envelope>> = BTreeMap::new();
    for e in all {
        streams.entry(e.aggregate_id.as_str()).or_default().push(e);
    }
    let mut streams: Vec<Vec<&domain::envelope::Envelope>> = streams.into_values().collect();
    match order {
        Order::StreamByStream => streams.into_iter().rev().flatten().collect(),
        Order::Interleaved => {
            let mut out = Vec::new();
            let mut i = 0;
            while streams.iter().any(|s| i < s.len()) {
                for s in &mut streams {
                    if let Some(e) = s.get(i) {
                        out.push(*e);
                    }
                }
                i += 1;
            }
            out
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_identical_follows_are_one_follow() {
    let app = spawn_app(Feed::Postgres).await;
    let (_ann, ann_t) = member(&app, "ann").await;
    let (bob, _) = member(&app, "bob").await;
    let mut requests = Vec::new();
    for _ in 0..16 {
        let (client, url, t) =
            (app.client.clone(), format!("{}/api/users/{bob}/follow", app.base), ann_t.clone());
        requests.push(tokio::spawn(async move {
            client.post(url).bearer_auth(t).send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 201), "{statuses:?}");
    assert_eq!(count_events(&app, "UserFollowed").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follow_racing_a_block_never_leaves_a_follow_standing() {
    let app = spawn_app(Feed::Postgres).await;
    for round in 0..12 {
        let (a, a_t) = member(&app, &format!("race_a{round}")).await;
        let (b, b_t) = member(&app, &format!("race_b{round}")).await;
        // Either direction: a follows b while b blocks a, or a blocks b.
        let blocker = if round % 2 == 0 { (&b_t, a) } else { (&a_t, b) };
        let follow = app.client.post(format!("{}/api/users/{b}/follow", app.base)).bearer_auth(&a_t).send();
        let block = app
            .client
            .post(format!("{}/api/users/{}/block", app.base, blocker.1))
            .bearer_auth(blocker.0)
            .send();
        let (f, bl) = tokio::join!(follow, block);
        assert!([201, 403, 404].contains(&f.unwrap().status().as_u16()));
        assert_eq!(bl.unwrap().status(), 204);
        // The write side (the pair's stream) holds no follow.
        let state = domain::social::relationship::pair_id(a, b);
        let followed: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE event_type = 'UserFollowed') - count(*) FILTER (WHERE event_type = 'UserUnfollowed')
             FROM events WHERE aggregate_type = 'relationship' AND aggregate_id = $1",
        )
        .bind(&state)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(followed, 0, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handles_are_unique_case_insensitively_changeable_and_sign_in() {
    let app = spawn_app(Feed::Kafka).await;
    let (ann, ann_t) = member(&app, "night_owl").await;
    // Taken, in any case: 409 username_taken; the email keeps its answer.
    let r = app
        .post(
            "/api/auth/register",
            json!({"email": "other@example.com", "password": PASSWORD, "name": "O", "username": "Night_Owl"}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["code"].as_str(), body["field"].as_str()), (Some("username_taken"), Some("username")));
    for bad in ["ab", "12345", "admin", "has space", "user-12345678"] {
        let r = app
            .post(
                "/api/auth/register",
                json!({"email": "x@example.com", "password": PASSWORD, "name": "X", "username": bad}),
            )
            .await;
        assert_eq!(r.status(), 422, "{bad}");
    }
    // By handle, case-insensitively (once the profile is projected).
    let (_, p) = app.wait_for("/api/users/by-username/NIGHT_OWL", &ann_t, |s, _| s == 200).await;
    assert_eq!(p["id"].as_str(), Some(ann.to_string().as_str()));
    // A change answers with a token; the old name stays held for 30 days.
    let r = app
        .client
        .put(format!("{}/api/users/me/username", app.base))
        .bearer_auth(&ann_t)
        .json(&json!({"username": "day_owl"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = consistency(&r).unwrap();
    let (status, p) = get_after(&app, &format!("/api/users/{ann}"), None, Some(&token)).await;
    assert_eq!((status, p["username"].as_str()), (200, Some("day_owl")));
    assert_eq!(get_after(&app, "/api/users/by-username/night_owl", None, None).await.0, 404);
    let (bob, bob_t) = member(&app, "bob_k").await;
    let r = app
        .client
        .put(format!("{}/api/users/me/username", app.base))
        .bearer_auth(&bob_t)
        .json(&json!({"username": "night_owl"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "held for its former owner");
    // Once the hold has passed, someone else may take it.
    sqlx::query(
        "UPDATE reservations SET held_until = now() - interval '1 second' WHERE held_until IS NOT NULL",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let r = app
        .client
        .put(format!("{}/api/users/me/username", app.base))
        .bearer_auth(&bob_t)
        .json(&json!({"username": "night_owl"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, p) = get_after(&app, "/api/users/by-username/night_owl", None, None).await;
    assert_eq!(p["id"].as_str(), Some(bob.to_string().as_str()));

    // Sign-in by username: the same second step as by email.
    let email = "signin@example.com";
    let r = app
        .post(
            "/api/auth/register",
            json!({"email": email, "password": PASSWORD, "username": "signs_in",
                                           "first_name": "Sig", "last_name": "Nin"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let code = code_in(&app.wait_mail_with(email, "verification code", 1).await);
    assert_eq!(app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await.status(), 204);
    let r = app.post("/api/auth/login", json!({"email": "Signs_In", "password": PASSWORD})).await;
    assert_eq!(r.status(), 200);
    let challenge: Value = r.json().await.unwrap();
    let code = code_in(&app.wait_mail_with(email, "sign-in code", 1).await);
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    assert_eq!(r.status(), 200);
    // Wrong password and unknown handle answer alike.
    for login in ["signs_in", "nobody_here"] {
        let r = app.post("/api/auth/login", json!({"email": login, "password": "wrong password 123"})).await;
        assert_eq!(r.status(), 401, "{login}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_credentials");
    }
    // First and last name make the display name.
    let (_, mine) = app.wait_for("/api/users/by-username/signs_in", &ann_t, |s, _| s == 200).await;
    assert_eq!(mine["display_name"], "Sig Nin");
}
