//! Moderation (issue 17): reports by users, the moderators' queue and
//! actions, the audit trail and a subject's history.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::moderation::ModerationError;
use domain::moderation::{Action, ReportReason, Subject, SubjectKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{Authorized, ModerationAudit, ReportsRead};
use crate::auth::AuthUser;
use crate::consistency::{self, ReadAfter, ReadModel};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ValidJson, ValidQuery};
use crate::routes::auth::meta;
use crate::routes::paging;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/reports", post(file_report))
        .route("/api/moderation/reports", get(list_reports))
        .route("/api/moderation/actions", post(take_action))
        .route("/api/moderation/audit", get(audit))
        .route("/api/moderation/subjects/{kind}/{id}", get(subject_history))
}

impl From<ModerationError> for ApiError {
    fn from(e: ModerationError) -> Self {
        let (status, code) = match &e {
            ModerationError::SubjectNotFound => (StatusCode::NOT_FOUND, "subject_not_found"),
            ModerationError::OwnContent => (StatusCode::UNPROCESSABLE_ENTITY, "own_content"),
            ModerationError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ModerationError::DuplicateReport => (StatusCode::CONFLICT, "duplicate_report"),
            ModerationError::TooManyReports { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_reports"),
            ModerationError::NotHeld(_) => (StatusCode::FORBIDDEN, "permission_not_held"),
            ModerationError::Conflict => (StatusCode::CONFLICT, "conflict"),
            ModerationError::Internal(cause) => return ApiError::internal(cause.clone()),
        };
        let mut err = ApiError::new(status, code, e.to_string());
        match e {
            ModerationError::Invalid { field, .. } => err.field = Some(field),
            ModerationError::TooManyReports { retry_after } => {
                err.retry_after = Some(retry_after.max(1));
            }
            _ => {}
        }
        err
    }
}

/// A subject in a request or an answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubjectRef {
    /// `user`, `track` or `comment`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Uuid,
}

fn subject(s: &SubjectRef) -> Result<Subject, ApiError> {
    let kind = SubjectKind::parse(&s.kind)
        .ok_or_else(|| paging::invalid("subject", "type must be user, track or comment"))?;
    Ok(Subject { kind, id: s.id })
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ReportRequest {
    pub subject: SubjectRef,
    /// `spam`, `abuse`, `copyright` or `other`.
    pub reason: String,
    /// At most 1,000 characters (stored sealed).
    pub note: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Created {
    pub id: Uuid,
}

/// Report a user, a track or a comment: one open report per reporter and
/// subject (409 `duplicate_report`), at most 20 per hour (429), never
/// one's own (422 `own_content`).
#[utoipa::path(post, path = "/api/reports", tag = "moderation", security(("bearer" = [])),
    request_body = ReportRequest,
    responses((status = 201, body = Created, headers(("X-Consistency-Token" = String))),
        (status = 404, description = "subject_not_found", body = ErrorBody),
        (status = 409, description = "duplicate_report", body = ErrorBody),
        (status = 422, description = "validation_failed, own_content", body = ErrorBody),
        (status = 429, description = "too_many_reports", body = ErrorBody)))]
pub async fn file_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<ReportRequest>,
) -> Result<Response, ApiError> {
    let subject = subject(&req.subject)?;
    let reason: ReportReason = serde_json::from_value(serde_json::Value::String(req.reason.clone()))
        .map_err(|_| paging::invalid("reason", "must be spam, abuse, copyright or other"))?;
    let done = state
        .moderation
        .report(user.user_id, subject, reason, req.note.as_deref(), &meta(&headers, Some(user.user_id)))
        .await?;
    Ok((StatusCode::CREATED, consistency::headers(done.token.as_ref()), Json(Created { id: done.id }))
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ReportQuery {
    /// `open` (default), `escalated` or `closed`.
    pub state: Option<String>,
    /// 1–100 (default 50).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReportGroup {
    pub subject: SubjectRef,
    /// Reports in the asked state.
    pub reports: i64,
    pub reasons: Vec<String>,
    /// Their ids (pass as `report_ids` to resolve them).
    pub report_ids: Vec<Uuid>,
    pub latest_at: DateTime<Utc>,
}

/// The moderation queue: reports in a state, grouped by subject, the most
/// recently reported first.
#[utoipa::path(get, path = "/api/moderation/reports", tag = "moderation", security(("bearer" = [])),
    params(ReportQuery),
    responses((status = 200, body = [ReportGroup]), (status = 403, description = "forbidden", body = ErrorBody)))]
