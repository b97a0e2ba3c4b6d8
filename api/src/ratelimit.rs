//! Per-IP rate limit on every route that sends a message or reserves a
//! subject — every `/api/auth/*` route and adding a phone (governor, GCRA): an
//! extra layer on top of the per-account and per-recipient throttles, which
//! are the real defence (SECURITY.md "Count failures per account, not only
//! per IP"). Over the limit: 429 `rate_limited` with `Retry-After` seconds.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// The limiter shared by the HTTP workers of one process.
pub struct IpRateLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl IpRateLimit {
    /// `per_minute` requests per IP per minute, bursts of `burst`; `None`
    /// if either is 0 (disabled).
    pub fn new(per_minute: u32, burst: u32) -> Option<Arc<Self>> {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute)?).allow_burst(NonZeroU32::new(burst)?);
        let this = Arc::new(Self { limiter: RateLimiter::keyed(quota), clock: DefaultClock::default() });
        // Forget idle IPs so the table stays small.
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { break };
                this.limiter.retain_recent();
                this.limiter.shrink_to_fit();
            }
        });
        Some(this)
    }

    /// `Err(seconds to wait)` when `ip` is over its quota.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.limiter.check_key(&ip).map_err(|not_until| {
            not_until.wait_time_from(self.clock.now()).as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

/// Whether a request is under the per-IP limit: every `/api/auth/*` route
/// (codes, registration, sign-in) and every other route that sends a
/// message or reserves a subject (adding and verifying a phone).
fn limited(method: &Method, path: &str) -> bool {
    path.starts_with("/api/auth/") || (method == Method::POST && path.starts_with("/api/users/me/phone"))
}

/// Middleware: limits the routes [`limited`] names by the connection's IP.
pub async fn limit_auth(State(limit): State<Arc<IpRateLimit>>, req: Request, next: Next) -> Response {
    if !limited(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let ip = crate::client_ip::ClientIp::of(&req);
    match limit.check(ip) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this address",
            );
            err.retry_after = Some(i64::try_from(wait).unwrap_or(i64::MAX));
            err.into_response()
        }
    }
}
