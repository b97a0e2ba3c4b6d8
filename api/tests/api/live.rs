//! Live updates over server-sent events (issue 16): a like reaches the
//! track owner's open stream (notification and counter delta), a
//! reconnect with `Last-Event-ID` gets what was missed and nothing twice,
//! and the stream ends when the session is revoked.

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, Feed, TestApp};
use crate::social::{member, send};

/// An open SSE response and the text received but not yet parsed.
struct Sse {
    response: reqwest::Response,
    pending: String,
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    event: String,
    data: Value,
}

impl Sse {
    async fn open(app: &TestApp, token: &str, query: &str, last_event_id: Option<&str>) -> Self {
        let mut req = app.client.get(format!("{}/api/stream{query}", app.base)).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let response = req.timeout(Duration::from_secs(60)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        Self { response, pending: String::new() }
    }

    /// The next event (comments skipped), `None` when the stream ends, or a
    /// panic after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if event.is_empty() {
                    continue; // keep-alive comment
                }
                return Some(Received { id, event, data: serde_json::from_str(&data).unwrap() });
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("no server-sent event in time")
                .unwrap();
            match chunk {
                Some(bytes) => self.pending.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }
}

async fn post_track(app: &TestApp, token: &str) -> String {
    let r = app
        .client
        .post(format!("{}/api/tracks", app.base))
        .bearer_auth(token)
        .json(&json!({"title": "Live", "duration_ms": 60000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_like_is_pushed_resumed_with_last_event_id_and_revocation_ends_the_stream() {
    let app = spawn_app(Feed::Postgres).await;
    let (ann, ann_t) = member(&app, "ann").await;
    let (bob, bob_t) = member(&app, "bob").await;
    let (_cid, cid_t) = member(&app, "cid").await;
    let track = post_track(&app, &ann_t).await;
    let stream_t = app.tokens.issue_access(ann, Uuid::new_v4(), Utc::now()).unwrap().0;

    // Bad track lists are refused.
    let r = app
        .client
        .get(format!("{}/api/stream?tracks=nope", app.base))
        .bearer_auth(&ann_t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = app.client.get(format!("{}/api/stream", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let mut sse = Sse::open(&app, &stream_t, &format!("?tracks={track}"), None).await;
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/tracks/{track}/like"), &bob_t).await.status(),
        201
    );
    let first = sse.next(WAIT).await.unwrap();
    let second = sse.next(WAIT).await.unwrap();
    let mut got = [first.clone(), second.clone()];
    got.sort_by(|a, b| a.event.cmp(&b.event));
    assert_eq!(got[0].event, "counts");
    assert_eq!(got[0].data, json!({"track_id": track, "likes": 1}));
    assert_eq!(got[1].event, "notification");
    assert_eq!(got[1].data["kind"], "like");
    assert_eq!(got[1].data["actor"], bob.to_string());
    drop(sse);

    // Missed while away: cid's like and bob's follow; resumed from the last id.
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/tracks/{track}/like"), &cid_t).await.status(),
        201
    );
    assert_eq!(
        send(&app, reqwest::Method::POST, &format!("/api/users/{ann}/follow"), &bob_t).await.status(),
        201
    );
    // Let the node's follower see both before reconnecting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sse = Sse::open(&app, &stream_t, &format!("?tracks={track}"), Some(&second.id)).await;
    let mut missed = Vec::new();
    for _ in 0..3 {
        let e = sse.next(WAIT).await.unwrap();
        missed.push((e.event.clone(), e.data["kind"].as_str().unwrap_or("").to_owned()));
        assert_ne!(e.id, first.id, "nothing twice");
        assert_ne!(e.id, second.id, "nothing twice");
    }
    missed.sort();
    assert_eq!(
        missed,
        vec![
            ("counts".to_owned(), String::new()),
            ("notification".to_owned(), "follow".to_owned()),
            ("notification".to_owned(), "like".to_owned())
        ]
    );

    // A track ann does not watch sends her no counters; a post by someone
    // she follows is a feed event.
    let r = send(&app, reqwest::Method::POST, &format!("/api/users/{bob}/follow"), &ann_t).await;
    assert_eq!(r.status(), 201);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bobs = post_track(&app, &bob_t).await;
    let e = sse.next(WAIT).await.unwrap();
    assert_eq!(e.event, "feed", "{e:?}");
    assert_eq!(e.data["track_id"], bobs.as_str());
    assert_eq!(e.data["type"], "post");

    // Logging out everywhere ends a signed-in account's stream.
    crate::sessions::account(&app, "eve@example.com").await;
    let tokens = crate::sessions::login_from(&app, "eve@example.com", "eve-laptop", "Laptop", 1).await;
    let eve_t = tokens["access_token"].as_str().unwrap().to_owned();
    let mut sse = Sse::open(&app, &eve_t, "", None).await;
    let r = app
        .client
        .post(format!("{}/api/auth/logout-all", app.base))
        .bearer_auth(&eve_t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match sse.next(WAIT).await {
            None => break,
            Some(e) => assert!(tokio::time::Instant::now() < deadline, "stream still open: {e:?}"),
        }
    }
}
