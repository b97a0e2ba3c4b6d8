//! Revocation reaches every API node within seconds (ASVS 7.4.1; issue 4):
//! each node follows the `session` events from the head of the feed and
//! keeps the ids of sessions revoked in the last access-token lifetime; the
//! bearer extractor refuses their tokens at once, before (and independently
//! of) the sessions read model. Seeded from the read model at start so a
//! fresh node knows earlier revocations whose tokens are still alive.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use commands::tokens::ACCESS_TOKEN_TTL_SECS;
use domain::envelope::Envelope;
use projections::feed::EventFeed;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// Revoked session ids with their revocation time. Entries older than an
/// access token's lifetime (plus a minute) are dropped: their tokens have
/// expired anyway.
#[derive(Default)]
pub struct RevokedSessions {
    map: Mutex<HashMap<Uuid, DateTime<Utc>>>,
}

fn horizon(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::seconds(ACCESS_TOKEN_TTL_SECS + 60)
}

impl RevokedSessions {
    /// Whether tokens of `session_id` must be refused.
    pub fn contains(&self, session_id: Uuid) -> bool {
        self.map.lock().map(|m| m.contains_key(&session_id)).unwrap_or(false)
    }

    /// Records a revocation (ignored when older than the horizon).
    pub fn insert(&self, session_id: Uuid, revoked_at: DateTime<Utc>) {
        if revoked_at < horizon(Utc::now()) {
            return;
        }
        if let Ok(mut m) = self.map.lock() {
            m.insert(session_id, revoked_at);
        }
    }

    /// Drops entries past the horizon; returns how many remain.
    pub fn prune(&self, now: DateTime<Utc>) -> usize {
        let h = horizon(now);
        self.map
            .lock()
            .map(|mut m| {
                m.retain(|_, at| *at >= h);
                m.len()
            })
            .unwrap_or(0)
    }

    /// Records the revocation an envelope carries, if any.
    pub fn observe(&self, env: &Envelope) {
        if env.aggregate_type != "session" || env.event_type != "SessionRevoked" {
            return;
        }
        let at = env
            .payload
            .get("revoked_at")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<DateTime<Utc>>().ok())
            .unwrap_or(env.occurred_at);
        if let Ok(id) = Uuid::parse_str(&env.aggregate_id) {
            self.insert(id, at);
        }
    }

    /// Loads the revocations the sessions read model knows within the horizon.
    ///
    /// # Errors
    /// Database errors.
    pub async fn seed(&self, pool: &PgPool) -> Result<usize, sqlx::Error> {
        let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT session_id, revoked_at FROM rm_sessions WHERE status = 'revoked' AND revoked_at >= $1",
        )
        .bind(horizon(Utc::now()))
        .fetch_all(pool)
        .await?;
        let n = rows.len();
        for (id, at) in rows {
            self.insert(id, at);
        }
        Ok(n)
    }

    /// Follows `feed` until shutdown, recording revocations; prunes each minute.
    pub async fn follow(&self, feed: &mut dyn EventFeed, pool: &PgPool, mut shutdown: watch::Receiver<bool>) {
        let mut seeded = false;
        let mut last_prune = tokio::time::Instant::now();
        while !*shutdown.borrow() {
            tokio::select! {
                batch = feed.next_batch(500, Duration::from_millis(500)) => match batch {
                    Ok(batch) => {
                        for env in &batch {
                            self.observe(env);
                        }
                        let _ = feed.commit().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation feed failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                _ = shutdown.changed() => {},
            }
            // Seed once the feed is consuming, so nothing falls between the two.
            if !seeded {
                match self.seed(pool).await {
                    Ok(n) => {
                        seeded = true;
                        tracing::debug!(revoked = n, "revocations seeded from the read model");
                    }
                    Err(e) => tracing::warn!(error = %e, "seeding revocations failed"),
                }
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = tokio::time::Instant::now();
                self.prune(Utc::now());
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
}
