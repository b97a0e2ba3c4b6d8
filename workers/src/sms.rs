//! SMS delivery: Twilio's Programmable Messaging REST API, or files for
//! development.
//!
//! Twilio: `POST {api_base}/2010-04-01/Accounts/{sid}/Messages.json` with the
//! form fields `To`, `From`, `Body` and HTTP basic auth (account SID, auth
//! token); a created message answers 201. Errors are classified
//! ([`classify_twilio`]): 5xx, 408, 429 and network failures or timeouts are
//! retryable; other 4xx (e.g. 400 with Twilio code 21211, invalid `To`) are
//! permanent. Without Twilio configuration, each message is written to
//! `<SMS_DIR>/<delivery id>.sms`.
//!
//! Nothing here logs or returns the phone number or the body: failure
//! reasons carry the HTTP status and Twilio's numeric error code only
//! (Twilio's error `message` may quote the number and is dropped).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::send_error::{NotifyError, SendError};

/// Twilio's production API base URL (`TWILIO_API_BASE` default).
pub const DEFAULT_TWILIO_API_BASE: &str = "https://api.twilio.com";

/// Longest wait for one Twilio request, connect included.
pub const DEFAULT_TWILIO_TIMEOUT: Duration = Duration::from_secs(10);

/// Twilio error codes that come with a 4xx status but are worth retrying:
/// 20429 (too many requests) and 21611 (the sender's queue is full).
const RETRYABLE_TWILIO_CODES: &[u64] = &[20429, 21611];

/// How to reach Twilio. `Debug` hides the auth token.
#[derive(Clone)]
pub struct TwilioConfig {
    /// Base URL without a trailing path, e.g. [`DEFAULT_TWILIO_API_BASE`]
    /// (`TWILIO_API_BASE`; tests point it at a fake).
    pub api_base: String,
    /// Account SID (`AC…`), the basic-auth user and part of the path
    /// (`TWILIO_ACCOUNT_SID`).
    pub account_sid: String,
    /// Auth token, the basic-auth password (`TWILIO_AUTH_TOKEN`).
    pub auth_token: String,
    /// Sender: an E.164 number or a messaging service's alphanumeric id
    /// (`TWILIO_FROM`).
    pub from: String,
    /// Longest wait for one request (default [`DEFAULT_TWILIO_TIMEOUT`]).
    pub timeout: Duration,
}

impl fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("api_base", &self.api_base)
            .field("account_sid", &self.account_sid)
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A Twilio Messages API client.
pub struct TwilioClient {
    http: reqwest::Client,
    messages_url: String,
    account_sid: String,
    auth_token: String,
    from: String,
}

impl fmt::Debug for TwilioClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioClient").field("messages_url", &self.messages_url).finish_non_exhaustive()
    }
}

impl TwilioClient {
    /// A client for `config`.
    ///
    /// # Errors
    /// [`NotifyError::Config`] when the SID is not alphanumeric (it goes into
    /// the URL path), a field is empty, or the HTTP client cannot be built.
    pub fn new(config: &TwilioConfig) -> Result<Self, NotifyError> {
        if config.account_sid.is_empty() || !config.account_sid.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(NotifyError::Config("TWILIO_ACCOUNT_SID must be alphanumeric".into()));
        }
        if config.auth_token.is_empty() || config.from.is_empty() {
            return Err(NotifyError::Config("TWILIO_AUTH_TOKEN and TWILIO_FROM must not be empty".into()));
        }
        let base = config.api_base.trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(NotifyError::Config("TWILIO_API_BASE must be an http(s) URL".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // Never resend the credentials somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NotifyError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            messages_url: format!("{base}/2010-04-01/Accounts/{}/Messages.json", config.account_sid),
            account_sid: config.account_sid.clone(),
            auth_token: config.auth_token.clone(),
            from: config.from.clone(),
        })
    }

    /// Sends `body` to `to` (E.164). Returns Twilio's message SID (`SM…`).
    ///
    /// # Errors
    /// [`SendError::Retryable`] or [`SendError::Permanent`] as classified by
    /// [`classify_twilio`]; network errors and timeouts are retryable.
    pub async fn send(&self, to: &str, body: &str) -> Result<String, SendError> {
        let response = self
            .http
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&[("To", to), ("From", self.from.as_str()), ("Body", body)])
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        // A body that cannot be read leaves only the status to classify by.
        let bytes = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            let sid = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("sid").and_then(|s| s.as_str()).map(str::to_owned))
                .unwrap_or_default();
            return Ok(sid);
        }
        Err(classify_twilio(status.as_u16(), &bytes))
    }
}

fn transport_error(e: &reqwest::Error) -> SendError {
    if e.is_builder() {
        SendError::Permanent("twilio: invalid request".into())
    } else if e.is_timeout() {
        SendError::Retryable("twilio: timeout".into())
    } else if e.is_connect() {
        SendError::Retryable("twilio: connection failed".into())
    } else {
        SendError::Retryable("twilio: transport error".into())
    }
}

