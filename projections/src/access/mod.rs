//! The access context's read model (issue 17): custom roles (`rm_roles`)
//! and who holds which (`rm_user_roles`), for the admin lists and the
//! holder counts. Permission checks never read it: they fold the store
//! (ARCHITECTURE decided 14). Per-aggregate checkpoints.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::access::grants::GrantsEvent;
use domain::access::role::RoleEvent;
use domain::envelope::Envelope;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{ProjectionError, Projector};

/// Projects `role` and `access` events.
pub struct AccessProjector;

#[async_trait]
impl Projector for AccessProjector {
    fn name(&self) -> &'static str {
        "access"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == "role" || aggregate_type == "access"
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        if env.aggregate_type == "role" {
            let event: RoleEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
            match event {
                RoleEvent::RoleDefined { name, description, permissions, defined_at, .. } => {
                    let permissions: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
                    sqlx::query(
                        "INSERT INTO rm_roles (name, description, permissions, updated_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (name) DO UPDATE SET description = $2, permissions = $3, updated_at = $4",
                    )
                    .bind(name)
                    .bind(description)
                    .bind(permissions)
                    .bind(defined_at)
                    .execute(conn)
                    .await?;
                }
                RoleEvent::RoleUpdated { description, permissions, updated_at, .. } => {
                    let permissions: Option<Vec<&str>> =
                        permissions.as_ref().map(|p| p.iter().map(|p| p.as_str()).collect());
                    sqlx::query(
                        "UPDATE rm_roles SET description = COALESCE($2, description),
                                permissions = COALESCE($3, permissions), updated_at = $4 WHERE name = $1",
                    )
                    .bind(&env.aggregate_id)
                    .bind(description)
                    .bind(permissions)
                    .bind(updated_at)
                    .execute(conn)
                    .await?;
                }
                RoleEvent::RoleDeleted { .. } => {
                    sqlx::query("DELETE FROM rm_roles WHERE name = $1")
                        .bind(&env.aggregate_id)
                        .execute(conn)
                        .await?;
                }
                // The holders are listed from the grants (`rm_user_roles`).
                RoleEvent::RoleHolderAdded { .. } | RoleEvent::RoleHolderRemoved { .. } => {}
            }
            return Ok(());
        }
        let event: GrantsEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        match event {
            GrantsEvent::RoleGranted { user_id, role, granted_at, .. } => {
                sqlx::query(
                    "INSERT INTO rm_user_roles (user_id, role, granted_at) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, role) DO NOTHING",
                )
                .bind(user_id)
                .bind(role)
                .bind(granted_at)
                .execute(conn)
                .await?;
            }
            GrantsEvent::RoleRevoked { user_id, role, .. } => {
                sqlx::query("DELETE FROM rm_user_roles WHERE user_id = $1 AND role = $2")
                    .bind(user_id)
                    .bind(role)
                    .execute(conn)
                    .await?;
            }
            GrantsEvent::PermissionDenied { .. } | GrantsEvent::HistoryRead { .. } => {}
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_roles", "rm_user_roles"]
    }
}

/// A custom role as listed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RoleRow {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub updated_at: DateTime<Utc>,
}

/// Every custom role, by name.
///
/// # Errors
/// Database errors.
pub async fn custom_roles(pool: &PgPool) -> Result<Vec<RoleRow>, sqlx::Error> {
    sqlx::query_as("SELECT name, description, permissions, updated_at FROM rm_roles ORDER BY name")
        .fetch_all(pool)
        .await
}

/// How many users hold each role named (roles nobody holds are absent).
///
/// # Errors
/// Database errors.
pub async fn holders(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT role, count(*) FROM rm_user_roles GROUP BY role").fetch_all(pool).await
}

/// How many users hold `role`.
///
/// # Errors
/// Database errors.
pub async fn holder_count(pool: &PgPool, role: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM rm_user_roles WHERE role = $1").bind(role).fetch_one(pool).await
}

/// An account in the admin search.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRow {
    pub user_id: Uuid,
    pub username: Option<String>,
    pub roles: Vec<String>,
}

/// Accounts for the admin search: holders of `role` (if given), whose
/// handle starts with `prefix` (if given) or whose id is `exact` (an email
/// resolved by the caller); at most `limit`, by handle.
///
/// # Errors
/// Database errors.
pub async fn search_users(
    pool: &PgPool,
    role: Option<&str>,
    prefix: Option<&str>,
    exact: Option<Uuid>,
    limit: i64,
) -> Result<Vec<UserRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.user_id, p.username,
                COALESCE(ARRAY(SELECT r.role FROM rm_user_roles r WHERE r.user_id = p.user_id ORDER BY r.role),
                         '{}') AS roles
         FROM rm_profiles p
         WHERE ($1::text IS NULL OR EXISTS (SELECT 1 FROM rm_user_roles r WHERE r.user_id = p.user_id AND r.role = $1))
           AND ($2::text IS NULL OR p.username LIKE $2 || '%')
           AND ($3::uuid IS NULL OR p.user_id = $3)
         ORDER BY p.username NULLS LAST, p.user_id LIMIT $4",
    )
    .bind(role)
    .bind(prefix)
    .bind(exact)
    .bind(limit)
    .fetch_all(pool)
    .await
}
