//! Handles (usernames): claimed through the reservation table
//! (ARCHITECTURE decided 8), case-insensitively (they are case-folded
//! before hashing), public data (never sealed). A changed handle stays held
//! by its former owner for [`USERNAME_HOLD_DAYS`] days.

use chrono::Utc;
use domain::user::{User, UserCommand};
use domain::values::{Digest, EmailAddress, Username};
use rand::Rng;
use uuid::Uuid;

use super::{internal, map_user, IdentityError, IdentityService, RequestMeta};
use crate::executor::Executed;
use crate::keys::hmac_hex;
use crate::reservations::{self, Claim, HoldPrevious, ReservationKind};

/// Days a given-up handle stays held by its former owner (issue 15).
pub const USERNAME_HOLD_DAYS: i32 = 30;

/// Tries at drawing a free generated handle before giving up.
const GENERATED_TRIES: usize = 20;

impl IdentityService {
    /// Keyed lookup hash of a (case-folded) username.
    pub fn username_hash(&self, username: &Username) -> Digest {
        Digest(hmac_hex(&self.keys.lookup, &[b"username:", username.as_str().as_bytes()]))
    }

    /// Reserves `username` for `owner`.
    ///
    /// # Errors
    /// `UsernameTaken` when someone else holds it (or held it within 30
    /// days), `Internal`.
    pub(crate) async fn claim_username(&self, owner: Uuid, username: &Username) -> Result<(), IdentityError> {
        match reservations::claim(&self.pool, ReservationKind::Username, &self.username_hash(username), owner)
            .await
            .map_err(internal)?
        {
            Claim::Claimed => Ok(()),
            Claim::Taken { owner: holder } if holder == owner => Ok(()),
            Claim::Taken { .. } => Err(IdentityError::UsernameTaken),
        }
    }

    /// Releases `owner`'s claim of `username` (its command did not commit).
    pub(crate) async fn release_username(&self, owner: Uuid, username: &Username) {
        let hash = self.username_hash(username);
        if let Err(e) = reservations::release(&self.pool, ReservationKind::Username, &hash, owner).await {
            tracing::warn!(error = %e, "could not release a username claim");
        }
    }

    /// Draws and reserves a free generated handle (`user-` + 8 random
    /// digits) for `owner`.
    ///
    /// # Errors
    /// `Internal` (database, or no free handle after 20 draws).
    pub(crate) async fn claim_generated_username(&self, owner: Uuid) -> Result<Username, IdentityError> {
        for _ in 0..GENERATED_TRIES {
            let candidate = Username::generated(rand::thread_rng().gen_range(0..100_000_000));
            match self.claim_username(owner, &candidate).await {
                Ok(()) => return Ok(candidate),
                Err(IdentityError::UsernameTaken) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(internal("no free generated username"))
    }

    /// Changes `user_id`'s handle to `username`; the old one stays held
    /// for [`USERNAME_HOLD_DAYS`] days (set by the same statement as the
    /// event). The same handle again changes nothing.
    ///
    /// # Errors
    /// `UsernameTaken`, `NotFound`, `Conflict`, `Internal`.
    pub async fn change_username(
        &self,
        user_id: Uuid,
        username: &Username,
        meta: &RequestMeta,
    ) -> Result<Executed<User>, IdentityError> {
        let hash = self.username_hash(username);
        let before =
            reservations::owner(&self.pool, ReservationKind::Username, &hash).await.map_err(internal)?;
        self.claim_username(user_id, username).await?;
        let hold = HoldPrevious::new(ReservationKind::Username, user_id, &hash, USERNAME_HOLD_DAYS);
        let cmd = UserCommand::ChangeUsername { username: username.clone(), at: Utc::now() };
        match self.users.execute_with(&user_id.to_string(), cmd, meta.to_map("ChangeUsername"), &hold).await {
            Ok(done) => Ok(done),
            Err(e) => {
                // Not committed: give back a claim this call made.
                if before.is_none() {
                    self.release_username(user_id, username).await;
                }
                Err(map_user(e))
            }
        }
    }

    /// The account holding `username`, if any.
    ///
    /// # Errors
    /// `Internal`.
    pub async fn username_owner(&self, username: &Username) -> Result<Option<Uuid>, IdentityError> {
        reservations::owner(&self.pool, ReservationKind::Username, &self.username_hash(username))
            .await
            .map_err(internal)
    }

    /// The account whose current handle is `username` (not one holding it
    /// on hold after a change), read from the write side: a change is seen
    /// at once.
    ///
    /// # Errors
    /// `Internal`.
    pub async fn handle_holder(&self, username: &Username) -> Result<Option<Uuid>, IdentityError> {
        let Some(owner) = self.username_owner(username).await? else { return Ok(None) };
        let user = self.users.load(&owner.to_string()).await?;
        let current = user.id.is_some() && !user.expired && user.username.as_ref() == Some(username);
        Ok(current.then_some(owner))
    }

    /// The email to sign in with for `username` (login accepts the email
    /// or the username). An unknown handle, or one of an account without an
    /// email, gives an address no account has, so the login that follows
    /// does the same work as for a wrong password: the same answer after
    /// the same time (no enumeration).
    ///
    /// # Errors
    /// `Internal`.
    pub async fn login_email_for(&self, username: &Username) -> Result<EmailAddress, IdentityError> {
        let owner = self.username_owner(username).await?;
        // Read a stream either way (the nil id's is empty), so both paths
        // cost one lookup and one read.
        let user = self.users.load(&owner.unwrap_or(Uuid::nil()).to_string()).await?;
        let email = match (owner, user.email.as_ref()) {
            (Some(owner), Some(sealed)) => self.vault.open(owner, sealed).await.map_err(internal)?,
            _ => None,
        };
        let address = email.unwrap_or_else(|| format!("{}@unknown.invalid", username.as_str()));
        EmailAddress::parse(&address).map_err(internal)
    }
}
