//! The `Track` aggregate: a track's metadata, visibility and lifecycle.
//! Aggregate id = the track id (UUID). Audio arrives with the media issue;
//! the processing state is part of the model already ([`Processing`]).
//!
//! Title, description, genre and tags are public content the owner
//! published, not personal data: they are not sealed. The secret token of
//! a private track is a capability: sealed with the owner's key.

mod aggregate;
mod values;

pub use aggregate::{Track, TrackCommand, TrackError, TrackEvent, TrackPatch};
pub use values::{slugify, Processing, TrackMetadata, Visibility, MAX_DURATION_MS, MAX_TAGS};

#[cfg(test)]
mod tests;
