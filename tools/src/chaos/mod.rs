//! `streamforge chaos load | verify | replay-check`: the two ends of
//! `scripts/chaos` (issue 5, fault tests). The script starts the API,
//! relay, projector and notifier as separate processes against a durable
//! broker, runs [`load`] and kills -9 each process (and restarts the
//! broker) while it runs; then [`verify`] and [`replay_check`] prove that
//! nothing acknowledged was lost or applied twice.
//!
//! - [`load`] drives a fixed number of identity commands over HTTP from
//!   concurrent clients (register, verify email, password login, second
//!   factor, profile updates, refresh rotations, logouts), reading the
//!   mailed codes from the notifier's `.eml` files, and writes a journal:
//!   one JSON line per command with its HTTP status (or `null` when no
//!   answer came back, e.g. the API was killed mid-request).
//! - [`verify`] waits until the relay and the projectors have caught up,
//!   then checks every command answered 2xx against the event store, every
//!   stored event against the Kafka topics, and every acknowledged effect
//!   against the read models.
//! - [`replay_check`] (projectors stopped) copies the live read models,
//!   rebuilds every projection from the store, and compares row by row.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// The password of every account the load creates (not a common one).
pub const PASSWORD: &str = "chaos monkey tuning fork";

/// One kind of command the load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `POST /api/auth/register` → `UserRegistered`.
    Register,
    /// `POST /api/auth/verify-email` → `EmailVerified`.
    VerifyEmail,
    /// `POST /api/auth/login` (password step) → `OtpIssued`.
    Login,
    /// `POST /api/auth/verify-otp` → `SessionStarted`.
    VerifyOtp,
    /// `PUT /api/users/me` → `ProfileUpdated`.
    UpdateProfile,
    /// `POST /api/auth/refresh` → `SessionRefreshed`.
    Refresh,
    /// `POST /api/auth/logout` → `SessionRevoked`.
    Logout,
}

impl Op {
    /// Every op, for reports.
    pub const ALL: [Op; 7] =
        [Op::Register, Op::VerifyEmail, Op::Login, Op::VerifyOtp, Op::UpdateProfile, Op::Refresh, Op::Logout];
}

/// One journal line: a command and what the client saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub op: Op,
    /// HTTP status, or `None` when no response arrived (connection refused
    /// or reset, timeout): the command may or may not have committed.
    pub status: Option<u16>,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub challenge_id: Option<Uuid>,
    /// The profile name sent (`UpdateProfile`).
    pub name: Option<String>,
}

impl Record {
    fn new(op: Op) -> Self {
        Self { op, status: None, user_id: None, session_id: None, challenge_id: None, name: None }
    }

    /// Answered 2xx.
    pub fn acknowledged(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// No answer: the outcome is unknown.
    pub fn unknown(&self) -> bool {
        self.status.is_none()
    }
}

/// Options of [`load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// API base URL, e.g. `http://127.0.0.1:18080`.
    pub base: String,
    /// Commands (HTTP calls) to send in all.
    pub commands: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// The notifier's `MAIL_DIR`.
    pub mail_dir: PathBuf,
    /// Where to write the journal (JSON lines).
    pub journal: PathBuf,
    /// A file rewritten with the number of commands sent so far (for the
    /// script's fault schedule); `None` for none.
    pub progress: Option<PathBuf>,
    /// Longest run; the load stops early when it is spent.
    pub max_duration: Duration,
}

/// Codes found in the notifier's mail files.
#[derive(Default)]
struct MailIndex {
    /// File stem (delivery id) → code.
    by_stem: HashMap<String, String>,
    /// Recipient → verification codes, oldest first.
    verification: HashMap<String, Vec<String>>,
    parsed: HashSet<String>,
}

