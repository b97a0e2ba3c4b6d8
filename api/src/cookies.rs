//! The service's cookies, built and read with axum-extra's cookie types
//! (STYLE 14) rather than by hand: `__Host-` names, so always `Secure`,
//! `Path=/` and no `Domain`; `HttpOnly`; `SameSite=Strict` (ASVS 3.3).

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};

/// The value of cookie `name` the request carries, if any.
pub fn read(headers: &HeaderMap, name: &str) -> Option<String> {
    CookieJar::from_headers(headers).get(name).map(|c| c.value().to_owned())
}

/// Adds `Set-Cookie: name=value` living `max_age_secs` seconds (0 deletes it)
/// to `res`, beside any cookie already set.
pub fn set(res: &mut Response, name: &'static str, value: String, max_age_secs: i64) {
    let cookie = Cookie::build((name, value))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(max_age_secs.max(0)))
        .build();
    if let Ok(v) = HeaderValue::from_str(&cookie.encoded().to_string()) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[test]
    fn cookies_carry_every_attribute_and_read_back() {
        let mut res = ().into_response();
        set(&mut res, "__Host-refresh", "rt1.a.b".to_owned(), 60);
        set(&mut res, "__Host-device", "dc1.x".to_owned(), 0);
        let set: Vec<&str> =
            res.headers().get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
        assert_eq!(set.len(), 2);
        for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
            assert!(set.iter().all(|c| c.contains(attr)), "{set:?} lacks {attr}");
        }
        assert!(set[0].starts_with("__Host-refresh=rt1.a.b") && set[0].contains("Max-Age=60"), "{}", set[0]);
        assert!(set[1].contains("Max-Age=0"), "{}", set[1]);
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-device=dc1.x; b=2"));
        assert_eq!(read(&headers, "__Host-device").as_deref(), Some("dc1.x"));
        assert_eq!(read(&headers, "__Host-refresh"), None);
    }
}
