//! The notifier: reacts to events that name a sealed delivery record
//! (`OtpIssued` → the challenge id, `DuplicateRegistrationAttempted` → the
//! notice id), opens the record, sends the message, and deletes the record
//! (ARCHITECTURE decided 6). A record that is gone was already sent (or
//! expired), so a redelivered event sends nothing twice after success.
//!
//! Mail goes through SMTP (lettre, `SMTP_URL` = `smtp://host:port`,
//! `smtps://…` or `smtp://…?tls=required`) or, without `SMTP_URL`, into
//! `.eml` files under `MAIL_DIR`. Logs carry ids only, never the recipient
//! or the code.

use std::path::PathBuf;
use std::time::Duration;

use commands::deliveries::{Delivery, DeliveryStore};
use domain::envelope::Envelope;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use projections::feed::EventFeed;
use tokio::sync::watch;
use uuid::Uuid;

/// Notifier failures.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid mail configuration: {0}")]
    Config(String),
    #[error("delivery record error")]
    Delivery(#[from] commands::deliveries::DeliveryError),
    #[error("cannot build the message: {0}")]
    Message(String),
    #[error("SMTP send failed: {0}")]
    Smtp(String),
    #[error("cannot write the mail file")]
    File(#[from] std::io::Error),
    #[error("channel `{0}` has no sender configured")]
    UnsupportedChannel(String),
    #[error("event feed failed")]
    Feed(#[from] projections::feed::FeedError),
}

/// Where mail goes.
pub enum Mailer {
    /// A real SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// RFC 5322 files (`<event id>.eml`) in a directory, for development.
    Files(PathBuf),
}

impl Mailer {
    /// SMTP when `smtp_url` is set, else files under `mail_dir`.
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

    async fn send(&self, message: Message, file_stem: &str) -> Result<(), NotifyError> {
        match self {
            Self::Smtp(t) => t.send(message).await.map(|_| ()).map_err(|e| NotifyError::Smtp(e.to_string())),
            Self::Files(dir) => {
                tokio::fs::create_dir_all(dir).await?;
                let tmp = dir.join(format!("{file_stem}.eml.tmp"));
                tokio::fs::write(&tmp, message.formatted()).await?;
                tokio::fs::rename(&tmp, dir.join(format!("{file_stem}.eml"))).await?;
                Ok(())
            }
        }
    }
}

/// Subject and plain-text body of a delivery.
pub fn render(d: &Delivery) -> (String, String) {
    let code = d.code.as_deref().unwrap_or("");
    let expiry =
        d.expires_at.map(|e| format!(" It expires at {} UTC.", e.format("%H:%M"))).unwrap_or_default();
    match d.template.as_str() {
        "otp_email_verification" => (
            "Verify your streamforge email".to_owned(),
            format!(
                "Your streamforge verification code is {code}.{expiry}\n\nIf you did not create an account, ignore this mail.\n"
            ),
        ),
        "otp_two_factor" => (
            "Your streamforge sign-in code".to_owned(),
            format!(
                "Your streamforge sign-in code is {code}.{expiry}\n\nIf you did not try to sign in, change your password.\n"
            ),
        ),
        "otp_login" => ("Your streamforge sign-in code".to_owned(), format!("Your code is {code}.{expiry}\n")),
        "otp_password_reset" => (
            "Reset your streamforge password".to_owned(),
            format!("Your password reset code is {code}.{expiry}\n\nIf you did not ask for it, ignore this mail.\n"),
        ),
        "duplicate_registration" => (
            "Someone tried to register with your email".to_owned(),
            "Someone tried to create a streamforge account with this email address, which already has one.\n\
             If it was you, sign in instead or reset your password. If not, you can ignore this mail.\n"
                .to_owned(),
        ),
        other => (format!("streamforge: {other}"), "You have a new notice from streamforge.\n".to_owned()),
    }
}

/// The delivery record an event names, if it names one: every event that
/// asks for a message carries its record's id as `payload.delivery_id`.
pub fn delivery_id(env: &Envelope) -> Option<Uuid> {
    env.payload.get("delivery_id").and_then(|v| v.as_str()).and_then(|s| Uuid::parse_str(s).ok())
}

/// Sends the messages events ask for.
pub struct Notifier {
    deliveries: DeliveryStore,
    mailer: Mailer,
    from: Mailbox,
}

/// What [`Notifier::handle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Sent,
    /// The record is gone: already sent or expired.
    AlreadyGone,
    /// The event asks for nothing.
    Ignored,
}

impl Notifier {
    /// `from` is the sender mailbox, e.g. `streamforge <no-reply@streamforge.local>`.
    ///
    /// # Errors
    /// [`NotifyError::Config`] when `from` is not a mailbox.
    pub fn new(deliveries: DeliveryStore, mailer: Mailer, from: &str) -> Result<Self, NotifyError> {
        let from =
            from.parse().map_err(|e: lettre::address::AddressError| NotifyError::Config(e.to_string()))?;
        Ok(Self { deliveries, mailer, from })
    }

    /// Handles one envelope.
    ///
    /// # Errors
    /// [`NotifyError`] when the send fails; the record is kept so a retry
    /// sends it.
    #[tracing::instrument(skip_all, fields(event_id = %env.event_id, event_type = %env.event_type))]
    pub async fn handle(&self, env: &Envelope) -> Result<Handled, NotifyError> {
        let Some(id) = delivery_id(env) else {
            return Ok(Handled::Ignored);
        };
        let Some(delivery) = self.deliveries.get(id).await? else {
            tracing::debug!(delivery_id = %id, "delivery record gone; nothing to send");
            return Ok(Handled::AlreadyGone);
        };
        if delivery.channel != "email" {
            return Err(NotifyError::UnsupportedChannel(delivery.channel));
        }
        let to: Mailbox = delivery
            .to
            .parse()
            .map_err(|e: lettre::address::AddressError| NotifyError::Message(e.to_string()))?;
        let (subject, body) = render(&delivery);
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| NotifyError::Message(e.to_string()))?;
        self.mailer.send(message, &env.event_id.to_string()).await?;
        self.deliveries.delete(id).await?;
        tracing::info!(delivery_id = %id, template = %delivery.template, "message sent");
        Ok(Handled::Sent)
    }

    /// Handles one batch from `feed`, then acknowledges it. Returns how many
    /// envelopes were read. Stops at the first failure without acknowledging,
    /// so the batch is redelivered.
    ///
    /// # Errors
    /// [`NotifyError`].
    pub async fn run_once(
        &self,
        feed: &mut dyn EventFeed,
        max: usize,
        max_wait: Duration,
    ) -> Result<usize, NotifyError> {
        let batch = feed.next_batch(max, max_wait).await?;
        for env in &batch {
            self.handle(env).await?;
        }
        if !batch.is_empty() {
            feed.commit().await?;
        }
        Ok(batch.len())
    }

    /// Runs until `shutdown` turns true; failures are logged and retried
    /// with a growing pause (max 30 s). Expired records are purged hourly.
    pub async fn run(&self, feed: &mut dyn EventFeed, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut last_purge = tokio::time::Instant::now();
        while !*shutdown.borrow() {
            tokio::select! {
                r = self.run_once(feed, 100, Duration::from_millis(500)) => match r {
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        tracing::error!(error = %e, source = ?std::error::Error::source(&e).map(|s| s.to_string()), "notifier step failed; will retry");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {},
                            _ = shutdown.changed() => {},
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                },
                _ = shutdown.changed() => {},
            }
            if last_purge.elapsed() > Duration::from_secs(3600) {
                last_purge = tokio::time::Instant::now();
                if let Err(e) = self.deliveries.purge_expired(chrono::Utc::now()).await {
                    tracing::warn!(error = %e, "purging expired delivery records failed");
                }
            }
        }
    }
}
