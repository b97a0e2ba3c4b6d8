//! The `tracks` read model (`rm_tracks`): one row per live track, from
//! `track` events; a deleted track's row is dropped. Per-aggregate
//! checkpoints (one row per track).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::catalog::track::TrackEvent;
use domain::envelope::Envelope;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::profiles::aggregate_uuid;
use crate::runtime::{ProjectionError, Projector};

/// Projects `track` events into `rm_tracks`.
pub struct TracksProjector;

#[async_trait]
impl Projector for TracksProjector {
    fn name(&self) -> &'static str {
        "tracks"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == "track"
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        let event: TrackEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        match event {
            TrackEvent::TrackCreated {
                track_id,
                owner_id,
                slug,
                title,
                description,
                genre,
                tags,
                duration_ms,
                visibility,
                secret_token,
                processing,
                created_at,
            } => {
                sqlx::query(
                    "INSERT INTO rm_tracks (track_id, owner_id, slug, title, description, genre, tags,
                                            duration_ms, visibility, secret_token_sealed, processing,
                                            created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)
                     ON CONFLICT (track_id) DO NOTHING",
                )
                .bind(track_id)
                .bind(owner_id)
                .bind(slug)
                .bind(title)
                .bind(description)
                .bind(genre)
                .bind(tags)
                .bind(duration_ms)
                .bind(visibility.as_str())
                .bind(secret_token.map(|s| s.0))
                .bind(processing.as_str())
                .bind(created_at)
                .execute(conn)
                .await?;
            }
            TrackEvent::TrackUpdated { patch, secret_token, updated_at } => {
                sqlx::query(
                    "UPDATE rm_tracks SET title = COALESCE($2, title), description = COALESCE($3, description),
                            genre = COALESCE($4, genre), tags = COALESCE($5, tags),
                            duration_ms = COALESCE($6, duration_ms), visibility = COALESCE($7, visibility),
                            secret_token_sealed = COALESCE($8, secret_token_sealed), updated_at = $9
                     WHERE track_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(patch.title)
                .bind(patch.description)
                .bind(patch.genre)
                .bind(patch.tags)
                .bind(patch.duration_ms)
                .bind(patch.visibility.map(|v| v.as_str()))
                .bind(secret_token.map(|s| s.0))
                .bind(updated_at)
                .execute(conn)
                .await?;
            }
            TrackEvent::TrackDeleted { .. } => {
                sqlx::query("DELETE FROM rm_tracks WHERE track_id = $1")
                    .bind(aggregate_uuid(env)?)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_tracks"]
    }
}

/// A row of `rm_tracks` (the secret token still sealed).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrackRow {
    pub track_id: Uuid,
    pub owner_id: Uuid,
    pub slug: String,
    pub title: String,
    pub description: String,
    pub genre: String,
    pub tags: Vec<String>,
    pub duration_ms: i64,
    /// `public` or `private`.
    pub visibility: String,
    pub secret_token_sealed: Option<String>,
    /// `no_audio` until the media issue.
    pub processing: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// From the engagement read model (0 when none).
    pub likes_count: i64,
    pub reposts_count: i64,
    pub comments_count: i64,
}

const COLUMNS: &str = "track_id, owner_id, slug, title, description, genre, tags, duration_ms, visibility, \
                       secret_token_sealed, processing, created_at, updated_at, \
                       COALESCE(likes_count, 0) AS likes_count, COALESCE(reposts_count, 0) AS reposts_count, \
                       COALESCE(comments_count, 0) AS comments_count";

/// The live track `track_id`, if projected.
///
/// # Errors
/// Database errors.
pub async fn find_track(pool: &PgPool, track_id: Uuid) -> Result<Option<TrackRow>, sqlx::Error> {
    sqlx::query_as::<_, TrackRow>(&format!(
        "SELECT {COLUMNS} FROM rm_tracks LEFT JOIN rm_track_stats USING (track_id) WHERE track_id = $1"
    ))
    .bind(track_id)
    .fetch_optional(pool)
    .await
}

/// The live track of `owner` with `slug`, if projected.
///
/// # Errors
/// Database errors.
pub async fn find_by_slug(pool: &PgPool, owner: Uuid, slug: &str) -> Result<Option<TrackRow>, sqlx::Error> {
    sqlx::query_as::<_, TrackRow>(&format!(
        "SELECT {COLUMNS} FROM rm_tracks LEFT JOIN rm_track_stats USING (track_id)
         WHERE owner_id = $1 AND slug = $2 ORDER BY created_at LIMIT 1"
    ))
    .bind(owner)
    .bind(slug)
    .fetch_optional(pool)
    .await
}

/// A page of `owner`'s tracks, newest first, after the keyset `cursor`
/// (`created_at`, `track_id`), at most `limit`; private ones only when
/// `include_private` (the owner looking).
///
/// # Errors
/// Database errors.
pub async fn list_owner_tracks(
    pool: &PgPool,
    owner: Uuid,
    include_private: bool,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<TrackRow>, sqlx::Error> {
    let (at, after) = cursor.map_or((None, None), |(a, b)| (Some(a), Some(b)));
    sqlx::query_as::<_, TrackRow>(&format!(
        "SELECT {COLUMNS} FROM rm_tracks LEFT JOIN rm_track_stats USING (track_id)
         WHERE owner_id = $1 AND ($2 OR visibility = 'public')
           AND ($2 OR NOT EXISTS (
                SELECT 1 FROM rm_moderation_state m
                WHERE (m.subject_type = 'track' AND m.subject_id = track_id AND m.hidden)
                   OR (m.subject_type = 'user' AND m.subject_id = owner_id AND m.suspended_until > now())))
           AND ($3::timestamptz IS NULL OR (created_at, track_id) < ($3, $4))
         ORDER BY created_at DESC, track_id DESC LIMIT $5"
    ))
    .bind(owner)
    .bind(include_private)
    .bind(at)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
