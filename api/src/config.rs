//! Configuration from the environment (a `.env` file is read first if
//! present). One struct, parsed once at start (ARCHITECTURE "Configuration").

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use commands::keys::Secret32;

/// Every setting, with its env var and default.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Postgres URL; the database is created and migrated at start if absent.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@localhost:5432/streamforge")]
    pub database_url: String,
    /// Postgres pool size per process.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,
    /// Postgres connections kept open per process, opened at start (at most
    /// `database_max_connections`; unset: all of them, a fixed-size pool). A
    /// burst then finds its connections warm instead of opening backends on
    /// the request path — while the database is slowest, as the pool grows
    /// when requests queue (docs/performance.md, freshness).
    #[arg(long, env = "DATABASE_MIN_CONNECTIONS")]
    pub database_min_connections: Option<u32>,
    /// Kafka bootstrap servers; unset → the embedded Postgres feed, no relay.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic prefix; topic = prefix + aggregate type.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = domain::envelope::DEFAULT_TOPIC_PREFIX)]
    pub kafka_topic_prefix: String,
    /// Key id of the pseudonymous subject ids on the topics (issue 18,
    /// docs/envelope.md "Subject"): the key is derived from the master key
    /// and this id; a new id rotates every subject (published as
    /// `subject_key`). One relay per analyst audience, each with its own
    /// `KAFKA_TOPIC_PREFIX` and key id, keeps audiences from joining ids.
    #[arg(long, env = "ANALYTICS_SUBJECT_KEY_ID", default_value = "1")]
    pub analytics_subject_key_id: String,
    /// Consumer `fetch.wait.max.ms` (milliseconds).
    #[arg(long, env = "KAFKA_FETCH_WAIT_MAX_MS", default_value_t = 5)]
    pub kafka_fetch_wait_max_ms: u32,
    /// Shortest time between a read of the projectors' Postgres feed that
    /// found new events and the next read (milliseconds; Postgres feed
    /// only, i.e. without `KAFKA_BROKERS`). Under load one read, and one
    /// projector transaction, then takes the commits of many requests; it
    /// adds at most this much to commit → read model, and only while
    /// events keep coming (decided 12's p99 ≤ 50 ms). `0` reads on every
    /// notification.
    #[arg(long, env = "PG_FEED_MIN_READ_MS", default_value_t = 25)]
    pub pg_feed_min_read_ms: u64,
    /// The same for the notifier's Postgres feed (milliseconds): under load
    /// one claim, one challenge read and one append then serve the codes
    /// of this many milliseconds together. It delays a code by at most
    /// this much, and only while events keep coming; a mail or an SMS
    /// takes seconds to arrive anyway. `0` reads on every notification.
    #[arg(long, env = "NOTIFY_MIN_READ_MS", default_value_t = 100)]
    pub notify_min_read_ms: u64,
    /// Partitions of topics created at start.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 6)]
    pub kafka_topic_partitions: i32,
    /// Consumer-group id prefix (`<prefix>-projections`, `<prefix>-notify`).
    #[arg(long, env = "KAFKA_GROUP_PREFIX", default_value = "streamforge")]
    pub kafka_group_prefix: String,
    /// HTTP listen address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS)
    /// or `smtps://host:port`; unset → `.eml` files under `MAIL_DIR`.
    #[arg(long, env = "SMTP_URL")]
    pub smtp_url: Option<String>,
    /// Directory of mail files when `SMTP_URL` is unset.
    #[arg(long, env = "MAIL_DIR", default_value = "./var/mail")]
    pub mail_dir: PathBuf,
    /// Sender of all mail.
    #[arg(long, env = "MAIL_FROM", default_value = "streamforge <no-reply@streamforge.local>")]
    pub mail_from: String,
    /// Twilio REST API base URL (tests point it at a fake).
    #[arg(long, env = "TWILIO_API_BASE", default_value = workers::sms::DEFAULT_TWILIO_API_BASE)]
    pub twilio_api_base: String,
    /// Twilio account SID (`AC…`); with `TWILIO_AUTH_TOKEN` and `TWILIO_FROM`
    /// SMS go through Twilio, with none of the three into `SMS_DIR`.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token (HTTP basic-auth password).
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,
    /// Sender of SMS: a Twilio number in E.164 or a messaging service id.
    #[arg(long, env = "TWILIO_FROM")]
    pub twilio_from: Option<String>,
    /// Directory of SMS files (`<delivery id>.sms`) when Twilio is not configured.
    #[arg(long, env = "SMS_DIR", default_value = "./var/sms")]
    pub sms_dir: PathBuf,
    /// Attempts per message (mail or SMS) before it is recorded as failed.
    #[arg(long, env = "DELIVERY_MAX_ATTEMPTS", default_value_t = workers::notify::DEFAULT_MAX_ATTEMPTS)]
    pub delivery_max_attempts: u32,
    /// Wait after a message's first failed attempt, in milliseconds; doubled
    /// after each further failure, capped at 5 minutes.
    #[arg(long, env = "DELIVERY_RETRY_BASE_MS", default_value_t = 2_000)]
    pub delivery_retry_base_ms: u64,
    /// Base64 of 32 random bytes; generated into `KEY_DIR` in development.
    #[arg(long, env = "STREAMFORGE_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// Base64 of the 32-byte Ed25519 signing seed; generated in development.
    #[arg(long, env = "STREAMFORGE_JWT_KEY", hide_env_values = true)]
    pub jwt_key: Option<String>,
    /// Further Ed25519 seeds (base64, comma separated) whose tokens are
    /// accepted and whose public keys the JWKS lists, for key rotation
    /// (docs/identity.md "Signing-key rotation"); they never sign.
    #[arg(long, env = "STREAMFORGE_JWT_EXTRA_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub jwt_extra_keys: Vec<String>,
    /// Where development keys are generated.
    #[arg(long, env = "KEY_DIR", default_value = "./var/keys")]
    pub key_dir: PathBuf,
    /// `production` makes the keys mandatory (no generation).
    #[arg(long, env = "STREAMFORGE_ENV", default_value = "development")]
    pub environment: String,
    /// JWT `iss`.
    #[arg(long, env = "JWT_ISSUER", default_value = "streamforge")]
    pub jwt_issuer: String,
    /// JWT `aud`.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "streamforge-api")]
    pub jwt_audience: String,
    /// WebAuthn relying-party id: the domain passkeys are bound to.
    #[arg(long, env = "WEBAUTHN_RP_ID", default_value = "localhost")]
    pub webauthn_rp_id: String,
    /// WebAuthn origin: the web origin the passkey ceremonies run on.
    #[arg(long, env = "WEBAUTHN_RP_ORIGIN", default_value = "http://localhost:8080")]
    pub webauthn_rp_origin: String,
    /// WebAuthn relying-party name shown by authenticators.
    #[arg(long, env = "WEBAUTHN_RP_NAME", default_value = "streamforge")]
    pub webauthn_rp_name: String,
    /// Email OTP lifetime in seconds.
    #[arg(long, env = "EMAIL_OTP_TTL_SECS", default_value_t = 600)]
    pub email_otp_ttl_secs: i64,
    /// Requests per minute per IP on `/api/auth/*` (0 disables the limit).
    #[arg(long, env = "AUTH_RATE_PER_MINUTE", default_value_t = 120)]
    pub auth_rate_per_minute: u32,
    /// Where `GET /metrics` (Prometheus text format) is served, apart from
    /// the API (e.g. `127.0.0.1:9100`); unset serves no metrics.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR
    /// networks, comma separated (e.g. `10.0.0.0/8,127.0.0.1`); unset
    /// believes nobody and the connection's address is the client's.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Longest a request may take, in seconds; past it the answer is 503
    /// `request_timeout` (slow clients and stuck dependencies do not hold
    /// workers forever).
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Longest wait of a query given an `X-Consistency-Token` for the read
    /// models it reads to pass the token, in milliseconds; then 503
    /// `consistency_timeout` with `Retry-After` (ARCHITECTURE decided 13).
    #[arg(long, env = "CONSISTENCY_WAIT_MS", default_value_t = 2_000)]
    pub consistency_wait_ms: u64,
    /// Authors with more followers than this are not fanned out into
    /// their followers' home feeds: their posts and reposts are merged into
    /// each follower's page at read time (issue 16).
    #[arg(long, env = "FEED_FANOUT_MAX_FOLLOWERS", default_value_t = projections::social::home::DEFAULT_MAX_FANOUT_FOLLOWERS)]
    pub feed_fanout_max_followers: i64,
    /// Password hashes waiting for a hashing thread beyond which requests
    /// that hash are answered 503 with `Retry-After` (load shedding).
    #[arg(long, env = "PASSWORD_HASH_QUEUE", default_value_t = 64)]
    pub password_hash_queue: usize,
    /// Burst allowed per IP on `/api/auth/*`.
    #[arg(long, env = "AUTH_RATE_BURST", default_value_t = 30)]
    pub auth_rate_burst: u32,
    /// SMS OTP lifetime in seconds (5 min; seed 003).
    #[arg(long, env = "SMS_OTP_TTL_SECS", default_value_t = 300)]
    pub sms_otp_ttl_secs: i64,
    /// Codes sent per recipient (email or phone) per rolling hour, every
    /// purpose counted (seed 003, SECURITY.md: 3). At least 1.
    #[arg(long, env = "OTP_CODES_PER_HOUR", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub otp_codes_per_hour: u32,
    /// Seconds between two codes to one recipient (SECURITY.md: 30–60 s);
    /// `0` turns the interval off.
    #[arg(long, env = "OTP_RESEND_INTERVAL_SECS", default_value_t = 30)]
    pub otp_resend_interval_secs: u32,
    /// SMS per clock hour across all numbers (SMS pumping guard; seed 003);
    /// unset is unlimited.
    #[arg(long, env = "SMS_HOURLY_BUDGET")]
    pub sms_hourly_budget: Option<u32>,
    /// SMS per clock hour per country calling code; unset is unlimited.
    #[arg(long, env = "SMS_COUNTRY_HOURLY_BUDGET")]
    pub sms_country_hourly_budget: Option<u32>,
    /// ISO 3166-1 alpha-2 regions phone numbers may belong to, comma
    /// separated (e.g. `US,GB`); unset allows every country.
    #[arg(long, env = "SMS_ALLOWED_COUNTRIES", value_delimiter = ',')]
    pub sms_allowed_countries: Vec<String>,
    /// Refuse VOIP numbers through Twilio Lookup (needs the Twilio account).
    #[arg(long, env = "SMS_BLOCK_VOIP", default_value_t = false)]
    pub sms_block_voip: bool,
    /// Twilio Lookup base URL (tests point it at a fake).
    #[arg(long, env = "TWILIO_LOOKUP_BASE", default_value = "https://lookups.twilio.com")]
    pub twilio_lookup_base: String,
    /// Refresh-token idle lifetime in seconds (30 days).
    #[arg(long, env = "REFRESH_IDLE_TTL_SECS", default_value_t = 30 * 86_400)]
    pub refresh_idle_ttl_secs: i64,
    /// Refresh-token absolute lifetime in seconds (90 days).
    #[arg(long, env = "REFRESH_ABSOLUTE_TTL_SECS", default_value_t = 90 * 86_400)]
    pub refresh_absolute_ttl_secs: i64,
    /// Parallel argon2 hashes (default: the core count).
    #[arg(long, env = "PASSWORD_HASH_CONCURRENCY")]
    pub password_hash_concurrency: Option<usize>,
}

