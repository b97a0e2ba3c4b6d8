//! The one lockout model's calls (docs/identity.md "One lockout model"):
//! checking and counting attempts under failure policies, counting codes
//! sent under request policies, and which events a throttle load folds.

use chrono::{DateTime, Utc};
use domain::throttle::{Policy, RequestPolicy, Throttle, ThrottleCommand, ThrottleEvent};

use super::{IdentityError, IdentityService, RequestMeta};
use crate::executor::{Decided, Loaded, Tail};

/// Attempts to record a failure under write conflicts (each retry waits a
/// jittered, growing delay; see the executor).
pub(crate) const FAILURE_ATTEMPTS: u32 = 64;

/// Throttle streams fold only what decides (a check never replays a
/// stream's whole history): a request stream the events of the last 65
/// minutes (its state keeps the last hour's requests, the longest window),
/// a failure stream from its last `FailuresReset` (which clears every
/// failure field).
pub fn throttle_tail(id: &str) -> Tail {
    if id.starts_with(Policy::OtpRequests.as_str()) {
        Tail::RecordedWithin { secs: 65 * 60 }
    } else {
        Tail::FromLast(&["FailuresReset"])
    }
}

/// A code request decided on the recipient's budget stream, not yet
/// appended ([`IdentityService::decide_request`]).
pub(crate) struct DecidedRequest {
    pub decided: Decided<Throttle>,
    /// `Err(Throttled)` when the budget refused the code.
    pub outcome: Result<(), IdentityError>,
}

impl IdentityService {
    fn throttled_until(retry_after: DateTime<Utc>, now: DateTime<Utc>) -> IdentityError {
        IdentityError::Throttled { retry_after_secs: (retry_after - now).num_seconds().max(1) }
    }

    /// Checks and counts an attempt under failure `policy` in one step
    /// ([`ThrottleCommand::BeginAttempt`]): 429 while delayed or locked;
    /// otherwise the attempt already counts as a failure, and the caller
    /// calls [`IdentityService::record_success`] if it succeeds. A conflict
    /// of parallel attempts past the retries answers `Conflict` and the
    /// attempt is not evaluated.
    pub(crate) async fn begin_attempt(
        &self,
        policy: Policy,
        key: &str,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let now = Utc::now();
        let cmd = ThrottleCommand::BeginAttempt { policy, at: now };
        let done = self.throttles.execute(&policy.key(key), cmd, meta.to_map("BeginAttempt")).await?;
        if done.events.iter().any(|e| matches!(e, ThrottleEvent::FailureRecorded { .. })) {
            return Ok(());
        }
        let until = done.state.retry_after(policy, now).unwrap_or(now);
        Err(Self::throttled_until(until, now))
    }

    /// Refuses (429) while `key` is delayed or locked under `policy`.
    pub(crate) async fn check_attempt(
        &self,
        policy: Policy,
        key: &str,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        self.check_attempt_state(policy, key, meta).await.map(|_| ())
    }

    /// [`IdentityService::check_attempt`], answering the throttle's state as
    /// loaded for the check (so a caller can tell whether a later
    /// `RecordSuccess` has anything to reset).
    pub(crate) async fn check_attempt_state(
        &self,
        policy: Policy,
        key: &str,
        meta: &RequestMeta,
    ) -> Result<Throttle, IdentityError> {
        let now = Utc::now();
        let cmd = ThrottleCommand::CheckAttempt { policy, at: now };
        let done = self.throttles.execute(&policy.key(key), cmd, meta.to_map("CheckAttempt")).await?;
        Self::checked(done.state, policy, now)
    }

    /// [`IdentityService::check_attempt_state`] on a stream loaded by the
    /// caller ([`Executor::load_many`](crate::executor::Executor::load_many)):
    /// no read when nothing is refused.
    pub(crate) async fn check_attempt_loaded(
        &self,
        policy: Policy,
        loaded: Loaded<Throttle>,
        meta: &RequestMeta,
    ) -> Result<Throttle, IdentityError> {
        let now = Utc::now();
        let cmd = ThrottleCommand::CheckAttempt { policy, at: now };
        let done = self.throttles.execute_loaded(loaded, cmd, meta.to_map("CheckAttempt")).await?;
        Self::checked(done.state, policy, now)
    }

