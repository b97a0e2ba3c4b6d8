//! Rebuilds without downtime (issue 18): a projector's read model is
//! rebuilt from the store into **shadow tables** while the live one keeps
//! serving queries and keeps consuming, then swapped in atomically.
//!
//! 1. **Prepare.** A schema `shadow_<projector>` gets an empty copy of each
//!    of [`Projector::tables`] and of `projection_checkpoints`
//!    (`CREATE TABLE … (LIKE … INCLUDING ALL)`: columns, defaults, checks,
//!    indexes).
//! 2. **Copy.** Every settled event below a [`Horizon`] taken now is
//!    written through [`Projector::rebuild_chunk`] as an in-place rebuild
//!    does, but each transaction first sets `search_path` to
//!    `shadow_<projector>, <live schema>`: the projector's unqualified
//!    statements — its checkpoints included — land in the shadow tables
//!    (PostgreSQL re-parses a cached prepared statement when `search_path`
//!    changes, PREPARE's documentation, so pooled connections are safe).
//! 3. **Catch up.** Rounds apply the events committed since the previous
//!    horizon (`txid` in `[previous, now)`, in commit order), until a round
//!    finds fewer than [`ReplayOptions::catch_up_threshold`]; then the
//!    shadow tables are `ANALYZE`d.
//! 4. **Swap**, one transaction: take the projector's swap lock (an
//!    advisory lock every live transaction of the projector holds shared,
//!    so live writers on every node pause here); apply the last events
//!    (`txid` ≥ the last horizon, everything committed: whatever a live
//!    runner applied was relayed, hence committed, hence is seen); replace
//!    the projector's live checkpoints with the shadow's; give each shadow
//!    index the name of its live twin; drop each live table and move its
//!    shadow into the live schema; drop the shadow schema. Queries wait only
//!    for the drop-and-move at the end (a few catalogue writes), then read
//!    the new tables: no query sees an empty or half-built read model.
//!
//! One replay per projector at a time ([`ReplayGuard`], a transaction-scoped
//! advisory lock held for the whole replay); progress and outcome go to
//! `projection_status` (`rebuild_*` columns) for `GET /api/admin/projections`.

use std::sync::Arc;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::checkpoints::SWAP_LOCK;
use super::parking::is_transient;
use super::range::{handled_types, set_search_path, Range};
use super::{read_chunks, write_chunk, AbortOnDrop, ErrorChain, ProjectionRunner, RunError};
use crate::rebuild::Horizon;
use crate::runtime::Projector;

/// Key space of the "one replay per projector" lock.
const REPLAY_LOCK: &str = "SELECT pg_try_advisory_xact_lock(1802, hashtext($1))";

/// Pacing of a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Events per copy chunk (default [`super::DEFAULT_REBUILD_CHUNK`]).
    pub chunk_size: usize,
    /// Events per catch-up transaction (default 1,000).
    pub catch_up_batch: usize,
    /// A catch-up round that applied fewer events than this ends the
    /// catch-up; the swap applies the rest under its lock (default 1,000).
    pub catch_up_threshold: usize,
    /// Most catch-up rounds before the swap (default 20): under a write
    /// rate the replay cannot outpace, the swap's own catch-up (and the
    /// live writers' pause) grows instead of the replay never ending.
    pub max_catch_up_rounds: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            chunk_size: super::DEFAULT_REBUILD_CHUNK,
            catch_up_batch: 1_000,
            catch_up_threshold: 1_000,
            max_catch_up_rounds: 20,
        }
    }
}

/// Where a replay is, for a progress bar or the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayProgress {
    /// `copying`, `catching_up`, `swapping` or `done`.
    pub phase: &'static str,
    /// Events written so far (copy and catch-up).
    pub done: u64,
    /// Settled events to copy, counted at the start (catch-up events come
    /// on top: `done` may pass it).
    pub total: u64,
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    /// Events copied below the first horizon.
    pub copied: usize,
    /// Events applied by the catch-up rounds and the swap.
    pub caught_up: usize,
    /// Catch-up rounds before the swap.
    pub rounds: usize,
    /// Events the swap applied under its lock.
    pub applied_at_swap: usize,
    /// Swap attempts (a deadlock or lock timeout is retried, up to 5).
    pub swap_attempts: usize,
}

