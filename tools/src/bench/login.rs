//! `bench login`: password logins per second (`IdentityService::start_login`
//! with the right password, closed loop) against H, the argon2id
//! verifications per second the same process reaches on every core with
//! the production parameters; latency at 0.5 × H in open loop; RSS idle and
//! peak; and H beside the other argon2 implementations built in.

use std::sync::Arc;

use commands::identity::RequestMeta;
use domain::values::{DisplayName, EmailAddress, OtpCode, Password};
use futures::{StreamExt as _, TryStreamExt as _};
use uuid::Uuid;

use super::argon::{self, Implementation};
use super::{
    closed_loop, cores, error_note, fmt_ms, fmt_rate, open_loop, ratio, reset_peak_rss, rss_kib, BenchEnv,
    BenchOptions, Check, Report, Row, Sample,
};
use api::app::App;

const PASSWORD: &str = "bench-password-correct-horse";
/// Accounts per closed-loop client (logins rotate over them, as real users do).
pub(crate) const ACCOUNTS_PER_CLIENT: usize = 4;
/// Rounds of logins alternating with rounds of H.
const ROUNDS: u32 = 4;

pub(crate) struct Account {
    pub(crate) email: EmailAddress,
    pub(crate) password: Password,
}

/// Runs the benchmark on `env`.
///
/// # Errors
/// Setup failures.
pub async fn run(env: &BenchEnv, o: &BenchOptions) -> anyhow::Result<Report> {
    let cores = cores();
    let d = o.duration;
    let app = App::build(env.settings.clone()).await?;
    let (idle_rss, _) = rss_kib();
    let concurrency = o.concurrency_or(2 * cores);
    let accounts = Arc::new(register_accounts(&app, concurrency * ACCOUNTS_PER_CLIENT).await?);

    let phc = argon::production_phc()?;
    let hasher = &app.identity.hasher;
    // Logins and H alternate in short rounds so that outside load hits both alike.
    let mut h_sum = 0.0;
    let mut logins = Sample::default();
    let mut peak_rss = 0;
    for round in 0..ROUNDS {
        if round == 0 {
            reset_peak_rss();
        }
        logins.merge(login_closed_loop(&app, &accounts, concurrency, d / ROUNDS).await);
        if round == 0 {
            // Before any H thread ran: the app's own memory only.
            peak_rss = rss_kib().1;
        }
        h_sum +=
            argon::verifies_per_second(Implementation::RustCrypto, &phc, hasher, cores, d / ROUNDS).await?;
    }
    // Logins and H together (H shares the application's block buffers).
    let peak_rss_all = rss_kib().1;
    let h = h_sum / f64::from(ROUNDS);

    let target_rate = 0.5 * h;
    let open = {
        let identity = app.identity.clone();
        let accounts = accounts.clone();
        open_loop(target_rate, d, move |i| {
            let identity = identity.clone();
            let accounts = accounts.clone();
            async move {
                let a = &accounts[usize::try_from(i).unwrap_or(0) % accounts.len()];
                identity.start_login(&a.email, &a.password, None, &RequestMeta::default()).await?;
                Ok(())
            }
        })
        .await
    };

    // H beside the other implementations, also alternating.
    let implementations = Implementation::all();
    let mut sums = vec![(0.0, 0.0); implementations.len()];
    for _ in 0..2 {
        for (imp, sum) in implementations.iter().zip(sums.iter_mut()) {
            let rates = argon::measure_rates(*imp, &phc, hasher, cores, d / 2).await?;
            sum.0 += rates.wall / 2.0;
            sum.1 += rates.per_cpu_second / 2.0;
        }
    }
    let (h_beside, h_cpu) = sums[0];
    let alternatives: Vec<(Implementation, f64, f64)> = implementations
        .iter()
        .copied()
        .zip(sums.iter().copied())
        .skip(1)
        .map(|(i, (w, c))| (i, w, c))
        .collect();

    let mut r = Report::new("login");
    r.note(format!(
        "{cores} cores; argon2id m={} KiB t={} p={}; hashing pool = {cores} permits",
        commands::passwords::ARGON2_M_COST_KIB,
        commands::passwords::ARGON2_T_COST,
        commands::passwords::ARGON2_P_COST
    ));
    r.note(format!(
        "closed loop: {concurrency} clients over {} verified accounts, {ROUNDS} × {:.1} s alternating with {ROUNDS} × {:.1} s of H",
        accounts.len(),
        (d / ROUNDS).as_secs_f64(),
        (d / ROUNDS).as_secs_f64()
    ));
    r.note(format!(
        "argon2 implementations: 2 rounds of {:.1} s each, alternating (H measured alongside: {})",
        (d / 2).as_secs_f64(),
        fmt_rate(h_beside)
    ));
    r.note(format!("open loop: {:.1} logins/s (0.5 × H) for {:.1} s", target_rate, d.as_secs_f64()));
    r.notes.extend(error_note("closed loop", &logins));
    r.notes.extend(error_note("open loop", &open));

    let c_ref = alternatives
        .iter()
        .find(|(imp, ..)| imp.label().starts_with("C reference"))
        .map(|(_, w, c)| (*w, *c));
    match c_ref {
        Some((c, c_cpu)) => {
            r.rows.push(Row::ratio(
                format!("H: argon2id verifies per CPU-second, {}", Implementation::RustCrypto.label()),
                fmt_rate(h_cpu),
                format!("{} (C reference, same parameters)", fmt_rate(c_cpu)),
                ratio(h_cpu, c_cpu),
                Check::RatioAtLeast(1.0),
            ));
            r.rows.push(Row::info(
                format!("H: argon2id verifies/s, wall clock, {cores} threads"),
                fmt_rate(h_beside),
                format!("{} (C reference, same rounds)", fmt_rate(c)),
                Some(ratio(h_beside, c)),
            ));
        }
        None => r.rows.push(Row::info(
            format!("H: argon2id verifies/s, {}, {cores} threads", Implementation::RustCrypto.label()),
            fmt_rate(h),
            "C reference not built in (`--features argon2-compare`)".to_owned(),
            None,
        )),
    }
    r.rows.push(Row::ratio(
        format!("password logins/s, closed loop, {concurrency} clients"),
        fmt_rate(logins.rate()),
        format!("{} (H)", fmt_rate(h)),
        ratio(logins.rate(), h),
        Check::RatioAtLeast(0.8),
    ));
    // One verification's time on an idle core: what a lone login cannot go below.
    let one_verify = std::time::Duration::from_secs_f64(if h > 0.0 { cores as f64 / h } else { 0.0 });
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let lat = open.quantile(p);
        r.rows.push(Row::info(
            format!("login latency {name} at 0.5 × H ({})", fmt_rate(open.rate())),
            fmt_ms(lat),
            format!("{} (one argon2id verify)", fmt_ms(one_verify)),
            Some(ratio(lat.as_secs_f64(), one_verify.as_secs_f64())),
        ));
    }
    for (imp, _, cpu) in &alternatives {
        r.rows.push(Row::info(
            format!("argon2id verifies per CPU-second, {}", imp.label()),
            fmt_rate(*cpu),
            format!("{} (RustCrypto, production path)", fmt_rate(h_cpu)),
            Some(ratio(*cpu, h_cpu)),
        ));
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    r.rows.push(Row::info(
        "RSS idle (app built, before load)",
        format!("{:.1} MiB", mib(idle_rss)),
        "–".into(),
        None,
    ));
    r.rows.push(Row::info(
        "RSS peak during the first closed-loop round (before any H thread)",
        format!("{:.1} MiB", mib(peak_rss)),
        format!("{:.1} MiB (idle)", mib(idle_rss)),
        Some(ratio(peak_rss as f64, idle_rss as f64)),
    ));
    r.rows.push(Row::info(
        "RSS peak over all closed-loop rounds (logins and H)",
        format!("{:.1} MiB", mib(peak_rss_all)),
        format!("{:.1} MiB (idle)", mib(idle_rss)),
        Some(ratio(peak_rss_all as f64, idle_rss as f64)),
    ));
    Ok(r)
}

