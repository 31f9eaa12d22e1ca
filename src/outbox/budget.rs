//! One rate-limit budget shared by every relay on an API key, kept in the database: GCRA in one
//! row, so that N relays pace together at the key's limit instead of N times it.
//!
//! The row also holds the key's limit once any relay knows it: a relay given the limit writes
//! it there, and a relay that was not reads it, or learns it from the `X-RateLimit-Limit` of a
//! 429 and writes it for the others. Dub sends that header only with errors, so until the
//! first 429 nobody knows the limit and the relays send unpaced (each client's adaptive limiter
//! still reacts to its own 429s); from it on, every relay on the key paces by the one budget.

use crate::Dub;
use sha2::{Digest, Sha256};
use sqlx_postgres::{PgPool, Postgres};
use std::time::Duration;

/// The share of the limit the relays use: Dub refuses at the limit itself, and other users of
/// the key (link API calls, another app) are invisible to the shared row.
const PACE: f64 = 0.97;

/// The longest a 429 holds every relay back.
const MAX_HOLD: Duration = Duration::from_secs(120);

/// How long relays not given the limit pace by one that was written (given or learned): a
/// plan changes, and a limit given once for a test must not pace the key for ever. Past it
/// they send unpaced until the next 429 teaches the limit again.
const LEARNED_FOR: Duration = Duration::from_secs(3600);

/// What [`SharedBudget::turn`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Turn {
    /// A turn is reserved: send after this wait.
    Go(Duration),
    /// No turn comes in time; nothing was reserved. The next is this far away.
    NotBefore(Duration),
}

/// Seconds from PostgreSQL as a duration (negative: none).
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

/// A key's shared budget.
#[derive(Debug, Clone)]
pub(crate) struct SharedBudget {
    /// The row's key: a SHA-256 of the request's authorization header.
    key: String,
    /// The limit this relay was given (requests a minute); `None`: it paces by the limit the
    /// row holds, if any relay knows it.
    given: Option<u32>,
}

impl SharedBudget {
    /// The budget of `dub`'s API key, at `given` requests a minute or at the limit learned on
    /// the key; `None` for a client without a usable key.
    pub fn new(dub: &Dub, given: Option<u32>) -> Option<SharedBudget> {
        let auth = dub.authorization()?;
        let digest = Sha256::digest(auth.as_bytes());
        let key = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(SharedBudget {
            key,
            given: given.map(|n| n.max(1)),
        })
    }

