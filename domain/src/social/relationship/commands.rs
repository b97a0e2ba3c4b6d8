use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Commands on a [`super::Relationship`]; `actor` is the user acting, `other`
/// the other user of the pair. Every command is idempotent: asking for the
/// state that already holds appends nothing.
#[derive(Debug, Clone)]
pub enum RelationshipCommand {
    /// `actor` follows `other`. Refused between users of which either
    /// blocks the other, and for oneself.
    Follow { actor: Uuid, other: Uuid, at: DateTime<Utc> },
    /// `actor` stops following `other`.
    Unfollow { actor: Uuid, other: Uuid, at: DateTime<Utc> },
    /// `actor` blocks `other`: the follows both ways end in the same append.
    Block { actor: Uuid, other: Uuid, at: DateTime<Utc> },
    /// `actor` lifts their block of `other` (follows do not come back).
    Unblock { actor: Uuid, other: Uuid, at: DateTime<Utc> },
    /// `actor` mutes `other`: private; hides `other` from `actor`'s feed
    /// and notifications only.
    Mute { actor: Uuid, other: Uuid, at: DateTime<Utc> },
    /// `actor` unmutes `other`.
    Unmute { actor: Uuid, other: Uuid, at: DateTime<Utc> },
}

impl RelationshipCommand {
    /// The acting user and the other user.
    pub fn users(&self) -> (Uuid, Uuid) {
        match self {
            Self::Follow { actor, other, .. }
            | Self::Unfollow { actor, other, .. }
            | Self::Block { actor, other, .. }
            | Self::Unblock { actor, other, .. }
            | Self::Mute { actor, other, .. }
            | Self::Unmute { actor, other, .. } => (*actor, *other),
        }
    }
}
