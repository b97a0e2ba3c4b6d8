//! The notifier's error types, shared by the notifier and the senders
//! (mail in [`crate::notify`], SMS in [`crate::sms`]) without an import
//! circle between them.

use commands::deliveries::DeliveryError;

/// Notifier failures: infrastructure only. A failed send is not an error of
/// the notifier; it is scheduled again or recorded (see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Invalid mail, SMS or sender configuration; not retryable.
    #[error("invalid notifier configuration: {0}")]
    Config(String),
    /// A delivery record could not be read or deleted.
    #[error("delivery record error")]
    Delivery(#[from] DeliveryError),
    /// A claim or schedule statement on `deliveries` failed.
    #[error("delivery database error")]
    Database(#[from] sqlx::Error),
    /// The event feed failed.
    #[error("event feed failed")]
    Feed(#[from] projections::feed::FeedError),
}

/// Why one send did not go through. The reason is secret-free: a channel
/// prefix and status or provider error codes (`smtp: 451`,
/// `twilio: 400 code 21211`), never a recipient or a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt later: SMTP 4xx, HTTP 5xx/408/429, network
    /// errors, timeouts.
    #[error("{0}")]
    Retryable(String),
    /// Retrying will not help: SMTP 5xx, other HTTP 4xx, malformed recipient,
    /// unsupported channel.
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    /// The secret-free reason.
    pub fn reason(&self) -> &str {
        match self {
            Self::Retryable(r) | Self::Permanent(r) => r,
        }
    }
}
