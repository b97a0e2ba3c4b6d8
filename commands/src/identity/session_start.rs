//! Opening a session after an authentication: the `SessionStarted` event
//! and the access and refresh tokens (full or quick factor).

use chrono::{DateTime, Utc};
use domain::session::SessionCommand;
use uuid::Uuid;

use super::{internal, ClientInfo, IdentityError, IdentityService, RequestMeta, TokenPair};
use crate::tokens::new_refresh_token;

impl IdentityService {
    /// Opens a session for `user_id` after a full authentication (password +
    /// second factor, phone code, TOTP, passkey) and issues its tokens; the
    /// access token's `auth_time` is now.
    ///
    /// # Errors
    /// `Internal`, `Conflict`.
    pub async fn start_session(&self, user_id: Uuid, meta: &RequestMeta) -> Result<TokenPair, IdentityError> {
        self.open_session(user_id, meta, false).await
    }

    /// Opens a session with a quick factor (device PIN): usable at once, but
    /// it carries no fresh authentication, so sensitive changes still need a
    /// step-up (ASVS 7.5.1).
    ///
    /// # Errors
    /// `Internal`, `Conflict`.
    pub async fn start_quick_session(
        &self,
        user_id: Uuid,
        meta: &RequestMeta,
    ) -> Result<TokenPair, IdentityError> {
        self.open_session(user_id, meta, true).await
    }

    async fn open_session(
        &self,
        user_id: Uuid,
        meta: &RequestMeta,
        quick_factor: bool,
    ) -> Result<TokenPair, IdentityError> {
        // A suspended account opens no session (issue 17; the case stream,
        // the write side). Suspensions end by themselves at their end time.
        if let Some(until) =
            crate::moderation::suspended_until(&self.pool, user_id).await.map_err(internal)?
        {
            return Err(IdentityError::AccountSuspended { until });
        }
        let session_id = Uuid::now_v7();
        let refresh = new_refresh_token(session_id);
        let now = Utc::now();
        let client = if meta.client == ClientInfo::default() {
            None
        } else {
            let json = serde_json::to_string(&meta.client).map_err(internal)?;
            self.vault.ensure_key(user_id).await.map_err(internal)?;
            Some(self.vault.seal(user_id, &json).await.map_err(internal)?)
        };
        let cmd = SessionCommand::Start {
            session_id,
            user_id,
            refresh_hash: refresh.hash.clone(),
            at: now,
            idle_ttl_secs: self.config.refresh_idle_ttl_secs,
            absolute_ttl_secs: self.config.refresh_absolute_ttl_secs,
            client,
            quick_factor,
        };
        let mut meta = meta.clone();
        meta.actor = Some(user_id);
        let done =
            self.sessions.execute_new(&session_id.to_string(), cmd, meta.to_map("StartSession")).await?;
        let auth_time = done.state.authenticated_at.unwrap_or(DateTime::UNIX_EPOCH);
        let (access_token, expires_in) = self.access_token(user_id, session_id, now, auth_time).await?;
        Ok(TokenPair {
            access_token,
            refresh_token: refresh.token,
            expires_in,
            session_id,
            user_id,
            refresh_expires_at: done.state.idle_expires_at.unwrap_or(now),
        })
    }
}
