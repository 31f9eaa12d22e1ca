//! Operating the outbox: counting its rows, putting failed events back, pruning delivered ones.

use super::{CHANNEL, OutboxError};
use sqlx_postgres::{PgExecutor, PgPool, Postgres};
use std::fmt;
use std::time::Duration;

/// How long delivered rows are kept by default before [`prune`] deletes them: 30 days. A
/// delivered row keeps its deduplication key, so a copy of its event enqueued within this time
/// is dropped.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Rows deleted per statement by [`prune`], so that no one statement holds many row locks or
/// runs for long.
const PRUNE_BATCH: i64 = 10_000;

/// How many rows of the outbox are in each state.
///
/// Its `Display` is one line, `pending=N in_flight=N delivered=N failed=N uncertain=N`, then
/// further figures, as `dub-track outbox stats` prints it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Waiting for a relay (including events waiting to be retried).
    pub pending: u64,
    /// Claimed by a relay, which is delivering them.
    pub in_flight: u64,
    /// Recorded by Dub (or found to be duplicates Dub had already recorded).
    pub delivered: u64,
    /// Refused by Dub, or invalid: not recorded; see `last_error`.
    pub failed: u64,
    /// Events Dub does not deduplicate whose attempt's outcome is unknown: maybe recorded,
    /// never sent again.
    pub uncertain: u64,
    /// How long the oldest pending event has been waiting, in whole seconds (0 when none is).
    pub oldest_pending_secs: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pending={} in_flight={} delivered={} failed={} uncertain={} oldest_pending_s={}",
            self.pending,
            self.in_flight,
            self.delivered,
            self.failed,
            self.uncertain,
            self.oldest_pending_secs
        )
    }
}

/// Counts the outbox's rows in each state.
///
/// ```no_run
/// # mod sqlx { pub use sqlx_postgres::PgPool; }
/// # async fn example(pool: sqlx::PgPool) -> Result<(), dub::outbox::OutboxError> {
/// let stats = dub::outbox::stats(&pool).await?;
/// println!("{stats}"); // pending=0 in_flight=0 delivered=12 failed=0 uncertain=0 ...
/// # Ok(())
/// # }
/// ```
pub async fn stats<'c>(executor: impl PgExecutor<'c>) -> Result<Stats, OutboxError> {
    let row: (i64, i64, i64, i64, i64, i64) = sqlx_core::query_as::query_as(
        "SELECT
            count(*) FILTER (WHERE state = 'pending'),
            count(*) FILTER (WHERE state = 'in_flight'),
            count(*) FILTER (WHERE state = 'delivered'),
            count(*) FILTER (WHERE state = 'failed'),
            count(*) FILTER (WHERE state = 'uncertain'),
            coalesce(floor(extract(epoch FROM now() - min(created_at)
                FILTER (WHERE state = 'pending'))), 0)::bigint
         FROM dub_outbox",
    )
    .fetch_one(executor)
    .await?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Stats {
        pending: n(row.0),
        in_flight: n(row.1),
        delivered: n(row.2),
        failed: n(row.3),
        uncertain: n(row.4),
        oldest_pending_secs: n(row.5),
    })
}

/// Puts every `failed` event back to `pending`, to be delivered again, and returns how many.
///
/// For events refused because of their data: fix the rows first (`UPDATE dub_outbox SET event
/// = ... WHERE id = ...`), then retry. `uncertain` events are not touched: Dub may have recorded
/// them, and sending them again could record them twice.
pub async fn retry_failed<'c>(executor: impl PgExecutor<'c>) -> Result<u64, OutboxError> {
    // One statement, so that the notification goes out with the update, at its commit.
    let retried: i64 = sqlx_core::query_scalar::query_scalar(
        "WITH retried AS (
            UPDATE dub_outbox
            SET state = 'pending', last_error = NULL, attempts = 0, next_attempt_at = now(),
                finished_at = NULL, locked_by = NULL, locked_until = NULL
            WHERE state = 'failed'
            RETURNING 1
        )
        SELECT count(*) FROM retried, LATERAL (SELECT pg_notify($1, '')) AS notified",
    )
    .bind(CHANNEL)
    .fetch_one(executor)
    .await?;
    Ok(u64::try_from(retried).unwrap_or(0))
}

/// Deletes the `delivered` rows that were delivered more than `older_than` ago
/// ([`DEFAULT_RETENTION`] unless you keep them longer or shorter), in batches, and returns how
/// many. Failed and uncertain rows are kept: they wait for someone to look at them.
///
/// ```no_run
/// # mod sqlx { pub use sqlx_postgres::PgPool; }
/// # async fn example(pool: sqlx::PgPool) -> Result<(), dub::outbox::OutboxError> {
/// let deleted = dub::outbox::prune(&pool, dub::outbox::DEFAULT_RETENTION).await?;
/// # Ok(())
/// # }
/// ```
pub async fn prune(pool: &PgPool, older_than: Duration) -> Result<u64, OutboxError> {
    // Whole milliseconds, capped so that the interval cannot overflow in PostgreSQL.
    let millis = i64::try_from(older_than.as_millis())
        .unwrap_or(i64::MAX)
        .min(100 * 365 * 24 * 60 * 60 * 1000);
    let mut deleted = 0u64;
    loop {
        let batch = sqlx_core::query::query::<Postgres>(
            "DELETE FROM dub_outbox WHERE id IN (
                SELECT id FROM dub_outbox
                WHERE state = 'delivered'
                  AND finished_at < now() - make_interval(secs => $1::double precision / 1000)
                LIMIT $2
            )",
        )
        .bind(millis)
        .bind(PRUNE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += batch;
        if batch < u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX) {
            return Ok(deleted);
        }
    }
}
