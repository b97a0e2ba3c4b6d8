//! The moderation context (issue 17): one `Case` aggregate per reported
//! or moderated subject (aggregate type `moderation`, id
//! `"<user|track|comment>:<uuid>"`). Reports and the actions that resolve
//! them are events of the same stream, so a bulk action resolves its
//! reports atomically and the subject's whole history is one stream.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::role::Actor;
use crate::access::Permission;
use crate::values::Sealed;

/// What can be reported and moderated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    User,
    Track,
    Comment,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Track => "track",
            Self::Comment => "comment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::User, Self::Track, Self::Comment].into_iter().find(|k| k.as_str() == s)
    }
}

/// A reported or moderated thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Subject {
    #[serde(rename = "type")]
    pub kind: SubjectKind,
    pub id: Uuid,
}

impl Subject {
    /// The case's stream id: `"<type>:<uuid>"`.
    pub fn case_id(self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }

    /// The subject a case id names.
    pub fn parse_case_id(id: &str) -> Option<Self> {
        let (kind, id) = id.split_once(':')?;
        Some(Self { kind: SubjectKind::parse(kind)?, id: id.parse().ok()? })
    }
}

/// Why something is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportReason {
    Spam,
    Abuse,
    Copyright,
    Other,
}

/// A report's review state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    Open,
    Escalated,
    Closed,
}

impl ReportState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Escalated => "escalated",
            Self::Closed => "closed",
        }
    }
}

/// A moderation action (seed 002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Hide,
    Unhide,
    RemoveComment,
    Suspend,
    Unsuspend,
    Warn,
    Escalate,
    Dismiss,
    /// A moderator's note: changes nothing.
    Comment,
}

impl Action {
    pub const ALL: [Self; 9] = [
        Self::Hide,
        Self::Unhide,
        Self::RemoveComment,
        Self::Suspend,
        Self::Unsuspend,
        Self::Warn,
        Self::Escalate,
        Self::Dismiss,
        Self::Comment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hide => "hide",
            Self::Unhide => "unhide",
            Self::RemoveComment => "remove_comment",
            Self::Suspend => "suspend",
            Self::Unsuspend => "unsuspend",
            Self::Warn => "warn",
            Self::Escalate => "escalate",
            Self::Dismiss => "dismiss",
            Self::Comment => "comment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The permission the action needs.
    pub fn permission(self) -> Permission {
        match self {
            Self::Hide | Self::Unhide | Self::RemoveComment => Permission::ModerationTracksHide,
            Self::Suspend | Self::Unsuspend | Self::Warn => Permission::ModerationUsersSuspend,
            Self::Escalate | Self::Dismiss | Self::Comment => Permission::ModerationReportsRead,
        }
    }

    /// The subject kinds it applies to.
    pub fn applies_to(self, kind: SubjectKind) -> bool {
        match self {
            Self::Hide | Self::Unhide => kind == SubjectKind::Track,
            Self::RemoveComment => kind == SubjectKind::Comment,
            Self::Suspend | Self::Unsuspend | Self::Warn => kind == SubjectKind::User,
            Self::Escalate | Self::Dismiss | Self::Comment => true,
        }
    }

    /// What it does to the reports it names.
    pub fn report_outcome(self) -> Option<ReportState> {
        match self {
            Self::Comment => None,
            Self::Escalate => Some(ReportState::Escalated),
            _ => Some(ReportState::Closed),
        }
    }
}

/// Longest suspension: one year, in hours.
pub const MAX_SUSPENSION_HOURS: i64 = 8_760;
/// Reports one user may file per hour (issue 17).
pub const REPORTS_PER_HOUR: i64 = 20;

#[derive(Debug, Clone)]
pub enum CaseCommand {
    /// File a report (the caller checked the subject exists, is not the
    /// reporter's own, and the reporter's hourly budget).
    File {
        report_id: Uuid,
        subject: Subject,
        reporter: Uuid,
        reason: ReportReason,
        /// Sealed with the reporter's key (free text may be personal).
        note: Option<Sealed>,
        at: DateTime<Utc>,
    },
    /// Take an action (the caller checked the actor's permission).
    Act {
        action_id: Uuid,
        subject: Subject,
        action: Action,
        actor: Actor,
        reason: String,
        duration_hours: Option<i64>,
        report_ids: Vec<Uuid>,
        /// The subject's owner (the user itself, a track's or comment's author).
        owner: Option<Uuid>,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CaseEvent {
    ReportFiled {
        report_id: Uuid,
        subject: Subject,
        reporter: Uuid,
        reason: ReportReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<Sealed>,
        filed_at: DateTime<Utc>,
    },
    ModerationActionTaken {
        action_id: Uuid,
        subject: Subject,
        action: Action,
        /// Who acted and their roles at the time (the audit trail; never
        /// shown to reporters or the subject).
        actor: Actor,
        reason: String,
        /// End of a suspension.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<DateTime<Utc>>,
        /// The reports it resolved, and their reporters (to be told the
        /// outcome), and the state they went to.
        resolved: Vec<Uuid>,
        reporters: Vec<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report_state: Option<ReportState>,
        /// The subject's owner (told what happened and why).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Uuid>,
        taken_at: DateTime<Utc>,
    },
}

impl DomainEvent for CaseEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ReportFiled { .. } => "ReportFiled",
            Self::ModerationActionTaken { .. } => "ModerationActionTaken",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaseError {
    #[error("you already have an open report on this")]
    DuplicateReport,
    #[error("{0} does not apply to this kind of subject")]
    NotApplicable(&'static str),
    #[error("a suspension needs duration_hours from 1 to 8760")]
    Duration,
    #[error("a reason is required (1–1,000 characters)")]
    Reason,
    #[error("report {0} is not an open report of this subject")]
    UnknownReport(Uuid),
    #[error("the case names another subject")]
    WrongSubject,
}

/// One report's state in its case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEntry {
    pub reporter: Uuid,
    pub state: ReportState,
}

/// A subject's moderation state.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub subject: Option<Subject>,
    pub reports: BTreeMap<Uuid, ReportEntry>,
    pub hidden: bool,
    pub comment_removed: bool,
    pub suspended_until: Option<DateTime<Utc>>,
    pub actions: u32,
    pub warnings: u32,
}

impl Case {
    /// Whether the subject is suspended at `now` (suspensions end by
    /// themselves: no event needed).
    pub fn suspended_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.suspended_until.filter(|u| *u > now)
    }