impl Settings {
    /// The settings from the environment alone (tests, embedding).
    ///
    /// # Errors
    /// When a variable does not parse.
    pub fn from_env() -> anyhow::Result<Self> {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            s: Settings,
        }
        use clap::Parser;
        Ok(Only::try_parse_from(["streamforge"])?.s)
    }

    /// Twilio settings when SID, token and sender are all set; `None` when
    /// none is (SMS go to files).
    ///
    /// # Errors
    /// When only some of the three are set.
    pub fn twilio(&self) -> anyhow::Result<Option<workers::sms::TwilioConfig>> {
        match (&self.twilio_account_sid, &self.twilio_auth_token, &self.twilio_from) {
            (Some(sid), Some(token), Some(from)) => Ok(Some(workers::sms::TwilioConfig {
                api_base: self.twilio_api_base.clone(),
                account_sid: sid.clone(),
                auth_token: token.clone(),
                from: from.clone(),
                timeout: workers::sms::DEFAULT_TWILIO_TIMEOUT,
            })),
            (None, None, None) => Ok(None),
            _ => anyhow::bail!("TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM must be set together"),
        }
    }

    /// The SMS toll-fraud policy.
    ///
    /// # Errors
    /// `SMS_BLOCK_VOIP` without the Twilio account to ask Lookup with.
    pub fn sms_policy(&self) -> anyhow::Result<commands::identity::SmsPolicy> {
        let lookup = if self.sms_block_voip {
            let (Some(sid), Some(token)) = (&self.twilio_account_sid, &self.twilio_auth_token) else {
                anyhow::bail!("SMS_BLOCK_VOIP needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN");
            };
            Some(commands::identity::LookupConfig {
                api_base: self.twilio_lookup_base.clone(),
                account_sid: sid.clone(),
                auth_token: token.clone(),
            })
        } else {
            None
        };
        Ok(commands::identity::SmsPolicy {
            hourly_budget: self.sms_hourly_budget,
            country_hourly_budget: self.sms_country_hourly_budget,
            allowed_countries: self
                .sms_allowed_countries
                .iter()
                .map(|c| c.trim().to_ascii_uppercase())
                .filter(|c| !c.is_empty())
                .collect(),
            lookup,
        })
    }

    /// The WebAuthn relying party.
    pub fn webauthn_config(&self) -> commands::passkeys::PasskeyConfig {
        commands::passkeys::PasskeyConfig {
            rp_id: self.webauthn_rp_id.clone(),
            rp_origin: self.webauthn_rp_origin.clone(),
            rp_name: self.webauthn_rp_name.clone(),
        }
    }

    fn production(&self) -> bool {
        self.environment.eq_ignore_ascii_case("production")
    }

    /// The master key: from config, else (development only) from
    /// `KEY_DIR/master.key`, generated on first start.
    ///
    /// # Errors
    /// Missing in production, malformed, or the key file cannot be written.
    pub fn master_key(&self) -> anyhow::Result<Secret32> {
        self.key("STREAMFORGE_MASTER_KEY", self.master_key.as_deref(), "master.key")
    }

    /// The JWT signing seed (same rules as [`Settings::master_key`]).
    ///
    /// # Errors
    /// As [`Settings::master_key`].
    pub fn jwt_key(&self) -> anyhow::Result<Secret32> {
        self.key("STREAMFORGE_JWT_KEY", self.jwt_key.as_deref(), "jwt.key")
    }

    /// The rotation keys of `STREAMFORGE_JWT_EXTRA_KEYS`.
    ///
    /// # Errors
    /// A malformed key.
    pub fn jwt_extra_keys(&self) -> anyhow::Result<Vec<Secret32>> {
        self.jwt_extra_keys
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| {
                Secret32::from_base64(k.trim()).context("STREAMFORGE_JWT_EXTRA_KEYS holds an invalid key")
            })
            .collect()
    }

    fn key(&self, var: &str, value: Option<&str>, file: &str) -> anyhow::Result<Secret32> {
        if let Some(v) = value {
            return Secret32::from_base64(v).with_context(|| format!("{var} is not valid"));
        }
        anyhow::ensure!(!self.production(), "{var} is required when STREAMFORGE_ENV=production");
        load_or_generate(&self.key_dir.join(file))
    }
}

fn load_or_generate(path: &Path) -> anyhow::Result<Secret32> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Secret32::from_base64(&s).with_context(|| format!("{} is not a valid key", path.display()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = Secret32::generate();
    write_private(path, &key.to_base64())?;
    tracing::warn!(path = %path.display(), "generated a development key; set the env var in production");
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}
