//! Value objects parsed once at the edge; an invalid value cannot be built.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an input value was refused. `field` names the JSON field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidValue {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }

    /// `field` is required (given alongside another field that needs it).
    pub fn required(field: &'static str) -> Self {
        Self::new(field, "is required")
    }
}

/// An email address, trimmed and lower-cased (the normal form used for the
/// uniqueness hash). At most 254 bytes (RFC 5321 §4.5.3.1.3).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// # Errors
    /// [`InvalidValue`] when empty, longer than 254 bytes or not an address.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim().to_lowercase();
        if s.is_empty() {
            return Err(InvalidValue::new("email", "is required"));
        }
        if s.len() > 254 {
            return Err(InvalidValue::new("email", "is longer than 254 bytes"));
        }
        if !email_address::EmailAddress::is_valid(&s) || !s.contains('.') {
            return Err(InvalidValue::new("email", "is not a valid email address"));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EmailAddress {
    // Personal data: never printed in full.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EmailAddress(<redacted>)")
    }
}

/// A phone number in E.164 form (`+14155550123`), parsed and validated with
/// the `phonenumber` crate (libphonenumber metadata). Input must carry the
/// country code (`+…`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    e164: String,
    /// Country calling code (`1`, `44`, …).
    calling_code: u16,
    /// ISO 3166-1 alpha-2 region (`US`, `GB`), when the number names one.
    region: Option<String>,
}

impl PhoneNumber {
    /// # Errors
    /// [`InvalidValue`] unless a valid international number.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.is_empty() || s.len() > 32 {
            return Err(InvalidValue::new("phone", "is required (E.164, e.g. +14155550123)"));
        }
        if !s.starts_with('+') {
            return Err(InvalidValue::new("phone", "must start with + and the country code"));
        }
        let n =
            phonenumber::parse(None, s).map_err(|_| InvalidValue::new("phone", "is not a phone number"))?;
        if !phonenumber::is_valid(&n) {
            return Err(InvalidValue::new("phone", "is not a valid phone number"));
        }
        Ok(Self {
            e164: n.format().mode(phonenumber::Mode::E164).to_string(),
            calling_code: n.country().code(),
            region: n.country().id().map(|id| id.as_ref().to_owned()),
        })
    }

    /// E.164 form.
    pub fn as_str(&self) -> &str {
        &self.e164
    }

    /// The country calling code (`44` for `+44…`).
    pub fn calling_code(&self) -> u16 {
        self.calling_code
    }

    /// The ISO 3166-1 alpha-2 region (`GB`), if the number belongs to one
    /// (non-geographic numbers such as `+800` do not).
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PhoneNumber(<redacted>)")
    }
}

/// A password as typed. 8–256 characters (ASVS 6.2.1/6.2.9: at least 8, allow
/// at least 64, no truncation; the upper bound caps hashing cost), no
/// composition rules, not one of the bundled common passwords (ASVS 6.2.4).
/// `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

/// Minimum password length in characters (ASVS 6.2.1).
pub const PASSWORD_MIN_CHARS: usize = 8;
/// Maximum password length in characters.
pub const PASSWORD_MAX_CHARS: usize = 256;

/// The 10,000 most common passwords (zxcvbn's frequency list), lower case.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

fn common_passwords() -> &'static std::collections::HashSet<&'static str> {
    static SET: std::sync::OnceLock<std::collections::HashSet<&'static str>> = std::sync::OnceLock::new();
    SET.get_or_init(|| COMMON_PASSWORDS.lines().collect())
}

