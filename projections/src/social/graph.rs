//! The `graph` read model: who follows, blocks and mutes whom
//! (`rm_follows`, `rm_blocks`, `rm_mutes`) and the follower counters
//! (`rm_user_stats`), from `relationship` events.
//!
//! Checkpoints (ARCHITECTURE decided 5, issue 15): relationship streams are
//! keyed by the pair of users, so a checkpoint row per stream would be a row
//! per edge (10M edges, 10M checkpoint rows). Instead every edge row keeps
//! the sequence of the event that last set it, is never deleted (only
//! switched off) and an event at or below it is skipped: the read model is
//! its own duplicate guard ([`Checkpoints::InReadModel`]). A pair's last
//! applied sequence is the highest `seq` among its six possible rows, which
//! is what the read-your-writes wait asks ([`Projector::has_applied`]).
//!
//! Convergence (decided 16): an event changes only rows of its own pair and
//! counters by ±1 exactly when a row switches, so streams applied in any
//! interleaving give the same rows, and the counters equal `COUNT(*)` of the
//! active edges at every commit (never negative: a `CHECK` holds it).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::social::relationship::{parse_pair_id, RelationshipEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{Checkpoints, ProjectionError, Projector};

/// Projects `relationship` events into the graph tables.
pub struct GraphProjector;

/// The three edge tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge {
    Follow,
    Block,
    Mute,
}

impl Edge {
    /// Table, "from" column, "to" column.
    fn table(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Follow => ("rm_follows", "follower_id", "followee_id"),
            Self::Block => ("rm_blocks", "blocker_id", "blocked_id"),
            Self::Mute => ("rm_mutes", "muter_id", "muted_id"),
        }
    }
}

#[async_trait]
impl Projector for GraphProjector {
    fn name(&self) -> &'static str {
        "graph"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == "relationship"
    }

    fn checkpoints(&self) -> Checkpoints {
        Checkpoints::InReadModel
    }

    async fn has_applied(
        &self,
        pool: &PgPool,
        _aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<bool, sqlx::Error> {
        let Some((a, b)) = parse_pair_id(aggregate_id) else { return Ok(false) };
        let applied: Option<i64> = sqlx::query_scalar(
            "SELECT GREATEST(
                (SELECT max(seq) FROM rm_follows WHERE (follower_id, followee_id) IN (($1, $2), ($2, $1))),
                (SELECT max(seq) FROM rm_blocks WHERE (blocker_id, blocked_id) IN (($1, $2), ($2, $1))),
                (SELECT max(seq) FROM rm_mutes WHERE (muter_id, muted_id) IN (($1, $2), ($2, $1))))",
        )
        .bind(a)
        .bind(b)
        .fetch_one(pool)
        .await?;
        Ok(applied.is_some_and(|s| s >= sequence))
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        let event: RelationshipEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        let (edge, from, to, active, at) = match event {
            RelationshipEvent::UserFollowed { follower, followee, followed_at } => {
                (Edge::Follow, follower, followee, true, followed_at)
            }
            RelationshipEvent::UserUnfollowed { follower, followee, unfollowed_at, .. } => {
                (Edge::Follow, follower, followee, false, unfollowed_at)
            }
            RelationshipEvent::UserBlocked { blocker, blocked, blocked_at } => {
                (Edge::Block, blocker, blocked, true, blocked_at)
            }
            RelationshipEvent::UserUnblocked { blocker, blocked, unblocked_at } => {
                (Edge::Block, blocker, blocked, false, unblocked_at)
            }
            RelationshipEvent::UserMuted { muter, muted, muted_at } => {
                (Edge::Mute, muter, muted, true, muted_at)
            }
            RelationshipEvent::UserUnmuted { muter, muted, unmuted_at } => {
                (Edge::Mute, muter, muted, false, unmuted_at)
            }
        };
        set_edge(conn, edge, from, to, active, at, env.sequence).await
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_follows", "rm_blocks", "rm_mutes", "rm_user_stats"]
    }
}

