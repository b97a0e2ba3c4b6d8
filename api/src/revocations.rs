//! Revocation reaches every API node within seconds (ASVS 7.4.1; issue 4):
//! each node follows the `session` events from the head of the feed and
//! keeps the ids of sessions revoked in the last access-token lifetime; the
//! bearer extractor refuses their tokens at once, before (and independently
//! of) the sessions read model.
//!
//! **Authority.** While the set is *complete* the extractor trusts it alone
//! and asks the database nothing (issue 5, `bench queries`). Complete means
//! both of:
//!
//! - **verified against the event store** within [`VERIFY_MAX_AGE`]: at
//!   start every `SessionRevoked` event of the store is loaded (the seed),
//!   then every [`VERIFY_EVERY`] the events of transactions that have ended
//!   since are read (a commit-safe `txid` watermark below the snapshot's
//!   `xmin`, ARCHITECTURE decided 2). So a revocation committed before the
//!   last check is in the set whatever the feed did — this also closes the
//!   start-up gaps of the feed (a Kafka consumer starting at `latest` before
//!   its partitions are assigned; a transaction still open when the
//!   Postgres feed's head was taken);
//! - **the feed answered** within [`FEED_MAX_SILENCE`]: the feed is what
//!   brings a revocation in milliseconds; the store check bounds the delay
//!   by [`VERIFY_EVERY`] when the feed is slow or loses an event.
//!
//! Otherwise (not yet seeded, store check failing, feed failing, follower
//! stopped) [`RevokedSessions::status`] answers [`Revocation::Unknown`] and
//! the extractor falls back to the read model (fail closed, never open).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use commands::tokens::ACCESS_TOKEN_TTL_SECS;
use domain::envelope::Envelope;
use projections::feed::EventFeed;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// How often the follower checks the event store for revocations it may
/// have missed (one indexed range read of the transactions ended since the
/// last check).
pub const VERIFY_EVERY: Duration = Duration::from_millis(500);
/// The set is authoritative only if the last successful store check
/// started less than this long ago.
pub const VERIFY_MAX_AGE: Duration = Duration::from_secs(2);
/// The set is authoritative only if the feed answered (a batch or an empty
/// wait, without error) less than this long ago. The follower waits at most
/// 500 ms per batch, so a healthy feed answers at least twice as often.
pub const FEED_MAX_SILENCE: Duration = Duration::from_secs(2);

/// What this node knows about a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked within the last access-token lifetime: refuse.
    Revoked,
    /// Not revoked, and the set is authoritative: accept without asking the
    /// database.
    NotRevoked,
    /// The set is not known to be complete: ask the read model.
    Unknown,
}

#[derive(Debug, Default)]
struct Inner {
    /// Revoked session ids with their revocation time.
    map: HashMap<Uuid, DateTime<Utc>>,
    /// Per user, the latest `AllSessionsRevoked` cutoff: sessions started
    /// before it are revoked (kept for the same horizon as `map`: after it
    /// no token issued before the cutoff is still valid, and refresh and
    /// step-up refuse to issue new ones).
    cutoffs: HashMap<Uuid, DateTime<Utc>>,
    /// Start of the last successful store check (the seed counts).
    verified_at: Option<Instant>,
    /// Last answer of the feed without error.
    feed_ok_at: Option<Instant>,
}

impl Inner {
    fn authoritative(&self, now: Instant) -> bool {
        let fresh =
            |t: Option<Instant>, max: Duration| t.is_some_and(|t| now.saturating_duration_since(t) < max);
        fresh(self.verified_at, VERIFY_MAX_AGE) && fresh(self.feed_ok_at, FEED_MAX_SILENCE)
    }
}

/// Revoked session ids with their revocation time, and whether the set is
/// complete (see the module docs). Entries older than an access token's
/// lifetime (plus a minute) are dropped: their tokens have expired anyway.
#[derive(Default)]
pub struct RevokedSessions {
    inner: Mutex<Inner>,
}

fn horizon(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::seconds(ACCESS_TOKEN_TTL_SECS + 60)
}

/// A `SessionRevoked` payload's `revoked_at`, as stored (`{"SessionRevoked":
/// {…}}`) or as in an envelope (`{…}`).
fn revoked_at_in(payload: &serde_json::Value) -> Option<DateTime<Utc>> {
    let body = payload.get("SessionRevoked").unwrap_or(payload);
    body.get("revoked_at").and_then(|v| v.as_str()).and_then(|s| s.parse::<DateTime<Utc>>().ok())
}

