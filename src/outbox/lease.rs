//! The relay's statements: claiming rows under a lease, taking over rows whose relay is gone,
//! and writing what became of each attempt.

use sqlx_postgres::{PgPool, Postgres};
use std::time::Duration;

/// A row claimed by this relay.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub id: i64,
    pub event: serde_json::Value,
    /// Attempts so far, this one included.
    pub attempts: u32,
    pub maybe_sent: bool,
    pub dedup: bool,
    pub age: Duration,
}

/// What the relay writes to a row it holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Write {
    Delivered(serde_json::Value),
    Failed(String),
    Uncertain(String),
    Retry {
        after: Duration,
        maybe_sent: bool,
        error: String,
    },
    /// Not sent, for want of a turn in the shared rate-limit budget: back to pending, due
    /// `after`, as if this claim had not happened (its attempt is not counted, its last error
    /// kept).
    Unsent {
        after: Duration,
    },
}

impl Write {
    /// The error written with it ("" when delivered).
    pub fn error(&self) -> &str {
        match self {
            Write::Delivered(_) | Write::Unsent { .. } => "",
            Write::Failed(e) | Write::Uncertain(e) | Write::Retry { error: e, .. } => e,
        }
    }
}

/// Milliseconds for SQL, capped at a year so that no interval overflows.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis())
        .unwrap_or(i64::MAX)
        .min(365 * 24 * 3_600_000)
}

