//! A fresh database with a delivery store and the OTP executor, challenges
//! issued the way the identity service does (sealed record, then
//! `OtpIssued`), envelopes read back from the store, a real SMTP listener,
//! and a Twilio fake's settings.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use commands::deliveries::{Delivery, DeliveryStore};
use commands::executor::Executor;
use commands::keys::Secret32;
use domain::envelope::Envelope;
use domain::otp::{OtpChallenge, OtpChannel, OtpCommand, OtpPurpose};
use domain::values::{Digest, Sealed};
use mailin_embedded::response::{self, Response};
use mailin_embedded::{Handler, Server};
use projections::db::testing;
use projections::feed::{EventFeed, FeedError};
use sqlx::PgPool;
use uuid::Uuid;
use workers::notify::{Mailer, Notifier, RetryPolicy};
use workers::sms::{SmsSender, TwilioConfig};

pub const SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TOKEN: &str = "twilio-test-token";
pub const FROM_NUMBER: &str = "+15005550006";

/// A fresh, migrated database with the notifier's collaborators.
pub struct Env {
    pub pool: PgPool,
    pub url: String,
    pub deliveries: DeliveryStore,
    otps: Executor<OtpChallenge>,
}

impl Env {
    pub async fn new() -> Self {
        let (pool, url) =
            testing::create_test_database(&testing::base_url()).await.expect("create test database");
        let deliveries = DeliveryStore::new(pool.clone(), Secret32::generate());
        let otps = Executor::new(pool.clone(), ());
        Self { pool, url, deliveries, otps }
    }

    /// Closes the pool and drops the database.
    pub async fn drop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pool.close()).await;
        testing::drop_test_database(&self.url).await.expect("drop test database");
    }

    /// A notifier over this database.
    pub fn notifier(&self, mailer: Mailer, sms: SmsSender, policy: RetryPolicy) -> Notifier {
        Notifier::new(self.pool.clone(), self.deliveries.clone(), mailer, sms, "streamforge <no-reply@test>")
            .expect("notifier")
            .with_policy(policy)
    }

    /// Issues a login code to `to` over `channel` as the identity service
    /// does; returns the challenge id and the `OtpIssued` envelope.
    pub async fn issue_otp(&self, channel: OtpChannel, to: &str, code: &str) -> (Uuid, Envelope) {
        let challenge_id = Uuid::new_v4();
        let now = Utc::now();
        let expires_at = now + chrono::Duration::minutes(5);
        let delivery = Delivery {
            channel: channel.as_str().to_owned(),
            to: to.to_owned(),
            template: "otp_login".to_owned(),
            code: Some(code.to_owned()),
            expires_at: Some(expires_at),
        };
        self.deliveries.put(challenge_id, &delivery, expires_at).await.expect("put delivery");
        let cmd = OtpCommand::Request {
            challenge_id,
            delivery_id: challenge_id,
            subject_id: Uuid::new_v4(),
            attempts_key: format!("test:{challenge_id}"),
            recipient: Sealed("sealed-recipient".to_owned()),
            purpose: OtpPurpose::Login,
            channel,
            code_mac: Digest("mac".to_owned()),
            issued_at: now,
            expires_at,
        };
        self.otps.execute(&challenge_id.to_string(), cmd, HashMap::new()).await.expect("request otp");
        let envs = self.envelopes(challenge_id).await;
        assert_eq!(envs[0].event_type, "OtpIssued");
        (challenge_id, envs[0].clone())
    }

    /// Resends: a new code on challenge `challenge_id` under a new delivery
    /// record; returns the record id and the `OtpReissued` envelope.
    pub async fn reissue(
        &self,
        challenge_id: Uuid,
        channel: OtpChannel,
        to: &str,
        code: &str,
    ) -> (Uuid, Envelope) {
        let delivery_id = Uuid::new_v4();
        let now = Utc::now();
        let expires_at = now + chrono::Duration::minutes(5);
        let delivery = Delivery {
            channel: channel.as_str().to_owned(),
            to: to.to_owned(),
            template: "otp_login".to_owned(),
            code: Some(code.to_owned()),
            expires_at: Some(expires_at),
        };
        self.deliveries.put(delivery_id, &delivery, expires_at).await.expect("put delivery");
        let cmd = OtpCommand::Reissue {
            delivery_id,
            code_mac: Digest("mac2".to_owned()),
            issued_at: now,
            expires_at,
        };
        self.otps.execute(&challenge_id.to_string(), cmd, HashMap::new()).await.expect("reissue otp");
        let env = self.envelopes(challenge_id).await.into_iter().last().expect("an event");
        assert_eq!(env.event_type, "OtpReissued");
        (delivery_id, env)
    }

    /// A notice (no code) for a `user` aggregate; returns its envelope.
    pub async fn notice(&self, template: &str, to: &str) -> (Uuid, Envelope) {
        let delivery_id = Uuid::new_v4();
        let delivery = Delivery {
            channel: "email".to_owned(),
            to: to.to_owned(),
            template: template.to_owned(),
            code: None,
            expires_at: None,
        };
        self.deliveries
            .put(delivery_id, &delivery, Utc::now() + chrono::Duration::days(1))
            .await
            .expect("put notice");
        let env = Envelope {
            event_id: Uuid::new_v4(),
            aggregate_type: "user".to_owned(),
            aggregate_id: Uuid::new_v4().to_string(),
            sequence: 2,
            position: 2,
            event_type: "EmailVerified".to_owned(),
            event_version: "1".to_owned(),
            occurred_at: Utc::now(),
            payload: serde_json::json!({ "delivery_id": delivery_id }),
            metadata: serde_json::json!({}),
        };
        (delivery_id, env)
    }

    /// Every stored event of challenge `id`, as envelopes, in order.
    pub async fn envelopes(&self, id: Uuid) -> Vec<Envelope> {
        type Row = (
            Uuid,
            String,
            String,
            i64,
            i64,
            String,
            String,
            DateTime<Utc>,
            serde_json::Value,
            serde_json::Value,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT event_id, aggregate_type, aggregate_id, sequence, position, event_type, \
             event_version, recorded_at, payload, metadata FROM events \
             WHERE aggregate_type = 'otp_challenge' AND aggregate_id = $1 ORDER BY sequence",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .expect("read events");
        rows.into_iter()
            .map(|r| Envelope::from_stored(r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9))
            .collect()
    }

    /// `(event_type, payload)` of challenge `id`'s events.
    pub async fn events(&self, id: Uuid) -> Vec<(String, serde_json::Value)> {
        self.envelopes(id).await.into_iter().map(|e| (e.event_type, e.payload)).collect()
    }

    /// How many events the store holds in all.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&self.pool).await.unwrap()
    }

    /// `(attempts, last_error)` of a delivery record, if it still exists.
    pub async fn record(&self, id: Uuid) -> Option<(i32, Option<String>)> {
        sqlx::query_as("SELECT attempts, last_error FROM deliveries WHERE delivery_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }
}

/// Fast retries for tests: `base` first delay, no cap worth mentioning.
pub fn policy(max_attempts: u32, base: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: base,
        max_delay: Duration::from_secs(5),
        lease: Duration::from_secs(20),
        poll_interval: Duration::from_millis(20),
    }
}

