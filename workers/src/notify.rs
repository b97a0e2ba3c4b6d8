//! The notifier: reacts to events that name a sealed delivery record (every
//! such event carries `payload.delivery_id`: `OtpIssued`, notices such as
//! `DuplicateRegistrationAttempted`), opens the record, sends the message by
//! mail or SMS, and deletes the record (ARCHITECTURE decided 6).
//!
//! # Durable delivery
//!
//! A record is *claimed* before each send: one statement bumps its
//! `attempts` and pushes its `next_attempt_at` a lease ahead
//! ([`RetryPolicy::lease`]), under `FOR UPDATE SKIP LOCKED`, so several
//! notifiers never send it at the same time and a crash mid-send makes it
//! due again after the lease instead of losing it.
//!
//! - [`Notifier::handle`] (one envelope) claims records whose first attempt
//!   has not run (`attempts = 0`) and tries once; [`Notifier::handle_batch`]
//!   does the same for a feed batch with one claim statement, the sends one
//!   after the other, and one append recording every sent code's outcome. A retryable failure
//!   schedules the next attempt (exponential back-off,
//!   [`RetryPolicy::delay_after`]) and moves on, so one bad recipient never
//!   blocks the feed.
//! - [`Notifier::retry_due`] claims due records that already had an attempt
//!   (the retry loop).
//! - After a success the record is deleted by the statement that appends
//!   the challenge's `RecordDelivery` outcome (a notice's record alone):
//!   a redelivered event finds no record and sends nothing twice.
//! - An event carrying a new code of a challenge (resend) drops the pending
//!   deliveries of its older codes (those claimed by events of a lower
//!   sequence), so a late send or failure of an old code cannot decide the
//!   challenge's delivery outcome.
//! - After a permanent error, [`RetryPolicy::max_attempts`] attempts, or
//!   when the code expired before it could be sent, the record is deleted and
//!   `RecordDeliveryFailure` is executed (`OtpDeliveryFailed`); a failed
//!   notice is only logged.
//!
//! Mail goes through SMTP (lettre with rustls, `SMTP_URL` =
//! `smtp://host:port`, `smtps://…` or `smtp://…?tls=required`) or, without
//! `SMTP_URL`, into `.eml` files under `MAIL_DIR`; SMS through Twilio or
//! files ([`crate::sms`]). Logs and stored failure reasons carry ids, status
//! codes and provider error codes only — never a recipient, a body or a code.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use commands::deliveries::{Delivery, DeliveryError, DeliveryStore, SentDelivery};
use commands::executor::{ExecError, Executor};
use domain::envelope::Envelope;
use domain::otp::{OtpChallenge, OtpCommand};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::Message;
use projections::feed::{EventFeed, PacedAcks};
use projections::runtime::ErrorChain;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

mod batch;
mod mail;
mod templates;

pub use mail::{classify_smtp, Mailer};
pub use templates::{render, render_sms};

pub use crate::send_error::{NotifyError, SendError};
use crate::sms::SmsSender;

/// Default [`RetryPolicy::max_attempts`] (`DELIVERY_MAX_ATTEMPTS`).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
/// Default [`RetryPolicy::base_delay`]: 2 s (`DELIVERY_RETRY_BASE_MS`).
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(2);
/// Default [`RetryPolicy::max_delay`]: 5 min.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);
/// Default [`RetryPolicy::lease`]: 60 s.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// Default [`RetryPolicy::poll_interval`]: 500 ms.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Aggregate type whose deliveries have their outcome recorded on the
/// aggregate (`OtpDelivered` / `OtpDeliveryFailed`).
const OTP_AGGREGATE_TYPE: &str = "otp_challenge";

/// How long [`Notifier::run`] may leave handled batches unacknowledged
/// (the projection runner's default `commit_interval` too).
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// The delivery record an event names, if it names one: every event that
/// asks for a message carries its record's id as `payload.delivery_id`.
pub fn delivery_id(env: &Envelope) -> Option<Uuid> {
    env.payload.get("delivery_id").and_then(|v| v.as_str()).and_then(|s| Uuid::parse_str(s).ok())
}

