//! Live updates (issue 16): every HTTP node follows the event feed from its
//! head (its own consumer, like the revocation follower) and turns the
//! events that concern a signed-in user into server-sent events for its
//! own connections (`GET /api/stream`, `routes::social::stream`):
//!
//! - `feed`: a followed user posted or reposted a public track,
//! - `notification`: someone followed the user, or liked, reposted or
//!   commented on their track, or replied to their comment,
//! - `counts`: a watched track's counters changed (deltas: `+1`, `-1`).
//!
//! The hub keeps what it published during the last [`RESUME_WINDOW`] (at
//! most [`BUFFER_MAX`] events), so a client that reconnects with
//! `Last-Event-ID` gets what it missed, on this node or another (an id
//! unknown here resumes by its time).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::catalog::track::{TrackEvent, Visibility};
use domain::envelope::Envelope;
use domain::social::comment::CommentEvent;
use domain::social::engagement::EngagementEvent;
use domain::social::relationship::RelationshipEvent;
use projections::feed::EventFeed;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// How far back `Last-Event-ID` resumes (issue 16: five minutes).
pub const RESUME_WINDOW: Duration = Duration::from_secs(300);
/// Most events kept for resuming, whatever their age.
pub const BUFFER_MAX: usize = 100_000;
/// Events a slow connection may fall behind before it is closed (the
/// client then resumes with `Last-Event-ID`).
pub const CHANNEL_CAPACITY: usize = 4_096;
/// The aggregate types the hub follows.
pub const LIVE_TYPES: [&str; 4] = ["relationship", "track", "engagement", "comment"];

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A notification for `recipient`, caused by `actor`.
    User { recipient: Uuid, actor: Uuid },
    /// A feed item by `author` of a track of `owner`: for `author`'s followers.
    Feed { author: Uuid, owner: Uuid },
    /// A counter change of `track`: for connections watching it.
    Track(Uuid),
    /// A graph change (`from` → `to`, of `kind` `follow`, `block` or
    /// `mute`): updates the connections of both users, sent to nobody.
    Graph { kind: &'static str, from: Uuid, to: Uuid, active: bool },
}

/// One event the hub published.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// Node-local order.
    pub seq: u64,
    /// The SSE id: `<microseconds>-<event id>-<n>` (n: the envelope's n-th
    /// live event); the same on every node.
    pub id: String,
    pub at: DateTime<Utc>,
    pub route: Route,
    /// The SSE event name: `feed`, `notification` or `counts`.
    pub name: &'static str,
    pub data: Value,
}

/// The node's live-event hub.
pub struct LiveHub {
    tx: broadcast::Sender<Arc<LiveEvent>>,
    buffer: Mutex<VecDeque<Arc<LiveEvent>>>,
    next: AtomicU64,
    /// Turns `true` at shutdown: open streams end (a graceful shutdown
    /// waits for every response body).
    closing: watch::Sender<bool>,
}