/// A mailer that must not be used (SMS tests): files in a fresh temp dir.
pub fn unused_mailer() -> Mailer {
    Mailer::Files(temp_dir())
}

/// A fresh, not yet created directory under the system temp dir.
pub fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("streamforge-notify-{}", Uuid::new_v4().simple()))
}

/// Twilio settings pointing at the fake at `base`.
pub fn twilio(base: &str) -> TwilioConfig {
    TwilioConfig {
        api_base: base.to_owned(),
        account_sid: SID.to_owned(),
        auth_token: TOKEN.to_owned(),
        from: FROM_NUMBER.to_owned(),
        timeout: Duration::from_secs(5),
    }
}

/// Decodes an `application/x-www-form-urlencoded` body.
pub fn form(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    let body = std::str::from_utf8(body).unwrap();
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// One mail as received by the SMTP listener.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub to: Vec<String>,
    pub data: String,
}

/// What the SMTP listener answers to `RCPT TO`.
#[derive(Clone)]
struct SmtpSink {
    inbox: Arc<Mutex<Vec<ReceivedMail>>>,
    rcpts: Arc<AtomicUsize>,
    /// Answer the first this-many `RCPT TO` with 451 (transient).
    refuse_first: usize,
    /// Answer every `RCPT TO` with 550 (permanent).
    reject_all: bool,
    to: Vec<String>,
    buf: Vec<u8>,
}

impl Handler for SmtpSink {
    fn rcpt(&mut self, _to: &str) -> Response {
        let n = self.rcpts.fetch_add(1, Ordering::SeqCst);
        if self.reject_all {
            response::NO_MAILBOX
        } else if n < self.refuse_first {
            response::INTERNAL_ERROR
        } else {
            response::OK
        }
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.to = to.to_vec();
        self.buf.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mail =
            ReceivedMail { to: self.to.clone(), data: String::from_utf8_lossy(&self.buf).into_owned() };
        self.inbox.lock().unwrap().push(mail);
        response::OK
    }
}

/// A real SMTP server on a free port.
pub struct Smtp {
    pub url: String,
    pub inbox: Arc<Mutex<Vec<ReceivedMail>>>,
    /// `RCPT TO` commands seen (attempts that reached the server).
    pub rcpts: Arc<AtomicUsize>,
}

impl Smtp {
    /// Refuses the first `refuse_first` recipients with 451, or all with 550
    /// when `reject_all`.
    pub fn start(refuse_first: usize, reject_all: bool) -> Self {
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let rcpts = Arc::new(AtomicUsize::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sink = SmtpSink {
            inbox: inbox.clone(),
            rcpts: rcpts.clone(),
            refuse_first,
            reject_all,
            to: vec![],
            buf: vec![],
        };
        let mut server = Server::new(sink);
        server.with_name("smtp.test").with_tcp_listener(listener).with_num_threads(2);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Self { url: format!("smtp://127.0.0.1:{port}"), inbox, rcpts }
    }

    pub fn mailer(&self) -> Mailer {
        Mailer::new(Some(&self.url), temp_dir()).unwrap()
    }

    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.inbox.lock().unwrap().clone()
    }
}

/// An in-memory feed: hands out its envelopes once, remembers commits.
pub struct VecFeed {
    pending: Vec<Envelope>,
    pub commits: usize,
}

impl VecFeed {
    pub fn new(envelopes: Vec<Envelope>) -> Self {
        Self { pending: envelopes, commits: 0 }
    }
}

#[async_trait]
impl EventFeed for VecFeed {
    async fn next_batch(&mut self, max: usize, _max_wait: Duration) -> Result<Vec<Envelope>, FeedError> {
        let n = max.min(self.pending.len());
        Ok(self.pending.drain(..n).collect())
    }

    async fn commit(&mut self) -> Result<(), FeedError> {
        self.commits += 1;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), FeedError> {
        Ok(())
    }
}
