//! Passkeys (issue 4): real WebAuthn ceremonies over HTTP against
//! webauthn-rs, with a software authenticator written here from the
//! WebAuthn / CTAP2 data formats (P-256 ES256 keys, CBOR attestation object
//! with `fmt: none`, authenticator data, client data JSON). It keeps
//! discoverable credentials and returns the user handle, which the
//! webauthn-rs soft tokens do not, so usernameless login can be exercised;
//! and its sign counter can be wound back to play a cloned authenticator.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{Duration, Utc};
use commands::keys::Secret32;
use commands::tokens::TokenIssuer;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::{code_in, spawn_app_with, Feed, TestApp};

const PASSWORD: &str = "correct horse battery staple";
const RP_ID: &str = "localhost";
const ORIGIN: &str = "http://localhost:8080";

// ---- a software authenticator ---------------------------------------------

/// Minimal CBOR (RFC 8949) for what an authenticator sends.
enum Cbor {
    Int(i64),
    Bytes(Vec<u8>),
    Text(&'static str),
    Map(Vec<(Cbor, Cbor)>),
}

impl Cbor {
    fn encode(&self, out: &mut Vec<u8>) {
        fn head(major: u8, n: u64, out: &mut Vec<u8>) {
            let m = major << 5;
            match n {
                0..=23 => out.push(m | n as u8),
                24..=0xff => out.extend([m | 24, n as u8]),
                0x100..=0xffff => {
                    out.push(m | 25);
                    out.extend((n as u16).to_be_bytes());
                }
                _ => {
                    out.push(m | 26);
                    out.extend((n as u32).to_be_bytes());
                }
            }
        }
        match self {
            Self::Int(n) if *n >= 0 => head(0, *n as u64, out),
            Self::Int(n) => head(1, (-1 - *n) as u64, out),
            Self::Bytes(b) => {
                head(2, b.len() as u64, out);
                out.extend(b);
            }
            Self::Text(s) => {
                head(3, s.len() as u64, out);
                out.extend(s.as_bytes());
            }
            Self::Map(entries) => {
                head(5, entries.len() as u64, out);
                for (k, v) in entries {
                    k.encode(out);
                    v.encode(out);
                }
            }
        }
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).unwrap()
}

/// A discoverable credential held by the authenticator.
struct Credential {
    id: Vec<u8>,
    key: SigningKey,
    rp_id: String,
    user_handle: Vec<u8>,
    counter: u32,
}

/// A CTAP2-style platform authenticator with user verification, in memory.
struct SoftAuthenticator {
    origin: String,
    credentials: Vec<Credential>,
}

impl SoftAuthenticator {
    fn new(origin: &str) -> Self {
        Self { origin: origin.to_owned(), credentials: Vec::new() }
    }

    fn client_data(&self, kind: &str, challenge: &str) -> Vec<u8> {
        json!({"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": false})
            .to_string()
            .into_bytes()
    }

    /// `navigator.credentials.create()` with `options` (`CredentialCreationOptions` JSON).
    fn create(&mut self, options: &Value) -> Value {
        let pk = &options["publicKey"];
        let rp_id = pk["rp"]["id"].as_str().unwrap().to_owned();
        assert!(pk["pubKeyCredParams"].as_array().unwrap().iter().any(|p| p["alg"] == -7), "ES256 offered");
        let excluded: Vec<Vec<u8>> = pk["excludeCredentials"]
            .as_array()
            .map(|a| a.iter().map(|c| unb64(c["id"].as_str().unwrap())).collect())
            .unwrap_or_default();
        assert!(
            !self.credentials.iter().any(|c| excluded.contains(&c.id)),
            "InvalidStateError: this authenticator is already registered"
        );
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let id = rand::random::<[u8; 32]>().to_vec();
        let user_handle = unb64(pk["user"]["id"].as_str().unwrap());
        self.credentials.push(Credential { id, key, rp_id, user_handle, counter: 0 });
        let index = self.credentials.len() - 1;
        self.attest(options, index)
    }

