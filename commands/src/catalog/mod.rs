//! The catalog write side (ARCHITECTURE decided 15): tracks' metadata.
//! Slugs are unique per owner through the reservation table (decided 8);
//! a private track's secret token (256 random bits) is sealed with the
//! owner's key in its events.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use domain::catalog::track::{
    slugify, Track, TrackCommand, TrackError, TrackMetadata, TrackPatch, Visibility,
};
use domain::consistency::ConsistencyToken;
use domain::values::{Digest, Sealed};
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

use crate::executor::{ExecError, Executor};
use crate::identity::RequestMeta;
use crate::keys::{hmac_hex, Secret32};
use crate::reservations::{self, Claim, ReservationKind};
use crate::vault::Vault;

/// Slug candidates tried (`slug`, `slug-2`, … `slug-20`) before a random
/// suffix is used.
const SLUG_TRIES: u32 = 20;

/// Why a track command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// 404 `track_not_found` (also for a deleted track).
    #[error("no such track")]
    NotFound,
    /// 403 `not_track_owner`.
    #[error("only the track's owner may do this")]
    NotOwner,
    /// 409 `conflict`.
    #[error("changed concurrently; retry")]
    Conflict,
    /// 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ExecError<TrackError>> for CatalogError {
    fn from(e: ExecError<TrackError>) -> Self {
        match e {
            ExecError::Domain(TrackError::NotFound) => Self::NotFound,
            ExecError::Domain(TrackError::NotOwner) => Self::NotOwner,
            ExecError::Domain(e @ TrackError::AlreadyExists) => Self::Internal(e.to_string()),
            ExecError::Conflict => Self::Conflict,
            ExecError::Store(e) => Self::Internal(e),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Internal(e.to_string())
}

/// A track command's outcome.
#[derive(Debug, Clone)]
pub struct TrackWritten {
    /// The track's state afterwards.
    pub track: Track,
    /// The secret token in clear, for the owner (private tracks).
    pub secret_token: Option<String>,
    /// The read-your-writes token of the last event, if any.
    pub token: Option<ConsistencyToken>,
}

/// The catalog write side.
pub struct CatalogService {
    pool: PgPool,
    tracks: Executor<Track>,
    vault: Arc<Vault>,
    lookup: Secret32,
}

impl CatalogService {
    /// A service over `pool`; `lookup` keys the slug reservations' hashes.
    pub fn new(pool: PgPool, vault: Arc<Vault>, lookup: Secret32) -> Self {
        Self { tracks: Executor::new(pool.clone(), ()), pool, vault, lookup }
    }

    fn slug_hash(&self, owner: Uuid, slug: &str) -> Digest {
        Digest(hmac_hex(&self.lookup, &[b"track_slug:", owner.as_bytes(), slug.as_bytes()]))
    }

    /// A new secret token: 256 random bits, URL-safe base64 (43 characters).
    fn new_secret_token() -> String {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reserves the first free slug of `title` for `owner`: `slug`,
    /// `slug-2`, … then `slug-<random>`.
    async fn claim_slug(&self, owner: Uuid, track_id: Uuid, title: &str) -> Result<String, CatalogError> {
        let base = slugify(title);
        let mut candidates: Vec<String> =
            std::iter::once(base.clone()).chain((2..=SLUG_TRIES).map(|n| format!("{base}-{n}"))).collect();
        candidates.push(format!("{base}-{}", &track_id.simple().to_string()[..8]));
        for slug in candidates {
            let hash = self.slug_hash(owner, &slug);
            match reservations::claim(&self.pool, ReservationKind::TrackSlug, &hash, track_id)
                .await
                .map_err(internal)?
            {
                Claim::Claimed => return Ok(slug),
                Claim::Taken { owner: holder } if holder == track_id => return Ok(slug),
                Claim::Taken { .. } => {}
            }
        }
        Err(internal("no free slug"))
    }

    /// Publishes a track for `owner`.
    ///
    /// # Errors
    /// `Conflict`, `Internal`.
    #[tracing::instrument(skip_all, fields(owner = %owner))]
    pub async fn create(
        &self,
        owner: Uuid,
        metadata: TrackMetadata,
        visibility: Visibility,
        meta: &RequestMeta,
    ) -> Result<TrackWritten, CatalogError> {
        let track_id = Uuid::now_v7();
        let slug = self.claim_slug(owner, track_id, &metadata.title).await?;
        let (secret, sealed) = match visibility {
            Visibility::Private => {
                let (clear, sealed) = self.sealed_token(owner).await?;
                (Some(clear), Some(sealed))
            }
            Visibility::Public => (None, None),
        };
        let cmd = TrackCommand::Create {
            track_id,
            owner_id: owner,
            slug: slug.clone(),
            metadata,
            visibility,
            secret_token: sealed,
            at: Utc::now(),
        };
        match self.tracks.execute_new(&track_id.to_string(), cmd, meta.to_map("CreateTrack")).await {
            Ok(done) => Ok(TrackWritten { track: done.state, secret_token: secret, token: done.token }),
            Err(e) => {
                let hash = self.slug_hash(owner, &slug);
                let _ = reservations::release(&self.pool, ReservationKind::TrackSlug, &hash, track_id).await;
                Err(e.into())
            }
        }
    }

    async fn sealed_token(&self, owner: Uuid) -> Result<(String, Sealed), CatalogError> {
        let clear = Self::new_secret_token();
        self.vault.ensure_key(owner).await.map_err(internal)?;
        let sealed = self.vault.seal(owner, &clear).await.map_err(internal)?;
        Ok((clear, sealed))
    }

    /// Changes `track_id`'s metadata as `actor` (the owner only).
    ///
    /// # Errors
    /// `NotFound`, `NotOwner`, `Conflict`, `Internal`.
    #[tracing::instrument(skip_all, fields(track_id = %track_id))]
    pub async fn update(
        &self,
        actor: Uuid,
        track_id: Uuid,
        patch: TrackPatch,
        meta: &RequestMeta,
    ) -> Result<TrackWritten, CatalogError> {
        // A track turning private without a token gets one (sealed with
        // the actor's key; used only if the actor is the owner).
        let sealed = match patch.visibility {
            Some(Visibility::Private) => Some(self.sealed_token(actor).await?.1),
            _ => None,
        };
        let cmd = TrackCommand::Update { actor, patch, secret_token: sealed, at: Utc::now() };
        let done = self.tracks.execute(&track_id.to_string(), cmd, meta.to_map("UpdateTrack")).await?;
        let secret = self.open_token(&done.state).await?;
        Ok(TrackWritten { track: done.state, secret_token: secret, token: done.token })
    }

    /// Deletes `track_id` as `actor` (the owner only): a tombstone event.
    ///
    /// # Errors
    /// `NotFound`, `NotOwner`, `Conflict`, `Internal`.
    #[tracing::instrument(skip_all, fields(track_id = %track_id))]
    pub async fn delete(
        &self,
        actor: Uuid,
        track_id: Uuid,
        meta: &RequestMeta,
    ) -> Result<TrackWritten, CatalogError> {
        let cmd = TrackCommand::Delete { actor, at: Utc::now() };
        let done = self.tracks.execute(&track_id.to_string(), cmd, meta.to_map("DeleteTrack")).await?;
        Ok(TrackWritten { track: done.state, secret_token: None, token: done.token })
    }

    /// The track as the store has it.
    ///
    /// # Errors
    /// `Internal`.
    pub async fn load(&self, track_id: Uuid) -> Result<Track, CatalogError> {
        self.tracks.load(&track_id.to_string()).await.map_err(internal)
    }

    /// The secret token of `track` in clear (private tracks; `None` when
    /// there is none or the owner's key is erased).
    ///
    /// # Errors
    /// `Internal`.
    pub async fn open_token(&self, track: &Track) -> Result<Option<String>, CatalogError> {
        match (track.owner_id, &track.secret_token) {
            (Some(owner), Some(sealed)) => self.vault.open(owner, sealed).await.map_err(internal),
            _ => Ok(None),
        }
    }

    /// Opens a read model's sealed token of `owner`'s track.
    ///
    /// # Errors
    /// `Internal`.
    pub async fn open_sealed_token(&self, owner: Uuid, sealed: &str) -> Result<Option<String>, CatalogError> {
        self.vault.open(owner, &Sealed(sealed.to_owned())).await.map_err(internal)
    }
}