async fn login_closed_loop(
    app: &App,
    accounts: &Arc<Vec<Account>>,
    concurrency: usize,
    d: std::time::Duration,
) -> Sample {
    let identity = app.identity.clone();
    let accounts = accounts.clone();
    closed_loop(concurrency, d, move |worker, i| {
        let identity = identity.clone();
        let accounts = accounts.clone();
        async move {
            let k = worker * ACCOUNTS_PER_CLIENT + usize::try_from(i).unwrap_or(0) % ACCOUNTS_PER_CLIENT;
            let a = &accounts[k % accounts.len()];
            identity.start_login(&a.email, &a.password, None, &RequestMeta::default()).await?;
            Ok(())
        }
    })
    .await
}

/// Registers `n` accounts and verifies their emails with the mailed codes
/// (read from the delivery records; no notifier runs).
pub(crate) async fn register_accounts(app: &App, n: usize) -> anyhow::Result<Vec<Account>> {
    let tag = Uuid::new_v4().simple().to_string();
    futures::stream::iter(0..n)
        .map(|i| {
            let tag = &tag;
            async move {
                let email = EmailAddress::parse(&format!("login-{i}-{}@bench.streamforge.test", &tag[..8]))?;
                let password = Password::parse(PASSWORD)?;
                let meta = RequestMeta::default();
                let name = DisplayName::parse(&format!("Bench {i}"))?;
                let user_id = app.identity.register(&email, &password, &name, &Default::default(), &meta).await?;
                let payload: serde_json::Value = sqlx::query_scalar(
                    "SELECT payload::jsonb FROM events WHERE aggregate_type = 'user' AND aggregate_id = $1 AND sequence = 1",
                )
                .bind(user_id.to_string())
                .fetch_one(&app.pool)
                .await?;
                let challenge = payload["UserRegistered"]["email_challenge_id"]
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or_else(|| anyhow::anyhow!("registration without email challenge"))?;
                let delivery = app
                    .identity
                    .deliveries
                    .get(challenge)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no delivery record for the verification code"))?;
                let code = OtpCode::parse(delivery.code.as_deref().unwrap_or_default())?;
                app.identity.verify_email(&email, &code, &meta).await?;
                anyhow::Ok(Account { email, password })
            }
        })
        .buffer_unordered(cores().max(2))
        .try_collect()
        .await
}
