//! Live updates over server-sent events (issue 16): `GET /api/stream`.
//! What is pushed and how resuming works: [`crate::live`].

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ValidQuery;
use crate::live::{LiveEvent, Viewer};
use crate::revocations::Revocation;
use crate::routes::paging;
use crate::state::AppState;

/// Most tracks one connection may watch.
pub const MAX_WATCHED_TRACKS: usize = 100;
/// How often an open stream checks its session (revocation, expiry).
pub const SESSION_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Comment lines sent on an idle stream (keeps proxies from closing it).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn router() -> Router<AppState> {
    Router::new().route("/api/stream", get(stream))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct StreamQuery {
    /// Track ids (comma-separated, at most 100) whose counter changes to push.
    pub tracks: Option<String>,
}

/// Server-sent events for the caller: `feed` (a followed user posted or
/// reposted), `notification` (followed, liked, reposted, commented,
/// replied) and `counts` (counter deltas of the `tracks` watched). Resume
/// with `Last-Event-ID` within 5 minutes. The stream ends when the session
/// is revoked or the access token expires (checked every second).
#[utoipa::path(get, path = "/api/stream", tag = "engagement", security(("bearer" = [])),
    params(StreamQuery, ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, description = "text/event-stream"),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 422, description = "validation_failed (tracks)", body = ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ValidQuery(q): ValidQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tracks = watched(q.tracks.as_deref())?;
    // The token was verified by `AuthUser`; read its expiry.
    let expires = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(7..))
        .and_then(|t| state.tokens.verify_access(t.trim()).ok())
        .map_or(0, |c| c.exp);
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let (rx, backlog) = state.live.subscribe(last);
    let viewer = Viewer::load(&state.read, user.user_id, tracks).await?;
    let replayed = backlog.last().map_or(0, |e| e.seq);
    let mut check = tokio::time::interval(SESSION_CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics::gauge!("streamforge_sse_connections").increment(1.0);
    let state_closing = state.live.closing();
    let open = Open {
        state,
        user,
        expires,
        viewer,
        rx,
        backlog: backlog.into(),
        replayed,
        check,
        closing: state_closing,
        _gauge: Gauge,
    };
    Ok(Sse::new(futures::stream::unfold(open, next)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The watched track ids, or 422 naming `tracks`.
fn watched(raw: Option<&str>) -> Result<HashSet<Uuid>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else { return Ok(HashSet::new()) };
    let ids: Vec<&str> = raw.split(',').collect();
    if ids.len() > MAX_WATCHED_TRACKS {
        return Err(paging::invalid("tracks", "may name at most 100 tracks"));
    }
    ids.iter()
        .map(|s| s.trim().parse::<Uuid>().map_err(|_| paging::invalid("tracks", "must be track ids")))
        .collect()
}

/// Decrements the connection gauge when the stream is dropped.
struct Gauge;

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!("streamforge_sse_connections").decrement(1.0);
    }
}

struct Open {
    state: AppState,
    user: AuthUser,
    expires: i64,
    viewer: Viewer,
    rx: broadcast::Receiver<Arc<LiveEvent>>,
    backlog: VecDeque<Arc<LiveEvent>>,
    /// The last event replayed from the backlog (live ones up to it are
    /// duplicates).
    replayed: u64,
    check: tokio::time::Interval,
    closing: tokio::sync::watch::Receiver<bool>,
    _gauge: Gauge,
}

fn to_sse(event: &LiveEvent) -> Event {
    Event::default().id(event.id.clone()).event(event.name).data(event.data.to_string())
}

/// The next event for the connection, or `None` to close it.
async fn next(mut open: Open) -> Option<(Result<Event, Infallible>, Open)> {
    while let Some(event) = open.backlog.pop_front() {
        if open.viewer.accept(&event) {
            return Some((Ok(to_sse(&event)), open));
        }
    }
    loop {
        tokio::select! {
            received = open.rx.recv() => match received {
                Ok(event) => {
                    if event.seq <= open.replayed || !open.viewer.accept(&event) {
                        continue;
                    }
                    return Some((Ok(to_sse(&event)), open));
                }
                // Too slow: close; the client resumes with Last-Event-ID.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "live stream fell behind; closed");
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = open.closing.changed() => return None,
            _ = open.check.tick() => {
                if !session_open(&open).await {
                    return None;
                }
            }
        }
    }
}

/// Whether the connection's session still stands: not revoked (this node's
/// revocation set, or the read model when the set is not authoritative)
/// and the access token not expired.
async fn session_open(open: &Open) -> bool {
    if chrono::Utc::now().timestamp() >= open.expires {
        return false;
    }
    let (sid, sub) = (open.user.session_id, open.user.user_id);
    match open.state.revoked.status(sid, sub) {
        Revocation::Revoked => false,
        Revocation::NotRevoked => true,
        Revocation::Unknown => {
            let revoked = projections::sessions::is_revoked(&open.state.read, sid).await.unwrap_or(false)
                || commands::identity::is_cut_off(&open.state.read, sub, sid).await.unwrap_or(false);
            !revoked
        }
    }
}
