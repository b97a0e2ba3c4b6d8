//! `streamforge` — one binary, one role per subcommand:
//! `serve` (default: HTTP + relay + projector + notifier), `api`, `relay`,
//! `project`, `notify`, `migrate`; `replay <projector>|--all`, `topics`,
//! `admin grant|revoke`; and `bench <name>` / `seed --users N` /
//! `chaos load|verify|replay-check` (measurements and fault tests,
//! `docs/performance.md`).

use api::app::{shutdown_on_signal, App, Roles};
use api::config::Settings;
use clap::{Parser, Subcommand};

/// The process allocator: jemalloc (`tikv-jemallocator`), with transparent
/// huge pages asked for its huge arena only, where allocations of 8 MiB and
/// more go (`metadata_thp:always,huge_arena_pac_thp:true`, baked into
/// jemalloc's defaults by `.cargo/config.toml`'s
/// `JEMALLOC_SYS_WITH_MALLOC_CONF`; an operator can add options at run time
/// with `_RJEM_MALLOC_CONF` in the process environment, e.g.
/// `huge_arena_pac_thp:false`: not in `.env`, which is read after the
/// allocator has started). Argon2id reads its 19 MiB of blocks in an order
/// it computes (RFC 9106 §3.4), so with 4 KiB pages most of its reads miss
/// the TLB; on 2 MiB pages a verify took 6 % less CPU, and `serve` answered
/// ≈ 10 % more password logins than with glibc's malloc. Huge pages for
/// every mapping (`thp:always`) did the same for the logins but took 73
/// instead of 45 KiB per open SSE connection; on the huge arena only the
/// connections keep their 45 KiB, and the process ≈ 20 MiB more than with
/// glibc (`serve`: 69 against 48 MiB idle; jemalloc's metadata on huge
/// pages). docs/performance.md, "login-http / Seventh measurement".
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "streamforge", version, about = "Event-sourced identity and social audio backend")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// HTTP API plus relay, projector and notifier in one process (default).
    Serve,
    /// Only the HTTP API (with its revocation follower).
    Api,
    /// Only the relay: event store → Kafka (needs KAFKA_BROKERS).
    Relay,
    /// Only the projectors: feed → read models.
    Project,
    /// Only the notifier: feed → mail.
    Notify,
    /// Create the database if needed, apply migrations, exit.
    Migrate,
    /// Run a benchmark on a fresh `sf_bench_<uuid>` database and print its table.
    Bench {
        /// Which benchmark.
        name: tools::bench::BenchName,
        /// Length of each measured phase, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Concurrent clients (default: per benchmark).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Events for `relay` (default 100,000) and `replay` (default 1,000,000).
        #[arg(long)]
        events: Option<usize>,
        /// Seeded users for `queries` (default 100,000).
        #[arg(long)]
        users: Option<usize>,
        /// Partitions of each topic the benchmark creates (`relay`,
        /// `freshness`; default: KAFKA_TOPIC_PARTITIONS).
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// The halves of `scripts/chaos` (fault tests; docs/performance.md).
    Chaos {
        #[command(subcommand)]
        action: ChaosAction,
    },
    /// Rebuild read models into shadow tables and swap them in while the
    /// live ones keep serving and consuming (progress bar on stderr).
    Replay {
        /// The projector (names: `GET /api/admin/projections`).
        name: Option<String>,
        /// Every projector, one after the other.
        #[arg(long)]
        all: bool,
    },
    /// The topics (partitions, messages held, retention) and each consumer
    /// group's lag on them (needs KAFKA_BROKERS).
    Topics,
    /// Operator commands: grant or revoke a role by email (the first admin).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Seed N registered, verified, logged-in users into DATABASE_URL.
    Seed {
        /// How many users.
        #[arg(long)]
        users: usize,
    },
}

