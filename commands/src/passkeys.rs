//! Passkeys (WebAuthn) over the `Passkeys` aggregate, with webauthn-rs as
//! the relying party.
//!
//! - Registration (signed-in user, after a recent authentication — checked
//!   by the api): `start_registration` → the browser's
//!   `navigator.credentials.create()` → `finish_registration`. Only the
//!   public credential is stored (`PasskeyRegistered`); a credential id
//!   belongs to one account (reservation table `passkey_credentials`).
//! - Login: `start_login` without a user (usernameless: the authenticator
//!   offers its discoverable credentials and returns the user handle) or
//!   with one (the user handle = the user id: its passkeys are listed in
//!   `allowCredentials`) → `navigator.credentials.get()` → `finish_login`,
//!   which checks the credential belongs to that user, verifies the
//!   signature, records the sign counter on the aggregate (a counter that
//!   does not increase is refused and recorded as `PasskeyCounterRegressed`)
//!   and opens a session.
//!
//! Ceremony state (the challenge and options sent) lives server side in
//! `webauthn_ceremonies` for 5 minutes and is consumed once (DELETE …
//! RETURNING), so an assertion can never be replayed.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use domain::passkey::{PasskeyCommand, PasskeyError as DomainError, PasskeyEvent, Passkeys};
use domain::values::Sealed;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;
use webauthn_rs::prelude::{
    CredentialID, DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration, Url,
    Webauthn, WebauthnBuilder, WebauthnError,
};
pub use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use crate::executor::{ExecError, Executor};
use crate::identity::{IdentityError, IdentityService, RequestMeta, TokenPair};

/// How long a ceremony may take, start to finish (seconds).
pub const CEREMONY_TTL_SECS: i64 = 300;

/// Longest passkey label, in characters.
pub const MAX_LABEL_CHARS: usize = 64;

const KIND_REGISTRATION: &str = "registration";
const KIND_AUTHENTICATION: &str = "authentication";
const KIND_DISCOVERABLE: &str = "discoverable";

/// The relying party as configured.
#[derive(Debug, Clone)]
pub struct PasskeyConfig {
    /// RP id: the registrable domain passkeys are bound to, e.g. `example.com`.
    pub rp_id: String,
    /// The web origin the ceremonies run on, e.g. `https://app.example.com`.
    pub rp_origin: String,
    /// Name shown by authenticators.
    pub rp_name: String,
}

/// Passkey failures; the api maps each to one status and code.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// 400 `invalid_ceremony` — unknown, expired, already finished or another user's.
    #[error("the ceremony is unknown, expired or already finished; start again")]
    InvalidCeremony,
    /// 401 `passkey_rejected` — the credential is unknown or its proof does not verify.
    #[error("the passkey could not be verified")]
    Rejected,
    /// 401 `passkey_counter_regressed` — possible cloned authenticator.
    #[error("the passkey's signature counter did not increase; it may have been cloned")]
    CounterRegressed,
    /// 409 `passkey_exists`.
    #[error("this passkey is already registered")]
    AlreadyRegistered,
    /// 409 `too_many_passkeys`.
    #[error("too many passkeys; remove one first")]
    TooMany,
    /// 404 `passkey_not_found`.
    #[error("no such passkey")]
    NotFound,
    /// 422 `validation_failed` on `label`.
    #[error("the label must be 1 to {MAX_LABEL_CHARS} characters")]
    InvalidLabel,
    /// Session start and other identity failures.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

fn internal(e: impl std::fmt::Display) -> PasskeyError {
    PasskeyError::Identity(IdentityError::Internal(e.to_string()))
}

fn exec_error(e: ExecError<DomainError>) -> PasskeyError {
    match e {
        ExecError::Domain(DomainError::AlreadyRegistered) => PasskeyError::AlreadyRegistered,
        ExecError::Domain(DomainError::TooMany) => PasskeyError::TooMany,
        ExecError::Domain(DomainError::NotFound | DomainError::WrongAccount) => PasskeyError::NotFound,
        other => PasskeyError::Identity(other.into()),
    }
}

/// A started ceremony: hand `options` to the browser, send back `ceremony_id`.
#[derive(Debug, Clone)]
pub struct CeremonyStart {
    pub ceremony_id: Uuid,
    /// `CredentialCreationOptions` / `CredentialRequestOptions` as JSON
    /// (binary fields base64url).
    pub options: serde_json::Value,
    pub expires_at: DateTime<Utc>,
}

