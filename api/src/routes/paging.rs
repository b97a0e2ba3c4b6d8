//! Keyset paging shared by every list of the API: `limit` 1–100 (default
//! 50) and a cursor `<microseconds since epoch>_<uuid>` naming the last
//! item's time and id (the format of `projections::social::graph::EdgeCursor`,
//! the one implementation). New items never shift later pages.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use projections::social::graph::EdgeCursor;
use uuid::Uuid;

use crate::error::ApiError;

/// A position in a list: the item's time and id.
pub type Position = (DateTime<Utc>, Uuid);

/// Most items per page.
pub const MAX_PAGE: i64 = 100;
/// Items per page when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 50;

/// 422 `validation_failed` naming `field`.
pub fn invalid(field: &'static str, message: &str) -> ApiError {
    let mut e =
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", format!("{field} {message}"));
    e.field = Some(field);
    e
}

/// The page size asked for, or 422 naming `limit`.
///
/// # Errors
/// 422 `validation_failed` (`limit`) outside 1–100.
pub fn limit(raw: Option<i64>) -> Result<i64, ApiError> {
    let limit = raw.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid("limit", "must be 1 to 100"));
    }
    Ok(limit)
}

/// The position a client's cursor names (time, id), or 422 naming `cursor`.
///
/// # Errors
/// 422 `validation_failed` (`cursor`) for anything this API did not issue.
pub fn keyset(raw: Option<&str>) -> Result<Option<Position>, ApiError> {
    raw.map(|c| {
        EdgeCursor::parse(c)
            .map(|c| (c.since, c.user_id))
            .ok_or_else(|| invalid("cursor", "is not a cursor of this list"))
    })
    .transpose()
}

/// The next page's cursor: the last row's position when the page is full.
pub fn next_cursor<T>(rows: &[T], limit: i64, key: impl Fn(&T) -> Position) -> Option<String> {
    if rows.len() as i64 != limit {
        return None;
    }
    rows.last().map(|r| {
        let (since, user_id) = key(r);
        EdgeCursor { since, user_id }.encode()
    })
}
