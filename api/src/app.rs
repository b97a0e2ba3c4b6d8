//! Wiring: builds the services from [`Settings`] and runs the roles — HTTP,
//! relay, projector, notifier — alone or together in one process.
//!
//! Feeds: with `KAFKA_BROKERS` the relay publishes the store to Kafka and
//! the projector and notifier consume it in consumer groups; without, they
//! tail Postgres directly (embedded default, ARCHITECTURE decided 4) and no
//! relay runs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use commands::deliveries::DeliveryStore;
use commands::passwords::PasswordHasher;
use commands::tokens::TokenIssuer;
use commands::{IdentityConfig, IdentityService, Keyring};
use domain::envelope::AGGREGATE_TYPES;
use projections::challenges::ChallengesProjector;
use projections::feed::EventFeed;
use projections::kafka_feed::{KafkaFeed, KafkaFeedConfig};
use projections::pg_feed::{PgFeed, PgFeedConfig};
use projections::profiles::ProfilesProjector;
use projections::runtime::{ProjectionRunner, Projector};
use projections::sessions::SessionsProjector;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;
use workers::notify::{Mailer, Notifier, RetryPolicy};
use workers::relay::Relay;
use workers::sms::SmsSender;

use crate::config::Settings;
use crate::state::AppState;

/// The projection runner's consumer name (group `<prefix>-projections`).
const PROJECTIONS_CONSUMER: &str = "projections";
/// The home feed's fan-out consumer (its own group: see `run_projector`).
const HOME_FEED_CONSUMER: &str = "home-feed";
/// The fan-out consumer's `fetch.wait.max.ms`: its target is 1 s at p99
/// (issue 16), and a 5 ms wait would be 200 fetches a second of every
/// partition it reads — load on the broker that the latency-critical
/// consumers (projections at 50 ms p99) share.
const HOME_FEED_FETCH_WAIT_MS: u32 = 50;

/// Shortest time between two reads of a node's own Postgres feeds (the
/// revocation and live-update followers): they must learn of a change
/// within seconds (ARCHITECTURE decided 14), and a read per 50 ms instead
/// of per 10 ms spares Postgres four reads in five under load.
const NODE_FEED_MIN_READ_INTERVAL: Duration = Duration::from_millis(50);

/// Which roles a process runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub http: bool,
    pub relay: bool,
    pub project: bool,
    pub notify: bool,
}

impl Roles {
    /// Everything (`streamforge serve`).
    pub const ALL: Self = Self { http: true, relay: true, project: true, notify: true };
}

/// The built services.
#[derive(Clone)]
pub struct App {
    pub settings: Settings,
    pub pool: PgPool,
    pub identity: Arc<IdentityService>,
    pub tokens: Arc<TokenIssuer>,
    pub passkeys: Arc<commands::passkeys::PasskeyService>,
    /// Revoked sessions this node knows of (see [`crate::revocations`]).
    pub revoked: Arc<crate::revocations::RevokedSessions>,
    /// Whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).
    pub trusted_proxies: Arc<crate::client_ip::TrustedProxies>,
    /// Follows, blocks, mutes.
    pub social: Arc<commands::social::SocialService>,
    /// Tracks.
    pub catalog: Arc<commands::catalog::CatalogService>,
    /// Likes, reposts, comments.
    pub engagement: Arc<commands::social::engagement::EngagementService>,
    /// Live updates for this node's SSE connections (see [`crate::live`]).
    pub live: Arc<crate::live::LiveHub>,
    /// Roles and permissions (write side).
    pub access: Arc<commands::access::AccessService>,
    /// Reports and moderation actions (write side).
    pub moderation: Arc<commands::moderation::ModerationService>,
    keys: Keyring,
    /// The process's one `LISTEN` connection, shared by its Postgres
    /// feeds (started by the first of them).
    events_listener: Arc<std::sync::OnceLock<projections::tail::SharedListener>>,
}