/// Switches edge `from → to` to `active` as of event `seq` (see
/// [`super::switch_edge`]); moves the counters when a follow switches.
async fn set_edge(
    conn: &mut PgConnection,
    edge: Edge,
    from: Uuid,
    to: Uuid,
    active: bool,
    at: DateTime<Utc>,
    seq: i64,
) -> Result<(), ProjectionError> {
    let (table, a, b) = edge.table();
    let switched = super::switch_edge(conn, (table, a, b), from, to, active, at, seq).await?;
    if edge == Edge::Follow && switched {
        let delta: i64 = if active { 1 } else { -1 };
        // Rows are created (zero) first, then changed in id order: two
        // transactions moving the same two counters lock them alike.
        sqlx::query("INSERT INTO rm_user_stats (user_id) VALUES ($1), ($2) ON CONFLICT (user_id) DO NOTHING")
            .bind(from.min(to))
            .bind(from.max(to))
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "UPDATE rm_user_stats s SET
                 followers_count = s.followers_count + CASE WHEN s.user_id = $2 THEN $3 ELSE 0 END,
                 following_count = s.following_count + CASE WHEN s.user_id = $1 THEN $3 ELSE 0 END
             FROM (SELECT u FROM unnest(ARRAY[$1, $2]::uuid[]) AS u ORDER BY u) o
             WHERE s.user_id = o.u",
        )
        .bind(from)
        .bind(to)
        .bind(delta)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A keyset cursor over a newest-first edge list: the last item's time and
/// user id. Opaque to clients: `<microseconds since epoch>_<uuid>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeCursor {
    pub since: DateTime<Utc>,
    pub user_id: Uuid,
}

impl EdgeCursor {
    /// The cursor as sent to clients.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.since.timestamp_micros(), self.user_id)
    }

    /// Reads a client's cursor; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (micros, id) = text.split_once('_')?;
        let since = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some(Self { since, user_id: id.parse().ok()? })
    }
}

/// One user in a follower, following or block list.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EdgeItem {
    pub user_id: Uuid,
    /// The user's handle (`None` only for accounts projected without one).
    pub username: Option<String>,
    /// When the edge was made.
    pub since: DateTime<Utc>,
}

/// Which list of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeList {
    /// Who follows the user.
    Followers,
    /// Whom the user follows.
    Following,
    /// Whom the user blocks.
    Blocks,
}

/// A page of `user`'s `list`, newest first, after `cursor`, at most
/// `limit` items (the caller bounds it; 100 for the API); `None` when
/// `user` has no profile (unknown, expired, erased). Keyset pagination: new
/// edges never shift later pages. Users without a profile row are left
/// out of the items. One statement (a second only for an empty page, to
/// tell "nobody" from "no such user").
///
/// # Errors
/// Database errors.
pub async fn list_edges(
    pool: &PgPool,
    list: EdgeList,
    user: Uuid,
    cursor: Option<EdgeCursor>,
    limit: i64,
) -> Result<Option<Vec<EdgeItem>>, sqlx::Error> {
    let items = list_edges_rows(pool, list, user, cursor, limit).await?;
    if !items.is_empty() {
        return Ok(Some(items));
    }
    Ok(profile_exists(pool, user).await?.then_some(items))
}

/// Whether `user` has a profile row (registered, not expired or erased).
///
/// # Errors
/// Database errors.
pub async fn profile_exists(pool: &PgPool, user: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM rm_profiles WHERE user_id = $1)")
        .bind(user)
        .fetch_one(pool)
        .await
}

async fn list_edges_rows(
    pool: &PgPool,
    list: EdgeList,
    user: Uuid,
    cursor: Option<EdgeCursor>,
    limit: i64,
) -> Result<Vec<EdgeItem>, sqlx::Error> {
    let (table, me, other) = match list {
        EdgeList::Followers => ("rm_follows", "followee_id", "follower_id"),
        EdgeList::Following => ("rm_follows", "follower_id", "followee_id"),
        EdgeList::Blocks => ("rm_blocks", "blocker_id", "blocked_id"),
    };
    let (since, after) = cursor.map_or((None, None), |c| (Some(c.since), Some(c.user_id)));
    sqlx::query_as::<_, EdgeItem>(&format!(
        "SELECT e.{other} AS user_id, p.username, e.since
         FROM {table} e JOIN rm_profiles p ON p.user_id = e.{other}
         WHERE e.{me} = $1 AND e.active
           AND EXISTS (SELECT 1 FROM rm_profiles o WHERE o.user_id = $1)
           AND ($2::timestamptz IS NULL OR (e.since, e.{other}) < ($2, $3))
         ORDER BY e.since DESC, e.{other} DESC
         LIMIT $4"
    ))
    .bind(user)
    .bind(since)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The edges between a viewer and another user, as the viewer may know them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Between {
    /// The viewer follows the user.
    pub followed_by_me: bool,
    /// The user follows the viewer.
    pub follows_me: bool,
    /// The viewer blocks the user.
    pub blocked: bool,
    /// The user blocks the viewer (never shown: the API answers 404).
    pub blocked_by: bool,
    /// The viewer mutes the user.
    pub muted: bool,
}

/// The edges between `viewer` and `user`, one statement.
///
/// # Errors
/// Database errors.
pub async fn between(pool: &PgPool, viewer: Uuid, user: Uuid) -> Result<Between, sqlx::Error> {
    sqlx::query_as::<_, Between>(
        "SELECT
            EXISTS (SELECT 1 FROM rm_follows WHERE follower_id = $1 AND followee_id = $2 AND active) AS followed_by_me,
            EXISTS (SELECT 1 FROM rm_follows WHERE follower_id = $2 AND followee_id = $1 AND active) AS follows_me,
            EXISTS (SELECT 1 FROM rm_blocks WHERE blocker_id = $1 AND blocked_id = $2 AND active) AS blocked,
            EXISTS (SELECT 1 FROM rm_blocks WHERE blocker_id = $2 AND blocked_id = $1 AND active) AS blocked_by,
            EXISTS (SELECT 1 FROM rm_mutes WHERE muter_id = $1 AND muted_id = $2 AND active) AS muted",
    )
    .bind(viewer)
    .bind(user)
    .fetch_one(pool)
    .await
}

/// A suggested account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Suggestion {
    pub user_id: Uuid,
    pub username: Option<String>,
    /// How many of the people `user` follows follow this account.
    pub mutuals: i64,
    pub followers_count: i64,
}

