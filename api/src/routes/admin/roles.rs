//! Roles and user types (issue 17): the permission catalogue, custom roles,
//! granting and revoking, and the admin user search.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use commands::access::RoleView;
use domain::access::{Permission, BUILTIN_ROLES};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{Authorized, RolesManage, UsersRead};
use crate::auth::AuthUser;
use crate::consistency::{self, ReadAfter, ReadModel};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ValidJson, ValidQuery};
use crate::routes::auth::meta;
use crate::routes::paging;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/permissions", get(permissions))
        .route("/api/admin/roles", get(list_roles).post(define_role))
        .route("/api/admin/roles/{name}", get(get_role).put(update_role).delete(delete_role))
        .route("/api/admin/users/{id}/roles/{name}", put(grant_role).delete(revoke_role))
        .route("/api/admin/users", get(search_users))
        .route("/api/users/me/roles", get(my_roles))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MyRoles {
    /// Always includes `user`.
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
}

/// The caller's roles and the permissions they give (read from the store:
/// current, whatever the token's age).
#[utoipa::path(get, path = "/api/users/me/roles", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = MyRoles), (status = 401, description = "unauthorized", body = ErrorBody)))]
pub async fn my_roles(State(state): State<AppState>, user: AuthUser) -> Result<Json<MyRoles>, ApiError> {
    let e = state.access.effective(user.user_id).await?;
    Ok(Json(MyRoles {
        roles: e.roles,
        permissions: e.permissions.iter().map(|p| p.as_str().to_owned()).collect(),
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PermissionInfo {
    /// e.g. `moderation.tracks.hide`.
    pub name: String,
    pub description: String,
}

/// The permission catalogue.
#[utoipa::path(get, path = "/api/admin/permissions", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = [PermissionInfo]), (status = 403, description = "forbidden", body = ErrorBody)))]
pub async fn permissions(_: Authorized<RolesManage>) -> Json<Vec<PermissionInfo>> {
    Json(
        Permission::ALL
            .into_iter()
            .map(|p| PermissionInfo { name: p.as_str().to_owned(), description: p.description().to_owned() })
            .collect(),
    )
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoleResponse {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    /// `admin`, `moderator` and `user` are built in.
    pub builtin: bool,
    /// Users holding it (every account holds `user`: not counted, 0).
    pub holders: i64,
}

fn response(view: RoleView, holders: i64) -> RoleResponse {
    RoleResponse {
        name: view.name,
        description: view.description,
        permissions: view.permissions.iter().map(|p| p.as_str().to_owned()).collect(),
        builtin: view.builtin,
        holders,
    }
}

/// Every role: the built-in ones, then the custom ones by name.
#[utoipa::path(get, path = "/api/admin/roles", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = [RoleResponse]), (status = 403, description = "forbidden", body = ErrorBody)))]
pub async fn list_roles(
    State(state): State<AppState>,
    _: Authorized<RolesManage>,
    read_after: ReadAfter,
) -> Result<Json<Vec<RoleResponse>>, ApiError> {
    read_after.wait(&state, &[ReadModel::Access]).await?;
    let holders: HashMap<String, i64> =
        projections::access::holders(&state.read).await?.into_iter().collect();
    let mut out = Vec::new();
    for name in BUILTIN_ROLES {
        if let Some(view) = state.access.role(name).await? {
            out.push(response(view, holders.get(name).copied().unwrap_or(0)));
        }
    }
    for row in projections::access::custom_roles(&state.read).await? {
        let n = holders.get(&row.name).copied().unwrap_or(0);
        out.push(RoleResponse {
            name: row.name,
            description: row.description,
            permissions: row.permissions,
            builtin: false,
            holders: n,
        });
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DefineRoleRequest {
    /// 2–30 characters of `a-z 0-9 _`, starting with a letter.
    #[schema(example = "curator")]
    pub name: String,
    /// At most 500 characters.
    #[serde(default)]
    pub description: String,
    /// Names from `GET /api/admin/permissions`; the caller must hold each.
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// Permission names, or 422 `unknown_permission` naming the first unknown.
fn parse_permissions(names: &[String]) -> Result<Vec<Permission>, ApiError> {
    names
        .iter()
        .map(|n| {
            Permission::parse(n).ok_or_else(|| {
                let mut e = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_permission",
                    format!("{n:?} is not a permission (see GET /api/admin/permissions)"),
                );
                e.field = Some("permissions");
                e
            })
        })
        .collect()
}

/// Define a role ("user type"). 409 `role_exists`; 403
/// `permission_not_held` for a permission the caller does not hold.
#[utoipa::path(post, path = "/api/admin/roles", tag = "admin", security(("bearer" = [])),
    request_body = DefineRoleRequest,
    responses((status = 201, body = RoleResponse, headers(("X-Consistency-Token" = String))),
        (status = 403, description = "forbidden, permission_not_held", body = ErrorBody),
        (status = 409, description = "role_exists", body = ErrorBody),
        (status = 422, description = "validation_failed, unknown_permission", body = ErrorBody)))]
pub async fn define_role(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Authorized<RolesManage>,
    ValidJson(req): ValidJson<DefineRoleRequest>,
) -> Result<Response, ApiError> {
    let permissions = parse_permissions(&req.permissions)?;
    let actor = who.user.user_id;
    let done = state
        .access
        .define_role(actor, &req.name, &req.description, &permissions, &meta(&headers, Some(actor)))
        .await?;
    let view = state.access.role(&req.name).await?.ok_or_else(|| ApiError::internal("role vanished"))?;
    Ok((StatusCode::CREATED, consistency::headers(done.token.as_ref()), Json(response(view, 0)))
        .into_response())
}

/// A role `name` path segment.
#[derive(Debug, Deserialize)]
pub struct NamePath {
    pub name: String,
}

/// A role.
#[utoipa::path(get, path = "/api/admin/roles/{name}", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = RoleResponse), (status = 403, description = "forbidden", body = ErrorBody),
        (status = 404, description = "role_not_found", body = ErrorBody)))]
pub async fn get_role(
    State(state): State<AppState>,
    _: Authorized<RolesManage>,
    Path(NamePath { name }): Path<NamePath>,
) -> Result<Json<RoleResponse>, ApiError> {
    let view = state.access.role(&name).await?.ok_or(commands::access::AccessError::RoleNotFound)?;
    let holders = projections::access::holder_count(&state.read, &name).await?;
    Ok(Json(response(view, holders)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateRoleRequest {
    pub description: Option<String>,
    pub permissions: Option<Vec<String>>,
}

/// Change a custom role: the caller must hold every permission it has and
/// gets. Built-in roles: 403 `builtin_role`.
#[utoipa::path(put, path = "/api/admin/roles/{name}", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = UpdateRoleRequest,
    responses((status = 200, body = RoleResponse), (status = 403, description = "forbidden, builtin_role, permission_not_held", body = ErrorBody),
        (status = 404, description = "role_not_found", body = ErrorBody),
        (status = 422, description = "validation_failed, unknown_permission", body = ErrorBody)))]
pub async fn update_role(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Authorized<RolesManage>,
    Path(NamePath { name }): Path<NamePath>,
    ValidJson(req): ValidJson<UpdateRoleRequest>,
) -> Result<Response, ApiError> {
    let permissions = req.permissions.as_deref().map(parse_permissions).transpose()?;
    let actor = who.user.user_id;
    let done = state
        .access
        .update_role(
            actor,
            &name,
            req.description.as_deref(),
            permissions.as_deref(),
            &meta(&headers, Some(actor)),
        )
        .await?;
    let view = state.access.role(&name).await?.ok_or(commands::access::AccessError::RoleNotFound)?;
    let holders = projections::access::holder_count(&state.read, &name).await?;
    Ok((consistency::headers(done.token.as_ref()), Json(response(view, holders))).into_response())
}

/// Delete a custom role nobody holds: 409 `role_in_use` with the count
/// otherwise (counted on the role's stream, so a grant answered a moment
/// ago counts); built-in roles: 403 `builtin_role`.
#[utoipa::path(delete, path = "/api/admin/roles/{name}", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 403, description = "forbidden, builtin_role", body = ErrorBody),
        (status = 404, description = "role_not_found", body = ErrorBody),
        (status = 409, description = "role_in_use", body = ErrorBody)))]
