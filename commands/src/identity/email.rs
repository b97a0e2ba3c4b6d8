//! Registration by email and email verification.

use chrono::{DateTime, Utc};
use domain::otp::{OtpChannel, OtpPurpose};
use domain::throttle::RequestPolicy;
use domain::user::{UserCommand, UserError, REGISTRATION_TTL_HOURS};
use domain::values::{Digest, DisplayName, EmailAddress, OtpCode, Password, PersonName, Username};
use uuid::Uuid;

use super::{internal, map_user, IdentityError, IdentityService, OtpRequest, RequestMeta};
use crate::executor::ExecError;
use crate::reservations::{self, Claim, ReleaseHeld, ReservationKind};

/// The account a registration creates.
struct NewAccount<'a> {
    user_id: Uuid,
    email: &'a EmailAddress,
    email_hash: Digest,
    password_hash: String,
    name: &'a DisplayName,
}

/// A registration failure, and whether `UserRegistered` had committed.
enum Registration {
    NotCommitted(IdentityError),
    Committed(IdentityError),
}

impl Registration {
    fn into_inner(self) -> IdentityError {
        match self {
            Self::NotCommitted(e) | Self::Committed(e) => e,
        }
    }
}

/// What a registration may carry beyond email, password and display name
/// (issue 15, seed 001).
#[derive(Debug, Clone, Default)]
pub struct RegistrationExtras {
    /// The chosen handle; a generated `user-` + 8 digits when absent.
    pub username: Option<Username>,
    /// First and last name, sealed like the display name.
    pub names: Option<(PersonName, PersonName)>,
}

