//! Device PIN (seed 003, issue 4): a returning user comes back on a known
//! device by PIN instead of a full login.
//!
//! - Set: inside a session whose last full authentication is recent (the
//!   api checks the 5-minute step-up window; the `DevicePin` aggregate
//!   additionally refuses to re-enable a disabled PIN unless the session
//!   authenticated *after* it was disabled).
//! - Stored: argon2id (bounded pool) of `HMAC-SHA256(pin pepper,
//!   <user_id>:<device_id> ‖ 0 ‖ PIN)`. The pepper is a server key derived
//!   from the master key, so the argon2 hash of a 4-digit PIN in the event
//!   log cannot be brute-forced without the server's keys, and a hash is
//!   bound to its device.
//! - Verify: `device_id` (+ optional `user_id`) finds the aggregate through
//!   the `device_pins` lookup table; an unknown device spends a dummy
//!   argon2 verification and answers exactly like a wrong PIN. 5 wrong PINs
//!   disable the PIN of that device until the user logs in fully and sets
//!   it again (`domain::pin`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::pin::{pin_aggregate_id, DeviceId, DevicePin, PinCommand, PinError, PinEvent, PinServices};
use domain::services::PasswordVerifier;
use domain::session::SessionStatus;
use domain::totp::TotpError;
use uuid::Uuid;

use super::{internal, IdentityError, IdentityService, RequestMeta, TokenPair};
use crate::executor::{ExecError, Executor};
use crate::keys::{hmac_hex, sha256_hex, Keyring, Secret32};
use crate::passwords::SealedHashVerifier;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use domain::throttle::Policy;
use domain::values::Digest;
use domain::values::Pin;
use rand::RngCore;

/// Failures of the strong-factor flows (device PIN, TOTP); the api maps
/// each to one status and code.
#[derive(Debug, thiserror::Error)]
pub enum FactorError {
    /// Any identity failure (throttles, sessions, internal errors).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// 401 `invalid_pin` — wrong PIN, unknown device or disabled PIN, alike.
    #[error("the PIN is not valid; sign in with your password if it keeps failing")]
    InvalidPin,
    /// 404 `pin_not_set` — the device has no PIN to remove.
    #[error("no PIN is set for this device")]
    PinNotSet,
    /// 403 `reauthentication_required` — a disabled PIN is re-enabled only
    /// after a full login following its lock.
    #[error("sign in fully (password and second factor) before setting this PIN again")]
    ReauthenticationRequired,
    /// 409 `totp_already_enabled`.
    #[error("TOTP is already enabled; disable it first")]
    TotpAlreadyEnabled,
    /// 409 `totp_not_pending` — confirm without a started enrollment.
    #[error("start a TOTP enrollment first")]
    TotpNotPending,
    /// 404 `totp_not_enabled`.
    #[error("TOTP is not enabled")]
    TotpNotEnabled,
}

impl From<TotpError> for FactorError {
    fn from(e: TotpError) -> Self {
        match e {
            TotpError::AlreadyEnabled => Self::TotpAlreadyEnabled,
            TotpError::NotPending => Self::TotpNotPending,
            TotpError::NotEnabled => Self::TotpNotEnabled,
            TotpError::InvalidCode => Self::Identity(IdentityError::InvalidCode),
        }
    }
}

/// An independent server key for one use inside the strong factors, derived
/// from the OTP subkey (HMAC-SHA256 as a PRF with a fixed label).
pub(crate) fn factor_key(keys: &Keyring, label: &str) -> Secret32 {
    let hex = hmac_hex(&keys.otp, &[b"streamforge/v1 factor-key:", label.as_bytes()]);
    let mut out = [0u8; 32];
    // 64 hex characters always decode into 32 bytes.
    let _ = hex::decode_to_slice(hex, &mut out);
    Secret32(out)
}

/// A device secret: 256 random bits, base64url (43 characters).
fn new_device_secret() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// The PIN as handed to argon2: keyed with the pepper, bound to its device.
fn peppered(pepper: &Secret32, context: &str, pin: &str) -> String {
    hmac_hex(pepper, &[context.as_bytes(), b"\0", pin.as_bytes()])
}

/// Argon2id check of a peppered PIN on the bounded pool.
struct PepperedPinVerifier {
    hashes: SealedHashVerifier,
    pepper: Secret32,
    context: String,
}

