//! The axum application: routes, body limit, security headers on every
//! response (the helmet set; SECURITY.md), request ids, tracing, and JSON
//! answers for unknown routes and wrong methods.

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;
use crate::extract::MAX_BODY_BYTES;
use crate::openapi::ApiDoc;
use crate::routes;
use crate::state::AppState;

/// CSP of the API: nothing may load, nothing may frame it.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
/// CSP of the Swagger UI page (its own scripts and styles only).
const DOCS_CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                        script-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The whole router with its layers.
pub fn router(state: AppState) -> Router {
    let docs = Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi())).layer(
        SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(DOCS_CSP),
        ),
    );
    let request_id = HeaderName::from_static("x-request-id");
    let app = Router::new()
        .merge(routes::auth::router())
        .merge(routes::challenges::router())
        .merge(routes::users::router())
        .merge(routes::sessions::router())
        .merge(routes::factors::router())
        .merge(routes::passkeys::router())
        .merge(routes::meta::router())
        .merge(routes::social::graph::router())
        .merge(routes::social::profiles::router())
        .merge(routes::catalog::tracks::router())
        .merge(routes::social::engagement::router())
        .merge(routes::social::notifications::router())
        .merge(routes::social::feed::router())
        .merge(routes::social::stream::router())
        .merge(routes::admin::roles::router())
        .merge(routes::admin::moderation::router())
        .merge(routes::admin::history::router())
        .merge(routes::admin::projections::router())
        .with_state(state)
        .merge(docs)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(peer_ip))
        .layer(axum::middleware::from_fn(crate::metrics::record_http));
    with_security_headers(app)
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            // Path only: query strings may carry personal data.
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(),
                request_id = ?req.headers().get("x-request-id"))
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::from_fn(server_request_id))
}

/// The header a client's own `X-Request-Id` is kept in (issue 18).
pub const CLIENT_REQUEST_ID: &str = "x-client-request-id";

/// The request id is the server's (issue 18: never trusted as an
/// identifier): a client's `X-Request-Id` moves to `X-Client-Request-Id`
/// (printable ASCII, at most 64 characters, else dropped) and the id layer
/// inside makes a fresh UUID.
async fn server_request_id(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let headers = req.headers_mut();
    headers.remove(CLIENT_REQUEST_ID);
    if let Some(v) = headers.remove("x-request-id") {
        let ok = v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic()));
        if let Some(v) = ok.and_then(|s| HeaderValue::from_str(s).ok()) {
            headers.insert(CLIENT_REQUEST_ID, v);
        }
    }
    next.run(req).await
}

/// Replaces any client-sent peer header with the client's IP
/// ([`crate::client_ip`]: the connection's, or a trusted proxy's report) truncated
/// to /24 (IPv4) or /48 (IPv6): enough to recognise a network in the
/// sessions list, not a person.
async fn peer_ip(mut req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use std::net::IpAddr;
    req.headers_mut().remove(routes::auth::PEER_PREFIX_HEADER);
    let peer = Some(crate::client_ip::ClientIp::of(&req));
    let prefix = peer.map(|ip| match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    });
    if let Some(v) = prefix.and_then(|p| HeaderValue::from_str(&p).ok()) {
        req.headers_mut().insert(routes::auth::PEER_PREFIX_HEADER, v);
    }
    next.run(req).await
}

/// Middleware: answers 503 `request_timeout` (JSON, `Retry-After: 1`) when
/// a request takes longer than `limit` (`REQUEST_TIMEOUT_SECS`); the
/// handler is dropped, as on a lost connection.
pub async fn time_limit(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                "the request took too long",
            );
            err.retry_after = Some(1);
            err.into_response()
        }
    }
}

/// The routes that run argon2 (register, login, reset, password step-up,
/// PIN set and sign-in).
const HASHING_ROUTES: [&str; 6] = [
    "/api/auth/register",
    "/api/auth/login",
    "/api/auth/password-reset/complete",
    "/api/auth/reauthenticate",
    "/api/auth/pin",
    "/api/auth/pin/verify",
];

/// Middleware: a request to a [`HASHING_ROUTES`] route while more than
/// `max_queued` hashes wait for a thread is answered 503
/// `hashing_busy` with `Retry-After: 1` before any work (the queue stays
/// bounded; a burst is shed, not queued without end).
pub async fn shed_hashing(
    axum::extract::State((hasher, max_queued)): axum::extract::State<(
        commands::passwords::PasswordHasher,
        usize,
    )>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.method() == axum::http::Method::POST
        && HASHING_ROUTES.contains(&req.uri().path())
        && hasher.queued() >= max_queued
    {
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "hashing_busy",
            "too many sign-ins at once; retry in a moment",
        );
        err.retry_after = Some(1);
        return err.into_response();
    }
    next.run(req).await
}

/// The security headers of every answer (the helmet set; SECURITY.md).
const SECURITY_HEADERS: [(HeaderName, &str); 8] = [
    (header::STRICT_TRANSPORT_SECURITY, "max-age=63072000; includeSubDomains"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CONTENT_SECURITY_POLICY, API_CSP),
    (HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
    (HeaderName::from_static("cross-origin-resource-policy"), "same-origin"),
    (header::CACHE_CONTROL, "no-store"),
];

/// Sets each security header unless the route already set its own: one
/// layer for all eight (eight nested layers cost each request eight more
/// futures on the hot path of the cheapest reads).
fn with_security_headers(router: Router) -> Router {
    router.layer(axum::middleware::map_response(set_security_headers))
}

async fn set_security_headers(mut res: axum::response::Response) -> axum::response::Response {
    let headers = res.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    res
}

async fn not_found() -> impl IntoResponse {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}
