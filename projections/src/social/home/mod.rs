//! The home feed (issue 16): tracks posted and reposted by the people a
//! user follows, fanned out on write into `feed_items` by the `home_feed`
//! projector.
//!
//! - **Own copies.** The projector keeps its own follow, block and mute
//!   edges (`feed_follows`, `feed_blocks`, `feed_mutes`), tracks
//!   (`feed_tracks`) and reposts (`feed_reposts`) from the same events the
//!   graph, tracks and engagement read models use, so it never waits on
//!   another projector and converges in any order (decided 16): a post
//!   fans out to the follows already applied, a follow applied later pulls
//!   the followee's newest [`PULL_ON_FOLLOW`] posts and as many reposts in;
//!   an item whose track is not known yet is stored and shown once the
//!   track is.
//! - **Ordering.** Every post, repost, follow and unfollow of an author
//!   first locks the author's `feed_authors` row, so two nodes' fan-outs
//!   and follows of one author never miss each other (no write skew).
//! - **Cap.** A reader's feed keeps the newest [`FEED_CAP`] items (Twitter's
//!   timeline keeps 800): trimmed back once [`TRIM_EVERY`] items have been
//!   inserted since the last trim, so a feed holds at most 880 rows (the
//!   amortised trim costs one ranked delete per 80 insertions instead of
//!   one per insertion).
//! - **Repost dedupe.** A repost of a track already among the reader's
//!   newest [`REPOST_DEDUPE_WINDOW`] items is not inserted again (and a
//!   repost whose earlier item arrives late is removed: [`dedupe_reposts`]).
//! - **Hybrid.** An author with more than `max_fanout_followers` followers
//!   (`FEED_FANOUT_MAX_FOLLOWERS`, default 10,000) is not fanned out: the
//!   item is marked `fanned_out = false` and merged into each follower's
//!   page at read time ([`home_page`]), as large networks do (Twitter's
//!   celebrity merge).
//! - **Removal.** Unfollow deletes the follower's items of that author;
//!   unrepost deletes the repost's items; a deleted or privated track's
//!   items are deleted. Blocks and mutes are applied at read (a block's
//!   unfollows also remove items), and so is a track's visibility, so an
//!   item whose removal has not run yet is never shown.
//!
//! Duplicate guard in the rows (`Checkpoints::InReadModel`), as the graph:
//! every edge, track and repost row keeps the sequence that last set it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::catalog::track::{TrackEvent, Visibility};
use domain::envelope::Envelope;
use domain::social::engagement::{parse_engagement_id, EngagementEvent};
use domain::social::relationship::{parse_pair_id, RelationshipEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{Checkpoints, ProjectionError, Projector};

/// Items a reader's feed keeps (Twitter's home timeline keeps 800).
pub const FEED_CAP: i64 = 800;
/// Inserted items after which a reader's feed is trimmed back to [`FEED_CAP`].
pub const TRIM_EVERY: i64 = 80;
/// A repost of a track among the reader's newest this-many items is not
/// inserted again (issue 16).
pub const REPOST_DEDUPE_WINDOW: i64 = 40;
/// Posts pulled into a feed when its owner follows someone (issue 16).
pub const PULL_ON_FOLLOW: i64 = 50;
/// Default of `FEED_FANOUT_MAX_FOLLOWERS` (issue 16).
pub const DEFAULT_MAX_FANOUT_FOLLOWERS: i64 = 10_000;

/// Projects `relationship`, `track` and `engagement` (repost) events into
/// the home feed.
#[derive(Debug, Clone, Copy)]
pub struct HomeFeedProjector {
    /// Authors with more followers than this are merged at read time
    /// instead of fanned out.
    pub max_fanout_followers: i64,
}

impl Default for HomeFeedProjector {
    fn default() -> Self {
        Self { max_fanout_followers: DEFAULT_MAX_FANOUT_FOLLOWERS }
    }
}

#[async_trait]
impl Projector for HomeFeedProjector {
    fn name(&self) -> &'static str {
        "home_feed"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        matches!(aggregate_type, "relationship" | "track" | "engagement")
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
        let applied: Option<i64> = match aggregate_type {
            "relationship" => {
                let Some((a, b)) = parse_pair_id(aggregate_id) else { return Ok(false) };
                sqlx::query_scalar(
                    "SELECT GREATEST(
                        (SELECT max(seq) FROM feed_follows WHERE (follower_id, followee_id) IN (($1, $2), ($2, $1))),
                        (SELECT max(seq) FROM feed_blocks WHERE (blocker_id, blocked_id) IN (($1, $2), ($2, $1))),
                        (SELECT max(seq) FROM feed_mutes WHERE (muter_id, muted_id) IN (($1, $2), ($2, $1))))",
                )
                .bind(a)
                .bind(b)
                .fetch_one(pool)
                .await?
            }
            "track" => {
                let Ok(id) = aggregate_id.parse::<Uuid>() else { return Ok(false) };
                sqlx::query_scalar("SELECT seq FROM feed_tracks WHERE track_id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
            }
            _ => {
                // Likes mean nothing to the feed: applied as soon as written.
                let kind: Option<String> = sqlx::query_scalar(
                    "SELECT event_type FROM events
                     WHERE aggregate_type = 'engagement' AND aggregate_id = $1 AND sequence = $2",
                )
                .bind(aggregate_id)
                .bind(sequence)
                .fetch_optional(pool)
                .await?;
                if kind.as_deref().is_some_and(|k| !k.contains("Repost")) {
                    return Ok(true);
                }
                let Some((user, track)) = parse_engagement_id(aggregate_id) else { return Ok(false) };
                sqlx::query_scalar("SELECT seq FROM feed_reposts WHERE user_id = $1 AND track_id = $2")
                    .bind(user)
                    .bind(track)
                    .fetch_optional(pool)
                    .await?
            }
        };
        Ok(applied.is_some_and(|s| s >= sequence))
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        match env.aggregate_type.as_str() {
            "relationship" => {
                let event: RelationshipEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
                self.apply_relationship(conn, event, env.sequence).await
            }
            "track" => {
                let event: TrackEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
                let track = crate::profiles::aggregate_uuid(env)?;
                self.apply_track(conn, track, event, env.sequence).await
            }
            _ => {
                let event: EngagementEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
                self.apply_repost(conn, event, env.sequence).await
            }
        }
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "feed_follows",
            "feed_blocks",
            "feed_mutes",
            "feed_authors",
            "feed_tracks",
            "feed_reposts",
            "feed_items",
            "feed_sizes",
        ]
    }
}