    /// A registration response for credential `index` (also used to
    /// register a credential again, ignoring `excludeCredentials`).
    fn attest(&self, options: &Value, index: usize) -> Value {
        let pk = &options["publicKey"];
        let cred = &self.credentials[index];
        let point = cred.key.verifying_key().to_encoded_point(false);
        let cose = Cbor::Map(vec![
            (Cbor::Int(1), Cbor::Int(2)),  // kty: EC2
            (Cbor::Int(3), Cbor::Int(-7)), // alg: ES256
            (Cbor::Int(-1), Cbor::Int(1)), // crv: P-256
            (Cbor::Int(-2), Cbor::Bytes(point.x().unwrap().to_vec())),
            (Cbor::Int(-3), Cbor::Bytes(point.y().unwrap().to_vec())),
        ])
        .to_vec();
        let mut auth_data = Sha256::digest(cred.rp_id.as_bytes()).to_vec();
        auth_data.push(0x01 | 0x04 | 0x40); // UP, UV, AT
        auth_data.extend(cred.counter.to_be_bytes());
        auth_data.extend([0u8; 16]); // AAGUID
        auth_data.extend((cred.id.len() as u16).to_be_bytes());
        auth_data.extend(&cred.id);
        auth_data.extend(cose);
        let attestation = Cbor::Map(vec![
            (Cbor::Text("fmt"), Cbor::Text("none")),
            (Cbor::Text("attStmt"), Cbor::Map(vec![])),
            (Cbor::Text("authData"), Cbor::Bytes(auth_data)),
        ])
        .to_vec();
        let client_data = self.client_data("webauthn.create", pk["challenge"].as_str().unwrap());
        json!({
            "id": b64(&cred.id),
            "rawId": b64(&cred.id),
            "type": "public-key",
            "response": {"attestationObject": b64(&attestation), "clientDataJSON": b64(&client_data)},
            "clientExtensionResults": {},
        })
    }

    /// `navigator.credentials.get()` with `options` (`CredentialRequestOptions`
    /// JSON): picks a listed credential, or any discoverable one for the RP.
    fn get(&mut self, options: &Value) -> Value {
        let pk = &options["publicKey"];
        let rp_id = pk["rpId"].as_str().unwrap();
        let allowed: Vec<Vec<u8>> = pk["allowCredentials"]
            .as_array()
            .map(|a| a.iter().map(|c| unb64(c["id"].as_str().unwrap())).collect())
            .unwrap_or_default();
        let index = self
            .credentials
            .iter()
            .position(|c| c.rp_id == rp_id && (allowed.is_empty() || allowed.contains(&c.id)))
            .expect("NotAllowedError: no credential for this request");
        self.credentials[index].counter += 1;
        let cred = &self.credentials[index];
        self.sign(pk["challenge"].as_str().unwrap(), cred, &cred.key, Some(&cred.user_handle))
    }

    /// An assertion for `cred` signed with `key` (a wrong key forges).
    fn sign(
        &self,
        challenge: &str,
        cred: &Credential,
        key: &SigningKey,
        user_handle: Option<&[u8]>,
    ) -> Value {
        let mut auth_data = Sha256::digest(cred.rp_id.as_bytes()).to_vec();
        auth_data.push(0x01 | 0x04); // UP, UV
        auth_data.extend(cred.counter.to_be_bytes());
        let client_data = self.client_data("webauthn.get", challenge);
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(&client_data));
        let signature: Signature = key.sign(&signed);
        json!({
            "id": b64(&cred.id),
            "rawId": b64(&cred.id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(&auth_data),
                "clientDataJSON": b64(&client_data),
                "signature": b64(signature.to_der().as_bytes()),
                "userHandle": user_handle.map(b64),
            },
            "clientExtensionResults": {},
        })
    }
}