/// Attempts and back-off of deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before a retryable failure becomes final (default
    /// [`DEFAULT_MAX_ATTEMPTS`]; at least 1).
    pub max_attempts: u32,
    /// Wait after the first failed attempt (default [`DEFAULT_RETRY_BASE`]);
    /// doubled after each further failure.
    pub base_delay: Duration,
    /// Longest wait between attempts (default [`DEFAULT_RETRY_MAX`]).
    pub max_delay: Duration,
    /// How long a claimed record stays invisible to other claims while it is
    /// being sent (default [`DEFAULT_LEASE`]); a send is abandoned as a
    /// retryable timeout after half of it, and a notifier that crashed
    /// mid-send has its record retried after it.
    pub lease: Duration,
    /// How often [`Notifier::run`] looks for due retries and how long it
    /// waits for events per step (default [`DEFAULT_POLL_INTERVAL`]).
    pub poll_interval: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: DEFAULT_RETRY_BASE,
            max_delay: DEFAULT_RETRY_MAX,
            lease: DEFAULT_LEASE,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

impl RetryPolicy {
    /// Wait before the next attempt after `attempts` failed ones:
    /// `base_delay · 2^(attempts − 1)`, capped at `max_delay`.
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.base_delay.saturating_mul(1u32 << doublings).min(self.max_delay)
    }
}

/// What the notifier did with one envelope or one claimed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Sent; the record is deleted and the outcome recorded.
    Sent,
    /// A retryable failure; the next attempt is scheduled.
    RetryScheduled,
    /// Finally failed (permanent error or attempts exhausted); the record is
    /// deleted and the failure recorded.
    Failed,
    /// The code expired before it could be sent; deleted, recorded as failed.
    Expired,
    /// The record is gone: already sent, failed or purged.
    AlreadyGone,
    /// The record is in the retry loop's hands (or another notifier's).
    Deferred,
    /// The event asks for nothing.
    Ignored,
}

/// A claimed record, as returned by the claim statements.
#[derive(Debug, sqlx::FromRow)]
struct Claim {
    delivery_id: Uuid,
    attempts: i32,
    expired: bool,
    source_type: Option<String>,
    source_id: Option<String>,
    /// The sealed record, read by the claim itself (no second read).
    sealed: Vec<u8>,
    /// Pending deliveries of the challenge's older codes the claim dropped.
    superseded: i64,
}

impl Claim {
    fn attempts(&self) -> u32 {
        u32::try_from(self.attempts).unwrap_or(0)
    }

    /// The challenge whose delivery this is, if it is an OTP delivery.
    fn challenge(&self) -> Option<&str> {
        (self.source_type.as_deref() == Some(OTP_AGGREGATE_TYPE))
            .then_some(self.source_id.as_deref())
            .flatten()
    }
}

/// Where one attempt on a claimed record got to ([`Notifier::try_send`]).
enum Attempt {
    /// Sent; the outcome is not recorded yet and the record still there.
    Sent {
        claim: Claim,
        /// When the send completed (the outcome's time).
        sent_at: chrono::DateTime<Utc>,
        /// The delivery's channel (`email`, `sms`), for logs and metrics.
        channel: String,
        /// The delivery's template, for logs.
        template: String,
    },
    /// Finished otherwise: a retry scheduled, a failure recorded, nothing
    /// to send.
    Done(Handled),
}

/// Claims of due retries, returning the sealed records.
const CLAIM_DUE: &str = "UPDATE deliveries SET attempts = attempts + 1, \
         next_attempt_at = now() + make_interval(secs => $2) \
     WHERE delivery_id IN (SELECT delivery_id FROM deliveries \
                           WHERE attempts > 0 AND next_attempt_at <= now() \
                           ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
     RETURNING delivery_id, attempts, expires_at <= now() AS expired, source_type, source_id, sealed, \
               0::bigint AS superseded";