impl HomeFeedProjector {
    async fn apply_relationship(
        &self,
        conn: &mut PgConnection,
        event: RelationshipEvent,
        seq: i64,
    ) -> Result<(), ProjectionError> {
        const FOLLOWS: (&str, &str, &str) = ("feed_follows", "follower_id", "followee_id");
        match event {
            RelationshipEvent::UserFollowed { follower, followee, followed_at } => {
                lock_author(conn, followee).await?;
                if super::switch_edge(conn, FOLLOWS, follower, followee, true, followed_at, seq).await? {
                    sqlx::query(
                        "UPDATE feed_authors SET followers = followers + 1,
                                large = large OR followers + 1 > $2 WHERE user_id = $1",
                    )
                    .bind(followee)
                    .bind(self.max_fanout_followers)
                    .execute(&mut *conn)
                    .await?;
                    // The newest posts and reposts (reposts too, so that a
                    // repost applied before the follow is not lost: decided 16).
                    let inserted: Vec<Uuid> = sqlx::query_scalar(
                        "INSERT INTO feed_items (user_id, kind, actor_id, track_id, at, item_id)
                         SELECT $1, 'post', t.owner_id, t.track_id, t.created_at,
                                feed_item_id('post', t.owner_id, t.track_id)
                         FROM (SELECT owner_id, track_id, created_at FROM feed_tracks
                               WHERE owner_id = $2 AND public AND NOT deleted AND fanned_out
                               ORDER BY created_at DESC, track_id LIMIT $3) t
                         UNION ALL
                         SELECT $1, 'repost', r.user_id, r.track_id, r.since,
                                feed_item_id('repost', r.user_id, r.track_id)
                         FROM (SELECT user_id, track_id, since FROM feed_reposts
                               WHERE user_id = $2 AND active AND fanned_out
                               ORDER BY since DESC, track_id LIMIT $3) r
                         ON CONFLICT DO NOTHING RETURNING user_id",
                    )
                    .bind(follower)
                    .bind(followee)
                    .bind(PULL_ON_FOLLOW)
                    .fetch_all(&mut *conn)
                    .await?;
                    if !inserted.is_empty() {
                        dedupe_reposts(conn, &[follower], None).await?;
                    }
                    count_inserted(conn, &inserted).await?;
                }
            }
            RelationshipEvent::UserUnfollowed { follower, followee, unfollowed_at, .. } => {
                lock_author(conn, followee).await?;
                if super::switch_edge(conn, FOLLOWS, follower, followee, false, unfollowed_at, seq).await? {
                    sqlx::query("UPDATE feed_authors SET followers = followers - 1 WHERE user_id = $1")
                        .bind(followee)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("DELETE FROM feed_items WHERE actor_id = $1 AND user_id = $2")
                        .bind(followee)
                        .bind(follower)
                        .execute(&mut *conn)
                        .await?;
                }
            }
            RelationshipEvent::UserBlocked { blocker, blocked, blocked_at } => {
                let blocks = ("feed_blocks", "blocker_id", "blocked_id");
                super::switch_edge(conn, blocks, blocker, blocked, true, blocked_at, seq).await?;
            }
            RelationshipEvent::UserUnblocked { blocker, blocked, unblocked_at } => {
                let blocks = ("feed_blocks", "blocker_id", "blocked_id");
                super::switch_edge(conn, blocks, blocker, blocked, false, unblocked_at, seq).await?;
            }
            RelationshipEvent::UserMuted { muter, muted, muted_at } => {
                let mutes = ("feed_mutes", "muter_id", "muted_id");
                super::switch_edge(conn, mutes, muter, muted, true, muted_at, seq).await?;
            }
            RelationshipEvent::UserUnmuted { muter, muted, unmuted_at } => {
                let mutes = ("feed_mutes", "muter_id", "muted_id");
                super::switch_edge(conn, mutes, muter, muted, false, unmuted_at, seq).await?;
            }
        }
        Ok(())
    }

