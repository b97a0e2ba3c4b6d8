//! The `Grants` aggregate: the roles one user holds beyond `user`.
//! Aggregate id = the user id (aggregate type `access`). Also records
//! refused attempts on admin and moderator routes (`PermissionDenied`), so
//! the audit trail shows them (issue 17).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::role::Actor;
use super::Permission;

#[derive(Debug, Clone)]
pub enum GrantsCommand {
    /// Grant `role` (existence and the actor's rights checked by the caller).
    Grant { user_id: Uuid, role: String, actor: Actor, at: DateTime<Utc> },
    /// Take `role` back.
    Revoke { user_id: Uuid, role: String, actor: Actor, at: DateTime<Utc> },
    /// Record a refused request (`method`, route `path`) that needed `permission`.
    RecordDenied { user_id: Uuid, permission: Permission, method: String, path: String, at: DateTime<Utc> },
    /// Record that `user_id` (an admin) read personal fields of `subjects`
    /// in the history (`what`: the request, e.g. `events` or `aggregate user:…`).
    RecordHistoryRead { user_id: Uuid, subjects: Vec<Uuid>, what: String, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum GrantsEvent {
    RoleGranted {
        user_id: Uuid,
        role: String,
        actor: Actor,
        granted_at: DateTime<Utc>,
    },
    RoleRevoked {
        user_id: Uuid,
        role: String,
        actor: Actor,
        revoked_at: DateTime<Utc>,
    },
    PermissionDenied {
        user_id: Uuid,
        permission: Permission,
        method: String,
        path: String,
        denied_at: DateTime<Utc>,
    },
    /// An admin read the personal fields of `subjects` (issue 18: every
    /// such read is recorded).
    HistoryRead {
        user_id: Uuid,
        subjects: Vec<Uuid>,
        what: String,
        read_at: DateTime<Utc>,
    },
}

impl DomainEvent for GrantsEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RoleGranted { .. } => "RoleGranted",
            Self::RoleRevoked { .. } => "RoleRevoked",
            Self::PermissionDenied { .. } => "PermissionDenied",
            Self::HistoryRead { .. } => "HistoryRead",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantsError {}

/// The roles a user holds (besides `user`), sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub roles: Vec<String>,
}

impl Aggregate for Grants {
    const TYPE: &'static str = "access";
    type Command = GrantsCommand;
    type Event = GrantsEvent;
    type Error = GrantsError;
    type Services = ();

    async fn handle(
        &mut self,
        command: GrantsCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), GrantsError> {
        match command {
            // Idempotent: granting a held role or revoking one not held
            // writes nothing.
            GrantsCommand::Grant { user_id, role, actor, at } => {
                if !self.roles.contains(&role) {
                    sink.write(GrantsEvent::RoleGranted { user_id, role, actor, granted_at: at }, self).await;
                }
            }
            GrantsCommand::Revoke { user_id, role, actor, at } => {
                if self.roles.contains(&role) {
                    sink.write(GrantsEvent::RoleRevoked { user_id, role, actor, revoked_at: at }, self).await;
                }
            }
            GrantsCommand::RecordDenied { user_id, permission, method, path, at } => {
                sink.write(
                    GrantsEvent::PermissionDenied { user_id, permission, method, path, denied_at: at },
                    self,
                )
                .await;
            }
            GrantsCommand::RecordHistoryRead { user_id, subjects, what, at } => {
                sink.write(GrantsEvent::HistoryRead { user_id, subjects, what, read_at: at }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: GrantsEvent) {
        match event {
            GrantsEvent::RoleGranted { role, .. } => {
                if let Err(i) = self.roles.binary_search(&role) {
                    self.roles.insert(i, role);
                }
            }
            GrantsEvent::RoleRevoked { role, .. } => self.roles.retain(|r| *r != role),
            GrantsEvent::PermissionDenied { .. } | GrantsEvent::HistoryRead { .. } => {}
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

    fn operator() -> Actor {
        Actor { user_id: None, roles: vec![] }
    }

    #[test]
    fn grants_and_revocations_are_idempotent() {
        let user_id = Uuid::from_u128(7);
        let granted = GrantsEvent::RoleGranted {
            user_id,
            role: "admin".to_owned(),
            actor: operator(),
            granted_at: at(),
        };
        TestFramework::<Grants>::with(())
            .given(vec![granted.clone()])
            .when(GrantsCommand::Grant { user_id, role: "admin".to_owned(), actor: operator(), at: at() })
            .then_expect_events(vec![]);
        TestFramework::<Grants>::with(())
            .given_no_previous_events()
            .when(GrantsCommand::Revoke { user_id, role: "admin".to_owned(), actor: operator(), at: at() })
            .then_expect_events(vec![]);
        TestFramework::<Grants>::with(())
            .given(vec![granted])
            .when(GrantsCommand::Revoke { user_id, role: "admin".to_owned(), actor: operator(), at: at() })
            .then_expect_events(vec![GrantsEvent::RoleRevoked {
                user_id,
                role: "admin".to_owned(),
                actor: operator(),
                revoked_at: at(),
            }]);
    }
}
