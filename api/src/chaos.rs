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
use domain::envelope::{Envelope, AGGREGATE_TYPES};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::app::App;
use crate::config::Settings;

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
struct Check {
    what: String,
    bad: usize,
    detail: String,
}

fn check(what: impl Into<String>, bad: usize, detail: impl Into<String>) -> Check {
    Check { what: what.into(), bad, detail: detail.into() }
}

/// One stored event, as the checks need it.
#[derive(Debug, Clone)]
struct Stored {
    event_id: Uuid,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
}

/// Waits (≤ `timeout`) until the relay has published every settled event
/// and every projector has applied the last event of every aggregate it
/// handles.
async fn wait_caught_up(pool: &PgPool, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let projectors = App::projectors();
    loop {
        let relay = projections::tail::load_checkpoint(pool, workers::relay::DEFAULT_CHECKPOINT).await?;
        let unpublished = projections::tail::read_after(pool, relay, 1, None).await?.len();
        let mut behind = 0i64;
        for projector in &projectors {
            let types: Vec<String> =
                AGGREGATE_TYPES.iter().filter(|t| projector.handles(t)).map(|t| (*t).to_owned()).collect();
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT aggregate_type, aggregate_id, max(sequence) AS last
                                         FROM events WHERE aggregate_type = ANY($2) GROUP BY 1, 2) e
                 LEFT JOIN projection_checkpoints c
                   ON c.projector = $1 AND c.aggregate_type = e.aggregate_type AND c.aggregate_id = e.aggregate_id
                 WHERE c.sequence IS NULL OR c.sequence < e.last",
            )
            .bind(projector.name())
            .bind(&types)
            .fetch_one(pool)
            .await?;
            behind += n;
        }
        if unpublished == 0 && behind == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "not caught up after {timeout:?}: relay has {unpublished} unpublished, projectors {behind} aggregates behind"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Checks the journal against the store, the topics and the read models;
