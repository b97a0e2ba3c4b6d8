//! Read your own writes (ARCHITECTURE decided 13): every command answer
//! carries `X-Consistency-Token` (the position of its last event, opaque);
//! every query accepts it back and answers only once the read models it
//! reads have applied that event, waiting at most `CONSISTENCY_WAIT_MS`,
//! then 503 `consistency_timeout` with `Retry-After: 1`. The wait asks the
//! projectors' checkpoints in Postgres, so it holds across nodes.
//!
//! A token names one event; every earlier event of the same stream is
//! applied before it (per-stream order). A client that wrote to several
//! streams sends the token of the write it needs to see.

use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use domain::consistency::ConsistencyToken;
use projections::runtime::Projector;

use crate::error::ApiError;
use crate::state::AppState;

/// The header, both ways.
pub const HEADER: &str = "x-consistency-token";

/// The read models a query reads, named by projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadModel {
    /// `rm_profiles` (handles, names).
    Profiles,
    /// The graph (follows, blocks, mutes, counters).
    Graph,
    /// `rm_tracks`.
    Tracks,
    /// Likes, reposts, comments and their counters.
    Engagement,
    /// Notifications and read marks.
    Notifications,
    /// The home feed (fan-out and its own copies of follows, tracks, reposts).
    HomeFeed,
    /// Reports, moderation state and the audit trail.
    Moderation,
    /// Custom roles and who holds them (lists and counts).
    Access,
}

impl ReadModel {
    fn projector(self) -> Box<dyn Projector> {
        match self {
            Self::Profiles => Box::new(projections::profiles::ProfilesProjector),
            Self::Graph => Box::new(projections::social::graph::GraphProjector),
            Self::Tracks => Box::new(projections::catalog::tracks::TracksProjector),
            Self::Engagement => Box::new(projections::social::engagement::EngagementProjector),
            Self::Notifications => Box::new(projections::social::notifications::NotificationsProjector),
            Self::HomeFeed => Box::new(projections::social::home::HomeFeedProjector::default()),
            Self::Moderation => Box::new(projections::moderation::ModerationProjector),
            Self::Access => Box::new(projections::access::AccessProjector),
        }
    }
}

/// The token a client sent back, if any.
#[derive(Debug, Clone, Default)]
pub struct ReadAfter(pub Option<ConsistencyToken>);

impl<S: Send + Sync> FromRequestParts<S> for ReadAfter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(HEADER) else { return Ok(Self(None)) };
        let token = value.to_str().ok().and_then(ConsistencyToken::parse).ok_or_else(|| {
            let mut e = ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_consistency_token",
                "X-Consistency-Token is not a token this API issued",
            );
            e.field = Some("X-Consistency-Token");
            e
        })?;
        Ok(Self(Some(token)))
    }
}

impl ReadAfter {
    /// Waits until every one of `models` that handles the token's aggregate
    /// type has applied its event (at once without a token).
    ///
    /// # Errors
    /// 503 `consistency_timeout` (`Retry-After: 1`) after
    /// [`AppState::consistency_wait`]; 500 on a database error.
    pub async fn wait(&self, state: &AppState, models: &[ReadModel]) -> Result<(), ApiError> {
        let Some(token) = &self.0 else { return Ok(()) };
        let projectors: Vec<Box<dyn Projector>> =
            models.iter().map(|m| m.projector()).filter(|p| p.handles(&token.aggregate_type)).collect();
        let deadline = Instant::now() + state.consistency_wait;
        let mut pause = Duration::from_millis(2);
        let mut pending = projectors;
        loop {
            let mut still = Vec::with_capacity(pending.len());
            for projector in pending {
                let applied = projector
                    .has_applied(&state.read, &token.aggregate_type, &token.aggregate_id, token.sequence)
                    .await?;
                if !applied {
                    still.push(projector);
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() + pause > deadline {
                metrics::counter!("streamforge_consistency_timeouts_total").increment(1);
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "consistency_timeout",
                    "the read model has not caught up with your write yet; retry",
                );
                e.retry_after = Some(1);
                return Err(e);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
            pending = still;
        }
    }
}

/// `(X-Consistency-Token, token)` for a command's answer, when it wrote.
pub fn header(token: Option<&ConsistencyToken>) -> Option<(HeaderName, HeaderValue)> {
    let value = HeaderValue::from_str(&token?.encode()).ok()?;
    Some((HeaderName::from_static(HEADER), value))
}

/// A response's headers with the token, if any.
pub fn headers(token: Option<&ConsistencyToken>) -> axum::http::HeaderMap {
    let mut map = axum::http::HeaderMap::new();
    if let Some((name, value)) = header(token) {
        map.insert(name, value);
    }
    map
}