/// Classifies a non-2xx Twilio answer by its HTTP `status` and the numeric
/// `code` of its JSON error body (`{"code": 21211, "message": …, "status": 400}`).
///
/// Retryable: 5xx, 408, 429, and 4xx with a code Twilio documents as
/// transient (20429, 21611). Permanent: every other 4xx (invalid or
/// unsubscribed number, bad credentials, …). Anything else (3xx) is
/// retryable. The reason is `twilio: <status>` plus ` code <code>` when the
/// body has one — never Twilio's message, which may quote the number.
pub fn classify_twilio(status: u16, body: &[u8]) -> SendError {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(serde_json::Value::as_u64));
    let reason = match code {
        Some(c) => format!("twilio: {status} code {c}"),
        None => format!("twilio: {status}"),
    };
    let retryable_code = code.is_some_and(|c| RETRYABLE_TWILIO_CODES.contains(&c));
    if (400..500).contains(&status) && status != 408 && status != 429 && !retryable_code {
        SendError::Permanent(reason)
    } else {
        SendError::Retryable(reason)
    }
}

/// Where SMS go.
#[derive(Debug)]
pub enum SmsSender {
    /// Twilio's REST API.
    Twilio(TwilioClient),
    /// Text files `<stem>.sms` (`To:` line, blank line, body) in a
    /// directory, for development.
    Files(PathBuf),
}

impl SmsSender {
    /// Twilio when `twilio` is given, else files under `sms_dir`.
    ///
    /// # Errors
    /// [`NotifyError::Config`] from [`TwilioClient::new`].
    pub fn new(twilio: Option<&TwilioConfig>, sms_dir: PathBuf) -> Result<Self, NotifyError> {
        match twilio {
            Some(config) => Ok(Self::Twilio(TwilioClient::new(config)?)),
            None => Ok(Self::Files(sms_dir)),
        }
    }

    /// Sends `body` to `to` (E.164); `file_stem` names the file in file mode
    /// (the delivery id).
    ///
    /// # Errors
    /// [`SendError::Permanent`] when `to` is not `+` and 8–15 digits;
    /// Twilio's classified errors; [`SendError::Retryable`] when the file
    /// cannot be written.
    pub async fn send(&self, to: &str, body: &str, file_stem: &str) -> Result<(), SendError> {
        if !looks_like_e164(to) {
            return Err(SendError::Permanent("sms: recipient is not an E.164 number".into()));
        }
        match self {
            Self::Twilio(client) => {
                let sid = client.send(to, body).await?;
                tracing::debug!(message_sid = %sid, "Twilio accepted the message");
                Ok(())
            }
            Self::Files(dir) => crate::dev_files::write_whole(
                dir,
                file_stem,
                "sms",
                format!("To: {to}\n\n{body}\n").into_bytes(),
            )
            .await
            .map_err(|e| SendError::Retryable(format!("sms file: {}", e.kind()))),
        }
    }
}

fn looks_like_e164(to: &str) -> bool {
    to.strip_prefix('+').is_some_and(|d| (8..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_errors_are_classified() {
        let invalid =
            br#"{"code": 21211, "message": "The 'To' number +15005550001 is not valid.", "status": 400}"#;
        assert_eq!(classify_twilio(400, invalid), SendError::Permanent("twilio: 400 code 21211".into()));
        assert_eq!(
            classify_twilio(401, b"{\"code\": 20003}"),
            SendError::Permanent("twilio: 401 code 20003".into())
        );
        assert_eq!(classify_twilio(500, b""), SendError::Retryable("twilio: 500".into()));
        assert_eq!(classify_twilio(503, b"oops"), SendError::Retryable("twilio: 503".into()));
        assert_eq!(
            classify_twilio(429, b"{\"code\": 20429}"),
            SendError::Retryable("twilio: 429 code 20429".into())
        );
        assert_eq!(
            classify_twilio(400, b"{\"code\": 21611}"),
            SendError::Retryable("twilio: 400 code 21611".into())
        );
        assert_eq!(classify_twilio(408, b""), SendError::Retryable("twilio: 408".into()));
    }

    #[test]
    fn reasons_never_quote_twilio_messages() {
        let body = br#"{"code": 21211, "message": "The 'To' number +15005550001 is not valid."}"#;
        let reason = classify_twilio(400, body).to_string();
        assert!(!reason.contains("+1500"), "{reason}");
    }

    #[test]
    fn e164_check() {
        assert!(looks_like_e164("+4915112345678"));
        assert!(!looks_like_e164("4915112345678"));
        assert!(!looks_like_e164("+49 151"));
        assert!(!looks_like_e164("+1234"));
    }

    #[test]
    fn config_debug_hides_the_token() {
        let c = TwilioConfig {
            api_base: DEFAULT_TWILIO_API_BASE.into(),
            account_sid: "AC123".into(),
            auth_token: "very-secret".into(),
            from: "+15005550006".into(),
            timeout: DEFAULT_TWILIO_TIMEOUT,
        };
        assert!(!format!("{c:?}").contains("very-secret"));
        assert!(TwilioClient::new(&TwilioConfig { account_sid: "AC/../x".into(), ..c }).is_err());
    }
}
