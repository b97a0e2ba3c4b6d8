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
    /// A track's slug, unique per owner (key: owner id and slug).
    TrackSlug,
}

impl ReservationKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Username => "username",
            Self::TrackSlug => "track_slug",
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

/// Claims `hash` for `owner`; atomic under concurrency (unique key). A
/// reservation on hold (a username given up less than 30 days ago,
/// [`HoldPrevious`]) is taken over in the same statement once its hold has
/// passed, or at once by its former owner.
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
         ON CONFLICT (kind, key_hash) DO UPDATE
             SET owner_id = EXCLUDED.owner_id, held_until = NULL, claimed_at = now()
             WHERE reservations.held_until IS NOT NULL
               AND (reservations.held_until < now() OR reservations.owner_id = EXCLUDED.owner_id)
         RETURNING owner_id",
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

/// Pushes `kind = $n AND key_hash = $m`, the condition that finds the
/// reservation of `hash` in `reservations`, for a larger statement (a
/// password login's one read, `IdentityService::start_login`).
pub(crate) fn push_key_condition(
    q: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>,
    kind: ReservationKind,
    hash: &Digest,
) {
    q.push("kind = ");
    q.push_bind(kind.as_str());
    q.push(" AND key_hash = ");
    q.push_bind(key_bytes(hash));
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

/// Puts `owner`'s other reservations of `kind` on hold for `days` days,
/// written by the same statement as the event that gives them up (a
/// username change): until then nobody else can claim them, so links to an
/// old handle do not move to someone else at once (issue 15: 30 days).
pub struct HoldPrevious {
    kind: ReservationKind,
    owner: Uuid,
    keep: Vec<u8>,
    days: i32,
}

impl HoldPrevious {
    /// `owner`'s reservations of `kind` other than `keep`, held `days` days.
    pub fn new(kind: ReservationKind, owner: Uuid, keep: &Digest, days: i32) -> Self {
        Self { kind, owner, keep: key_bytes(keep), days }
    }
}

impl CoWrite for HoldPrevious {
    fn push_cte<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>) {
        query.push("held AS (UPDATE reservations SET held_until = now() + make_interval(days => ");
        query.push_bind(self.days);
        query.push(") WHERE kind = ");
        query.push_bind(self.kind.as_str());
        query.push(" AND owner_id = ");
        query.push_bind(self.owner);
        query.push(" AND key_hash <> ");
        query.push_bind(self.keep.as_slice());
        query.push(" AND held_until IS NULL)");
    }
}

fn key_bytes(hash: &Digest) -> Vec<u8> {
    hex::decode(&hash.0).unwrap_or_else(|_| hash.0.as_bytes().to_vec())
}
