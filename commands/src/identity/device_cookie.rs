//! OWASP device cookies (Authentication cheat sheet, "Device cookies"):
//! a browser that completed a sign-in of an account gets a signed cookie
//! naming that account and a random device nonce. A password attempt that
//! presents a valid cookie of the account it is for counts its failures on
//! that device's own throttle; everyone else shares the account's. So
//! failures from elsewhere — an attacker's — never lock a known device out:
//! lockout is no denial-of-service tool (SECURITY.md "Enumeration and abuse").
//!
//! Format: `dc1.<user id, simple>.<nonce: 22 chars base64url of 128 bits>.<HMAC-SHA256, hex>`,
//! the HMAC keyed by a key derived from the server's OTP key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use uuid::Uuid;

use super::pin::factor_key;
use super::IdentityService;
use crate::keys::hmac_hex;

/// Name of the device cookie (`__Host-`: Secure, Path=/, no Domain).
pub const DEVICE_COOKIE: &str = "__Host-device";
/// Lifetime of a device cookie, in seconds (1 year).
pub const DEVICE_COOKIE_TTL_SECS: i64 = 365 * 86_400;

impl IdentityService {
    fn device_mac(&self, user_id: Uuid, nonce: &str) -> String {
        hmac_hex(&factor_key(&self.keys, "device-cookie"), &[user_id.as_bytes(), nonce.as_bytes()])
    }

    /// A new device cookie value for `user_id` (after a complete sign-in).
    pub fn new_device_cookie(&self, user_id: Uuid) -> String {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        let nonce = URL_SAFE_NO_PAD.encode(b);
        let mac = self.device_mac(user_id, &nonce);
        format!("dc1.{}.{nonce}.{mac}", user_id.simple())
    }

    /// The device nonce of `cookie` if it is a valid device cookie of
    /// `user_id` (constant-time comparison of the HMAC).
    pub fn device_of(&self, user_id: Uuid, cookie: &str) -> Option<String> {
        let mut parts = cookie.split('.');
        let (Some("dc1"), Some(user), Some(nonce), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if Uuid::try_parse(user).ok()? != user_id || nonce.len() != 22 {
            return None;
        }
        let expected = self.device_mac(user_id, nonce);
        bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), mac.as_bytes()))
            .then(|| nonce.to_owned())
    }
}

/// The account a device cookie names (`dc1.<user id>.…`), unchecked: check
/// it with [`IdentityService::device_of`] before believing it.
pub(crate) fn cookie_user(cookie: &str) -> Option<Uuid> {
    let mut parts = cookie.split('.');
    match (parts.next(), parts.next()) {
        (Some("dc1"), Some(user)) => Uuid::try_parse(user).ok(),
        _ => None,
    }
}
