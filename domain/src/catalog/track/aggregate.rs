use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Processing, TrackMetadata, Visibility};
use crate::values::Sealed;

/// A change of a track's metadata; `None` leaves a field as it is. Fields
/// are validated by the caller ([`TrackMetadata`]'s rules).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TrackPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genre: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
}

/// Commands on a `Track`.
#[derive(Debug, Clone)]
pub enum TrackCommand {
    /// Publish a track. `slug` is already unique for the owner (reserved by
    /// the caller); a private track comes with its sealed secret token.
    Create {
        track_id: Uuid,
        owner_id: Uuid,
        slug: String,
        metadata: TrackMetadata,
        visibility: Visibility,
        secret_token: Option<Sealed>,
        at: DateTime<Utc>,
    },
    /// Change metadata or visibility; only the owner. `secret_token` is the
    /// token to use if the track becomes private and has none yet.
    Update { actor: Uuid, patch: TrackPatch, secret_token: Option<Sealed>, at: DateTime<Utc> },
    /// Delete (tombstone): read models drop the track; only the owner.
    Delete { actor: Uuid, at: DateTime<Utc> },
}

/// Events of the `Track` aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TrackEvent {
    TrackCreated {
        track_id: Uuid,
        owner_id: Uuid,
        slug: String,
        title: String,
        description: String,
        genre: String,
        tags: Vec<String>,
        duration_ms: i64,
        visibility: Visibility,
        /// Sealed with the owner's key; present for private tracks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_token: Option<Sealed>,
        processing: Processing,
        created_at: DateTime<Utc>,
    },
    TrackUpdated {
        #[serde(flatten)]
        patch: TrackPatch,
        /// A new secret token (sealed), when the track became private
        /// without one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_token: Option<Sealed>,
        updated_at: DateTime<Utc>,
    },
    TrackDeleted {
        deleted_at: DateTime<Utc>,
    },
}

impl DomainEvent for TrackEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TrackCreated { .. } => "TrackCreated",
            Self::TrackUpdated { .. } => "TrackUpdated",
            Self::TrackDeleted { .. } => "TrackDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Refusals of the `Track` aggregate. `code()` is the API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    #[error("the track already exists")]
    AlreadyExists,
    #[error("no such track")]
    NotFound,
    #[error("only the track's owner may do this")]
    NotOwner,
}

impl TrackError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "track_exists",
            Self::NotFound => "track_not_found",
            Self::NotOwner => "not_track_owner",
        }
    }
}

/// State of one track.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    pub id: Option<Uuid>,
    pub owner_id: Option<Uuid>,
    pub slug: String,
    pub metadata: Option<TrackMetadata>,
    pub visibility: Option<Visibility>,
    pub secret_token: Option<Sealed>,
    pub processing: Processing,
    pub created_at: Option<DateTime<Utc>>,
    pub deleted: bool,
}

impl Track {
    fn owned_by(&self, actor: Uuid) -> Result<(), TrackError> {
        match self.owner_id {
            None => Err(TrackError::NotFound),
            Some(_) if self.deleted => Err(TrackError::NotFound),
            Some(owner) if owner != actor => Err(TrackError::NotOwner),
            Some(_) => Ok(()),
        }
    }
}

impl Aggregate for Track {
    const TYPE: &'static str = "track";
    type Command = TrackCommand;
    type Event = TrackEvent;
    type Error = TrackError;
    type Services = ();

    async fn handle(
        &mut self,
        command: TrackCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), TrackError> {
        match command {
            TrackCommand::Create { track_id, owner_id, slug, metadata, visibility, secret_token, at } => {
                if self.id.is_some() {
                    return Err(TrackError::AlreadyExists);
                }
                let secret_token = secret_token.filter(|_| visibility == Visibility::Private);
                let TrackMetadata { title, description, genre, tags, duration_ms } = metadata;
                let event = TrackEvent::TrackCreated {
                    track_id,
                    owner_id,
                    slug,
                    title,
                    description,
                    genre,
                    tags,
                    duration_ms,
                    visibility,
                    secret_token,
                    processing: Processing::NoAudio,
                    created_at: at,
                };
                sink.write(event, self).await;
            }
            TrackCommand::Update { actor, patch, secret_token, at } => {
                self.owned_by(actor)?;
                let current = self.metadata.clone().unwrap_or_else(|| TrackMetadata {
                    title: String::new(),
                    description: String::new(),
                    genre: String::new(),
                    tags: Vec::new(),
                    duration_ms: 0,
                });
                // Only what actually changes is recorded.
                let patch = TrackPatch {
                    title: patch.title.filter(|t| *t != current.title),
                    description: patch.description.filter(|d| *d != current.description),
                    genre: patch.genre.filter(|g| *g != current.genre),
                    tags: patch.tags.filter(|t| *t != current.tags),
                    duration_ms: patch.duration_ms.filter(|d| *d != current.duration_ms),
                    visibility: patch.visibility.filter(|v| Some(*v) != self.visibility),
                };
                if patch == TrackPatch::default() {
                    return Ok(());
                }
                let needs_token =
                    patch.visibility == Some(Visibility::Private) && self.secret_token.is_none();
                let secret_token = secret_token.filter(|_| needs_token);
                sink.write(TrackEvent::TrackUpdated { patch, secret_token, updated_at: at }, self).await;
            }
            TrackCommand::Delete { actor, at } => {
                self.owned_by(actor)?;
                sink.write(TrackEvent::TrackDeleted { deleted_at: at }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: TrackEvent) {
        match event {
            TrackEvent::TrackCreated {
                track_id,
                owner_id,
                slug,
                title,
                description,
                genre,
                tags,
                duration_ms,
                visibility,
                secret_token,
                processing,
                created_at,
            } => {
                self.id = Some(track_id);
                self.owner_id = Some(owner_id);
                self.slug = slug;
                self.metadata = Some(TrackMetadata { title, description, genre, tags, duration_ms });
                self.visibility = Some(visibility);
                self.secret_token = secret_token;
                self.processing = processing;
                self.created_at = Some(created_at);
            }
            TrackEvent::TrackUpdated { patch, secret_token, .. } => {
                if let Some(m) = self.metadata.as_mut() {
                    if let Some(t) = patch.title {
                        m.title = t;
                    }
                    if let Some(d) = patch.description {
                        m.description = d;
                    }
                    if let Some(g) = patch.genre {
                        m.genre = g;
                    }
                    if let Some(t) = patch.tags {
                        m.tags = t;
                    }
                    if let Some(d) = patch.duration_ms {
                        m.duration_ms = d;
                    }
                }
                if let Some(v) = patch.visibility {
                    self.visibility = Some(v);
                }
                if secret_token.is_some() {
                    self.secret_token = secret_token;
                }
            }
            TrackEvent::TrackDeleted { .. } => self.deleted = true,
        }
    }
}