/// prints a table and fails if any check fails.
///
/// # Errors
/// A failed check, or the store / broker cannot be read.
pub async fn verify(settings: &Settings, journal_path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let journal = read_journal(journal_path)?;
    let app = App::build(settings.clone()).await?;
    let pool = app.pool.clone();
    let caught_up = wait_caught_up(&pool, timeout).await?;
    println!("caught up {:.1} s after the load ended", caught_up.as_secs_f64());
    println!("{}", summary(&journal));

    let stored: Vec<Stored> = sqlx::query_as::<_, (Uuid, String, String, i64, String)>(
        "SELECT event_id, aggregate_type, aggregate_id, sequence, event_type FROM events",
    )
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|(event_id, aggregate_type, aggregate_id, sequence, event_type)| Stored {
        event_id,
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
    })
    .collect();
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for e in &stored {
        *counts.entry((e.aggregate_id.clone(), e.event_type.clone())).or_default() += 1;
    }
    let count_of = |id: Option<Uuid>, event_type: &str| {
        id.map_or(0, |id| counts.get(&(id.to_string(), event_type.to_owned())).copied().unwrap_or(0))
    };

    let mut checks = Vec::new();
    checks.push(check(
        "answers 5xx",
        journal.iter().filter(|r| r.status.is_some_and(|s| s >= 500)).count(),
        "commands the API answered with a server error",
    ));

    // 1. Store: every acknowledged command has its event; per stream, the
    //    number of events lies between the acknowledged and the
    //    acknowledged-plus-unanswered commands (nothing lost, nothing doubled).
    let mut missing = Vec::new();
    let single = [
        (Op::Register, "UserRegistered", "user"),
        (Op::VerifyEmail, "EmailVerified", "user"),
        (Op::Login, "OtpIssued", "challenge"),
        (Op::VerifyOtp, "SessionStarted", "session"),
        (Op::Logout, "SessionRevoked", "session"),
    ];
    for (op, event_type, key) in single {
        for r in journal.iter().filter(|r| r.op == op && r.acknowledged()) {
            let id = match key {
                "user" => r.user_id,
                "challenge" => r.challenge_id,
                _ => r.session_id,
            };
            if count_of(id, event_type) != 1 {
                missing.push(format!("{op:?} {id:?}: {} × {event_type}", count_of(id, event_type)));
            }
        }
    }
    let mut per_stream: HashMap<(Op, Uuid), (usize, usize)> = HashMap::new();
    for r in &journal {
        let id = match r.op {
            Op::UpdateProfile => r.user_id,
            Op::Refresh => r.session_id,
            _ => None,
        };
        if let Some(id) = id {
            let entry = per_stream.entry((r.op, id)).or_default();
            if r.acknowledged() {
                entry.0 += 1;
            } else if r.unknown() {
                entry.1 += 1;
            }
        }
    }
    for ((op, id), (acked, unknown)) in &per_stream {
        let event_type = if *op == Op::UpdateProfile { "ProfileUpdated" } else { "SessionRefreshed" };
        let n = count_of(Some(*id), event_type);
        if n < *acked || n > acked + unknown {
            missing
                .push(format!("{op:?} {id}: {n} × {event_type}, {acked} acknowledged, {unknown} unanswered"));
        }
    }
    checks.push(check(
        "acknowledged commands without exactly their events in the store",
        missing.len(),
        missing.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
    ));

    // 2. Topics: every stored event is on its topic, nothing else is.
    let topic = read_topics(settings, &stored).await?;
    checks.push(check("stored events missing from the topics", topic.missing, ""));
    checks.push(check("messages on the topics that are not stored events", topic.foreign, ""));
    checks.push(check(
        "messages whose envelope differs from the stored event",
        topic.mismatched,
        "aggregate, sequence or event type",
    ));
    println!(
        "topics: {} messages, {} distinct events, {} republished copies (at-least-once relay; consumers skip them by sequence)",
        topic.received, topic.distinct, topic.duplicates
    );

    // 3. Read models: each acknowledged effect is there.
    let mut rm_bad = Vec::new();
    let sessions: HashMap<Uuid, (String, i64)> =
        sqlx::query_as::<_, (Uuid, String, i64)>("SELECT session_id, status, generation FROM rm_sessions")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .map(|(id, status, generation)| (id, (status, generation)))
            .collect();
    for r in journal.iter().filter(|r| r.acknowledged()) {
        let Some(sid) = r.session_id else { continue };
        match r.op {
            Op::VerifyOtp | Op::Refresh => match sessions.get(&sid) {
                None => rm_bad.push(format!("session {sid} missing from rm_sessions")),
                Some((_, generation)) => {
                    let refreshed = i64::try_from(count_of(Some(sid), "SessionRefreshed")).unwrap_or(-1);
                    if *generation != refreshed {
                        rm_bad.push(format!(
                            "session {sid}: generation {generation}, {refreshed} refreshes stored"
                        ));
                    }
                }
            },
            Op::Logout if sessions.get(&sid).map(|s| s.0.as_str()) != Some("revoked") => {
                rm_bad.push(format!("session {sid} logged out but not revoked in rm_sessions"));
            }
            _ => {}
        }
    }
    // The profile name: the last acknowledged update, unless an unanswered
    // one came after it.
    let mut last_names: HashMap<Uuid, (Option<String>, Vec<String>)> = HashMap::new();
    for r in journal.iter().filter(|r| r.op == Op::UpdateProfile) {
        let (Some(user), Some(name)) = (r.user_id, r.name.clone()) else { continue };
        let entry = last_names.entry(user).or_default();
        if r.acknowledged() {
            *entry = (Some(name), Vec::new());
        } else if r.unknown() {
            entry.1.push(name);
        }
    }
    for (user, (acked, later_unknown)) in &last_names {
        let Some(acked) = acked else { continue };
        let row = projections::profiles::find_profile(&pool, *user).await?;
        let name = match row.and_then(|r| r.name_sealed) {
            Some(sealed) => app.identity.vault.open(*user, &domain::values::Sealed(sealed)).await?,
            None => None,
        };
        let ok = name.as_deref() == Some(acked.as_str())
            || name.as_ref().is_some_and(|n| later_unknown.contains(n));
        if !ok {
            rm_bad.push(format!("profile {user}: name {name:?}, last acknowledged {acked:?}"));
        }
    }
    checks.push(check(
        "acknowledged effects missing or wrong in the read models",
        rm_bad.len(),
        rm_bad.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
    ));

    println!("| check | failures | note |\n|---|---:|---|");
    for c in &checks {
        println!("| {} | {} | {} |", c.what, c.bad, c.detail);
    }
    println!(
        "store: {} events; journal: {} commands, {} acknowledged, {} unanswered",
        stored.len(),
        journal.len(),
        journal.iter().filter(|r| r.acknowledged()).count(),
        journal.iter().filter(|r| r.unknown()).count()
    );
    let failed = checks.iter().filter(|c| c.bad > 0).count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    println!("verify: PASS");
    Ok(())
}

struct TopicCheck {
    received: usize,
    distinct: usize,
    duplicates: usize,
    missing: usize,
    foreign: usize,
    mismatched: usize,
}

