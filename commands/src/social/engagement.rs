//! Likes, reposts and comments (issue 16): commands on the `Engagement`
//! (per user and track) and `Comment` aggregates, after the checks those
//! aggregates cannot make themselves, all on the write side (decided 14):
//! the track's stream (exists, not deleted, visibility and secret token)
//! and the pair's stream with the track's owner (blocks).

use std::sync::Arc;

use chrono::Utc;
use domain::catalog::track::{Track, Visibility};
use domain::consistency::ConsistencyToken;
use domain::social::comment::{Comment, CommentCommand, CommentError};
use domain::social::engagement::{engagement_id, Engagement, EngagementCommand};
use sqlx::PgPool;
use uuid::Uuid;

use super::{SocialError, SocialService};
use crate::catalog::CatalogService;
use crate::executor::{ExecError, Executor};
use crate::identity::RequestMeta;

/// Why an engagement command was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngageError {
    /// 404 `track_not_found`: no such track, deleted, private without the
    /// right secret token, or its owner and the caller block one another.
    #[error("no such track")]
    TrackNotFound,
    /// 404 `comment_not_found`.
    #[error("no such comment")]
    CommentNotFound,
    /// 403 `not_allowed`: deleting a comment that is neither yours nor on
    /// your track.
    #[error("only the comment's author or the track's owner may delete it")]
    NotAllowed,
    /// 422 `validation_failed` naming `field`.
    #[error("{field} {reason}")]
    Invalid { field: &'static str, reason: &'static str },
    /// 409 `conflict`.
    #[error("changed concurrently; retry")]
    Conflict,
    /// 500.
    #[error("internal error: {0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> EngageError {
    EngageError::Internal(e.to_string())
}

