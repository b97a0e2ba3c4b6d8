use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Digest, Sealed};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    Logout,
    RefreshTokenReuse,
    PasswordReset,
    Suspended,
    Erased,
    Admin,
}

impl RevocationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::RefreshTokenReuse => "refresh_token_reuse",
            Self::PasswordReset => "password_reset",
            Self::Suspended => "suspended",
            Self::Erased => "erased",
            Self::Admin => "admin",
        }
    }
}

/// Events of a `Session`. Refresh tokens appear only as SHA-256 digests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SessionEvent {
    SessionStarted {
        session_id: Uuid,
        user_id: Uuid,
        refresh_hash: Digest,
        started_at: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        /// Client description (device id and label, user agent, IP prefix)
        /// as JSON sealed with the user's key: personal data.
        #[serde(default)]
        client: Option<Sealed>,
        /// Opened with a quick factor (device PIN): `auth_time` is not set.
        #[serde(default)]
        quick_factor: bool,
    },
    /// The user proved a factor again (step-up, ASVS 7.5.1).
    SessionReauthenticated {
        reauthenticated_at: DateTime<Utc>,
    },
    /// The refresh token was rotated; `generation` counts rotations (1 = first).
    SessionRefreshed {
        refresh_hash: Digest,
        generation: u64,
        refreshed_at: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
    },
    /// A spent refresh token was presented again: the family is compromised.
    RefreshTokenReuseDetected {
        detected_at: DateTime<Utc>,
    },
    SessionRevoked {
        reason: RevocationReason,
        revoked_at: DateTime<Utc>,
    },
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SessionStarted { .. } => "SessionStarted",
            Self::SessionRefreshed { .. } => "SessionRefreshed",
            Self::SessionReauthenticated { .. } => "SessionReauthenticated",
            Self::RefreshTokenReuseDetected { .. } => "RefreshTokenReuseDetected",
            Self::SessionRevoked { .. } => "SessionRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