impl Password {
    /// # Errors
    /// [`InvalidValue`] when too short, too long or a common password.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let n = raw.chars().count();
        if n < PASSWORD_MIN_CHARS {
            return Err(InvalidValue::new(
                "password",
                format!("must be at least {PASSWORD_MIN_CHARS} characters"),
            ));
        }
        if n > PASSWORD_MAX_CHARS {
            return Err(InvalidValue::new(
                "password",
                format!("must be at most {PASSWORD_MAX_CHARS} characters"),
            ));
        }
        if common_passwords().contains(raw.to_lowercase().as_str()) {
            return Err(InvalidValue::new("password", "is too common; choose another"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A password presented at login: only bounded (1–256 characters). The
    /// creation rules are not re-applied, so a policy change never locks out
    /// an existing account.
    ///
    /// # Errors
    /// [`InvalidValue`] when empty or too long.
    pub fn parse_for_login(raw: &str) -> Result<Self, InvalidValue> {
        let n = raw.chars().count();
        if n == 0 || n > PASSWORD_MAX_CHARS {
            return Err(InvalidValue::new("password", "is required (at most 256 characters)"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The raw password, for hashing and verification only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A display name: trimmed, 1–100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// # Errors
    /// [`InvalidValue`] when empty, too long or holding control characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(InvalidValue::new("name", "is required"));
        }
        if s.chars().count() > 100 {
            return Err(InvalidValue::new("name", "must be at most 100 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidValue::new("name", "must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A profile biography: at most 1,000 characters; newlines allowed, other
/// control characters not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bio(String);

impl Bio {
    /// # Errors
    /// [`InvalidValue`] when too long or holding control characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.chars().count() > 1000 {
            return Err(InvalidValue::new("bio", "must be at most 1000 characters"));
        }
        if s.chars().any(|c| c.is_control() && c != '\n') {
            return Err(InvalidValue::new("bio", "must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A one-time code as typed: exactly 6 ASCII digits (ASVS 6.5.3).
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(String);

/// Number of digits in every one-time code.
pub const OTP_DIGITS: usize = 6;

impl OtpCode {
    /// # Errors
    /// [`InvalidValue`] unless exactly 6 ASCII digits (surrounding spaces ignored).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.len() != OTP_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidValue::new("code", "must be 6 digits"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpCode(<redacted>)")
    }
}

/// A device PIN as typed: 4–8 ASCII digits (seed 003, issue 4). Only ever
/// hashed (argon2id); `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(String);

impl Pin {
    /// # Errors
    /// [`InvalidValue`] unless 4–8 ASCII digits (surrounding spaces ignored).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if !(4..=8).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidValue::new("pin", "must be 4 to 8 digits"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The digits, for hashing and verification only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

/// Ciphertext of a personal field, sealed with the subject's data key
/// (XChaCha20-Poly1305; ARCHITECTURE decided 7). Opaque to the domain; only
/// the `commands` vault opens it. Serialised as a plain string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Sealed(pub String);

/// Lower-case hex of a keyed hash (HMAC-SHA256) or digest (SHA-256), as carried
/// in events instead of a secret (ARCHITECTURE decided 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Digest(pub String);

impl Digest {
    /// Constant-time equality (no early exit on the first differing byte).
    pub fn ct_eq(&self, other: &Digest) -> bool {
        use subtle::ConstantTimeEq;
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && bool::from(a.ct_eq(b))
    }
}

/// A username (handle): 3–30 characters of `[a-z0-9_]`, case-folded, not
/// only digits, not a reserved word ([`RESERVED_USERNAMES`]); public data,
/// never sealed (issue 15). Accounts made by phone get a generated one,
/// `user-` and 8 digits (as SoundCloud does), which [`Username::parse`]
/// refuses (`-` is not allowed) so nobody can choose one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Username(String);

/// Words that would shadow a route or pose as the service (compared after
/// case folding).
pub const RESERVED_USERNAMES: &[&str] = &[
    "about",
    "account",
    "accounts",
    "admin",
    "administrator",
    "api",
    "app",
    "auth",
    "blog",
    "dashboard",
    "discover",
    "docs",
    "explore",
    "feed",
    "help",
    "home",
    "login",
    "logout",
    "me",
    "mod",
    "moderator",
    "moderation",
    "notifications",
    "null",
    "official",
    "privacy",
    "register",
    "resolve",
    "root",
    "search",
    "security",
    "settings",
    "signin",
    "signup",
    "streamforge",
    "stream",
    "support",
    "system",
    "terms",
    "tracks",
    "upload",
    "user",
    "users",
    "you",
];

impl Username {
    /// A username a person chose.
    ///
    /// # Errors
    /// [`InvalidValue`] (field `username`) naming the rule broken.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim().to_lowercase();
        let n = s.chars().count();
        if !(3..=30).contains(&n) {
            return Err(InvalidValue::new("username", "must be 3 to 30 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(InvalidValue::new("username", "may hold only a-z, 0-9 and _"));
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidValue::new("username", "must not be only digits"));
        }
        if RESERVED_USERNAMES.contains(&s.as_str()) {
            return Err(InvalidValue::new("username", "is reserved"));
        }
        Ok(Self(s))
    }

    /// A username to look up: one [`Username::parse`] accepts, or a
    /// generated `user-` + 8 digits.
    ///
    /// # Errors
    /// [`InvalidValue`] (field `username`).
    pub fn parse_lookup(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim().to_lowercase();
        if let Some(digits) = s.strip_prefix("user-") {
            if digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(Self(s));
            }
        }
        Self::parse(&s)
    }

    /// The generated username `user-` + the 8 digits of `n % 10^8`.
    pub fn generated(n: u32) -> Self {
        Self(format!("user-{:08}", n % 100_000_000))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A first or last name (seed 001): 1–50 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    /// # Errors
    /// [`InvalidValue`] naming `field` (`first_name` or `last_name`).
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.is_empty() || s.chars().count() > 50 {
            return Err(InvalidValue::new(field, "must be 1 to 50 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidValue::new(field, "must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised_and_validated() {
        assert_eq!(EmailAddress::parse("  Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
        assert!(EmailAddress::parse("not-an-email").is_err());
        assert!(EmailAddress::parse("").is_err());
        assert!(EmailAddress::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn phone_numbers_are_e164() {
        assert_eq!(PhoneNumber::parse(" +44 20 7946 0958 ").unwrap().as_str(), "+442079460958");
        assert_eq!(PhoneNumber::parse("+1 (415) 555-2671").unwrap().as_str(), "+14155552671");
        assert!(PhoneNumber::parse("4155552671").is_err(), "country code required");
        assert!(PhoneNumber::parse("+1 555").is_err());
        assert!(PhoneNumber::parse("+abc").is_err());
        let uk = PhoneNumber::parse("+442079460958").unwrap();
        assert_eq!((uk.calling_code(), uk.region()), (44, Some("GB")));
        let us = PhoneNumber::parse("+14155552671").unwrap();
        assert_eq!((us.calling_code(), us.region()), (1, Some("US")));
    }

    #[test]
    fn password_rules() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse("password").is_err(), "common password refused");
        assert!(Password::parse("correct horse battery staple").is_ok());
        assert!(Password::parse(&"x".repeat(64)).is_ok());
        assert!(Password::parse(&"x".repeat(257)).is_err());
        assert_eq!(format!("{:?}", Password::parse("s3cret-pass-word").unwrap()), "Password(<redacted>)");
    }

    #[test]
    fn otp_code_is_six_digits() {
        assert!(OtpCode::parse("123456").is_ok());
        assert!(OtpCode::parse("12345").is_err());
        assert!(OtpCode::parse("12345a").is_err());
        assert!(OtpCode::parse("1234567").is_err());
    }

    #[test]
    fn pin_is_four_to_eight_digits() {
        assert!(Pin::parse("1234").is_ok());
        assert!(Pin::parse(" 12345678 ").is_ok());
        assert!(Pin::parse("123").is_err());
        assert!(Pin::parse("123456789").is_err());
        assert!(Pin::parse("12a4").is_err());
        assert!(Pin::parse("１２３４").is_err(), "ASCII digits only");
        assert_eq!(format!("{:?}", Pin::parse("1234").unwrap()), "Pin(<redacted>)");
    }

    #[test]
    fn digest_compare() {
        assert!(Digest("ab".into()).ct_eq(&Digest("ab".into())));
        assert!(!Digest("ab".into()).ct_eq(&Digest("ac".into())));
        assert!(!Digest("ab".into()).ct_eq(&Digest("abc".into())));
    }
}