impl Default for LiveHub {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveHub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        Self {
            tx,
            buffer: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(1),
            closing: watch::Sender::new(false),
        }
    }

    /// Ends every open stream (at shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Changes to `true` when the hub closes.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Subscribes, and returns the buffered events after `last_event_id`
    /// (none without one): those after the id itself when this node has it,
    /// else those newer than the time the id carries. Both within
    /// [`RESUME_WINDOW`].
    pub fn subscribe(
        &self,
        last_event_id: Option<&str>,
    ) -> (broadcast::Receiver<Arc<LiveEvent>>, Vec<Arc<LiveEvent>>) {
        let rx = self.tx.subscribe();
        let Some(last) = last_event_id else { return (rx, Vec::new()) };
        let Ok(buffer) = self.buffer.lock() else { return (rx, Vec::new()) };
        let oldest = Utc::now() - chrono::Duration::from_std(RESUME_WINDOW).unwrap_or_default();
        let backlog = match buffer.iter().position(|e| e.id == last) {
            Some(i) => buffer.iter().skip(i + 1).filter(|e| e.at >= oldest).cloned().collect(),
            None => {
                let since = id_time(last).unwrap_or(oldest).max(oldest);
                buffer.iter().filter(|e| e.at > since).cloned().collect()
            }
        };
        (rx, backlog)
    }

    /// Connections open on this node.
    pub fn connections(&self) -> usize {
        self.tx.receiver_count()
    }

    fn publish(&self, env: &Envelope, n: usize, route: Route, name: &'static str, data: Value) {
        let event = Arc::new(LiveEvent {
            seq: self.next.fetch_add(1, Ordering::Relaxed),
            id: format!("{}-{}-{n}", env.occurred_at.timestamp_micros(), env.event_id.simple()),
            at: env.occurred_at,
            route,
            name,
            data,
        });
        if let Ok(mut buffer) = self.buffer.lock() {
            let oldest = Utc::now() - chrono::Duration::from_std(RESUME_WINDOW).unwrap_or_default();
            while buffer.front().is_some_and(|e| e.at < oldest) || buffer.len() >= BUFFER_MAX {
                buffer.pop_front();
            }
            buffer.push_back(event.clone());
        }
        // No receivers is not an error: nobody is connected.
        let _ = self.tx.send(event);
    }

    /// Publishes the live events an envelope causes. Reads the store only
    /// for a deleted comment's track.
    pub async fn observe(&self, env: &Envelope, pool: &PgPool) {
        let mut out: Vec<(Route, &'static str, Value)> = Vec::new();
        let note = |recipient: Uuid, actor: Uuid, kind: &str, track: Option<Uuid>| {
            (
                Route::User { recipient, actor },
                "notification",
                json!({"kind": kind, "actor": actor, "track_id": track, "at": env.occurred_at}),
            )
        };
        let counts = |track: Uuid, field: &str, delta: i64| {
            (Route::Track(track), "counts", json!({"track_id": track, field: delta}))
        };
        match env.aggregate_type.as_str() {
            "engagement" => match env.decode::<EngagementEvent>() {
                Ok(EngagementEvent::TrackLiked { user_id, track_id, owner_id, .. }) => {
                    if let Some(owner) = owner_id.filter(|o| *o != user_id) {
                        out.push(note(owner, user_id, "like", Some(track_id)));
                    }
                    out.push(counts(track_id, "likes", 1));
                }
                Ok(EngagementEvent::TrackUnliked { track_id, .. }) => out.push(counts(track_id, "likes", -1)),
                Ok(EngagementEvent::TrackReposted { user_id, track_id, owner_id, reposted_at }) => {
                    let owner = owner_id.unwrap_or(user_id);
                    if owner != user_id {
                        out.push(note(owner, user_id, "repost", Some(track_id)));
                    }
                    out.push((
                        Route::Feed { author: user_id, owner },
                        "feed",
                        json!({"type": "repost", "actor": user_id, "track_id": track_id, "at": reposted_at}),
                    ));
                    out.push(counts(track_id, "reposts", 1));
                }
                Ok(EngagementEvent::TrackUnreposted { track_id, .. }) => {
                    out.push(counts(track_id, "reposts", -1));
                }
                Err(_) => {}
            },
            "comment" => match env.decode::<CommentEvent>() {
                Ok(CommentEvent::CommentPosted {
                    track_id, author_id, track_owner, parent_author, ..
                }) => {
                    if let Some(owner) = track_owner.filter(|o| *o != author_id) {
                        out.push(note(owner, author_id, "comment", Some(track_id)));
                    }
                    if let Some(parent) = parent_author.filter(|p| *p != author_id) {
                        out.push(note(parent, author_id, "reply", Some(track_id)));
                    }
                    out.push(counts(track_id, "comments", 1));
                }
                Ok(CommentEvent::CommentDeleted { .. }) => {
                    let track: Option<Uuid> = match env.aggregate_id.parse::<Uuid>() {
                        Ok(id) => {
                            sqlx::query_scalar("SELECT track_id FROM rm_comments WHERE comment_id = $1")
                                .bind(id)
                                .fetch_optional(pool)
                                .await
                                .ok()
                                .flatten()
                        }
                        Err(_) => None,
                    };
                    if let Some(track) = track {
                        out.push(counts(track, "comments", -1));
                    }
                }
                Err(_) => {}
            },
            "track" => {
                if let Ok(TrackEvent::TrackCreated { track_id, owner_id, visibility, created_at, .. }) =
                    env.decode::<TrackEvent>()
                {
                    if visibility == Visibility::Public {
                        out.push((
                            Route::Feed { author: owner_id, owner: owner_id },
                            "feed",
                            json!({"type": "post", "actor": owner_id, "track_id": track_id, "at": created_at}),
                        ));
                    }
                }
            }
            "relationship" => {
                let graph =
                    |kind, from, to, active| (Route::Graph { kind, from, to, active }, "graph", Value::Null);
                match env.decode::<RelationshipEvent>() {
                    Ok(RelationshipEvent::UserFollowed { follower, followee, .. }) => {
                        out.push(graph("follow", follower, followee, true));
                        out.push(note(followee, follower, "follow", None));
                    }
                    Ok(RelationshipEvent::UserUnfollowed { follower, followee, .. }) => {
                        out.push(graph("follow", follower, followee, false));
                    }
                    Ok(RelationshipEvent::UserBlocked { blocker, blocked, .. }) => {
                        out.push(graph("block", blocker, blocked, true));
                    }
                    Ok(RelationshipEvent::UserUnblocked { blocker, blocked, .. }) => {
                        out.push(graph("block", blocker, blocked, false));
                    }
                    Ok(RelationshipEvent::UserMuted { muter, muted, .. }) => {
                        out.push(graph("mute", muter, muted, true));
                    }
                    Ok(RelationshipEvent::UserUnmuted { muter, muted, .. }) => {
                        out.push(graph("mute", muter, muted, false));
                    }
                    Err(_) => {}
                }
            }
            _ => {}
        }
        for (n, (route, name, data)) in out.into_iter().enumerate() {
            self.publish(env, n, route, name, data);
        }
    }

    /// Follows `feed` into the hub until shutdown.
    pub async fn follow(&self, feed: &mut dyn EventFeed, pool: &PgPool, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            tokio::select! {
                batch = feed.next_batch(500, Duration::from_millis(500)) => match batch {
                    Ok(batch) => {
                        for env in &batch {
                            self.observe(env, pool).await;
                        }
                        let _ = feed.commit().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "live feed failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                _ = shutdown.changed() => {},
            }
        }
    }
}

/// The time an SSE id carries.
fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let micros: i64 = id.split('-').next()?.parse().ok()?;
    DateTime::from_timestamp_micros(micros)
}

