//! Tokens (ARCHITECTURE decided 10; RFC 8725; ASVS 9.x).
//!
//! - Access token: JWT signed with EdDSA (Ed25519) only, header `typ`
//!   `at+jwt` (RFC 9068), claims `iss aud sub sid exp iat jti`, lifetime
//!   [`ACCESS_TOKEN_TTL_SECS`]. Verification allows exactly one algorithm,
//!   requires `exp iss aud sub` and checks `typ`, so a token of another kind
//!   can never pass as an access token.
//! - Refresh token: opaque `rt1.<session id>.<43 chars base64url of 256 random
//!   bits>`; only its SHA-256 is stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::keys::{sha256_hex, KeyError, Secret32};
use domain::values::Digest;

/// Access-token lifetime in seconds (15 min; SECURITY.md).
pub const ACCESS_TOKEN_TTL_SECS: i64 = 15 * 60;
/// JOSE `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// JOSE `typ` of password-reset tokens: distinct, so a reset token can never
/// pass as an access token nor the reverse (RFC 8725 §3.11).
pub const RESET_TOKEN_TYP: &str = "reset+jwt";
/// Reset-token lifetime in seconds (10 min).
pub const RESET_TOKEN_TTL_SECS: i64 = 10 * 60;

/// Claims of a password-reset token; `jti` is single use (the `User`
/// aggregate remembers it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResetClaims {
    pub iss: String,
    pub aud: String,
    pub sub: Uuid,
    pub exp: i64,
    pub iat: i64,
    pub jti: Uuid,
}

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// User id.
    pub sub: Uuid,
    /// Session id.
    pub sid: Uuid,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Unique token id.
    pub jti: Uuid,
    /// Last time the user proved a factor, seconds since the Unix epoch
    /// (RFC 9068 §2.2.1; step-up checks it, ASVS 7.5.1).
    pub auth_time: i64,
    /// The roles the user held when the token was issued, besides `user`
    /// (RFC 9068 §2.2.3.1 `roles`). For clients only: permission checks
    /// read the store on every request (issue 17), so a role taken away
    /// stops working at once, whatever the token says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// Token failures.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is invalid")]
    Invalid,
    #[error("token has expired")]
    Expired,
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Seconds a token's `iat` / `nbf` may lie ahead of this node's clock
/// (clock differences between nodes); beyond it the token is refused.
pub const CLOCK_SKEW_SECS: i64 = 30;

/// One Ed25519 key: what verifies with it and what the JWKS shows of it.
struct VerifyingKey {
    kid: String,
    decoding: DecodingKey,
    public_x: String,
}

impl VerifyingKey {
    fn of(signing: &SigningKey) -> Self {
        let public = signing.verifying_key().to_bytes();
        Self {
            kid: sha256_hex(&public)[..16].to_owned(),
            decoding: DecodingKey::from_ed_der(&public),
            public_x: URL_SAFE_NO_PAD.encode(public),
        }
    }
}

/// Signs access and reset tokens with one Ed25519 key and verifies them
/// against that key and any others configured for rotation, chosen by the
/// header's `kid` (RFC 7515 §4.1.4). Rotation (docs/identity.md): publish
/// the new key as an extra key, then sign with it and keep the old one as
/// an extra key until every token it signed has expired (15 min), then drop
/// it. The JWKS lists every key.
pub struct TokenIssuer {
    issuer: String,
    audience: String,
    kid: String,
    encoding: EncodingKey,
    /// The signing key's verifier first, then the extra keys.
    keys: Vec<VerifyingKey>,
}

impl TokenIssuer {
    /// `seed` = the 32-byte Ed25519 secret (config `STREAMFORGE_JWT_KEY`).
    ///
    /// # Errors
    /// [`KeyError`] if the key cannot be encoded (does not happen for 32 bytes).
    pub fn new(seed: &Secret32, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        Self::with_extra_keys(seed, &[], issuer, audience)
    }

