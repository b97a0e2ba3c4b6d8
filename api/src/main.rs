//! `streamforge` — one binary, one role per subcommand:
//! `serve` (default: HTTP + relay + projector + notifier), `relay`,
//! `project`, `notify`, `migrate`.

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    api::telemetry::init();
    let roles = match cli.command.unwrap_or(Command::Serve) {
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
