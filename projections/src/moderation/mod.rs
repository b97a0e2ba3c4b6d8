//! The moderation read models (issue 17): reports (`rm_reports`), each
//! subject's current state (`rm_moderation_state`: the filters lists and
//! feeds apply) and the audit trail (`rm_moderation_audit`: every
//! moderation action, role change, grant and refused admin request, with
//! the actor and the roles they held). Per-aggregate checkpoints; each
//! audit row is keyed by its event id, so a redelivery writes nothing.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::access::grants::GrantsEvent;
use domain::access::role::{Actor, RoleEvent};
use domain::envelope::Envelope;
use domain::moderation::{Action, CaseEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{ProjectionError, Projector};

/// Projects `moderation`, `role` and `access` events.
pub struct ModerationProjector;

struct AuditRow<'a> {
    action: &'a str,
    subject: (Option<&'a str>, Option<String>),
    actor: Option<&'a Actor>,
    reason: Option<&'a str>,
    reports: &'a [Uuid],
    until: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
}

async fn audit(conn: &mut PgConnection, env: &Envelope, row: AuditRow<'_>) -> Result<(), ProjectionError> {
    let roles: Vec<String> = row.actor.map(|a| a.roles.clone()).unwrap_or_default();
    sqlx::query(
        "INSERT INTO rm_moderation_audit (entry_id, action, subject_type, subject_id, actor_id, actor_roles,
                                          reason, report_ids, until, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (entry_id) DO NOTHING",
    )
    .bind(env.event_id)
    .bind(row.action)
    .bind(row.subject.0)
    .bind(row.subject.1)
    .bind(row.actor.and_then(|a| a.user_id))
    .bind(roles)
    .bind(row.reason)
    .bind(row.reports)
    .bind(row.until)
    .bind(row.at)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Projector for ModerationProjector {
    fn name(&self) -> &'static str {
        "moderation"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        matches!(aggregate_type, "moderation" | "role" | "access")
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        match env.aggregate_type.as_str() {
            "role" => {
                let event: RoleEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
                let (action, actor, at) = match &event {
                    RoleEvent::RoleDefined { actor, defined_at, .. } => ("role_defined", actor, *defined_at),
                    RoleEvent::RoleUpdated { actor, updated_at, .. } => ("role_updated", actor, *updated_at),
                    RoleEvent::RoleDeleted { actor, deleted_at } => ("role_deleted", actor, *deleted_at),
                    // The grant or revocation written with it is audited.
                    RoleEvent::RoleHolderAdded { .. } | RoleEvent::RoleHolderRemoved { .. } => return Ok(()),
                };
                let subject = (Some("role"), Some(env.aggregate_id.clone()));
                let row = AuditRow {
                    action,
                    subject,
                    actor: Some(actor),
                    reason: None,
                    reports: &[],
                    until: None,
                    at,
                };
                audit(conn, env, row).await
            }
            "access" => {
                let event: GrantsEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
                match &event {
                    GrantsEvent::RoleGranted { user_id, role, actor, granted_at } => {
                        let row = AuditRow {
                            action: "role_granted",
                            subject: (Some("user"), Some(user_id.to_string())),
                            actor: Some(actor),
                            reason: Some(role),
                            reports: &[],
                            until: None,
                            at: *granted_at,
                        };
                        audit(conn, env, row).await
                    }
                    GrantsEvent::RoleRevoked { user_id, role, actor, revoked_at } => {
                        let row = AuditRow {
                            action: "role_revoked",
                            subject: (Some("user"), Some(user_id.to_string())),
                            actor: Some(actor),
                            reason: Some(role),
                            reports: &[],
                            until: None,
                            at: *revoked_at,
                        };
                        audit(conn, env, row).await
                    }
                    GrantsEvent::HistoryRead { user_id, subjects, what, read_at } => {
                        let actor = Actor { user_id: Some(*user_id), roles: Vec::new() };
                        let whose: Vec<String> = subjects.iter().map(Uuid::to_string).collect();
                        let what = format!("{what}; personal fields of {}", whose.join(", "));
                        let row = AuditRow {
                            action: "history_read",
                            subject: (None, None),
                            actor: Some(&actor),
                            reason: Some(&what),
                            reports: &[],
                            until: None,
                            at: *read_at,
                        };
                        audit(conn, env, row).await
                    }
                    GrantsEvent::PermissionDenied { user_id, permission, method, path, denied_at } => {
                        let actor = Actor { user_id: Some(*user_id), roles: Vec::new() };
                        let what = format!("{method} {path} needs {}", permission.as_str());
                        let row = AuditRow {
                            action: "permission_denied",
                            subject: (None, None),
                            actor: Some(&actor),
                            reason: Some(&what),
                            reports: &[],
                            until: None,
                            at: *denied_at,
                        };
                        audit(conn, env, row).await
                    }
                }
            }
            _ => {
                let event: CaseEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
                apply_case(conn, env, event).await
            }
        }
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_reports", "rm_moderation_state", "rm_moderation_audit"]
    }
}

async fn apply_case(
    conn: &mut PgConnection,
    env: &Envelope,
    event: CaseEvent,
) -> Result<(), ProjectionError> {
    match event {
        CaseEvent::ReportFiled { report_id, subject, reporter, reason, filed_at, .. } => {
            let reason = serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_owned));
            sqlx::query(
                "INSERT INTO rm_reports (report_id, subject_type, subject_id, reporter_id, reason, state, filed_at,
                                         updated_at)
                 VALUES ($1, $2, $3, $4, $5, 'open', $6, $6) ON CONFLICT (report_id) DO NOTHING",
            )
            .bind(report_id)
            .bind(subject.kind.as_str())
            .bind(subject.id)
            .bind(reporter)
            .bind(reason.unwrap_or_default())
            .bind(filed_at)
            .execute(conn)
            .await?;
        }
        CaseEvent::ModerationActionTaken {
            subject,
            action,
            actor,
            reason,
            until,
            resolved,
            report_state,
            taken_at,
            ..
        } => {
            if let Some(state) = report_state {
                sqlx::query("UPDATE rm_reports SET state = $2, updated_at = $3 WHERE report_id = ANY($1)")
                    .bind(&resolved)
                    .bind(state.as_str())
                    .bind(taken_at)
                    .execute(&mut *conn)
                    .await?;
            }
            let (column, value): (Option<&str>, Option<bool>) = match action {
                Action::Hide => (Some("hidden"), Some(true)),
                Action::Unhide => (Some("hidden"), Some(false)),
                Action::RemoveComment => (Some("comment_removed"), Some(true)),
                _ => (None, None),
            };
            sqlx::query(
                "INSERT INTO rm_moderation_state (subject_type, subject_id) VALUES ($1, $2)
                 ON CONFLICT (subject_type, subject_id) DO NOTHING",
            )
            .bind(subject.kind.as_str())
            .bind(subject.id)
            .execute(&mut *conn)
            .await?;
            if let (Some(column), Some(value)) = (column, value) {
                sqlx::query(&format!(
                    "UPDATE rm_moderation_state SET {column} = $3 WHERE subject_type = $1 AND subject_id = $2"
                ))
                .bind(subject.kind.as_str())
                .bind(subject.id)
                .bind(value)
                .execute(&mut *conn)
                .await?;
            }
            if matches!(action, Action::Suspend | Action::Unsuspend) {
                sqlx::query(
                    "UPDATE rm_moderation_state SET suspended_until = $3 WHERE subject_type = $1 AND subject_id = $2",
                )
                .bind(subject.kind.as_str())
                .bind(subject.id)
                .bind(until)
                .execute(&mut *conn)
                .await?;
            }
            let row = AuditRow {
                action: action.as_str(),
                subject: (Some(subject.kind.as_str()), Some(subject.id.to_string())),
                actor: Some(&actor),
                reason: Some(&reason),
                reports: &resolved,
                until,
                at: taken_at,
            };
            audit(conn, env, row).await?;
        }
    }
    Ok(())
}