const SCHEDULE_RETRY: &str = "UPDATE deliveries \
     SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3 WHERE delivery_id = $1";

/// Orphans: records whose event never came (the command failed and the
/// clean-up too), an hour past their expiry. Records with attempts are
/// always finished by the retry loop, which records their outcome.
const PURGE_ORPHANS: &str =
    "DELETE FROM deliveries WHERE attempts = 0 AND expires_at < now() - interval '1 hour'";

/// Sends the messages events ask for.
pub struct Notifier {
    pool: PgPool,
    deliveries: DeliveryStore,
    mailer: Mailer,
    sms: SmsSender,
    from: Mailbox,
    otps: Executor<OtpChallenge>,
    policy: RetryPolicy,
}

impl Notifier {
    /// A notifier with the default [`RetryPolicy`]. `pool` is the database of
    /// the `deliveries` table and the event store; `from` is the sender
    /// mailbox, e.g. `streamforge <no-reply@streamforge.local>`.
    ///
    /// # Errors
    /// [`NotifyError::Config`] when `from` is not a mailbox.
    pub fn new(
        pool: PgPool,
        deliveries: DeliveryStore,
        mailer: Mailer,
        sms: SmsSender,
        from: &str,
    ) -> Result<Self, NotifyError> {
        let from =
            from.parse().map_err(|e: lettre::address::AddressError| NotifyError::Config(e.to_string()))?;
        let otps = Executor::new(pool.clone(), ());
        Ok(Self { pool, deliveries, mailer, sms, from, otps, policy: RetryPolicy::default() })
    }

