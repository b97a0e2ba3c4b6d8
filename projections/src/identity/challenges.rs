//! The `challenges` read model (`rm_challenges`): one row per one-time-code
//! challenge, built from `otp_challenge` events, so a client can see whether
//! its code was delivered (`GET /api/auth/challenges/{id}`). It holds no
//! recipient, no subject and no code: only purpose, channel, status, the
//! delivery outcome (with its secret-free reason) and the expiry.
//!
//! Its duplicate guard is in its own rows ([`Checkpoints::InReadModel`]):
//! `sequence` is the last event of the challenge applied, and every write
//! is conditional on a newer one. One challenge is made per login, so a
//! `projection_checkpoints` row per challenge cost two statements per
//! projector transaction and a row per login kept for good (issue 14).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::otp::{OtpChallenge, OtpEvent};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::profiles::aggregate_uuid;
use crate::runtime::{apply_one_by_one, Checkpoints, ProjectionError, Projector};

/// Projects `otp_challenge` events into `rm_challenges`.
pub struct ChallengesProjector;

#[async_trait]
impl Projector for ChallengesProjector {
    fn name(&self) -> &'static str {
        "challenges"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == <OtpChallenge as cqrs_es::Aggregate>::TYPE
    }

    /// In the rows: `rm_challenges.sequence` (see the module docs).
    fn checkpoints(&self) -> Checkpoints {
        Checkpoints::InReadModel
    }

    /// The event is above its challenge's row (or the row is missing).
    /// The row is found by its key as a `uuid` (the primary key's index;
    /// `challenge_id::text` would read the whole table for every event a
    /// nested loop brings), the cast guarded by the event's type, since the
    /// condition may be evaluated on rows of other streams.
    fn unapplied_condition(&self) -> Option<&'static str> {
        Some(
            "NOT EXISTS (SELECT 1 FROM rm_challenges r \
             WHERE r.challenge_id = CASE WHEN e.aggregate_type = 'otp_challenge' \
                                         THEN e.aggregate_id::uuid END \
               AND r.sequence >= e.sequence)",
        )
    }

    /// Whether the challenge's row has reached event `sequence` (every
    /// event moves it, `OtpVerificationFailed` too).
    async fn has_applied(
        &self,
        pool: &PgPool,
        _aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<bool, sqlx::Error> {
        let Ok(id) = Uuid::parse_str(aggregate_id) else { return Ok(false) };
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT sequence FROM rm_challenges WHERE challenge_id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
        Ok(applied.is_some_and(|s| s >= sequence))
    }

    /// One event; a no-op when the row has already reached its sequence
    /// (a duplicate or a redelivery).
    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        let event: OtpEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        let at = env.occurred_at;
        match event {
            OtpEvent::OtpIssued { challenge_id, purpose, channel, expires_at, .. } => {
                let purpose = serde_json::to_value(purpose).map_err(|e| ProjectionError::decode(env, e))?;
                sqlx::query(
                    "INSERT INTO rm_challenges
                         (challenge_id, purpose, channel, status, delivery, expires_at, updated_at, sequence)
                     VALUES ($1, $2, $3, 'pending', 'pending', $4, $5, $6)
                     ON CONFLICT (challenge_id) DO NOTHING",
                )
                .bind(challenge_id)
                .bind(purpose.as_str().unwrap_or_default())
                .bind(channel.as_str())
                .bind(expires_at)
                .bind(at)
                .bind(env.sequence)
                .execute(conn)
                .await?;
            }
            OtpEvent::OtpReissued { expires_at, .. } => {
                sqlx::query(
                    "UPDATE rm_challenges SET delivery = 'pending', delivery_error = NULL,
                            expires_at = $2, updated_at = $3, sequence = $4
                     WHERE challenge_id = $1 AND sequence < $4",
                )
                .bind(aggregate_uuid(env)?)
                .bind(expires_at)
                .bind(at)
                .bind(env.sequence)
                .execute(conn)
                .await?;
            }
            OtpEvent::OtpVerified { .. } => set_status(conn, env, "verified").await?,
            OtpEvent::OtpChallengeLocked { .. } => set_status(conn, env, "locked").await?,
            OtpEvent::OtpDelivered { .. } => set_delivery(conn, env, "delivered", None).await?,
            OtpEvent::OtpDeliveryFailed { reason, .. } => {
                set_delivery(conn, env, "failed", Some(&reason)).await?;
            }
            // Changes nothing the row shows, but moves its sequence, as a
            // rebuild leaves it (and `has_applied` then answers for it).
            OtpEvent::OtpVerificationFailed { .. } => {
                sqlx::query(
                    "UPDATE rm_challenges SET sequence = $2 WHERE challenge_id = $1 AND sequence < $2",
                )
                .bind(aggregate_uuid(env)?)
                .bind(env.sequence)
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    /// Set-based: every `OtpIssued` of the batch in one `INSERT`, then
    /// every later change in one `UPDATE` — two statements per batch
    /// instead of one per event, each row written only by an event newer
    /// than its `sequence`. Exactly what [`Projector::apply`] leaves:
    /// `OtpIssued` is a challenge's first event (sequence 1; otherwise the
    /// batch goes one by one), so inserting first keeps each challenge's
    /// order; the changes go together only when no challenge has two of
    /// them in the batch (else one by one, in feed order).
    async fn apply_many(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), ProjectionError> {
        let Some(Batch { issued, changes, changed }) = Batch::of(envelopes)? else {
            return apply_one_by_one(self, conn, envelopes).await;
        };
        if !issued.ids.is_empty() {
            let mut q = QueryBuilder::new("");
            issued.push_insert(&mut q, "");
            q.build().execute(&mut *conn).await?;
        }
        if changes.twice() {
            // A challenge changed twice in the batch: in feed order.
            return apply_one_by_one(self, conn, &changed).await;
        }
        if !changes.ids.is_empty() {
            let mut q = QueryBuilder::new("");
            changes.push_update(&mut q, "");
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// The batch as one statement (the `INSERT` and the `UPDATE` of
    /// [`Projector::apply_many`] as two CTEs) when no challenge is both
    /// issued and changed in it, nor changed twice: the `UPDATE` would not
    /// see the `INSERT`'s rows. Under a login load that is every batch but
    /// a few: the notifier's `OtpDelivered` comes one notifier read (≥ 100
    /// ms) after its `OtpIssued`, the projector reads every 25 ms.
    fn push_one_statement(
        &self,
        q: &mut QueryBuilder<'static, Postgres>,
        envelopes: &[&Envelope],
    ) -> Result<bool, ProjectionError> {
        let Some(Batch { issued, changes, .. }) = Batch::of(envelopes)? else { return Ok(false) };
        let new: std::collections::HashSet<&Uuid> = issued.ids.iter().collect();
        if changes.twice() || changes.ids.iter().any(|id| new.contains(id)) {
            return Ok(false);
        }
        let locked = ", write_lock WHERE write_lock.locked";
        if !issued.ids.is_empty() {
            q.push(", issued AS (");
            issued.push_insert(q, locked);
            q.push(")");
        }
        if !changes.ids.is_empty() {
            q.push(", changed AS (");
            changes.push_update(q, locked);
            q.push(")");
        }
        Ok(true)
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_challenges"]
    }
}

/// A live batch in columns: the issued challenges, the later changes and
/// the envelopes of those changes.
struct Batch<'e> {
    issued: IssuedRows,
    changes: ChangeRows,
    changed: Vec<&'e Envelope>,
}

impl<'e> Batch<'e> {
    /// `None` when an `OtpIssued` is not its stream's first event (the
    /// batch then goes one by one).
    fn of(envelopes: &[&'e Envelope]) -> Result<Option<Self>, ProjectionError> {
        let mut batch =
            Batch { issued: IssuedRows::default(), changes: ChangeRows::default(), changed: Vec::new() };
        for env in envelopes {
            let event: OtpEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
            let at = env.occurred_at;
            let change = match event {
                OtpEvent::OtpIssued { .. } if env.sequence != 1 => return Ok(None),
                OtpEvent::OtpIssued { challenge_id, purpose, channel, expires_at, .. } => {
                    let purpose =
                        serde_json::to_value(purpose).map_err(|e| ProjectionError::decode(env, e))?;
                    let issued = &mut batch.issued;
                    issued.ids.push(challenge_id);
                    issued.purposes.push(purpose.as_str().unwrap_or_default().to_owned());
                    issued.channels.push(channel.as_str().to_owned());
                    issued.expires.push(expires_at);
                    issued.at.push(at);
                    issued.sequences.push(env.sequence);
                    continue;
                }
                OtpEvent::OtpReissued { expires_at, .. } => Change {
                    delivery: Some("pending"),
                    expires: Some(expires_at),
                    at: Some(at),
                    ..Change::default()
                },
                OtpEvent::OtpVerified { .. } => {
                    Change { status: Some("verified"), at: Some(at), ..Change::default() }
                }
                OtpEvent::OtpChallengeLocked { .. } => {
                    Change { status: Some("locked"), at: Some(at), ..Change::default() }
                }
                OtpEvent::OtpDelivered { .. } => {
                    Change { delivery: Some("delivered"), at: Some(at), ..Change::default() }
                }
                OtpEvent::OtpDeliveryFailed { reason, .. } => Change {
                    delivery: Some("failed"),
                    error: Some(reason),
                    at: Some(at),
                    ..Change::default()
                },
                // Only the sequence moves (as in `apply`).
                OtpEvent::OtpVerificationFailed { .. } => Change::default(),
            };
            batch.changes.push(aggregate_uuid(env)?, env.sequence, change);
            batch.changed.push(*env);
        }
        Ok(Some(batch))
    }
}

/// The `OtpIssued` rows of a batch, column by column.
#[derive(Default)]
struct IssuedRows {
    ids: Vec<Uuid>,
    purposes: Vec<String>,
    channels: Vec<String>,
    expires: Vec<DateTime<Utc>>,
    at: Vec<DateTime<Utc>>,
    sequences: Vec<i64>,
}

impl IssuedRows {
    /// Pushes the `INSERT` of these rows (an existing row is left alone);
    /// `join` is appended to its `FROM` (the one-statement path's lock).
    fn push_insert(self, q: &mut QueryBuilder<'static, Postgres>, join: &str) {
        q.push(
            "INSERT INTO rm_challenges \
             (challenge_id, purpose, channel, status, delivery, expires_at, updated_at, sequence) \
             SELECT u.id, u.purpose, u.channel, 'pending', 'pending', u.expires_at, u.at, u.seq FROM UNNEST(",
        );
        q.push_bind(self.ids).push("::uuid[], ");
        q.push_bind(self.purposes).push("::text[], ");
        q.push_bind(self.channels).push("::text[], ");
        q.push_bind(self.expires).push("::timestamptz[], ");
        q.push_bind(self.at).push("::timestamptz[], ");
        q.push_bind(self.sequences).push("::int8[]) AS u(id, purpose, channel, expires_at, at, seq)");
        q.push(join);
        q.push(" ON CONFLICT (challenge_id) DO NOTHING");
    }
}

/// The later changes of a batch, column by column (`None`: unchanged).
#[derive(Default)]
struct ChangeRows {
    ids: Vec<Uuid>,
    statuses: Vec<Option<&'static str>>,
    deliveries: Vec<Option<&'static str>>,
    errors: Vec<Option<String>>,
    expires: Vec<Option<DateTime<Utc>>>,
    at: Vec<Option<DateTime<Utc>>>,
    sequences: Vec<i64>,
}

/// One later change of a challenge (`None`: unchanged).
#[derive(Default)]
struct Change {
    status: Option<&'static str>,
    delivery: Option<&'static str>,
    error: Option<String>,
    expires: Option<DateTime<Utc>>,
    /// The event's time, `updated_at` (`None`: the row's stays).
    at: Option<DateTime<Utc>>,
}

impl ChangeRows {
    fn push(&mut self, id: Uuid, sequence: i64, change: Change) {
        self.ids.push(id);
        self.statuses.push(change.status);
        self.deliveries.push(change.delivery);
        self.errors.push(change.error);
        self.expires.push(change.expires);
        self.at.push(change.at);
        self.sequences.push(sequence);
    }

    /// Whether some challenge has two changes.
    fn twice(&self) -> bool {
        let mut seen = std::collections::HashSet::with_capacity(self.ids.len());
        !self.ids.iter().all(|id| seen.insert(id))
    }

    /// Pushes the `UPDATE` of these changes, each only onto a row that has
    /// not reached its sequence (at most one change per challenge: the
    /// caller checks, [`ChangeRows::twice`]); `join` is appended to its
    /// `FROM`.
    fn push_update(self, q: &mut QueryBuilder<'static, Postgres>, join: &str) {
        q.push(
            "UPDATE rm_challenges c SET \
             status = COALESCE(u.status, c.status), \
             delivery = COALESCE(u.delivery, c.delivery), \
             delivery_error = CASE WHEN u.delivery IS NULL THEN c.delivery_error ELSE u.delivery_error END, \
             expires_at = COALESCE(u.expires_at, c.expires_at), \
             updated_at = COALESCE(u.at, c.updated_at), \
             sequence = u.seq \
             FROM UNNEST(",
        );
        q.push_bind(self.ids).push("::uuid[], ");
        q.push_bind(self.statuses).push("::text[], ");
        q.push_bind(self.deliveries).push("::text[], ");
        q.push_bind(self.errors).push("::text[], ");
        q.push_bind(self.expires).push("::timestamptz[], ");
        q.push_bind(self.at).push("::timestamptz[], ");
        q.push_bind(self.sequences)
            .push("::int8[]) AS u(id, status, delivery, delivery_error, expires_at, at, seq)");
        q.push(join);
        q.push(if join.is_empty() { " WHERE " } else { " AND " });
        q.push("c.challenge_id = u.id AND c.sequence < u.seq");
    }
}

async fn set_status(conn: &mut PgConnection, env: &Envelope, status: &str) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE rm_challenges SET status = $2, updated_at = $3, sequence = $4 \
         WHERE challenge_id = $1 AND sequence < $4",
    )
    .bind(aggregate_uuid(env)?)
    .bind(status)
    .bind(env.occurred_at)
    .bind(env.sequence)
    .execute(conn)
    .await?;
    Ok(())
}

async fn set_delivery(
    conn: &mut PgConnection,
    env: &Envelope,
    delivery: &str,
    error: Option<&str>,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE rm_challenges SET delivery = $2, delivery_error = $3, updated_at = $4, sequence = $5 \
         WHERE challenge_id = $1 AND sequence < $5",
    )
    .bind(aggregate_uuid(env)?)
    .bind(delivery)
    .bind(error)
    .bind(env.occurred_at)
    .bind(env.sequence)
    .execute(conn)
    .await?;
    Ok(())
}

/// A row of `rm_challenges`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChallengeRow {
    /// The challenge (aggregate) id.
    pub challenge_id: Uuid,
    /// `email_verification`, `phone_verification`, `two_factor`, `login` or
    /// `password_reset`.
    pub purpose: String,
    /// `email` or `sms`.
    pub channel: String,
    /// `pending`, `verified` or `locked`.
    pub status: String,
    /// `pending`, `delivered` or `failed`.
    pub delivery: String,
    /// Secret-free reason of a failed delivery (e.g. `twilio: 400 code 21211`).
    pub delivery_error: Option<String>,
    /// When the current code stops working.
    pub expires_at: DateTime<Utc>,
    /// Time of the last event applied (its append time).
    pub updated_at: DateTime<Utc>,
}

/// The challenge `challenge_id`, if projected.
///
/// # Errors
/// Database errors.
pub async fn find_challenge(pool: &PgPool, challenge_id: Uuid) -> Result<Option<ChallengeRow>, sqlx::Error> {
    sqlx::query_as::<_, ChallengeRow>(
        "SELECT challenge_id, purpose, channel, status, delivery, delivery_error, expires_at, updated_at
         FROM rm_challenges WHERE challenge_id = $1",
    )
    .bind(challenge_id)
    .fetch_optional(pool)
    .await
}