// ---- the app and an account ------------------------------------------------

struct Account {
    user_id: Uuid,
    session_id: Uuid,
    access: String,
}

/// The app on `feed` with a known JWT key (to mint tokens with an old `auth_time`).
async fn app_and_issuer(feed: Feed) -> (TestApp, TokenIssuer) {
    let key = Secret32::generate().to_base64();
    let (mut issuer, mut audience) = (String::new(), String::new());
    let app = spawn_app_with(feed, |s| {
        s.jwt_key = Some(key.clone());
        s.webauthn_rp_id = RP_ID.to_owned();
        s.webauthn_rp_origin = ORIGIN.to_owned();
        issuer = s.jwt_issuer.clone();
        audience = s.jwt_audience.clone();
    })
    .await;
    let tokens = TokenIssuer::new(&Secret32::from_base64(&key).unwrap(), &issuer, &audience).unwrap();
    (app, tokens)
}

async fn signed_in(app: &TestApp, email: &str) -> Account {
    let r = app.register(email, PASSWORD, "Pat").await;
    assert_eq!(r.status(), 201);
    let user_id: Uuid = r.json::<Value>().await.unwrap()["user_id"].as_str().unwrap().parse().unwrap();
    let code = code_in(&app.wait_mail_with(email, "verification code", 1).await);
    let r = app.post("/api/auth/verify-email", json!({"email": email, "code": code})).await;
    assert_eq!(r.status(), 204);
    let r = app.post("/api/auth/login", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(r.status(), 200);
    let challenge: Value = r.json().await.unwrap();
    let code = code_in(&app.wait_mail_with(email, "sign-in code", 1).await);
    let r = app
        .post("/api/auth/verify-otp", json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .await;
    assert_eq!(r.status(), 200);
    let tokens: Value = r.json().await.unwrap();
    Account {
        user_id,
        session_id: tokens["session_id"].as_str().unwrap().parse().unwrap(),
        access: tokens["access_token"].as_str().unwrap().to_owned(),
    }
}

async fn post_auth(app: &TestApp, path: &str, token: &str, body: Value) -> reqwest::Response {
    app.client.post(format!("{}{path}", app.base)).bearer_auth(token).json(&body).send().await.unwrap()
}

async fn delete_auth(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client.delete(format!("{}{path}", app.base)).bearer_auth(token).send().await.unwrap()
}

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

/// Registers a passkey on `authn` for `account`; returns its credential id.
async fn register_passkey(
    app: &TestApp,
    account: &Account,
    authn: &mut SoftAuthenticator,
    label: &str,
) -> String {
    let r = post_auth(app, "/api/auth/passkeys/register/start", &account.access, json!({})).await;
    assert_eq!(r.status(), 200);
    let start: Value = r.json().await.unwrap();
    let credential = authn.create(&start["options"]);
    let r = post_auth(
        app,
        "/api/auth/passkeys/register/finish",
        &account.access,
        json!({"ceremony_id": start["ceremony_id"], "credential": credential, "label": label}),
    )
    .await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["label"], label);
    done["credential_id"].as_str().unwrap().to_owned()
}

/// Starts a login (`user_id` = user handle, or usernameless) and returns the start.
async fn login_start(app: &TestApp, user_id: Option<Uuid>) -> Value {
    let body = match user_id {
        Some(u) => json!({"user_id": u}),
        None => json!({}),
    };
    let r = app.post("/api/auth/passkeys/login/start", body).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn login_finish(app: &TestApp, start: &Value, credential: &Value) -> reqwest::Response {
    app.post(
        "/api/auth/passkeys/login/finish",
        json!({"ceremony_id": start["ceremony_id"], "credential": credential}),
    )
    .await
}

// ---- tests -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_passkey_needs_a_recent_authentication_and_a_new_credential() {
    let (app, issuer) = app_and_issuer(Feed::Postgres).await;
    let account = signed_in(&app, "pat@example.com").await;

    // Without a bearer: 401. With a token whose last authentication is 10 min old: 403.
    let r = app.post("/api/auth/passkeys/register/start", json!({})).await;
    assert_eq!(r.status(), 401);
    let now = Utc::now();
    let (stale, _) = issuer
        .issue_access_at(account.user_id, account.session_id, now, now - Duration::minutes(10))
        .unwrap();
    let r = post_auth(&app, "/api/auth/passkeys/register/start", &stale, json!({})).await;
    assert_eq!(error_code(r).await, (403, "reauthentication_required".to_owned()));

    // The options: this RP, the user handle = the user id, UV required, discoverable preferred.
    let r = post_auth(&app, "/api/auth/passkeys/register/start", &account.access, json!({})).await;
    assert_eq!(r.status(), 200);
    let start: Value = r.json().await.unwrap();
    let pk = &start["options"]["publicKey"];
    assert_eq!(pk["rp"]["id"], RP_ID);
    assert_eq!(unb64(pk["user"]["id"].as_str().unwrap()), account.user_id.as_bytes().to_vec());
    assert_eq!(pk["user"]["name"], "pat@example.com");
    assert_eq!(pk["authenticatorSelection"]["userVerification"], "required");
    assert_eq!(pk["authenticatorSelection"]["residentKey"], "preferred");

    // A stale token cannot finish either.
    let mut authn = SoftAuthenticator::new(ORIGIN);
    let credential = authn.create(&start["options"]);
    let finish = json!({"ceremony_id": start["ceremony_id"], "credential": credential, "label": "Laptop"});
    let r = post_auth(&app, "/api/auth/passkeys/register/finish", &stale, finish.clone()).await;
    assert_eq!(r.status(), 403);
    let r = post_auth(&app, "/api/auth/passkeys/register/finish", &account.access, finish.clone()).await;
    assert_eq!(r.status(), 201);
    let done: Value = r.json().await.unwrap();
    let credential_id = done["credential_id"].as_str().unwrap().to_owned();
    assert_eq!(credential_id, b64(&authn.credentials[0].id));
    assert_eq!(done["label"], "Laptop");

    // A ceremony finishes once.
    let r = post_auth(&app, "/api/auth/passkeys/register/finish", &account.access, finish).await;
    assert_eq!(error_code(r).await, (400, "invalid_ceremony".to_owned()));

    // The next registration excludes it; registering it anyway is refused.
    let r = post_auth(&app, "/api/auth/passkeys/register/start", &account.access, json!({})).await;
    let again: Value = r.json().await.unwrap();
    let excluded = again["options"]["publicKey"]["excludeCredentials"].as_array().unwrap().clone();
    assert_eq!(excluded.len(), 1);
    assert_eq!(excluded[0]["id"], credential_id.as_str());
    let duplicate = authn.attest(&again["options"], 0);
    let r = post_auth(
        &app,
        "/api/auth/passkeys/register/finish",
        &account.access,
        json!({"ceremony_id": again["ceremony_id"], "credential": duplicate}),
    )
    .await;
    assert_eq!(error_code(r).await, (409, "passkey_exists".to_owned()));

    // …also by another account.
    let other = signed_in(&app, "sam@example.com").await;
    let r = post_auth(&app, "/api/auth/passkeys/register/start", &other.access, json!({})).await;
    let theirs: Value = r.json().await.unwrap();
    let stolen = authn.attest(&theirs["options"], 0);
    let r = post_auth(
        &app,
        "/api/auth/passkeys/register/finish",
        &other.access,
        json!({"ceremony_id": theirs["ceremony_id"], "credential": stolen}),
    )
    .await;
    assert_eq!(error_code(r).await, (409, "passkey_exists".to_owned()));

    // Another user's ceremony id is not this user's to finish.
    let r = post_auth(&app, "/api/auth/passkeys/register/start", &other.access, json!({})).await;
    let theirs: Value = r.json().await.unwrap();
    let mut second = SoftAuthenticator::new(ORIGIN);
    let credential = second.create(&theirs["options"]);
    let r = post_auth(
        &app,
        "/api/auth/passkeys/register/finish",
        &account.access,
        json!({"ceremony_id": theirs["ceremony_id"], "credential": credential}),
    )
    .await;
    assert_eq!(error_code(r).await, (400, "invalid_ceremony".to_owned()));

    // Only the public credential is stored: no private key material in the event.
    let stored: Value = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'passkeys' AND event_type = 'PasskeyRegistered'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let text = stored.to_string();
    assert!(text.contains("EC_EC2"), "{text}");
    let secret = b64(&authn.credentials[0].key.to_bytes());
    assert!(!text.contains(&secret));
    assert!(!text.contains("Laptop"), "the label is sealed");

    // Documented.
    let doc: Value =
        app.client.get(format!("{}/openapi.json", app.base)).send().await.unwrap().json().await.unwrap();
    for (method, path) in [
        ("post", "/api/auth/passkeys/register/start"),
        ("post", "/api/auth/passkeys/register/finish"),
        ("post", "/api/auth/passkeys/login/start"),
        ("post", "/api/auth/passkeys/login/finish"),
        ("get", "/api/users/me/passkeys"),
        ("delete", "/api/users/me/passkeys/{credential_id}"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from openapi.json");
    }

    // Listed (label opened), and offered as a quick factor.
    let (_, list) = app
        .wait_for("/api/users/me/passkeys", &account.access, |s, b| {
            s == 200 && b.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    assert_eq!(list[0]["credential_id"], credential_id.as_str());
    assert_eq!(list[0]["label"], "Laptop");
    assert!(list[0]["last_used_at"].is_null());
    app.wait_for("/api/auth/check-session", &account.access, |_, b| {
        b["quick_factors"].as_array().is_some_and(|f| f.iter().any(|x| x == "passkey"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_signs_in_without_a_username_or_with_the_user_handle() {
    let (app, _) = app_and_issuer(Feed::Postgres).await;
    let account = signed_in(&app, "pat@example.com").await;
    let mut authn = SoftAuthenticator::new(ORIGIN);
    let credential_id = register_passkey(&app, &account, &mut authn, "Phone").await;

    // Usernameless: nothing listed, conditional mediation; the authenticator
    // chooses the credential and returns the user handle.
    let start = login_start(&app, None).await;
    assert!(start["options"]["publicKey"]["allowCredentials"].as_array().is_none_or(|a| a.is_empty()));
    assert_eq!(start["options"]["mediation"], "conditional");
    let assertion = authn.get(&start["options"]);
    let r = login_finish(&app, &start, &assertion).await;
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("__Host-refresh=") && cookie.contains("HttpOnly") && cookie.contains("Secure")
    );
    let tokens: Value = r.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let (_, me) = app.wait_for("/api/users/me", &access, |s, _| s == 200).await;
    assert_eq!(me["user_id"], account.user_id.to_string());
    // A full authentication: step-up actions are allowed with these tokens.
    let r = post_auth(&app, "/api/auth/passkeys/register/start", &access, json!({})).await;
    assert_eq!(r.status(), 200);
    // The refresh token works too.
    let r = app.post("/api/auth/refresh", json!({"refresh_token": tokens["refresh_token"]})).await;
    assert_eq!(r.status(), 200);

    // With the user handle: the account's passkeys are listed.
    let start = login_start(&app, Some(account.user_id)).await;
    let allowed = start["options"]["publicKey"]["allowCredentials"].as_array().unwrap().clone();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0]["id"], credential_id.as_str());
    let assertion = authn.get(&start["options"]);
    let r = login_finish(&app, &start, &assertion).await;
    assert_eq!(r.status(), 200);
    let tokens: Value = r.json().await.unwrap();
    app.wait_for("/api/users/me", tokens["access_token"].as_str().unwrap(), |s, _| s == 200).await;

    // An account without passkeys gets a request no credential can answer.
    let other = signed_in(&app, "sam@example.com").await;
    let start = login_start(&app, Some(other.user_id)).await;
    assert!(start["options"]["publicKey"]["allowCredentials"].as_array().is_none_or(|a| a.is_empty()));
    let assertion = authn.get(&start["options"]);
    let r = login_finish(&app, &start, &assertion).await;
    assert_eq!(error_code(r).await, (401, "passkey_rejected".to_owned()));

    // The last use is projected.
    app.wait_for("/api/users/me/passkeys", &account.access, |_, b| !b[0]["last_used_at"].is_null()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_forged_and_cloned_assertions_are_refused() {
    let (app, _) = app_and_issuer(Feed::Postgres).await;
    let account = signed_in(&app, "pat@example.com").await;
    let mut authn = SoftAuthenticator::new(ORIGIN);
    register_passkey(&app, &account, &mut authn, "Key").await;

    let start = login_start(&app, None).await;
    let assertion = authn.get(&start["options"]);
    assert_eq!(login_finish(&app, &start, &assertion).await.status(), 200);

    // Replayed: the ceremony is spent; on a new ceremony the challenge differs.
    let r = login_finish(&app, &start, &assertion).await;
    assert_eq!(error_code(r).await, (400, "invalid_ceremony".to_owned()));
    let fresh = login_start(&app, None).await;
    let r = login_finish(&app, &fresh, &assertion).await;
    assert_eq!(error_code(r).await, (401, "passkey_rejected".to_owned()));

    // Forged: the right credential id and counter, signed by another key.
    let fresh = login_start(&app, None).await;
    authn.credentials[0].counter += 1;
    let challenge = fresh["options"]["publicKey"]["challenge"].as_str().unwrap();
    let cred = &authn.credentials[0];
    let forged =
        authn.sign(challenge, cred, &SigningKey::random(&mut rand::rngs::OsRng), Some(&cred.user_handle));
    let r = login_finish(&app, &fresh, &forged).await;
    assert_eq!(error_code(r).await, (401, "passkey_rejected".to_owned()));

    // A genuine signature claiming another user's handle.
    let other = signed_in(&app, "sam@example.com").await;
    let fresh = login_start(&app, None).await;
    authn.credentials[0].counter += 1;
    let challenge = fresh["options"]["publicKey"]["challenge"].as_str().unwrap();
    let cred = &authn.credentials[0];
    let swapped = authn.sign(challenge, cred, &cred.key, Some(other.user_id.as_bytes()));
    let r = login_finish(&app, &fresh, &swapped).await;
    assert_eq!(error_code(r).await, (401, "passkey_rejected".to_owned()));
    // …or no user handle at all on a usernameless login.
    let fresh = login_start(&app, None).await;
    let challenge = fresh["options"]["publicKey"]["challenge"].as_str().unwrap();
    let cred = &authn.credentials[0];
    let anonymous = authn.sign(challenge, cred, &cred.key, None);
    let r = login_finish(&app, &fresh, &anonymous).await;
    assert_eq!(error_code(r).await, (401, "passkey_rejected".to_owned()));
    // A user-handle login bound to another account is not answered by this passkey.
    let fresh = login_start(&app, Some(other.user_id)).await;
    let assertion = authn.get(&fresh["options"]);
    assert_eq!(login_finish(&app, &fresh, &assertion).await.status(), 401);

    // Cloned: a copy of the authenticator whose counter lags behind.
    let start = login_start(&app, None).await;
    let assertion = authn.get(&start["options"]);
    assert_eq!(login_finish(&app, &start, &assertion).await.status(), 200);
    let used = authn.credentials[0].counter;
    authn.credentials[0].counter = used - 2; // the next assertion carries used - 1
    let start = login_start(&app, None).await;
    let assertion = authn.get(&start["options"]);
    let r = login_finish(&app, &start, &assertion).await;
    assert_eq!(error_code(r).await, (401, "passkey_counter_regressed".to_owned()));
    let regressed: (i64, Value) = sqlx::query_as(
        "SELECT count(*) OVER (), payload -> 'PasskeyCounterRegressed' FROM events
         WHERE event_type = 'PasskeyCounterRegressed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(regressed.0, 1);
    assert_eq!(regressed.1["presented_counter"], used - 1);
    assert_eq!(regressed.1["stored_counter"], used);
    // An equal counter is refused as well; a higher one is accepted again.
    let start = login_start(&app, None).await;
    authn.credentials[0].counter = used - 1;
    let assertion = authn.get(&start["options"]);
    assert_eq!(login_finish(&app, &start, &assertion).await.status(), 401);
    let start = login_start(&app, None).await;
    authn.credentials[0].counter = used + 5;
    let assertion = authn.get(&start["options"]);
    assert_eq!(login_finish(&app, &start, &assertion).await.status(), 200);

    // Garbage in a credential is a 422, never a 500.
    let start = login_start(&app, None).await;
    let r = login_finish(&app, &start, &json!({"id": "x"})).await;
    assert_eq!(r.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_passkey_needs_a_recent_authentication_and_ends_its_use() {
    let (app, issuer) = app_and_issuer(Feed::Kafka).await;
    let account = signed_in(&app, "pat@example.com").await;
    let mut authn = SoftAuthenticator::new(ORIGIN);
    let credential_id = register_passkey(&app, &account, &mut authn, "Tablet").await;
    app.wait_for("/api/auth/check-session", &account.access, |_, b| {
        b["quick_factors"].as_array().is_some_and(|f| f.iter().any(|x| x == "passkey"))
    })
    .await;

    let path = format!("/api/users/me/passkeys/{credential_id}");
    let now = Utc::now();
    let (stale, _) =
        issuer.issue_access_at(account.user_id, account.session_id, now, now - Duration::minutes(6)).unwrap();
    assert_eq!(
        error_code(delete_auth(&app, &path, &stale).await).await,
        (403, "reauthentication_required".to_owned())
    );
    // Another user cannot remove it.
    let other = signed_in(&app, "sam@example.com").await;
    assert_eq!(
        error_code(delete_auth(&app, &path, &other.access).await).await,
        (404, "passkey_not_found".to_owned())
    );

    assert_eq!(delete_auth(&app, &path, &account.access).await.status(), 204);
    assert_eq!(delete_auth(&app, &path, &account.access).await.status(), 404);
    app.wait_for("/api/users/me/passkeys", &account.access, |s, b| {
        s == 200 && b.as_array().is_some_and(|a| a.is_empty())
    })
    .await;
    app.wait_for("/api/auth/check-session", &account.access, |_, b| {
        b["quick_factors"].as_array().is_some_and(|f| f.is_empty())
    })
    .await;

    // The removed passkey no longer signs in.
    let start = login_start(&app, None).await;
    let assertion = authn.get(&start["options"]);
    let r = login_finish(&app, &start, &assertion).await;
    assert_eq!(error_code(r).await, (401, "passkey_rejected".to_owned()));
    // It may be registered again (to this or another account).
    let r = post_auth(&app, "/api/auth/passkeys/register/start", &other.access, json!({})).await;
    let start: Value = r.json().await.unwrap();
    let again = authn.attest(&start["options"], 0);
    let r = post_auth(
        &app,
        "/api/auth/passkeys/register/finish",
        &other.access,
        json!({"ceremony_id": start["ceremony_id"], "credential": again, "label": " "}),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert!(r.json::<Value>().await.unwrap()["label"].is_null());
}