impl IdentityService {
    /// Registers an account and mails a verification code. For an email that
    /// is already registered, answers the same way (a fresh, meaningless
    /// id) and mails the owner a notice instead — no enumeration. The
    /// password is hashed on both paths so timing does not tell either.
    ///
    /// The handle is claimed first: a taken one answers `UsernameTaken`
    /// at once (usernames are public, so this tells nothing about the
    /// email); it is given back when the account is not created.
    ///
    /// # Errors
    /// [`IdentityError::UsernameTaken`], [`IdentityError::Internal`] /
    /// [`IdentityError::Conflict`].
    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        email: &EmailAddress,
        password: &Password,
        name: &DisplayName,
        extras: &RegistrationExtras,
        meta: &RequestMeta,
    ) -> Result<Uuid, IdentityError> {
        let user_id = Uuid::now_v7();
        let username = match &extras.username {
            Some(chosen) => {
                self.claim_username(user_id, chosen).await?;
                chosen.clone()
            }
            None => self.claim_generated_username(user_id).await?,
        };
        // Only a committed account keeps the handle (not a decoy, not a
        // registration that failed before `UserRegistered`): given back
        // inside, a decoy's before its padded answer (no timing difference).
        let (result, _committed) =
            self.register_with_handle(user_id, email, password, name, &username, extras, meta).await;
        result.map(|()| user_id)
    }

    /// [`IdentityService::register`] after the handle is claimed, and
    /// whether `UserRegistered` committed (false for a duplicate's decoy).
    #[allow(clippy::too_many_arguments)]
    async fn register_with_handle(
        &self,
        user_id: Uuid,
        email: &EmailAddress,
        password: &Password,
        name: &DisplayName,
        username: &Username,
        extras: &RegistrationExtras,
        meta: &RequestMeta,
    ) -> (Result<(), IdentityError>, bool) {
        let password_hash = match self.hasher.hash(password.expose()).await {
            Ok(hash) => hash,
            Err(e) => {
                self.release_username(user_id, username).await;
                return (Err(internal(e)), false);
            }
        };
        let email_hash = self.email_hash(email);
        let now = Utc::now();
        let started = std::time::Instant::now();
        // Both paths answer at the same moment: no sooner than a typical new
        // registration's work after hashing, with a 25 % cushion (no timing
        // oracle; SECURITY.md "Enumeration").
        let answer_at = started + self.register_pad.typical().mul_f64(1.25);
        let claim = match reservations::claim(&self.pool, ReservationKind::Email, &email_hash, user_id).await
        {
            Ok(claim) => claim,
            Err(e) => {
                self.release_username(user_id, username).await;
                return (Err(internal(e)), false);
            }
        };
        let (result, committed) = match claim {
            // The decoy id is the one minted above, before the claim: its
            // UUIDv7 time is what a real account's would be.
            Claim::Taken { owner } => {
                (self.notify_duplicate_registration(owner, email, now, meta).await, false)
            }
            Claim::Claimed => {
                let account =
                    NewAccount { user_id, email, email_hash: email_hash.clone(), password_hash, name };
                let result = self.register_claimed(account, username, extras, now, meta).await;
                match &result {
                    Ok(()) => self.register_pad.observe(started.elapsed()),
                    // Released only when `UserRegistered` did not commit: once
                    // it did, the account holds the address for good (a later
                    // failure, e.g. of the code, must not permit a second one).
                    Err(Registration::NotCommitted(_)) => {
                        let _ =
                            reservations::release(&self.pool, ReservationKind::Email, &email_hash, user_id)
                                .await;
                    }
                    Err(Registration::Committed(_)) => {}
                }
                let committed = !matches!(result, Err(Registration::NotCommitted(_)));
                (result.map_err(Registration::into_inner), committed)
            }
        };
        if !committed {
            self.release_username(user_id, username).await;
        }
        tokio::time::sleep_until(answer_at.into()).await;
        (result, committed)
    }

    async fn register_claimed(
        &self,
        account: NewAccount<'_>,
        username: &Username,
        extras: &RegistrationExtras,
        now: DateTime<Utc>,
        meta: &RequestMeta,
    ) -> Result<(), Registration> {
        let NewAccount { user_id, email, email_hash, password_hash, name } = account;
        let not_committed = Registration::NotCommitted;
        self.vault.ensure_key(user_id).await.map_err(internal).map_err(not_committed)?;
        let sealed_email =
            self.vault.seal(user_id, email.as_str()).await.map_err(internal).map_err(not_committed)?;
        let sealed_name =
            self.vault.seal(user_id, name.as_str()).await.map_err(internal).map_err(not_committed)?;
        // The hash is a secret: sealed, so no topic carries it readable.
        let password_hash =
            self.vault.seal_hash(user_id, &password_hash).await.map_err(internal).map_err(not_committed)?;
        let (first_name, last_name) = match &extras.names {
            Some((first, last)) => (
                Some(
                    self.vault
                        .seal(user_id, first.as_str())
                        .await
                        .map_err(internal)
                        .map_err(not_committed)?,
                ),
                Some(self.vault.seal(user_id, last.as_str()).await.map_err(internal).map_err(not_committed)?),
            ),
            None => (None, None),
        };
        let challenge_id = Uuid::new_v4();
        let cmd = UserCommand::Register {
            user_id,
            email: sealed_email,
            email_hash,
            name: sealed_name,
            password_hash,
            email_challenge_id: challenge_id,
            username: Some(username.clone()),
            first_name,
            last_name,
            at: now,
        };
        self.users
            .execute_new(&user_id.to_string(), cmd, meta.to_map("RegisterUser"))
            .await
            .map_err(map_user)
            .map_err(not_committed)?;
        let req = OtpRequest {
            challenge_id,
            subject: user_id,
            purpose: OtpPurpose::EmailVerification,
            channel: OtpChannel::Email,
            to: email.as_str(),
            recipient_key: self.email_key(email),
        };
        // From here on the account exists: a failure leaves it unverified
        // (a new code: `/api/auth/verify-email/resend`), never unreserved.
        self.issue_otp(req, meta).await.map(|_| ()).map_err(Registration::Committed)
    }

    async fn notify_duplicate_registration(
        &self,
        owner: Uuid,
        email: &EmailAddress,
        now: DateTime<Utc>,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        // At most one notice per address per hour: repeated sign-ups with
        // someone's address must not flood their inbox (nor tell anything:
        // the answer is the same either way).
        let once_an_hour = RequestPolicy { window_secs: 3600, max: 1, cooldown_secs: 0 };
        let key = format!("duplicate_notice:{}", self.email_hash(email).0);
        match self.record_request_under(&key, once_an_hour, meta).await {
            Err(IdentityError::Throttled { .. }) => return Ok(()),
            other => other?,
        }
        let notice = self.notice(email.as_str(), "duplicate_registration")?;
        let cmd = UserCommand::NoteDuplicateRegistration { delivery_id: notice.id(), at: now };
        self.users
            .execute_with(&owner.to_string(), cmd, meta.to_map("NoteDuplicateRegistration"), &notice)
            .await
            .map_err(map_user)?;
        Ok(())
    }

    /// Verifies the email of the account registered under `email` with the
    /// mailed `code`, then mails a welcome. Unknown and already verified
    /// addresses answer [`IdentityError::InvalidCode`] like a wrong code,
    /// after the same throttle steps, and a locked or expired challenge does
    /// too: one status sequence for all three (no enumeration).
    ///
    /// # Errors
    /// `InvalidCode`, `Throttled`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn verify_email(
        &self,
        email: &EmailAddress,
        code: &OtpCode,
        meta: &RequestMeta,
    ) -> Result<Uuid, IdentityError> {
        let started = std::time::Instant::now();
        let key = self.email_key(email);
        let owner = reservations::owner(&self.pool, ReservationKind::Email, &self.email_hash(email))
            .await
            .map_err(internal)?;
        // A verified account has nothing pending: answered like an unknown
        // address (same statuses, same throttle steps).
        let pending = match owner {
            Some(owner) => {
                let user = self.users.load(&owner.to_string()).await?;
                user.email_challenge_id.filter(|_| !user.email_verified).map(|c| (owner, c))
            }
            None => None,
        };
        let challenge = pending.map(|(_, c)| c);
        self.answer_by_address(started, challenge, &key, code, &[OtpPurpose::EmailVerification], meta)
            .await?;
        let (owner, challenge_id) = pending.ok_or(IdentityError::InvalidCode)?;
        let notice = self.notice(email.as_str(), "welcome")?;
        let cmd = UserCommand::VerifyEmail { challenge_id, delivery_id: Some(notice.id()), at: Utc::now() };
        // The welcome is written with the event: a refused command leaves none.
        match self.users.execute_with(&owner.to_string(), cmd, meta.to_map("VerifyEmail"), &notice).await {
            Ok(_) | Err(ExecError::Domain(UserError::EmailAlreadyVerified)) => Ok(owner),
            Err(e) => Err(map_user(e)),
        }
    }

    /// Mails a new verification code if `email` belongs to an account that
    /// is not verified yet (the old code stops working). The caller answers
    /// 202 whatever happens (no enumeration); the code counts toward the
    /// address's budget like every other, and a throttled address gets
    /// nothing (recorded as a throttle event).
    ///
    /// # Errors
    /// Only infrastructure errors (`Internal`), for logging.
    #[tracing::instrument(skip_all)]
    pub async fn resend_email_verification(
        &self,
        email: &EmailAddress,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let key = self.email_key(email);
        let owner = reservations::owner(&self.pool, ReservationKind::Email, &self.email_hash(email))
            .await
            .map_err(internal)?;
        let Some(user_id) = owner else { return Ok(()) };
        let user = self.users.load(&user_id.to_string()).await?;
        if user.id.is_none() || user.email_verified {
            return Ok(());
        }
        match self.record_request(&key, meta).await {
            Err(IdentityError::Throttled { .. }) => return Ok(()),
            other => other?,
        }
        let challenge_id = Uuid::new_v4();
        let req = OtpRequest {
            challenge_id,
            subject: user_id,
            purpose: OtpPurpose::EmailVerification,
            channel: OtpChannel::Email,
            to: email.as_str(),
            recipient_key: key,
        };
        self.issue_otp(req, meta).await?;
        let cmd = UserCommand::ReplaceEmailChallenge { challenge_id, at: Utc::now() };
        match self.users.execute(&user_id.to_string(), cmd, meta.to_map("ReplaceEmailChallenge")).await {
            Ok(_) | Err(ExecError::Domain(UserError::EmailAlreadyVerified)) => Ok(()),
            Err(e) => Err(map_user(e)),
        }
    }

    /// Expires the email registrations still unverified
    /// [`REGISTRATION_TTL_HOURS`] after they were made (as of `now`), at
    /// most `limit` per call: `RegistrationExpired` on each, and the same
    /// statement releases its email reservation, so the address can be
    /// registered again. Candidates come from the profiles read model (it
    /// only finds them; the aggregate decides). Returns how many expired.
    ///
    /// # Errors
    /// `Internal` (database).
    #[tracing::instrument(skip_all)]
    pub async fn expire_unverified_registrations(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        meta: &RequestMeta,
    ) -> Result<usize, IdentityError> {
        let cutoff = now - chrono::Duration::hours(REGISTRATION_TTL_HOURS);
        let candidates: Vec<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM rm_profiles
             WHERE NOT email_verified AND email_sealed IS NOT NULL AND created_at < $1
             ORDER BY created_at LIMIT $2",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        let mut expired = 0;
        for user_id in candidates {
            let release = ReleaseHeld::new(ReservationKind::Email, user_id, None);
            let cmd = UserCommand::ExpireRegistration { at: now };
            match self
                .users
                .execute_with(&user_id.to_string(), cmd, meta.to_map("ExpireRegistration"), &release)
                .await
            {
                Ok(_) => expired += 1,
                // Verified meanwhile, or already gone: nothing to do.
                Err(ExecError::Domain(_)) => {}
                Err(e) => return Err(map_user(e)),
            }
        }
        Ok(expired)
    }
}