/// A group of reports on one subject.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReportGroup {
    pub subject_type: String,
    pub subject_id: Uuid,
    pub reports: i64,
    pub reasons: Vec<String>,
    pub report_ids: Vec<Uuid>,
    pub latest_at: DateTime<Utc>,
}

/// Reports in `state`, grouped by subject, the most recently reported
/// first; at most `limit` groups.
///
/// # Errors
/// Database errors.
pub async fn report_groups(pool: &PgPool, state: &str, limit: i64) -> Result<Vec<ReportGroup>, sqlx::Error> {
    sqlx::query_as(
        "SELECT subject_type, subject_id, count(*) AS reports,
                array_agg(DISTINCT reason ORDER BY reason) AS reasons,
                array_agg(report_id ORDER BY filed_at) AS report_ids, max(filed_at) AS latest_at
         FROM rm_reports WHERE state = $1
         GROUP BY subject_type, subject_id ORDER BY latest_at DESC LIMIT $2",
    )
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEntry {
    pub entry_id: Uuid,
    pub action: String,
    pub subject_type: Option<String>,
    pub subject_id: Option<String>,
    pub actor_id: Option<Uuid>,
    pub actor_roles: Vec<String>,
    pub reason: Option<String>,
    pub report_ids: Vec<Uuid>,
    pub until: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// Audit filters (all optional).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub subject: Option<(String, String)>,
    pub actor: Option<Uuid>,
    pub action: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// The audit trail, newest first, filtered; at most `limit` entries.
///
/// # Errors
/// Database errors.
pub async fn audit_entries(
    pool: &PgPool,
    f: &AuditFilter,
    limit: i64,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let (after_at, after_id) = f.after.map_or((None, None), |(a, i)| (Some(a), Some(i)));
    sqlx::query_as(
        "SELECT entry_id, action, subject_type, subject_id, actor_id, actor_roles, reason, report_ids, until, at
         FROM rm_moderation_audit
         WHERE ($1::text IS NULL OR (subject_type = $1 AND subject_id = $2))
           AND ($3::uuid IS NULL OR actor_id = $3)
           AND ($4::text IS NULL OR action = $4)
           AND ($5::timestamptz IS NULL OR at >= $5)
           AND ($6::timestamptz IS NULL OR at < $6)
           AND ($7::timestamptz IS NULL OR (at, entry_id) < ($7, $8))
         ORDER BY at DESC, entry_id DESC LIMIT $9",
    )
    .bind(f.subject.as_ref().map(|s| s.0.clone()))
    .bind(f.subject.as_ref().map(|s| s.1.clone()))
    .bind(f.actor)
    .bind(f.action.as_deref())
    .bind(f.from)
    .bind(f.to)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Report counts of a subject per state.
///
/// # Errors
/// Database errors.
pub async fn report_counts(pool: &PgPool, kind: &str, id: Uuid) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT state, count(*) FROM rm_reports WHERE subject_type = $1 AND subject_id = $2 GROUP BY 1",
    )
    .bind(kind)
    .bind(id)
    .fetch_all(pool)
    .await
}
