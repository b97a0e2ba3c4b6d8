use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a follow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnfollowCause {
    /// The follower unfollowed.
    Unfollowed,
    /// One of the two blocked the other (same append as `UserBlocked`).
    Blocked,
}

/// Events of the `Relationship` aggregate. They carry user ids only (no
/// personal data); blocks and mutes are private to the API, not to the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RelationshipEvent {
    /// `follower` now follows `followee` (the design card's `FollowUser`).
    UserFollowed { follower: Uuid, followee: Uuid, followed_at: DateTime<Utc> },
    /// `follower` no longer follows `followee`.
    UserUnfollowed { follower: Uuid, followee: Uuid, cause: UnfollowCause, unfollowed_at: DateTime<Utc> },
    /// `blocker` blocks `blocked`.
    UserBlocked { blocker: Uuid, blocked: Uuid, blocked_at: DateTime<Utc> },
    /// `blocker` no longer blocks `blocked`.
    UserUnblocked { blocker: Uuid, blocked: Uuid, unblocked_at: DateTime<Utc> },
    /// `muter` mutes `muted`.
    UserMuted { muter: Uuid, muted: Uuid, muted_at: DateTime<Utc> },
    /// `muter` no longer mutes `muted`.
    UserUnmuted { muter: Uuid, muted: Uuid, unmuted_at: DateTime<Utc> },
}

impl DomainEvent for RelationshipEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserFollowed { .. } => "UserFollowed",
            Self::UserUnfollowed { .. } => "UserUnfollowed",
            Self::UserBlocked { .. } => "UserBlocked",
            Self::UserUnblocked { .. } => "UserUnblocked",
            Self::UserMuted { .. } => "UserMuted",
            Self::UserUnmuted { .. } => "UserUnmuted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