/// Friends of friends of `user`: the accounts followed by the people
/// `user` follows (the newest 500 of them), ranked by how many of those
/// follow each, ties by follower count, then id; never `user`, an account
/// `user` follows, blocks, mutes or is blocked by; at most `limit`.
///
/// # Errors
/// Database errors.
pub async fn suggestions(pool: &PgPool, user: Uuid, limit: i64) -> Result<Vec<Suggestion>, sqlx::Error> {
    sqlx::query_as::<_, Suggestion>(
        "WITH mine AS (
             SELECT followee_id FROM rm_follows WHERE follower_id = $1 AND active
             ORDER BY since DESC LIMIT 500)
         SELECT f.followee_id AS user_id, p.username, count(*) AS mutuals,
                COALESCE(s.followers_count, 0) AS followers_count
         FROM mine m
         JOIN rm_follows f ON f.follower_id = m.followee_id AND f.active
         JOIN rm_profiles p ON p.user_id = f.followee_id
         LEFT JOIN rm_user_stats s ON s.user_id = f.followee_id
         WHERE f.followee_id <> $1
           AND NOT EXISTS (SELECT 1 FROM rm_follows x
                           WHERE x.follower_id = $1 AND x.followee_id = f.followee_id AND x.active)
           AND NOT EXISTS (SELECT 1 FROM rm_blocks b WHERE b.active
                           AND ((b.blocker_id = $1 AND b.blocked_id = f.followee_id)
                             OR (b.blocker_id = f.followee_id AND b.blocked_id = $1)))
           AND NOT EXISTS (SELECT 1 FROM rm_mutes u
                           WHERE u.muter_id = $1 AND u.muted_id = f.followee_id AND u.active)
         GROUP BY f.followee_id, p.username, s.followers_count
         ORDER BY mutuals DESC, followers_count DESC, user_id
         LIMIT $2",
    )
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The public profile's rows of one user, read by one statement.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PublicProfileRow {
    pub user_id: Uuid,
    pub username: Option<String>,
    /// Sealed with the subject's key.
    pub name_sealed: Option<String>,
    /// Sealed with the subject's key.
    pub bio_sealed: Option<String>,
    pub followers_count: i64,
    pub following_count: i64,
    /// Public tracks, or all when asked for the owner.
    pub tracks_count: i64,
}

/// The profile row, the follower counters and the tracks count of `user`
/// (all tracks when `include_private`: the owner looking), one statement;
/// `None` when `user` has no profile.
///
/// # Errors
/// Database errors.
pub async fn public_profile(
    pool: &PgPool,
    user: Uuid,
    include_private: bool,
) -> Result<Option<PublicProfileRow>, sqlx::Error> {
    sqlx::query_as::<_, PublicProfileRow>(
        "SELECT p.user_id, p.username, p.name_sealed, p.bio_sealed,
                COALESCE(s.followers_count, 0) AS followers_count,
                COALESCE(s.following_count, 0) AS following_count,
                (SELECT count(*) FROM rm_tracks t
                 WHERE t.owner_id = p.user_id AND ($2 OR t.visibility = 'public')
                   AND ($2 OR NOT EXISTS (SELECT 1 FROM rm_moderation_state m WHERE m.subject_type = 'track'
                                           AND m.subject_id = t.track_id AND m.hidden))) AS tracks_count
         FROM rm_profiles p LEFT JOIN rm_user_stats s ON s.user_id = p.user_id
         WHERE p.user_id = $1",
    )
    .bind(user)
    .bind(include_private)
    .fetch_optional(pool)
    .await
}
