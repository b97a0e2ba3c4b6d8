//! Set validation (ARCHITECTURE decided 8): unique email / phone / username
//! through a reservation row keyed by the keyed hash of the normalised value,
//! claimed before the command appends and released if it fails.

use domain::values::Digest;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::executor::CoWrite;

/// What is reserved.
#[derive(Debug, Clone, Copy)]
pub enum ReservationKind {
    Email,
    Phone,
    Username,
}

impl ReservationKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Username => "username",
        }
    }
}

/// Result of a claim.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The value is now reserved for the caller's id.
    Claimed,
    /// Already held by this owner.
    Taken { owner: Uuid },
}

/// Claims `hash` for `owner`; atomic under concurrency (unique key).
///
/// # Errors
/// Database errors.
pub async fn claim(
    pool: &PgPool,
    kind: ReservationKind,
    hash: &Digest,
    owner: Uuid,
) -> Result<Claim, sqlx::Error> {
    let key = key_bytes(hash);
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO reservations (kind, key_hash, owner_id) VALUES ($1, $2, $3)
         ON CONFLICT (kind, key_hash) DO NOTHING RETURNING owner_id",
    )
    .bind(kind.as_str())
    .bind(&key)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    if inserted.is_some() {
        return Ok(Claim::Claimed);
    }
    match self::owner(pool, kind, hash).await? {
        Some(holder) => Ok(Claim::Taken { owner: holder }),
        // Released between the two statements: try again.
        None => Box::pin(claim(pool, kind, hash, owner)).await,
    }
}

/// The owner of `hash`, if reserved.
///
/// # Errors
/// Database errors.
pub async fn owner(pool: &PgPool, kind: ReservationKind, hash: &Digest) -> Result<Option<Uuid>, sqlx::Error> {
    let key = key_bytes(hash);
    sqlx::query_scalar("SELECT owner_id FROM reservations WHERE kind = $1 AND key_hash = $2")
        .bind(kind.as_str())
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// Releases `hash` if `owner` holds it.
///
/// # Errors
/// Database errors.
pub async fn release(
    pool: &PgPool,
    kind: ReservationKind,
    hash: &Digest,
    owner: Uuid,
) -> Result<(), sqlx::Error> {
    let key = key_bytes(hash);
    sqlx::query("DELETE FROM reservations WHERE kind = $1 AND key_hash = $2 AND owner_id = $3")
        .bind(kind.as_str())
        .bind(key)
        .bind(owner)
        .execute(pool)
        .await?;
    Ok(())
}

/// Releases every reservation of `kind` held by `owner` except `keep`,
/// written by the same statement as the event that frees them (a `WITH`
/// query of the append, [`CoWrite`]): a replaced or removed phone stops
/// being a login route exactly when the event commits.
pub struct ReleaseHeld {
    kind: ReservationKind,
    owner: Uuid,
    keep: Option<Vec<u8>>,
}

impl ReleaseHeld {
    /// `owner`'s reservations of `kind`, all but `keep`.
    pub fn new(kind: ReservationKind, owner: Uuid, keep: Option<&Digest>) -> Self {
        Self { kind, owner, keep: keep.map(key_bytes) }
    }
}

impl CoWrite for ReleaseHeld {
    fn push_cte<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>) {
        query.push("released AS (DELETE FROM reservations WHERE kind = ");
        query.push_bind(self.kind.as_str());
        query.push(" AND owner_id = ");
        query.push_bind(self.owner);
        query.push(" AND key_hash IS DISTINCT FROM ");
        query.push_bind(self.keep.as_deref());
        query.push(")");
    }
}

fn key_bytes(hash: &Digest) -> Vec<u8> {
    hex::decode(&hash.0).unwrap_or_else(|_| hash.0.as_bytes().to_vec())
}
