//! Rebuilding one reader's feed from the projector's copies.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{FEED_CAP, REPOST_DEDUPE_WINDOW};

/// Rebuilds `reader`'s fanned-out feed from the projector's event-derived
/// copies (active follows, fanned-out posts and reposts of the followees):
/// the newest [`FEED_CAP`] items, reposts deduplicated against the
/// [`REPOST_DEDUPE_WINDOW`] items before them as live fan-out does. Unlike
/// live fan-out, every post of a followee counts, not only the
/// [`super::PULL_ON_FOLLOW`] newest at the time of the follow. Returns the number
/// of items written.
///
/// # Errors
/// Database errors.
pub async fn rebuild_user_feed(conn: &mut PgConnection, reader: Uuid) -> Result<usize, sqlx::Error> {
    // Oldest first, so the dedupe window sees what came before each repost.
    let candidates: Vec<(String, Uuid, Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT * FROM (
             SELECT 'post' AS kind, t.owner_id AS actor, t.track_id, t.created_at AS at
             FROM feed_follows f
             JOIN feed_tracks t ON t.owner_id = f.followee_id AND t.public AND NOT t.deleted AND t.fanned_out
             WHERE f.follower_id = $1 AND f.active
             UNION ALL
             SELECT 'repost', r.user_id, r.track_id, r.since
             FROM feed_follows f
             JOIN feed_reposts r ON r.user_id = f.followee_id AND r.active AND r.fanned_out
             WHERE f.follower_id = $1 AND f.active
             ORDER BY at DESC LIMIT $2) newest
         ORDER BY at, kind",
    )
    .bind(reader)
    .bind(FEED_CAP * 2)
    .fetch_all(&mut *conn)
    .await?;
    let window = usize::try_from(REPOST_DEDUPE_WINDOW).unwrap_or(40);
    let mut kept: Vec<(String, Uuid, Uuid, DateTime<Utc>)> = Vec::with_capacity(candidates.len());
    for item in candidates {
        if item.0 == "repost" && kept.iter().rev().take(window).any(|k| k.2 == item.2) {
            continue;
        }
        kept.push(item);
    }
    let start = kept.len().saturating_sub(usize::try_from(FEED_CAP).unwrap_or(800));
    let kept = &kept[start..];
    sqlx::query("DELETE FROM feed_items WHERE user_id = $1").bind(reader).execute(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO feed_items (user_id, kind, actor_id, track_id, at, item_id)
         SELECT $1, k, a, t, at, feed_item_id(k, a, t)
         FROM unnest($2::text[], $3::uuid[], $4::uuid[], $5::timestamptz[]) AS x(k, a, t, at)",
    )
    .bind(reader)
    .bind(kept.iter().map(|k| k.0.clone()).collect::<Vec<_>>())
    .bind(kept.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(kept.iter().map(|k| k.2).collect::<Vec<_>>())
    .bind(kept.iter().map(|k| k.3).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO feed_sizes (user_id, since_trim) VALUES ($1, 0)
         ON CONFLICT (user_id) DO UPDATE SET since_trim = 0",
    )
    .bind(reader)
    .execute(&mut *conn)
    .await?;
    Ok(kept.len())
}
