//! Moderation (issue 17) through the real broker: reports, a bulk hide
//! that resolves them, the suspension cascade (sessions refused, login
//! refused, tracks gone from a follower's feed; all back on unsuspend),
//! the audit trail, a subject's history, and the audit equal to a replay.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{code_in, spawn_app, Feed, TestApp};
use crate::social::member;

const PASSWORD: &str = "correct horse battery staple";

async fn operator_grant(app: &TestApp, email: &str, role: &str) {
    let node = api::app::App::build(app.settings.clone()).await.unwrap();
    node.operator_set_role(email, role, true).await.unwrap();
    node.pool.close().await;
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = app.client.request(method, format!("{}{path}", app.base)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

fn token_of(r: &reqwest::Response) -> String {
    r.headers()["x-consistency-token"].to_str().unwrap().to_owned()
}

async fn get(app: &TestApp, path: &str, token: &str, after: Option<&str>) -> (u16, Value) {
    let mut req = app.client.get(format!("{}{path}", app.base)).bearer_auth(token);
    if let Some(a) = after {
        req = req.header("X-Consistency-Token", a);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Password login through the mailed second factor; the `verify-otp` answer.
async fn login(app: &TestApp, email: &str, nth_mail: usize) -> reqwest::Response {
    let challenge: Value = app
        .post("/api/auth/login", json!({"email": email, "password": PASSWORD}))
        .await
        .json()
        .await
        .unwrap();
    let code = code_in(&app.wait_mail_with(email, "sign-in code", nth_mail).await);
    app.post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code})).await
}

fn feed_titles(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["track"]["title"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_a_bulk_hide_and_the_suspension_cascade_with_their_audit_trail() {
    let app = spawn_app(Feed::Kafka).await;
    let (node_b, _stop_b) = app.second_node().await;
    let (_chief, chief_t) = member(&app, "chief").await;
    let (moddy, mod_t) = member(&app, "moddy").await;
    let (_triage, triage_t) = member(&app, "triage").await;
    let (_bob, bob_t) = member(&app, "bob").await;
    let (_cid, cid_t) = member(&app, "cid").await;
    operator_grant(&app, "chief@example.com", "admin").await;
    operator_grant(&app, "moddy@example.com", "moderator").await;
    // A custom role that may read the queue but not hide.
    let r = call(
        &app,
        "POST",
        "/api/admin/roles",
        &chief_t,
        Some(json!({"name": "triager", "permissions": ["moderation.reports.read"]})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let triage_id = {
        let (_, me) = get(&app, "/api/users/me/roles", &triage_t, None).await;
        assert_eq!(me["roles"], json!(["user"]));
        let found: Value =
            call(&app, "GET", "/api/admin/users?q=triage", &chief_t, None).await.json().await.unwrap();
        found[0]["id"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        call(&app, "PUT", &format!("/api/admin/users/{triage_id}/roles/triager"), &chief_t, None)
            .await
            .status(),
        204
    );

    // Ann signs in for real (a session of her own), posts; bob follows her.
    let ann_email = "ann@example.com";
    assert_eq!(app.register(ann_email, PASSWORD, "Ann").await.status(), 201);
    let code = code_in(&app.wait_mail_with(ann_email, "verification code", 1).await);
    assert_eq!(
        app.post("/api/auth/verify-email", json!({"email": ann_email, "code": code})).await.status(),
        204
    );
    // A role of hers is named in the access token she gets (for clients).
    let (_, found) = app
        .wait_for("/api/admin/users?q=ann@example.com", &chief_t, |s, b| {
            s == 200 && b.as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let ann_id = found[0]["id"].as_str().unwrap().to_owned();
    let r = call(&app, "PUT", &format!("/api/admin/users/{ann_id}/roles/triager"), &chief_t, None).await;
    assert_eq!(r.status(), 204);
    let r = login(&app, ann_email, 1).await;
    assert_eq!(r.status(), 200);
    let tokens: Value = r.json().await.unwrap();
    let ann_t = tokens["access_token"].as_str().unwrap().to_owned();
    let claims = app.tokens.verify_access(&ann_t).unwrap();
    assert_eq!(claims.roles, ["triager"]);
    let (_, me) = get(&app, "/api/users/me", &ann_t, None).await;
    let ann: Uuid = me["user_id"].as_str().unwrap().parse().unwrap();
    let r = app.client.get(format!("{node_b}/api/users/me")).bearer_auth(&ann_t).send().await.unwrap();
    assert_eq!(r.status(), 200, "node B accepts her token before the suspension");
    let r =
        call(&app, "POST", "/api/tracks", &ann_t, Some(json!({"title": "Loud", "duration_ms": 60000}))).await;
    assert_eq!(r.status(), 201);
    let track: Value = r.json().await.unwrap();
    let track_id = track["id"].as_str().unwrap().to_owned();
    let r = call(&app, "POST", &format!("/api/users/{ann}/follow"), &bob_t, None).await;
    assert_eq!(r.status(), 201);
    let (_, page) = get(&app, "/api/feed", &bob_t, Some(&token_of(&r))).await;
    assert_eq!(feed_titles(&page), ["Loud"]);

    // Reports: bad ones are refused and write nothing.
    let subject = json!({"type": "track", "id": track_id});
    for (token, body, status, code) in [
        (&ann_t, json!({"subject": subject, "reason": "spam"}), 422, "own_content"),
        (
            &bob_t,
            json!({"subject": {"type": "track", "id": Uuid::now_v7()}, "reason": "spam"}),
            404,
            "subject_not_found",
        ),
        (&bob_t, json!({"subject": subject, "reason": "boring"}), 422, "validation_failed"),
        (
            &bob_t,
            json!({"subject": {"type": "playlist", "id": track_id}, "reason": "spam"}),
            422,
            "validation_failed",
        ),
    ] {
        let r = call(&app, "POST", "/api/reports", token, Some(body)).await;
        assert_eq!(r.status(), status);
        assert_eq!(r.json::<Value>().await.unwrap()["code"], code);
    }
    let r = call(
        &app,
        "POST",
        "/api/reports",
        &bob_t,
        Some(json!({"subject": subject, "reason": "spam", "note": "buy-cheap-pills-now"})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = call(&app, "POST", "/api/reports", &cid_t, Some(json!({"subject": subject, "reason": "abuse"})))
        .await;
    assert_eq!(r.status(), 201);
    let after = token_of(&r);
    let r = call(&app, "POST", "/api/reports", &bob_t, Some(json!({"subject": subject, "reason": "other"})))
        .await;
    assert_eq!(r.status(), 409, "one open report per reporter and subject");
    let (status, queue) = get(&app, "/api/moderation/reports", &mod_t, Some(&after)).await;
    assert_eq!(status, 200, "{queue}");
    assert_eq!(queue[0]["reports"], 2, "{queue}");
    assert_eq!(queue[0]["reasons"], json!(["abuse", "spam"]));
    let report_ids = queue[0]["report_ids"].clone();

    // The triager may read the queue but not hide: 403, recorded.
    let hide = json!({"subject": subject, "action": "hide", "reason": "spam wave", "report_ids": report_ids});
    let r = call(&app, "POST", "/api/moderation/actions", &triage_t, Some(hide.clone())).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "permission_not_held");
    // Bad actions write nothing.
    for body in [
        json!({"subject": subject, "action": "suspend", "reason": "x", "duration_hours": 5}),
        json!({"subject": subject, "action": "hide", "reason": ""}),
        json!({"subject": {"type": "user", "id": ann}, "action": "suspend", "reason": "x"}),
        json!({"subject": subject, "action": "obliterate", "reason": "x"}),
    ] {
        let r = call(&app, "POST", "/api/moderation/actions", &mod_t, Some(body.clone())).await;
        assert_eq!(r.status(), 422, "{body}");
    }

    // One hide resolves both reports: gone from bob's feed and page, the
    // owner sees it with a notice.
    let r = call(&app, "POST", "/api/moderation/actions", &mod_t, Some(hide)).await;
    assert_eq!(r.status(), 201);
    let t = token_of(&r);
    let (_, page) = get(&app, "/api/feed", &bob_t, Some(&t)).await;
    assert!(feed_titles(&page).is_empty(), "{page}");
    let (status, _) = get(&app, &format!("/api/tracks/{track_id}"), &bob_t, None).await;
    assert_eq!(status, 404);
    let (_, profile) = get(&app, &format!("/api/users/{ann}"), &bob_t, Some(&t)).await;
    assert_eq!(profile["tracks_count"], 0, "a hidden track does not count for others: {profile}");
    let (status, own) = get(&app, &format!("/api/tracks/{track_id}"), &ann_t, None).await;
    assert_eq!(status, 200);
    assert_eq!(own["moderation"]["hidden"], true);
    // The reporter is told the outcome, the owner what happened and why;
    // neither learns who acted.
    let (_, told) = get(&app, "/api/notifications", &bob_t, Some(&t)).await;
    let resolved = told["items"].as_array().unwrap().iter().find(|g| g["kind"] == "report_resolved").cloned();
    let resolved = resolved.unwrap_or_else(|| panic!("no report_resolved notice: {told}"));
    assert_eq!(resolved["detail"]["outcome"], "hide");
    assert_eq!(resolved["actors"], json!([]), "never the moderator's identity");
    let (_, told) = get(&app, "/api/notifications", &ann_t, Some(&t)).await;
    let notice = told["items"].as_array().unwrap().iter().find(|g| g["kind"] == "moderation").cloned();
    let notice = notice.unwrap_or_else(|| panic!("no moderation notice: {told}"));
    assert_eq!(notice["detail"]["action"], "hide");
    assert_eq!(notice["detail"]["reason"], "spam wave");
    assert!(!told.to_string().contains(&moddy.to_string()), "{told}");
    let (_, open) = get(&app, "/api/moderation/reports", &mod_t, Some(&t)).await;
    assert_eq!(open, json!([]));
    let (_, closed) = get(&app, "/api/moderation/reports?state=closed", &mod_t, Some(&t)).await;
    assert_eq!(closed[0]["reports"], 2);
    let (_, audit) =
        get(&app, &format!("/api/moderation/audit?subject=track:{track_id}"), &mod_t, Some(&t)).await;
    let entry = &audit["items"][0];
    assert_eq!(entry["action"], "hide", "{audit}");
    assert_eq!(entry["actor_id"], moddy.to_string());
    assert!(entry["actor_roles"].as_array().unwrap().contains(&json!("moderator")));
    assert_eq!(entry["report_ids"].as_array().unwrap().len(), 2);
    let r = call(
        &app,
        "POST",
        "/api/moderation/actions",
        &mod_t,
        Some(json!({"subject": subject, "action": "unhide", "reason": "appeal upheld"})),
    )
    .await;
    let (_, page) = get(&app, "/api/feed", &bob_t, Some(&token_of(&r))).await;
    assert_eq!(feed_titles(&page), ["Loud"]);

    // The suspension cascade.
    let suspend = json!({"subject": {"type": "user", "id": ann}, "action": "suspend", "reason": "repeat spam",
                         "duration_hours": 24});
    let r = call(&app, "POST", "/api/moderation/actions", &mod_t, Some(suspend)).await;
    assert_eq!(r.status(), 201);
    let action_id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // Her access token is refused by the other node within 2 s (its
    // revocation follower), and by this one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let r = app.client.get(format!("{node_b}/api/users/me")).bearer_auth(&ann_t).send().await.unwrap();
        if r.status() == 401 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node B still accepts the suspended account's token");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // This node's follower reads the same event from its own consumer:
    // within the same 2 s.
    loop {
        let (status, _) = get(&app, "/api/users/me", &ann_t, None).await;
        if status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "this node still accepts the suspended account's token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let cause: Option<String> = sqlx::query_scalar(
        "SELECT metadata->>'causation_id' FROM events WHERE aggregate_type = 'user' AND aggregate_id = $1
           AND event_type = 'AllSessionsRevoked'",
    )
    .bind(ann.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(cause.as_deref(), Some(action_id.as_str()), "the side effect names its cause");
    let r = login(&app, ann_email, 2).await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "account_suspended");
    assert!(body["message"].as_str().unwrap().contains("until"), "{body}");
    app.wait_for("/api/feed", &bob_t, |s, p| s == 200 && feed_titles(p).is_empty()).await;
    let (status, _) = get(&app, &format!("/api/tracks/{track_id}"), &bob_t, None).await;
    assert_eq!(status, 404);
    let (_, history) = get(&app, &format!("/api/moderation/subjects/user/{ann}"), &mod_t, None).await;
    assert!(history["suspended_until"].is_string(), "{history}");

    // Unsuspended: her tracks are back and she can sign in.
    let r = call(
        &app,
        "POST",
        "/api/moderation/actions",
        &mod_t,
        Some(json!({"subject": {"type": "user", "id": ann}, "action": "unsuspend", "reason": "served"})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let (_, page) = get(&app, "/api/feed", &bob_t, Some(&token_of(&r))).await;
    assert_eq!(feed_titles(&page), ["Loud"]);
    assert_eq!(login(&app, ann_email, 3).await.status(), 200);

    // The audit read model equals a fresh replay.
    let dump = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (Uuid, String, Option<String>, Option<Uuid>, Vec<String>, Vec<Uuid>)>(
            "SELECT entry_id, action, subject_id, actor_id, actor_roles, report_ids FROM rm_moderation_audit ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let live = loop {
        let live = dump(app.pool.clone()).await;
        // hide, unhide, suspend, unsuspend, role defined, 2 grants by the
        // operator, 1 by chief, 1 refused action.
        if live.len() >= 9 || std::time::Instant::now() > deadline {
            break live;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(live.iter().any(|e| e.1 == "permission_denied"), "{live:?}");
    let runner = projections::runtime::ProjectionRunner::new(
        app.pool.clone(),
        vec![std::sync::Arc::new(projections::moderation::ModerationProjector)],
    );
    runner.rebuild("moderation", 5).await.unwrap();
    assert_eq!(dump(app.pool.clone()).await, live);

    // Every message of the run on the broker: no readable password hash,
    // email or report note (issue 18: personal fields stay sealed).
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&app.pool).await.unwrap();
    let messages = crate::flow::read_topics(&app, usize::try_from(stored).unwrap()).await;
    assert_eq!(messages.len(), usize::try_from(stored).unwrap(), "every event on its topic once");
    // Per UTC day: distinct pseudonymous subjects and follows, for the
    // example consumer's check below.
    let mut days: std::collections::BTreeMap<String, (std::collections::BTreeSet<String>, u64)> =
        std::collections::BTreeMap::new();
    for (_, value, _) in &messages {
        assert!(!value.contains("$argon2"), "a readable password hash on a topic");
        assert!(!value.contains("ann@example.com"), "a readable email on a topic");
        assert!(!value.contains("buy-cheap-pills-now"), "a readable report note on a topic");
        // The pseudonymous subject: on every event with an acting user,
        // 64 hex characters under key id "1", never the user id itself.
        let envelope: serde_json::Value = serde_json::from_str(value).unwrap();
        let subject = envelope["subject"].as_str();
        if let Some(actor) = envelope["metadata"]["actor"].as_str() {
            let subject = subject.unwrap_or_else(|| panic!("no subject on {envelope}"));
            assert!(subject.len() == 64 && subject.bytes().all(|b| b.is_ascii_hexdigit()), "{envelope}");
            assert!(!subject.contains(&actor.replace('-', "")), "{envelope}");
            assert_eq!(envelope["subject_key"], "1", "{envelope}");
        }
        let day = envelope["occurred_at"].as_str().unwrap()[..10].to_owned();
        let entry = days.entry(day).or_default();
        if let Some(subject) = subject {
            entry.0.insert(subject.to_owned());
        }
        if envelope["event_type"] == "UserFollowed" {
            entry.1 += 1;
        }
    }
    let ann_subject = messages
        .iter()
        .map(|(_, v, _)| serde_json::from_str::<serde_json::Value>(v).unwrap())
        .find(|e| e["aggregate_type"] == "user" && e["aggregate_id"] == ann.to_string())
        .and_then(|e| e["subject"].as_str().map(str::to_owned));
    assert!(ann_subject.is_some(), "the user stream's events carry their user's subject");

    // The analysts' example consumer (examples/analyst) against the broker:
    // every message valid against its schema, and the same daily figures.
    let consumer = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/analyst/consumer.py");
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas");
    let (brokers, prefix) = (app.brokers.clone(), app.topic_prefix.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([consumer, "--brokers", &brokers, "--prefix", &prefix, "--schemas", schemas])
            .args(["--group", &format!("analyst-{}", Uuid::new_v4()), "--timeout", "120"])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs (scripts/test installs examples/analyst/requirements.txt)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "consumer failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["messages"], messages.len(), "{report} {stderr}");
    assert_eq!(report["invalid"], 0, "{report} {stderr}");
    let expected: serde_json::Map<String, serde_json::Value> = days
        .into_iter()
        .map(|(day, (subjects, follows))| (day, json!({"active_users": subjects.len(), "follows": follows})))
        .collect();
    assert_eq!(report["days"], serde_json::Value::Object(expected), "{report}");
    // Every event of the run matches its committed schema (issue 18).
    crate::helpers::assert_events_match_schemas(&app.pool).await;
    // `streamforge topics`: the run's topics with what they hold, and the
    // projections' consumer group caught up.
    let group = format!("{}-projections", app.settings.kafka_group_prefix);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let report = loop {
        let report = api::app::topics_report(&app.brokers, &app.topic_prefix).await.unwrap();
        let caught_up =
            report.lines().any(|l| l.starts_with(&format!("| {group} |")) && l.ends_with("| 0 |"));
        if caught_up || std::time::Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(report.contains(&format!("| {}moderation | 3 |", app.topic_prefix)), "{report}");
    assert!(
        report.lines().any(|l| l.starts_with(&format!("| {group} |")) && l.ends_with("| 0 |")),
        "{report}"
    );
}