    /// Refused whether or not this refusal was recorded (a repeat within a
    /// recorded delay writes nothing).
    fn checked(state: Throttle, policy: Policy, now: DateTime<Utc>) -> Result<Throttle, IdentityError> {
        match state.retry_after(policy, now) {
            Some(until) => Err(Self::throttled_until(until, now)),
            None => Ok(state),
        }
    }

    /// Records a failed attempt; retried on write conflicts until it is
    /// recorded (a failure is never dropped; SECURITY.md).
    pub(crate) async fn record_failure(
        &self,
        policy: Policy,
        key: &str,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let cmd = ThrottleCommand::RecordFailure { policy, at: Utc::now() };
        self.failures.execute(&policy.key(key), cmd, meta.to_map("RecordFailure")).await?;
        Ok(())
    }

    pub(crate) async fn record_success(
        &self,
        policy: Policy,
        key: &str,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let cmd = ThrottleCommand::RecordSuccess { at: Utc::now() };
        self.throttles.execute(&policy.key(key), cmd, meta.to_map("RecordSuccess")).await?;
        Ok(())
    }

    /// Counts a code sent to `key`; 429 past `otp_codes_per_hour` per
    /// rolling hour or within `otp_resend_interval_secs` of the last one.
    /// Every flow that sends a code calls it before writing anything else.
    pub(crate) async fn record_request(&self, key: &str, meta: &RequestMeta) -> Result<(), IdentityError> {
        self.record_request_under(key, self.code_budget(), meta).await
    }

    /// The per-recipient code budget in force.
    fn code_budget(&self) -> RequestPolicy {
        RequestPolicy {
            window_secs: 3600,
            max: self.config.otp_codes_per_hour.max(1),
            cooldown_secs: self.config.otp_resend_interval_secs.max(0),
        }
    }

    /// Counts a request on `key` under `limits` (an `otp_requests` throttle
    /// stream); `Throttled` when refused (the refusal is an event).
    pub(crate) async fn record_request_under(
        &self,
        key: &str,
        limits: RequestPolicy,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let now = Utc::now();
        let cmd =
            ThrottleCommand::RecordRequest { policy: Policy::OtpRequests, limits: Some(limits), at: now };
        let done =
            self.throttles.execute(&Policy::OtpRequests.key(key), cmd, meta.to_map("RecordRequest")).await?;
        Self::requested(&done.events, &done.state, limits, now)
    }

    /// [`IdentityService::record_request`] on the recipient's
    /// `otp_requests` stream loaded by the caller (one read for a login's
    /// two throttles), decided but not appended: the caller appends `decided` with its own events
    /// ([`append_together`](crate::executor::append_together)) whether the
    /// request was counted (`outcome` `Ok`) or refused (`Throttled`; the
    /// refusal is an event too).
    pub(crate) async fn decide_request(
        &self,
        loaded: Loaded<Throttle>,
        meta: &RequestMeta,
    ) -> Result<DecidedRequest, IdentityError> {
        let now = Utc::now();
        let limits = self.code_budget();
        let cmd =
            ThrottleCommand::RecordRequest { policy: Policy::OtpRequests, limits: Some(limits), at: now };
        let decided = self.throttles.decide(loaded, cmd, meta.to_map("RecordRequest")).await?;
        let outcome = Self::requested(&decided.events, &decided.state, limits, now);
        Ok(DecidedRequest { decided, outcome })
    }

    /// Whether a `RecordRequest` that produced `events`, leaving `state`,
    /// counted the request (`Ok`) or refused it (`Throttled` until the next
    /// allowed time).
    fn requested(
        events: &[ThrottleEvent],
        state: &Throttle,
        limits: RequestPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), IdentityError> {
        if events.iter().any(|e| matches!(e, ThrottleEvent::RequestRecorded { .. })) {
            return Ok(());
        }
        let until = limits.next_allowed(&state.recent_requests, now).unwrap_or(now);
        Err(Self::throttled_until(until, now))
    }
}
