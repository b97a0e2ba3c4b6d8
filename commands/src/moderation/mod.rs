//! The moderation write side (issue 17): reports and moderation actions on
//! a subject's `Case` (`domain::moderation`), and their side effects.
//!
//! Decisions read the store (decided 14): the actor's permissions
//! (`AccessService::effective`), the subject's existence and owner (its
//! first event), the case's state. A suspension's side effect — every
//! session of the account revoked — is an `AllSessionsRevoked` event whose
//! metadata carries the action's id as `causation_id`; a suspended
//! account's login is refused by the identity service reading the case.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::access::Permission;
use domain::consistency::ConsistencyToken;
use domain::moderation::{
    Action, Case, CaseCommand, CaseError, ReportReason, Subject, SubjectKind, REPORTS_PER_HOUR,
};
use domain::session::RevocationReason;
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::{AccessError, AccessService};
use crate::executor::{ExecError, Executor};
use crate::identity::{IdentityService, RequestMeta};

/// Why a moderation command was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModerationError {
    /// 404 `subject_not_found` — no such user, track or comment (or erased).
    #[error("no such subject")]
    SubjectNotFound,
    /// 422 `own_content` — reporting oneself or one's own content.
    #[error("you cannot report your own content")]
    OwnContent,
    /// 422 `validation_failed`.
    #[error("{field} {message}")]
    Invalid { field: &'static str, message: String },
    /// 409 `duplicate_report`.
    #[error("you already have an open report on this")]
    DuplicateReport,
    /// 429 `too_many_reports` (`Retry-After` seconds).
    #[error("at most 20 reports per hour")]
    TooManyReports { retry_after: i64 },
    /// 403 `permission_not_held` — the action needs a permission the actor lacks.
    #[error("this action needs the permission {0}")]
    NotHeld(&'static str),
    /// 409 `conflict`.
    #[error("changed concurrently; retry")]
    Conflict,
    /// 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ExecError<CaseError>> for ModerationError {
    fn from(e: ExecError<CaseError>) -> Self {
        match e {
            ExecError::Domain(CaseError::DuplicateReport) => Self::DuplicateReport,
            ExecError::Domain(e) => {
                let field = match e {
                    CaseError::NotApplicable(_) => "action",
                    CaseError::Duration => "duration_hours",
                    CaseError::Reason => "reason",
                    CaseError::UnknownReport(_) => "report_ids",
                    CaseError::WrongSubject | CaseError::DuplicateReport => "subject",
                };
                Self::Invalid { field, message: e.to_string() }
            }
            ExecError::Conflict => Self::Conflict,
            ExecError::Store(e) => Self::Internal(e),
        }
    }
}

impl From<sqlx::Error> for ModerationError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<AccessError> for ModerationError {
    fn from(e: AccessError) -> Self {
        Self::Internal(e.to_string())
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Done {
    /// The report's or the action's id.
    pub id: Uuid,
    pub token: Option<ConsistencyToken>,
}

/// The moderation write side.
pub struct ModerationService {
    pool: PgPool,
    cases: Executor<Case>,
    access: Arc<AccessService>,
    identity: Arc<IdentityService>,
}

impl ModerationService {
    pub fn new(pool: PgPool, access: Arc<AccessService>, identity: Arc<IdentityService>) -> Self {
        Self { cases: Executor::new(pool.clone(), ()), pool, access, identity }
    }

    /// The owner of `subject` (the user itself, a track's or a comment's
    /// author) from its first event, or `None` when it does not exist or
    /// was erased.
    ///
    /// # Errors
    /// Database errors.
    pub async fn owner(&self, subject: Subject) -> Result<Option<Uuid>, ModerationError> {
        let (kind, pointer) = match subject.kind {
            SubjectKind::User => ("user", None),
            SubjectKind::Track => ("track", Some("{TrackCreated,owner_id}")),
            SubjectKind::Comment => ("comment", Some("{CommentPosted,author_id}")),
        };
        let row: Option<Option<String>> = sqlx::query_scalar(
            "SELECT CASE WHEN $3::text IS NULL THEN NULL ELSE payload #>> $3::text[] END FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 1
               AND NOT EXISTS (SELECT 1 FROM events e WHERE e.aggregate_type = $1 AND e.aggregate_id = $2
                               AND e.event_type IN ('RegistrationExpired', 'UserErased', 'TrackDeleted'))",
        )
        .bind(kind)
        .bind(subject.id.to_string())
        .bind(pointer)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match (row, subject.kind) {
            (None, _) => None,
            (Some(_), SubjectKind::User) => Some(subject.id),
            (Some(owner), _) => owner.and_then(|o| o.parse().ok()),
        })
    }

    /// `reporter` reports `subject`. One open report per reporter and
    /// subject; at most [`REPORTS_PER_HOUR`] per reporter per hour; never
    /// one's own content. The note (≤ 1,000 characters) is sealed with the
    /// reporter's key.
    ///
    /// # Errors
    /// `SubjectNotFound`, `OwnContent`, `Invalid`, `DuplicateReport`,
    /// `TooManyReports`, `Conflict`, `Internal`.
    pub async fn report(
        &self,
        reporter: Uuid,
        subject: Subject,
        reason: ReportReason,
        note: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<Done, ModerationError> {
        if let Some(n) = note {
            if n.chars().count() > 1_000 || n.chars().any(|c| c.is_control() && c != '\n') {
                return Err(ModerationError::Invalid {
                    field: "note",
                    message: "must be at most 1,000 characters, without control characters".to_owned(),
                });
            }
        }
        let owner = self.owner(subject).await?.ok_or(ModerationError::SubjectNotFound)?;
        if owner == reporter {
            return Err(ModerationError::OwnContent);
        }
        let now = Utc::now();
        // The reporter's budget, from the store: reports filed in the last hour.
        let (recent, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT count(*), min((payload #>> '{ReportFiled,filed_at}')::timestamptz) FROM events
             WHERE aggregate_type = 'moderation' AND event_type = 'ReportFiled'
               AND payload #>> '{ReportFiled,reporter}' = $1
               AND (payload #>> '{ReportFiled,filed_at}')::timestamptz > $2",
        )
        .bind(reporter.to_string())
        .bind(now - chrono::Duration::hours(1))
        .fetch_one(&self.pool)
        .await?;
        if recent >= REPORTS_PER_HOUR {
            let retry_after =
                oldest.map_or(3_600, |o| (o + chrono::Duration::hours(1) - now).num_seconds().max(1));
            return Err(ModerationError::TooManyReports { retry_after });
        }
        let note = match note.map(str::trim).filter(|n| !n.is_empty()) {
            Some(n) => {
                self.identity
                    .vault
                    .ensure_key(reporter)
                    .await
                    .map_err(|e| ModerationError::Internal(e.to_string()))?;
                Some(
                    self.identity
                        .vault
                        .seal(reporter, n)
                        .await
                        .map_err(|e| ModerationError::Internal(e.to_string()))?,
                )
            }
            None => None,
        };
        let report_id = Uuid::now_v7();
        let cmd = CaseCommand::File { report_id, subject, reporter, reason, note, at: now };
        let mut metadata = meta.to_map("FileReport");
        metadata.insert("actor".to_owned(), reporter.to_string());
        let done = self.cases.execute(&subject.case_id(), cmd, metadata).await?;
        Ok(Done { id: report_id, token: done.token })
    }

    /// `actor` takes `action` on `subject`, resolving `report_ids` (bulk).
    /// The action's own permission is checked here (a refusal is recorded
    /// as `PermissionDenied`); a suspension revokes every session of the
    /// account at once.
    ///
    /// # Errors
    /// `NotHeld`, `SubjectNotFound`, `Invalid`, `Conflict`, `Internal`.
    #[allow(clippy::too_many_arguments)]
    pub async fn act(
        &self,
        actor: Uuid,
        subject: Subject,
        action: Action,
        reason: &str,
        duration_hours: Option<i64>,
        report_ids: Vec<Uuid>,
        meta: &RequestMeta,
    ) -> Result<Done, ModerationError> {
        let who = self.access.effective(actor).await?;
        let needed: Permission = action.permission();
        if !who.has(needed) {
            self.access.record_denied(actor, needed, "POST", "/api/moderation/actions", meta).await?;
            return Err(ModerationError::NotHeld(needed.as_str()));
        }
        let owner = self.owner(subject).await?.ok_or(ModerationError::SubjectNotFound)?;
        let action_id = Uuid::now_v7();
        let cmd = CaseCommand::Act {
            action_id,
            subject,
            action,
            actor: domain::access::role::Actor { user_id: Some(actor), roles: who.roles.clone() },
            reason: reason.to_owned(),
            duration_hours,
            report_ids,
            owner: Some(owner),
            at: Utc::now(),
        };
        let mut metadata = meta.to_map("TakeModerationAction");
        metadata.insert("actor".to_owned(), actor.to_string());
        let done = self.cases.execute(&subject.case_id(), cmd, metadata).await?;
        if action == Action::Suspend {
            let mut cause = meta.clone();
            cause.actor = Some(actor);
            cause.causation_id = Some(action_id.to_string());
            self.identity
                .revoke_all_sessions(owner, RevocationReason::Suspended, &cause)
                .await
                .map_err(|e| ModerationError::Internal(e.to_string()))?;
        }
        Ok(Done { id: action_id, token: done.token })
    }

    /// A subject's case as the store has it.
    ///
    /// # Errors
    /// `Internal`.
    pub async fn case(&self, subject: Subject) -> Result<Case, ModerationError> {
        Ok(self.cases.load(&subject.case_id()).await?)
    }
}

/// When `user`'s suspension ends, if suspended now (the user's case, read
/// from the store).
///
/// # Errors
/// Database errors.
pub async fn suspended_until(pool: &PgPool, user: Uuid) -> Result<Option<DateTime<Utc>>, String> {
    let case = Executor::<Case>::new(pool.clone(), ())
        .load(&Subject { kind: SubjectKind::User, id: user }.case_id())
        .await
        .map_err(|e| e.to_string())?;
    Ok(case.suspended_at(Utc::now()))
}
