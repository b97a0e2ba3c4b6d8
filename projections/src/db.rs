//! Connecting to the streamforge database: create it if it is absent, then
//! apply the workspace migrations (`migrations/` at the workspace root).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection as _, PgConnection, PgPool};

/// The workspace migrations, embedded at compile time. `build.rs` makes a new
/// migration file trigger a rebuild.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Pool size used by [`connect`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// How long [`connect`] waits for a free pooled connection before a query
/// fails with `PoolTimedOut`.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled connection idle at least this long is pinged (one round trip)
/// before it is handed out; one used more recently is handed out as is.
/// sqlx's default pings on every acquire, which doubled the round trips of
/// every one-statement read and append (a `Sync` and its `ReadyForQuery`
/// before each statement: about a third of the statements' CPU on both
/// ends in a login; docs/performance.md, "login-http"). HikariCP makes the
/// same trade (`aliveBypassWindowMs`, 500 ms): a connection that worked
/// half a second ago is taken to work now, and a server-side death within
/// that window fails one statement, after which sqlx drops the connection.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// Maintenance database used to create other databases.
const MAINTENANCE_DB: &str = "postgres";

/// Creates the database named in `database_url` if it does not exist, opens a
/// pool of [`DEFAULT_MAX_CONNECTIONS`] and applies [`MIGRATOR`].
///
/// # Errors
/// Fails when the URL does not parse, the server is unreachable, the
/// database cannot be created, or a migration fails.
pub async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    connect_with(database_url, DEFAULT_MAX_CONNECTIONS).await
}

/// Like [`connect`] with a pool of at most `max_connections` connections
/// (note that each `PgFeed` and relay holds one more for `LISTEN`).
///
/// # Errors
/// As [`connect`].
pub async fn connect_with(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    connect_pool(database_url, 0, max_connections).await
}

