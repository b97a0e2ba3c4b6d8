//! Rebuilds without downtime (issue 18): a read model rebuilt into shadow
//! tables while queries and writes go on, swapped in atomically, equal row
//! for row to the per-event projection of the whole store.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use projections::runtime::{PerEventRebuild, ProjectionRunner, ReplayGuard, ReplayOptions, ReplayProgress};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{spawn_app, Feed, TestApp};
use crate::social::{member, send};

/// Every row of `table` as JSON, in a stable order.
async fn rows(pool: &PgPool, table: &str) -> Vec<Value> {
    sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {table} t ORDER BY to_jsonb(t)::text"))
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn index_names(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY 1")
        .bind(table)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn status_of(app: &TestApp, token: &str, name: &str) -> Value {
    let r = app.get_auth("/api/admin/projections", token).await;
    assert_eq!(r.status(), 200);
    let all: Value = r.json().await.unwrap();
    all.as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap()
}

/// Waits until the graph read model counts `expected` active follows.
async fn wait_follows(pool: &PgPool, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM rm_follows WHERE active").fetch_one(pool).await.unwrap();
        if n == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{n} follows projected, {expected} expected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_rebuild_serves_queries_throughout_and_equals_the_per_event_projection() {
    let app = spawn_app(Feed::Postgres).await;
    let (_, chief_t) = member(&app, "chief").await;
    let mut members = Vec::new();
    for k in 0..8 {
        members.push(member(&app, &format!("member{k}")).await);
    }
    let node = api::app::App::build(app.settings.clone()).await.unwrap();
    node.operator_set_role("chief@example.com", "admin", true).await.unwrap();

    // Everyone follows m0, and m1..m3 follow each other.
    let star = members[0].0;
    let mut follows = 0;
    for (id, token) in &members[1..] {
        let r = send(&app, reqwest::Method::POST, &format!("/api/users/{star}/follow"), token).await;
        assert!(r.status().is_success(), "{}", r.status());
        follows += 1;
        for (other, _) in &members[1..4] {
            if other != id && members[1..4].iter().any(|(m, _)| m == id) {
                let r = send(&app, reqwest::Method::POST, &format!("/api/users/{other}/follow"), token).await;
                assert!(r.status().is_success());
                follows += 1;
            }
        }
    }
    wait_follows(&app.pool, follows).await;
    let star_followers = members.len() as i64 - 1;
    let indexes_before = index_names(&app.pool, "rm_follows").await;

    // Queries run throughout: the star's profile and follower list never
    // show fewer followers than it has (an empty or half-built model would).
    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, queries) = (stop.clone(), queries.clone());
        let (client, base, token) = (app.client.clone(), app.base.clone(), members[0].1.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r =
                    client.get(format!("{base}/api/users/{star}")).bearer_auth(&token).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let profile: Value = r.json().await.unwrap();
                let count = profile["followers_count"].as_i64().unwrap();
                assert!(count >= star_followers, "profile during the rebuild: {profile}");
                let r = client
                    .get(format!("{base}/api/users/{star}/followers?limit=50"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let page: Value = r.json().await.unwrap();
                let listed = page["items"].as_array().unwrap().len() as i64;
                assert!(listed >= star_followers, "follower list during the rebuild: {page}");
                queries.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Writes go on too: m4..m7 follow m1 one by one during the rebuild.
    let writer = {
        let targets: Vec<(Uuid, String)> = members[4..].to_vec();
        let (client, base, followee) = (app.client.clone(), app.base.clone(), members[1].0);
        tokio::spawn(async move {
            for (_, token) in targets {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let r = client
                    .post(format!("{base}/api/users/{followee}/follow"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            }
        })
    };

    // The graph through the endpoint; a second request while one runs is 409.
    let r = send(&app, reqwest::Method::POST, "/api/admin/projections/graph/rebuild", &chief_t).await;
    assert_eq!(r.status(), 202);
    let r = send(&app, reqwest::Method::POST, "/api/admin/projections/nope/rebuild", &chief_t).await;
    assert_eq!(r.status(), 404);
    let r = send(&app, reqwest::Method::POST, "/api/admin/projections/graph/rebuild", &members[0].1).await;
    assert_eq!(r.status(), 403);
    let held = ReplayGuard::acquire(&app.pool, "profiles").await.unwrap().unwrap();
    let r = send(&app, reqwest::Method::POST, "/api/admin/projections/profiles/rebuild", &chief_t).await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rebuild_running", "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let graph = loop {
        let graph = status_of(&app, &chief_t, "graph").await;
        match graph["rebuild"]["state"].as_str() {
            Some("done") => break graph,
            Some("failed") => panic!("rebuild failed: {graph}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "{graph}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(graph["rebuild"]["percent"], 100.0, "{graph}");

    // The profiles in small chunks through the runner (as `streamforge
    // replay` drives it), while the reader keeps reading.
    let runner = node.replay_runner();
    let phases = std::sync::Mutex::new(Vec::<ReplayProgress>::new());
    let stats = runner
        .replay(&held, ReplayOptions { chunk_size: 2, ..ReplayOptions::default() }, &|p| {
            phases.lock().unwrap().push(p)
        })
        .await
        .unwrap();
    drop(held);
    let phases = phases.into_inner().unwrap();
    assert!(stats.copied >= 9, "{stats:?}");
    assert!(phases.iter().filter(|p| p.phase == "copying").count() >= 4, "{phases:?}");
    assert_eq!(phases.last().unwrap().phase, "done");

    writer.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    assert!(queries.load(Ordering::Relaxed) > 0);
    wait_follows(&app.pool, follows + 4).await;

    // The shadow is gone, the index names are the live ones again.
    let shadows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'shadow\\_%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(shadows, 0);
    assert_eq!(index_names(&app.pool, "rm_follows").await, indexes_before);

    // Row for row equal to the per-event projection of the whole store
    // (the reference path: reset, then `apply` one event at a time).
    let tables = ["rm_follows", "rm_blocks", "rm_mutes", "rm_user_stats", "rm_profiles"];
    let mut swapped = Vec::new();
    for table in tables {
        swapped.push(rows(&app.pool, table).await);
    }
    let reference = ProjectionRunner::new(
        app.pool.clone(),
        runner
            .names()
            .into_iter()
            .filter(|n| *n == "graph" || *n == "profiles")
            .map(|n| {
                Arc::new(PerEventRebuild(runner.projector(n).unwrap()))
                    as Arc<dyn projections::runtime::Projector>
            })
            .collect(),
    );
    reference.rebuild("graph", 3).await.unwrap();
    reference.rebuild("profiles", 3).await.unwrap();
    for (table, before) in tables.iter().zip(swapped) {
        assert_eq!(rows(&app.pool, table).await, before, "{table}");
    }
    let stats: Value = sqlx::query_scalar("SELECT to_jsonb(s) FROM rm_user_stats s WHERE user_id = $1")
        .bind(star)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stats["followers_count"], star_followers, "{stats}");
}
