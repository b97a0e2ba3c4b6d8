//! Roles and user types (issue 17): the permission matrix over every admin
//! and moderator route (generated from the route declarations), the
//! granting rules, and the operator's first-admin command.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, Feed, TestApp};
use crate::social::member;

/// `streamforge admin grant --email … --role …`, through the same code.
async fn operator_grant(app: &TestApp, email: &str, role: &str) {
    let node = api::app::App::build(app.settings.clone()).await.unwrap();
    assert!(node.operator_set_role(email, role, true).await.unwrap());
    node.pool.close().await;
}

async fn call(app: &TestApp, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = app.client.request(method, format!("{}{path}", app.base)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_admin_route_answers_403_without_its_permission_and_not_with_it() {
    let app = spawn_app(Feed::Postgres).await;
    let (_root, chief_t) = member(&app, "chief").await;
    let (_moddy, mod_t) = member(&app, "moddy").await;
    let (_plain, plain_t) = member(&app, "plain").await;
    let (auditor, auditor_t) = member(&app, "auditor").await;
    operator_grant(&app, "chief@example.com", "admin").await;
    operator_grant(&app, "moddy@example.com", "moderator").await;
    let (status, body) = call(
        &app,
        "POST",
        "/api/admin/roles",
        &chief_t,
        Some(json!({"name": "reader", "description": "reads accounts", "permissions": ["admin.users.read"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) =
        call(&app, "PUT", &format!("/api/admin/users/{auditor}/roles/reader"), &chief_t, None).await;
    assert_eq!(status, 204);

    // Every admin or moderator path of the API is declared with a permission.
    let (_, spec) = call(&app, "GET", "/openapi.json", &plain_t, None).await;
    let declared: BTreeSet<(String, String)> =
        api::routes::admin::ROUTES.iter().map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned())).collect();
    let mut seen = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        if !(path.starts_with("/api/admin") || path.starts_with("/api/moderation")) {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let key = (method.to_uppercase(), path.clone());
            assert!(declared.contains(&key), "{key:?} has no permission in routes::admin::ROUTES");
            seen += 1;
        }
    }
    assert_eq!(seen, declared.len(), "a declared route is missing from the API");

    // The matrix: each built-in role and a custom one against every route.
    let holders = [
        ("admin", &chief_t, domain::access::builtin_permissions("admin").unwrap()),
        ("moderator", &mod_t, domain::access::builtin_permissions("moderator").unwrap()),
        ("user", &plain_t, vec![]),
        ("reader", &auditor_t, vec![domain::access::Permission::AdminUsersRead]),
    ];
    let denied_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'PermissionDenied'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let mut refusals = 0;
    for (method, path, permission) in api::routes::admin::ROUTES {
        let concrete = path.replace("{name}", "nosuchrole").replace("{id}", &Uuid::now_v7().to_string());
        let body = matches!(*method, "POST" | "PUT").then(|| json!({}));
        for (role, token, permissions) in &holders {
            let (status, body) = call(&app, method, &concrete, token, body.clone()).await;
            if permissions.contains(permission) {
                assert_ne!(status, 403, "{role} on {method} {path}: {body}");
                assert_ne!(status, 401, "{role} on {method} {path}: {body}");
            } else {
                assert_eq!(status, 403, "{role} on {method} {path}: {body}");
                assert_eq!(body["code"], "forbidden");
                refusals += 1;
            }
        }
    }
    let denied_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'PermissionDenied'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(denied_after - denied_before, refusals, "every refusal is an event");
    let (status, _) = call(&app, "GET", "/api/admin/roles", "not-a-token", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nobody_grants_what_they_do_not_hold_nor_changes_their_own_roles() {
    let app = spawn_app(Feed::Postgres).await;
    let (root, chief_t) = member(&app, "chief").await;
    let (manager, manager_t) = member(&app, "manager").await;
    let (plain, _plain_t) = member(&app, "plain").await;
    operator_grant(&app, "chief@example.com", "admin").await;

    // Bad definitions write nothing.
    for (body, code) in [
        (json!({"name": "x", "permissions": []}), "validation_failed"),
        (json!({"name": "curator", "permissions": ["admin.everything"]}), "unknown_permission"),
        (json!({"name": "admin", "permissions": []}), "role_exists"),
    ] {
        let (status, answer) = call(&app, "POST", "/api/admin/roles", &chief_t, Some(body)).await;
        assert!(status == 422 || status == 409, "{answer}");
        assert_eq!(answer["code"], code, "{answer}");
    }
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'role'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(roles, 0);

    // A role manager without moderation permissions.
    let (status, _) = call(
        &app,
        "POST",
        "/api/admin/roles",
        &chief_t,
        Some(json!({"name": "role_manager", "permissions": ["admin.roles.manage"]})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) =
        call(&app, "PUT", &format!("/api/admin/users/{manager}/roles/role_manager"), &chief_t, None).await;
    assert_eq!(status, 204);
    // …cannot define, or grant, what they do not hold…
    let (status, body) = call(
        &app,
        "POST",
        "/api/admin/roles",
        &manager_t,
        Some(json!({"name": "hider", "permissions": ["moderation.tracks.hide"]})),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("permission_not_held")), "{body}");
    let (status, body) =
        call(&app, "PUT", &format!("/api/admin/users/{plain}/roles/moderator"), &manager_t, None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("permission_not_held")), "{body}");
    // …nor change their own roles (neither can the admin).
    let (status, body) =
        call(&app, "DELETE", &format!("/api/admin/users/{manager}/roles/role_manager"), &manager_t, None)
            .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("own_roles")), "{body}");
    let (status, _) =
        call(&app, "DELETE", &format!("/api/admin/users/{root}/roles/admin"), &chief_t, None).await;
    assert_eq!(status, 403);
    // What they hold, they may pass on.
    let (status, _) =
        call(&app, "PUT", &format!("/api/admin/users/{plain}/roles/role_manager"), &manager_t, None).await;
    assert_eq!(status, 204);
    let (status, _) =
        call(&app, "PUT", &format!("/api/admin/users/{plain}/roles/role_manager"), &manager_t, None).await;
    assert_eq!(status, 204, "idempotent");

    // The role list counts holders from the read model: wait until both
    // grants are in it. A role still held cannot be deleted (its own
    // stream counts them); built-in roles never.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = call(&app, "GET", "/api/admin/roles", &chief_t, None).await;
        assert_eq!(status, 200, "{body}");
        let holders = body
            .as_array()
            .and_then(|roles| roles.iter().find(|r| r["name"] == "role_manager"))
            .and_then(|r| r["holders"].as_i64());
        if holders == Some(2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "both grants never reached the read model: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = call(&app, "DELETE", "/api/admin/roles/role_manager", &chief_t, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "role_in_use", "{body}");
    assert!(body["message"].as_str().unwrap().contains('2'), "the count: {body}");
    let (status, body) = call(&app, "DELETE", "/api/admin/roles/moderator", &chief_t, None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("builtin_role")));

    // Revoking takes effect at once: the manager's next request is refused.
    let r = app
        .client
        .delete(format!("{}/api/admin/users/{manager}/roles/role_manager", app.base))
        .bearer_auth(&chief_t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let revoked = r.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let (status, _) = call(&app, "GET", "/api/admin/roles", &manager_t, None).await;
    assert_eq!(status, 403);
    let (_, mine) = call(&app, "GET", "/api/users/me/roles", &manager_t, None).await;
    assert_eq!(mine, json!({"roles": ["user"], "permissions": []}));
    let (_, mine) = call(&app, "GET", "/api/users/me/roles", &chief_t, None).await;
    assert_eq!(mine["roles"], json!(["admin", "user"]));

    // The list shows holders; the search finds by role, handle and email.
    let (status, roles) = call(&app, "GET", "/api/admin/roles", &chief_t, None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = roles.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "moderator", "user", "role_manager"]);
    let found: Value = app
        .client
        .get(format!("{}/api/admin/users?role=role_manager", app.base))
        .bearer_auth(&chief_t)
        .header("X-Consistency-Token", &revoked)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = found.as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [plain.to_string()], "{found}");
    let (_, found) = call(&app, "GET", "/api/admin/users?q=pla", &chief_t, None).await;
    assert_eq!(found[0]["username"], "plain", "{found}");
    let (_, found) = call(&app, "GET", "/api/admin/users?q=manager@example.com", &chief_t, None).await;
    assert_eq!(found[0]["id"], manager.to_string(), "{found}");
    let (_, found) = call(&app, "GET", "/api/admin/users?q=p_a", &chief_t, None).await;
    assert!(found.as_array().unwrap().is_empty(), "_ is not a wildcard: {found}");
}

/// An account registered over HTTP and a token for it, without waiting for
/// any read model (the test below runs no projector).
async fn unprojected_member(app: &TestApp, username: &str) -> (Uuid, String) {
    let r = app
        .post(
            "/api/auth/register",
            json!({"email": format!("{username}@example.com"), "password": "correct horse battery staple",
                   "name": username, "username": username}),
        )
        .await;
    assert_eq!(r.status(), 201, "register {username}");
    let body: Value = r.json().await.unwrap();
    let id: Uuid = body["user_id"].as_str().unwrap().parse().unwrap();
    let token = app.tokens.issue_access(id, Uuid::new_v4(), chrono::Utc::now()).unwrap().0;
    (id, token)
}

/// A role's holders are counted on the write side (ARCHITECTURE decided
/// 14): with no projector running at all, a role granted a moment ago is
/// refused deletion with its count, and deleted once revoked. Grants racing
/// a deletion never leave a grant of a deleted role: either the deletion
/// is refused or every grant is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_role_is_not_deleted_even_with_no_read_model_running() {
    let roles = api::app::Roles { http: true, relay: false, project: false, notify: false };
    let app = crate::helpers::spawn_app_roles(Feed::Postgres, roles, |_| {}).await;
    let (_chief, chief_t) = unprojected_member(&app, "chief").await;
    operator_grant(&app, "chief@example.com", "admin").await;
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(unprojected_member(&app, &format!("holder{i}")).await.0);
    }
    let define = |name: &str| json!({"name": name, "permissions": ["moderation.reports.read"]});
    let (status, body) = call(&app, "POST", "/api/admin/roles", &chief_t, Some(define("curator"))).await;
    assert_eq!(status, 201, "{body}");

    for user in &users[..2] {
        let (status, body) =
            call(&app, "PUT", &format!("/api/admin/users/{user}/roles/curator"), &chief_t, None).await;
        assert_eq!(status, 204, "{body}");
    }
    // Granting again changes nothing, and is not counted twice.
    let (status, _) =
        call(&app, "PUT", &format!("/api/admin/users/{}/roles/curator", users[0]), &chief_t, None).await;
    assert_eq!(status, 204);
    let (status, body) = call(&app, "DELETE", "/api/admin/roles/curator", &chief_t, None).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("role_in_use")), "{body}");
    assert!(body["message"].as_str().unwrap().contains('2'), "the count: {body}");
    for user in &users[..2] {
        let (status, _) =
            call(&app, "DELETE", &format!("/api/admin/users/{user}/roles/curator"), &chief_t, None).await;
        assert_eq!(status, 204);
    }
    let (status, body) = call(&app, "DELETE", "/api/admin/roles/curator", &chief_t, None).await;
    assert_eq!(status, 204, "{body}");

    // A grant stored before roles counted their holders (no
    // `RoleHolderAdded` on the role's stream) is counted from the store.
    let (status, body) = call(&app, "POST", "/api/admin/roles", &chief_t, Some(define("legacy"))).await;
    assert_eq!(status, 201, "{body}");
    let granted = json!({"RoleGranted": {"user_id": users[2], "role": "legacy",
        "actor": {"roles": ["operator"]}, "granted_at": "2026-12-01T10:00:00Z"}});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('access', $1, 1, 'RoleGranted', '1', $2, '{}')",
    )
    .bind(users[2].to_string())
    .bind(granted)
    .execute(&app.pool)
    .await
    .unwrap();
    let (status, body) = call(&app, "DELETE", "/api/admin/roles/legacy", &chief_t, None).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("role_in_use")), "{body}");
    let (status, _) =
        call(&app, "DELETE", &format!("/api/admin/users/{}/roles/legacy", users[2]), &chief_t, None).await;
    assert_eq!(status, 204);
    let (status, body) = call(&app, "DELETE", "/api/admin/roles/legacy", &chief_t, None).await;
    assert_eq!(status, 204, "{body}");

    // Grants and a deletion at once, several times over.
    for round in 0..4 {
        let name = format!("racer{round}");
        let (status, body) = call(&app, "POST", "/api/admin/roles", &chief_t, Some(define(&name))).await;
        assert_eq!(status, 201, "{body}");
        let grants = users.iter().map(|user| {
            let path = format!("/api/admin/users/{user}/roles/{name}");
            let (app, token) = (&app, &chief_t);
            async move { call(app, "PUT", &path, token, None).await }
        });
        let role_path = format!("/api/admin/roles/{name}");
        let deletion = call(&app, "DELETE", &role_path, &chief_t, None);
        let (granted, (deleted, body)) = tokio::join!(futures::future::join_all(grants), deletion);
        let granted: Vec<u16> = granted.iter().map(|(s, _)| *s).collect();
        assert!(granted.iter().all(|s| *s == 204 || *s == 404 || *s == 409), "{granted:?}");
        assert!(deleted == 204 || deleted == 409, "{deleted} {body}");
        if deleted == 204 {
            assert!(!granted.contains(&204), "a grant of the deleted role {name} stands: {granted:?}");
        } else if body["code"] == "role_in_use" {
            assert!(granted.contains(&204), "in use, but nobody was granted it: {granted:?}");
        } else {
            // Outrun by the grants through every retry: nothing deleted.
            assert_eq!(body["code"], "conflict", "{body}");
        }
    }
}
