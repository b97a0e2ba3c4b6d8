//! The `Role` aggregate: one custom role ("user type"). Aggregate id = the
//! role's name. Built-in roles are not in the store (see [`super`]).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Permission;

/// Who acted: the user (none for the operator's CLI) and the roles they
/// held at the time (the audit trail's "roles at the time").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Actor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum RoleCommand {
    /// Define the role (the name is the aggregate id; checked by the caller).
    Define {
        name: String,
        description: String,
        permissions: Vec<Permission>,
        actor: Actor,
        at: DateTime<Utc>,
    },
    /// Change the description and/or the permissions.
    Update {
        description: Option<String>,
        permissions: Option<Vec<Permission>>,
        actor: Actor,
        at: DateTime<Utc>,
    },
    /// Delete the role: refused while anyone holds it.
    Delete { actor: Actor, at: DateTime<Utc> },
    /// `user_id` was granted the role: appended together with the grant
    /// (`GrantsEvent::RoleGranted`, one statement), so the role counts its
    /// holders on the write side (ARCHITECTURE decided 14). Refused for a
    /// role that is not live.
    AddHolder { user_id: Uuid, at: DateTime<Utc> },
    /// `user_id` gave the role back (with `GrantsEvent::RoleRevoked`);
    /// nothing for a role deleted since.
    RemoveHolder { user_id: Uuid, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RoleEvent {
    RoleDefined {
        name: String,
        description: String,
        permissions: Vec<Permission>,
        actor: Actor,
        defined_at: DateTime<Utc>,
    },
    RoleUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        permissions: Option<Vec<Permission>>,
        actor: Actor,
        updated_at: DateTime<Utc>,
    },
    RoleDeleted {
        actor: Actor,
        deleted_at: DateTime<Utc>,
    },
    /// One more user holds the role (written with their `RoleGranted`).
    RoleHolderAdded {
        user_id: Uuid,
        added_at: DateTime<Utc>,
    },
    /// One user fewer holds the role (written with their `RoleRevoked`).
    RoleHolderRemoved {
        user_id: Uuid,
        removed_at: DateTime<Utc>,
    },
}

impl DomainEvent for RoleEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RoleDefined { .. } => "RoleDefined",
            Self::RoleUpdated { .. } => "RoleUpdated",
            Self::RoleDeleted { .. } => "RoleDeleted",
            Self::RoleHolderAdded { .. } => "RoleHolderAdded",
            Self::RoleHolderRemoved { .. } => "RoleHolderRemoved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("a role of that name exists")]
    Exists,
    #[error("no such role")]
    NotFound,
    /// Deleting a role that `holders` users hold.
    #[error("the role is held by {holders} users")]
    InUse { holders: u64 },
}

/// A custom role's state. A deleted role's name can be defined again.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: Option<String>,
    pub description: String,
    pub permissions: Vec<Permission>,
    pub live: bool,
    /// How many users hold it (`RoleHolderAdded` less `RoleHolderRemoved`
    /// since it was defined).
    #[serde(default)]
    pub holders: u64,
}

fn normalised(mut permissions: Vec<Permission>) -> Vec<Permission> {
    permissions.sort_unstable();
    permissions.dedup();
    permissions
}

impl Aggregate for Role {
    const TYPE: &'static str = "role";
    type Command = RoleCommand;
    type Event = RoleEvent;
    type Error = RoleError;
    type Services = ();