    /// As [`TokenIssuer::new`], also accepting (and publishing) tokens of
    /// the `extra` keys (`STREAMFORGE_JWT_EXTRA_KEYS`): the key being
    /// rotated in before it signs, or the one rotated out until its tokens
    /// expire.
    ///
    /// # Errors
    /// As [`TokenIssuer::new`].
    pub fn with_extra_keys(
        seed: &Secret32,
        extra: &[Secret32],
        issuer: &str,
        audience: &str,
    ) -> Result<Self, KeyError> {
        let signing = SigningKey::from_bytes(&seed.0);
        let der = signing.to_pkcs8_der().map_err(|_| KeyError::Length(32))?;
        let own = VerifyingKey::of(&signing);
        let mut keys = vec![];
        let kid = own.kid.clone();
        keys.push(own);
        for e in extra {
            let key = VerifyingKey::of(&SigningKey::from_bytes(&e.0));
            if keys.iter().all(|k| k.kid != key.kid) {
                keys.push(key);
            }
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            kid,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            keys,
        })
    }

    /// Issues an access token for `user`/`session` at `now`; returns the
    /// token and its lifetime in seconds.
    ///
    /// # Errors
    /// [`TokenError::Signing`].
    pub fn issue_access(
        &self,
        user: Uuid,
        session: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(String, i64), TokenError> {
        self.issue_access_at(user, session, now, now)
    }

    /// As [`TokenIssuer::issue_access`] with the time of the last
    /// authentication, `auth_time`.
    ///
    /// # Errors
    /// [`TokenError::Signing`].
    pub fn issue_access_at(
        &self,
        user: Uuid,
        session: Uuid,
        now: DateTime<Utc>,
        auth_time: DateTime<Utc>,
    ) -> Result<(String, i64), TokenError> {
        self.issue_access_with_roles(user, session, now, auth_time, Vec::new())
    }

    /// As [`TokenIssuer::issue_access_at`], naming the user's `roles`.
    ///
    /// # Errors
    /// [`TokenError::Signing`].
    pub fn issue_access_with_roles(
        &self,
        user: Uuid,
        session: Uuid,
        now: DateTime<Utc>,
        auth_time: DateTime<Utc>,
        roles: Vec<String>,
    ) -> Result<(String, i64), TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(self.kid.clone());
        let iat = now.timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user,
            sid: session,
            exp: iat + ACCESS_TOKEN_TTL_SECS,
            iat,
            jti: Uuid::new_v4(),
            auth_time: auth_time.timestamp(),
            roles,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok((token, ACCESS_TOKEN_TTL_SECS))
    }

    /// Verifies signature (EdDSA only), `typ`, `exp` (no leeway), `iss`, `aud`, `sub`.
    ///
    /// # Errors
    /// [`TokenError::Expired`] or [`TokenError::Invalid`].
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        self.verify_typed(token, ACCESS_TOKEN_TYP)
    }

    /// Issues a password-reset token for `user` with id `jti`.
    ///
    /// # Errors
    /// [`TokenError::Signing`].
    pub fn issue_reset(
        &self,
        user: Uuid,
        jti: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(String, i64), TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(RESET_TOKEN_TYP.to_owned());
        header.kid = Some(self.kid.clone());
        let iat = now.timestamp();
        let claims = ResetClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user,
            exp: iat + RESET_TOKEN_TTL_SECS,
            iat,
            jti,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok((token, RESET_TOKEN_TTL_SECS))
    }

    /// Verifies a reset token exactly as [`TokenIssuer::verify_access`] but
    /// for `typ` `reset+jwt`.
    ///
    /// # Errors
    /// [`TokenError::Expired`] or [`TokenError::Invalid`].
    pub fn verify_reset(&self, token: &str) -> Result<ResetClaims, TokenError> {
        self.verify_typed(token, RESET_TOKEN_TYP)
    }

    fn verify_typed<C: serde::de::DeserializeOwned>(&self, token: &str, typ: &str) -> Result<C, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(typ) {
            return Err(TokenError::Invalid);
        }
        // The key the header names; a token without `kid`, or naming a key
        // this node does not hold, is refused (no trying every key).
        let kid = header.kid.as_deref().ok_or(TokenError::Invalid)?;
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(TokenError::Invalid)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = 0;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "iat"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        // Issued in the future (beyond the clock skew): refused (RFC 7519
        // §4.1.6; RFC 8725 §3.10 — a forged or mis-clocked issuer).
        let now = Utc::now().timestamp();
        let not_before = |name: &str| claims.get(name).and_then(serde_json::Value::as_i64);
        if not_before("iat").is_none_or(|iat| iat > now + CLOCK_SKEW_SECS)
            || not_before("nbf").is_some_and(|nbf| nbf > now + CLOCK_SKEW_SECS)
        {
            return Err(TokenError::Invalid);
        }
        serde_json::from_value(claims).map_err(|_| TokenError::Invalid)
    }

    /// The JWK Set with every public key this node verifies with, the
    /// signing key first (RFC 7517 / RFC 8037 OKP).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": k.public_x,
                    "kid": k.kid,
                    "alg": "EdDSA",
                    "use": "sig"
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// A refresh token and its stored digest.
pub struct RefreshToken {
    /// What the client receives (secret).
    pub token: String,
    /// SHA-256 hex of `token` — what the Session aggregate keeps.
    pub hash: Digest,
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(<redacted>)")
    }
}

