//! Password + second-factor login, refresh-token rotation, logout, profile.

use chrono::{DateTime, Utc};
use domain::otp::{OtpChannel, OtpPurpose};
use domain::passkey::Passkeys;
use domain::session::{RevocationReason, SessionCommand, SessionError, SessionEvent};
use domain::throttle::{Policy, Throttle};
use domain::totp::Totp;
use domain::user::{User, UserCommand, UserError, UserEvent};
use domain::values::{Bio, Digest, DisplayName, EmailAddress, OtpCode, Password, PhoneNumber};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{internal, map_user, IdentityError, IdentityService, OtpRequest, RequestMeta, TokenPair};
use crate::executor::{
    append_together, retry_delay, Decided, DecidedRows, ExecError, Executor, LoadRow, Loaded, Together,
};
use crate::reservations::{self, ReservationKind};
use crate::tokens::{new_refresh_token, parse_refresh_token, refresh_hash};

/// Attempts of a password login's append when other logins of the account
/// (or codes to its address) commit first. Each conflict means another
/// writer committed, so `n` parallel logins need up to `n` attempts in the
/// worst case: the executor's 5 ([`crate::executor::MAX_ATTEMPTS`]) left
/// one of 8 simultaneous logins with a 409 now and then (CI, stop 25; a
/// simulation of the jittered retries put it near 3 % when they arrive
/// together). The password is not hashed again on a retry
/// ([`Decided::rebase`]), and the pauses stop growing at
/// [`LOGIN_RETRY_CEILING`], so the pauses total at most ≈ 0.76 s
/// (≈ 0.39 s on average) besides the reads and appends.
const LOGIN_ATTEMPTS: u32 = 16;

/// The attempt whose jittered pause ceiling (64 ms, [`retry_delay`]) a
/// login's later retries keep.
const LOGIN_RETRY_CEILING: u32 = 5;

/// The pause before a login's attempt `attempt + 1` after a conflict:
/// [`retry_delay`], its ceiling kept from [`LOGIN_RETRY_CEILING`] on.
fn login_pause(attempt: u32) -> std::time::Duration {
    retry_delay(attempt.min(LOGIN_RETRY_CEILING))
}

/// What answering a login challenge leads to ([`IdentityService::verify_otp`]).
#[derive(Debug)]
pub enum LoginStep {
    /// Signed in.
    Session(TokenPair),
    /// The phone code was right, but the account has TOTP: answer this
    /// `totp` challenge next (the password login's second step).
    Totp(LoginChallenge),
    /// The phone code was right, but the account has passkeys: sign in
    /// with one (`/api/auth/passkeys/login/start` with this user id).
    Passkey { user_id: Uuid },
}

/// When a refused password login may be answered (no timing oracle).
struct RefusalPad {
    started: std::time::Instant,
    answer_at: tokio::time::Instant,
}

/// What a login's password step is decided from.
struct PasswordStep<'a> {
    user_id: Uuid,
    challenge_id: Uuid,
    password: &'a Password,
    key: &'a str,
}

/// What a password login decides its first step from
/// ([`IdentityService::login_reads`]).
struct LoginReads {
    /// The owner of the address's reservation.
    owner: Option<Uuid>,
    /// The throttle streams asked for, in the order asked.
    throttles: Vec<Loaded<Throttle>>,
}

/// The part of [`IdentityService::login_reads`]' statement that carries
/// the owner (its id as `event_type`).
const OWNER_PART: i32 = -1;

/// A pending second factor, answered with `verify_otp`.
#[derive(Debug, Clone)]
pub struct LoginChallenge {
    pub challenge_id: Uuid,
    pub channel: OtpChannel,
    pub expires_at: DateTime<Utc>,
}