impl<E: std::error::Error> From<ExecError<E>> for EngageError {
    fn from(e: ExecError<E>) -> Self {
        match e {
            ExecError::Conflict => Self::Conflict,
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<SocialError> for EngageError {
    fn from(e: SocialError) -> Self {
        Self::Internal(e.to_string())
    }
}

/// Which engagement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engage {
    Like,
    Unlike,
    Repost,
    Unrepost,
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Engaged {
    /// Whether it appended anything.
    pub changed: bool,
    /// The read-your-writes token of its last event, if any.
    pub token: Option<ConsistencyToken>,
    /// The comment's id (comments only).
    pub comment_id: Option<Uuid>,
}

/// The engagement write side.
pub struct EngagementService {
    inboxes: Executor<domain::social::inbox::Inbox>,
    engagements: Executor<Engagement>,
    comments: Executor<Comment>,
    social: Arc<SocialService>,
    catalog: Arc<CatalogService>,
}

impl EngagementService {
    /// A service over the event store of `pool`, checking access through
    /// `social` (blocks) and `catalog` (tracks).
    pub fn new(pool: PgPool, social: Arc<SocialService>, catalog: Arc<CatalogService>) -> Self {
        Self {
            inboxes: Executor::new(pool.clone(), ()),
            engagements: Executor::new(pool.clone(), ()),
            comments: Executor::new(pool, ()),
            social,
            catalog,
        }
    }

    /// The track `user` may engage with: live, visible to them (owner,
    /// public, or private with the right `secret_token`), and no block
    /// between them and its owner.
    async fn engageable(
        &self,
        user: Uuid,
        track_id: Uuid,
        secret_token: Option<&str>,
    ) -> Result<Track, EngageError> {
        let track = self.catalog.load(track_id).await.map_err(internal)?;
        let owner = track.owner_id.filter(|_| !track.deleted).ok_or(EngageError::TrackNotFound)?;
        if owner == user {
            return Ok(track);
        }
        if track.visibility == Some(Visibility::Private) {
            let token = self.catalog.open_token(&track).await.map_err(internal)?;
            let given = domain::values::Digest(secret_token.unwrap_or_default().to_owned());
            if !token.is_some_and(|t| domain::values::Digest(t).ct_eq(&given)) {
                return Err(EngageError::TrackNotFound);
            }
        }
        if self.social.relationship(user, owner).await?.any_block() {
            return Err(EngageError::TrackNotFound);
        }
        Ok(track)
    }

    /// `user` likes, unlikes, reposts or unreposts `track_id`. Idempotent;
    /// undoing needs no access to the track (a like of a track since made
    /// private or blocked can always be taken back).
    ///
    /// # Errors
    /// `TrackNotFound`, `Conflict`, `Internal`.
    #[tracing::instrument(skip_all, fields(engage = ?engage))]
    pub async fn engage(
        &self,
        user: Uuid,
        track_id: Uuid,
        engage: Engage,
        secret_token: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<Engaged, EngageError> {
        let at = Utc::now();
        // Liking or reposting needs access, and records the track's owner.
        let owner_id = if matches!(engage, Engage::Like | Engage::Repost) {
            self.engageable(user, track_id, secret_token).await?.owner_id.unwrap_or_default()
        } else {
            Uuid::nil()
        };
        let (cmd, name) = match engage {
            Engage::Like => (EngagementCommand::Like { user_id: user, track_id, owner_id, at }, "LikeTrack"),
            Engage::Unlike => (EngagementCommand::Unlike { user_id: user, track_id, at }, "UnlikeTrack"),
            Engage::Repost => {
                (EngagementCommand::Repost { user_id: user, track_id, owner_id, at }, "RepostTrack")
            }
            Engage::Unrepost => {
                (EngagementCommand::Unrepost { user_id: user, track_id, at }, "UnrepostTrack")
            }
        };
        let done = self.engagements.execute(&engagement_id(user, track_id), cmd, meta.to_map(name)).await?;
        Ok(Engaged { changed: !done.events.is_empty(), token: done.token, comment_id: None })
    }

    /// `author` comments on `track_id`: `body` already validated,
    /// `timestamp_ms` within the track's duration, `reply_to` a live
    /// top-level comment of the same track (one level deep).
    ///
    /// # Errors
    /// `TrackNotFound`, `Invalid` (`timestamp_ms`, `reply_to`), `Conflict`,
    /// `Internal`.
    #[allow(clippy::too_many_arguments)]
    pub async fn comment(
        &self,
        author: Uuid,
        track_id: Uuid,
        body: String,
        timestamp_ms: Option<i64>,
        reply_to: Option<Uuid>,
        secret_token: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<Engaged, EngageError> {
        let track = self.engageable(author, track_id, secret_token).await?;
        let duration = track.metadata.as_ref().map_or(0, |m| m.duration_ms);
        if timestamp_ms.is_some_and(|t| t < 0 || t > duration) {
            return Err(EngageError::Invalid {
                field: "timestamp_ms",
                reason: "must be within the track (0 to its duration)",
            });
        }
        let mut parent_author = None;
        if let Some(parent) = reply_to {
            let p = self.comments.load(&parent.to_string()).await?;
            if p.id.is_none() || p.deleted || p.track_id != Some(track_id) || p.reply_to.is_some() {
                return Err(EngageError::Invalid {
                    field: "reply_to",
                    reason: "must be a top-level comment of the same track",
                });
            }
            parent_author = p.author_id;
        }
        let track_owner = track.owner_id.unwrap_or_default();
        let comment_id = Uuid::now_v7();
        let cmd = CommentCommand::Post {
            comment_id,
            track_id,
            author_id: author,
            body,
            timestamp_ms,
            reply_to,
            track_owner,
            parent_author,
            at: Utc::now(),
        };
        let done =
            self.comments.execute_new(&comment_id.to_string(), cmd, meta.to_map("CommentOnTrack")).await?;
        Ok(Engaged { changed: true, token: done.token, comment_id: Some(comment_id) })
    }

    /// Marks `user`'s notifications up to `up_to` as read (`NotificationsRead`
    /// on their inbox; an earlier mark changes nothing).
    ///
    /// # Errors
    /// `Conflict`, `Internal`.
    pub async fn mark_read(
        &self,
        user: Uuid,
        up_to: chrono::DateTime<Utc>,
        meta: &RequestMeta,
    ) -> Result<Engaged, EngageError> {
        let cmd = domain::social::inbox::InboxCommand::MarkRead { up_to, at: Utc::now() };
        let done = self.inboxes.execute(&user.to_string(), cmd, meta.to_map("MarkNotificationsRead")).await?;
        Ok(Engaged { changed: !done.events.is_empty(), token: done.token, comment_id: None })
    }

    /// Deletes `comment_id` as `actor` (its author or the track's owner).
    ///
    /// # Errors
    /// `CommentNotFound`, `NotAllowed`, `Conflict`, `Internal`.
    pub async fn delete_comment(
        &self,
        actor: Uuid,
        comment_id: Uuid,
        meta: &RequestMeta,
    ) -> Result<Engaged, EngageError> {
        let comment = self.comments.load(&comment_id.to_string()).await?;
        let track_id = comment.track_id.ok_or(EngageError::CommentNotFound)?;
        let track = self.catalog.load(track_id).await.map_err(internal)?;
        let track_owner = track.owner_id.unwrap_or_default();
        let cmd = CommentCommand::Delete { actor, track_owner, at: Utc::now() };
        match self.comments.execute(&comment_id.to_string(), cmd, meta.to_map("DeleteComment")).await {
            Ok(done) => Ok(Engaged { changed: true, token: done.token, comment_id: Some(comment_id) }),
            Err(ExecError::Domain(CommentError::NotFound | CommentError::AlreadyExists)) => {
                Err(EngageError::CommentNotFound)
            }
            Err(ExecError::Domain(CommentError::NotAllowed)) => Err(EngageError::NotAllowed),
            Err(e) => Err(e.into()),
        }
    }
}
