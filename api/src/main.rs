//! `streamforge` — one binary, one role per subcommand:
//! `serve` (default: HTTP + relay + projector + notifier), `relay`,
//! `project`, `notify`, `migrate`; and `bench <name>` / `seed --users N`
//! (measurements, `docs/performance.md`).

use api::app::{shutdown_on_signal, App, Roles};
use api::config::Settings;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "streamforge", version, about = "Event-sourced identity and social audio backend")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand, Clone, Copy)]
enum Command {
    /// HTTP API plus relay, projector and notifier in one process (default).
    Serve,
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
        name: api::bench::BenchName,
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
    },
    /// Seed N registered, verified, logged-in users into DATABASE_URL.
    Seed {
        /// How many users.
        #[arg(long)]
        users: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Bench { .. } | Command::Seed { .. }))
        && std::env::var_os("RUST_LOG").is_none()
    {
        // Keep the printed table readable: warnings and errors only.
        std::env::set_var("RUST_LOG", "warn");
    }
    api::telemetry::init();
    let roles = match cli.command.unwrap_or(Command::Serve) {
        Command::Bench { name, seconds, concurrency, events, users } => {
            let mut options = api::bench::BenchOptions::new(&cli.settings, seconds);
            options.concurrency = concurrency;
            options.events = events;
            options.users = users;
            let report = api::bench::run(name, &cli.settings, &options).await?;
            println!("{report}");
            return Ok(());
        }
        Command::Seed { users } => return api::bench::data::seed_command(&cli.settings, users).await,
        Command::Migrate => {
            let pool = projections::db::connect(&cli.settings.database_url).await?;
            pool.close().await;
            tracing::info!("database migrated");
            return Ok(());
        }
        Command::Serve => Roles::ALL,
        Command::Relay => Roles { http: false, relay: true, project: false, notify: false },
        Command::Project => Roles { http: false, relay: false, project: true, notify: false },
        Command::Notify => Roles { http: false, relay: false, project: false, notify: true },
    };
    let app = App::build(cli.settings).await?;
    app.run(roles, None, shutdown_on_signal()).await
}