/// The right to replay one projector: a transaction holding
/// `pg_try_advisory_xact_lock(1802, hashtext(name))` on a connection of its
/// own. Dropping it (replay done, failed or cancelled) rolls the
/// transaction back and frees the lock. The transaction never writes and
/// takes no xid, so it holds back no horizon.
pub struct ReplayGuard {
    name: &'static str,
    _lock: Transaction<'static, Postgres>,
}

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ReplayGuard {
    /// Takes the replay lock of projector `name`; `Ok(None)` when another
    /// replay of it runs (on any node).
    ///
    /// # Errors
    /// Database errors.
    pub async fn acquire(pool: &PgPool, name: &'static str) -> Result<Option<Self>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        let taken: bool = sqlx::query_scalar(REPLAY_LOCK).bind(name).fetch_one(&mut *tx).await?;
        Ok(taken.then_some(Self { name, _lock: tx }))
    }

    /// The projector this guard is for.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Quotes an identifier for SQL (`"` doubled).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The shadow schema of a projector.
fn shadow_schema(projector: &str) -> String {
    format!("shadow_{projector}")
}

impl ProjectionRunner {
    /// The projector called `name`, if this runner has it.
    pub fn projector(&self, name: &str) -> Option<Arc<dyn Projector>> {
        self.projectors.iter().find(|p| p.name() == name).cloned()
    }

    /// Rebuilds projector `guard.name()` into shadow tables and swaps them
    /// in (see the module docs), calling `progress` after each chunk and
    /// phase. The live runners keep running meanwhile, on any node.
    ///
    /// # Errors
    /// [`RunError::UnknownProjector`], [`RunError::Store`] (database),
    /// [`RunError::Projector`] (an event the projector cannot apply: the
    /// live read model is untouched) or [`RunError::ReaderTask`]. The
    /// failure is recorded in `projection_status.rebuild_error`; the shadow
    /// schema is left for inspection and dropped by the next replay.
    pub async fn replay(
        &self,
        guard: &ReplayGuard,
        options: ReplayOptions,
        progress: &(dyn Fn(ReplayProgress) + Send + Sync),
    ) -> Result<ReplayStats, RunError> {
        let projector = self
            .projector(guard.name())
            .ok_or_else(|| RunError::UnknownProjector(guard.name().to_owned()))?;
        let result = self.replay_inner(projector.as_ref(), options, progress).await;
        let outcome = match &result {
            Ok(_) => {
                sqlx::query(
                    "UPDATE projection_status SET rebuild_state = 'done', rebuild_finished_at = now(),
                     rebuild_error = NULL WHERE projector = $1",
                )
                .bind(projector.name())
                .execute(&self.pool)
                .await
            }
            Err(error) => {
                let text = ErrorChain(error).to_string();
                sqlx::query(
                    "UPDATE projection_status SET rebuild_state = 'failed', rebuild_finished_at = now(),
                         rebuild_error = $2 WHERE projector = $1",
                )
                .bind(projector.name())
                .bind(text)
                .execute(&self.pool)
                .await
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "replay outcome not recorded");
        }
        result
    }

    async fn replay_inner(
        &self,
        projector: &dyn Projector,
        options: ReplayOptions,
        progress: &(dyn Fn(ReplayProgress) + Send + Sync),
    ) -> Result<ReplayStats, RunError> {
        let name = projector.name();
        let live: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(&self.pool).await?;
        let shadow = shadow_schema(name);
        let search_path = format!("{}, {}", ident(&shadow), ident(&live));
        let mut stats = ReplayStats::default();

        // 1. Prepare.
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(&shadow))).execute(&mut *tx).await?;
        sqlx::query(&format!("CREATE SCHEMA {}", ident(&shadow))).execute(&mut *tx).await?;
        for table in projector.tables().iter().copied().chain(["projection_checkpoints"]) {
            sqlx::query(&format!(
                "CREATE TABLE {s}.{t} (LIKE {l}.{t} INCLUDING ALL)",
                s = ident(&shadow),
                l = ident(&live),
                t = ident(table)
            ))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        // 2. Copy.
        let horizon = Horizon::now(&self.pool).await?;
        let types = handled_types(&self.pool, projector).await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = ANY($1) AND txid < $2::text::xid8",
        )
        .bind(&types)
        .bind(horizon.0)
        .fetch_one(&self.pool)
        .await?;
        let total = u64::try_from(total).unwrap_or(0);
        sqlx::query(
            "INSERT INTO projection_status (projector, rebuild_state, rebuild_done, rebuild_total,
                 rebuild_started_at, rebuild_finished_at, rebuild_error)
             VALUES ($1, 'running', 0, $2, now(), NULL, NULL)
             ON CONFLICT (projector) DO UPDATE SET rebuild_state = 'running', rebuild_done = 0,
                 rebuild_total = $2, rebuild_started_at = now(), rebuild_finished_at = NULL,
                 rebuild_error = NULL",
        )
        .bind(name)
        .bind(i64::try_from(total).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        let mut done = 0_u64;
        let report = |phase: &'static str, done: u64| {
            progress(ReplayProgress { phase, done, total });
        };
        report("copying", 0);
        let (chunks, mut received) = tokio::sync::mpsc::channel(2);
        let mut reader = AbortOnDrop(tokio::spawn(read_chunks(
            self.pool.clone(),
            types.clone(),
            horizon,
            options.chunk_size,
            chunks,
        )));
        while let Some(chunk) = received.recv().await {
            let chunk = chunk?;
            write_chunk(&self.pool, projector, &chunk, Some(&search_path)).await?;
            stats.copied += chunk.len();
            done += chunk.len() as u64;
            self.record_replay_progress(name, done).await;
            report("copying", done);
        }
        if let Err(error) = (&mut reader.0).await {
            return Err(RunError::ReaderTask(error));
        }

        // 3. Catch up.
        let mut from = horizon;
        for _ in 0..options.max_catch_up_rounds {
            let to = Horizon::now(&self.pool).await?;
            // One transaction per page, the shadow first in its path.
            let mut range = Range::new(&types, Some(from), Some(to));
            let mut applied = 0;
            loop {
                let mut tx = self.pool.begin().await?;
                set_search_path(&mut tx, &search_path).await?;
                let page = range.apply_next_page(&mut tx, projector, options.catch_up_batch).await?;
                tx.commit().await?;
                applied += page.len();
                if page.len() < options.catch_up_batch {
                    break;
                }
            }
            stats.rounds += 1;
            stats.caught_up += applied;
            done += applied as u64;
            from = to;
            self.record_replay_progress(name, done).await;
            report("catching_up", done);
            if applied < options.catch_up_threshold {
                break;
            }
        }
        for table in projector.tables().iter().copied().chain(["projection_checkpoints"]) {
            sqlx::query(&format!("ANALYZE {}.{}", ident(&shadow), ident(table))).execute(&self.pool).await?;
        }

        // 4. Swap.
        report("swapping", done);
        let mut attempt = 0;
        let applied = loop {
            attempt += 1;
            match swap(&self.pool, projector, &live, &shadow, &search_path, &types, from).await {
                Ok(applied) => break applied,
                Err(error) if attempt < 5 && is_transient(&error) => {
                    tracing::warn!(projector = name, attempt, error = %ErrorChain(&error), "swap failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
                Err(error) => return Err(error),
            }
        };
        stats.swap_attempts = usize::try_from(attempt).unwrap_or(usize::MAX);
        stats.applied_at_swap = applied;
        stats.caught_up += applied;
        done += applied as u64;
        self.record_replay_progress(name, done).await;
        report("done", done);
        tracing::info!(
            projector = name,
            copied = stats.copied,
            caught_up = stats.caught_up,
            rounds = stats.rounds,
            applied_at_swap = stats.applied_at_swap,
            "replay swapped in"
        );
        Ok(stats)
    }

    async fn record_replay_progress(&self, name: &str, done: u64) {
        let result = sqlx::query("UPDATE projection_status SET rebuild_done = $2 WHERE projector = $1")
            .bind(name)
            .bind(i64::try_from(done).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await;
        if let Err(error) = result {
            tracing::warn!(error = %error, "replay progress not recorded");
        }
    }
}

/// Index names and definitions (name and table stripped) of `schema.table`.
async fn indexes(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, regexp_replace(pg_get_indexdef(i.indexrelid),
                    '^CREATE (UNIQUE )?INDEX \\S+ ON (ONLY )?\\S+ ', 'CREATE \\1INDEX ON t ')
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE n.nspname = $1 AND t.relname = $2 ORDER BY 1",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// The swap transaction (module docs, step 4); returns the events applied
/// under the lock.
async fn swap(
    pool: &PgPool,
    projector: &dyn Projector,
    live: &str,
    shadow: &str,
    search_path: &str,
    types: &[String],
    from: Horizon,
) -> Result<usize, RunError> {
    let name = projector.name();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('lock_timeout', '10s', true)").execute(&mut *tx).await?;
    sqlx::query(SWAP_LOCK).bind(name).execute(&mut *tx).await?;

    // The last events, with every live writer of this projector paused.
    let original_path: String =
        sqlx::query_scalar("SELECT current_setting('search_path')").fetch_one(&mut *tx).await?;
    set_search_path(&mut tx, search_path).await?;
    let mut range = Range::new(types, Some(from), None);
    let mut applied = 0;
    loop {
        let page = range.apply_next_page(&mut tx, projector, 1_000).await?;
        applied += page.len();
        if page.len() < 1_000 {
            break;
        }
    }
    set_search_path(&mut tx, &original_path).await?;

    // Checkpoints: only this projector's rows, while its writers wait.
    let (l, s) = (ident(live), ident(shadow));
    sqlx::query(&format!("DELETE FROM {l}.projection_checkpoints WHERE projector = $1"))
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "INSERT INTO {l}.projection_checkpoints SELECT * FROM {s}.projection_checkpoints WHERE projector = $1"
    ))
    .bind(name)
    .execute(&mut *tx)
    .await?;

    // Index names: each shadow index takes its live twin's (same
    // definition), through temporary names so no two collide.
    for table in projector.tables() {
        let theirs = indexes(&mut tx, live, table).await?;
        let ours = indexes(&mut tx, shadow, table).await?;
        let mut renames = Vec::new();
        for (k, (shadow_name, definition)) in ours.iter().enumerate() {
            let Some((live_name, _)) = theirs.iter().find(|(_, d)| d == definition) else {
                return Err(RunError::Store(sqlx::Error::Protocol(format!(
                    "shadow index {shadow_name} of {table} has no live twin"
                ))));
            };
            let temporary = format!("sf_swap_{k}");
            sqlx::query(&format!("ALTER INDEX {s}.{} RENAME TO {}", ident(shadow_name), ident(&temporary)))
                .execute(&mut *tx)
                .await?;
            renames.push((temporary, live_name.clone()));
        }
        for (temporary, live_name) in renames {
            sqlx::query(&format!("ALTER INDEX {s}.{} RENAME TO {}", ident(&temporary), ident(&live_name)))
                .execute(&mut *tx)
                .await?;
        }
    }
    for table in projector.tables() {
        let t = ident(table);
        sqlx::query(&format!("DROP TABLE {l}.{t}")).execute(&mut *tx).await?;
        sqlx::query(&format!("ALTER TABLE {s}.{t} SET SCHEMA {l}")).execute(&mut *tx).await?;
    }
    sqlx::query(&format!("DROP SCHEMA {s} CASCADE")).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("rm_profiles"), "\"rm_profiles\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(shadow_schema("profiles"), "shadow_profiles");
    }

    #[test]
    fn only_lock_and_conflict_errors_are_retried() {
        assert!(!is_transient(&RunError::Store(sqlx::Error::RowNotFound)));
    }
}
