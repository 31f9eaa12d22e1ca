//! One rate-limit budget shared by every relay on an API key, kept in the database: GCRA in one
//! row, so that N relays pace together at the key's limit instead of N times it.

use crate::Dub;
use sha2::{Digest, Sha256};
use sqlx_postgres::{PgPool, Postgres};
use std::time::Duration;

/// The share of the limit the relays use: Dub refuses at the limit itself, and other users of
/// the key (link API calls, another app) are invisible to the shared row.
const PACE: f64 = 0.97;

/// A key's shared budget: the row's key and the spacing of turns.
#[derive(Debug, Clone)]
pub(crate) struct SharedBudget {
    key: String,
    interval: Duration,
}

impl SharedBudget {
    /// The budget of `dub`'s API key at `per_minute` requests a minute; `None` for a client
    /// without a usable key.
    pub fn new(dub: &Dub, per_minute: u32) -> Option<SharedBudget> {
        let auth = dub.authorization()?;
        let digest = Sha256::digest(auth.as_bytes());
        let key = digest.iter().map(|b| format!("{b:02x}")).collect();
        let per_second = f64::from(per_minute.max(1)) * PACE / 60.0;
        Some(SharedBudget {
            key,
            interval: Duration::from_secs_f64(1.0 / per_second),
        })
    }

    /// Reserves the next turn if it comes within `within`, and returns how long to wait for it;
    /// `None` (nothing reserved) when the next turn is later. One statement: the row lock orders
    /// concurrent relays, and each turn is `interval` after the one before. A turn is never
    /// reserved for an attempt that will not take it: while a 429 holds the key back for longer
    /// than an attempt may wait, every attempt would otherwise push the next turn further out,
    /// and a fleet retrying its attempts could keep it out of reach.
    pub async fn turn(
        &self,
        pool: &PgPool,
        within: Duration,
    ) -> Result<Option<Duration>, sqlx_core::Error> {
        let wait: Option<f64> = sqlx_core::query_scalar::query_scalar(
            "INSERT INTO dub_outbox_budget AS b (key, tat)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (key) DO UPDATE
                 SET tat = greatest(b.tat, now()) + make_interval(secs => $2)
                 WHERE greatest(b.tat, now()) <= now() + make_interval(secs => $3)
             RETURNING extract(epoch FROM b.tat - make_interval(secs => $2) - now())::double precision",
        )
        .bind(&self.key)
        .bind(self.interval.as_secs_f64())
        .bind(within.min(Duration::from_secs(3600)).as_secs_f64())
        .fetch_optional(pool)
        .await?;
        Ok(wait.map(|w| Duration::try_from_secs_f64(w).unwrap_or(Duration::ZERO)))
    }

    /// Dub refused a request for the rate limit: no relay on the key gets a turn for `wait`.
    pub async fn hold(&self, pool: &PgPool, wait: Duration) -> Result<(), sqlx_core::Error> {
        let wait = wait.min(Duration::from_secs(120));
        sqlx_core::query::query::<Postgres>(
            "UPDATE dub_outbox_budget SET tat = greatest(tat, now() + make_interval(secs => $2))
             WHERE key = $1",
        )
        .bind(&self.key)
        .bind(wait.as_secs_f64())
        .execute(pool)
        .await?;
        Ok(())
    }
}