#[derive(Subcommand, Clone)]
enum AdminAction {
    /// Grant a role to the account of an email address; the event names
    /// the operator (`$USER`) as its actor.
    Grant {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
    /// Revoke a role from the account of an email address.
    Revoke {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand, Clone)]
enum ChaosAction {
    /// Send N identity commands over HTTP from concurrent clients; write a journal.
    Load {
        /// API base URL.
        #[arg(long, default_value = "http://127.0.0.1:18080")]
        base: String,
        /// Commands (HTTP calls) in all.
        #[arg(long, default_value_t = 100_000)]
        commands: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Journal file (JSON lines).
        #[arg(long)]
        journal: std::path::PathBuf,
        /// File rewritten with the number of commands sent so far.
        #[arg(long)]
        progress: Option<std::path::PathBuf>,
        /// Longest run, in seconds.
        #[arg(long, default_value_t = 1_200)]
        max_seconds: u64,
    },
    /// Wait for the relay and projectors to catch up; check the journal
    /// against the store, the topics and the read models.
    Verify {
        /// Journal written by `chaos load`.
        #[arg(long)]
        journal: std::path::PathBuf,
        /// Longest wait for the catch-up, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_seconds: u64,
    },
    /// With the projectors stopped: rebuild every read model and compare it
    /// with the live one.
    ReplayCheck,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Bench { .. } | Command::Seed { .. } | Command::Chaos { .. }))
        && std::env::var_os("RUST_LOG").is_none()
    {
        // Keep the printed table readable: warnings and errors only.
        std::env::set_var("RUST_LOG", "warn");
    }
    api::telemetry::init();
    let roles = match cli.command.unwrap_or(Command::Serve) {
        Command::Bench { name, seconds, concurrency, events, users, partitions } => {
            let mut options = tools::bench::BenchOptions::new(&cli.settings, seconds);
            options.concurrency = concurrency;
            options.events = events;
            options.users = users;
            options.partitions = partitions;
            let report = tools::bench::run(name, &cli.settings, &options).await?;
            println!("{report}");
            return Ok(());
        }
        Command::Seed { users } => return tools::bench::data::seed_command(&cli.settings, users).await,
        Command::Topics => {
            let brokers = cli
                .settings
                .kafka_brokers
                .clone()
                .ok_or_else(|| anyhow::anyhow!("KAFKA_BROKERS is not set"))?;
            print!("{}", api::app::topics_report(&brokers, &cli.settings.kafka_topic_prefix).await?);
            return Ok(());
        }
        Command::Admin { action } => {
            let (email, role, grant) = match action {
                AdminAction::Grant { email, role } => (email, role, true),
                AdminAction::Revoke { email, role } => (email, role, false),
            };
            let app = App::build(cli.settings).await?;
            let changed = app.operator_set_role(&email, &role, grant).await?;
            println!(
                "{} {role} {}: {}",
                if grant { "grant" } else { "revoke" },
                email,
                if changed { "done" } else { "already so" }
            );
            return Ok(());
        }
        Command::Chaos { action } => return chaos(action, &cli.settings).await,
        Command::Replay { name, all } => {
            let app = App::build(cli.settings).await?;
            return api::replay::replay_command(&app, name.as_deref(), all).await;
        }
        Command::Migrate => {
            let pool = projections::db::connect(&cli.settings.database_url).await?;
            pool.close().await;
            tracing::info!("database migrated");
            return Ok(());
        }
        Command::Serve => Roles::ALL,
        Command::Api => Roles { http: true, relay: false, project: false, notify: false },
        Command::Relay => Roles { http: false, relay: true, project: false, notify: false },
        Command::Project => Roles { http: false, relay: false, project: true, notify: false },
        Command::Notify => Roles { http: false, relay: false, project: false, notify: true },
    };
    let app = App::build(cli.settings).await?;
    app.run(roles, None, shutdown_on_signal()).await
}

async fn chaos(action: ChaosAction, settings: &Settings) -> anyhow::Result<()> {
    match action {
        ChaosAction::Load { base, commands, clients, journal, progress, max_seconds } => {
            let options = tools::chaos::LoadOptions {
                base,
                commands,
                clients,
                mail_dir: settings.mail_dir.clone(),
                journal,
                progress,
                max_duration: std::time::Duration::from_secs(max_seconds),
            };
            tools::chaos::load(&options).await
        }
        ChaosAction::Verify { journal, timeout_seconds } => {
            tools::chaos::verify(settings, &journal, std::time::Duration::from_secs(timeout_seconds)).await
        }
        ChaosAction::ReplayCheck => tools::chaos::replay_check(settings).await,
    }
}

#[cfg(all(test, target_os = "linux", not(target_env = "musl")))]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    /// The `VmFlags` of the mapping (`/proc/self/smaps`) that holds `at`.
    fn vm_flags_of(at: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_once(' ').and_then(|(range, _)| range.split_once('-'));
            if let Some((lo, hi)) = range {
                if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                    inside = lo <= at && at < hi;
                    continue;
                }
            }
            if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| inside) {
                return flags.split_whitespace().map(str::to_owned).collect();
            }
        }
        panic!("no mapping holds {at:#x}");
    }

    /// The binary's allocator asks for transparent huge pages for argon2's
    /// memory and for nothing small: an argon2-sized allocation lies in a
    /// mapping advised `MADV_HUGEPAGE` (`hg` among its `VmFlags`), a
    /// 64 KiB one (a connection's buffers) does not. The first fails with
    /// glibc's malloc, and with jemalloc built without `huge_arena_pac_thp`
    /// (or run with `_RJEM_MALLOC_CONF=huge_arena_pac_thp:false`); the
    /// second with `thp:always`, which costs every open SSE connection
    /// 73 instead of 45 KiB. Only where the system leaves huge pages to
    /// `madvise` (with `always` nothing needs advising, with `never`
    /// nothing can be).
    #[test]
    fn argon2_sized_allocations_alone_are_advised_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if !mode.contains("[madvise]") {
            eprintln!("skipped: transparent huge pages are {mode:?}, not left to madvise");
            return;
        }
        let blocks = vec![1u8; 19 * 1024 * 1024];
        let flags = vm_flags_of(blocks.as_ptr() as usize);
        assert!(flags.iter().any(|f| f == "hg"), "19 MiB: VmFlags {flags:?}");
        let small = vec![1u8; 64 * 1024];
        let flags = vm_flags_of(small.as_ptr() as usize);
        assert!(!flags.iter().any(|f| f == "hg"), "64 KiB: VmFlags {flags:?}");
        assert_eq!(
            blocks.iter().chain(&small).map(|b| usize::from(*b)).sum::<usize>(),
            blocks.len() + small.len()
        );
    }
}
