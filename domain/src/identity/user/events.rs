use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::otp::OtpChannel;
use crate::session::RevocationReason;
use crate::values::{Digest, Sealed, Username};

/// Events of the `User` aggregate. Personal fields are [`Sealed`]; passwords
/// appear only as argon2id PHC hashes (ARCHITECTURE decided 6, 7). Events
/// that ask for a message carry the delivery record's id as `delivery_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum UserEvent {
    UserRegistered {
        user_id: Uuid,
        email: Sealed,
        email_hash: Digest,
        name: Sealed,
        password_hash: String,
        email_challenge_id: Uuid,
        registered_at: DateTime<Utc>,
    },
    /// Account created by a verified phone number; it has no password.
    UserRegisteredWithPhone {
        user_id: Uuid,
        phone: Sealed,
        phone_hash: Digest,
        challenge_id: Uuid,
        registered_at: DateTime<Utc>,
    },
    /// The handle was set (at registration, in the same append) or
    /// changed; public data, not sealed. `previous` stays held for 30 days
    /// so links to it do not move to someone else at once.
    UsernameChanged {
        username: Username,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<Username>,
        changed_at: DateTime<Utc>,
    },
    /// First and last name given at registration (seed 001), sealed.
    LegalNameSet {
        first_name: Sealed,
        last_name: Sealed,
        set_at: DateTime<Utc>,
    },
    DuplicateRegistrationAttempted {
        delivery_id: Uuid,
        attempted_at: DateTime<Utc>,
    },
    /// A session of this account replayed a spent refresh token and was
    /// revoked; `delivery_id` names the notice mail.
    RefreshTokenReuseNoticed {
        delivery_id: Uuid,
        noticed_at: DateTime<Utc>,
    },
    EmailChallengeReplaced {
        challenge_id: Uuid,
        replaced_at: DateTime<Utc>,
    },
    EmailVerified {
        challenge_id: Uuid,
        verified_at: DateTime<Utc>,
        /// The welcome mail.
        #[serde(default)]
        delivery_id: Option<Uuid>,
    },
    /// Password accepted; a two-factor challenge `challenge_id` follows.
    LoginPasswordAccepted {
        challenge_id: Uuid,
        accepted_at: DateTime<Utc>,
    },
    ProfileUpdated {
        name: Option<Sealed>,
        bio: Option<Sealed>,
        updated_at: DateTime<Utc>,
    },
    PhoneAdded {
        phone: Sealed,
        phone_hash: Digest,
        challenge_id: Uuid,
        added_at: DateTime<Utc>,
    },
    /// The pending number was verified and is now the account's phone
    /// (and login route). `phone`/`phone_hash` are absent in events written
    /// before they were added; `replaced_phone_hash` names the number it
    /// replaced, whose reservation was released by the same statement.
    PhoneVerified {
        challenge_id: Uuid,
        verified_at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<Sealed>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone_hash: Option<Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaced_phone_hash: Option<Digest>,
    },
    /// The phone (and any pending one) was removed; its reservation was
    /// released by the same statement.
    PhoneRemoved {
        phone_hash: Option<Digest>,
        removed_at: DateTime<Utc>,
    },
    /// Every session started before `revoked_before` is revoked: refresh,
    /// step-up and the bearer check refuse them (the `session_cutoffs` row
    /// written by the same statement; ARCHITECTURE decided 14).
    AllSessionsRevoked {
        reason: RevocationReason,
        revoked_before: DateTime<Utc>,
    },
    /// The registration was never verified and expired after 24 h: the
    /// account is gone, its email reservation released by the same statement.
    RegistrationExpired {
        expired_at: DateTime<Utc>,
    },
    /// Someone tried to attach this account's phone to another account;
    /// `delivery_id` names the SMS notice to the number.
    PhoneClaimAttempted {
        delivery_id: Uuid,
        attempted_at: DateTime<Utc>,
    },
    TwoFactorChannelChanged {
        channel: OtpChannel,
        changed_at: DateTime<Utc>,
    },
    PasswordResetRequested {
        challenge_id: Uuid,
        requested_at: DateTime<Utc>,
    },
    /// The password was replaced through the reset flow; every session of
    /// the account is revoked by the caller; `delivery_id` names the notice.
    PasswordReset {
        reset_id: Uuid,
        password_hash: String,
        #[serde(default)]
        delivery_id: Option<Uuid>,
        reset_at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::UserRegisteredWithPhone { .. } => "UserRegisteredWithPhone",
            Self::UsernameChanged { .. } => "UsernameChanged",
            Self::LegalNameSet { .. } => "LegalNameSet",
            Self::DuplicateRegistrationAttempted { .. } => "DuplicateRegistrationAttempted",
            Self::RefreshTokenReuseNoticed { .. } => "RefreshTokenReuseNoticed",
            Self::EmailChallengeReplaced { .. } => "EmailChallengeReplaced",
            Self::EmailVerified { .. } => "EmailVerified",
            Self::LoginPasswordAccepted { .. } => "LoginPasswordAccepted",
            Self::ProfileUpdated { .. } => "ProfileUpdated",
            Self::PhoneAdded { .. } => "PhoneAdded",
            Self::PhoneVerified { .. } => "PhoneVerified",
            Self::PhoneRemoved { .. } => "PhoneRemoved",
            Self::PhoneClaimAttempted { .. } => "PhoneClaimAttempted",
            Self::AllSessionsRevoked { .. } => "AllSessionsRevoked",
            Self::RegistrationExpired { .. } => "RegistrationExpired",
            Self::TwoFactorChannelChanged { .. } => "TwoFactorChannelChanged",
            Self::PasswordResetRequested { .. } => "PasswordResetRequested",
            Self::PasswordReset { .. } => "PasswordReset",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
