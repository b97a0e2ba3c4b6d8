//! Reading a home feed page (the fanned-out rows merged with the large
//! authors' items; filters applied at read).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// Users `$1` does not see in a feed: those they block or mute and those
/// who block them (the home feed's copies of the edges). One column,
/// `other`.
macro_rules! hidden_sql {
    () => {
        "SELECT blocked_id AS other FROM feed_blocks WHERE blocker_id = $1 AND active
         UNION SELECT blocker_id FROM feed_blocks WHERE blocked_id = $1 AND active
         UNION SELECT muted_id FROM feed_mutes WHERE muter_id = $1 AND active"
    };
}

/// `reader`'s followees and the users hidden from them (see
/// [`home_page`]'s filters), for a live connection's view.
///
/// # Errors
/// Database errors.
pub async fn reader_view(pool: &PgPool, reader: Uuid) -> Result<(Vec<Uuid>, Vec<Uuid>), sqlx::Error> {
    let followees =
        sqlx::query_scalar("SELECT followee_id FROM feed_follows WHERE follower_id = $1 AND active")
            .bind(reader)
            .fetch_all(pool)
            .await?;
    let hidden = sqlx::query_scalar(hidden_sql!()).bind(reader).fetch_all(pool).await?;
    Ok((followees, hidden))
}

/// One item of a home feed page.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FeedRow {
    /// `post` or `repost`.
    pub kind: String,
    /// Who posted or reposted.
    pub actor_id: Uuid,
    pub track_id: Uuid,
    /// When it was posted or reposted.
    pub at: DateTime<Utc>,
    /// The cursor's tie-breaker.
    pub item_id: Uuid,
    pub title: String,
    pub owner_id: Uuid,
    pub likes: i64,
    pub reposts: i64,
    pub comments: i64,
    pub liked_by_me: bool,
    pub reposted_by_me: bool,
}

/// A page of `reader`'s home feed, newest first, after `cursor` (the last
/// item's `(at, item_id)`), at most `limit` items: the fanned-out rows merged with the not-fanned-out posts
/// and reposts of followed authors above the fan-out threshold; never
/// items of users the reader blocks or mutes or who block the reader, nor
/// of private or deleted tracks, nor (issue 17) hidden tracks or items of
/// suspended accounts (the moderation read model). Counters and the
/// reader's own like and repost come from the engagement read model.
///
/// # Errors
/// Database errors.
pub async fn home_page(
    pool: &PgPool,
    reader: Uuid,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<FeedRow>, sqlx::Error> {
    let (after_at, after_id) = cursor.map_or((None, None), |(a, i)| (Some(a), Some(i)));
    sqlx::query_as(concat!(
        "WITH hidden AS (",
        hidden_sql!(),
        "),
         moderated AS (
             SELECT subject_id AS id FROM rm_moderation_state
             WHERE (subject_type = 'track' AND hidden) OR (subject_type = 'user' AND suspended_until > now())),
         large AS (
             SELECT f.followee_id AS id FROM feed_follows f
             JOIN feed_authors a ON a.user_id = f.followee_id AND a.large
             WHERE f.follower_id = $1 AND f.active),
         fanned AS (
             SELECT i.kind, i.actor_id, i.track_id, i.at, i.item_id FROM feed_items i
             JOIN feed_tracks t ON t.track_id = i.track_id AND t.public AND NOT t.deleted
             WHERE i.user_id = $1 AND ($2::timestamptz IS NULL OR (i.at, i.item_id) < ($2, $3))
               AND i.actor_id NOT IN (SELECT other FROM hidden)
               AND t.owner_id NOT IN (SELECT other FROM hidden)
               AND i.track_id NOT IN (SELECT id FROM moderated)
               AND i.actor_id NOT IN (SELECT id FROM moderated) AND t.owner_id NOT IN (SELECT id FROM moderated)
             ORDER BY i.at DESC, i.item_id DESC LIMIT $4),
         merged AS (
             SELECT 'post' AS kind, t.owner_id AS actor_id, t.track_id, t.created_at AS at,
                    feed_item_id('post', t.owner_id, t.track_id) AS item_id
             FROM large l JOIN feed_tracks t ON t.owner_id = l.id
             WHERE t.public AND NOT t.deleted AND NOT t.fanned_out
             UNION ALL
             SELECT 'repost', r.user_id, r.track_id, r.since, feed_item_id('repost', r.user_id, r.track_id)
             FROM large l JOIN feed_reposts r ON r.user_id = l.id AND r.active AND NOT r.fanned_out
             JOIN feed_tracks t ON t.track_id = r.track_id AND t.public AND NOT t.deleted
             WHERE t.owner_id NOT IN (SELECT other FROM hidden) AND t.owner_id NOT IN (SELECT id FROM moderated)),
         page AS (
             SELECT * FROM fanned
             UNION ALL
             SELECT * FROM merged
             WHERE actor_id NOT IN (SELECT other FROM hidden)
               AND track_id NOT IN (SELECT id FROM moderated) AND actor_id NOT IN (SELECT id FROM moderated)
               AND ($2::timestamptz IS NULL OR (at, item_id) < ($2, $3))
             ORDER BY at DESC, item_id DESC LIMIT $4)
         SELECT p.kind, p.actor_id, p.track_id, p.at, p.item_id, t.title, t.owner_id,
                COALESCE(s.likes_count, 0) AS likes, COALESCE(s.reposts_count, 0) AS reposts,
                COALESCE(s.comments_count, 0) AS comments,
                EXISTS (SELECT 1 FROM rm_likes l WHERE l.user_id = $1 AND l.track_id = p.track_id AND l.active)
                    AS liked_by_me,
                EXISTS (SELECT 1 FROM rm_reposts r WHERE r.user_id = $1 AND r.track_id = p.track_id AND r.active)
                    AS reposted_by_me
         FROM page p
         JOIN feed_tracks t ON t.track_id = p.track_id
         LEFT JOIN rm_track_stats s ON s.track_id = p.track_id
         ORDER BY p.at DESC, p.item_id DESC"
    ))
    .bind(reader)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}