impl IdentityService {
    /// Password step of login; on success a code is sent on the account's
    /// two-factor channel and the challenge returned — or, when the user has
    /// TOTP enabled, a `totp` challenge is returned and nothing is sent. Unknown email and
    /// wrong password are the same error after the same work (a dummy
    /// argon2 verification and the same throttle events). Wrong passwords
    /// count per account (keyed by the email's lookup hash) with growing
    /// delays, separately from OTP failures.
    ///
    /// A valid device cookie of the account (`device_cookie`, see
    /// [`IdentityService::new_device_cookie`]) moves the failure count to
    /// that device's own throttle: failures from elsewhere do not lock a
    /// device that signed in before (OWASP device cookies).
    ///
    /// # Errors
    /// `InvalidCredentials`, `EmailNotVerified`, `Throttled`, `Internal`;
    /// `Conflict` when its streams kept moving through every retry.
    #[tracing::instrument(skip_all)]
    pub async fn start_login(
        &self,
        email: &EmailAddress,
        password: &Password,
        device_cookie: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<LoginChallenge, IdentityError> {
        // A device cookie names its account: its device's own failure
        // count is read beside the address's, and counts if the address's
        // owner is that account.
        let email_key = self.email_key(email);
        let candidate = device_cookie.and_then(|c| {
            let user_id = super::device_cookie::cookie_user(c)?;
            self.device_of(user_id, c).map(|nonce| (user_id, nonce))
        });
        let device_key = candidate.as_ref().map(|(u, nonce)| format!("device:{u}:{nonce}"));
        let mut keys = vec![Policy::PasswordFailures.key(&email_key), Policy::OtpRequests.key(&email_key)];
        if let Some(key) = &device_key {
            keys.push(Policy::PasswordFailures.key(key));
        }
        // The address's owner, the password throttle and the address's
        // code budget (spent below if the code goes by mail): one
        // statement, the same for a known and an unknown address.
        let LoginReads { owner, mut throttles } = self.login_reads(&self.email_hash(email), &keys).await?;
        let device = candidate.filter(|(u, _)| owner == Some(*u));
        let device_throttle = if device_key.is_some() { throttles.pop() } else { None };
        let (Some(mut budget), Some(email_throttle)) = (throttles.pop(), throttles.pop()) else {
            return Err(internal("throttle streams not loaded"));
        };
        let (key, password_throttle) = match (&device, device_key, device_throttle) {
            (Some(_), Some(key), Some(device_throttle)) => (key, device_throttle),
            _ => (email_key.clone(), email_throttle),
        };
        let throttle = self.check_attempt_loaded(Policy::PasswordFailures, password_throttle, meta).await?;
        // A refusal is answered no sooner than a typical refusal of a known
        // account (25 % cushion), whichever path it took (no timing oracle).
        let started = std::time::Instant::now();
        let pad = RefusalPad {
            started,
            answer_at: tokio::time::Instant::from_std(started + self.login_pad.typical().mul_f64(1.25)),
        };
        let Some(user_id) = owner else {
            self.hasher.verify_dummy(password.expose()).await;
            self.record_failure(Policy::PasswordFailures, &key, meta).await?;
            tokio::time::sleep_until(pad.answer_at).await;
            return Err(IdentityError::InvalidCredentials);
        };
        let challenge_id = Uuid::new_v4();
        let login = PasswordStep { user_id, challenge_id, password, key: &key };
        // The account and its TOTP factor in one read, after the throttle
        // check and inside the refusal's pad: its time (the account's
        // history) says nothing to a refused or throttled caller.
        let (account, totp) = self.users.load_with::<Totp>(&user_id.to_string()).await.map_err(map_user)?;
        let mut accepted = self.accept_password(account, &login, &pad, meta).await?;
        let user = accepted.state.clone();
        let by_sms =
            user.two_factor_channel == OtpChannel::Sms && user.phone.is_some() && user.phone_verified;
        if totp.is_enabled() || by_sms {
            // The password step on its own, then the second step as it goes.
            self.append_accepted(&mut accepted, &login, &pad, meta).await?;
        }
        // `RecordSuccess` only resets a failure count: with none at the
        // check it would load the stream again to write nothing. A failure
        // recorded concurrently since the check is then left standing (the
        // stricter outcome) until the next success.
        if throttle.consecutive_failures > 0 {
            self.record_success(Policy::PasswordFailures, &key, meta).await?;
        }
        // TOTP replaces the mailed code: nothing is sent (see `totp`).
        if totp.is_enabled() {
            return self.issue_totp_challenge(user_id, challenge_id, email_key, meta).await;
        }
        if by_sms {
            let sealed = user.phone.as_ref().ok_or_else(|| internal("account without phone"))?;
            let phone = self.open(user_id, sealed).await?;
            let parsed = PhoneNumber::parse(&phone).map_err(internal)?;
            self.charge_sms(&parsed).await?;
            let recipient_key = self.phone_key(&parsed);
            // Login codes count toward the recipient's budget like every
            // other code (SECURITY.md). Only reached with the right
            // password, which the 200/401 answer tells anyway: the 429 is
            // no new oracle.
            self.record_request(&recipient_key, meta).await?;
            let req = OtpRequest {
                challenge_id,
                subject: user_id,
                purpose: OtpPurpose::TwoFactor,
                channel: OtpChannel::Sms,
                to: &phone,
                recipient_key,
            };
            let expires_at = self.issue_otp(req, meta).await?;
            return Ok(LoginChallenge { challenge_id, channel: OtpChannel::Sms, expires_at });
        }
        // The common case, a mailed code: one statement writes the
        // account's `LoginPasswordAccepted`, the address's
        // `RequestRecorded` (SECURITY.md's code budget, decided on the
        // stream read above) and the new challenge's `OtpIssued` with its
        // delivery record, all or none ([`append_together`]); a refusal of
        // the budget is recorded with the password step.
        let sealed = user.email.as_ref().ok_or_else(|| internal("account without email"))?;
        let to = self.open(user_id, sealed).await?;
        let req = OtpRequest {
            challenge_id,
            subject: user_id,
            purpose: OtpPurpose::TwoFactor,
            channel: OtpChannel::Email,
            to: &to,
            recipient_key: email_key.clone(),
        };
        let code = self.prepare_otp(req, meta).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let spent = self.decide_request(budget, meta).await?;
            let written = match &spent.outcome {
                Ok(()) => {
                    let parts: [&dyn DecidedRows; 3] = [&accepted, &spent.decided, &code.decided];
                    append_together(&self.pool, &parts, Some(&code.delivery)).await
                }
                Err(_) => append_together(&self.pool, &[&accepted, &spent.decided], None).await,
            };
            match written {
                Ok(_) => {
                    spent.outcome?;
                    return Ok(LoginChallenge {
                        challenge_id,
                        channel: OtpChannel::Email,
                        expires_at: code.expires_at,
                    });
                }
                // Another code to the address, or another login of the
                // account, committed first: nothing was written. Read both
                // again; the password step is decided again (argon2) only
                // when the account's state changed meanwhile.
                Err(Together::Conflict) if attempt < LOGIN_ATTEMPTS => {
                    tokio::time::sleep(login_pause(attempt)).await;
                    let mut again = self.throttles.load_many(&[&Policy::OtpRequests.key(&email_key)]).await?;
                    budget = again.pop().ok_or_else(|| internal("throttle stream not loaded"))?;
                    self.refresh_accepted(&mut accepted, &login, &pad, meta).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// What a password login reads before its throttle check, in one
    /// statement (a `UNION ALL`; two statements, each with its pool round
    /// trips, before): the owner of the reservation of `email_hash` and
    /// the throttle streams `keys` (each by its tail rule, as `load_many`
    /// reads them). The same rows whether the address is known or not but
    /// for the owner's id.
    ///
    /// # Errors
    /// `Internal` on a store failure or an event that does not decode.
    async fn login_reads(&self, email_hash: &Digest, keys: &[String]) -> Result<LoginReads, IdentityError> {
        let mut q: QueryBuilder<'_, Postgres> = QueryBuilder::new("(SELECT ");
        q.push_bind(OWNER_PART);
        q.push(
            " AS k, 'owner' AS aggregate_type, 0::int8 AS sequence, owner_id::text AS event_type, \
             ''::text AS event_version, 'null'::json AS payload FROM reservations WHERE ",
        );
        reservations::push_key_condition(&mut q, ReservationKind::Email, email_hash);
        q.push(")");
        for (k, key) in keys.iter().enumerate() {
            q.push(" UNION ALL ");
            self.throttles.push_load(&mut q, i32::try_from(k).map_err(internal)?, key);
        }
        q.push(" ORDER BY k, sequence");
        let rows: Vec<LoadRow> = q.build_query_as().fetch_all(&self.pool).await.map_err(internal)?;
        let mut owner = None;
        let mut parts: Vec<Vec<LoadRow>> = keys.iter().map(|_| Vec::new()).collect();
        for row in rows {
            match row.0 {
                OWNER_PART => owner = Some(Uuid::parse_str(&row.3).map_err(internal)?),
                k => usize::try_from(k)
                    .ok()
                    .and_then(|k| parts.get_mut(k))
                    .ok_or_else(|| internal("row of an unknown stream"))?
                    .push(row),
            }
        }
        let throttles = keys
            .iter()
            .zip(parts)
            .map(|(key, rows)| Executor::<Throttle>::loaded_from(key, rows))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LoginReads { owner, throttles })
    }

    /// The password step of a login on `account` (argon2 in the aggregate),
    /// decided but not appended. A wrong password is counted on the
    /// throttle and answered `InvalidCredentials` no sooner than `pad`
    /// says.
    async fn accept_password(
        &self,
        account: Loaded<User>,
        login: &PasswordStep<'_>,
        pad: &RefusalPad,
        meta: &RequestMeta,
    ) -> Result<Decided<User>, IdentityError> {
        let cmd = UserCommand::StartLogin {
            challenge_id: login.challenge_id,
            password: login.password.clone(),
            at: Utc::now(),
        };
        match self.users.decide(account, cmd, meta.to_map("StartLogin")).await {
            Err(ExecError::Domain(UserError::WrongPassword)) => {
                self.record_failure(Policy::PasswordFailures, login.key, meta).await?;
                self.login_pad.observe(pad.started.elapsed());
                tokio::time::sleep_until(pad.answer_at).await;
                Err(IdentityError::InvalidCredentials)
            }
            other => {
                let accepted = other.map_err(map_user)?;
                if !accepted.events.iter().any(|e| matches!(e, UserEvent::LoginPasswordAccepted { .. })) {
                    return Err(internal("login accepted without an event"));
                }
                Ok(accepted)
            }
        }
    }

    /// Reads the account again after a conflict and moves the password
    /// step onto it ([`Decided::rebase`]: parallel logins of one account
    /// change no state, so no second argon2), or decides it again when the
    /// account's state changed (a new password, say).
    async fn refresh_accepted(
        &self,
        accepted: &mut Decided<User>,
        login: &PasswordStep<'_>,
        pad: &RefusalPad,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let (account, _) =
            self.users.load_with::<Totp>(&login.user_id.to_string()).await.map_err(map_user)?;
        if let Err(account) = accepted.rebase(account) {
            *accepted = self.accept_password(account, login, pad, meta).await?;
        }
        Ok(())
    }

    /// Appends the password step alone (a TOTP or SMS login goes on from
    /// there); a conflict reads the account and decides again, as the
    /// executor does, at most [`LOGIN_ATTEMPTS`] times.
    async fn append_accepted(
        &self,
        accepted: &mut Decided<User>,
        login: &PasswordStep<'_>,
        pad: &RefusalPad,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match append_together(&self.pool, &[&*accepted], None).await {
                Ok(_) => return Ok(()),
                Err(Together::Conflict) if attempt < LOGIN_ATTEMPTS => {
                    tokio::time::sleep(login_pause(attempt)).await;
                    self.refresh_accepted(accepted, login, pad, meta).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Answers a two-factor or phone-login challenge. A two-factor code
    /// (after the password) starts a session. A phone-login code is one
    /// factor: a number with no account creates the account (seed 003: sign
    /// up with the phone number); an account with TOTP answers a `totp`
    /// challenge next and one with passkeys signs in with a passkey (the
    /// code alone opens nothing); any other account gets a session whose
    /// `auth_time` is not fresh, so sensitive changes need a step-up (ASVS
    /// 7.5.1). A challenge of channel `totp` is answered with the
    /// authenticator app's current code, each time step once only.
    ///
    /// # Errors
    /// `InvalidCode`, `CodeExpired`, `ChallengeLocked`, `Throttled`, `Internal`.
    #[tracing::instrument(skip_all, fields(challenge_id = %challenge_id))]
    pub async fn verify_otp(
        &self,
        challenge_id: Uuid,
        code: &OtpCode,
        meta: &RequestMeta,
    ) -> Result<LoginStep, IdentityError> {
        let current = self.otps.load(&challenge_id.to_string()).await?;
        if current.channel == Some(OtpChannel::Totp) {
            let user_id = self.answer_totp_code(challenge_id, &current, code, meta).await?;
            return self.start_session(user_id, meta).await.map(LoginStep::Session);
        }
        let challenge =
            self.answer(challenge_id, code, &[OtpPurpose::TwoFactor, OtpPurpose::Login], meta).await?;
        let subject = challenge.subject_id.ok_or_else(|| internal("challenge without subject"))?;
        if challenge.purpose != Some(OtpPurpose::Login) {
            return self.start_session(subject, meta).await.map(LoginStep::Session);
        }
        let (user_id, created) = self.complete_phone_login(challenge_id, subject, &challenge, meta).await?;
        if !created {
            let id = user_id.to_string();
            let totp = self.totps().load(&id).await?;
            if totp.is_enabled() {
                let key = challenge.attempts_key.clone().unwrap_or_else(|| format!("user:{user_id}"));
                let next = self.issue_totp_challenge(user_id, Uuid::new_v4(), key, meta).await?;
                return Ok(LoginStep::Totp(next));
            }
            let passkeys = Executor::<Passkeys>::new(self.pool.clone(), ()).load(&id).await?;
            if !passkeys.passkeys.is_empty() {
                return Ok(LoginStep::Passkey { user_id });
            }
        }
        self.start_quick_session(user_id, meta).await.map(LoginStep::Session)
    }

    /// Rotates a refresh token (RFC 9700 §4.14.2). A spent token revokes the
    /// whole session, mails the owner and answers
    /// [`IdentityError::RefreshTokenReused`].
    ///
    /// # Errors
    /// `InvalidRefreshToken`, `RefreshTokenReused`, `SessionRevoked`,
    /// `SessionExpired`, `Conflict`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, token: &str, meta: &RequestMeta) -> Result<TokenPair, IdentityError> {
        let session_id = parse_refresh_token(token).ok_or(IdentityError::InvalidRefreshToken)?;
        let next = new_refresh_token(session_id);
        let now = Utc::now();
        let cmd = SessionCommand::Refresh {
            presented_hash: refresh_hash(token),
            new_hash: next.hash.clone(),
            at: now,
        };
        let done = self
            .sessions
            .execute(&session_id.to_string(), cmd, meta.to_map("RefreshSession"))
            .await
            .map_err(|e| match e {
            ExecError::Domain(SessionError::Revoked) => IdentityError::SessionRevoked,
            ExecError::Domain(SessionError::Expired) => IdentityError::SessionExpired,
            ExecError::Domain(_) => IdentityError::InvalidRefreshToken,
            other => other.into(),
        })?;
        if done.events.iter().any(|e| matches!(e, SessionEvent::RefreshTokenReuseDetected { .. })) {
            tracing::warn!(session_id = %session_id, "refresh token reuse detected; session revoked");
            if let Some(user_id) = done.state.user_id {
                self.notify_reuse(user_id, meta).await;
            }
            return Err(IdentityError::RefreshTokenReused);
        }
        let user_id = done.state.user_id.ok_or_else(|| internal("session without user"))?;
        // Revoked with all of the account's sessions (decided on the user).
        self.refuse_if_cut_off(user_id, session_id, meta).await?;
        let auth_time = done.state.authenticated_at.unwrap_or(chrono::DateTime::UNIX_EPOCH);
        let (access_token, expires_in) = self.access_token(user_id, session_id, now, auth_time).await?;
        Ok(TokenPair {
            access_token,
            refresh_token: next.token,
            expires_in,
            session_id,
            user_id,
            refresh_expires_at: done.state.idle_expires_at.unwrap_or(now),
        })
    }

    /// Mails the owner that a refresh token was replayed (best effort).
    async fn notify_reuse(&self, user_id: Uuid, meta: &RequestMeta) {
        let Ok(user) = self.users.load(&user_id.to_string()).await else { return };
        let Some(sealed) = user.email.as_ref() else { return };
        let Ok(to) = self.open(user_id, sealed).await else { return };
        let Ok(notice) = self.notice(&to, "refresh_token_reuse") else { return };
        let cmd = UserCommand::NoteRefreshTokenReuse { delivery_id: notice.id(), at: Utc::now() };
        let _ = self
            .users
            .execute_with(&user_id.to_string(), cmd, meta.to_map("NoteRefreshTokenReuse"), &notice)
            .await;
    }

    /// Revokes session `session_id` of `user_id` (logout). Idempotent.
    ///
    /// # Errors
    /// `NotFound` when the session is not the user's; `Internal`.
    #[tracing::instrument(skip_all, fields(session_id = %session_id))]
    pub async fn revoke_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        reason: RevocationReason,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let id = session_id.to_string();
        let session = self.sessions.load(&id).await?;
        if session.user_id != Some(user_id) {
            return Err(IdentityError::NotFound);
        }
        let cmd = SessionCommand::Revoke { reason, at: Utc::now() };
        self.sessions.execute(&id, cmd, meta.to_map("RevokeSession")).await?;
        Ok(())
    }

    /// Updates profile fields of `user_id`; `None` leaves a field unchanged.
    /// Returns the account's state with the change applied.
    ///
    /// # Errors
    /// `NotFound`, `Internal`, `Conflict`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn update_profile(
        &self,
        user_id: Uuid,
        name: Option<&DisplayName>,
        bio: Option<&Bio>,
        meta: &RequestMeta,
    ) -> Result<User, IdentityError> {
        let name = match name {
            Some(n) => Some(self.vault.seal(user_id, n.as_str()).await.map_err(internal)?),
            None => None,
        };
        let bio = match bio {
            Some(b) => Some(self.vault.seal(user_id, b.as_str()).await.map_err(internal)?),
            None => None,
        };
        let cmd = UserCommand::UpdateProfile { name, bio, at: Utc::now() };
        let done = self
            .users
            .execute(&user_id.to_string(), cmd, meta.to_map("UpdateProfile"))
            .await
            .map_err(map_user)?;
        Ok(done.state)
    }
}
