//! [`SharedListener`]: one `LISTEN streamforge_events` connection for a
//! whole process, fanned out to its feeds. Every commit that inserts events
//! notifies each listening backend, so five feeds with a connection each
//! (`streamforge serve`: the projectors, the home feed, the notifier, the
//! live and revocation followers) woke five backends per commit; through
//! one shared connection a commit wakes one, and the feeds are woken
//! in-process ([`tokio::sync::broadcast`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::broadcast;

use super::EVENTS_CHANNEL;

/// Notifications kept for a subscriber that has not taken them yet; one
/// that falls further behind is told it lagged, which wakes it like a
/// notification (it reads the store anyway).
const CAPACITY: usize = 1_024;

/// Pause before connecting again after the connection failed.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);

/// What the shared connection passes on.
#[derive(Debug, Clone)]
pub(super) enum Note {
    /// A notification's payload (the inserted aggregate types, comma-separated).
    Payload(Arc<str>),
    /// The connection (re)started listening: notifications may have been
    /// missed before, so read again.
    Reconnected,
}

/// A process-wide `LISTEN` connection whose notifications reach every
/// [`super::EventsListener::shared`] subscribed to it. Cheap to clone; the
/// connection closes when the last clone and the last subscriber are gone.
#[derive(Clone)]
pub struct SharedListener {
    hub: Arc<Hub>,
}

/// The connection's task and what subscribers need from it.
pub(super) struct Hub {
    notes: broadcast::Sender<Note>,
    listening: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for SharedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedListener").field("listening", &self.is_listening()).finish_non_exhaustive()
    }
}

impl PartialEq for SharedListener {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.hub, &other.hub)
    }
}

impl Eq for SharedListener {}

impl SharedListener {
    /// Starts listening on a connection of `pool` (held for good, as a
    /// [`PgListener`] holds it: one connection of the pool instead of one
    /// per feed), in a task of the current Tokio runtime; a lost connection is connected again after
    /// 250 ms, and each time it listens again its subscribers are woken
    /// with [`super::Wake::Reconnected`].
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns its task).
    pub fn new(pool: &PgPool) -> Self {
        let (notes, _) = broadcast::channel(CAPACITY);
        let listening = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(listen(pool.clone(), notes.clone(), listening.clone()));
        Self { hub: Arc::new(Hub { notes, listening, task }) }
    }

    /// Whether the shared connection is listening now.
    pub fn is_listening(&self) -> bool {
        self.hub.listening.load(Ordering::Acquire)
    }

    pub(super) fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }
}

impl Hub {
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Note> {
        self.notes.subscribe()
    }

    pub(super) fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }
}

/// The connection's loop: listen, pass every notification on, and after
/// a failure connect again.
async fn listen(pool: PgPool, notes: broadcast::Sender<Note>, listening: Arc<AtomicBool>) {
    loop {
        let mut listener = match super::listen_on(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(error = %error, "cannot LISTEN {EVENTS_CHANNEL}; feeds poll meanwhile");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        // Listening (again): what was committed before may not have been
        // notified, so every subscriber reads again.
        listening.store(true, Ordering::Release);
        let _ = notes.send(Note::Reconnected);
        let lost = loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let _ = notes.send(Note::Payload(Arc::from(notification.payload())));
                }
                // The connection closed. sqlx would listen again on the
                // next call, but not say when; connect here instead, so
                // that `Reconnected` goes out once listening again.
                Ok(None) => break None,
                Err(error) => break Some(error),
            }
        };
        listening.store(false, Ordering::Release);
        drop(listener);
        if let Some(error) = lost {
            tracing::warn!(error = %error, "shared LISTEN connection failed; reconnecting");
            tokio::time::sleep(RECONNECT_DELAY).await;
        } else {
            tracing::debug!("shared LISTEN connection lost; reconnecting");
        }
    }
}
