//! The home feed (issue 16): `GET /api/feed`. Fanned out on write by the
//! `home_feed` projector (`projections::social::home`, where the cap, the
//! repost dedupe and the fan-out threshold are documented).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use projections::social::home;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::consistency::{ReadAfter, ReadModel};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ValidQuery;
use crate::routes::paging;
use crate::state::AppState;

/// Most items per feed page (issue 16).
pub const MAX_FEED_PAGE: i64 = 50;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/feed", get(feed))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct FeedQuery {
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1–50 (default 50).
    pub limit: Option<i64>,
}

/// Counters of a track in a feed item.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedCounts {
    pub likes: i64,
    pub reposts: i64,
    pub comments: i64,
}

/// The track of a feed item, with the reader's own like and repost.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedTrack {
    pub id: Uuid,
    pub title: String,
    /// The owner's user id.
    pub owner: Uuid,
    pub counts: FeedCounts,
    pub liked_by_me: bool,
    pub reposted_by_me: bool,
}

/// One item: a followed user posted or reposted a track.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedItem {
    /// `post` or `repost`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who posted or reposted (user id).
    pub actor: Uuid,
    pub track: FeedTrack,
    /// When it was posted or reposted.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    /// Pass as `cursor` for older items; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The caller's home feed: tracks posted and reposted by the people they
/// follow, newest first. Never items of users the caller blocks or mutes
/// or who block the caller, nor private or deleted tracks. Accepts
/// `X-Consistency-Token` (a reposter's followers see the repost once the
/// fan-out has passed the token).
#[utoipa::path(get, path = "/api/feed", tag = "engagement", security(("bearer" = [])),
    params(FeedQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = FeedPage),
        (status = 422, description = "validation_failed (limit, cursor)", body = ErrorBody),
        (status = 503, description = "consistency_timeout", body = ErrorBody)))]
pub async fn feed(
    State(state): State<AppState>,
    user: AuthUser,
    read_after: ReadAfter,
    ValidQuery(q): ValidQuery<FeedQuery>,
) -> Result<Json<FeedPage>, ApiError> {
    let limit = q.limit.unwrap_or(MAX_FEED_PAGE);
    if !(1..=MAX_FEED_PAGE).contains(&limit) {
        return Err(paging::invalid("limit", "must be 1 to 50"));
    }
    let cursor = paging::keyset(q.cursor.as_deref())?;
    read_after.wait(&state, &[ReadModel::HomeFeed, ReadModel::Engagement, ReadModel::Moderation]).await?;
    let rows = home::home_page(&state.read, user.user_id, cursor, limit).await?;
    let next_cursor = paging::next_cursor(&rows, limit, |r| (r.at, r.item_id));
    let items = rows
        .into_iter()
        .map(|r| FeedItem {
            kind: r.kind,
            actor: r.actor_id,
            at: r.at,
            track: FeedTrack {
                id: r.track_id,
                title: r.title,
                owner: r.owner_id,
                counts: FeedCounts { likes: r.likes, reposts: r.reposts, comments: r.comments },
                liked_by_me: r.liked_by_me,
                reposted_by_me: r.reposted_by_me,
            },
        })
        .collect();
    Ok(Json(FeedPage { items, next_cursor }))
}
