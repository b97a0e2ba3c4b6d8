//! The `profiles` read model (`rm_profiles`): one row per user, built from
//! `user` events. Personal fields stay sealed with the subject key; the api
//! opens them on read (so erasure shreds this table too).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::user::{User, UserEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::rebuild::{RebuildChunk, Stream};
use crate::runtime::{ProjectionError, Projector};

/// Projects `user` events into `rm_profiles`.
pub struct ProfilesProjector;

/// The user events that change no profile (the empty arm of `apply` and
/// of [`fold_profile`]); the live runner passes them over.
const IGNORED: &[&str] = &[
    "DuplicateRegistrationAttempted",
    "EmailChallengeReplaced",
    "RefreshTokenReuseNoticed",
    "PasswordReset",
    "PasswordResetRequested",
    "LoginPasswordAccepted",
    "PhoneClaimAttempted",
    "LegalNameSet",
    "AllSessionsRevoked",
];

#[async_trait]
impl Projector for ProfilesProjector {
    fn name(&self) -> &'static str {
        "profiles"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == <User as cqrs_es::Aggregate>::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        let event: UserEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        match event {
            UserEvent::UserRegistered { user_id, email, name, registered_at, .. } => {
                sqlx::query(
                    "INSERT INTO rm_profiles (user_id, email_sealed, name_sealed, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $4)
                     ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user_id)
                .bind(email.0)
                .bind(name.0)
                .bind(registered_at)
                .execute(conn)
                .await?;
            }
            UserEvent::EmailVerified { verified_at, .. } => {
                sqlx::query(
                    "UPDATE rm_profiles SET email_verified = true, updated_at = $2 WHERE user_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(verified_at)
                .execute(conn)
                .await?;
            }
            UserEvent::ProfileUpdated { name, bio, updated_at } => {
                sqlx::query(
                    "UPDATE rm_profiles SET name_sealed = COALESCE($2, name_sealed),
                            bio_sealed = COALESCE($3, bio_sealed), updated_at = $4
                     WHERE user_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(name.map(|s| s.0))
                .bind(bio.map(|s| s.0))
                .bind(updated_at)
                .execute(conn)
                .await?;
            }
            UserEvent::UserRegisteredWithPhone { user_id, phone, registered_at, .. } => {
                sqlx::query(
                    "INSERT INTO rm_profiles (user_id, phone_sealed, phone_verified, two_factor_channel,
                                              created_at, updated_at)
                     VALUES ($1, $2, true, 'sms', $3, $3)
                     ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user_id)
                .bind(phone.0)
                .bind(registered_at)
                .execute(conn)
                .await?;
            }
            // A pending number is shown only while no verified one is there
            // (the verified phone stays the account's until replaced).
            UserEvent::PhoneAdded { phone, added_at, .. } => {
                sqlx::query(
                    "UPDATE rm_profiles SET phone_sealed = $2, updated_at = $3
                     WHERE user_id = $1 AND NOT phone_verified",
                )
                .bind(aggregate_uuid(env)?)
                .bind(phone.0)
                .bind(added_at)
                .execute(conn)
                .await?;
            }
            UserEvent::PhoneVerified { verified_at, phone, .. } => {
                sqlx::query(
                    "UPDATE rm_profiles SET phone_sealed = COALESCE($3, phone_sealed), phone_verified = true,
                            updated_at = $2
                     WHERE user_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(verified_at)
                .bind(phone.map(|p| p.0))
                .execute(conn)
                .await?;
            }
            // The account is gone: so is its row.
            UserEvent::RegistrationExpired { .. } => {
                sqlx::query("DELETE FROM rm_profiles WHERE user_id = $1")
                    .bind(aggregate_uuid(env)?)
                    .execute(conn)
                    .await?;
            }
            UserEvent::PhoneRemoved { removed_at, .. } => {
                sqlx::query(
                    "UPDATE rm_profiles SET phone_sealed = NULL, phone_verified = false,
                            two_factor_channel = CASE WHEN two_factor_channel = 'sms' THEN 'email'
                                                      ELSE two_factor_channel END,
                            updated_at = $2
                     WHERE user_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(removed_at)
                .execute(conn)
                .await?;
            }
            UserEvent::TwoFactorChannelChanged { channel, changed_at } => {
                sqlx::query(
                    "UPDATE rm_profiles SET two_factor_channel = $2, updated_at = $3 WHERE user_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(channel.as_str())
                .bind(changed_at)
                .execute(conn)
                .await?;
            }
            UserEvent::UsernameChanged { username, changed_at, .. } => {
                sqlx::query("UPDATE rm_profiles SET username = $2, updated_at = $3 WHERE user_id = $1")
                    .bind(aggregate_uuid(env)?)
                    .bind(username.as_str())
                    .bind(changed_at)
                    .execute(conn)
                    .await?;
            }
            UserEvent::DuplicateRegistrationAttempted { .. }
            | UserEvent::EmailChallengeReplaced { .. }
            | UserEvent::RefreshTokenReuseNoticed { .. }
            | UserEvent::PasswordReset { .. }
            | UserEvent::PasswordResetRequested { .. }
            | UserEvent::LoginPasswordAccepted { .. }
            | UserEvent::PhoneClaimAttempted { .. }
            | UserEvent::LegalNameSet { .. }
            | UserEvent::AllSessionsRevoked { .. } => {}
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_profiles"]
    }

    /// The user events `apply` leaves alone (the empty arm above).
    fn ignored_event_types(&self) -> &'static [&'static str] {
        IGNORED
    }

    /// Set-based: folds each user stream into its final `rm_profiles` row
    /// ([`fold_profile`]) and inserts the chunk's rows with one `INSERT …
    /// SELECT FROM UNNEST`. A stream whose row is not keyed by its own
    /// aggregate id (a registration carrying another `user_id`, or an id
    /// that is not a UUID) goes through [`Projector::apply`] instead.
    async fn rebuild_chunk(
        &self,
        conn: &mut PgConnection,
        chunk: &RebuildChunk,
    ) -> Result<(), ProjectionError> {
        let mut rows = ProfileColumns::default();
        let mut per_event = Vec::new();
        for stream in chunk.streams() {
            match fold_profile(&stream)? {
                Fold::Row(Some(row)) => rows.push(row),
                Fold::Row(None) => {}
                Fold::PerEvent => per_event.push(stream),
            }
        }
        if !rows.user_id.is_empty() {
            sqlx::query(
                "INSERT INTO rm_profiles (user_id, email_sealed, name_sealed, bio_sealed, email_verified,
                                          phone_sealed, phone_verified, two_factor_channel, created_at, updated_at,
                                          username)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[],
                                      $6::text[], $7::bool[], $8::text[], $9::timestamptz[], $10::timestamptz[],
                                      $11::text[])",
            )
            .bind(&rows.user_id)
            .bind(&rows.email_sealed)
            .bind(&rows.name_sealed)
            .bind(&rows.bio_sealed)
            .bind(&rows.email_verified)
            .bind(&rows.phone_sealed)
            .bind(&rows.phone_verified)
            .bind(&rows.two_factor_channel)
            .bind(&rows.created_at)
            .bind(&rows.updated_at)
            .bind(&rows.username)
            .execute(&mut *conn)
            .await?;
        }
        for stream in per_event {
            for event in stream.events {
                self.apply(&mut *conn, &event.to_envelope()?).await?;
            }
        }
        Ok(())
    }
}

/// What folding one stream gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Fold<R> {
    /// The stream's final row (`None`: the events leave no row).
    Row(Option<R>),
    /// The stream cannot be folded on its own; apply its events one by one.
    PerEvent,
}