/// Reads new `.eml` files every 20 ms into the index.
async fn index_mail(dir: PathBuf, index: Arc<Mutex<MailIndex>>) {
    loop {
        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".eml") else { continue };
                if index.lock().map(|i| i.parsed.contains(stem)).unwrap_or(true) {
                    continue;
                }
                let Ok(text) = tokio::fs::read_to_string(entry.path()).await else { continue };
                let text = text.replace("=\r\n", "").replace("=\n", "");
                let to = text
                    .lines()
                    .find_map(|l| l.strip_prefix("To: "))
                    .map(|t| t.trim().trim_start_matches('<').trim_end_matches('>').to_owned());
                let code = text.find("code is ").map(|at| {
                    text[at + "code is ".len()..].chars().take_while(char::is_ascii_digit).collect::<String>()
                });
                if let Ok(mut i) = index.lock() {
                    i.parsed.insert(stem.to_owned());
                    if let Some(code) = code.filter(|c| c.len() == 6) {
                        if text.contains("verification code") {
                            if let Some(to) = to {
                                i.verification.entry(to).or_default().push(code.clone());
                            }
                        }
                        i.by_stem.insert(stem.to_owned(), code);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (≤ 60 s) until `pick` finds a code in the index.
async fn wait_code(index: &Mutex<MailIndex>, pick: impl Fn(&MailIndex) -> Option<String>) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(code) = index.lock().ok().and_then(|i| pick(&i)) {
            return Some(code);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

struct Session {
    session_id: Uuid,
    access: String,
    refresh: String,
}

struct Account {
    email: String,
    user_id: Option<Uuid>,
    verified: bool,
    session: Option<Session>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    index: Arc<Mutex<MailIndex>>,
    sent: Arc<AtomicUsize>,
    limit: usize,
    deadline: Instant,
    journal: Vec<Record>,
    id: usize,
    accounts_made: usize,
    names: usize,
}

impl Client {
    /// Takes one command from the budget; `false` once it is spent.
    fn take(&self) -> bool {
        Instant::now() < self.deadline && self.sent.fetch_add(1, Ordering::Relaxed) < self.limit
    }

    /// Sends one request; records and returns (status, body).
    async fn call(
        &mut self,
        mut record: Record,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (Option<u16>, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, value) = match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (Some(status), r.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(_) => (None, Value::Null),
        };
        record.status = status;
        if record.session_id.is_none() {
            record.session_id = value.get("session_id").and_then(|v| v.as_str()).and_then(|s| s.parse().ok());
        }
        if record.user_id.is_none() {
            record.user_id = value.get("user_id").and_then(|v| v.as_str()).and_then(|s| s.parse().ok());
        }
        if record.challenge_id.is_none() {
            record.challenge_id =
                value.get("challenge_id").and_then(|v| v.as_str()).and_then(|s| s.parse().ok());
        }
        self.journal.push(record);
        if status.is_none() {
            // The API is down (killed): give it a moment.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (status, value)
    }

    fn new_account(&mut self) -> Account {
        self.accounts_made += 1;
        let email =
            format!("chaos-{}-{}-{}@example.com", self.id, self.accounts_made, Uuid::new_v4().simple());
        Account { email, user_id: None, verified: false, session: None }
    }

    /// Registers and verifies `account`; `false` if the budget ran out or a
    /// step failed (the caller starts over with a new account).
    async fn register(&mut self, account: &mut Account) -> bool {
        if !self.take() {
            return false;
        }
        let (status, body) = self
            .call(
                Record::new(Op::Register),
                reqwest::Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"email": account.email, "password": PASSWORD, "name": "Chaos"})),
            )
            .await;
        if status != Some(201) {
            return false;
        }
        account.user_id = body["user_id"].as_str().and_then(|s| s.parse().ok());
        let email = account.email.clone();
        let Some(code) =
            wait_code(&self.index, |i| i.verification.get(&email).and_then(|c| c.last().cloned())).await
        else {
            return false;
        };
        if !self.take() {
            return false;
        }
        let mut record = Record::new(Op::VerifyEmail);
        record.user_id = account.user_id;
        let (status, _) = self
            .call(
                record,
                reqwest::Method::POST,
                "/api/auth/verify-email",
                None,
                Some(json!({"email": account.email, "code": code})),
            )
            .await;
        account.verified = status == Some(204);
        account.verified
    }

    /// Password login and second factor; sets `account.session`.
    async fn login(&mut self, account: &mut Account) -> bool {
        if !self.take() {
            return false;
        }
        let mut record = Record::new(Op::Login);
        record.user_id = account.user_id;
        let (status, body) = self
            .call(
                record,
                reqwest::Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"email": account.email, "password": PASSWORD})),
            )
            .await;
        if status != Some(200) {
            return false;
        }
        let Some(challenge) = body["challenge_id"].as_str().map(str::to_owned) else { return false };
        let Some(code) = wait_code(&self.index, |i| i.by_stem.get(&challenge).cloned()).await else {
            return false;
        };
        if !self.take() {
            return false;
        }
        let mut record = Record::new(Op::VerifyOtp);
        record.user_id = account.user_id;
        record.challenge_id = challenge.parse().ok();
        let (status, body) = self
            .call(
                record,
                reqwest::Method::POST,
                "/api/auth/verify-otp",
                None,
                Some(json!({"challenge_id": challenge, "code": code})),
            )
            .await;
        if status != Some(200) {
            return false;
        }
        account.session = token_session(&body);
        account.session.is_some()
    }

    async fn run(mut self) -> Vec<Record> {
        let mut account = self.new_account();
        while self.sent.load(Ordering::Relaxed) < self.limit && Instant::now() < self.deadline {
            if !account.verified {
                if !self.register(&mut account).await {
                    account = self.new_account();
                }
                continue;
            }
            if account.session.is_none() {
                self.login(&mut account).await;
                continue;
            }
            // 1 in 100: a new account; 3 in 100: log out (then log in again);
            // 48: refresh; 48: profile update.
            let roll = rand::thread_rng().gen_range(0..100);
            if roll == 0 {
                account = self.new_account();
                continue;
            }
            if !self.take() {
                break;
            }
            let Some(session) = account.session.as_ref() else { continue };
            let (session_id, access, refresh) =
                (session.session_id, session.access.clone(), session.refresh.clone());
            let mut record = Record::new(Op::Logout);
            record.user_id = account.user_id;
            record.session_id = Some(session_id);
            if roll <= 3 {
                // Whatever the answer (204, 401 for a session already gone,
                // none), this session is not used again.
                self.call(record, reqwest::Method::POST, "/api/auth/logout", Some(&access), None).await;
                account.session = None;
            } else if roll <= 51 {
                record.op = Op::Refresh;
                let (status, body) = self
                    .call(
                        record,
                        reqwest::Method::POST,
                        "/api/auth/refresh",
                        None,
                        Some(json!({"refresh_token": refresh})),
                    )
                    .await;
                // Unknown outcome: the token may have rotated; using it again
                // would be reuse (and revoke the family). Start a new session.
                account.session = if status == Some(200) { token_session(&body) } else { None };
            } else {
                record.op = Op::UpdateProfile;
                self.names += 1;
                let name = format!("C{}-{}", self.id, self.names);
                record.name = Some(name.clone());
                let (status, _) = self
                    .call(
                        record,
                        reqwest::Method::PUT,
                        "/api/users/me",
                        Some(&access),
                        Some(json!({"name": name})),
                    )
                    .await;
                if status == Some(401) {
                    account.session = None;
                }
            }
        }
        self.journal
    }
}

