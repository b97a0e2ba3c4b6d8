//! `bench login-http`: password logins per second over HTTP against a whole
//! `streamforge` process — `serve` (every role in one process, what `cargo
//! run` starts) and `api` (the HTTP role alone) — in alternating rounds
//! with H, the argon2id verifications per second this machine reaches on
//! every core. The figure users see is the one measured: requests go
//! through the HTTP stack, the in-process relay-less Postgres feed, the
//! projectors and the notifier sending every code (mail files), as
//! `wrk -c16 -s sf-login.lua` against `cargo run` does (../shared/peers).
//!
//! The child is the `streamforge` binary (`STREAMFORGE_BIN`, else this
//! executable), started on the benchmark's database with the limits that
//! would refuse repeated logins lifted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::argon::{self, Implementation};
use super::login::{register_accounts, Account, ACCOUNTS_PER_CLIENT};
use super::{
    closed_loop, cores, error_note, fmt_ms, fmt_rate, ratio, BenchEnv, BenchOptions, Check, Report, Row,
    Sample,
};
use api::app::App;

/// Rounds of each mode, alternating with rounds of H.
const ROUNDS: u32 = 2;

/// A `streamforge <role>` child on the benchmark's database; killed (and
/// waited for) on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(env: &BenchEnv, role: &str) -> anyhow::Result<Self> {
        let bin = std::env::var_os("STREAMFORGE_BIN")
            .map(PathBuf::from)
            .map_or_else(std::env::current_exe, Ok)
            .context("cannot find the streamforge binary")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let s = &env.settings;
        let mut cmd = Command::new(bin);
        cmd.arg(role)
            .env("DATABASE_URL", &s.database_url)
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("MAIL_DIR", &s.mail_dir)
            .env("SMS_DIR", &s.sms_dir)
            .env("STREAMFORGE_MASTER_KEY", s.master_key.clone().unwrap_or_default())
            .env("STREAMFORGE_JWT_KEY", s.jwt_key.clone().unwrap_or_default())
            .env("AUTH_RATE_PER_MINUTE", "0")
            .env("OTP_CODES_PER_HOUR", "1000000")
            .env("OTP_RESEND_INTERVAL_SECS", "0")
            .env("RUST_LOG", "warn")
            .env_remove("KAFKA_BROKERS")
            .env_remove("SMTP_URL")
            .env_remove("METRICS_ADDR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().context("cannot start the streamforge child")?;
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client.get(format!("{base}/health/ready")).send().await.is_ok_and(|r| r.status().is_success())
        {
            anyhow::ensure!(Instant::now() < deadline, "streamforge {role} did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { child, base })
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time spent during the logins of one mode, in clock ticks (the
/// kernel's 1/100 s): the child process, its `argon2-*` hashing threads
/// among it, and the bench database's Postgres backends.
#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    process: u64,
    argon2: u64,
    postgres: u64,
}

impl Cpu {
    /// Milliseconds per login of what is not argon2: the process minus
    /// its hashing threads, plus Postgres. What the roles around the hash
    /// cost, and the figure that does not move with the host's speed of
    /// hashing (docs/performance.md, "login-http").
    fn overhead_ms(&self, logins: u64) -> f64 {
        let ticks = (self.process.saturating_sub(self.argon2) + self.postgres) as f64;
        ticks * 10.0 / logins.max(1) as f64
    }

    fn argon2_ms(&self, logins: u64) -> f64 {
        self.argon2 as f64 * 10.0 / logins.max(1) as f64
    }
}

/// utime + stime of `/proc/.../stat` at `path`, in clock ticks.
fn stat_ticks(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which may hold spaces: state is field 3.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The child's CPU (process, hashing threads) and that of `backends`.
fn cpu_now(child: u32, backends: &[i32]) -> Cpu {
    let proc_dir = std::path::PathBuf::from(format!("/proc/{child}"));
    let argon2 = std::fs::read_dir(proc_dir.join("task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("argon2"))
                })
                .filter_map(|t| stat_ticks(&t.path().join("stat")))
                .sum()
        })
        .unwrap_or(0);
    let postgres = backends
        .iter()
        .filter_map(|pid| stat_ticks(&std::path::PathBuf::from(format!("/proc/{pid}/stat"))))
        .sum();
    Cpu { process: stat_ticks(&proc_dir.join("stat")).unwrap_or(0), argon2, postgres }
}

/// Waits (at most 2 min) until no delivery record waits to be sent.
async fn drain_deliveries(db: &sqlx::PgPool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries").fetch_one(db).await.unwrap_or(0);
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Postgres backends connected to the bench database.
async fn backends(db: &sqlx::PgPool) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        .fetch_all(db)
        .await
        .unwrap_or_default()
}

/// Logins over HTTP, closed loop, `concurrency` clients (each its own
/// connection, as wrk's), rotating over its accounts.
async fn logins(base: &str, accounts: &Arc<Vec<Account>>, concurrency: usize, d: Duration) -> Sample {
    let base = base.to_owned();
    let accounts = accounts.clone();
    let clients: Arc<Vec<reqwest::Client>> = Arc::new(
        (0..concurrency)
            .map(|_| reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap_or_default())
            .collect(),
    );
    closed_loop(concurrency, d, move |worker, i| {
        let url = format!("{base}/api/auth/login");
        let k = worker * ACCOUNTS_PER_CLIENT + usize::try_from(i).unwrap_or(0) % ACCOUNTS_PER_CLIENT;
        let a = &accounts[k % accounts.len()];
        let body = serde_json::json!({"email": a.email.as_str(), "password": a.password.expose()});
        let client = clients[worker % clients.len()].clone();
        async move {
            let r = client.post(url).json(&body).send().await?;
            anyhow::ensure!(r.status().is_success(), "login answered {}", r.status());
            Ok(())
        }
    })
    .await
}

/// Runs the benchmark on `env`.
///
/// # Errors
/// Setup failures (the child, the database).
pub async fn run(env: &BenchEnv, o: &BenchOptions) -> anyhow::Result<Report> {
    let cores = cores();
    let d = o.duration;
    let concurrency = o.concurrency_or(16);
    // Accounts registered and verified in this process (same database and
    // keys as the child), before any child runs.
    let accounts = {
        let app = App::build(env.settings.clone()).await?;
        Arc::new(register_accounts(&app, concurrency * ACCOUNTS_PER_CLIENT).await?)
    };
    let phc = argon::production_phc()?;
    let hasher = commands::passwords::PasswordHasher::new(cores)?;
    let mut h_sum = 0.0;
    let mut samples = [Sample::default(), Sample::default()];
    let mut cpus = [Cpu::default(), Cpu::default()];
    for _ in 0..ROUNDS {
        for ((mode, sample), cpu) in ["serve", "api"].iter().zip(samples.iter_mut()).zip(cpus.iter_mut()) {
            let server = Server::start(env, mode).await?;
            // The child's workers catch up on what is already stored first:
            // a `serve` round would otherwise also send the codes of the
            // `api` round before it (that role sends none), and be charged
            // for them.
            if *mode == "serve" {
                drain_deliveries(&env.db).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let child = server.child.id();
            let before_backends = backends(&env.db).await;
            let before = cpu_now(child, &before_backends);
            sample.merge(logins(&server.base, &accounts, concurrency, d / ROUNDS).await);
            // Backends that came meanwhile count whole (a backend that
            // went away is lost: the child's pool is warm and fixed); the
            // bench's own connections idle through the phase.
            let after_backends = backends(&env.db).await;
            let after = cpu_now(child, &after_backends);
            cpu.process += after.process.saturating_sub(before.process);
            cpu.argon2 += after.argon2.saturating_sub(before.argon2);
            cpu.postgres += after.postgres.saturating_sub(before.postgres);
            server.stop();
            h_sum += argon::verifies_per_second(Implementation::RustCrypto, &phc, &hasher, cores, d / ROUNDS)
                .await?;
        }
    }
    let h = h_sum / f64::from(2 * ROUNDS);
    let [serve, api] = samples;

    let mut r = Report::new("login-http");
    r.note(format!(
        "{cores} cores; {concurrency} HTTP clients (one connection each) over {} verified accounts; \
         {ROUNDS} rounds of {:.1} s per mode, alternating serve, H, api, H",
        accounts.len(),
        (d / ROUNDS).as_secs_f64()
    ));
    r.notes.extend(error_note("serve", &serve));
    r.notes.extend(error_note("api", &api));
    r.rows.push(Row::info(
        format!("H: argon2id verifies/s, {}, {cores} threads", Implementation::RustCrypto.label()),
        fmt_rate(h),
        "–".to_owned(),
        None,
    ));
    r.rows.push(Row::ratio(
        format!("password logins/s over HTTP, `streamforge serve`, {concurrency} clients"),
        fmt_rate(serve.rate()),
        format!("{} (H)", fmt_rate(h)),
        ratio(serve.rate(), h),
        Check::RatioAtLeast(0.8),
    ));
    r.rows.push(Row::info(
        format!("password logins/s over HTTP, `streamforge api`, {concurrency} clients"),
        fmt_rate(api.rate()),
        format!("{} (H)", fmt_rate(h)),
        Some(ratio(api.rate(), h)),
    ));
    r.rows.push(Row::info(
        "serve / api: what the in-process workers leave of the HTTP role's logins",
        format!("{:.2}", ratio(serve.rate(), api.rate())),
        "1.00".to_owned(),
        Some(ratio(serve.rate(), api.rate())),
    ));
    let [serve_cpu, api_cpu] = cpus;
    let (serve_overhead, api_overhead) = (serve_cpu.overhead_ms(serve.ok), api_cpu.overhead_ms(api.ok));
    r.rows.push(Row::info(
        "CPU per login besides argon2 (process minus its hashing threads, plus the database's backends), serve",
        format!("{serve_overhead:.2} ms"),
        format!("{api_overhead:.2} ms (api)"),
        Some(ratio(serve_overhead, api_overhead)),
    ));
    r.rows.push(Row::info(
        "argon2 CPU per login, serve / api (moves with the host, not with the code)",
        format!("{:.2} / {:.2} ms", serve_cpu.argon2_ms(serve.ok), api_cpu.argon2_ms(api.ok)),
        "–".to_owned(),
        None,
    ));
    for (name, sample) in [("serve", &serve), ("api", &api)] {
        r.rows.push(Row::info(
            format!("login latency p50 / p99, {name}"),
            format!("{} / {}", fmt_ms(sample.quantile(0.5)), fmt_ms(sample.quantile(0.99))),
            "–".to_owned(),
            None,
        ));
    }
    Ok(r)
}