/// A registered passkey.
#[derive(Debug, Clone)]
pub struct RegisteredPasskey {
    /// base64url (no padding).
    pub credential_id: String,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The passkey write side.
pub struct PasskeyService {
    webauthn: Webauthn,
    pool: PgPool,
    identity: Arc<IdentityService>,
    passkeys: Executor<Passkeys>,
}

impl PasskeyService {
    /// A relying party for `config`.
    ///
    /// # Errors
    /// An origin that is not a URL, or an RP id that does not match it.
    pub fn new(pool: PgPool, identity: Arc<IdentityService>, config: &PasskeyConfig) -> anyhow::Result<Self> {
        let origin = Url::parse(&config.rp_origin)
            .map_err(|e| anyhow::anyhow!("WEBAUTHN_RP_ORIGIN is not a URL: {e}"))?;
        let webauthn = WebauthnBuilder::new(&config.rp_id, &origin)
            .map_err(|e| anyhow::anyhow!("WEBAUTHN_RP_ID does not suit WEBAUTHN_RP_ORIGIN: {e}"))?
            .rp_name(&config.rp_name)
            .timeout(std::time::Duration::from_secs(CEREMONY_TTL_SECS.unsigned_abs()))
            .build()
            .map_err(|e| anyhow::anyhow!("invalid WebAuthn configuration: {e}"))?;
        Ok(Self { webauthn, passkeys: Executor::new(pool.clone(), ()), pool, identity })
    }

    // ---- registration ------------------------------------------------------

    /// Starts registering a passkey for `user_id`. The account's passkeys are
    /// excluded (an authenticator cannot register twice) and a discoverable
    /// credential is preferred, so it can be used without a username.
    ///
    /// # Errors
    /// `NotFound` (no such account), `Identity(Internal)`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn start_registration(&self, user_id: Uuid) -> Result<CeremonyStart, PasskeyError> {
        let user = self.identity.users.load(&user_id.to_string()).await.map_err(IdentityError::from)?;
        if user.id.is_none() {
            return Err(PasskeyError::NotFound);
        }
        // Shown by the authenticator's account picker: the user's own address.
        let name = match user.email.as_ref().or(user.phone.as_ref()) {
            Some(sealed) => self.identity.open(user_id, sealed).await?,
            None => user_id.to_string(),
        };
        let current = self.passkeys.load(&user_id.to_string()).await.map_err(exec_error)?;
        let exclude: Vec<CredentialID> =
            current.passkeys.iter().filter_map(|p| URL_SAFE_NO_PAD.decode(&p.credential_id).ok()).collect();
        let exclude = (!exclude.is_empty()).then_some(exclude);
        let (ccr, state) =
            self.webauthn.start_passkey_registration(user_id, &name, &name, exclude).map_err(internal)?;
        let mut options = serde_json::to_value(&ccr).map_err(internal)?;
        prefer_discoverable(&mut options);
        let (ceremony_id, expires_at) = self.put_ceremony(Some(user_id), KIND_REGISTRATION, &state).await?;
        Ok(CeremonyStart { ceremony_id, options, expires_at })
    }

