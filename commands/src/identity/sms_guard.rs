//! SMS toll-fraud guards (SMS pumping; seed 003, SECURITY.md "One-time
//! codes"): an allowed-countries list, an optional Twilio Lookup line-type
//! check refusing VOIP numbers, and global and per-country hourly SMS
//! budgets — on top of the per-recipient code budget every code counts
//! toward. Checked before anything is written: a refusal changes nothing.

use chrono::{DateTime, Duration, DurationRound, Utc};
use domain::values::PhoneNumber;
use sqlx::PgPool;

use super::{internal, IdentityError, IdentityService};

/// Twilio Lookup v2 (line type intelligence), behind a configurable base
/// URL so tests point it at a fake.
#[derive(Debug, Clone)]
pub struct LookupConfig {
    /// `https://lookups.twilio.com` in production.
    pub api_base: String,
    pub account_sid: String,
    pub auth_token: String,
}

/// The SMS policy (all off by default).
#[derive(Debug, Clone, Default)]
pub struct SmsPolicy {
    /// SMS per clock hour across all numbers (`SMS_HOURLY_BUDGET`); `None`
    /// is unlimited.
    pub hourly_budget: Option<u32>,
    /// SMS per clock hour per country calling code
    /// (`SMS_COUNTRY_HOURLY_BUDGET`); `None` is unlimited.
    pub country_hourly_budget: Option<u32>,
    /// ISO 3166-1 alpha-2 regions numbers may belong to
    /// (`SMS_ALLOWED_COUNTRIES`, e.g. `US,GB`); empty allows every country.
    pub allowed_countries: Vec<String>,
    /// Refuse VOIP numbers (`SMS_BLOCK_VOIP`) through Twilio Lookup.
    pub lookup: Option<LookupConfig>,
}

/// Line types Twilio Lookup reports for VOIP numbers.
const VOIP_LINE_TYPES: [&str; 2] = ["fixedVoip", "nonFixedVoip"];

/// Counts one SMS in `bucket` for the current clock hour unless `limit` is
/// reached; `false` when it is (one statement: atomic under concurrency).
async fn take(pool: &PgPool, bucket: &str, hour: DateTime<Utc>, limit: u32) -> Result<bool, sqlx::Error> {
    let taken: Option<i32> = sqlx::query_scalar(
        "INSERT INTO sms_budget (bucket, hour, sent) VALUES ($1, $2, 1)
         ON CONFLICT (bucket, hour) DO UPDATE SET sent = sms_budget.sent + 1
         WHERE sms_budget.sent < $3
         RETURNING sent",
    )
    .bind(bucket)
    .bind(hour)
    .bind(i32::try_from(limit).unwrap_or(i32::MAX))
    .fetch_optional(pool)
    .await?;
    Ok(taken.is_some() && limit > 0)
}

impl IdentityService {
    /// Whether `phone` may receive codes at all: its country is allowed and,
    /// with `SMS_BLOCK_VOIP`, Twilio Lookup does not report a VOIP line.
    /// Called for numbers a user types (sign-in by phone, adding a phone).
    ///
    /// # Errors
    /// `PhoneNotSupported` (422), `Internal` when Lookup cannot be asked
    /// (fail closed: no SMS to an unchecked number).
    pub(crate) async fn vet_number(&self, phone: &PhoneNumber) -> Result<(), IdentityError> {
        let policy = &self.config.sms;
        if !policy.allowed_countries.is_empty()
            && !phone
                .region()
                .is_some_and(|r| policy.allowed_countries.iter().any(|a| a.eq_ignore_ascii_case(r)))
        {
            return Err(IdentityError::PhoneNotSupported);
        }
        let Some(lookup) = &policy.lookup else { return Ok(()) };
        let url = format!(
            "{}/v2/PhoneNumbers/{}?Fields=line_type_intelligence",
            lookup.api_base.trim_end_matches('/'),
            phone.as_str()
        );
        let answer: serde_json::Value = self
            .http
            .get(url)
            .basic_auth(&lookup.account_sid, Some(&lookup.auth_token))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| internal(format!("twilio lookup: {}", e.without_url())))?
            .json()
            .await
            .map_err(|e| internal(format!("twilio lookup answer: {}", e.without_url())))?;
        let line_type = answer["line_type_intelligence"]["type"].as_str().unwrap_or_default();
        if VOIP_LINE_TYPES.contains(&line_type) {
            return Err(IdentityError::PhoneNotSupported);
        }
        Ok(())
    }

    /// Counts one SMS to `phone` against the global and the per-country
    /// hourly budgets; 429 with `Retry-After` (until the next clock hour)
    /// when either is spent. Called before every SMS is issued.
    ///
    /// # Errors
    /// `Throttled`, `Internal`.
    pub(crate) async fn charge_sms(&self, phone: &PhoneNumber) -> Result<(), IdentityError> {
        let policy = &self.config.sms;
        if policy.hourly_budget.is_none() && policy.country_hourly_budget.is_none() {
            return Ok(());
        }
        let now = Utc::now();
        let hour = now.duration_trunc(Duration::hours(1)).map_err(internal)?;
        let refused = || IdentityError::Throttled {
            retry_after_secs: (hour + Duration::hours(1) - now).num_seconds().max(1),
        };
        if let Some(limit) = policy.country_hourly_budget {
            let bucket = format!("country:{}", phone.calling_code());
            if !take(&self.pool, &bucket, hour, limit).await.map_err(internal)? {
                tracing::warn!(calling_code = phone.calling_code(), "country SMS budget spent");
                return Err(refused());
            }
        }
        if let Some(limit) = policy.hourly_budget {
            if !take(&self.pool, "global", hour, limit).await.map_err(internal)? {
                tracing::warn!("global SMS budget spent");
                return Err(refused());
            }
        }
        Ok(())
    }
}
