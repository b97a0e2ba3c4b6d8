//! Handler state: the write side (`identity`) and the read side (`read`, a
//! pool used only for read-model queries) kept apart.

use std::sync::Arc;

use commands::tokens::TokenIssuer;
use commands::IdentityService;
use sqlx::PgPool;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Write side: command flows.
    pub identity: Arc<IdentityService>,
    /// Read side: read-model queries only.
    pub read: PgPool,
    /// Access-token verification and JWKS.
    pub tokens: Arc<TokenIssuer>,
    /// Sessions revoked recently, learned from the event feed (every node).
    pub revoked: Arc<crate::revocations::RevokedSessions>,
    /// This node's live-update hub (SSE, `GET /api/stream`).
    pub live: Arc<crate::live::LiveHub>,
    /// Roles and permissions (write side).
    pub access: Arc<commands::access::AccessService>,
    /// Reports and moderation actions (write side).
    pub moderation: Arc<commands::moderation::ModerationService>,
    /// Passkeys (WebAuthn) write side.
    pub passkeys: Arc<commands::passkeys::PasskeyService>,
    /// Follows, blocks, mutes (write side).
    pub social: Arc<commands::social::SocialService>,
    /// Likes, reposts, comments (write side).
    pub engagement: Arc<commands::social::engagement::EngagementService>,
    /// Tracks (write side).
    pub catalog: Arc<commands::catalog::CatalogService>,
    /// Longest read-your-writes wait (`CONSISTENCY_WAIT_MS`).
    pub consistency_wait: std::time::Duration,
    /// Every projector (the home feed's included), for shadow rebuilds
    /// (`POST /api/admin/projections/{name}/rebuild`).
    pub replay: projections::runtime::ProjectionRunner,
}