/// One connection's view: whom the user follows and hides, and the tracks
/// they watch; kept current from the graph events the hub passes on.
#[derive(Debug, Default)]
pub struct Viewer {
    pub user: Uuid,
    pub followees: HashSet<Uuid>,
    /// Users the viewer blocks or mutes, or who block the viewer.
    pub hidden: HashSet<Uuid>,
    pub tracks: HashSet<Uuid>,
}

impl Viewer {
    /// Loads `user`'s follows, blocks and mutes (the home feed's copies).
    ///
    /// # Errors
    /// Database errors.
    pub async fn load(pool: &PgPool, user: Uuid, tracks: HashSet<Uuid>) -> Result<Self, sqlx::Error> {
        let (followees, hidden) = projections::social::home::reader_view(pool, user).await?;
        Ok(Self {
            user,
            followees: followees.into_iter().collect(),
            hidden: hidden.into_iter().collect(),
            tracks,
        })
    }

    /// Whether `event` goes to this connection (graph events update the
    /// view and go to nobody).
    pub fn accept(&mut self, event: &LiveEvent) -> bool {
        match &event.route {
            Route::User { recipient, actor } => *recipient == self.user && !self.hidden.contains(actor),
            Route::Feed { author, owner } => {
                self.followees.contains(author)
                    && !self.hidden.contains(author)
                    && !self.hidden.contains(owner)
            }
            Route::Track(track) => self.tracks.contains(track),
            Route::Graph { kind, from, to, active } => {
                let other = if *from == self.user {
                    *to
                } else if *to == self.user {
                    *from
                } else {
                    return false;
                };
                match (*kind, *from == self.user, *active) {
                    ("follow", true, true) => {
                        self.followees.insert(other);
                    }
                    ("follow", true, false) => {
                        self.followees.remove(&other);
                    }
                    ("block", _, true) | ("mute", true, true) => {
                        self.hidden.insert(other);
                    }
                    ("block", _, false) | ("mute", true, false) => {
                        self.hidden.remove(&other);
                    }
                    _ => {}
                }
                false
            }
        }
    }
}