#[async_trait]
impl PasswordVerifier for PepperedPinVerifier {
    async fn verify(&self, subject: Uuid, stored: &str, candidate: &str) -> bool {
        self.hashes.check(subject, stored, &peppered(&self.pepper, &self.context, candidate)).await
    }
}

fn map_pin(e: ExecError<PinError>) -> FactorError {
    match e {
        ExecError::Domain(PinError::ReauthenticationRequired) => FactorError::ReauthenticationRequired,
        ExecError::Domain(PinError::NotSet | PinError::WrongOwner) => FactorError::PinNotSet,
        other => FactorError::Identity(other.into()),
    }
}

impl IdentityService {
    fn pin_pepper(&self) -> Secret32 {
        factor_key(&self.keys, "device-pin-pepper")
    }

    /// An executor of the PIN of (`user_id`, `device`), its verifier bound
    /// to that device.
    fn pin_executor(&self, aggregate_id: &str) -> Executor<DevicePin> {
        let verifier = PepperedPinVerifier {
            hashes: self.hashes.clone(),
            pepper: self.pin_pepper(),
            context: aggregate_id.to_owned(),
        };
        Executor::new(self.pool.clone(), PinServices::new(verifier))
    }

    /// Sets (or replaces, or re-enables) the PIN of `device` for `user_id`,
    /// from session `session_id`. The caller checks the 5-minute step-up
    /// window; this checks the session is the user's and active, and hands
    /// its last authentication time to the aggregate.
    ///
    /// # Errors
    /// `ReauthenticationRequired` (disabled PIN, no login since),
    /// `Identity(SessionRevoked | NotFound | Internal | Conflict)`.
    /// Returns the device secret (256 random bits, base64url): the client
    /// keeps it and presents it with the PIN; only its SHA-256 is stored.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn set_pin(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        device: &DeviceId,
        pin: &Pin,
        meta: &RequestMeta,
    ) -> Result<String, FactorError> {
        let session = self.sessions.load(&session_id.to_string()).await.map_err(IdentityError::from)?;
        if session.user_id != Some(user_id) {
            return Err(IdentityError::NotFound.into());
        }
        if session.status != SessionStatus::Active {
            return Err(IdentityError::SessionRevoked.into());
        }
        let now = Utc::now();
        let authenticated_at = session.authenticated_at.unwrap_or(DateTime::<Utc>::MIN_UTC);
        let id = pin_aggregate_id(user_id, device);
        let phc =
            self.hasher.hash(&peppered(&self.pin_pepper(), &id, pin.expose())).await.map_err(internal)?;
        self.vault.ensure_key(user_id).await.map_err(internal)?;
        // Sealed: a PIN hash is a secret (4–6 digits fall to any offline guess).
        let pin_hash = self.vault.seal_hash(user_id, &phc).await.map_err(internal)?;
        let device_secret = new_device_secret();
        let secret_hash = Digest(sha256_hex(device_secret.as_bytes()));
        let cmd = PinCommand::Set {
            user_id,
            device_id: device.clone(),
            pin_hash,
            secret_hash,
            authenticated_at,
            at: now,
        };
        self.pin_executor(&id).execute(&id, cmd, meta.to_map("SetPin")).await.map_err(map_pin)?;
        sqlx::query(
            "INSERT INTO device_pins (device_id, user_id, set_at) VALUES ($1, $2, $3)
             ON CONFLICT (device_id, user_id) DO UPDATE SET set_at = EXCLUDED.set_at",
        )
        .bind(device.as_str())
        .bind(user_id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        // A PIN set after a recent full authentication clears the account's
        // PIN failures across devices.
        self.record_success(Policy::PasswordFailures, &format!("pin:{user_id}"), meta).await?;
        Ok(device_secret)
    }

    /// Signs in on `device` with its PIN and starts a session (same tokens
    /// as a full login). Without `user_id`, the user who most recently set
    /// a PIN on the device is meant. Unknown device, wrong PIN and disabled
    /// PIN answer alike, after the same argon2 work.
    ///
    /// # Errors
    /// `InvalidPin`, `Identity(Conflict | Internal)`.
    #[tracing::instrument(skip_all)]
    pub async fn verify_pin(
        &self,
        device: &DeviceId,
        user_id: Option<Uuid>,
        pin: &Pin,
        device_secret: &str,
        meta: &RequestMeta,
    ) -> Result<TokenPair, FactorError> {
        let Some(owner) = self.pin_owner(device, user_id).await? else {
            self.hasher.verify_dummy(pin.expose()).await;
            return Err(FactorError::InvalidPin);
        };
        let id = pin_aggregate_id(owner, device);
        let secret_hash = Digest(sha256_hex(device_secret.as_bytes()));
        // Possession first (cheap; the aggregate checks it again): without
        // the secret nothing is counted, so nobody can spend the caps below.
        let pins = self.pin_executor(&id);
        let loaded = pins.load_many(&[&id]).await.map_err(|e| FactorError::Identity(e.into()))?.pop();
        let Some(loaded) = loaded.filter(|l| l.state().secret_hash.as_ref() == Some(&secret_hash)) else {
            self.hasher.verify_dummy(pin.expose()).await;
            return Err(FactorError::InvalidPin);
        };
        // A cap per user across all devices (besides each device's own 5):
        // counted before the PIN is evaluated, taken back on success.
        let cap_key = format!("pin:{owner}");
        self.begin_attempt(Policy::PasswordFailures, &cap_key, meta).await?;
        let cmd = PinCommand::Verify { candidate: pin.clone(), secret_hash, at: Utc::now() };
        let mut meta = meta.clone();
        // From the state read above (a change since is a conflict, retried).
        let done = match pins.execute_loaded(loaded, cmd, meta.to_map("VerifyPin")).await {
            Ok(done) => done,
            Err(ExecError::Domain(_)) => {
                self.hasher.verify_dummy(pin.expose()).await;
                return Err(FactorError::InvalidPin);
            }
            Err(other) => return Err(FactorError::Identity(other.into())),
        };
        if !done.events.iter().any(|e| matches!(e, PinEvent::PinVerified { .. })) {
            if done.events.iter().any(|e| matches!(e, PinEvent::PinDisabled { .. })) {
                tracing::warn!(user_id = %owner, "device PIN disabled after too many wrong PINs");
            }
            return Err(FactorError::InvalidPin);
        }
        self.record_success(Policy::PasswordFailures, &cap_key, &meta).await?;
        // The session names the device even if the client sent no header.
        if meta.client.device_id.is_none() {
            meta.client.device_id = Some(device.as_str().to_owned());
        }
        Ok(self.start_quick_session(owner, &meta).await?)
    }

    /// Removes the PIN of `device` for `user_id`.
    ///
    /// # Errors
    /// `PinNotSet`, `Identity(Conflict | Internal)`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn remove_pin(
        &self,
        user_id: Uuid,
        device: &DeviceId,
        meta: &RequestMeta,
    ) -> Result<(), FactorError> {
        let id = pin_aggregate_id(user_id, device);
        let cmd = PinCommand::Remove { at: Utc::now() };
        self.pin_executor(&id).execute(&id, cmd, meta.to_map("RemovePin")).await.map_err(map_pin)?;
        sqlx::query("DELETE FROM device_pins WHERE device_id = $1 AND user_id = $2")
            .bind(device.as_str())
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// Whose PIN `device` holds: `user_id` if that user set one there, else
    /// the user who set one there last.
    async fn pin_owner(&self, device: &DeviceId, user_id: Option<Uuid>) -> Result<Option<Uuid>, FactorError> {
        let owner: Option<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM device_pins WHERE device_id = $1 AND ($2::uuid IS NULL OR user_id = $2)
             ORDER BY set_at DESC LIMIT 1",
        )
        .bind(device.as_str())
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?;
        Ok(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pepper_binds_key_device_and_pin() {
        let keys = Keyring::derive(&Secret32([3; 32]));
        let k = factor_key(&keys, "device-pin-pepper");
        assert_ne!(k.0, keys.otp.0);
        assert_ne!(k.0, factor_key(&keys, "totp-recovery").0);
        let a = peppered(&k, "u:d1", "1234");
        assert_eq!(a, peppered(&k, "u:d1", "1234"));
        assert_ne!(a, peppered(&k, "u:d2", "1234"));
        assert_ne!(a, peppered(&k, "u:d1", "1235"));
        assert!(!a.contains("1234"));
    }
}