    async fn apply_track(
        &self,
        conn: &mut PgConnection,
        track: Uuid,
        event: TrackEvent,
        seq: i64,
    ) -> Result<(), ProjectionError> {
        let stored: Option<(i64, Uuid, bool, bool)> =
            sqlx::query_as("SELECT seq, owner_id, public, fanned_out FROM feed_tracks WHERE track_id = $1")
                .bind(track)
                .fetch_optional(&mut *conn)
                .await?;
        if stored.is_some_and(|(s, ..)| seq <= s) {
            tracing::debug!(seq, "already applied; skipped");
            return Ok(());
        }
        match event {
            TrackEvent::TrackCreated { owner_id, title, visibility, created_at, .. } => {
                let followers = lock_author(conn, owner_id).await?;
                let public = visibility == Visibility::Public;
                let fan_out = public && followers <= self.max_fanout_followers;
                sqlx::query(
                    "INSERT INTO feed_tracks (track_id, owner_id, created_at, title, public, fanned_out, seq)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(track)
                .bind(owner_id)
                .bind(created_at)
                .bind(title)
                .bind(public)
                .bind(fan_out)
                .bind(seq)
                .execute(&mut *conn)
                .await?;
                if fan_out {
                    fan_out_post(conn, owner_id, track, created_at).await?;
                }
            }
            TrackEvent::TrackUpdated { patch, .. } => {
                let Some((_, owner_id, was_public, fanned_out)) = stored else {
                    return Err(ProjectionError::Other(anyhow::anyhow!("TrackUpdated before TrackCreated")));
                };
                let public = patch.visibility.map_or(was_public, |v| v == Visibility::Public);
                sqlx::query(
                    "UPDATE feed_tracks SET title = COALESCE($2, title), public = $3, seq = $4 WHERE track_id = $1",
                )
                .bind(track)
                .bind(patch.title)
                .bind(public)
                .bind(seq)
                .execute(&mut *conn)
                .await?;
                if was_public && !public {
                    // Items go; made public again, it is fanned out again.
                    sqlx::query("UPDATE feed_tracks SET fanned_out = false WHERE track_id = $1")
                        .bind(track)
                        .execute(&mut *conn)
                        .await?;
                    delete_track_items(conn, track).await?;
                } else if public && !was_public && !fanned_out {
                    // Made public: fanned out now, at its posting time.
                    let followers = lock_author(conn, owner_id).await?;
                    if followers <= self.max_fanout_followers {
                        let created_at: DateTime<Utc> =
                            sqlx::query_scalar("SELECT created_at FROM feed_tracks WHERE track_id = $1")
                                .bind(track)
                                .fetch_one(&mut *conn)
                                .await?;
                        sqlx::query("UPDATE feed_tracks SET fanned_out = true WHERE track_id = $1")
                            .bind(track)
                            .execute(&mut *conn)
                            .await?;
                        fan_out_post(conn, owner_id, track, created_at).await?;
                    }
                }
            }
            TrackEvent::TrackDeleted { .. } => {
                sqlx::query("UPDATE feed_tracks SET deleted = true, seq = $2 WHERE track_id = $1")
                    .bind(track)
                    .bind(seq)
                    .execute(&mut *conn)
                    .await?;
                delete_track_items(conn, track).await?;
            }
        }
        Ok(())
    }

    async fn apply_repost(
        &self,
        conn: &mut PgConnection,
        event: EngagementEvent,
        seq: i64,
    ) -> Result<(), ProjectionError> {
        const REPOSTS: (&str, &str, &str) = ("feed_reposts", "user_id", "track_id");
        match event {
            EngagementEvent::TrackReposted { user_id, track_id, reposted_at, .. } => {
                let followers = lock_author(conn, user_id).await?;
                if !super::switch_edge(conn, REPOSTS, user_id, track_id, true, reposted_at, seq).await? {
                    return Ok(());
                }
                let fan_out = followers <= self.max_fanout_followers;
                sqlx::query("UPDATE feed_reposts SET fanned_out = $3 WHERE user_id = $1 AND track_id = $2")
                    .bind(user_id)
                    .bind(track_id)
                    .bind(fan_out)
                    .execute(&mut *conn)
                    .await?;
                if fan_out {
                    let inserted: Vec<Uuid> = sqlx::query_scalar(
                        "INSERT INTO feed_items (user_id, kind, actor_id, track_id, at, item_id)
                         SELECT f.follower_id, 'repost', $1, $2, $3, feed_item_id('repost', $1, $2)
                         FROM feed_follows f
                         WHERE f.followee_id = $1 AND f.active
                           AND NOT EXISTS (
                               SELECT 1 FROM feed_items p
                               WHERE p.track_id = $2 AND p.user_id = f.follower_id AND p.at <= $3
                                 AND (SELECT count(*) FROM feed_items i
                                      WHERE i.user_id = f.follower_id AND i.at > p.at AND i.at < $3) < $4)
                         ON CONFLICT DO NOTHING RETURNING user_id",
                    )
                    .bind(user_id)
                    .bind(track_id)
                    .bind(reposted_at)
                    .bind(REPOST_DEDUPE_WINDOW)
                    .fetch_all(&mut *conn)
                    .await?;
                    dedupe_reposts(conn, &inserted, Some(track_id)).await?;
                    count_inserted(conn, &inserted).await?;
                }
            }
            EngagementEvent::TrackUnreposted { user_id, track_id, unreposted_at } => {
                lock_author(conn, user_id).await?;
                if super::switch_edge(conn, REPOSTS, user_id, track_id, false, unreposted_at, seq).await? {
                    sqlx::query(
                        "DELETE FROM feed_items WHERE actor_id = $1 AND track_id = $2 AND kind = 'repost'",
                    )
                    .bind(user_id)
                    .bind(track_id)
                    .execute(&mut *conn)
                    .await?;
                }
            }
            EngagementEvent::TrackLiked { .. } | EngagementEvent::TrackUnliked { .. } => {}
        }
        Ok(())
    }
}

/// Locks `author`'s `feed_authors` row (created if absent) for the rest of
/// the transaction and returns the author's follower count.
async fn lock_author(conn: &mut PgConnection, author: Uuid) -> Result<i64, ProjectionError> {
    sqlx::query("INSERT INTO feed_authors (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(author)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar("SELECT followers FROM feed_authors WHERE user_id = $1 FOR UPDATE")
        .bind(author)
        .fetch_one(&mut *conn)
        .await?)
}

/// Inserts `author`'s post of `track` into every active follower's feed.
async fn fan_out_post(
    conn: &mut PgConnection,
    author: Uuid,
    track: Uuid,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO feed_items (user_id, kind, actor_id, track_id, at, item_id)
         SELECT f.follower_id, 'post', $1, $2, $3, feed_item_id('post', $1, $2)
         FROM feed_follows f WHERE f.followee_id = $1 AND f.active
         ON CONFLICT DO NOTHING RETURNING user_id",
    )
    .bind(author)
    .bind(track)
    .bind(at)
    .fetch_all(&mut *conn)
    .await?;
    dedupe_reposts(conn, &inserted, Some(track)).await?;
    count_inserted(conn, &inserted).await
}