/// An `AllSessionsRevoked` payload's `revoked_before`, stored or enveloped.
fn revoked_before_in(payload: &serde_json::Value) -> Option<DateTime<Utc>> {
    let body = payload.get("AllSessionsRevoked").unwrap_or(payload);
    body.get("revoked_before").and_then(|v| v.as_str()).and_then(|s| s.parse::<DateTime<Utc>>().ok())
}

/// One pass over the store: the revocations of transactions with
/// `txid ≥ $1` that have ended, and the new watermark (the snapshot's
/// `xmin`: every transaction below it has ended, and its rows are visible
/// to this very statement). `$2` skips rows recorded before the horizon.
/// One row with NULL event columns when there is nothing new.
const STORE_PASS_SQL: &str = "\
    SELECT s.xmin::text::bigint AS xmin, e.aggregate_type, e.aggregate_id, e.payload, e.recorded_at
    FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) s
    LEFT JOIN events e
      ON e.txid >= $1::text::xid8 AND e.txid < s.xmin
     AND ((e.aggregate_type = 'session' AND e.event_type = 'SessionRevoked')
          OR (e.aggregate_type = 'user' AND e.event_type = 'AllSessionsRevoked'))
     AND e.recorded_at >= $2";

type StoreRow = (i64, Option<String>, Option<String>, Option<serde_json::Value>, Option<DateTime<Utc>>);

impl RevokedSessions {
    /// Whether tokens of `session_id` must be refused, as far as this set
    /// knows (revoked ⇒ `true` even when the set is not authoritative).
    pub fn contains(&self, session_id: Uuid) -> bool {
        self.inner.lock().map(|m| m.map.contains_key(&session_id)).unwrap_or(true)
    }

    /// What this node knows about session `session_id` of `user_id` now:
    /// revoked on its own or by the user's cutoff. A poisoned lock answers
    /// [`Revocation::Unknown`].
    pub fn status(&self, session_id: Uuid, user_id: Uuid) -> Revocation {
        self.status_at(session_id, user_id, Instant::now())
    }

    fn status_at(&self, session_id: Uuid, user_id: Uuid, now: Instant) -> Revocation {
        let Ok(inner) = self.inner.lock() else { return Revocation::Unknown };
        let cut_off = inner
            .cutoffs
            .get(&user_id)
            .is_some_and(|c| commands::identity::session_started_at(session_id) < *c);
        if cut_off || inner.map.contains_key(&session_id) {
            Revocation::Revoked
        } else if inner.authoritative(now) {
            Revocation::NotRevoked
        } else {
            Revocation::Unknown
        }
    }

    /// Whether [`RevokedSessions::status`] can answer without the database
    /// now (seeded, store checked and feed heard recently).
    pub fn is_authoritative(&self) -> bool {
        self.inner.lock().is_ok_and(|i| i.authoritative(Instant::now()))
    }

    /// Records a revocation (ignored when older than the horizon).
    pub fn insert(&self, session_id: Uuid, revoked_at: DateTime<Utc>) {
        if revoked_at < horizon(Utc::now()) {
            return;
        }
        if let Ok(mut m) = self.inner.lock() {
            m.map.insert(session_id, revoked_at);
        }
    }

    /// Records a user's cutoff: their sessions started before
    /// `revoked_before` are revoked (ignored when older than the horizon).
    pub fn insert_cutoff(&self, user_id: Uuid, revoked_before: DateTime<Utc>) {
        if revoked_before < horizon(Utc::now()) {
            return;
        }
        if let Ok(mut m) = self.inner.lock() {
            let c = m.cutoffs.entry(user_id).or_insert(revoked_before);
            *c = (*c).max(revoked_before);
        }
    }

    /// Drops entries past the horizon; returns how many remain.
    pub fn prune(&self, now: DateTime<Utc>) -> usize {
        let h = horizon(now);
        self.inner
            .lock()
            .map(|mut m| {
                m.map.retain(|_, at| *at >= h);
                m.cutoffs.retain(|_, at| *at >= h);
                m.map.len() + m.cutoffs.len()
            })
            .unwrap_or(0)
    }