    /// Finishes registration `ceremony_id` of `user_id` with the browser's
    /// answer and stores the public credential under `label`.
    ///
    /// # Errors
    /// `InvalidCeremony`, `Rejected`, `AlreadyRegistered`, `TooMany`,
    /// `InvalidLabel`, `Identity(Conflict | Internal)`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, ceremony_id = %ceremony_id))]
    pub async fn finish_registration(
        &self,
        user_id: Uuid,
        ceremony_id: Uuid,
        credential: &RegisterPublicKeyCredential,
        label: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<RegisteredPasskey, PasskeyError> {
        let label = parse_label(label)?;
        let ceremony = self
            .take_ceremony(ceremony_id, &[KIND_REGISTRATION], Some(user_id))
            .await?
            .ok_or(PasskeyError::InvalidCeremony)?;
        let state: PasskeyRegistration = serde_json::from_value(ceremony.state).map_err(internal)?;
        let passkey = match self.webauthn.finish_passkey_registration(credential, &state) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(error = %e, "passkey registration refused");
                // webauthn-rs refuses an excluded (already registered)
                // credential with this error; tell that case apart.
                let claimed = URL_SAFE_NO_PAD.encode(&credential.raw_id);
                let current = self.passkeys.load(&user_id.to_string()).await.map_err(exec_error)?;
                if matches!(e, WebauthnError::CredentialAlteredAlgFromRequest)
                    && current.find(&claimed).is_some()
                {
                    return Err(PasskeyError::AlreadyRegistered);
                }
                return Err(PasskeyError::Rejected);
            }
        };
        let credential_id = URL_SAFE_NO_PAD.encode(passkey.cred_id());
        let public = serde_json::to_value(&passkey).map_err(internal)?;
        // The library keeps the registration counter inside the credential.
        let sign_count = public
            .pointer("/cred/counter")
            .and_then(serde_json::Value::as_u64)
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0);
        let sealed_label = match &label {
            Some(l) => {
                self.identity.vault.ensure_key(user_id).await.map_err(internal)?;
                Some(self.identity.vault.seal(user_id, l).await.map_err(internal)?)
            }
            None => None,
        };
        self.claim_credential(&credential_id, user_id).await?;
        let now = Utc::now();
        let cmd = PasskeyCommand::Register {
            user_id,
            credential_id: credential_id.clone(),
            credential: public,
            label: sealed_label,
            sign_count,
            at: now,
        };
        let mut meta = meta.clone();
        meta.actor = Some(user_id);
        if let Err(e) = self.passkeys.execute(&user_id.to_string(), cmd, meta.to_map("RegisterPasskey")).await
        {
            if !matches!(e, ExecError::Domain(DomainError::AlreadyRegistered)) {
                self.release_credential(&credential_id, user_id).await?;
            }
            return Err(exec_error(e));
        }
        tracing::info!(credential_id = %credential_id, "passkey registered");
        Ok(RegisteredPasskey { credential_id, label, created_at: now })
    }

    // ---- login -------------------------------------------------------------

    /// Starts a passkey login. Without `user_id` (usernameless) the request
    /// lists no credentials and asks for conditional mediation (autofill;
    /// drop `mediation` for a modal prompt): the authenticator picks a
    /// discoverable credential and returns the user handle. With `user_id`
    /// (the user handle) the account's passkeys are listed; an account
    /// without passkeys gets a request listing none, which no credential of
    /// another account can answer.
    ///
    /// # Errors
    /// `Identity(Internal)`.
    #[tracing::instrument(skip_all)]
    pub async fn start_login(&self, user_id: Option<Uuid>) -> Result<CeremonyStart, PasskeyError> {
        let keys = match user_id {
            Some(u) => self.passkeys_of(u).await?,
            None => Vec::new(),
        };
        let (ceremony_id, expires_at, options) = if keys.is_empty() {
            let (rcr, state) = self.webauthn.start_discoverable_authentication().map_err(internal)?;
            let mut options = serde_json::to_value(&rcr).map_err(internal)?;
            if user_id.is_some() {
                if let Some(o) = options.as_object_mut() {
                    o.remove("mediation");
                }
            }
            let (id, exp) = self.put_ceremony(user_id, KIND_DISCOVERABLE, &state).await?;
            (id, exp, options)
        } else {
            let (rcr, state) = self.webauthn.start_passkey_authentication(&keys).map_err(internal)?;
            let options = serde_json::to_value(&rcr).map_err(internal)?;
            let (id, exp) = self.put_ceremony(user_id, KIND_AUTHENTICATION, &state).await?;
            (id, exp, options)
        };
        Ok(CeremonyStart { ceremony_id, options, expires_at })
    }

    /// Finishes login `ceremony_id` with the browser's assertion and opens a
    /// session for the credential's owner.
    ///
    /// # Errors
    /// `InvalidCeremony`, `Rejected`, `CounterRegressed`,
    /// `Identity(Conflict | Internal)`.
    #[tracing::instrument(skip_all, fields(ceremony_id = %ceremony_id, user_id))]
    pub async fn finish_login(
        &self,
        ceremony_id: Uuid,
        credential: &PublicKeyCredential,
        meta: &RequestMeta,
    ) -> Result<TokenPair, PasskeyError> {
        let ceremony = self
            .take_ceremony(ceremony_id, &[KIND_AUTHENTICATION, KIND_DISCOVERABLE], None)
            .await?
            .ok_or(PasskeyError::InvalidCeremony)?;
        // The user handle, when the authenticator returns one, is the user id.
        let handle = match credential.get_user_unique_id() {
            Some(bytes) => Some(Uuid::from_slice(bytes).map_err(|_| PasskeyError::Rejected)?),
            None => None,
        };
        let user_id = match (ceremony.user_id, handle) {
            (Some(bound), Some(h)) if bound != h => return Err(PasskeyError::Rejected),
            (Some(bound), _) => bound,
            (None, Some(h)) => h,
            (None, None) => return Err(PasskeyError::Rejected),
        };
        tracing::Span::current().record("user_id", tracing::field::display(user_id));
        // The credential must be one of this user's passkeys, now.
        let credential_id = URL_SAFE_NO_PAD.encode(credential.get_credential_id());
        let current = self.passkeys.load(&user_id.to_string()).await.map_err(exec_error)?;
        let stored = current.find(&credential_id).ok_or(PasskeyError::Rejected)?;
        let passkey: Passkey = serde_json::from_value(stored.credential.clone()).map_err(internal)?;
        let verified = if ceremony.kind == KIND_AUTHENTICATION {
            let state: PasskeyAuthentication = serde_json::from_value(ceremony.state).map_err(internal)?;
            self.webauthn.finish_passkey_authentication(credential, &state)
        } else {
            let state: DiscoverableAuthentication =
                serde_json::from_value(ceremony.state).map_err(internal)?;
            self.webauthn.finish_discoverable_authentication_v2(credential, state, &passkey)
        };
        let result = verified.map_err(|e| {
            tracing::info!(error = %e, "passkey assertion refused");
            PasskeyError::Rejected
        })?;
        if result.cred_id() != passkey.cred_id() {
            return Err(PasskeyError::Rejected);
        }
        let mut meta = meta.clone();
        meta.actor = Some(user_id);
        let cmd = PasskeyCommand::Use { credential_id, counter: result.counter(), at: Utc::now() };
        let done =
            self.passkeys.execute(&user_id.to_string(), cmd, meta.to_map("UsePasskey")).await.map_err(
                |e| match e {
                    // Removed between loading and using.
                    ExecError::Domain(_) => PasskeyError::Rejected,
                    other => exec_error(other),
                },
            )?;
        if done.events.iter().any(|e| matches!(e, PasskeyEvent::PasskeyCounterRegressed { .. })) {
            tracing::warn!("passkey sign counter did not increase: possible cloned authenticator");
            return Err(PasskeyError::CounterRegressed);
        }
        Ok(self.identity.start_session(user_id, &meta).await?)
    }

    // ---- management --------------------------------------------------------

    /// Removes passkey `credential_id` of `user_id`.
    ///
    /// # Errors
    /// `NotFound`, `Identity(Conflict | Internal)`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn remove(
        &self,
        user_id: Uuid,
        credential_id: &str,
        meta: &RequestMeta,
    ) -> Result<(), PasskeyError> {
        let cmd = PasskeyCommand::Remove { credential_id: credential_id.to_owned(), at: Utc::now() };
        let mut meta = meta.clone();
        meta.actor = Some(user_id);
        self.passkeys
            .execute(&user_id.to_string(), cmd, meta.to_map("RemovePasskey"))
            .await
            .map_err(exec_error)?;
        self.release_credential(credential_id, user_id).await
    }

    /// The label of a passkey as the user wrote it (labels are sealed).
    ///
    /// # Errors
    /// `Identity(Internal)`.
    pub async fn open_label(&self, user_id: Uuid, sealed: &str) -> Result<Option<String>, PasskeyError> {
        self.identity.vault.open(user_id, &Sealed(sealed.to_owned())).await.map_err(internal)
    }

    async fn passkeys_of(&self, user_id: Uuid) -> Result<Vec<Passkey>, PasskeyError> {
        let current = self.passkeys.load(&user_id.to_string()).await.map_err(exec_error)?;
        Ok(current
            .passkeys
            .iter()
            .filter_map(|p| match serde_json::from_value::<Passkey>(p.credential.clone()) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::error!(error = %e, "stored passkey does not decode; skipped");
                    None
                }
            })
            .collect())
    }

    // ---- storage -----------------------------------------------------------

    async fn put_ceremony(
        &self,
        user_id: Option<Uuid>,
        kind: &str,
        state: &impl Serialize,
    ) -> Result<(Uuid, DateTime<Utc>), PasskeyError> {
        let state = serde_json::to_value(state).map_err(internal)?;
        let id = Uuid::new_v4();
        let expires_at = Utc::now() + Duration::seconds(CEREMONY_TTL_SECS);
        // Expired ceremonies are swept as new ones start.
        sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at < now()")
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        sqlx::query(
            "INSERT INTO webauthn_ceremonies (ceremony_id, user_id, kind, state, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(user_id)
        .bind(kind)
        .bind(state)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok((id, expires_at))
    }

    /// Consumes ceremony `id` of one of `kinds` (and of `user_id`, when
    /// given) if it has not expired; `None` otherwise.
    async fn take_ceremony(
        &self,
        id: Uuid,
        kinds: &[&str],
        user_id: Option<Uuid>,
    ) -> Result<Option<Ceremony>, PasskeyError> {
        let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
        let row: Option<(Option<Uuid>, String, serde_json::Value)> = sqlx::query_as(
            "DELETE FROM webauthn_ceremonies
             WHERE ceremony_id = $1 AND kind = ANY($2) AND expires_at > now()
               AND ($3::uuid IS NULL OR user_id = $3)
             RETURNING user_id, kind, state",
        )
        .bind(id)
        .bind(&kinds)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?;
        Ok(row.map(|(user_id, kind, state)| Ceremony { user_id, kind, state }))
    }

    /// Reserves `credential_id` for `user_id` (set validation, decided 8).
    async fn claim_credential(&self, credential_id: &str, user_id: Uuid) -> Result<(), PasskeyError> {
        let owner: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO passkey_credentials (credential_id, user_id) VALUES ($1, $2)
             ON CONFLICT (credential_id) DO UPDATE SET credential_id = EXCLUDED.credential_id
             RETURNING user_id",
        )
        .bind(credential_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?;
        // Held by this user already: a retry after a failed append, or a
        // duplicate the aggregate refuses.
        match owner {
            Some(o) if o == user_id => Ok(()),
            _ => Err(PasskeyError::AlreadyRegistered),
        }
    }

    async fn release_credential(&self, credential_id: &str, user_id: Uuid) -> Result<(), PasskeyError> {
        sqlx::query("DELETE FROM passkey_credentials WHERE credential_id = $1 AND user_id = $2")
            .bind(credential_id)
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(())
    }
}