/// The repost dedupe, in a form that does not depend on the order events
/// arrive in (decided 16): deletes each repost item of `readers` (of
/// `track`, or of any track) that has an earlier item of the same track
/// with fewer than [`REPOST_DEDUPE_WINDOW`] items between them. Applied in
/// time order this is the rule "a repost of a track among the reader's
/// newest 40 items is not inserted"; applied after an older item arrives
/// late (a replay, another partition) it removes the repost that live
/// fan-out would not have inserted. Uses the partial index of repost items
/// per track, so a post with no reposts costs one empty index probe.
async fn dedupe_reposts(
    conn: &mut PgConnection,
    readers: &[Uuid],
    track: Option<Uuid>,
) -> Result<(), ProjectionError> {
    if readers.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM feed_items r
         WHERE r.kind = 'repost' AND r.user_id = ANY($1) AND ($2::uuid IS NULL OR r.track_id = $2)
           AND EXISTS (
               SELECT 1 FROM feed_items p
               WHERE p.track_id = r.track_id AND p.user_id = r.user_id
                 AND (p.at, p.item_id) < (r.at, r.item_id)
                 AND (SELECT count(*) FROM feed_items i
                      WHERE i.user_id = r.user_id AND (i.at, i.item_id) > (p.at, p.item_id)
                        AND (i.at, i.item_id) < (r.at, r.item_id)) < $3)",
    )
    .bind(readers)
    .bind(track)
    .bind(REPOST_DEDUPE_WINDOW)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn delete_track_items(conn: &mut PgConnection, track: Uuid) -> Result<(), ProjectionError> {
    sqlx::query("DELETE FROM feed_items WHERE track_id = $1").bind(track).execute(&mut *conn).await?;
    Ok(())
}

