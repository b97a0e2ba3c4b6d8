//! The `engagement` read model: likes and reposts (`rm_likes`,
//! `rm_reposts`) from `engagement` streams, comments (`rm_comments`) from
//! `comment` streams, and their counters (`rm_track_stats`,
//! `rm_user_likes`). Duplicate guard in the rows, as the graph's
//! ([`super::switch_edge`], `Checkpoints::InReadModel`): a like stream per
//! user and track would otherwise be a checkpoint row per like. Counters move
//! by one exactly when a row switches, in the same transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::social::comment::CommentEvent;
use domain::social::engagement::{parse_engagement_id, EngagementEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{Checkpoints, ProjectionError, Projector};

/// Projects `engagement` and `comment` events.
pub struct EngagementProjector;

#[async_trait]
impl Projector for EngagementProjector {
    fn name(&self) -> &'static str {
        "engagement"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == "engagement" || aggregate_type == "comment"
    }

    fn checkpoints(&self) -> Checkpoints {
        Checkpoints::InReadModel
    }

    async fn has_applied(
        &self,
        pool: &PgPool,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<bool, sqlx::Error> {
        let applied: Option<i64> = if aggregate_type == "comment" {
            let Ok(id) = aggregate_id.parse::<Uuid>() else { return Ok(false) };
            sqlx::query_scalar("SELECT seq FROM rm_comments WHERE comment_id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        } else {
            let Some((user, track)) = parse_engagement_id(aggregate_id) else { return Ok(false) };
            sqlx::query_scalar(
                "SELECT GREATEST((SELECT seq FROM rm_likes WHERE user_id = $1 AND track_id = $2),
                                 (SELECT seq FROM rm_reposts WHERE user_id = $1 AND track_id = $2))",
            )
            .bind(user)
            .bind(track)
            .fetch_one(pool)
            .await?
        };
        Ok(applied.is_some_and(|s| s >= sequence))
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        if env.aggregate_type == "comment" {
            let event: CommentEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
            return apply_comment(conn, env, event).await;
        }
        let event: EngagementEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        let (table, user, track, active, at) = match event {
            EngagementEvent::TrackLiked { user_id, track_id, liked_at, .. } => {
                ("rm_likes", user_id, track_id, true, liked_at)
            }
            EngagementEvent::TrackUnliked { user_id, track_id, unliked_at } => {
                ("rm_likes", user_id, track_id, false, unliked_at)
            }
            EngagementEvent::TrackReposted { user_id, track_id, reposted_at, .. } => {
                ("rm_reposts", user_id, track_id, true, reposted_at)
            }
            EngagementEvent::TrackUnreposted { user_id, track_id, unreposted_at } => {
                ("rm_reposts", user_id, track_id, false, unreposted_at)
            }
        };
        let switched =
            super::switch_edge(conn, (table, "user_id", "track_id"), user, track, active, at, env.sequence)
                .await?;
        if switched {
            let delta: i64 = if active { 1 } else { -1 };
            let column = if table == "rm_likes" { "likes_count" } else { "reposts_count" };
            move_track_counter(conn, track, column, delta).await?;
            if table == "rm_likes" {
                // A zero row first, then the change: an upsert's inserted
                // row is checked against `likes_count >= 0` even when it
                // turns into the update, so a -1 would be refused.
                sqlx::query(
                    "INSERT INTO rm_user_likes (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user)
                .execute(&mut *conn)
                .await?;
                sqlx::query("UPDATE rm_user_likes SET likes_count = likes_count + $2 WHERE user_id = $1")
                    .bind(user)
                    .bind(delta)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_likes", "rm_reposts", "rm_comments", "rm_track_stats", "rm_user_likes"]
    }
}

/// Moves `column` of `track`'s counters by `delta` (a row of zeros first if
/// absent: a decrement always follows the increment that created it).
async fn move_track_counter(
    conn: &mut PgConnection,
    track: Uuid,
    column: &str,
    delta: i64,
) -> Result<(), ProjectionError> {
    sqlx::query("INSERT INTO rm_track_stats (track_id) VALUES ($1) ON CONFLICT (track_id) DO NOTHING")
        .bind(track)
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("UPDATE rm_track_stats SET {column} = {column} + $2 WHERE track_id = $1"))
        .bind(track)
        .bind(delta)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn apply_comment(
    conn: &mut PgConnection,
    env: &Envelope,
    event: CommentEvent,
) -> Result<(), ProjectionError> {
    match event {
        CommentEvent::CommentPosted {
            comment_id,
            track_id,
            author_id,
            body,
            timestamp_ms,
            reply_to,
            posted_at,
            ..
        } => {
            let inserted = sqlx::query(
                "INSERT INTO rm_comments (comment_id, track_id, author_id, body, timestamp_ms, reply_to, posted_at, seq)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (comment_id) DO NOTHING",
            )
            .bind(comment_id)
            .bind(track_id)
            .bind(author_id)
            .bind(body)
            .bind(timestamp_ms)
            .bind(reply_to)
            .bind(posted_at)
            .bind(env.sequence)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if inserted == 1 {
                move_track_counter(conn, track_id, "comments_count", 1).await?;
            }
        }
        CommentEvent::CommentDeleted { .. } => {
            let id: Uuid = env
                .aggregate_id
                .parse()
                .map_err(|_| ProjectionError::Other(anyhow::anyhow!("comment id is not a UUID")))?;
            let track: Option<Uuid> = sqlx::query_scalar(
                "UPDATE rm_comments SET deleted = true, body = NULL, seq = $2
                 WHERE comment_id = $1 AND seq < $2 AND NOT deleted RETURNING track_id",
            )
            .bind(id)
            .bind(env.sequence)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(track) = track {
                move_track_counter(conn, track, "comments_count", -1).await?;
            }
        }
    }
    Ok(())
}

/// Likes, reposts and comments of `track` (zeros if none).
///
/// # Errors
/// Database errors.
pub async fn track_counts(pool: &PgPool, track: Uuid) -> Result<(i64, i64, i64), sqlx::Error> {
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT likes_count, reposts_count, comments_count FROM rm_track_stats WHERE track_id = $1",
    )
    .bind(track)
    .fetch_optional(pool)
    .await?;
    Ok(row.unwrap_or((0, 0, 0)))
}

/// One like or repost in a list.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EngagementItem {
    pub user_id: Uuid,
    pub track_id: Uuid,
    pub since: DateTime<Utc>,
}

/// Who liked `track`, newest first, after the keyset `cursor` (time, user).
///
/// # Errors
/// Database errors.
pub async fn likers(
    pool: &PgPool,
    track: Uuid,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<EngagementItem>, sqlx::Error> {
    let (at, after) = cursor.map_or((None, None), |(a, b)| (Some(a), Some(b)));
    sqlx::query_as::<_, EngagementItem>(
        "SELECT user_id, track_id, since FROM rm_likes
         WHERE track_id = $1 AND active AND ($2::timestamptz IS NULL OR (since, user_id) < ($2, $3))
         ORDER BY since DESC, user_id DESC LIMIT $4",
    )
    .bind(track)
    .bind(at)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// What `user` liked (`reposts` false) or reposted, newest first, after the
/// keyset `cursor` (time, track); only live tracks that are public or owned
/// by `viewer`.
///
/// # Errors
/// Database errors.
pub async fn user_engagements(
    pool: &PgPool,
    user: Uuid,
    reposts: bool,
    viewer: Option<Uuid>,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<EngagementItem>, sqlx::Error> {
    let table = if reposts { "rm_reposts" } else { "rm_likes" };
    let (at, after) = cursor.map_or((None, None), |(a, b)| (Some(a), Some(b)));
    sqlx::query_as::<_, EngagementItem>(&format!(
        "SELECT e.user_id, e.track_id, e.since FROM {table} e JOIN rm_tracks t ON t.track_id = e.track_id
         WHERE e.user_id = $1 AND e.active AND (t.visibility = 'public' OR t.owner_id = $2)
           AND ($3::timestamptz IS NULL OR (e.since, e.track_id) < ($3, $4))
         ORDER BY e.since DESC, e.track_id DESC LIMIT $5"
    ))
    .bind(user)
    .bind(viewer)
    .bind(at)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A comment as listed (the body `None` once deleted).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CommentRow {
    pub comment_id: Uuid,
    pub track_id: Uuid,
    pub author_id: Uuid,
    pub body: Option<String>,
    pub timestamp_ms: Option<i64>,
    pub reply_to: Option<Uuid>,
    pub posted_at: DateTime<Utc>,
    pub deleted: bool,
}

/// The order of a comment list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommentOrder {
    /// By the moment of the track (untimed comments last), then oldest first.
    Timestamp,
    /// Newest first.
    Newest,
}

/// A comment cursor: the last item's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommentCursor {
    pub timestamp_ms: Option<i64>,
    pub posted_at: DateTime<Utc>,
    pub comment_id: Uuid,
}

/// `track`'s comments in `order`, after `cursor`, at most `limit`, leaving
/// out those of authors `hidden` (blocks between the viewer and them).
///
/// # Errors
/// Database errors.
pub async fn comments(
    pool: &PgPool,
    track: Uuid,
    order: CommentOrder,
    cursor: Option<CommentCursor>,
    hidden_for: Option<Uuid>,
    limit: i64,
) -> Result<Vec<CommentRow>, sqlx::Error> {
    let hide = "NOT EXISTS (SELECT 1 FROM rm_blocks b WHERE b.active AND $2::uuid IS NOT NULL
                   AND ((b.blocker_id = $2 AND b.blocked_id = c.author_id)
                     OR (b.blocker_id = c.author_id AND b.blocked_id = $2)))";
    // A comment a moderator removed (issue 17) reads as deleted: a tombstone.
    let removed = "EXISTS (SELECT 1 FROM rm_moderation_state m WHERE m.subject_type = 'comment'
                       AND m.subject_id = c.comment_id AND m.comment_removed)";
    let cols = format!(
        "c.comment_id, c.track_id, c.author_id, CASE WHEN {removed} THEN NULL ELSE c.body END AS body,
         c.timestamp_ms, c.reply_to, c.posted_at, c.deleted OR {removed} AS deleted"
    );
    let q = match order {
        CommentOrder::Newest => format!(
            "SELECT {cols} FROM rm_comments c WHERE c.track_id = $1 AND {hide}
               AND ($3::timestamptz IS NULL OR (c.posted_at, c.comment_id) < ($3, $4))
             ORDER BY c.posted_at DESC, c.comment_id DESC LIMIT $5"
        ),
        CommentOrder::Timestamp => format!(
            "SELECT {cols} FROM rm_comments c WHERE c.track_id = $1 AND {hide}
               AND ($3::timestamptz IS NULL
                    OR (COALESCE(c.timestamp_ms, 9223372036854775807), c.posted_at, c.comment_id)
                       > (COALESCE($6, 9223372036854775807), $3, $4))
             ORDER BY COALESCE(c.timestamp_ms, 9223372036854775807), c.posted_at, c.comment_id LIMIT $5"
        ),
    };
    let query = sqlx::query_as::<_, CommentRow>(&q)
        .bind(track)
        .bind(hidden_for)
        .bind(cursor.map(|c| c.posted_at))
        .bind(cursor.map(|c| c.comment_id))
        .bind(limit);
    match order {
        CommentOrder::Timestamp => query.bind(cursor.and_then(|c| c.timestamp_ms)).fetch_all(pool).await,
        CommentOrder::Newest => query.fetch_all(pool).await,
    }
}