struct Ceremony {
    user_id: Option<Uuid>,
    kind: String,
    state: serde_json::Value,
}

/// Asks for a discoverable credential (`residentKey: preferred`), which
/// usernameless login needs; webauthn-rs' passkey defaults leave it out.
fn prefer_discoverable(options: &mut serde_json::Value) {
    let selection = options
        .get_mut("publicKey")
        .and_then(|p| p.get_mut("authenticatorSelection"))
        .and_then(serde_json::Value::as_object_mut);
    if let Some(s) = selection {
        s.insert("residentKey".to_owned(), serde_json::Value::from("preferred"));
    }
}

/// Trims and checks a label; an empty one means none.
fn parse_label(label: Option<&str>) -> Result<Option<String>, PasskeyError> {
    let Some(raw) = label else { return Ok(None) };
    let clean: String = raw.trim().chars().filter(|c| !c.is_control()).collect();
    if clean.is_empty() {
        return Ok(None);
    }
    if clean.chars().count() > MAX_LABEL_CHARS {
        return Err(PasskeyError::InvalidLabel);
    }
    Ok(Some(clean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_trimmed_and_bounded() {
        assert_eq!(parse_label(None).unwrap(), None);
        assert_eq!(parse_label(Some("  ")).unwrap(), None);
        assert_eq!(parse_label(Some(" Laptop\u{7}  ")).unwrap().as_deref(), Some("Laptop"));
        assert!(matches!(parse_label(Some(&"x".repeat(65))), Err(PasskeyError::InvalidLabel)));
    }

    #[test]
    fn registration_options_prefer_a_discoverable_credential() {
        let mut v =
            serde_json::json!({"publicKey": {"authenticatorSelection": {"requireResidentKey": false}}});
        prefer_discoverable(&mut v);
        assert_eq!(v["publicKey"]["authenticatorSelection"]["residentKey"], "preferred");
    }
}
