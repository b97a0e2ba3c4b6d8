//! `spawn_app`: a whole streamforge process (HTTP, relay, projector,
//! notifier) on port 0 over a fresh database, with mail delivered over SMTP
//! to an in-test listener, on either feed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::app::{App, Roles};
use api::config::Settings;
use commands::keys::Secret32;
use mailin_embedded::response::{self, Response};
use mailin_embedded::{Handler, Server};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// Which event feed the projector and notifier read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Relay → tansu → consumer groups.
    Kafka,
    /// Postgres tail (embedded default).
    Postgres,
}

/// One mail as received by the SMTP listener.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub to: Vec<String>,
    pub data: String,
}

#[derive(Clone)]
struct SmtpSink {
    inbox: Arc<Mutex<Vec<ReceivedMail>>>,
    to: Vec<String>,
    buf: Vec<u8>,
}

impl Handler for SmtpSink {
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

/// Starts a real SMTP server on a free port; returns its port and inbox.
fn start_smtp() -> (u16, Arc<Mutex<Vec<ReceivedMail>>>) {
    let inbox = Arc::new(Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut server = Server::new(SmtpSink { inbox: inbox.clone(), to: vec![], buf: vec![] });
    server.with_name("smtp.test").with_tcp_listener(listener).with_num_threads(2);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    (port, inbox)
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub inbox: Arc<Mutex<Vec<ReceivedMail>>>,
    pub topic_prefix: String,
    pub brokers: String,
    /// The app's token issuer, to mint tokens a client could not (e.g. a stale one).
    pub tokens: Arc<commands::tokens::TokenIssuer>,
    /// The settings it runs with (same database and keys for a second node).
    pub settings: Settings,
    shutdown: watch::Sender<bool>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

pub async fn spawn_app(feed: Feed) -> TestApp {
    spawn_app_with(feed, |_| {}).await
}

/// [`spawn_app`] with a last word on the settings (e.g. Twilio's base URL).
pub async fn spawn_app_with(feed: Feed, customise: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_roles(feed, Roles::ALL, customise).await
}

/// [`spawn_app_with`] running only `roles` (e.g. without the projector).
pub async fn spawn_app_roles(feed: Feed, roles: Roles, customise: impl FnOnce(&mut Settings)) -> TestApp {
    api::telemetry::init_for_tests();
    let (pool, url) = projections::db::testing::create_test_database(&projections::db::testing::base_url())
        .await
        .expect("test database");
    let (smtp_port, inbox) = start_smtp();
    let run = Uuid::new_v4().simple().to_string();
    let topic_prefix = format!("t{run}.streamforge.events.");
    let mut settings = Settings::from_env().expect("settings");
    settings.database_url = url;
    settings.database_max_connections = 10;
    // Tests run side by side on one server (max_connections 100): keep few warm.
    settings.database_min_connections = Some(2);
    settings.kafka_brokers = (feed == Feed::Kafka).then(brokers);
    settings.kafka_topic_prefix = topic_prefix.clone();
    settings.kafka_group_prefix = format!("g{run}");
    settings.kafka_topic_partitions = 3;
    settings.smtp_url = Some(format!("smtp://127.0.0.1:{smtp_port}"));
    settings.master_key = Some(Secret32::generate().to_base64());
    settings.jwt_key = Some(Secret32::generate().to_base64());
    settings.password_hash_concurrency = Some(2);
    // Files (SMS without Twilio) go to a per-test temporary directory.
    let scratch = std::env::temp_dir().join(format!("streamforge-test-{run}"));
    settings.sms_dir = scratch.join("sms");
    settings.mail_dir = scratch.join("mail");
    // The IP limit is tested on its own; other tests send thousands of requests.
    settings.auth_rate_per_minute = 0;
    // Likewise the per-recipient code budget (tested with its defaults in
    // `abuse` and `phone`): many tests send several codes within seconds.
    settings.otp_codes_per_hour = 1_000;
    settings.otp_resend_interval_secs = 0;
    // Read-your-writes waits: the whole suite runs side by side on two
    // cores, where a projector may lag seconds; the 503 after the default
    // 2 s is tested on its own with a short wait.
    settings.consistency_wait_ms = 15_000;
    customise(&mut settings);
    let app = App::build(settings.clone()).await.expect("app builds");
    let tokens = app.tokens.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if let Err(e) = app.run(roles, Some(listener), rx).await {
            eprintln!("app stopped with error: {e:#}");
        }
    });
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    // Ready once HTTP answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health/ready")).send().await.map(|r| r.status().is_success()).ok()
        != Some(true)
    {
        assert!(Instant::now() < deadline, "app did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    TestApp { base, client, pool, inbox, topic_prefix, brokers: brokers(), tokens, settings, shutdown: tx }
}

impl TestApp {
    /// A second API node (HTTP role only) on the same database and keys.
    pub async fn second_node(&self) -> (String, watch::Sender<bool>) {
        let app = App::build(self.settings.clone()).await.expect("second node builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = watch::channel(false);
        let roles = Roles { http: true, relay: false, project: false, notify: false };
        tokio::spawn(async move {
            let _ = app.run(roles, Some(listener), rx).await;
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .map(|r| r.status().is_success())
            .ok()
            != Some(true)
        {
            assert!(Instant::now() < deadline, "second node did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (base, tx)
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap()
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.base)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn register(&self, email: &str, password: &str, name: &str) -> reqwest::Response {
        self.post("/api/auth/register", json!({"email": email, "password": password, "name": name})).await
    }

    /// Waits (≤ 15 s) for the `n`-th mail to `to` and returns it.
    pub async fn wait_mail(&self, to: &str, n: usize) -> ReceivedMail {
        self.wait_mail_with(to, "", n).await
    }

    /// Waits (≤ 15 s) for the `n`-th mail to `to` whose text contains `needle`.
    pub async fn wait_mail_with(&self, to: &str, needle: &str, n: usize) -> ReceivedMail {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            {
                let inbox = self.inbox.lock().unwrap();
                let mine: Vec<&ReceivedMail> = inbox
                    .iter()
                    .filter(|m| m.to.iter().any(|t| t == to) && m.data.replace("=\r\n", "").contains(needle))
                    .collect();
                if mine.len() >= n {
                    return mine[n - 1].clone();
                }
            }
            assert!(Instant::now() < deadline, "mail #{n} to {to} with {needle:?} did not arrive");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `GET path` with `token` until `ok(status, body)` holds (≤ 10 s).
    pub async fn wait_for(&self, path: &str, token: &str, ok: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.get_auth(path, token).await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if ok(status, &body) {
                return (status, body);
            }
            assert!(Instant::now() < deadline, "condition on {path} not met: last {status} {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The 6-digit code inside a mail body.
pub fn code_in(mail: &ReceivedMail) -> String {
    let body = mail.data.replace("=\r\n", "");
    let at = body.find("code is ").expect("mail carries a code") + "code is ".len();
    let code: String = body[at..].chars().take(6).collect();
    assert!(code.chars().all(|c| c.is_ascii_digit()), "code {code:?}");
    code
}

/// Validates every event in the store against its committed JSON Schema
/// (`schemas/`, issue 18), with the `jsonschema` crate.
pub async fn assert_events_match_schemas(pool: &PgPool) {
    let schemas = domain::schema::event_schemas();
    let rows: Vec<(String, String, String, serde_json::Value)> =
        sqlx::query_as("SELECT aggregate_type, event_type, event_version, payload::jsonb FROM events")
            .fetch_all(pool)
            .await
            .unwrap();
    assert!(!rows.is_empty());
    for (aggregate_type, event_type, version, payload) in rows {
        let schema = schemas
            .iter()
            .find(|s| {
                s.aggregate_type == aggregate_type && s.event_type == event_type && s.version == version
            })
            .unwrap_or_else(|| panic!("no schema for {aggregate_type}/{event_type} v{version}"));
        let validator = jsonschema::validator_for(&schema.schema).expect("a valid schema");
        let fields = &payload[&event_type];
        let errors: Vec<String> = validator.iter_errors(fields).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{aggregate_type}/{event_type} does not match its schema: {errors:?}\n{fields}"
        );
    }
}