/// Reads every partition of every topic from the beginning, assigned
/// explicitly (no consumer group: the check must not depend on the group
/// coordinator it is checking around), until every stored event arrived or
/// nothing new came for 60 s (120 s before the first message; tansu's
/// SQLite engine reads a partition from its start slowly). Progress goes to
/// stderr every 10 s, and the messages received per topic at the end.
async fn read_topics(settings: &Settings, stored: &[Stored]) -> anyhow::Result<TopicCheck> {
    use rdkafka::message::Message as _;

    let brokers = settings.kafka_brokers.clone().context("KAFKA_BROKERS is required")?;
    let topics: Vec<String> =
        AGGREGATE_TYPES.iter().map(|t| format!("{}{t}", settings.kafka_topic_prefix)).collect();
    let consumer =
        projections::kafka_feed::assigned_reader(&brokers, &topics, rdkafka::Offset::Beginning, 5)?;
    let by_id: HashMap<Uuid, &Stored> = stored.iter().map(|e| (e.event_id, e)).collect();
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(stored.len());
    let (mut received, mut duplicates, mut foreign, mut mismatched) = (0, 0, 0, 0);
    let started = Instant::now();
    let mut last_progress: Option<Instant> = None;
    let mut last_report = Instant::now();
    let mut per_topic: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    while seen.len() < by_id.len() {
        let idle = match last_progress {
            Some(at) => at.elapsed() > Duration::from_secs(60),
            None => started.elapsed() > Duration::from_secs(120),
        };
        if idle {
            eprintln!("topic read: nothing new for 60 s; stopping at {} of {}", seen.len(), by_id.len());
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "topic read: {} of {} stored events after {:.0} s",
                seen.len(),
                by_id.len(),
                started.elapsed().as_secs_f64()
            );
        }
        let message = match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Err(_) => continue,
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "topic read failed; retrying");
                continue;
            }
            Ok(Ok(message)) => message,
        };
        last_progress = Some(Instant::now());
        received += 1;
        *per_topic.entry(message.topic().to_owned()).or_default() += 1;
        let Some(e) = message.payload().and_then(|v| serde_json::from_slice::<Envelope>(v).ok()) else {
            foreign += 1;
            continue;
        };
        let Some(s) = by_id.get(&e.event_id) else {
            foreign += 1;
            continue;
        };
        if s.aggregate_type != e.aggregate_type
            || s.aggregate_id != e.aggregate_id
            || s.sequence != e.sequence
            || s.event_type != e.event_type
        {
            mismatched += 1;
        }
        if !seen.insert(e.event_id) {
            duplicates += 1;
        }
    }
    eprintln!("topic read: messages per topic {per_topic:?} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(TopicCheck {
        received,
        distinct: seen.len(),
        duplicates,
        missing: by_id.len() - seen.len(),
        foreign,
        mismatched,
    })
}

/// Read-model tables compared by [`replay_check`], with the checkpoints.
pub const READ_MODEL_TABLES: &[&str] = &[
    "rm_profiles",
    "rm_sessions",
    "rm_challenges",
    "rm_passkeys",
    "rm_device_pins",
    "projection_checkpoints",
];

/// With the projectors stopped: copies every read-model table, rebuilds
/// every projection from the store, and counts rows that differ (both
/// directions, duplicates included). Leaves the rebuilt read models.
///
/// # Errors
/// A difference, or a database error.
pub async fn replay_check(settings: &Settings) -> anyhow::Result<()> {
    let pool = projections::db::connect(&settings.database_url).await?;
    for table in READ_MODEL_TABLES {
        sqlx::query(&format!("DROP TABLE IF EXISTS chaos_live_{table}")).execute(&pool).await?;
        sqlx::query(&format!("CREATE TABLE chaos_live_{table} AS TABLE {table}")).execute(&pool).await?;
    }
    let runner = projections::runtime::ProjectionRunner::new(pool.clone(), App::projectors());
    let started = Instant::now();
    for name in runner.names() {
        let stats = runner.rebuild(name, 1_000).await?;
        println!("rebuilt {name}: {} events read, {} applied", stats.read, stats.applied);
    }
    println!("rebuild took {:.1} s", started.elapsed().as_secs_f64());
    println!("| read model | rows live | rows replayed | live rows not in replay | replayed rows not live |");
    println!("|---|---:|---:|---:|---:|");
    let mut differing = 0i64;
    for table in READ_MODEL_TABLES {
        let count = |sql: String| {
            let pool = pool.clone();
            async move { sqlx::query_scalar::<_, i64>(&sql).fetch_one(&pool).await }
        };
        let live = count(format!("SELECT count(*) FROM chaos_live_{table}")).await?;
        let replayed = count(format!("SELECT count(*) FROM {table}")).await?;
        let only_live =
            count(format!("SELECT count(*) FROM (TABLE chaos_live_{table} EXCEPT ALL TABLE {table}) d"))
                .await?;
        let only_replayed =
            count(format!("SELECT count(*) FROM (TABLE {table} EXCEPT ALL TABLE chaos_live_{table}) d"))
                .await?;
        println!("| {table} | {live} | {replayed} | {only_live} | {only_replayed} |");
        differing += only_live + only_replayed;
    }
    for table in READ_MODEL_TABLES {
        sqlx::query(&format!("DROP TABLE IF EXISTS chaos_live_{table}")).execute(&pool).await?;
    }
    anyhow::ensure!(differing == 0, "{differing} read-model rows differ from a fresh replay");
    println!("replay-check: PASS (read models equal a fresh replay)");
    Ok(())
}