pub async fn list_reports(
    State(state): State<AppState>,
    _: Authorized<ReportsRead>,
    read_after: ReadAfter,
    ValidQuery(q): ValidQuery<ReportQuery>,
) -> Result<Json<Vec<ReportGroup>>, ApiError> {
    let wanted = q.state.as_deref().unwrap_or("open");
    if !matches!(wanted, "open" | "escalated" | "closed") {
        return Err(paging::invalid("state", "must be open, escalated or closed"));
    }
    read_after.wait(&state, &[ReadModel::Moderation]).await?;
    let limit = paging::limit(q.limit)?;
    let rows = projections::moderation::report_groups(&state.read, wanted, limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| ReportGroup {
                subject: SubjectRef { kind: r.subject_type, id: r.subject_id },
                reports: r.reports,
                reasons: r.reasons,
                report_ids: r.report_ids,
                latest_at: r.latest_at,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ActionRequest {
    pub subject: SubjectRef,
    /// `hide`, `unhide`, `remove_comment`, `suspend`, `unsuspend`, `warn`,
    /// `escalate`, `dismiss` or `comment` (a note that changes nothing).
    pub action: String,
    /// Required, 1–1,000 characters; the subject is told it.
    pub reason: String,
    /// Suspensions only: 1–8,760 hours.
    pub duration_hours: Option<i64>,
    /// Reports this action resolves (open or escalated reports of the subject).
    #[serde(default)]
    pub report_ids: Vec<Uuid>,
}

/// Take a moderation action. Needs `moderation.reports.read` to reach and
/// the action's own permission (`moderation.tracks.hide` for hide, unhide
/// and remove_comment; `moderation.users.suspend` for suspend, unsuspend
/// and warn): 403 `permission_not_held` otherwise, recorded.
#[utoipa::path(post, path = "/api/moderation/actions", tag = "moderation", security(("bearer" = [])),
    request_body = ActionRequest,
    responses((status = 201, body = Created, headers(("X-Consistency-Token" = String))),
        (status = 403, description = "forbidden, permission_not_held", body = ErrorBody),
        (status = 404, description = "subject_not_found", body = ErrorBody),
        (status = 422, description = "validation_failed", body = ErrorBody)))]
pub async fn take_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Authorized<ReportsRead>,
    ValidJson(req): ValidJson<ActionRequest>,
) -> Result<Response, ApiError> {
    let subject = subject(&req.subject)?;
    let action =
        Action::parse(&req.action).ok_or_else(|| paging::invalid("action", "is not a moderation action"))?;
    let actor = who.user.user_id;
    let done = state
        .moderation
        .act(
            actor,
            subject,
            action,
            &req.reason,
            req.duration_hours,
            req.report_ids,
            &meta(&headers, Some(actor)),
        )
        .await?;
    Ok((StatusCode::CREATED, consistency::headers(done.token.as_ref()), Json(Created { id: done.id }))
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// `<type>:<id>`, e.g. `track:0190…` or `role:curator`.
    pub subject: Option<String>,
    /// The acting user's id.
    pub actor: Option<Uuid>,
    /// e.g. `hide`, `suspend`, `role_granted`, `permission_denied`.
    pub action: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    /// 1–100 (default 50).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    pub action: String,
    pub subject_type: Option<String>,
    pub subject_id: Option<String>,
    /// None for the operator's CLI.
    pub actor_id: Option<Uuid>,
    /// The actor's roles at the time.
    pub actor_roles: Vec<String>,
    pub reason: Option<String>,
    pub report_ids: Vec<Uuid>,
    pub until: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

/// The audit trail of moderation and admin actions, newest first.
#[utoipa::path(get, path = "/api/moderation/audit", tag = "moderation", security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, description = "forbidden", body = ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    _: Authorized<ModerationAudit>,
    read_after: ReadAfter,
    ValidQuery(q): ValidQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    read_after.wait(&state, &[ReadModel::Moderation]).await?;
    let limit = paging::limit(q.limit)?;
    let subject = match q.subject.as_deref() {
        Some(s) => {
            let (kind, id) =
                s.split_once(':').ok_or_else(|| paging::invalid("subject", "must be <type>:<id>"))?;
            Some((kind.to_owned(), id.to_owned()))
        }
        None => None,
    };
    let filter = projections::moderation::AuditFilter {
        subject,
        actor: q.actor,
        action: q.action,
        from: q.from,
        to: q.to,
        after: paging::keyset(q.cursor.as_deref())?,
    };
    let rows = projections::moderation::audit_entries(&state.read, &filter, limit).await?;
    let next_cursor = paging::next_cursor(&rows, limit, |r| (r.at, r.entry_id));
    Ok(Json(AuditPage { items: rows.into_iter().map(entry).collect(), next_cursor }))
}

fn entry(r: projections::moderation::AuditEntry) -> AuditEntry {
    AuditEntry {
        id: r.entry_id,
        action: r.action,
        subject_type: r.subject_type,
        subject_id: r.subject_id,
        actor_id: r.actor_id,
        actor_roles: r.actor_roles,
        reason: r.reason,
        report_ids: r.report_ids,
        until: r.until,
        at: r.at,
    }
}

/// The `{kind}/{id}` of a subject.
#[derive(Debug, Deserialize)]
pub struct SubjectPath {
    pub kind: String,
    pub id: Uuid,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubjectState {
    pub subject: SubjectRef,
    /// `open` when reports await review, `escalated`, or `clear`.
    pub review_state: String,
    pub hidden: bool,
    pub comment_removed: bool,
    /// End of the suspension in force, if any.
    pub suspended_until: Option<DateTime<Utc>>,
    pub reports: i64,
    pub open_reports: i64,
    pub actions: u32,
    pub warnings: u32,
    /// Appeals come with a later issue: always 0.
    pub appeals: u32,
    /// Newest first (up to 100).
    pub history: Vec<AuditEntry>,
}

/// A subject's moderation state (from its case stream) and history.
#[utoipa::path(get, path = "/api/moderation/subjects/{kind}/{id}", tag = "moderation", security(("bearer" = [])),
    params(("kind" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = SubjectState), (status = 403, description = "forbidden", body = ErrorBody),
        (status = 422, description = "validation_failed", body = ErrorBody)))]
