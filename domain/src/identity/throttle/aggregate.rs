use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::{FailurePolicy, Policy, RequestPolicy};

/// Commands on a `Throttle`.
#[derive(Debug, Clone)]
pub enum ThrottleCommand {
    /// Before an attempt under a failure policy: refuses (with an
    /// `AttemptThrottled` event) while a delay or lock is running.
    CheckAttempt { policy: Policy, at: DateTime<Utc> },
    /// Before an attempt under a failure policy, checking and counting it
    /// in one step (SECURITY.md "Throttles are atomic"): refused (429) while
    /// a delay or lock runs; otherwise the attempt is recorded as a failure
    /// *before* it is evaluated, and only a `RecordSuccess` takes it back.
    /// Parallel attempts serialise on the stream's optimistic concurrency,
    /// so no more of them are evaluated than the policy lets through one
    /// by one, and a failure is never lost to a write conflict.
    BeginAttempt { policy: Policy, at: DateTime<Utc> },
    /// A failed attempt (wrong code or password).
    RecordFailure { policy: Policy, at: DateTime<Utc> },
    /// A successful attempt: resets the consecutive-failure count.
    RecordSuccess { at: DateTime<Utc> },
    /// A request under a request policy (e.g. send a code): recorded when
    /// allowed, refused with an `AttemptThrottled` event otherwise.
    /// `limits` overrides the policy's defaults (configuration, e.g.
    /// `OTP_CODES_PER_HOUR`); its window is at most the 1 h the state keeps.
    RecordRequest { policy: Policy, limits: Option<RequestPolicy>, at: DateTime<Utc> },
}

/// Events of a `Throttle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ThrottleEvent {
    FailureRecorded {
        policy: Policy,
        consecutive_failures: u32,
        /// When the next attempt is allowed (`None` = at once).
        next_allowed_at: Option<DateTime<Utc>>,
        failed_at: DateTime<Utc>,
    },
    /// The failure count reached the policy's lock threshold.
    SubjectLocked {
        policy: Policy,
        locked_until: DateTime<Utc>,
        locked_at: DateTime<Utc>,
    },
    FailuresReset {
        reset_at: DateTime<Utc>,
    },
    RequestRecorded {
        policy: Policy,
        requested_at: DateTime<Utc>,
    },
    /// An attempt or request was refused; retry after `retry_after`.
    AttemptThrottled {
        policy: Policy,
        retry_after: DateTime<Utc>,
        throttled_at: DateTime<Utc>,
    },
}

