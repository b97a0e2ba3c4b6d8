//! The `sessions` read model (`rm_sessions`): one row per session (refresh
//! token family), built from `session` events. The api serves
//! `GET /api/auth/session` from it and checks revocation of access tokens
//! against it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::session::{Session, SessionEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::profiles::{aggregate_uuid, as_stored, Fold};
use crate::rebuild::{RebuildChunk, Stream};
use crate::runtime::{ProjectionError, Projector};

/// Projects `session` events into `rm_sessions`.
pub struct SessionsProjector;

#[async_trait]
impl Projector for SessionsProjector {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == <Session as cqrs_es::Aggregate>::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        let event: SessionEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        match event {
            SessionEvent::SessionStarted {
                session_id,
                user_id,
                started_at,
                idle_expires_at,
                expires_at,
                client,
                ..
            } => {
                let mut row = SessionColumns::default();
                row.push(SessionRow::started(
                    session_id,
                    user_id,
                    started_at,
                    idle_expires_at,
                    expires_at,
                    client.map(|c| c.0),
                ));
                row.insert(conn, true).await?;
            }
            SessionEvent::SessionReauthenticated { reauthenticated_at } => {
                sqlx::query(
                    "UPDATE rm_sessions SET authenticated_at = $2, last_used_at = GREATEST(last_used_at, $2)
                     WHERE session_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(reauthenticated_at)
                .execute(conn)
                .await?;
            }
            SessionEvent::SessionRefreshed { generation, refreshed_at, idle_expires_at, .. } => {
                sqlx::query(
                    "UPDATE rm_sessions SET generation = $2, last_used_at = $3, idle_expires_at = $4
                     WHERE session_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(i64::try_from(generation).unwrap_or(i64::MAX))
                .bind(refreshed_at)
                .bind(idle_expires_at)
                .execute(conn)
                .await?;
            }
            SessionEvent::RefreshTokenReuseDetected { .. } => {}
            SessionEvent::SessionRevoked { reason, revoked_at } => {
                sqlx::query(
                    "UPDATE rm_sessions SET status = 'revoked', revoked_at = $2, revoked_reason = $3
                     WHERE session_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(revoked_at)
                .bind(reason.as_str())
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    /// Runs of consecutive `SessionStarted` envelopes (every sign-in
    /// starts one) are inserted with one `INSERT … SELECT FROM UNNEST …
    /// ON CONFLICT DO NOTHING`, the statement `apply` runs for one row; every
    /// other envelope goes through `apply`, after the run before it, so the
    /// order of the statements' effects is that of the envelopes.
    async fn apply_many(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), ProjectionError> {
        let mut started = SessionColumns::default();
        for env in envelopes {
            if env.event_type == SESSION_STARTED {
                if let SessionEvent::SessionStarted {
                    session_id,
                    user_id,
                    started_at,
                    idle_expires_at,
                    expires_at,
                    client,
                    ..
                } = env.decode().map_err(|e| ProjectionError::decode(env, e))?
                {
                    started.push(SessionRow::started(
                        session_id,
                        user_id,
                        started_at,
                        idle_expires_at,
                        expires_at,
                        client.map(|c| c.0),
                    ));
                    continue;
                }
            }
            started.insert(&mut *conn, true).await?;
            self.apply(&mut *conn, env).await?;
        }
        started.insert(&mut *conn, true).await
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_sessions"]
    }

    /// Set-based: folds each session stream into its final `rm_sessions`
    /// row ([`fold_session`]) and inserts the chunk's rows with one `INSERT
    /// … SELECT FROM UNNEST`. A stream whose row is not keyed by its own
    /// aggregate id goes through [`Projector::apply`] instead.
    async fn rebuild_chunk(
        &self,
        conn: &mut PgConnection,
        chunk: &RebuildChunk,
    ) -> Result<(), ProjectionError> {
        let mut rows = SessionColumns::default();
        let mut per_event = Vec::new();
        for stream in chunk.streams() {
            match fold_session(&stream)? {
                Fold::Row(Some(row)) => rows.push(row),
                Fold::Row(None) => {}
                Fold::PerEvent => per_event.push(stream),
            }
        }
        rows.insert(&mut *conn, false).await?;
        for stream in per_event {
            for event in stream.events {
                self.apply(&mut *conn, &event.to_envelope()?).await?;
            }
        }
        Ok(())
    }
}

/// The `rm_sessions` row one session stream leaves, computed in memory with
/// the same transitions as [`SessionsProjector`]'s `apply` (events before
/// `SessionStarted` change nothing, a second start is ignored, a
/// re-authentication moves `last_used_at` only forward). Timestamps are
/// truncated to Postgres' microseconds first, as binding them would.
///
/// # Errors
/// [`ProjectionError`] where `apply` would fail: an undecodable event, or
/// an aggregate id that is not a UUID on an update.
pub fn fold_session(stream: &Stream<'_>) -> Result<Fold<SessionRow>, ProjectionError> {
    let own_id = Uuid::parse_str(stream.aggregate_id).ok();
    let update_target =
        || own_id.ok_or_else(|| ProjectionError::Other(anyhow::anyhow!("aggregate id is not a UUID")));
    let mut row: Option<SessionRow> = None;
    for event in stream.events {
        match event.decode::<SessionEvent>()? {
            SessionEvent::SessionStarted {
                session_id,
                user_id,
                started_at,
                idle_expires_at,
                expires_at,
                client,
                ..
            } => {
                if own_id != Some(session_id) {
                    return Ok(Fold::PerEvent);
                }
                if row.is_none() {
                    row = Some(SessionRow::started(
                        session_id,
                        user_id,
                        as_stored(started_at)?,
                        as_stored(idle_expires_at)?,
                        as_stored(expires_at)?,
                        client.map(|c| c.0),
                    ));
                }
            }
            SessionEvent::SessionReauthenticated { reauthenticated_at } => {
                update_target()?;
                let at = as_stored(reauthenticated_at)?;
                if let Some(r) = row.as_mut() {
                    r.authenticated_at = Some(at);
                    r.last_used_at = r.last_used_at.max(at);
                }
            }
            SessionEvent::SessionRefreshed { generation, refreshed_at, idle_expires_at, .. } => {
                update_target()?;
                let (refreshed_at, idle_expires_at) = (as_stored(refreshed_at)?, as_stored(idle_expires_at)?);
                if let Some(r) = row.as_mut() {
                    r.generation = i64::try_from(generation).unwrap_or(i64::MAX);
                    r.last_used_at = refreshed_at;
                    r.idle_expires_at = idle_expires_at;
                }
            }
            SessionEvent::RefreshTokenReuseDetected { .. } => {}
            SessionEvent::SessionRevoked { reason, revoked_at } => {
                update_target()?;
                let at = as_stored(revoked_at)?;
                if let Some(r) = row.as_mut() {
                    "revoked".clone_into(&mut r.status);
                    r.revoked_at = Some(at);
                    r.revoked_reason = Some(reason.as_str().to_owned());
                }
            }
        }
    }
    Ok(Fold::Row(row))
}

/// `Envelope::event_type` of [`SessionEvent::SessionStarted`].
const SESSION_STARTED: &str = "SessionStarted";

/// `rm_sessions` rows as column arrays for `UNNEST`.
#[derive(Default)]
struct SessionColumns {
    session_id: Vec<Uuid>,
    user_id: Vec<Uuid>,
    status: Vec<String>,
    generation: Vec<i64>,
    created_at: Vec<DateTime<Utc>>,
    last_used_at: Vec<DateTime<Utc>>,
    idle_expires_at: Vec<DateTime<Utc>>,
    expires_at: Vec<DateTime<Utc>>,
    revoked_at: Vec<Option<DateTime<Utc>>>,
    revoked_reason: Vec<Option<String>>,
    client_sealed: Vec<Option<String>>,
    authenticated_at: Vec<Option<DateTime<Utc>>>,
}

impl SessionColumns {
    /// Inserts the rows with one `INSERT … SELECT FROM UNNEST` and empties
    /// the columns; nothing when they are empty. `live`: `ON CONFLICT
    /// (session_id) DO NOTHING`, as `apply` does for `SessionStarted`;
    /// otherwise (a rebuild chunk, see [`Projector::rebuild_chunk`]) an
    /// existing row fails the statement.
    async fn insert(&mut self, conn: &mut PgConnection, live: bool) -> Result<(), ProjectionError> {
        if self.session_id.is_empty() {
            return Ok(());
        }
        macro_rules! insert {
            () => {
                "INSERT INTO rm_sessions (session_id, user_id, status, generation, created_at, last_used_at,
                                      idle_expires_at, expires_at, revoked_at, revoked_reason,
                                      client_sealed, authenticated_at)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::timestamptz[],
                                  $6::timestamptz[], $7::timestamptz[], $8::timestamptz[],
                                  $9::timestamptz[], $10::text[], $11::text[], $12::timestamptz[])"
            };
        }
        const REBUILD: &str = insert!();
        const LIVE: &str = concat!(insert!(), " ON CONFLICT (session_id) DO NOTHING");
        sqlx::query(if live { LIVE } else { REBUILD })
            .bind(&self.session_id)
            .bind(&self.user_id)
            .bind(&self.status)
            .bind(&self.generation)
            .bind(&self.created_at)
            .bind(&self.last_used_at)
            .bind(&self.idle_expires_at)
            .bind(&self.expires_at)
            .bind(&self.revoked_at)
            .bind(&self.revoked_reason)
            .bind(&self.client_sealed)
            .bind(&self.authenticated_at)
            .execute(conn)
            .await?;
        *self = Self::default();
        Ok(())
    }

    fn push(&mut self, r: SessionRow) {
        self.session_id.push(r.session_id);
        self.user_id.push(r.user_id);
        self.status.push(r.status);
        self.generation.push(r.generation);
        self.created_at.push(r.created_at);
        self.last_used_at.push(r.last_used_at);
        self.idle_expires_at.push(r.idle_expires_at);
        self.expires_at.push(r.expires_at);
        self.revoked_at.push(r.revoked_at);
        self.revoked_reason.push(r.revoked_reason);
        self.client_sealed.push(r.client_sealed);
        self.authenticated_at.push(r.authenticated_at);
    }
}

/// A row of `rm_sessions`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// `active` or `revoked`.
    pub status: String,
    pub generation: i64,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    /// Sealed JSON client description (see `SessionStarted`).
    pub client_sealed: Option<String>,
    pub authenticated_at: Option<DateTime<Utc>>,
}

impl SessionRow {
    /// The row a `SessionStarted` event creates: active, generation 0, last
    /// used and authenticated when started (`apply`, its batched
    /// `apply_many` and [`fold_session`] all build it here).
    fn started(
        session_id: Uuid,
        user_id: Uuid,
        started_at: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        client_sealed: Option<String>,
    ) -> Self {
        Self {
            session_id,
            user_id,
            status: "active".to_owned(),
            generation: 0,
            created_at: started_at,
            last_used_at: started_at,
            idle_expires_at,
            expires_at,
            revoked_at: None,
            revoked_reason: None,
            client_sealed,
            authenticated_at: Some(started_at),
        }
    }
}

/// The session `session_id`, if projected.
///
/// # Errors
/// Database errors.
pub async fn find_session(pool: &PgPool, session_id: Uuid) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as::<_, SessionRow>(
        "SELECT session_id, user_id, status, generation, created_at, last_used_at, idle_expires_at,
                expires_at, revoked_at, revoked_reason, client_sealed, authenticated_at
         FROM rm_sessions WHERE session_id = $1",
    )
    .bind(session_id)
    .fetch_optional(pool)
    .await
}

/// Whether `session_id` is known to be revoked (unknown = not yet projected = not revoked).
///
/// # Errors
/// Database errors.
pub async fn is_revoked(pool: &PgPool, session_id: Uuid) -> Result<bool, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM rm_sessions WHERE session_id = $1")
        .bind(session_id)
        .fetch_optional(pool)
        .await?;
    Ok(status.as_deref() == Some("revoked"))
}

/// The sessions of `user_id`, newest first (active and revoked within the
/// last 30 days), at most 100.
///
/// # Errors
/// Database errors.
pub async fn list_sessions(pool: &PgPool, user_id: Uuid) -> Result<Vec<SessionRow>, sqlx::Error> {
    sqlx::query_as::<_, SessionRow>(
        "SELECT session_id, user_id, status, generation, created_at, last_used_at, idle_expires_at,
                expires_at, revoked_at, revoked_reason, client_sealed, authenticated_at
         FROM rm_sessions
         WHERE user_id = $1 AND (status = 'active' OR revoked_at > now() - interval '30 days')
         ORDER BY created_at DESC LIMIT 100",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await
}
