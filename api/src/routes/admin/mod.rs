//! Admin and moderator routes (issue 17). Every route names the one
//! permission it needs in [`ROUTES`] and takes the [`Authorized`]
//! extractor for it; the permission matrix test walks [`ROUTES`] and the
//! OpenAPI document, so a route without a declared permission fails it.

pub mod history;
pub mod moderation;
pub mod projections;
pub mod roles;

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::StatusCode;
use commands::access::{AccessError, Effective};
use domain::access::Permission;

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::routes::auth::meta;
use crate::state::AppState;

/// `(method, path, permission)` of every admin and moderator route.
pub const ROUTES: &[(&str, &str, Permission)] = &[
    ("GET", "/api/admin/permissions", Permission::AdminRolesManage),
    ("GET", "/api/admin/roles", Permission::AdminRolesManage),
    ("POST", "/api/admin/roles", Permission::AdminRolesManage),
    ("GET", "/api/admin/roles/{name}", Permission::AdminRolesManage),
    ("PUT", "/api/admin/roles/{name}", Permission::AdminRolesManage),
    ("DELETE", "/api/admin/roles/{name}", Permission::AdminRolesManage),
    ("PUT", "/api/admin/users/{id}/roles/{name}", Permission::AdminRolesManage),
    ("DELETE", "/api/admin/users/{id}/roles/{name}", Permission::AdminRolesManage),
    ("GET", "/api/admin/users", Permission::AdminUsersRead),
    ("GET", "/api/admin/events", Permission::AdminAuditRead),
    ("GET", "/api/admin/aggregates/{kind}/{id}", Permission::AdminAuditRead),
    ("GET", "/api/admin/projections", Permission::AdminReplay),
    ("POST", "/api/admin/projections/{name}/rebuild", Permission::AdminReplay),
    ("GET", "/api/admin/event-types", Permission::AdminAuditRead),
    ("GET", "/api/moderation/reports", Permission::ModerationReportsRead),
    ("POST", "/api/moderation/actions", Permission::ModerationReportsRead),
    ("GET", "/api/moderation/audit", Permission::ModerationAuditRead),
    ("GET", "/api/moderation/subjects/{kind}/{id}", Permission::ModerationAuditRead),
];

/// A permission an extractor requires (one marker type per permission).
pub trait Required: Send + Sync + 'static {
    const PERMISSION: Permission;
}

macro_rules! required {
    ($($name:ident => $perm:ident),* $(,)?) => {
        $(
            #[doc = concat!("Marker: requires `", stringify!($perm), "`.")]
            pub struct $name;
            impl Required for $name {
                const PERMISSION: Permission = Permission::$perm;
            }
        )*
    };
}

required! {
    RolesManage => AdminRolesManage,
    UsersRead => AdminUsersRead,
    AuditRead => AdminAuditRead,
    Replay => AdminReplay,
    ReportsRead => ModerationReportsRead,
    TracksHide => ModerationTracksHide,
    UsersSuspend => ModerationUsersSuspend,
    ModerationAudit => ModerationAuditRead,
}

/// The caller, holding permission `P` (decided on the write side: the
/// caller's `Grants` stream and the streams of their custom roles, read on
/// every request, so a role change takes effect at once on every node).
/// 401 without a valid token; 403 `forbidden` naming the permission
/// otherwise, and the refusal is recorded as a `PermissionDenied` event.
pub struct Authorized<P: Required> {
    pub user: AuthUser,
    pub effective: Effective,
    _p: PhantomData<P>,
}

impl<P: Required> FromRequestParts<AppState> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        let effective = state.access.effective(user.user_id).await?;
        if !effective.has(P::PERMISSION) {
            let path = parts.extensions.get::<MatchedPath>().map_or("", MatchedPath::as_str).to_owned();
            let meta = meta(&parts.headers, Some(user.user_id));
            if let Err(e) = state
                .access
                .record_denied(user.user_id, P::PERMISSION, parts.method.as_str(), &path, &meta)
                .await
            {
                tracing::warn!(error = %e, "a refused admin request could not be recorded");
            }
            let mut e = ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this needs the permission {}", P::PERMISSION.as_str()),
            );
            e.field = None;
            return Err(e);
        }
        Ok(Self { user, effective, _p: PhantomData })
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        let status = match &e {
            AccessError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AccessError::RoleExists | AccessError::InUse { .. } | AccessError::Conflict => {
                StatusCode::CONFLICT
            }
            AccessError::RoleNotFound | AccessError::UserNotFound => StatusCode::NOT_FOUND,
            AccessError::Builtin | AccessError::NotHeld(_) | AccessError::OwnRoles => StatusCode::FORBIDDEN,
            AccessError::Internal(cause) => return ApiError::internal(cause.clone()),
        };
        let code = match &e {
            AccessError::Invalid { .. } => "validation_failed",
            AccessError::RoleExists => "role_exists",
            AccessError::InUse { .. } => "role_in_use",
            AccessError::Conflict => "conflict",
            AccessError::RoleNotFound => "role_not_found",
            AccessError::UserNotFound => "user_not_found",
            AccessError::Builtin => "builtin_role",
            AccessError::NotHeld(_) => "permission_not_held",
            AccessError::OwnRoles => "own_roles",
            AccessError::Internal(_) => "internal",
        };
        let mut err = ApiError::new(status, code, e.to_string());
        if let AccessError::Invalid { field, .. } = e {
            err.field = Some(field);
        }
        err
    }
}