    async fn handle(
        &mut self,
        command: RoleCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), RoleError> {
        match command {
            RoleCommand::Define { name, description, permissions, actor, at } => {
                if self.live {
                    return Err(RoleError::Exists);
                }
                let permissions = normalised(permissions);
                sink.write(
                    RoleEvent::RoleDefined { name, description, permissions, actor, defined_at: at },
                    self,
                )
                .await;
            }
            RoleCommand::Update { description, permissions, actor, at } => {
                if !self.live {
                    return Err(RoleError::NotFound);
                }
                let description = description.filter(|d| *d != self.description);
                let permissions = permissions.map(normalised).filter(|p| *p != self.permissions);
                if description.is_some() || permissions.is_some() {
                    sink.write(
                        RoleEvent::RoleUpdated { description, permissions, actor, updated_at: at },
                        self,
                    )
                    .await;
                }
            }
            RoleCommand::Delete { actor, at } => {
                if !self.live {
                    return Err(RoleError::NotFound);
                }
                if self.holders > 0 {
                    return Err(RoleError::InUse { holders: self.holders });
                }
                sink.write(RoleEvent::RoleDeleted { actor, deleted_at: at }, self).await;
            }
            RoleCommand::AddHolder { user_id, at } => {
                if !self.live {
                    return Err(RoleError::NotFound);
                }
                sink.write(RoleEvent::RoleHolderAdded { user_id, added_at: at }, self).await;
            }
            RoleCommand::RemoveHolder { user_id, at } => {
                if self.live {
                    sink.write(RoleEvent::RoleHolderRemoved { user_id, removed_at: at }, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: RoleEvent) {
        match event {
            RoleEvent::RoleDefined { name, description, permissions, .. } => {
                *self = Self { name: Some(name), description, permissions, live: true, holders: 0 };
            }
            RoleEvent::RoleUpdated { description, permissions, .. } => {
                if let Some(d) = description {
                    self.description = d;
                }
                if let Some(p) = permissions {
                    self.permissions = p;
                }
            }
            RoleEvent::RoleDeleted { .. } => {
                self.live = false;
                self.permissions.clear();
            }
            RoleEvent::RoleHolderAdded { .. } => self.holders += 1,
            RoleEvent::RoleHolderRemoved { .. } => self.holders = self.holders.saturating_sub(1),
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

    fn admin() -> Actor {
        Actor { user_id: Some(Uuid::from_u128(1)), roles: vec!["admin".to_owned()] }
    }

    fn defined() -> RoleEvent {
        RoleEvent::RoleDefined {
            name: "curator".to_owned(),
            description: "picks tracks".to_owned(),
            permissions: vec![Permission::ModerationReportsRead],
            actor: admin(),
            defined_at: at(),
        }
    }

    #[test]
    fn a_role_is_defined_once_and_its_permissions_are_kept_sorted() {
        TestFramework::<Role>::with(())
            .given_no_previous_events()
            .when(RoleCommand::Define {
                name: "curator".to_owned(),
                description: "picks tracks".to_owned(),
                permissions: vec![Permission::ModerationReportsRead, Permission::ModerationReportsRead],
                actor: admin(),
                at: at(),
            })
            .then_expect_events(vec![defined()]);
        TestFramework::<Role>::with(())
            .given(vec![defined()])
            .when(RoleCommand::Define {
                name: "curator".to_owned(),
                description: String::new(),
                permissions: vec![],
                actor: admin(),
                at: at(),
            })
            .then_expect_error(RoleError::Exists);
    }

    #[test]
    fn a_held_role_is_not_deleted_and_a_deleted_one_takes_no_holder() {
        let user_id = Uuid::from_u128(9);
        let added = RoleEvent::RoleHolderAdded { user_id, added_at: at() };
        let removed = RoleEvent::RoleHolderRemoved { user_id, removed_at: at() };
        TestFramework::<Role>::with(())
            .given(vec![defined(), added.clone(), added.clone(), removed.clone()])
            .when(RoleCommand::Delete { actor: admin(), at: at() })
            .then_expect_error(RoleError::InUse { holders: 1 });
        TestFramework::<Role>::with(())
            .given(vec![defined(), added.clone(), removed.clone()])
            .when(RoleCommand::Delete { actor: admin(), at: at() })
            .then_expect_events(vec![RoleEvent::RoleDeleted { actor: admin(), deleted_at: at() }]);
        let deleted = RoleEvent::RoleDeleted { actor: admin(), deleted_at: at() };
        TestFramework::<Role>::with(())
            .given(vec![defined(), deleted.clone()])
            .when(RoleCommand::AddHolder { user_id, at: at() })
            .then_expect_error(RoleError::NotFound);
        TestFramework::<Role>::with(())
            .given(vec![defined(), deleted])
            .when(RoleCommand::RemoveHolder { user_id, at: at() })
            .then_expect_events(vec![]);
        TestFramework::<Role>::with(())
            .given(vec![defined()])
            .when(RoleCommand::AddHolder { user_id, at: at() })
            .then_expect_events(vec![added]);
    }

    #[test]
    fn updates_write_only_changes_and_a_deleted_role_can_be_defined_again() {
        TestFramework::<Role>::with(())
            .given(vec![defined()])
            .when(RoleCommand::Update {
                description: Some("picks tracks".to_owned()),
                permissions: Some(vec![Permission::ModerationReportsRead]),
                actor: admin(),
                at: at(),
            })
            .then_expect_events(vec![]);
        let deleted = RoleEvent::RoleDeleted { actor: admin(), deleted_at: at() };
        TestFramework::<Role>::with(())
            .given(vec![defined(), deleted.clone()])
            .when(RoleCommand::Update {
                description: Some("x".to_owned()),
                permissions: None,
                actor: admin(),
                at: at(),
            })
            .then_expect_error(RoleError::NotFound);
        TestFramework::<Role>::with(())
            .given(vec![defined(), deleted])
            .when(RoleCommand::Define {
                name: "curator".to_owned(),
                description: "picks tracks".to_owned(),
                permissions: vec![Permission::ModerationReportsRead],
                actor: admin(),
                at: at(),
            })
            .then_expect_events(vec![defined()]);
    }
}