impl DomainEvent for ThrottleEvent {
    fn event_type(&self) -> String {
        match self {
            Self::FailureRecorded { .. } => "FailureRecorded",
            Self::SubjectLocked { .. } => "SubjectLocked",
            Self::FailuresReset { .. } => "FailuresReset",
            Self::RequestRecorded { .. } => "RequestRecorded",
            Self::AttemptThrottled { .. } => "AttemptThrottled",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Refusals; only misuse of a policy (no throttling decision is an error:
/// those are events, so they are recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    #[error("policy {0:?} does not apply to this command")]
    WrongPolicy(Policy),
}

/// State of one subject under one policy.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throttle {
    pub consecutive_failures: u32,
    pub last_failure_at: Option<DateTime<Utc>>,
    /// Requests inside the longest window any policy uses (1 h).
    pub recent_requests: Vec<DateTime<Utc>>,
    /// Set by the last refusal or failure; `None` = free.
    pub blocked_until: Option<DateTime<Utc>>,
    /// The `retry_after` of the last recorded refusal: further refusals
    /// until then are answered without an event, so refused attempts do
    /// not grow the stream.
    #[serde(default)]
    pub refusal_recorded_for: Option<DateTime<Utc>>,
}

impl Throttle {
    /// When `policy` allows the next attempt, if not at `now`.
    pub fn retry_after(&self, policy: Policy, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(p) = policy.failures() {
            return self
                .last_failure_at
                .and_then(|last| p.next_allowed(self.consecutive_failures, last))
                .filter(|t| *t > now);
        }
        policy.requests().and_then(|p| p.next_allowed(&self.recent_requests, now))
    }
}

impl Throttle {
    /// A refusal until `retry_after`: recorded once per `retry_after` (the
    /// first refusal of a delay or lock is the event; repeats add nothing).
    async fn refuse(
        &mut self,
        policy: Policy,
        retry_after: DateTime<Utc>,
        at: DateTime<Utc>,
        sink: &EventSink<Self>,
    ) {
        if self.refusal_recorded_for != Some(retry_after) {
            sink.write(ThrottleEvent::AttemptThrottled { policy, retry_after, throttled_at: at }, self).await;
        }
    }

    /// One more consecutive failure, and the lock when it reaches the
    /// policy's threshold.
    async fn fail(&mut self, policy: Policy, p: FailurePolicy, at: DateTime<Utc>, sink: &EventSink<Self>) {
        let consecutive_failures = self.consecutive_failures.saturating_add(1);
        let next_allowed_at = p.next_allowed(consecutive_failures, at);
        let event =
            ThrottleEvent::FailureRecorded { policy, consecutive_failures, next_allowed_at, failed_at: at };
        sink.write(event, self).await;
        if consecutive_failures == p.lock_after {
            let locked_until = at + Duration::seconds(p.lock_secs);
            sink.write(ThrottleEvent::SubjectLocked { policy, locked_until, locked_at: at }, self).await;
        }
    }
}

impl Aggregate for Throttle {
    const TYPE: &'static str = "throttle";
    type Command = ThrottleCommand;
    type Event = ThrottleEvent;
    type Error = ThrottleError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ThrottleCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ThrottleError> {
        match command {
            ThrottleCommand::CheckAttempt { policy, at } => {
                if policy.failures().is_none() {
                    return Err(ThrottleError::WrongPolicy(policy));
                }
                if let Some(retry_after) = self.retry_after(policy, at) {
                    self.refuse(policy, retry_after, at, sink).await;
                }
            }
            ThrottleCommand::BeginAttempt { policy, at } => {
                let p = policy.failures().ok_or(ThrottleError::WrongPolicy(policy))?;
                if let Some(retry_after) = self.retry_after(policy, at) {
                    self.refuse(policy, retry_after, at, sink).await;
                    return Ok(());
                }
                self.fail(policy, p, at, sink).await;
            }
            ThrottleCommand::RecordFailure { policy, at } => {
                let p = policy.failures().ok_or(ThrottleError::WrongPolicy(policy))?;
                self.fail(policy, p, at, sink).await;
            }
            ThrottleCommand::RecordSuccess { at } => {
                if self.consecutive_failures > 0 {
                    sink.write(ThrottleEvent::FailuresReset { reset_at: at }, self).await;
                }
            }
            ThrottleCommand::RecordRequest { policy, limits, at } => {
                let Some(defaults) = policy.requests() else {
                    return Err(ThrottleError::WrongPolicy(policy));
                };
                match limits.unwrap_or(defaults).next_allowed(&self.recent_requests, at) {
                    Some(retry_after) => self.refuse(policy, retry_after, at, sink).await,
                    None => {
                        sink.write(ThrottleEvent::RequestRecorded { policy, requested_at: at }, self).await
                    }
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ThrottleEvent) {
        match event {
            ThrottleEvent::FailureRecorded { consecutive_failures, next_allowed_at, failed_at, .. } => {
                self.consecutive_failures = consecutive_failures;
                self.last_failure_at = Some(failed_at);
                self.blocked_until = next_allowed_at;
            }
            ThrottleEvent::SubjectLocked { locked_until, .. } => self.blocked_until = Some(locked_until),
            ThrottleEvent::FailuresReset { .. } => {
                self.consecutive_failures = 0;
                self.last_failure_at = None;
                self.blocked_until = None;
                self.refusal_recorded_for = None;
            }
            ThrottleEvent::RequestRecorded { requested_at, .. } => {
                let horizon = requested_at - Duration::hours(1);
                self.recent_requests.retain(|t| *t > horizon);
                self.recent_requests.push(requested_at);
            }
            ThrottleEvent::AttemptThrottled { retry_after, .. } => {
                self.blocked_until = Some(retry_after);
                self.refusal_recorded_for = Some(retry_after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type ThrottleTest = TestFramework<Throttle>;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }
    fn failure(n: u32, at: i64, next: Option<i64>) -> ThrottleEvent {
        ThrottleEvent::FailureRecorded {
            policy: Policy::OtpFailures,
            consecutive_failures: n,
            next_allowed_at: next.map(t),
            failed_at: t(at),
        }
    }

    #[test]
    fn failures_count_and_delay() {
        ThrottleTest::with(())
            .given(vec![failure(1, 0, None), failure(2, 1, None), failure(3, 2, None)])
            .when(ThrottleCommand::RecordFailure { policy: Policy::OtpFailures, at: t(3) })
            .then_expect_events(vec![failure(4, 3, Some(33))]);
    }

    #[test]
    fn an_attempt_during_the_delay_is_refused_and_recorded() {
        ThrottleTest::with(())
            .given(vec![failure(4, 3, Some(33))])
            .when(ThrottleCommand::CheckAttempt { policy: Policy::OtpFailures, at: t(10) })
            .then_expect_events(vec![ThrottleEvent::AttemptThrottled {
                policy: Policy::OtpFailures,
                retry_after: t(33),
                throttled_at: t(10),
            }]);
        ThrottleTest::with(())
            .given(vec![failure(4, 3, Some(33))])
            .when(ThrottleCommand::CheckAttempt { policy: Policy::OtpFailures, at: t(33) })
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_tenth_failure_locks() {
        let given: Vec<ThrottleEvent> = (1..=9).map(|n| failure(n, i64::from(n), None)).collect();
        ThrottleTest::with(())
            .given(given)
            .when(ThrottleCommand::RecordFailure { policy: Policy::OtpFailures, at: t(100) })
            .then_expect_events(vec![
                failure(10, 100, Some(100 + 86_400)),
                ThrottleEvent::SubjectLocked {
                    policy: Policy::OtpFailures,
                    locked_until: t(100 + 86_400),
                    locked_at: t(100),
                },
            ]);
    }

    #[test]
    fn success_resets_only_when_needed() {
        ThrottleTest::with(())
            .given(vec![failure(1, 0, None)])
            .when(ThrottleCommand::RecordSuccess { at: t(5) })
            .then_expect_events(vec![ThrottleEvent::FailuresReset { reset_at: t(5) }]);
        ThrottleTest::with(())
            .given_no_previous_events()
            .when(ThrottleCommand::RecordSuccess { at: t(5) })
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_fourth_code_in_an_hour_is_refused() {
        let req =
            |at: i64| ThrottleEvent::RequestRecorded { policy: Policy::OtpRequests, requested_at: t(at) };
        ThrottleTest::with(())
            .given(vec![req(0), req(100), req(200)])
            .when(ThrottleCommand::RecordRequest { policy: Policy::OtpRequests, limits: None, at: t(300) })
            .then_expect_events(vec![ThrottleEvent::AttemptThrottled {
                policy: Policy::OtpRequests,
                retry_after: t(3600),
                throttled_at: t(300),
            }]);
        ThrottleTest::with(())
            .given(vec![req(0)])
            .when(ThrottleCommand::RecordRequest { policy: Policy::OtpRequests, limits: None, at: t(100) })
            .then_expect_events(vec![req(100)]);
    }

    #[test]
    fn configured_limits_replace_the_defaults() {
        let req =
            |at: i64| ThrottleEvent::RequestRecorded { policy: Policy::OtpRequests, requested_at: t(at) };
        let lifted = RequestPolicy { window_secs: 3600, max: 10, cooldown_secs: 0 };
        ThrottleTest::with(())
            .given(vec![req(0), req(1), req(2)])
            .when(ThrottleCommand::RecordRequest {
                policy: Policy::OtpRequests,
                limits: Some(lifted),
                at: t(2),
            })
            .then_expect_events(vec![req(2)]);
        let strict = RequestPolicy { window_secs: 3600, max: 1, cooldown_secs: 60 };
        ThrottleTest::with(())
            .given(vec![req(0)])
            .when(ThrottleCommand::RecordRequest {
                policy: Policy::OtpRequests,
                limits: Some(strict),
                at: t(100),
            })
            .then_expect_events(vec![ThrottleEvent::AttemptThrottled {
                policy: Policy::OtpRequests,
                retry_after: t(3600),
                throttled_at: t(100),
            }]);
    }

    #[test]
    fn an_attempt_is_counted_before_it_is_evaluated() {
        // The 4th attempt of OTP failures (3 free) is let through and counted
        // at once, delaying the next one: parallel attempts cannot all pass.
        ThrottleTest::with(())
            .given(vec![failure(1, 0, None), failure(2, 1, None), failure(3, 2, None)])
            .when(ThrottleCommand::BeginAttempt { policy: Policy::OtpFailures, at: t(3) })
            .then_expect_events(vec![failure(4, 3, Some(33))]);
        ThrottleTest::with(())
            .given(vec![
                failure(1, 0, None),
                failure(2, 1, None),
                failure(3, 2, None),
                failure(4, 3, Some(33)),
            ])
            .when(ThrottleCommand::BeginAttempt { policy: Policy::OtpFailures, at: t(4) })
            .then_expect_events(vec![ThrottleEvent::AttemptThrottled {
                policy: Policy::OtpFailures,
                retry_after: t(33),
                throttled_at: t(4),
            }]);
    }

    #[test]
    fn a_refusal_is_recorded_once_per_delay() {
        let refused = ThrottleEvent::AttemptThrottled {
            policy: Policy::OtpFailures,
            retry_after: t(33),
            throttled_at: t(4),
        };
        let given = vec![
            failure(1, 0, None),
            failure(2, 1, None),
            failure(3, 2, None),
            failure(4, 3, Some(33)),
            refused,
        ];
        ThrottleTest::with(())
            .given(given.clone())
            .when(ThrottleCommand::BeginAttempt { policy: Policy::OtpFailures, at: t(5) })
            .then_expect_events(vec![]);
        let mut state = Throttle::default();
        for e in given {
            state.apply(e);
        }
        assert_eq!(state.retry_after(Policy::OtpFailures, t(5)), Some(t(33)), "still refused");
    }

    #[test]
    fn wrong_policy_is_an_error() {
        ThrottleTest::with(())
            .given_no_previous_events()
            .when(ThrottleCommand::RecordRequest { policy: Policy::OtpFailures, limits: None, at: t(0) })
            .then_expect_error(ThrottleError::WrongPolicy(Policy::OtpFailures));
    }
}