pub async fn subject_history(
    State(state): State<AppState>,
    _: Authorized<ModerationAudit>,
    Path(p): Path<SubjectPath>,
) -> Result<Json<SubjectState>, ApiError> {
    let s = subject(&SubjectRef { kind: p.kind.clone(), id: p.id })?;
    let case = state.moderation.case(s).await?;
    let open = case.reports.values().filter(|r| r.state == domain::moderation::ReportState::Open).count();
    let escalated =
        case.reports.values().filter(|r| r.state == domain::moderation::ReportState::Escalated).count();
    let filter = projections::moderation::AuditFilter {
        subject: Some((s.kind.as_str().to_owned(), s.id.to_string())),
        ..Default::default()
    };
    let history = projections::moderation::audit_entries(&state.read, &filter, 100).await?;
    Ok(Json(SubjectState {
        subject: SubjectRef { kind: p.kind, id: p.id },
        review_state: if open > 0 {
            "open"
        } else if escalated > 0 {
            "escalated"
        } else {
            "clear"
        }
        .to_owned(),
        hidden: case.hidden,
        comment_removed: case.comment_removed,
        suspended_until: case.suspended_at(Utc::now()),
        reports: i64::try_from(case.reports.len()).unwrap_or(i64::MAX),
        open_reports: i64::try_from(open).unwrap_or(i64::MAX),
        actions: case.actions,
        warnings: case.warnings,
        appeals: 0,
        history: history.into_iter().map(entry).collect(),
    }))
}