    fn check_subject(&self, subject: Subject) -> Result<(), CaseError> {
        match self.subject {
            Some(s) if s != subject => Err(CaseError::WrongSubject),
            _ => Ok(()),
        }
    }
}

impl Aggregate for Case {
    const TYPE: &'static str = "moderation";
    type Command = CaseCommand;
    type Event = CaseEvent;
    type Error = CaseError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CaseCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CaseError> {
        match command {
            CaseCommand::File { report_id, subject, reporter, reason, note, at } => {
                self.check_subject(subject)?;
                if self.reports.values().any(|r| r.reporter == reporter && r.state != ReportState::Closed) {
                    return Err(CaseError::DuplicateReport);
                }
                sink.write(
                    CaseEvent::ReportFiled { report_id, subject, reporter, reason, note, filed_at: at },
                    self,
                )
                .await;
            }
            CaseCommand::Act {
                action_id,
                subject,
                action,
                actor,
                reason,
                duration_hours,
                report_ids,
                owner,
                at,
            } => {
                self.check_subject(subject)?;
                if !action.applies_to(subject.kind) {
                    return Err(CaseError::NotApplicable(action.as_str()));
                }
                let reason = reason.trim().to_owned();
                if reason.is_empty() || reason.chars().count() > 1_000 {
                    return Err(CaseError::Reason);
                }
                let until = match action {
                    Action::Suspend => match duration_hours {
                        Some(h) if (1..=MAX_SUSPENSION_HOURS).contains(&h) => Some(at + Duration::hours(h)),
                        _ => return Err(CaseError::Duration),
                    },
                    _ => None,
                };
                let mut reporters = Vec::with_capacity(report_ids.len());
                for id in &report_ids {
                    match self.reports.get(id) {
                        Some(r) if r.state != ReportState::Closed => reporters.push(r.reporter),
                        _ => return Err(CaseError::UnknownReport(*id)),
                    }
                }
                let report_state = action.report_outcome().filter(|_| !report_ids.is_empty());
                sink.write(
                    CaseEvent::ModerationActionTaken {
                        action_id,
                        subject,
                        action,
                        actor,
                        reason,
                        until,
                        resolved: report_ids,
                        reporters,
                        report_state,
                        owner,
                        taken_at: at,
                    },
                    self,
                )
                .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: CaseEvent) {
        match event {
            CaseEvent::ReportFiled { report_id, subject, reporter, .. } => {
                self.subject = Some(subject);
                self.reports.insert(report_id, ReportEntry { reporter, state: ReportState::Open });
            }
            CaseEvent::ModerationActionTaken { subject, action, until, resolved, report_state, .. } => {
                self.subject = Some(subject);
                self.actions += 1;
                match action {
                    Action::Hide => self.hidden = true,
                    Action::Unhide => self.hidden = false,
                    Action::RemoveComment => self.comment_removed = true,
                    Action::Suspend => self.suspended_until = until,
                    Action::Unsuspend => self.suspended_until = None,
                    Action::Warn => self.warnings += 1,
                    Action::Escalate | Action::Dismiss | Action::Comment => {}
                }
                if let Some(state) = report_state {
                    for id in resolved {
                        if let Some(r) = self.reports.get_mut(&id) {
                            r.state = state;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn moderator() -> Actor {
        Actor { user_id: Some(Uuid::from_u128(9)), roles: vec!["moderator".to_owned(), "user".to_owned()] }
    }

    const TRACK: Subject = Subject { kind: SubjectKind::Track, id: Uuid::from_u128(5) };
    const USER: Subject = Subject { kind: SubjectKind::User, id: Uuid::from_u128(6) };

    fn filed(report: u128, reporter: u128) -> CaseEvent {
        CaseEvent::ReportFiled {
            report_id: Uuid::from_u128(report),
            subject: TRACK,
            reporter: Uuid::from_u128(reporter),
            reason: ReportReason::Spam,
            note: None,
            filed_at: at(),
        }
    }

    fn act(action: Action, subject: Subject, reports: Vec<u128>, hours: Option<i64>) -> CaseCommand {
        CaseCommand::Act {
            action_id: Uuid::from_u128(100),
            subject,
            action,
            actor: moderator(),
            reason: "rule 3".to_owned(),
            duration_hours: hours,
            report_ids: reports.into_iter().map(Uuid::from_u128).collect(),
            owner: Some(Uuid::from_u128(6)),
            at: at(),
        }
    }

    #[test]
    fn one_open_report_per_reporter_and_subject() {
        TestFramework::<Case>::with(())
            .given(vec![filed(1, 2)])
            .when(CaseCommand::File {
                report_id: Uuid::from_u128(3),
                subject: TRACK,
                reporter: Uuid::from_u128(2),
                reason: ReportReason::Abuse,
                note: None,
                at: at(),
            })
            .then_expect_error(CaseError::DuplicateReport);
    }

    #[test]
    fn a_bulk_hide_resolves_its_reports_and_tells_their_reporters() {
        TestFramework::<Case>::with(())
            .given(vec![filed(1, 2), filed(3, 4)])
            .when(act(Action::Hide, TRACK, vec![1, 3], None))
            .then_expect_events(vec![CaseEvent::ModerationActionTaken {
                action_id: Uuid::from_u128(100),
                subject: TRACK,
                action: Action::Hide,
                actor: moderator(),
                reason: "rule 3".to_owned(),
                until: None,
                resolved: vec![Uuid::from_u128(1), Uuid::from_u128(3)],
                reporters: vec![Uuid::from_u128(2), Uuid::from_u128(4)],
                report_state: Some(ReportState::Closed),
                owner: Some(Uuid::from_u128(6)),
                taken_at: at(),
            }]);
    }

    #[test]
    fn bad_actions_are_refused() {
        let case = || TestFramework::<Case>::with(()).given(vec![filed(1, 2)]);
        case()
            .when(act(Action::Suspend, TRACK, vec![], Some(24)))
            .then_expect_error(CaseError::NotApplicable("suspend"));
        case()
            .when(act(Action::Hide, TRACK, vec![7], None))
            .then_expect_error(CaseError::UnknownReport(Uuid::from_u128(7)));
        TestFramework::<Case>::with(())
            .given_no_previous_events()
            .when(act(Action::Suspend, USER, vec![], None))
            .then_expect_error(CaseError::Duration);
        TestFramework::<Case>::with(())
            .given_no_previous_events()
            .when(act(Action::Suspend, USER, vec![], Some(MAX_SUSPENSION_HOURS + 1)))
            .then_expect_error(CaseError::Duration);
        let mut blank = act(Action::Warn, USER, vec![], None);
        if let CaseCommand::Act { reason, .. } = &mut blank {
            *reason = "  ".to_owned();
        }
        TestFramework::<Case>::with(())
            .given_no_previous_events()
            .when(blank)
            .then_expect_error(CaseError::Reason);
    }

    #[test]
    fn a_suspension_ends_by_itself() {
        let mut case = Case::default();
        case.apply(CaseEvent::ModerationActionTaken {
            action_id: Uuid::from_u128(1),
            subject: USER,
            action: Action::Suspend,
            actor: moderator(),
            reason: "r".to_owned(),
            until: Some(at() + Duration::hours(2)),
            resolved: vec![],
            reporters: vec![],
            report_state: None,
            owner: Some(USER.id),
            taken_at: at(),
        });
        assert!(case.suspended_at(at() + Duration::hours(1)).is_some());
        assert!(case.suspended_at(at() + Duration::hours(3)).is_none());
    }
}