    /// Records the revocation an envelope carries, if any.
    pub fn observe(&self, env: &Envelope) {
        let Ok(id) = Uuid::parse_str(&env.aggregate_id) else { return };
        match (env.aggregate_type.as_str(), env.event_type.as_str()) {
            ("session", "SessionRevoked") => {
                self.insert(id, revoked_at_in(&env.payload).unwrap_or(env.occurred_at));
            }
            ("user", "AllSessionsRevoked") => {
                self.insert_cutoff(id, revoked_before_in(&env.payload).unwrap_or(env.occurred_at));
            }
            _ => {}
        }
    }

    fn mark_feed_ok(&self, at: Instant) {
        if let Ok(mut i) = self.inner.lock() {
            i.feed_ok_at = Some(at);
        }
    }

    fn mark_verified(&self, at: Instant) {
        if let Ok(mut i) = self.inner.lock() {
            i.verified_at = Some(at);
        }
    }

    /// Forgets both health marks: [`RevokedSessions::status`] answers
    /// `Unknown` for every session not in the set until the next seed.
    fn mark_unhealthy(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.verified_at = None;
            i.feed_ok_at = None;
        }
    }

    /// Reads the revocations of the transactions with `txid ≥ watermark`
    /// that have ended, records them and returns the new watermark (`0`
    /// reads the whole store: the seed). Does not touch the health marks.
    ///
    /// # Errors
    /// Database errors.
    pub async fn check_store(&self, pool: &PgPool, watermark: i64) -> Result<i64, sqlx::Error> {
        // 5 minutes of margin below the horizon for clock differences
        // between the writing node and this one.
        let since = horizon(Utc::now()) - chrono::Duration::minutes(5);
        let rows: Vec<StoreRow> =
            sqlx::query_as(STORE_PASS_SQL).bind(watermark).bind(since).fetch_all(pool).await?;
        let mut next = watermark;
        for (xmin, aggregate_type, aggregate_id, payload, recorded_at) in rows {
            next = next.max(xmin);
            let (Some(kind), Some(id), Some(recorded_at)) = (aggregate_type, aggregate_id, recorded_at)
            else {
                continue;
            };
            let Ok(id) = Uuid::parse_str(&id) else { continue };
            if kind == "user" {
                self.insert_cutoff(id, payload.as_ref().and_then(revoked_before_in).unwrap_or(recorded_at));
            } else {
                self.insert(id, payload.as_ref().and_then(revoked_at_in).unwrap_or(recorded_at));
            }
        }
        Ok(next)
    }

    /// Follows `feed` until shutdown, recording revocations; alongside,
    /// seeds from the event store and re-checks it every [`VERIFY_EVERY`]
    /// (see the module docs); prunes each minute. When it returns the set
    /// is no longer authoritative.
    pub async fn follow(&self, feed: &mut dyn EventFeed, pool: &PgPool, shutdown: watch::Receiver<bool>) {
        tokio::join!(self.follow_feed(feed, shutdown.clone()), self.follow_store(pool, shutdown));
        self.mark_unhealthy();
    }

    async fn follow_feed(&self, feed: &mut dyn EventFeed, mut shutdown: watch::Receiver<bool>) {
        let mut last_prune = tokio::time::Instant::now();
        while !*shutdown.borrow() {
            tokio::select! {
                batch = feed.next_batch(500, Duration::from_millis(500)) => match batch {
                    Ok(batch) => {
                        for env in &batch {
                            self.observe(env);
                        }
                        let _ = feed.commit().await;
                        self.mark_feed_ok(Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation feed failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                _ = shutdown.changed() => {},
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = tokio::time::Instant::now();
                self.prune(Utc::now());
            }
        }
    }

    async fn follow_store(&self, pool: &PgPool, mut shutdown: watch::Receiver<bool>) {
        let mut watermark = 0_i64;
        let mut tick = tokio::time::interval(VERIFY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*shutdown.borrow() {
            tokio::select! {
                _ = tick.tick() => {
                    let started = Instant::now();
                    match self.check_store(pool, watermark).await {
                        Ok(next) => {
                            if watermark == 0 {
                                tracing::debug!("revocations seeded from the event store");
                            }
                            watermark = next;
                            self.mark_verified(started);
                        }
                        Err(e) => tracing::warn!(error = %e, "revocation store check failed; retrying"),
                    }
                }
                _ = shutdown.changed() => {},
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_recent_revocations_only() {
        let r = RevokedSessions::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        r.insert(a, Utc::now());
        r.insert(b, Utc::now() - chrono::Duration::hours(1));
        assert!(r.contains(a));
        assert!(!r.contains(b), "older than any live access token");
        assert_eq!(r.prune(Utc::now() + chrono::Duration::hours(1)), 0);
        assert!(!r.contains(a));
    }

    const USER: Uuid = Uuid::from_u128(99);

    #[test]
    fn a_users_cutoff_revokes_the_sessions_started_before_it() {
        let r = RevokedSessions::default();
        let (old, other_user) = (Uuid::now_v7(), Uuid::from_u128(7));
        std::thread::sleep(Duration::from_millis(3));
        r.insert_cutoff(USER, Utc::now());
        std::thread::sleep(Duration::from_millis(3));
        let new = Uuid::now_v7();
        let t0 = Instant::now();
        r.mark_feed_ok(t0);
        r.mark_verified(t0);
        assert_eq!(r.status_at(old, USER, t0), Revocation::Revoked);
        assert_eq!(r.status_at(new, USER, t0), Revocation::NotRevoked, "started after the cutoff");
        assert_eq!(r.status_at(old, other_user, t0), Revocation::NotRevoked, "another user's session");
        assert_eq!(r.prune(Utc::now() + chrono::Duration::hours(1)), 0, "pruned past the horizon");
        // From a stored payload as well as an envelope's.
        let at = "2026-01-02T03:04:05Z".parse::<DateTime<Utc>>().ok();
        let stored = serde_json::json!({"AllSessionsRevoked": {"reason": "logout", "revoked_before": "2026-01-02T03:04:05Z"}});
        assert_eq!(revoked_before_in(&stored), at);
        assert_eq!(revoked_before_in(&stored["AllSessionsRevoked"]), at);
    }

    #[test]
    fn authoritative_only_while_verified_and_fed() {
        let r = RevokedSessions::default();
        let (revoked, live) = (Uuid::from_u128(1), Uuid::from_u128(2));
        r.insert(revoked, Utc::now());
        let t0 = Instant::now();
        // Never seeded: a revoked id is still refused, the rest unknown.
        assert_eq!(r.status_at(revoked, USER, t0), Revocation::Revoked);
        assert_eq!(r.status_at(live, USER, t0), Revocation::Unknown);
        r.mark_feed_ok(t0);
        assert_eq!(r.status_at(live, USER, t0), Revocation::Unknown, "feed alone is not enough");
        r.mark_verified(t0);
        assert_eq!(r.status_at(live, USER, t0), Revocation::NotRevoked);
        assert_eq!(r.status_at(revoked, USER, t0), Revocation::Revoked);
        // The store check goes stale while the feed keeps answering.
        let later = t0 + VERIFY_MAX_AGE;
        r.mark_feed_ok(later);
        assert_eq!(r.status_at(live, USER, later), Revocation::Unknown);
        // The feed goes silent while the store check keeps succeeding.
        r.mark_verified(later);
        assert_eq!(r.status_at(live, USER, later), Revocation::NotRevoked);
        let silent = later + FEED_MAX_SILENCE;
        r.mark_verified(silent);
        assert_eq!(r.status_at(live, USER, silent), Revocation::Unknown);
        // A stopped follower forgets its authority.
        r.mark_feed_ok(silent);
        assert_eq!(r.status_at(live, USER, silent), Revocation::NotRevoked);
        r.mark_unhealthy();
        assert_eq!(r.status_at(live, USER, silent), Revocation::Unknown);
    }

    #[test]
    fn reads_revoked_at_from_stored_and_envelope_payloads() {
        let at = "2026-01-02T03:04:05Z".parse::<DateTime<Utc>>().ok();
        let body = serde_json::json!({"reason": "logout", "revoked_at": "2026-01-02T03:04:05Z"});
        assert_eq!(revoked_at_in(&body), at);
        assert_eq!(revoked_at_in(&serde_json::json!({ "SessionRevoked": body })), at);
        assert_eq!(revoked_at_in(&serde_json::json!({"reason": "logout"})), None);
    }

    // ---- against a real database -----------------------------------------

    use std::future::Future;
    use std::pin::Pin;

    use projections::db::testing::{base_url, create_test_database, drop_test_database};
    use projections::feed::FeedError;

    async fn append_revocation(
        executor: impl sqlx::PgExecutor<'_>,
        session: Uuid,
        revoked_at: DateTime<Utc>,
    ) -> sqlx::Result<()> {
        let payload = serde_json::json!({"SessionRevoked": {"reason": "logout", "revoked_at": revoked_at}});
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('session', $1, 2, 'SessionRevoked', '1.0', $2, '{}')",
        )
        .bind(session.to_string())
        .bind(payload)
        .execute(executor)
        .await?;
        Ok(())
    }

    #[tokio::test]
    async fn store_check_sees_every_ended_transaction_once_it_has_ended() {
        let (pool, url) = create_test_database(&base_url()).await.unwrap();
        let r = RevokedSessions::default();
        let (old, seeded, late) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        append_revocation(&pool, old, Utc::now() - chrono::Duration::hours(2)).await.unwrap();
        append_revocation(&pool, seeded, Utc::now()).await.unwrap();
        // A revocation whose transaction is still open during the seed.
        let mut open = pool.begin().await.unwrap();
        append_revocation(&mut *open, late, Utc::now()).await.unwrap();
        // The settled horizon is cluster-wide: a transaction of another test
        // (another database) may hold it below `seeded` for a moment.
        let mut watermark = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.contains(seeded) && Instant::now() < deadline {
            watermark = r.check_store(&pool, watermark).await.unwrap();
            if !r.contains(seeded) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(r.contains(seeded), "seed reads the store");
        assert!(!r.contains(old), "past the horizon");
        assert!(!r.contains(late), "not committed yet");
        open.commit().await.unwrap();
        let next = r.check_store(&pool, watermark).await.unwrap();
        assert!(r.contains(late), "the open transaction is read once it has ended");
        assert!(next > watermark);
        pool.close().await;
        drop_test_database(&url).await.unwrap();
    }

    /// A feed that always fails.
    struct BrokenFeed;

    type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, FeedError>> + Send + 'a>>;

    impl EventFeed for BrokenFeed {
        fn next_batch<'a, 'b>(&'a mut self, _max: usize, _wait: Duration) -> Fut<'b, Vec<Envelope>>
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(async { Err(FeedError::Config("broken".into())) })
        }
        fn commit<'a, 'b>(&'a mut self) -> Fut<'b, ()>
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(async { Ok(()) })
        }
        fn rollback<'a, 'b>(&'a mut self) -> Fut<'b, ()>
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(async { Ok(()) })
        }
    }

    async fn wait_authoritative(r: &RevokedSessions, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if r.is_authoritative() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn authoritative_only_while_the_follower_runs_on_a_working_feed() {
        let (pool, url) = create_test_database(&base_url()).await.unwrap();
        let revoked = Uuid::new_v4();
        append_revocation(&pool, revoked, Utc::now()).await.unwrap();

        // A working Postgres feed: seeded from the store, then authoritative.
        let r = std::sync::Arc::new(RevokedSessions::default());
        let (stop, stopped) = watch::channel(false);
        let task = {
            let (r, pool) = (r.clone(), pool.clone());
            tokio::spawn(async move {
                let config =
                    projections::pg_feed::PgFeedConfig::new("revocations-test").aggregate_types(["session"]);
                let mut feed = projections::pg_feed::PgFeed::new(pool.clone(), config).await.unwrap();
                r.follow(&mut feed, &pool, stopped).await;
            })
        };
        assert!(wait_authoritative(&r, Duration::from_secs(5)).await);
        assert_eq!(r.status(revoked, USER), Revocation::Revoked);
        assert_eq!(r.status(Uuid::new_v4(), USER), Revocation::NotRevoked);
        let _ = stop.send(true);
        task.await.unwrap();
        assert_eq!(r.status(Uuid::new_v4(), USER), Revocation::Unknown, "a stopped follower is not trusted");
        assert_eq!(r.status(revoked, USER), Revocation::Revoked);

        // A failing feed: the store check alone does not make it authoritative.
        let r = std::sync::Arc::new(RevokedSessions::default());
        let (stop, stopped) = watch::channel(false);
        let task = {
            let (r, pool) = (r.clone(), pool.clone());
            tokio::spawn(async move { r.follow(&mut BrokenFeed, &pool, stopped).await })
        };
        assert!(!wait_authoritative(&r, Duration::from_millis(1500)).await);
        assert!(r.contains(revoked), "seeded from the store all the same");
        let _ = stop.send(true);
        task.await.unwrap();
        pool.close().await;
        drop_test_database(&url).await.unwrap();
    }
}