/// The `rm_profiles` row one user stream leaves, computed in memory with the
/// same transitions as [`ProfilesProjector`]'s `apply` (an update before the
/// registration changes nothing, a second registration is ignored,
/// `ProfileUpdated` keeps the fields it does not carry). Timestamps are
/// truncated to Postgres' microseconds first, as binding them would.
///
/// # Errors
/// [`ProjectionError`] where `apply` would fail: an undecodable event, or
/// an aggregate id that is not a UUID on an update.
pub fn fold_profile(stream: &Stream<'_>) -> Result<Fold<ProfileRow>, ProjectionError> {
    let own_id = Uuid::parse_str(stream.aggregate_id).ok();
    let mut row: Option<ProfileRow> = None;
    for event in stream.events {
        let decoded: UserEvent = event.decode()?;
        // The updates address the row by the aggregate id.
        let update_target =
            || own_id.ok_or_else(|| ProjectionError::Other(anyhow::anyhow!("aggregate id is not a UUID")));
        match decoded {
            UserEvent::UserRegistered { user_id, email, name, registered_at, .. } => {
                if own_id != Some(user_id) {
                    return Ok(Fold::PerEvent);
                }
                if row.is_none() {
                    let at = as_stored(registered_at)?;
                    row = Some(ProfileRow {
                        user_id,
                        email_sealed: Some(email.0),
                        name_sealed: Some(name.0),
                        bio_sealed: None,
                        email_verified: false,
                        phone_sealed: None,
                        phone_verified: false,
                        two_factor_channel: "email".to_owned(),
                        username: None,
                        created_at: at,
                        updated_at: at,
                    });
                }
            }
            UserEvent::UserRegisteredWithPhone { user_id, phone, registered_at, .. } => {
                if own_id != Some(user_id) {
                    return Ok(Fold::PerEvent);
                }
                if row.is_none() {
                    let at = as_stored(registered_at)?;
                    row = Some(ProfileRow {
                        user_id,
                        email_sealed: None,
                        name_sealed: None,
                        bio_sealed: None,
                        email_verified: false,
                        phone_sealed: Some(phone.0),
                        phone_verified: true,
                        two_factor_channel: "sms".to_owned(),
                        username: None,
                        created_at: at,
                        updated_at: at,
                    });
                }
            }
            UserEvent::EmailVerified { verified_at, .. } => {
                update_target()?;
                let at = as_stored(verified_at)?;
                if let Some(r) = row.as_mut() {
                    r.email_verified = true;
                    r.updated_at = at;
                }
            }
            UserEvent::ProfileUpdated { name, bio, updated_at } => {
                update_target()?;
                let at = as_stored(updated_at)?;
                if let Some(r) = row.as_mut() {
                    if let Some(name) = name {
                        r.name_sealed = Some(name.0);
                    }
                    if let Some(bio) = bio {
                        r.bio_sealed = Some(bio.0);
                    }
                    r.updated_at = at;
                }
            }
            UserEvent::PhoneAdded { phone, added_at, .. } => {
                update_target()?;
                let at = as_stored(added_at)?;
                if let Some(r) = row.as_mut().filter(|r| !r.phone_verified) {
                    r.phone_sealed = Some(phone.0);
                    r.updated_at = at;
                }
            }
            UserEvent::PhoneVerified { verified_at, phone, .. } => {
                update_target()?;
                let at = as_stored(verified_at)?;
                if let Some(r) = row.as_mut() {
                    if let Some(phone) = phone {
                        r.phone_sealed = Some(phone.0);
                    }
                    r.phone_verified = true;
                    r.updated_at = at;
                }
            }
            UserEvent::RegistrationExpired { .. } => {
                update_target()?;
                row = None;
            }
            UserEvent::PhoneRemoved { removed_at, .. } => {
                update_target()?;
                let at = as_stored(removed_at)?;
                if let Some(r) = row.as_mut() {
                    r.phone_sealed = None;
                    r.phone_verified = false;
                    if r.two_factor_channel == "sms" {
                        "email".clone_into(&mut r.two_factor_channel);
                    }
                    r.updated_at = at;
                }
            }
            UserEvent::TwoFactorChannelChanged { channel, changed_at } => {
                update_target()?;
                let at = as_stored(changed_at)?;
                if let Some(r) = row.as_mut() {
                    channel.as_str().clone_into(&mut r.two_factor_channel);
                    r.updated_at = at;
                }
            }
            UserEvent::UsernameChanged { username, changed_at, .. } => {
                update_target()?;
                let at = as_stored(changed_at)?;
                if let Some(r) = row.as_mut() {
                    r.username = Some(username.as_str().to_owned());
                    r.updated_at = at;
                }
            }
            UserEvent::DuplicateRegistrationAttempted { .. }
            | UserEvent::EmailChallengeReplaced { .. }
            | UserEvent::RefreshTokenReuseNoticed { .. }
            | UserEvent::PasswordReset { .. }
            | UserEvent::PasswordResetRequested { .. }
            | UserEvent::LoginPasswordAccepted { .. }
            | UserEvent::PhoneClaimAttempted { .. }
            | UserEvent::LegalNameSet { .. }
            | UserEvent::AllSessionsRevoked { .. } => {}
        }
    }
    Ok(Fold::Row(row))
}