impl App {
    /// Connects (creating and migrating the database if needed) and builds
    /// every service.
    ///
    /// # Errors
    /// Database unreachable, bad keys.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = projections::db::connect_pool(
            &settings.database_url,
            settings.database_min_connections.unwrap_or(settings.database_max_connections),
            settings.database_max_connections,
        )
        .await
        .context("cannot connect to the database")?;
        let keys = Keyring::derive(&settings.master_key()?);
        let tokens = Arc::new(TokenIssuer::with_extra_keys(
            &settings.jwt_key()?,
            &settings.jwt_extra_keys()?,
            &settings.jwt_issuer,
            &settings.jwt_audience,
        )?);
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        let hasher = PasswordHasher::new(settings.password_hash_concurrency.unwrap_or(cores))?;
        let config = IdentityConfig {
            email_otp_ttl_secs: settings.email_otp_ttl_secs,
            sms_otp_ttl_secs: settings.sms_otp_ttl_secs,
            refresh_idle_ttl_secs: settings.refresh_idle_ttl_secs,
            refresh_absolute_ttl_secs: settings.refresh_absolute_ttl_secs,
            otp_codes_per_hour: settings.otp_codes_per_hour,
            otp_resend_interval_secs: i64::from(settings.otp_resend_interval_secs),
            sms: settings.sms_policy()?,
        };
        let identity =
            Arc::new(IdentityService::new(pool.clone(), keys.clone(), hasher, tokens.clone(), config));
        let passkeys = Arc::new(commands::passkeys::PasskeyService::new(
            pool.clone(),
            identity.clone(),
            &settings.webauthn_config(),
        )?);
        let revoked = Arc::new(crate::revocations::RevokedSessions::default());
        // Installed before anything is counted (one recorder per process).
        let _ = crate::metrics::handle();
        let trusted_proxies = Arc::new(crate::client_ip::TrustedProxies::parse(&settings.trusted_proxies)?);
        let social = Arc::new(commands::social::SocialService::new(pool.clone()));
        let access = Arc::new(commands::access::AccessService::new(pool.clone()));
        let moderation = Arc::new(commands::moderation::ModerationService::new(
            pool.clone(),
            access.clone(),
            identity.clone(),
        ));
        let catalog = Arc::new(commands::catalog::CatalogService::new(
            pool.clone(),
            identity.vault.clone(),
            keys.lookup.clone(),
        ));
        let engagement = Arc::new(commands::social::engagement::EngagementService::new(
            pool.clone(),
            social.clone(),
            catalog.clone(),
        ));
        Ok(Self {
            settings,
            pool,
            identity,
            tokens,
            keys,
            passkeys,
            revoked,
            live: Arc::new(crate::live::LiveHub::new()),
            access,
            moderation,
            trusted_proxies,
            social,
            catalog,
            engagement,
            events_listener: Arc::default(),
        })
    }

    /// The HTTP router, with the per-IP limit when configured, the client
    /// IP decided first (`TRUSTED_PROXIES`) and the request time limit
    /// outermost.
    pub fn router(&self) -> Router {
        let router = self.router_unlimited();
        let router = match crate::ratelimit::IpRateLimit::new(
            self.settings.auth_rate_per_minute,
            self.settings.auth_rate_burst,
        ) {
            Some(limit) => {
                router.layer(axum::middleware::from_fn_with_state(limit, crate::ratelimit::limit_auth))
            }
            None => router,
        };
        let shed = (self.identity.hasher.clone(), self.settings.password_hash_queue.max(1));
        let router = router.layer(axum::middleware::from_fn_with_state(shed, crate::http::shed_hashing));
        let router = router.layer(axum::middleware::from_fn_with_state(
            self.trusted_proxies.clone(),
            crate::client_ip::resolve,
        ));
        let limit = std::time::Duration::from_secs(self.settings.request_timeout_secs.max(1));
        router.layer(axum::middleware::from_fn_with_state(limit, crate::http::time_limit))
    }

    fn router_unlimited(&self) -> Router {
        crate::http::router(AppState {
            identity: self.identity.clone(),
            read: self.pool.clone(),
            tokens: self.tokens.clone(),
            passkeys: self.passkeys.clone(),
            revoked: self.revoked.clone(),
            live: self.live.clone(),
            access: self.access.clone(),
            moderation: self.moderation.clone(),
            social: self.social.clone(),
            catalog: self.catalog.clone(),
            engagement: self.engagement.clone(),
            consistency_wait: Duration::from_millis(self.settings.consistency_wait_ms),
            replay: self.replay_runner(),
        })
    }

    /// A runner over every projector, the home feed's included, for shadow
    /// rebuilds (`streamforge replay`, the rebuild endpoint); it never runs
    /// a feed.
    pub fn replay_runner(&self) -> ProjectionRunner {
        let mut all = Self::projectors();
        all.push(Arc::new(self.home_feed_projector()));
        ProjectionRunner::new(self.pool.clone(), all)
    }

    /// Every projector of the read models, in the order they run.
    pub fn projectors() -> Vec<Arc<dyn Projector>> {
        vec![
            Arc::new(ProfilesProjector),
            Arc::new(SessionsProjector),
            Arc::new(ChallengesProjector),
            Arc::new(projections::pins::PinsProjector),
            Arc::new(projections::passkeys::PasskeysProjector),
            Arc::new(projections::social::graph::GraphProjector),
            Arc::new(projections::catalog::tracks::TracksProjector),
            Arc::new(projections::social::engagement::EngagementProjector),
            Arc::new(projections::social::notifications::NotificationsProjector),
            Arc::new(projections::access::AccessProjector),
            Arc::new(projections::moderation::ModerationProjector),
        ]
    }

    /// A feed for consumer `name` (group `<prefix>-<name>` on Kafka, reading
    /// the topics of `aggregate_types`; the Postgres feed reads every event).
    async fn feed(&self, name: &str, aggregate_types: &[&str]) -> anyhow::Result<Box<dyn EventFeed>> {
        self.feed_paced(name, aggregate_types, self.settings.pg_feed_min_read_ms).await
    }

    /// [`App::feed`] whose Postgres feed reads at most every `min_read_ms`
    /// milliseconds while events keep coming.
    async fn feed_paced(
        &self,
        name: &str,
        aggregate_types: &[&str],
        min_read_ms: u64,
    ) -> anyhow::Result<Box<dyn EventFeed>> {
        let interval = Duration::from_millis(min_read_ms);
        let postgres = PgFeedConfig::new(name).min_read_interval(interval);
        self.feed_with(name, aggregate_types, self.settings.kafka_fetch_wait_max_ms, postgres).await
    }

    /// [`App::feed`] with its own Kafka `fetch.wait.max.ms`, and its own
    /// Postgres feed settings for the Postgres feed.
    async fn feed_with(
        &self,
        name: &str,
        aggregate_types: &[&str],
        fetch_wait_max_ms: u32,
        postgres: PgFeedConfig,
    ) -> anyhow::Result<Box<dyn EventFeed>> {
        match &self.settings.kafka_brokers {
            Some(brokers) => {
                let mut cfg = KafkaFeedConfig::for_aggregate_types(
                    brokers.clone(),
                    format!("{}-{name}", self.settings.kafka_group_prefix),
                    &self.settings.kafka_topic_prefix,
                    aggregate_types,
                );
                cfg.fetch_wait_max_ms = fetch_wait_max_ms;
                Ok(Box::new(KafkaFeed::new(&cfg)?))
            }
            None => {
                let postgres = postgres.shared_listener(&self.events_listener());
                Ok(Box::new(PgFeed::new(self.pool.clone(), postgres).await?))
            }
        }
    }

    /// The process's shared `LISTEN` connection for its Postgres feeds
    /// (one backend woken per commit instead of one per feed), started on
    /// first use.
    fn events_listener(&self) -> projections::tail::SharedListener {
        self.events_listener.get_or_init(|| projections::tail::SharedListener::new(&self.pool)).clone()
    }

    /// Creates the topics (Kafka mode only; tansu and Kafka do not auto-create here).
    ///
    /// # Errors
    /// Broker unreachable.
    pub async fn ensure_topics(&self) -> anyhow::Result<()> {
        if let Some(brokers) = &self.settings.kafka_brokers {
            workers::kafka::ensure_topics(
                brokers,
                &self.settings.kafka_topic_prefix,
                AGGREGATE_TYPES,
                self.settings.kafka_topic_partitions,
                1,
            )
            .await?;
        }
        Ok(())
    }

    /// Runs the projector role until shutdown.
    ///
    /// # Errors
    /// When the feed cannot be created.
    pub async fn run_projector(&self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let projectors = Self::projectors();
        // Only the topics some projector reads: every partition in a fetch
        // costs the broker a lookup, 1 / fetch.wait.max.ms times a second.
        let types: Vec<&str> =
            AGGREGATE_TYPES.iter().copied().filter(|t| projectors.iter().any(|p| p.handles(t))).collect();
        let mut feed = self.feed(PROJECTIONS_CONSUMER, &types).await?;
        // The home feed's fan-out runs beside, on its own consumer: a post
        // to 10,000 followers must not hold back the other read models.
        let home = self.home_feed_projector();
        let home_types: Vec<&str> = AGGREGATE_TYPES.iter().copied().filter(|t| home.handles(t)).collect();
        let wait = self.settings.kafka_fetch_wait_max_ms.max(HOME_FEED_FETCH_WAIT_MS);
        // On Postgres: its own types only, read as far apart as the Kafka
        // consumer's fetch wait (the fan-out is not on the 50 ms path).
        let postgres = PgFeedConfig::new(HOME_FEED_CONSUMER)
            .aggregate_types(home_types.iter().copied())
            .min_read_interval(Duration::from_millis(u64::from(wait)));
        let mut home_feed = self.feed_with(HOME_FEED_CONSUMER, &home_types, wait, postgres).await?;
        let home_runner = ProjectionRunner::new(self.pool.clone(), vec![Arc::new(home)]);
        let runner = ProjectionRunner::new(self.pool.clone(), projectors);
        tokio::join!(
            runner.run(feed.as_mut(), shutdown.clone()),
            home_runner.run(home_feed.as_mut(), shutdown),
        );
        Ok(())
    }

    /// `streamforge admin grant|revoke`: grants (or revokes) `role` to the
    /// account of `email`, as the operator (`$USER` in the event's
    /// metadata; the operator holds no role). Returns whether it changed
    /// anything.
    ///
    /// # Errors
    /// A malformed email, no account for it, an unknown role, a store failure.
    pub async fn operator_set_role(&self, email: &str, role: &str, grant: bool) -> anyhow::Result<bool> {
        let email = domain::values::EmailAddress::parse(email).map_err(|e| anyhow::anyhow!("email: {e}"))?;
        let hash = self.identity.email_hash(&email);
        let user =
            commands::reservations::owner(&self.pool, commands::reservations::ReservationKind::Email, &hash)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no account has that email address"))?;
        let meta = commands::identity::RequestMeta {
            request_id: Some(format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
            )),
            ..Default::default()
        };
        let done =
            self.access.set_role(None, user, role, grant, &meta).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(done.changed)
    }

    /// The home feed's fan-out projector, with `FEED_FANOUT_MAX_FOLLOWERS`.
    pub fn home_feed_projector(&self) -> projections::social::home::HomeFeedProjector {
        projections::social::home::HomeFeedProjector {
            max_fanout_followers: self.settings.feed_fanout_max_followers,
        }
    }

    /// Runs the notifier role until shutdown.
    ///
    /// # Errors
    /// Bad mail configuration, or the feed cannot be created.
    pub async fn run_notifier(&self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mailer = Mailer::new(self.settings.smtp_url.as_deref(), self.settings.mail_dir.clone())?;
        let sms = SmsSender::new(self.settings.twilio()?.as_ref(), self.settings.sms_dir.clone())?;
        let deliveries = DeliveryStore::new(self.pool.clone(), self.keys.delivery.clone());
        let policy = RetryPolicy {
            max_attempts: self.settings.delivery_max_attempts,
            base_delay: Duration::from_millis(self.settings.delivery_retry_base_ms),
            ..RetryPolicy::default()
        };
        let notifier = Notifier::new(self.pool.clone(), deliveries, mailer, sms, &self.settings.mail_from)?
            .with_policy(policy);
        // Any aggregate's event may name a delivery (`delivery_id` metadata).
        let mut feed = self.feed_paced("notify", AGGREGATE_TYPES, self.settings.notify_min_read_ms).await?;
        notifier.run(feed.as_mut(), shutdown).await;
        Ok(())
    }

    /// Runs the relay role until shutdown (Kafka mode only; a no-op without brokers).
    ///
    /// # Errors
    /// When the producer cannot be created.
    pub async fn run_relay(&self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Some(brokers) = &self.settings.kafka_brokers else {
            tracing::info!("no KAFKA_BROKERS: relay not needed (Postgres feed)");
            return Ok(());
        };
        let producer = workers::kafka::producer(brokers)?;
        let pseudonyms =
            commands::keys::SubjectPseudonyms::derive(&self.keys, &self.settings.analytics_subject_key_id);
        Relay::new(self.pool.clone(), producer, self.settings.kafka_topic_prefix.clone())
            .with_pseudonyms(pseudonyms)
            .run(shutdown)
            .await;
        Ok(())
    }

    /// A feed of `aggregate_types` for this node alone (consumer
    /// `consumer`), starting at the head: Kafka with `auto.offset.reset =
    /// latest` in a group of its own, Postgres from the newest event.
    async fn node_feed(
        &self,
        consumer: &str,
        aggregate_types: &[&str],
    ) -> anyhow::Result<Box<dyn EventFeed>> {
        Ok(match &self.settings.kafka_brokers {
            Some(brokers) => {
                let topics =
                    aggregate_types.iter().map(|t| format!("{}{t}", self.settings.kafka_topic_prefix));
                let mut cfg = KafkaFeedConfig::new(
                    brokers.clone(),
                    format!("{}-{consumer}", self.settings.kafka_group_prefix),
                    topics,
                );
                cfg.fetch_wait_max_ms = self.settings.kafka_fetch_wait_max_ms;
                cfg.extra.push(("auto.offset.reset".to_owned(), "latest".to_owned()));
                Box::new(KafkaFeed::new(&cfg)?)
            }
            None => {
                // Start at the head: what came before is in the read models.
                let head: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT txid::text::bigint, position FROM events ORDER BY txid DESC, position DESC LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await?;
                let cursor = head.map_or(projections::tail::Cursor::ZERO, |(txid, position)| {
                    projections::tail::Cursor { txid, position }
                });
                Box::new(
                    PgFeed::new(
                        self.pool.clone(),
                        PgFeedConfig::new(consumer)
                            .aggregate_types(aggregate_types.iter().copied())
                            .min_read_interval(NODE_FEED_MIN_READ_INTERVAL)
                            .ephemeral_from(cursor)
                            .shared_listener(&self.events_listener()),
                    )
                    .await?,
                )
            }
        })
    }

    /// Follows the social events from the head of the feed into
    /// [`App::live`] until shutdown (every HTTP node runs one).
    ///
    /// # Errors
    /// When the feed cannot be created.
    pub async fn run_live_follower(&self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let consumer = format!("live-{}", Uuid::new_v4().simple());
        let mut feed = self.node_feed(&consumer, &crate::live::LIVE_TYPES).await?;
        self.live.follow(feed.as_mut(), &self.pool, shutdown).await;
        self.live.close();
        Ok(())
    }

    /// Follows `session` events from the head of the feed into
    /// [`App::revoked`] until shutdown (every HTTP node runs one).
    ///
    /// # Errors
    /// When the feed cannot be created.
    pub async fn run_revocation_follower(&self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let node = Uuid::new_v4().simple().to_string();
        let consumer = format!("revocations-{node}");
        let mut feed = self.node_feed(&consumer, &["session"]).await?;
        self.revoked.follow(feed.as_mut(), &self.pool, shutdown).await;
        Ok(())
    }

    /// Serves HTTP on `listener` until shutdown.
    ///
    /// # Errors
    /// I/O errors of the server.
    pub async fn serve_http(
        &self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, "serving HTTP");
        axum::serve(listener, self.router().into_make_service_with_connect_info::<std::net::SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await?;
        Ok(())
    }

    /// Every 10 minutes (and at start), expires the email registrations
    /// left unverified for 24 h, 500 at a time (a scheduled job of the
    /// notifier role; several nodes may run it: the aggregate decides once).
    pub async fn run_registration_expiry(&self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let meta = commands::identity::RequestMeta::default();
        while !*shutdown.borrow() {
            tokio::select! {
                _ = tick.tick() => {
                    match self.identity.expire_unverified_registrations(chrono::Utc::now(), 500, &meta).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(expired = n, "unverified registrations expired"),
                        Err(e) => tracing::warn!(error = %e, "registration expiry failed; retrying later"),
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Runs `roles` until `shutdown` turns true or a role fails.
    ///
    /// # Errors
    /// The first role that fails.
    pub async fn run(
        &self,
        roles: Roles,
        listener: Option<TcpListener>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if roles.relay || roles.project || roles.notify {
            self.ensure_topics().await?;
        }
        let mut tasks = JoinSet::new();
        if let Some(addr) = self.settings.metrics_addr {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (METRICS_ADDR)"))?;
            let router = crate::metrics::router(crate::metrics::Sources {
                pool: self.pool.clone(),
                hasher: self.identity.hasher.clone(),
            });
            let mut s = shutdown.clone();
            tasks.spawn(async move {
                tracing::info!(addr = %addr, "serving /metrics");
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = s.wait_for(|s| *s).await;
                    })
                    .await
                    .context("metrics")
            });
        }
        if roles.http {
            let listener = match listener {
                Some(l) => l,
                None => TcpListener::bind(self.settings.http_addr)
                    .await
                    .with_context(|| format!("cannot listen on {}", self.settings.http_addr))?,
            };
            let (app, s) = (self.clone(), shutdown.clone());
            tasks.spawn(async move { app.serve_http(listener, s).await.context("http") });
            let (app, s) = (self.clone(), shutdown.clone());
            tasks.spawn(async move { app.run_revocation_follower(s).await.context("revocations") });
            let (app, s) = (self.clone(), shutdown.clone());
            tasks.spawn(async move { app.run_live_follower(s).await.context("live updates") });
        }
        if roles.relay {
            let (app, s) = (self.clone(), shutdown.clone());
            tasks.spawn(async move { app.run_relay(s).await.context("relay") });
        }
        if roles.project {
            let (app, s) = (self.clone(), shutdown.clone());
            tasks.spawn(async move { app.run_projector(s).await.context("projector") });
        }
        if roles.notify {
            let (app, s) = (self.clone(), shutdown.clone());
            tasks.spawn(async move { app.run_notifier(s).await.context("notifier") });
            let (app, s) = (self.clone(), shutdown.clone());
            tasks.spawn(async move {
                app.run_registration_expiry(s).await;
                Ok(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(anyhow::anyhow!("a role task failed: {e}")),
            }
        }
        Ok(())
    }
}

/// A shutdown signal that turns true on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
        tracing::info!("shutting down");
        let _ = tx.send(true);
        // Give roles time to finish, then stop regardless.
        tokio::time::sleep(Duration::from_secs(20)).await;
    });
    rx
}

/// `streamforge topics`: the topics of `prefix` (partitions, messages
/// held, retention) and every consumer group's lag on them, as Markdown
/// tables.
///
/// # Errors
/// The broker cannot be reached.
pub async fn topics_report(brokers: &str, prefix: &str) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let (topics, groups) = workers::kafka::describe(brokers, prefix).await?;
    let mut out = String::new();
    writeln!(out, "| topic | partitions | messages | retention.ms |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    for t in &topics {
        let retention = t.retention_ms.as_deref().unwrap_or("(not reported)");
        writeln!(out, "| {} | {} | {} | {retention} |", t.name, t.partitions, t.messages)?;
    }
    writeln!(out)?;
    writeln!(out, "| consumer group | partitions committed | lag (messages) |")?;
    writeln!(out, "|---|---:|---:|")?;
    for g in &groups {
        writeln!(out, "| {} | {} | {} |", g.group, g.partitions, g.lag)?;
    }
    Ok(out)
}