/// A new refresh token for `session` with 256 random bits.
pub fn new_refresh_token(session: Uuid) -> RefreshToken {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let token = format!("rt1.{}.{}", session.simple(), URL_SAFE_NO_PAD.encode(b));
    let hash = refresh_hash(&token);
    RefreshToken { token, hash }
}

/// SHA-256 hex of a presented refresh token.
pub fn refresh_hash(token: &str) -> Digest {
    Digest(sha256_hex(token.as_bytes()))
}

/// The session id inside a refresh token, if well-formed.
pub fn parse_refresh_token(token: &str) -> Option<Uuid> {
    let mut parts = token.split('.');
    let (Some("rt1"), Some(sid), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if secret.len() != 43 || URL_SAFE_NO_PAD.decode(secret).map(|b| b.len()).ok() != Some(32) {
        return None;
    }
    Uuid::try_parse(sid).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(&Secret32([9; 32]), "https://sf.test", "streamforge").unwrap()
    }

    #[test]
    fn access_token_roundtrip() {
        let i = issuer();
        let (t, ttl) = i.issue_access(Uuid::from_u128(1), Uuid::from_u128(2), Utc::now()).unwrap();
        assert_eq!(ttl, 900);
        let c = i.verify_access(&t).unwrap();
        assert_eq!(c.sub, Uuid::from_u128(1));
        assert_eq!(c.sid, Uuid::from_u128(2));
    }

    #[test]
    fn expired_wrong_audience_and_foreign_keys_fail() {
        let i = issuer();
        let (t, _) = i
            .issue_access(Uuid::from_u128(1), Uuid::from_u128(2), Utc::now() - chrono::Duration::hours(1))
            .unwrap();
        assert!(matches!(i.verify_access(&t), Err(TokenError::Expired)));
        let other = TokenIssuer::new(&Secret32([9; 32]), "https://sf.test", "other").unwrap();
        let (t2, _) = other.issue_access(Uuid::from_u128(1), Uuid::from_u128(2), Utc::now()).unwrap();
        assert!(i.verify_access(&t2).is_err());
        let foreign = TokenIssuer::new(&Secret32([8; 32]), "https://sf.test", "streamforge").unwrap();
        let (t3, _) = foreign.issue_access(Uuid::from_u128(1), Uuid::from_u128(2), Utc::now()).unwrap();
        assert!(i.verify_access(&t3).is_err());
    }

    #[test]
    fn alg_none_and_wrong_typ_are_refused() {
        let i = issuer();
        let (t, _) = i.issue_access(Uuid::from_u128(1), Uuid::from_u128(2), Utc::now()).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
        assert!(i.verify_access(&format!("{none_header}.{}.", parts[1])).is_err());
        let jwt_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        assert!(i.verify_access(&format!("{jwt_header}.{}.{}", parts[1], parts[2])).is_err());
    }

    #[test]
    fn reset_and_access_tokens_do_not_cross() {
        let i = issuer();
        let (reset, ttl) = i.issue_reset(Uuid::from_u128(1), Uuid::from_u128(9), Utc::now()).unwrap();
        assert_eq!(ttl, 600);
        assert_eq!(i.verify_reset(&reset).unwrap().jti, Uuid::from_u128(9));
        assert!(i.verify_access(&reset).is_err(), "a reset token is not an access token");
        let (access, _) = i.issue_access(Uuid::from_u128(1), Uuid::from_u128(2), Utc::now()).unwrap();
        assert!(i.verify_reset(&access).is_err(), "an access token is not a reset token");
    }

    #[test]
    fn refresh_tokens_parse_and_hash() {
        let r = new_refresh_token(Uuid::from_u128(5));
        assert_eq!(parse_refresh_token(&r.token), Some(Uuid::from_u128(5)));
        assert_eq!(refresh_hash(&r.token), r.hash);
        assert!(parse_refresh_token("rt1.nope.x").is_none());
        assert!(parse_refresh_token(&format!("{}x", r.token)).is_none());
        assert_ne!(new_refresh_token(Uuid::from_u128(5)).token, r.token);
    }

    #[test]
    fn rotation_verifies_by_kid_and_publishes_both_keys() {
        let (old, new) = (Secret32([9; 32]), Secret32([7; 32]));
        let before = TokenIssuer::new(&old, "https://sf.test", "streamforge").unwrap();
        let (old_token, _) = before.issue_access(Uuid::from_u128(1), Uuid::from_u128(2), Utc::now()).unwrap();
        // Rotated: signs with the new key, still accepts the old one's tokens.
        let after = TokenIssuer::with_extra_keys(&new, &[old], "https://sf.test", "streamforge").unwrap();
        assert_eq!(after.verify_access(&old_token).unwrap().sub, Uuid::from_u128(1));
        let (new_token, _) = after.issue_access(Uuid::from_u128(1), Uuid::from_u128(2), Utc::now()).unwrap();
        assert!(after.verify_access(&new_token).is_ok());
        assert!(before.verify_access(&new_token).is_err(), "a key not held is refused");
        let jwks = after.jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
        assert_ne!(jwks["keys"][0]["kid"], jwks["keys"][1]["kid"]);
        // The header's kid decides: a token whose kid is removed or changed fails.
        let parts: Vec<&str> = old_token.split('.').collect();
        for header in [
            r#"{"alg":"EdDSA","typ":"at+jwt"}"#.to_owned(),
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"0000000000000000"}"#.to_owned(),
        ] {
            let forged = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(&header), parts[1], parts[2]);
            assert!(after.verify_access(&forged).is_err(), "{header}");
        }
    }

    #[test]
    fn tokens_from_the_future_are_refused() {
        let i = issuer();
        let later = Utc::now() + chrono::Duration::seconds(CLOCK_SKEW_SECS + 60);
        let (t, _) = i.issue_access(Uuid::from_u128(1), Uuid::from_u128(2), later).unwrap();
        assert!(i.verify_access(&t).is_err(), "iat in the future");
        let (t, _) = i
            .issue_access(Uuid::from_u128(1), Uuid::from_u128(2), Utc::now() + chrono::Duration::seconds(5))
            .unwrap();
        assert!(i.verify_access(&t).is_ok(), "within the clock skew");
        // nbf in the future, signed with the right key.
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(i.kid.clone());
        let now = Utc::now().timestamp();
        let claims = serde_json::json!({"iss": "https://sf.test", "aud": "streamforge", "sub": Uuid::from_u128(1),
            "sid": Uuid::from_u128(2), "exp": now + 600, "iat": now, "nbf": now + 300, "jti": Uuid::from_u128(3), "auth_time": now});
        let t = jsonwebtoken::encode(&header, &claims, &i.encoding).unwrap();
        assert!(i.verify_access(&t).is_err(), "nbf in the future");
    }

    #[test]
    fn jwks_has_the_public_key() {
        let j = issuer().jwks();
        assert_eq!(j["keys"][0]["kty"], "OKP");
        assert_eq!(j["keys"][0]["x"].as_str().unwrap().len(), 43);
    }
}