/// Counts items inserted per reader and trims the feeds that reached
/// [`TRIM_EVERY`] insertions back to the newest [`FEED_CAP`].
async fn count_inserted(conn: &mut PgConnection, readers: &[Uuid]) -> Result<(), ProjectionError> {
    if readers.is_empty() {
        return Ok(());
    }
    let due: Vec<Option<Uuid>> = sqlx::query_scalar(
        "INSERT INTO feed_sizes (user_id, since_trim)
         SELECT user_id, count(*) FROM unnest($1::uuid[]) AS r(user_id) GROUP BY user_id
         ON CONFLICT (user_id) DO UPDATE SET since_trim = feed_sizes.since_trim + excluded.since_trim
         RETURNING CASE WHEN since_trim >= $2 THEN user_id END",
    )
    .bind(readers)
    .bind(TRIM_EVERY)
    .fetch_all(&mut *conn)
    .await?;
    let due: Vec<Uuid> = due.into_iter().flatten().collect();
    if due.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM feed_items i USING (
             SELECT user_id, item_id FROM (
                 SELECT user_id, item_id,
                        row_number() OVER (PARTITION BY user_id ORDER BY at DESC, item_id DESC) AS n
                 FROM feed_items WHERE user_id = ANY($1)) ranked
             WHERE n > $2) old
         WHERE i.user_id = old.user_id AND i.item_id = old.item_id",
    )
    .bind(&due)
    .bind(FEED_CAP)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE feed_sizes SET since_trim = 0 WHERE user_id = ANY($1)")
        .bind(&due)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

mod page;
mod rebuild;

pub use page::{home_page, reader_view, FeedRow};
pub use rebuild::rebuild_user_feed;
