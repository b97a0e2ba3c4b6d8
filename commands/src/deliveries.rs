//! Sealed delivery records (ARCHITECTURE decided 6). The message to send —
//! recipient and, for OTPs, the code — is sealed with the delivery key and
//! stored in `deliveries` under an id the event names (the challenge id for
//! `OtpIssued`, the notice id for notices). The notifier opens it, sends, and
//! deletes the row, so the code exists only until it is delivered and never
//! in an event, topic, read model or log.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::executor::CoWrite;
use crate::keys::Secret32;
use crate::vault::{open_bytes, seal_bytes};

/// What to send. `Debug` hides the recipient and the code.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    /// `email` or `sms`.
    pub channel: String,
    /// Email address or E.164 phone number.
    pub to: String,
    /// Template name: `otp_email_verification`, `otp_two_factor`,
    /// `duplicate_registration`, …
    pub template: String,
    /// The one-time code, for OTP templates.
    pub code: Option<String>,
    /// When the code stops working (shown in the message).
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("channel", &self.channel)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

/// The deletion of a sent delivery record, written as the `sent` `WITH`
/// query of the append that records the outcome
/// ([`Executor::execute_with`](crate::executor::Executor::execute_with)):
/// the record goes and the outcome is recorded in one statement, so a
/// redelivered event finds nothing to send and no sent record outlives its
/// outcome event.
pub struct SentDelivery(pub Uuid);

impl CoWrite for SentDelivery {
    fn push_cte<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>) {
        query.push("sent AS (DELETE FROM deliveries WHERE delivery_id = ");
        query.push_bind(self.0);
        query.push(")");
    }
}

/// The deletion of several sent delivery records, written as the `sent`
/// `WITH` query of the one append that records all their outcomes (the
/// notifier's batch: [`SentDelivery`] for many records at once).
pub struct SentDeliveries(pub Vec<Uuid>);

impl CoWrite for SentDeliveries {
    fn push_cte<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>) {
        query.push("sent AS (DELETE FROM deliveries WHERE delivery_id = ANY(");
        query.push_bind(&self.0);
        query.push("))");
    }
}

/// Delivery-record failures.
/// A delivery record sealed and ready to insert (see [`DeliveryStore::seal`]);
/// written as the `delivery` `WITH` query of an append.
pub struct SealedDelivery {
    id: Uuid,
    sealed: Vec<u8>,
    expires_at: DateTime<Utc>,
}

impl SealedDelivery {
    /// The record's id (the `delivery_id` the event names).
    pub fn id(&self) -> Uuid {
        self.id
    }
}

impl CoWrite for SealedDelivery {
    fn push_cte<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>) {
        query.push("delivery AS (INSERT INTO deliveries (delivery_id, sealed, expires_at) VALUES (");
        query.push_bind(self.id);
        query.push(", ");
        query.push_bind(self.sealed.as_slice());
        query.push(", ");
        query.push_bind(self.expires_at);
        query.push("))");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the record could not be opened")]
    Corrupt,
    #[error("the record could not be sealed")]
    Seal,
}

/// Stores and retrieves sealed delivery records.
#[derive(Clone)]
pub struct DeliveryStore {
    pool: PgPool,
    key: Secret32,
}

impl DeliveryStore {
    pub fn new(pool: PgPool, key: Secret32) -> Self {
        Self { pool, key }
    }

    /// Seals and stores `delivery` under `id`, kept until `expires_at` at most.
    ///
    /// # Errors
    /// [`DeliveryError::Db`].
    pub async fn put(
        &self,
        id: Uuid,
        delivery: &Delivery,
        expires_at: DateTime<Utc>,
    ) -> Result<(), DeliveryError> {
        let row = self.seal(id, delivery, expires_at)?;
        sqlx::query("INSERT INTO deliveries (delivery_id, sealed, expires_at) VALUES ($1, $2, $3)")
            .bind(row.id)
            .bind(&row.sealed)
            .bind(row.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record `id` sealed, to be inserted by the statement that appends the
    /// event announcing it ([`crate::executor::Executor::execute_new_with`]):
    /// the record exists if and only if the event does.
    ///
    /// # Errors
    /// [`DeliveryError::Corrupt`] if the record does not serialise.
    pub fn seal(
        &self,
        id: Uuid,
        delivery: &Delivery,
        expires_at: DateTime<Utc>,
    ) -> Result<SealedDelivery, DeliveryError> {
        let json = serde_json::to_vec(delivery).map_err(|_| DeliveryError::Corrupt)?;
        let sealed = seal_bytes(&self.key, id.as_bytes(), &json).map_err(|_| DeliveryError::Seal)?;
        Ok(SealedDelivery { id, sealed, expires_at })
    }

    /// The record under `id`, if still there (it is gone once sent).
    ///
    /// # Errors
    /// [`DeliveryError`].
    pub async fn get(&self, id: Uuid) -> Result<Option<Delivery>, DeliveryError> {
        let row: Option<Vec<u8>> = sqlx::query_scalar("SELECT sealed FROM deliveries WHERE delivery_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(sealed) = row else { return Ok(None) };
        self.open(id, &sealed).map(Some)
    }

    /// Opens record `id`'s sealed bytes as read by the caller (e.g. with
    /// the claim that reserved it).
    ///
    /// # Errors
    /// [`DeliveryError::Corrupt`] when they do not open with the key or
    /// are not a delivery.
    pub fn open(&self, id: Uuid, sealed: &[u8]) -> Result<Delivery, DeliveryError> {
        let plain = open_bytes(&self.key, id.as_bytes(), sealed).ok_or(DeliveryError::Corrupt)?;
        serde_json::from_slice(&plain).map_err(|_| DeliveryError::Corrupt)
    }

    /// Deletes the record (after a successful send, or when its command failed).
    ///
    /// # Errors
    /// [`DeliveryError::Db`].
    pub async fn delete(&self, id: Uuid) -> Result<(), DeliveryError> {
        sqlx::query("DELETE FROM deliveries WHERE delivery_id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Deletes the records `ids` with one statement (absent ones are
    /// skipped).
    ///
    /// # Errors
    /// [`DeliveryError::Db`].
    pub async fn delete_many(&self, ids: &[Uuid]) -> Result<(), DeliveryError> {
        sqlx::query("DELETE FROM deliveries WHERE delivery_id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes records past their expiry (orphans of failed commands, codes
    /// no longer worth sending). Returns how many were removed.
    ///
    /// # Errors
    /// [`DeliveryError::Db`].
    pub async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, DeliveryError> {
        let r =
            sqlx::query("DELETE FROM deliveries WHERE expires_at < $1").bind(now).execute(&self.pool).await?;
        Ok(r.rows_affected())
    }
}