/// `rm_profiles` rows as column arrays for `UNNEST`.
#[derive(Default)]
struct ProfileColumns {
    user_id: Vec<Uuid>,
    email_sealed: Vec<Option<String>>,
    name_sealed: Vec<Option<String>>,
    bio_sealed: Vec<Option<String>>,
    email_verified: Vec<bool>,
    phone_sealed: Vec<Option<String>>,
    phone_verified: Vec<bool>,
    two_factor_channel: Vec<String>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    username: Vec<Option<String>>,
}

impl ProfileColumns {
    fn push(&mut self, r: ProfileRow) {
        self.user_id.push(r.user_id);
        self.email_sealed.push(r.email_sealed);
        self.name_sealed.push(r.name_sealed);
        self.bio_sealed.push(r.bio_sealed);
        self.email_verified.push(r.email_verified);
        self.phone_sealed.push(r.phone_sealed);
        self.phone_verified.push(r.phone_verified);
        self.two_factor_channel.push(r.two_factor_channel);
        self.created_at.push(r.created_at);
        self.updated_at.push(r.updated_at);
        self.username.push(r.username);
    }
}

/// `t` as Postgres stores it when sqlx binds it: truncated to whole
/// microseconds since 2000-01-01 (sqlx's `num_microseconds`), so that
/// comparisons made in memory agree with those `apply` makes in SQL.
///
/// # Errors
/// [`ProjectionError::Other`] when `t` is out of Postgres' range (binding
/// it would fail too).
pub(crate) fn as_stored(t: DateTime<Utc>) -> Result<DateTime<Utc>, ProjectionError> {
    let epoch = DateTime::<Utc>::from_timestamp(946_684_800, 0)
        .ok_or_else(|| ProjectionError::Other(anyhow::anyhow!("no Postgres epoch")))?;
    let micros = (t - epoch)
        .num_microseconds()
        .ok_or_else(|| ProjectionError::Other(anyhow::anyhow!("timestamp out of range for Postgres: {t}")))?;
    Ok(epoch + chrono::TimeDelta::microseconds(micros))
}

pub(crate) fn aggregate_uuid(env: &Envelope) -> Result<Uuid, ProjectionError> {
    Uuid::parse_str(&env.aggregate_id)
        .map_err(|_| ProjectionError::Other(anyhow::anyhow!("aggregate id is not a UUID")))
}

/// A row of `rm_profiles`, fields still sealed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProfileRow {
    pub user_id: Uuid,
    pub email_sealed: Option<String>,
    pub name_sealed: Option<String>,
    pub bio_sealed: Option<String>,
    pub email_verified: bool,
    pub phone_sealed: Option<String>,
    pub phone_verified: bool,
    /// `email` or `sms`.
    pub two_factor_channel: String,
    /// The public handle (not sealed), once set.
    pub username: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The profile of `user_id`, if projected.
///
/// # Errors
/// Database errors.
pub async fn find_profile(pool: &PgPool, user_id: Uuid) -> Result<Option<ProfileRow>, sqlx::Error> {
    sqlx::query_as::<_, ProfileRow>(
        "SELECT user_id, email_sealed, name_sealed, bio_sealed, email_verified, phone_sealed,
                phone_verified, two_factor_channel, username, created_at, updated_at
         FROM rm_profiles WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await
}
