//! The error of one projector on one envelope, shared by the live runtime
//! ([`crate::runtime`]) and the rebuild ([`crate::rebuild`]) without an
//! import circle between them.

use domain::envelope::Envelope;

/// A failure of one projector on one envelope.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A read-model or checkpoint statement failed.
    #[error("read-model database error")]
    Database(#[from] sqlx::Error),
    /// The payload does not match the projector's event type.
    #[error("cannot decode event `{event_type}` version {event_version}")]
    Decode {
        /// `Envelope::event_type`.
        event_type: String,
        /// `Envelope::event_version`.
        event_version: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Anything else (e.g. a sealed field that cannot be handled).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl ProjectionError {
    /// A [`ProjectionError::Decode`] for `envelope`.
    pub fn decode(envelope: &Envelope, source: serde_json::Error) -> Self {
        Self::Decode {
            event_type: envelope.event_type.clone(),
            event_version: envelope.event_version.clone(),
            source,
        }
    }
}
