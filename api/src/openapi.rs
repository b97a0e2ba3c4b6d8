//! The OpenAPI 3.1 document (utoipa), served at `/openapi.json` and browsed
//! at `/docs`. Every route is listed here; a test checks none is missing.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{auth, challenges, meta, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "streamforge", description = "Identity and social audio backend (event-sourced CQRS)."),
    paths(
        auth::register, auth::verify_email, auth::login, auth::verify_otp, auth::refresh,
        auth::logout, auth::session, auth::request_otp, auth::resend_otp,
        auth::password_reset_request, auth::password_reset_verify, auth::password_reset_complete,
        crate::routes::sessions::list_sessions, crate::routes::sessions::list_devices,
        crate::routes::sessions::delete_session, crate::routes::sessions::logout_all,
        crate::routes::sessions::check_session, crate::routes::sessions::reauthenticate,
        crate::routes::sessions::reauthenticate_code,
        users::add_phone, users::verify_phone, users::set_two_factor, challenges::get_challenge, users::get_me, users::put_me,
        meta::jwks, meta::live, meta::ready,
        crate::routes::factors::set_pin, crate::routes::factors::verify_pin, crate::routes::factors::delete_pin,
        crate::routes::factors::start_totp, crate::routes::factors::confirm_totp, crate::routes::factors::disable_totp,
        crate::routes::factors::verify_recovery_code,
        crate::routes::passkeys::register_start, crate::routes::passkeys::register_finish, crate::routes::passkeys::login_start, crate::routes::passkeys::login_finish, crate::routes::passkeys::list_passkeys, crate::routes::passkeys::delete_passkey,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth),
    tags((name = "auth"), (name = "users"), (name = "meta"))
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