pub async fn delete_role(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Authorized<RolesManage>,
    Path(NamePath { name }): Path<NamePath>,
) -> Result<Response, ApiError> {
    // The role's own stream counts its holders (decided 14): a grant made a
    // moment ago is counted, without waiting for any read model.
    let actor = who.user.user_id;
    let done = state.access.delete_role(actor, &name, &meta(&headers, Some(actor))).await?;
    Ok((StatusCode::NO_CONTENT, consistency::headers(done.token.as_ref())).into_response())
}

/// The `{id}` and `{name}` of a grant.
#[derive(Debug, Deserialize)]
pub struct GrantPath {
    pub id: String,
    pub name: String,
}

fn user_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| paging::invalid("id", "must be a user id"))
}

/// Grant a role. 403 `own_roles` for oneself, `permission_not_held` for a
/// role with a permission the caller lacks; 404 `role_not_found`,
/// `user_not_found`. Idempotent (204 either way).
#[utoipa::path(put, path = "/api/admin/users/{id}/roles/{name}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("name" = String, Path)),
    responses((status = 204, description = "held"), (status = 403, description = "forbidden, own_roles, permission_not_held", body = ErrorBody),
        (status = 404, description = "role_not_found, user_not_found", body = ErrorBody)))]
pub async fn grant_role(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Authorized<RolesManage>,
    Path(p): Path<GrantPath>,
) -> Result<Response, ApiError> {
    set(&state, &headers, who.user.user_id, &p, true).await
}