fn token_session(body: &Value) -> Option<Session> {
    Some(Session {
        session_id: body["session_id"].as_str()?.parse().ok()?,
        access: body["access_token"].as_str()?.to_owned(),
        refresh: body["refresh_token"].as_str()?.to_owned(),
    })
}

/// Runs the load; writes the journal and prints a summary.
///
/// # Errors
/// The journal or progress file cannot be written.
pub async fn load(options: &LoadOptions) -> anyhow::Result<()> {
    let index = Arc::new(Mutex::new(MailIndex::default()));
    let indexer = tokio::spawn(index_mail(options.mail_dir.clone(), index.clone()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(options.clients)
        .build()?;
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + options.max_duration;
    let mut tasks = Vec::new();
    for id in 0..options.clients.max(1) {
        let client = Client {
            http: http.clone(),
            base: options.base.clone(),
            index: index.clone(),
            sent: sent.clone(),
            limit: options.commands,
            deadline,
            journal: Vec::new(),
            id,
            accounts_made: 0,
            names: 0,
        };
        tasks.push(tokio::spawn(client.run()));
    }
    let progress = options.progress.clone();
    let reporter = {
        let sent = sent.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Some(path) = &progress {
                    // Write then rename, so a reader never sees a half-written file.
                    let tmp = path.with_extension("tmp");
                    if tokio::fs::write(&tmp, sent.load(Ordering::Relaxed).to_string()).await.is_ok() {
                        let _ = tokio::fs::rename(&tmp, path).await;
                    }
                }
            }
        })
    };
    let mut journal = Vec::new();
    for task in tasks {
        journal.extend(task.await.context("load client panicked")?);
    }
    reporter.abort();
    indexer.abort();
    if let Some(path) = &options.progress {
        tokio::fs::write(path, options.commands.to_string()).await?;
    }
    let mut lines = String::new();
    for record in &journal {
        lines.push_str(&serde_json::to_string(record)?);
        lines.push('\n');
    }
    tokio::fs::write(&options.journal, lines).await.context("writing the journal")?;
    let elapsed = started.elapsed();
    println!(
        "load: {} commands in {:.1} s ({:.0}/s), {} clients",
        journal.len(),
        elapsed.as_secs_f64(),
        crate::bench::per_second(u64::try_from(journal.len()).unwrap_or(0), elapsed),
        options.clients
    );
    println!("{}", summary(&journal));
    Ok(())
}

/// Status counts per op, as a Markdown table.
pub fn summary(journal: &[Record]) -> String {
    let mut out = String::from("| op | 2xx | 4xx | 5xx | no answer |\n|---|---:|---:|---:|---:|\n");
    for op in Op::ALL {
        let of: Vec<&Record> = journal.iter().filter(|r| r.op == op).collect();
        let count = |f: &dyn Fn(u16) -> bool| of.iter().filter(|r| r.status.is_some_and(f)).count();
        out.push_str(&format!(
            "| {op:?} | {} | {} | {} | {} |\n",
            count(&|s| (200..300).contains(&s)),
            count(&|s| (400..500).contains(&s)),
            count(&|s| s >= 500),
            of.iter().filter(|r| r.unknown()).count(),
        ));
    }
    out
}

/// Reads a journal written by [`load`].
///
/// # Errors
/// Unreadable file or line.
pub fn read_journal(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// One check's outcome.
mod verify;

pub use verify::{replay_check, verify, READ_MODEL_TABLES};