/// Claims up to `max` rows that are due, for `lease`: the longest due first (insertion order
/// among rows due at once), and of each customer only its oldest row not yet finished, so that
/// a customer's events go in insertion order (its lead before its sales) while different
/// customers go concurrently. Rows other relays are claiming at the same moment are skipped,
/// not waited for.
///
/// The order is the pending-rows index's (`next_attempt_at, id`), so that a claim reads the due
/// rows only: ordered by `id` alone, PostgreSQL walks the primary key past every delivered row
/// kept for the retention period, on every claim.
pub(crate) async fn claim(
    pool: &PgPool,
    relay: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx_core::Error> {
    let rows: Vec<(i64, serde_json::Value, i32, bool, bool, f64)> = sqlx_core::query_as::query_as(
        "WITH due AS (
                SELECT o.id FROM dub_outbox o
                WHERE o.state = 'pending' AND o.next_attempt_at <= now()
                  AND NOT EXISTS (
                      SELECT 1 FROM dub_outbox e
                      WHERE e.customer = o.customer AND e.id < o.id
                        AND e.state IN ('pending', 'in_flight'))
                ORDER BY o.next_attempt_at, o.id
                LIMIT $1
                FOR UPDATE SKIP LOCKED
            )
            UPDATE dub_outbox t
            SET state = 'in_flight', attempts = t.attempts + 1, locked_by = $2,
                locked_until = now() + make_interval(secs => $3::double precision / 1000)
            FROM due WHERE t.id = due.id
            RETURNING t.id, t.event, t.attempts, t.maybe_sent, t.dedup_key IS NOT NULL,
                extract(epoch FROM now() - t.created_at)::double precision",
    )
    .bind(i64::try_from(max).unwrap_or(i64::MAX))
    .bind(relay)
    .bind(millis(lease))
    .fetch_all(pool)
    .await?;
    let mut claimed: Vec<Claimed> = rows
        .into_iter()
        .map(|(id, event, attempts, maybe_sent, dedup, age)| Claimed {
            id,
            event,
            attempts: u32::try_from(attempts).unwrap_or(0),
            maybe_sent,
            dedup,
            age: Duration::try_from_secs_f64(age).unwrap_or_default(),
        })
        .collect();
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// Takes over the rows whose relay's lease ran out (it was killed, or lost the database for
/// longer than the lease). Its attempt was cut off before the lease ended, so it is no longer
/// in flight on our side; Dub may still be finishing it. A row Dub deduplicates goes back to
/// pending, due once `settle` has passed since the lease ended, so that the next attempt cannot
/// overlap it. A row Dub does not deduplicate may have been recorded: it ends uncertain.
/// Returns how many rows were taken over.
pub(crate) async fn take_over_expired(
    pool: &PgPool,
    settle: Duration,
) -> Result<u64, sqlx_core::Error> {
    let requeued = sqlx_core::query::query::<Postgres>(
        "UPDATE dub_outbox
         SET state = 'pending', maybe_sent = true, locked_by = NULL,
             next_attempt_at = locked_until + make_interval(secs => $1::double precision / 1000),
             locked_until = NULL,
             last_error = 'the relay delivering it stopped while an attempt may have been in \
flight; sent again once that attempt cannot be running any more'
         WHERE state = 'in_flight' AND locked_until < now() AND dedup_key IS NOT NULL",
    )
    .bind(millis(settle))
    .execute(pool)
    .await?
    .rows_affected();
    let uncertain = sqlx_core::query::query::<Postgres>(
        "UPDATE dub_outbox
         SET state = 'uncertain', finished_at = now(), locked_by = NULL, locked_until = NULL,
             last_error = 'the relay delivering it stopped while an attempt may have been in \
flight; Dub does not deduplicate this event, so it is not sent again'
         WHERE state = 'in_flight' AND locked_until < now() AND dedup_key IS NULL",
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(requeued + uncertain)
}

/// Writes what became of an attempt on a row this relay holds. Returns `false` when the row was
/// no longer this relay's (its lease ran out and another relay took it over) and nothing was
/// written; a delivery this relay saw answered is written over `uncertain` all the same, since
/// it is known.
pub(crate) async fn write(
    pool: &PgPool,
    relay: &str,
    id: i64,
    outcome: &Write,
) -> Result<bool, sqlx_core::Error> {
    let mine = "id = $1 AND state = 'in_flight' AND locked_by = $2";
    let result = match outcome {
        Write::Delivered(response) => {
            sqlx_core::query::query::<Postgres>(&format!(
                "UPDATE dub_outbox
                 SET state = 'delivered', response = $3, last_error = NULL, finished_at = now(),
                     locked_by = NULL, locked_until = NULL
                 WHERE ({mine}) OR (id = $1 AND state = 'uncertain')"
            ))
            .bind(id)
            .bind(relay)
            .bind(response)
            .execute(pool)
            .await?
        }
        Write::Failed(error) | Write::Uncertain(error) => {
            let state = if matches!(outcome, Write::Failed(_)) {
                "failed"
            } else {
                "uncertain"
            };
            sqlx_core::query::query::<Postgres>(&format!(
                "UPDATE dub_outbox
                 SET state = $3, last_error = $4, finished_at = now(),
                     locked_by = NULL, locked_until = NULL
                 WHERE {mine}"
            ))
            .bind(id)
            .bind(relay)
            .bind(state)
            .bind(error)
            .execute(pool)
            .await?
        }
        Write::Unsent { after } => {
            sqlx_core::query::query::<Postgres>(&format!(
                "UPDATE dub_outbox
                 SET state = 'pending', attempts = greatest(attempts - 1, 0),
                     next_attempt_at = now() + make_interval(secs => $3::double precision / 1000),
                     locked_by = NULL, locked_until = NULL
                 WHERE {mine}"
            ))
            .bind(id)
            .bind(relay)
            .bind(millis(*after))
            .execute(pool)
            .await?
        }
        Write::Retry {
            after,
            maybe_sent,
            error,
        } => {
            sqlx_core::query::query::<Postgres>(&format!(
                "UPDATE dub_outbox
                 SET state = 'pending', last_error = $3, maybe_sent = maybe_sent OR $4,
                     next_attempt_at = now() + make_interval(secs => $5::double precision / 1000),
                     locked_by = NULL, locked_until = NULL
                 WHERE {mine}"
            ))
            .bind(id)
            .bind(relay)
            .bind(error)
            .bind(maybe_sent)
            .bind(millis(*after))
            .execute(pool)
            .await?
        }
    };
    Ok(result.rows_affected() > 0)
}