/// Like [`connect_with`], keeping at least `min_connections` connections
/// open (capped at `max_connections`): they are opened before this returns
/// and reopened in the background when closed, so a burst after start or
/// after a quiet spell does not pay for new backends (a fork, the startup
/// handshake and a prepare per statement on each new connection) on the
/// request path.
///
/// # Errors
/// As [`connect`].
pub async fn connect_pool(
    database_url: &str,
    min_connections: u32,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    ensure_database(database_url).await?;
    let options = connect_options(database_url)?;
    let pool = PgPoolOptions::new()
        .min_connections(min_connections.min(max_connections))
        .max_connections(max_connections)
        .acquire_timeout(DEFAULT_ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .context("cannot connect to the database")?;
    migrate(&pool).await?;
    Ok(pool)
}

/// The connection options of `database_url`, with one default of ours:
/// a server on this host (a loopback address, `localhost` or a Unix
/// socket) is reached without TLS unless the URL (`sslmode=…`) or
/// `PGSSLMODE` asks for it. libpq's and sqlx's default `prefer` would
/// encrypt loopback traffic, which never leaves the host and which only
/// root could read anyway, at a cost of about 1 ms of CPU per login on
/// both ends (docs/performance.md, "login-http"); any other host keeps
/// the `prefer` default, and an explicit mode always wins (a local server
/// whose `pg_hba.conf` takes `hostssl` lines only needs `sslmode=require`
/// in the URL).
///
/// # Errors
/// The URL does not parse.
pub fn connect_options(database_url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(database_url).context("invalid database URL")?;
    // sqlx reads both spellings of the parameter.
    let url = database_url.to_ascii_lowercase();
    let explicit =
        url.contains("sslmode=") || url.contains("ssl-mode=") || std::env::var_os("PGSSLMODE").is_some();
    Ok(if !explicit && is_local(&options) { options.ssl_mode(PgSslMode::Disable) } else { options })
}

/// Whether `options` reach a server on this host.
fn is_local(options: &PgConnectOptions) -> bool {
    let host = options.get_host();
    options.get_socket().is_some()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Applies every pending migration of [`MIGRATOR`] (concurrent callers are
/// serialised by sqlx's advisory lock).
///
/// # Errors
/// Fails when a migration fails or an applied migration was modified.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("cannot apply database migrations")
}

/// Creates the database named in `database_url` unless it exists, connecting
/// to the `postgres` maintenance database of the same server. A URL without a
/// database name is left alone (Postgres then uses the user's name).
///
/// # Errors
/// Fails when the URL does not parse, the server is unreachable, or
/// `CREATE DATABASE` fails for another reason than a concurrent creation.
pub async fn ensure_database(database_url: &str) -> anyhow::Result<()> {
    let options = connect_options(database_url)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut conn = PgConnection::connect_with(&options.clone().database(MAINTENANCE_DB))
        .await
        .with_context(|| format!("cannot connect to the `{MAINTENANCE_DB}` database"))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .context("cannot look up the database")?;
    if !exists {
        let created =
            sqlx::query(&format!("CREATE DATABASE {}", quote_ident(&name))).execute(&mut conn).await;
        match created {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // 42P04 duplicate_database / 23505 on pg_database: created concurrently.
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create database `{name}`"));
            }
        }
    }
    conn.close().await.ok();
    Ok(())
}

/// Quotes an SQL identifier (`"` doubled).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Throw-away databases for integration tests of every crate.
pub mod testing {
    use std::str::FromStr;

    use anyhow::Context as _;
    use sqlx::postgres::PgConnectOptions;
    use sqlx::{Connection as _, PgConnection, PgPool};

    /// Server used when neither `TEST_DATABASE_URL` nor `DATABASE_URL` is set.
    pub const DEFAULT_BASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    /// Prefix of every database [`create_test_database`] makes.
    pub const TEST_DATABASE_PREFIX: &str = "sf_test_";

    /// The server tests use: `TEST_DATABASE_URL`, else `DATABASE_URL`, else
    /// [`DEFAULT_BASE_URL`]. Only host, port, user and password matter; the
    /// database name is replaced.
    pub fn base_url() -> String {
        std::env::var("TEST_DATABASE_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned())
    }

    /// Creates a fresh database `sf_test_<uuid simple>` on the server of
    /// `base_url`, migrates it, and returns a pool on it and its URL.
    ///
    /// # Errors
    /// Fails when the server is unreachable or a migration fails.
    pub async fn create_test_database(base_url: &str) -> anyhow::Result<(PgPool, String)> {
        let name = format!("{TEST_DATABASE_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let url = with_database(base_url, &name)?;
        let pool = super::connect_with(&url, 10).await?;
        Ok((pool, url))
    }

    /// Drops a database made by [`create_test_database`] (given its URL),
    /// terminating its remaining sessions. Close its pools first.
    ///
    /// # Errors
    /// Fails when the URL does not name a test database or the drop fails.
    pub async fn drop_test_database(url: &str) -> anyhow::Result<()> {
        let options = PgConnectOptions::from_str(url).context("invalid database URL")?;
        let name = options
            .get_database()
            .filter(|n| n.starts_with(TEST_DATABASE_PREFIX))
            .context("not a test database URL")?
            .to_owned();
        let mut conn = PgConnection::connect_with(&options.database(super::MAINTENANCE_DB)).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", super::quote_ident(&name)))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot drop database `{name}`"))?;
        conn.close().await.ok();
        Ok(())
    }

    /// `base_url` with its database replaced by `name`.
    fn with_database(base_url: &str, name: &str) -> anyhow::Result<String> {
        let (without_query, query) = match base_url.split_once('?') {
            Some((u, q)) => (u, Some(q)),
            None => (base_url, None),
        };
        let scheme_end = without_query.find("://").context("database URL without scheme")? + 3;
        let authority_end =
            without_query[scheme_end..].find('/').map_or(without_query.len(), |i| scheme_end + i);
        let mut url = format!("{}/{name}", &without_query[..authority_end]);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        Ok(url)
    }

    #[cfg(test)]
    mod tests {
        use super::with_database;

        #[test]
        fn replaces_the_database_name() {
            assert_eq!(
                with_database("postgres://u:p@h:5/db?sslmode=disable", "x").unwrap(),
                "postgres://u:p@h:5/x?sslmode=disable"
            );
            assert_eq!(with_database("postgres://h", "x").unwrap(), "postgres://h/x");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_server_on_this_host_is_reached_without_tls_unless_asked() {
        // (Run where PGSSLMODE is unset, as the test command does.)
        if std::env::var_os("PGSSLMODE").is_some() {
            return;
        }
        for url in [
            "postgres://postgres@127.0.0.1:5432/db",
            "postgres://postgres@localhost/db",
            "postgres://postgres@[::1]:5432/db",
            "postgres://postgres@%2Fvar%2Frun%2Fpostgresql/db",
        ] {
            assert!(matches!(connect_options(url).unwrap().get_ssl_mode(), PgSslMode::Disable), "{url}");
        }
        for (url, mode) in [
            ("postgres://postgres@db.internal:5432/db", PgSslMode::Prefer),
            ("postgres://postgres@10.0.0.5/db", PgSslMode::Prefer),
            ("postgres://postgres@127.0.0.1/db?sslmode=require", PgSslMode::Require),
            ("postgres://postgres@localhost/db?sslmode=prefer", PgSslMode::Prefer),
            ("postgres://postgres@localhost/db?ssl-mode=require", PgSslMode::Require),
        ] {
            let got = connect_options(url).unwrap().get_ssl_mode();
            assert_eq!(format!("{got:?}"), format!("{mode:?}"), "{url}");
        }
    }
}