    /// Replaces the [`RetryPolicy`] (`max_attempts` below 1 counts as 1).
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = RetryPolicy { max_attempts: policy.max_attempts.max(1), ..policy };
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Handles one envelope: claims the record it names (first attempt
    /// only) and tries to send it once.
    ///
    /// # Errors
    /// [`NotifyError`] on database failures; the envelope should then be
    /// delivered again (a claimed record is retried after its lease anyway).
    #[tracing::instrument(skip_all, fields(event_id = %env.event_id, event_type = %env.event_type))]
    pub async fn handle(&self, env: &Envelope) -> Result<Handled, NotifyError> {
        let Some(id) = delivery_id(env) else {
            return Ok(Handled::Ignored);
        };
        match self.claim_new(&[(env, id)]).await?.remove(&id) {
            Some(claim) => self.attempt(claim).await,
            None => {
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT attempts FROM deliveries WHERE delivery_id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(Self::unclaimed(id, exists.is_some()))
            }
        }
    }

    fn log_superseded(claim: &Claim) {
        if claim.superseded > 0 {
            tracing::info!(superseded = claim.superseded, "dropped pending deliveries of older codes");
        }
    }

    /// What became of an event whose record could not be claimed: still
    /// there (`present`: attempted before, the retry loop's) or gone.
    fn unclaimed(id: Uuid, present: bool) -> Handled {
        if present {
            tracing::debug!(delivery_id = %id, "delivery already attempted; left to the retry loop");
            Handled::Deferred
        } else {
            tracing::debug!(delivery_id = %id, "delivery record gone; nothing to send");
            Handled::AlreadyGone
        }
    }

    /// One step of the retry loop: claims up to `max` due records that
    /// already had an attempt and tries each once. Returns what happened to
    /// each, in claim order.
    ///
    /// # Errors
    /// [`NotifyError`] on database failures; records claimed but not
    /// finished are retried after their lease.
    #[tracing::instrument(skip_all)]
    pub async fn retry_due(&self, max: usize) -> Result<Vec<Handled>, NotifyError> {
        let claims: Vec<Claim> = sqlx::query_as(CLAIM_DUE)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .bind(self.policy.lease.as_secs_f64())
            .fetch_all(&self.pool)
            .await?;
        let mut done = Vec::with_capacity(claims.len());
        for claim in claims {
            done.push(self.attempt(claim).await?);
        }
        Ok(done)
    }

    /// One attempt on a claimed record, its outcome recorded.
    async fn attempt(&self, claim: Claim) -> Result<Handled, NotifyError> {
        match self.try_send(claim, None).await? {
            Attempt::Sent { claim, sent_at, channel, template } => {
                self.record_sent(&claim, sent_at).await?;
                Self::log_sent(&claim, &channel, &template);
                Ok(Handled::Sent)
            }
            Attempt::Done(handled) => Ok(handled),
        }
    }

    fn log_sent(claim: &Claim, channel: &str, template: &str) {
        tracing::info!(delivery_id = %claim.delivery_id, attempts = claim.attempts(), template, channel, "message sent");
        metrics::counter!("streamforge_deliveries_total", "channel" => channel.to_owned(), "outcome" => "sent")
            .increment(1);
    }

    /// One attempt on a claimed record: a success is returned with the
    /// record still there, for the caller to record ([`Notifier::record_sent`]
    /// or [`Notifier::record_sent_many`]); any other outcome is finished here.
    #[tracing::instrument(skip_all, fields(delivery_id = %claim.delivery_id, attempt = claim.attempts))]
    ///
    /// `deadline`: the send must end by then (a batch's records were all
    /// claimed at its start, and their lease runs from there); a record
    /// whose turn comes after it is not sent but scheduled for a retry, so
    /// that no other notifier's retry loop, finding its lease over, sends
    /// it too.
    async fn try_send(
        &self,
        claim: Claim,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Attempt, NotifyError> {
        let id = claim.delivery_id;
        if claim.expired {
            self.deliveries.delete(id).await?;
            tracing::warn!("code expired before it could be sent; dropped");
            self.record_failure(&claim, "expired before delivery").await;
            return Ok(Attempt::Done(Handled::Expired));
        }
        let delivery = match self.deliveries.open(id, &claim.sealed) {
            Ok(d) => d,
            Err(DeliveryError::Corrupt) => {
                self.deliveries.delete(id).await?;
                tracing::error!("delivery record cannot be opened; dropped");
                self.record_failure(&claim, "record unreadable").await;
                return Ok(Attempt::Done(Handled::Failed));
            }
            Err(e) => return Err(e.into()),
        };
        let mut send_timeout = self.policy.lease / 2;
        if let Some(deadline) = deadline {
            send_timeout = send_timeout.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        }
        let sent = if send_timeout.is_zero() {
            Err(SendError::Retryable(format!("{}: lease ran out before the send", delivery.channel)))
        } else {
            match tokio::time::timeout(send_timeout, self.send(id, &delivery)).await {
                Ok(result) => result,
                Err(_) => Err(SendError::Retryable(format!("{}: timeout", delivery.channel))),
            }
        };
        let attempts = claim.attempts();
        match sent {
            // The record is deleted by the statement that records the
            // success (or before a success that cannot be recorded): a
            // redelivered event finds nothing to send.
            Ok(()) => Ok(Attempt::Sent {
                claim,
                sent_at: Utc::now(),
                channel: delivery.channel,
                template: delivery.template,
            }),
            Err(SendError::Retryable(reason)) if attempts < self.policy.max_attempts => {
                let delay = self.policy.delay_after(attempts);
                sqlx::query(SCHEDULE_RETRY)
                    .bind(id)
                    .bind(delay.as_secs_f64())
                    .bind(&reason)
                    .execute(&self.pool)
                    .await?;
                tracing::warn!(attempts, %reason, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "send failed; retry scheduled");
                metrics::counter!("streamforge_deliveries_total", "channel" => delivery.channel.clone(), "outcome" => "retry")
                    .increment(1);
                Ok(Attempt::Done(Handled::RetryScheduled))
            }
            Err(e) => {
                self.deliveries.delete(id).await?;
                let permanent = matches!(e, SendError::Permanent(_));
                tracing::warn!(attempts, reason = %e, permanent, "delivery failed for good");
                metrics::counter!("streamforge_deliveries_total", "channel" => delivery.channel.clone(), "outcome" => "failed")
                    .increment(1);
                self.record_failure(&claim, e.reason()).await;
                Ok(Attempt::Done(Handled::Failed))
            }
        }
    }

    /// Deletes a sent record, retrying briefly: a record left behind would
    /// be sent again after its lease.
    async fn delete_after_send(&self, id: Uuid) -> Result<(), NotifyError> {
        self.delete_many_after_send(&[id]).await
    }

    async fn send(&self, id: Uuid, d: &Delivery) -> Result<(), SendError> {
        let stem = id.to_string();
        match d.channel.as_str() {
            "email" => {
                let to: Mailbox =
                    d.to.parse()
                        .map_err(|_| SendError::Permanent("email: invalid recipient address".into()))?;
                let (subject, body) = render(d);
                let message = Message::builder()
                    .from(self.from.clone())
                    .to(to)
                    .subject(subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(body)
                    .map_err(|_| SendError::Permanent("email: cannot build the message".into()))?;
                self.mailer.send(message, &stem).await
            }
            "sms" => self.sms.send(&d.to, &render_sms(d), &stem).await,
            other => Err(SendError::Permanent(format!("unsupported channel `{other}`"))),
        }
    }

    /// Deletes a sent record and records the success on its challenge in
    /// one statement ([`SentDelivery`]); a notice (no challenge), a success
    /// already recorded, or one the challenge refuses or the store fails to
    /// take, deletes the record on its own ([`Notifier::delete_after_send`]), the outcome
    /// then logged as not recorded.
    async fn record_sent(&self, claim: &Claim, at: chrono::DateTime<Utc>) -> Result<(), NotifyError> {
        let id = claim.delivery_id;
        let Some(challenge) = claim.challenge() else { return self.delete_after_send(id).await };
        let cmd = OtpCommand::RecordDelivery { attempts: claim.attempts(), at };
        let name = "RecordDelivery";
        match self.otps.execute_with(challenge, cmd, Self::metadata(name), &SentDelivery(id)).await {
            // Nothing appended (an outcome already recorded): nor deleted.
            Ok(done) if done.events.is_empty() => self.delete_after_send(id).await,
            Ok(_) => Ok(()),
            Err(e) => {
                self.delete_after_send(id).await?;
                Self::not_recorded(challenge, name, &e);
                Ok(())
            }
        }
    }

    async fn record_failure(&self, claim: &Claim, reason: &str) {
        let Some(challenge) = claim.challenge() else { return };
        let cmd = OtpCommand::RecordDeliveryFailure {
            attempts: claim.attempts(),
            reason: reason.to_owned(),
            at: Utc::now(),
        };
        self.record(challenge, cmd, "RecordDeliveryFailure").await;
    }

    /// Executes an outcome command on the challenge. The record is already
    /// deleted, so a failure here cannot be retried by redelivery: logged.
    async fn record(&self, challenge: &str, cmd: OtpCommand, name: &str) {
        if let Err(e) = self.otps.execute(challenge, cmd, Self::metadata(name)).await {
            Self::not_recorded(challenge, name, &e);
        }
    }

    /// The metadata of an outcome command `name`.
    fn metadata(name: &str) -> HashMap<String, String> {
        let mut metadata = HashMap::new();
        metadata.insert("command".to_owned(), name.to_owned());
        metadata.insert("source".to_owned(), "notifier".to_owned());
        metadata
    }

    fn not_recorded(challenge: &str, name: &str, e: &ExecError<domain::otp::OtpError>) {
        match e {
            ExecError::Domain(e) => {
                tracing::warn!(challenge_id = %challenge, error = %e, command = name, "outcome not recorded");
            }
            e => {
                tracing::error!(challenge_id = %challenge, error = %e, command = name, "outcome not recorded")
            }
        }
    }

    /// Handles one batch from `feed`, then acknowledges it. Returns how many
    /// envelopes were read. A failed send does not fail the step (it is
    /// scheduled or recorded); a database failure stops at that envelope
    /// without acknowledging — roll the feed back before the next step
    /// ([`Notifier::run`] does).
    ///
    /// # Errors
    /// [`NotifyError`].
    pub async fn run_once(
        &self,
        feed: &mut dyn EventFeed,
        max: usize,
        max_wait: Duration,
    ) -> Result<usize, NotifyError> {
        self.step(feed, max, max_wait, &mut PacedAcks::new(Duration::ZERO)).await
    }

    /// Handles one batch from `feed`, then acknowledges as `acks` says:
    /// [`Notifier::run`] at most every [`COMMIT_INTERVAL`], as the
    /// projection runner does, not per batch on the latency path. After a
    /// crash at most that much is delivered again, and finds its records
    /// sent (deleted) or leased.
    async fn step(
        &self,
        feed: &mut dyn EventFeed,
        max: usize,
        max_wait: Duration,
        acks: &mut PacedAcks,
    ) -> Result<usize, NotifyError> {
        let batch = feed.next_batch(max, max_wait).await?;
        self.handle_batch(&batch).await?;
        acks.after_batch(feed, batch.len()).await?;
        Ok(batch.len())
    }

    /// Deletes orphaned records (see the purge rule on `deliveries`).
    /// Returns how many were removed.
    ///
    /// # Errors
    /// [`NotifyError::Database`].
    pub async fn purge_orphans(&self) -> Result<u64, NotifyError> {
        Ok(sqlx::query(PURGE_ORPHANS).execute(&self.pool).await?.rows_affected())
    }

    /// Runs until `shutdown` turns true (or its sender is dropped): feed
    /// steps ([`Notifier::run_once`], waiting up to the poll interval for
    /// events), the retry loop ([`Notifier::retry_due`]) every poll interval,
    /// and [`Notifier::purge_orphans`] hourly. Steps are never cancelled
    /// mid-send; failures are logged with their cause chain, the feed is
    /// rolled back, and the step retried after a growing pause (max 30 s).
    pub async fn run(&self, feed: &mut dyn EventFeed, shutdown: watch::Receiver<bool>) {
        let poll = self.policy.poll_interval.max(Duration::from_millis(10));
        let mut backoff = Duration::from_millis(100);
        let mut last_retry: Option<tokio::time::Instant> = None;
        let mut last_purge = tokio::time::Instant::now();
        let mut acks = PacedAcks::new(COMMIT_INTERVAL);
        while !*shutdown.borrow() {
            match self.step(&mut *feed, 100, poll, &mut acks).await {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    acks.forget();
                    tracing::error!(error = %ErrorChain(&e), "notifier step failed; will retry");
                    if let Err(e) = feed.rollback().await {
                        tracing::error!(error = %ErrorChain(&e), "feed rollback failed");
                    }
                    let mut s = shutdown.clone();
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        _ = s.changed() => {},
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
            if last_retry.is_none_or(|t| t.elapsed() >= poll) {
                last_retry = Some(tokio::time::Instant::now());
                if let Err(e) = self.retry_due(100).await {
                    tracing::error!(error = %ErrorChain(&e), "retry step failed");
                }
            }
            if last_purge.elapsed() > Duration::from_secs(3600) {
                last_purge = tokio::time::Instant::now();
                match self.purge_orphans().await {
                    Ok(n) if n > 0 => tracing::info!(purged = n, "purged orphaned delivery records"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %ErrorChain(&e), "purging delivery records failed"),
                }
            }
        }
        tracing::info!("notifier stopped");
    }
}

#[cfg(test)]
mod tests;
