use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// Growing delays after consecutive failures, then a lock.
///
/// After `free` failures each further failure imposes a wait of
/// `base_delay_secs · 2^(failures − free − 1)` seconds (capped at
/// `max_delay_secs`) before the next attempt; at `lock_after` failures the
/// subject is locked for `lock_secs`. A success resets the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailurePolicy {
    pub free: u32,
    pub base_delay_secs: i64,
    pub max_delay_secs: i64,
    pub lock_after: u32,
    pub lock_secs: i64,
}

/// At most `max` requests per rolling `window_secs`, and `cooldown_secs`
/// between two requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPolicy {
    pub window_secs: i64,
    pub max: u32,
    pub cooldown_secs: i64,
}

/// The named policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Wrong one-time codes per subject (user or phone), across challenges:
    /// 3 free (one challenge), then 30 s doubling to 15 min, locked for 24 h
    /// at 10 — far under NIST's 100.
    OtpFailures,
    /// Wrong passwords per account (keyed by the email's lookup hash, so
    /// unknown emails behave the same): 5 free, then 1 s doubling to 15 min,
    /// locked for 1 h at 20. Separate from `OtpFailures`.
    PasswordFailures,
    /// Codes sent per phone number or email: 3 per hour (seed 003), 30 s
    /// between two.
    OtpRequests,
}

impl Policy {
    /// The policy's key prefix, e.g. `otp_failures`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtpFailures => "otp_failures",
            Self::PasswordFailures => "password_failures",
            Self::OtpRequests => "otp_requests",
        }
    }

    /// Aggregate id of `subject` under this policy.
    pub fn key(self, subject: &str) -> String {
        format!("{}:{subject}", self.as_str())
    }

    pub fn failures(self) -> Option<FailurePolicy> {
        match self {
            Self::OtpFailures => Some(FailurePolicy {
                free: 3,
                base_delay_secs: 30,
                max_delay_secs: 15 * 60,
                lock_after: 10,
                lock_secs: 24 * 3600,
            }),
            Self::PasswordFailures => Some(FailurePolicy {
                free: 5,
                base_delay_secs: 1,
                max_delay_secs: 15 * 60,
                lock_after: 20,
                lock_secs: 3600,
            }),
            Self::OtpRequests => None,
        }
    }

    pub fn requests(self) -> Option<RequestPolicy> {
        match self {
            Self::OtpRequests => Some(RequestPolicy { window_secs: 3600, max: 3, cooldown_secs: 30 }),
            _ => None,
        }
    }
}

impl FailurePolicy {
    /// When the next attempt is allowed after `failures` consecutive
    /// failures, the last at `last`. `None` = now.
    pub fn next_allowed(&self, failures: u32, last: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if failures >= self.lock_after {
            return Some(last + Duration::seconds(self.lock_secs));
        }
        if failures <= self.free {
            return None;
        }
        let exp = (failures - self.free - 1).min(30);
        let delay = self.base_delay_secs.saturating_mul(1i64 << exp).min(self.max_delay_secs);
        Some(last + Duration::seconds(delay))
    }
}

impl RequestPolicy {
    /// When the next request is allowed given the earlier ones (any order).
    /// `None` = now.
    pub fn next_allowed(&self, earlier: &[DateTime<Utc>], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let window_start = now - Duration::seconds(self.window_secs);
        let mut recent: Vec<DateTime<Utc>> = earlier.iter().copied().filter(|t| *t > window_start).collect();
        recent.sort();
        let mut next = None;
        if let Some(last) = recent.last() {
            let cool = *last + Duration::seconds(self.cooldown_secs);
            if cool > now {
                next = Some(cool);
            }
        }
        if recent.len() >= self.max as usize {
            // The oldest request still in the window must leave it.
            let idx = recent.len() - self.max as usize;
            let free_at = recent[idx] + Duration::seconds(self.window_secs);
            next = Some(next.map_or(free_at, |n: DateTime<Utc>| n.max(free_at)));
        }
        next.filter(|n| *n > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn failure_delays_grow_then_lock() {
        let p = Policy::OtpFailures.failures().unwrap();
        assert_eq!(p.next_allowed(3, t(0)), None);
        assert_eq!(p.next_allowed(4, t(0)), Some(t(30)));
        assert_eq!(p.next_allowed(5, t(0)), Some(t(60)));
        assert_eq!(p.next_allowed(9, t(0)), Some(t(900)), "capped at 15 min");
        assert_eq!(p.next_allowed(10, t(0)), Some(t(86_400)), "locked 24 h");
        assert!(p.lock_after < 100, "far under NIST's 100");
    }

    #[test]
    fn three_requests_per_hour_with_cooldown() {
        let p = Policy::OtpRequests.requests().unwrap();
        assert_eq!(p.next_allowed(&[], t(0)), None);
        assert_eq!(p.next_allowed(&[t(0)], t(10)), Some(t(30)), "cooldown");
        assert_eq!(p.next_allowed(&[t(0), t(40)], t(80)), None);
        assert_eq!(p.next_allowed(&[t(0), t(40), t(80)], t(200)), Some(t(3600)), "4th waits for the window");
        assert_eq!(p.next_allowed(&[t(0), t(40), t(80)], t(3601)), None);
    }
}