/// Revoke a role (same rules; idempotent).
#[utoipa::path(delete, path = "/api/admin/users/{id}/roles/{name}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("name" = String, Path)),
    responses((status = 204, description = "not held"), (status = 403, description = "forbidden, own_roles, permission_not_held", body = ErrorBody),
        (status = 404, description = "role_not_found", body = ErrorBody)))]
pub async fn revoke_role(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Authorized<RolesManage>,
    Path(p): Path<GrantPath>,
) -> Result<Response, ApiError> {
    set(&state, &headers, who.user.user_id, &p, false).await
}

async fn set(
    state: &AppState,
    headers: &HeaderMap,
    actor: Uuid,
    p: &GrantPath,
    grant: bool,
) -> Result<Response, ApiError> {
    let user = user_id(&p.id)?;
    let done = state.access.set_role(Some(actor), user, &p.name, grant, &meta(headers, Some(actor))).await?;
    Ok((StatusCode::NO_CONTENT, consistency::headers(done.token.as_ref())).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct UserSearch {
    /// Holders of this role only.
    pub role: Option<String>,
    /// A handle prefix, or an exact email address.
    pub q: Option<String>,
    /// 1–100 (default 50).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AdminUser {
    pub id: Uuid,
    pub username: Option<String>,
    /// Roles held beyond `user`.
    pub roles: Vec<String>,
}

/// Search accounts by role and by handle prefix or exact email.
#[utoipa::path(get, path = "/api/admin/users", tag = "admin", security(("bearer" = [])),
    params(UserSearch),
    responses((status = 200, body = [AdminUser]), (status = 403, description = "forbidden", body = ErrorBody)))]
pub async fn search_users(
    State(state): State<AppState>,
    _: Authorized<UsersRead>,
    read_after: ReadAfter,
    ValidQuery(q): ValidQuery<UserSearch>,
) -> Result<Json<Vec<AdminUser>>, ApiError> {
    read_after.wait(&state, &[ReadModel::Access, ReadModel::Profiles]).await?;
    let limit = paging::limit(q.limit)?;
    let query = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let (prefix, exact) = match query {
        Some(s) if s.contains('@') => {
            let Ok(email) = domain::values::EmailAddress::parse(s) else { return Ok(Json(Vec::new())) };
            let hash = state.identity.email_hash(&email);
            let owner = commands::reservations::owner(
                &state.read,
                commands::reservations::ReservationKind::Email,
                &hash,
            )
            .await?;
            match owner {
                Some(id) => (None, Some(id)),
                None => return Ok(Json(Vec::new())),
            }
        }
        // Handles are `a-z 0-9 _`; `_` is a LIKE wildcard: escaped.
        Some(s) => (Some(s.to_lowercase().replace(['\\', '%'], "").replace('_', "\\_")), None),
        None => (None, None),
    };
    let rows =
        projections::access::search_users(&state.read, q.role.as_deref(), prefix.as_deref(), exact, limit)
            .await?;
    Ok(Json(
        rows.into_iter().map(|r| AdminUser { id: r.user_id, username: r.username, roles: r.roles }).collect(),
    ))
}
