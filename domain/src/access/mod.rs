//! The access context (issue 17): roles, their permissions, and which
//! users hold which roles.
//!
//! - Built-in roles `admin` (every permission), `moderator` (the
//!   `moderation.*` permissions) and `user` (none; every account holds it)
//!   are fixed here, never in the store, and cannot be changed or deleted.
//! - Admins define further roles ("user types": `artist`, `label`,
//!   `curator`, …) as a name, a description and permissions from the fixed
//!   [`Permission`] catalogue: one [`role::Role`] aggregate per role name.
//! - Which roles a user holds: one [`grants::Grants`] aggregate per user.
//!
//! Rules that span aggregates (an actor may grant only permissions they
//! hold, nobody changes their own roles) are checked by the command
//! service with the actor's effective permissions read from the store
//! (ARCHITECTURE decided 14).

pub mod grants;
pub mod role;

use serde::{Deserialize, Serialize};

/// The permission catalogue (`GET /api/admin/permissions`). Names are
/// `<area>.<object>.<verb>`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Permission {
    /// Read reports and the moderation queue.
    #[serde(rename = "moderation.reports.read")]
    ModerationReportsRead,
    /// Hide and unhide tracks, remove comments.
    #[serde(rename = "moderation.tracks.hide")]
    ModerationTracksHide,
    /// Suspend and unsuspend accounts, warn users.
    #[serde(rename = "moderation.users.suspend")]
    ModerationUsersSuspend,
    /// Read the moderation audit trail and subjects' histories.
    #[serde(rename = "moderation.audit.read")]
    ModerationAuditRead,
    /// Define, change and delete roles; grant and revoke them.
    #[serde(rename = "admin.roles.manage")]
    AdminRolesManage,
    /// Search and read accounts.
    #[serde(rename = "admin.users.read")]
    AdminUsersRead,
    /// Read the admin audit history.
    #[serde(rename = "admin.audit.read")]
    AdminAuditRead,
    /// Replay read models and rebuild feeds.
    #[serde(rename = "admin.replay")]
    AdminReplay,
}

impl Permission {
    /// Every permission, in catalogue order.
    pub const ALL: [Self; 8] = [
        Self::ModerationReportsRead,
        Self::ModerationTracksHide,
        Self::ModerationUsersSuspend,
        Self::ModerationAuditRead,
        Self::AdminRolesManage,
        Self::AdminUsersRead,
        Self::AdminAuditRead,
        Self::AdminReplay,
    ];

    /// The wire name, e.g. `moderation.tracks.hide`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModerationReportsRead => "moderation.reports.read",
            Self::ModerationTracksHide => "moderation.tracks.hide",
            Self::ModerationUsersSuspend => "moderation.users.suspend",
            Self::ModerationAuditRead => "moderation.audit.read",
            Self::AdminRolesManage => "admin.roles.manage",
            Self::AdminUsersRead => "admin.users.read",
            Self::AdminAuditRead => "admin.audit.read",
            Self::AdminReplay => "admin.replay",
        }
    }

    /// What it allows, for the catalogue.
    pub fn description(self) -> &'static str {
        match self {
            Self::ModerationReportsRead => "read reports and the moderation queue",
            Self::ModerationTracksHide => "hide and unhide tracks, remove comments",
            Self::ModerationUsersSuspend => "suspend and unsuspend accounts, warn users",
            Self::ModerationAuditRead => "read the moderation audit trail",
            Self::AdminRolesManage => "define, change and delete roles; grant and revoke them",
            Self::AdminUsersRead => "search and read accounts",
            Self::AdminAuditRead => "read the admin audit history",
            Self::AdminReplay => "replay read models and rebuild feeds",
        }
    }

    /// The permission named `name`, if it is in the catalogue.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// The built-in roles.
pub const BUILTIN_ROLES: [&str; 3] = ["admin", "moderator", "user"];

/// The permissions of built-in role `name` (`None` for any other name).
pub fn builtin_permissions(name: &str) -> Option<Vec<Permission>> {
    match name {
        "admin" => Some(Permission::ALL.to_vec()),
        "moderator" => {
            Some(Permission::ALL.into_iter().filter(|p| p.as_str().starts_with("moderation.")).collect())
        }
        "user" => Some(Vec::new()),
        _ => None,
    }
}

/// A role name: 2–30 characters of `a-z 0-9 _`, starting with a letter.
///
/// # Errors
/// A message for the 422 answer.
pub fn validate_role_name(name: &str) -> Result<(), &'static str> {
    let ok_len = (2..=30).contains(&name.len());
    let ok_start = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok_len && ok_start && ok_chars {
        Ok(())
    } else {
        Err("must be 2–30 characters of a-z, 0-9 and _, starting with a letter")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_round_trips_and_builtins_are_fixed() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert_eq!(Permission::parse("admin.everything"), None);
        assert_eq!(builtin_permissions("admin").unwrap().len(), Permission::ALL.len());
        assert!(builtin_permissions("moderator")
            .unwrap()
            .iter()
            .all(|p| p.as_str().starts_with("moderation.")));
        assert!(builtin_permissions("user").unwrap().is_empty());
        assert_eq!(builtin_permissions("artist"), None);
        assert!(validate_role_name("artist").is_ok());
        assert!(validate_role_name("Artist").is_err());
        assert!(validate_role_name("a").is_err());
        assert!(validate_role_name("9lives").is_err());
    }
}
