//! The OpenAPI 3.1 document (utoipa), served at `/openapi.json` and browsed
//! at `/docs`. Every route is listed here; a test checks none is missing.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{auth, challenges, meta, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "streamforge", description = "Identity and social audio backend (event-sourced CQRS)."),
    paths(
        auth::register, auth::verify_email, auth::resend_verification, auth::login, auth::verify_otp, auth::refresh,
        auth::logout, auth::session, auth::request_otp, auth::resend_otp,
        auth::password_reset_request, auth::password_reset_verify, auth::password_reset_complete,
        crate::routes::sessions::list_sessions, crate::routes::sessions::list_devices,
        crate::routes::sessions::delete_session, crate::routes::sessions::logout_all,
        crate::routes::sessions::check_session, crate::routes::sessions::reauthenticate,
        crate::routes::sessions::reauthenticate_code,
        users::add_phone, users::remove_phone, users::verify_phone, users::set_two_factor, challenges::get_challenge, users::get_me, users::put_me,
        meta::jwks, meta::live, meta::ready,
        crate::routes::factors::set_pin, crate::routes::factors::verify_pin, crate::routes::factors::delete_pin,
        crate::routes::factors::start_totp, crate::routes::factors::confirm_totp, crate::routes::factors::disable_totp,
        crate::routes::factors::verify_recovery_code,
        crate::routes::social::graph::follow, crate::routes::social::graph::unfollow,
        crate::routes::social::graph::block, crate::routes::social::graph::unblock,
        crate::routes::social::graph::mute, crate::routes::social::graph::unmute,
        crate::routes::social::graph::followers, crate::routes::social::graph::following,
        crate::routes::social::graph::blocks, crate::routes::social::graph::suggestions,
        crate::routes::social::profiles::get_profile, crate::routes::social::profiles::get_profile_by_username,
        crate::routes::social::profiles::put_username, crate::routes::social::profiles::resolve,
        crate::routes::catalog::tracks::create_track, crate::routes::catalog::tracks::get_track,
        crate::routes::catalog::tracks::update_track, crate::routes::catalog::tracks::delete_track,
        crate::routes::catalog::tracks::list_user_tracks,
        crate::routes::social::engagement::like, crate::routes::social::engagement::unlike,
        crate::routes::social::engagement::repost, crate::routes::social::engagement::unrepost,
        crate::routes::social::engagement::likers, crate::routes::social::engagement::user_likes,
        crate::routes::social::engagement::user_reposts, crate::routes::social::engagement::post_comment,
        crate::routes::social::engagement::list_comments, crate::routes::social::engagement::delete_comment,
        crate::routes::social::notifications::list, crate::routes::social::notifications::unread,
        crate::routes::social::notifications::mark_read, crate::routes::social::feed::feed,
        crate::routes::social::stream::stream,
        crate::routes::admin::roles::permissions, crate::routes::admin::roles::list_roles,
        crate::routes::admin::roles::define_role, crate::routes::admin::roles::get_role,
        crate::routes::admin::roles::update_role, crate::routes::admin::roles::delete_role,
        crate::routes::admin::roles::grant_role, crate::routes::admin::roles::revoke_role,
        crate::routes::admin::roles::search_users, crate::routes::admin::roles::my_roles,
        crate::routes::admin::moderation::file_report, crate::routes::admin::moderation::list_reports,
        crate::routes::admin::moderation::take_action, crate::routes::admin::moderation::audit,
        crate::routes::admin::moderation::subject_history,
        crate::routes::admin::history::list_events, crate::routes::admin::history::aggregate_as_of,
        crate::routes::admin::projections::status, crate::routes::admin::projections::rebuild, crate::routes::admin::history::event_types,
        crate::routes::passkeys::register_start, crate::routes::passkeys::register_finish, crate::routes::passkeys::login_start, crate::routes::passkeys::login_finish, crate::routes::passkeys::list_passkeys, crate::routes::passkeys::delete_passkey,
    ),
    components(schemas(crate::error::ErrorBody, auth::TokenResponse, auth::SecondFactorResponse)),
    modifiers(&BearerAuth, &CommonErrors),
    tags((name = "auth"), (name = "users"), (name = "social"), (name = "tracks"), (name = "engagement"), (name = "meta"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
    }
}

/// Documents the answers every operation of a kind can give, whatever its
/// handler: for a JSON request body 400 `malformed_json`, 413
/// `payload_too_large`, 415 `unsupported_media_type` and 422
/// `invalid_body` (`crate::extract::ValidJson`); for a bearer-protected
/// operation 401; for `/api/auth/*` 429 `rate_limited` with Retry-After
/// (`crate::ratelimit`). Schemathesis checks every answer against this.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::HttpMethod;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let rate_limited = path.starts_with("/api/auth/");
            for method in
                [HttpMethod::Get, HttpMethod::Post, HttpMethod::Put, HttpMethod::Delete, HttpMethod::Patch]
            {
                let operation = match method {
                    HttpMethod::Get => item.get.as_mut(),
                    HttpMethod::Post => item.post.as_mut(),
                    HttpMethod::Put => item.put.as_mut(),
                    HttpMethod::Delete => item.delete.as_mut(),
                    HttpMethod::Patch => item.patch.as_mut(),
                    _ => None,
                };
                let Some(operation) = operation else { continue };
                let mut add = |status: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                if operation.request_body.is_some() {
                    add("400", "malformed_json: the body is not valid JSON");
                    add("413", "payload_too_large: the body is over 64 KiB");
                    add("415", "unsupported_media_type: send Content-Type: application/json");
                    add("422", "invalid_body or validation_failed");
                }
                let bearer = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                if bearer {
                    add("401", "missing, invalid, expired or revoked access token");
                }
                if rate_limited {
                    add("429", "rate_limited (per client IP) or too_many_attempts; see Retry-After");
                }
            }
        }
    }
}