    /// Reserves the next turn if it comes within `within`, and says how long to wait for it;
    /// else reserves nothing and says when the next turn (or the end of a 429's hold) comes.
    /// One statement: the row lock orders concurrent relays, and each turn is one interval (at
    /// 97% of the limit) after the one before. While no relay knows the limit there are no
    /// turns, and nothing is written: only a hold after a 429 is waited out.
    ///
    /// A turn is never reserved for an attempt that will not take it: while a 429 holds the key
    /// back for longer than an attempt may wait, every attempt would otherwise push the next
    /// turn further out, and a fleet retrying its attempts could keep it out of reach.
    pub async fn turn(&self, pool: &PgPool, within: Duration) -> Result<Turn, sqlx_core::Error> {
        let within = within.min(Duration::from_secs(3600)).as_secs_f64();
        let wait: Option<f64> =
            match self.given {
                // The given limit is written for relays on the key that were not given it.
                Some(limit) => sqlx_core::query_scalar::query_scalar(
                    "INSERT INTO dub_outbox_budget AS b (key, tat, limit_per_minute, limit_set_at)
                     VALUES ($1, now() + make_interval(secs => 60.0 / ($2 * $3)), $2, now())
                     ON CONFLICT (key) DO UPDATE
                         SET tat = greatest(b.tat, now())
                                   + make_interval(secs => 60.0 / ($2 * $3)),
                             limit_per_minute = $2,
                             limit_set_at = now()
                         WHERE greatest(b.tat, now()) <= now() + make_interval(secs => $4)
                     RETURNING extract(epoch FROM b.tat - now())::double precision
                               - 60.0 / ($2 * $3)",
                )
                .bind(&self.key)
                .bind(i32::try_from(limit).unwrap_or(i32::MAX))
                .bind(PACE)
                .bind(within)
                .fetch_optional(pool)
                .await?,
                // No row: nobody paces the key yet (no turn to wait for). A row whose limit nobody
                // knows (or knew over an hour ago): only its hold. NULL: the next turn (or the
                // hold's end) is too far.
                None => {
                    let row: Option<Option<f64>> = sqlx_core::query_scalar::query_scalar(
                        "WITH paced AS (
                         UPDATE dub_outbox_budget
                         SET tat = greatest(tat, now())
                                   + make_interval(secs => 60.0 / (limit_per_minute * $2))
                         WHERE key = $1 AND limit_per_minute IS NOT NULL
                           AND limit_set_at > now() - make_interval(secs => $4)
                           AND greatest(tat, now()) <= now() + make_interval(secs => $3)
                         RETURNING extract(epoch FROM tat - now())::double precision
                                   - 60.0 / (limit_per_minute * $2) AS wait
                     )
                     SELECT wait FROM paced
                     UNION ALL
                     SELECT CASE WHEN (limit_per_minute IS NULL OR limit_set_at IS NULL
                                       OR limit_set_at <= now() - make_interval(secs => $4))
                                  AND tat <= now() + make_interval(secs => $3)
                             THEN extract(epoch FROM tat - now())::double precision END
                     FROM dub_outbox_budget
                     WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM paced)",
                    )
                    .bind(&self.key)
                    .bind(PACE)
                    .bind(within)
                    .bind(LEARNED_FOR.as_secs_f64())
                    .fetch_optional(pool)
                    .await?;
                    match row {
                        None => Some(0.0),
                        Some(wait) => wait,
                    }
                }
            };
        if let Some(wait) = wait {
            return Ok(Turn::Go(seconds(wait)));
        }
        let next: Option<f64> = sqlx_core::query_scalar::query_scalar(
            "SELECT extract(epoch FROM greatest(tat, now()) - now())::double precision
             FROM dub_outbox_budget WHERE key = $1",
        )
        .bind(&self.key)
        .fetch_optional(pool)
        .await?;
        Ok(Turn::NotBefore(seconds(next.unwrap_or(0.0))))
    }

    /// Dub refused a request for the rate limit: no relay on the key gets a turn for `wait`
    /// (at most two minutes). `limit` is the key's limit the 429 named; a relay that was not
    /// given one writes it, so that every relay on the key paces by it from now on.
    pub async fn refused(
        &self,
        pool: &PgPool,
        wait: Duration,
        limit: Option<u64>,
    ) -> Result<(), sqlx_core::Error> {
        let learned = match self.given {
            Some(_) => None,
            None => limit.and_then(|l| i32::try_from(l).ok()).filter(|&l| l > 0),
        };
        sqlx_core::query::query::<Postgres>(
            "INSERT INTO dub_outbox_budget AS b (key, tat, limit_per_minute, limit_set_at)
             VALUES ($1, now() + make_interval(secs => $2), $3,
                     CASE WHEN $3::integer IS NULL THEN NULL ELSE now() END)
             ON CONFLICT (key) DO UPDATE
                 SET tat = greatest(b.tat, now() + make_interval(secs => $2)),
                     limit_per_minute = coalesce($3, b.limit_per_minute),
                     limit_set_at = CASE WHEN $3::integer IS NULL THEN b.limit_set_at
                                         ELSE now() END",
        )
        .bind(&self.key)
        .bind(wait.min(MAX_HOLD).as_secs_f64())
        .bind(learned)
        .execute(pool)
        .await?;
        Ok(())
    }
}
