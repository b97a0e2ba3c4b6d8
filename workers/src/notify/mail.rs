//! Where mail goes: SMTP, or `.eml` files for development; and how an SMTP
//! failure is classified.

use std::path::PathBuf;
use std::time::Duration;

use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{NotifyError, SendError};

/// Where mail goes.
pub enum Mailer {
    /// A real SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// RFC 5322 files (`<delivery id>.eml`) in a directory, for development.
    Files(PathBuf),
}

impl Mailer {
    /// SMTP when `smtp_url` is set (each SMTP command times out after 10 s),
    /// else files under `mail_dir`.
    ///
    /// # Errors
    /// [`NotifyError::Config`] for an unparsable URL.
    pub fn new(smtp_url: Option<&str>, mail_dir: PathBuf) -> Result<Self, NotifyError> {
        match smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| NotifyError::Config(e.to_string()))?
                    .timeout(Some(Duration::from_secs(10)))
                    .build();
                Ok(Self::Smtp(transport))
            }
            None => Ok(Self::Files(mail_dir)),
        }
    }

    pub(super) async fn send(&self, message: Message, file_stem: &str) -> Result<(), SendError> {
        match self {
            Self::Smtp(t) => t.send(message).await.map(|_| ()).map_err(|e| classify_smtp(&e)),
            Self::Files(dir) => crate::dev_files::write_whole(dir, file_stem, "eml", message.formatted())
                .await
                .map_err(|e| SendError::Retryable(format!("mail file: {}", e.kind()))),
        }
    }
}

/// Classifies an SMTP failure: a 5xx reply or a client-side error is
/// permanent; 4xx replies, connection, TLS and timeout errors are retryable.
/// The reason keeps the reply code only (the server's text may quote the
/// recipient).
pub fn classify_smtp(e: &lettre::transport::smtp::Error) -> SendError {
    let reason = match e.status() {
        Some(code) => format!("smtp: {code}"),
        None if e.is_timeout() => "smtp: timeout".to_owned(),
        None if e.is_tls() => "smtp: tls error".to_owned(),
        None if e.is_client() => "smtp: client error".to_owned(),
        None if e.is_response() => "smtp: unreadable response".to_owned(),
        None => "smtp: connection failed".to_owned(),
    };
    if e.is_permanent() || e.is_client() {
        SendError::Permanent(reason)
    } else {
        SendError::Retryable(reason)
    }
}
