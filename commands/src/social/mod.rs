//! The social write side (ARCHITECTURE decided 15): follows, blocks and
//! mutes, each a command on the `Relationship` aggregate of the pair
//! (`domain::social::relationship`). The aggregate decides (decided 14);
//! the read models only list.

pub mod engagement;

use chrono::Utc;
use domain::consistency::ConsistencyToken;
use domain::social::relationship::{pair_id, Relationship, RelationshipCommand, RelationshipError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::executor::{ExecError, Executor};
use crate::identity::RequestMeta;

/// Why a graph command was refused.
#[derive(Debug, thiserror::Error)]
pub enum SocialError {
    /// 404 `user_not_found` — no such account (never registered, expired
    /// or erased).
    #[error("no such user")]
    UserNotFound,
    /// 422 `self_relation` — following, blocking or muting oneself.
    #[error("you cannot do this to yourself")]
    SelfRelation,
    /// 403 `blocked` — a follow between users of which one blocks the
    /// other. (The API answers a blocked user's requests about the blocker
    /// with 404 before this is reached.)
    #[error("you cannot follow this user")]
    Blocked,
    /// 409 `conflict` — still conflicting after the retries.
    #[error("changed concurrently; retry")]
    Conflict,
    /// 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ExecError<RelationshipError>> for SocialError {
    fn from(e: ExecError<RelationshipError>) -> Self {
        match e {
            ExecError::Domain(RelationshipError::SelfRelation) => Self::SelfRelation,
            ExecError::Domain(RelationshipError::Blocked) => Self::Blocked,
            ExecError::Domain(e @ RelationshipError::WrongPair) => Self::Internal(e.to_string()),
            ExecError::Conflict => Self::Conflict,
            ExecError::Store(e) => Self::Internal(e),
        }
    }
}

/// What a graph command did.
#[derive(Debug, Clone)]
pub struct Related {
    /// Whether it appended anything (`false`: the state already held).
    pub changed: bool,
    /// The read-your-writes token of its last event, if any.
    pub token: Option<ConsistencyToken>,
    /// The pair's state afterwards.
    pub state: Relationship,
}

/// The social write side.
pub struct SocialService {
    pool: PgPool,
    relationships: Executor<Relationship>,
}

/// Which graph command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Follow,
    Unfollow,
    Block,
    Unblock,
    Mute,
    Unmute,
}

impl Relation {
    fn name(self) -> &'static str {
        match self {
            Self::Follow => "FollowUser",
            Self::Unfollow => "UnfollowUser",
            Self::Block => "BlockUser",
            Self::Unblock => "UnblockUser",
            Self::Mute => "MuteUser",
            Self::Unmute => "UnmuteUser",
        }
    }
}

impl SocialService {
    /// A service over the event store of `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { relationships: Executor::new(pool.clone(), ()), pool }
    }

    /// `actor` does `relation` to `other`. Idempotent: asking for what
    /// already holds appends nothing (`changed: false`). Undoing something
    /// (unfollow, unblock, unmute) toward an unknown account is a no-op,
    /// not an error; doing something toward one is `UserNotFound`.
    ///
    /// # Errors
    /// `UserNotFound`, `SelfRelation`, `Blocked`, `Conflict`, `Internal`.
    #[tracing::instrument(skip_all, fields(relation = ?relation))]
    pub async fn relate(
        &self,
        actor: Uuid,
        relation: Relation,
        other: Uuid,
        meta: &RequestMeta,
    ) -> Result<Related, SocialError> {
        if actor == other {
            return Err(SocialError::SelfRelation);
        }
        if matches!(relation, Relation::Follow | Relation::Block | Relation::Mute)
            && !self.exists(other).await?
        {
            return Err(SocialError::UserNotFound);
        }
        let at = Utc::now();
        let cmd = match relation {
            Relation::Follow => RelationshipCommand::Follow { actor, other, at },
            Relation::Unfollow => RelationshipCommand::Unfollow { actor, other, at },
            Relation::Block => RelationshipCommand::Block { actor, other, at },
            Relation::Unblock => RelationshipCommand::Unblock { actor, other, at },
            Relation::Mute => RelationshipCommand::Mute { actor, other, at },
            Relation::Unmute => RelationshipCommand::Unmute { actor, other, at },
        };
        let mut metadata = meta.to_map(relation.name());
        metadata.insert("actor".to_owned(), actor.to_string());
        let done = self.relationships.execute(&pair_id(actor, other), cmd, metadata).await?;
        Ok(Related { changed: !done.events.is_empty(), token: done.token, state: done.state })
    }

    /// The relationship of `a` and `b` as the store has it (the write side:
    /// for decisions such as "may `a` see `b`'s track").
    ///
    /// # Errors
    /// `Internal`.
    pub async fn relationship(&self, a: Uuid, b: Uuid) -> Result<Relationship, SocialError> {
        if a == b {
            return Ok(Relationship::default());
        }
        self.relationships.load(&pair_id(a, b)).await.map_err(SocialError::from)
    }

    /// Whether account `user` exists (registered, not expired).
    ///
    /// # Errors
    /// `Internal`.
    pub async fn exists(&self, user: Uuid) -> Result<bool, SocialError> {
        crate::identity::account_exists(&self.pool, user)
            .await
            .map_err(|e| SocialError::Internal(e.to_string()))
    }
}
