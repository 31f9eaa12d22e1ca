//! The relay: claims rows under a lease, delivers them with a [`Dub`] client, writes what
//! became of each, and keeps going through Dub's outages and the database's.

use super::budget::{SharedBudget, Turn};
use super::lease::{self, Claimed, Write};
use super::verdict::{self, Row};
use super::{CHANNEL, Event};
use crate::retry::{Backoff, Outage};
use crate::tracker::decision::Settings;
use crate::{Dub, Error, ErrorKind, RetryConfig};
use sqlx_postgres::{PgListener, PgPool};
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Delivers an outbox to Dub until told to stop: any number of relays, on any number of
/// machines, share one outbox.
///
/// Each relay claims due rows with `FOR UPDATE SKIP LOCKED` under a lease, a customer's events
/// in insertion order (only a customer's oldest unfinished event can be claimed), different
/// customers concurrently, and writes every outcome to its row: `delivered` with Dub's
/// `response`, `failed` or `uncertain` with `last_error`. An event Dub deduplicates is sent
/// again after a failure, once its earlier attempt cannot be running any more; one Dub does not
/// deduplicate is never sent twice: if an attempt's outcome is unknown it ends `uncertain`.
/// A relay killed mid-delivery loses nothing: once its lease runs out, the others take its
/// rows over by the same rule.
///
/// It wakes on the outbox's notifications (`LISTEN dub_outbox`) and polls as well, so a lost
/// notification costs at most one poll interval. When PostgreSQL is unreachable it waits and
/// reconnects with backoff, never marking an event failed for it, and writes the outcomes it
/// holds once the database is back.
///
/// ```no_run
/// # mod sqlx { pub use sqlx_postgres::PgPool; }
/// use dub::Dub;
/// use dub::outbox::Relay;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
/// dub::outbox::migrate(&pool).await?;
/// let dub = Dub::from_env()?; // DUB_API_KEY
/// let report = Relay::builder(pool, dub)
///     .max_in_flight(16)
///     .build()
///     .run_until(async { tokio::signal::ctrl_c().await.unwrap_or(()) })
///     .await;
/// println!("delivered {}", report.delivered);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Relay {
    pool: PgPool,
    dub: Dub,
    config: Config,
}

#[derive(Debug, Clone)]
struct Config {
    name: String,
    max_in_flight: usize,
    lease: Duration,
    poll_interval: Duration,
    /// The tracker's decision's settings, with the relay's settle window and `Retry-After`.
    settings: Settings,
    budget: Option<SharedBudget>,
    retention: Option<Duration>,
}

/// How a [`Relay`] is set up: [`Relay::builder`].
#[derive(Debug)]
#[must_use]
pub struct RelayBuilder {
    pool: PgPool,
    dub: Dub,
    config: Config,
    shared_rate_limit: Option<u32>,
}

/// The longest wait between attempts to reach PostgreSQL while it is away.
const MAX_DATABASE_BACKOFF: Duration = Duration::from_secs(30);
/// How often rows of relays that are gone are looked for.
const TAKE_OVER_EVERY: Duration = Duration::from_secs(5);
/// How long a claimed row stays its relay's by default: with a look for rows of relays that are
/// gone every [`TAKE_OVER_EVERY`], a killed relay's rows are taken over within a minute of its
/// claim (50 + 5 s), so within a minute of its death.
const DEFAULT_LEASE: Duration = Duration::from_secs(50);
/// How often delivered rows past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Relay {
    /// A relay delivering the outbox in `pool`'s database with `dub` (its token, base URL and
    /// rate limiter). The client's own retries are not used: each attempt is one request, and
    /// retries go through the table, where every relay sees them.
    pub fn builder(pool: PgPool, dub: Dub) -> RelayBuilder {
        let name = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".to_owned()),
            std::process::id(),
            fastrand::u32(..)
        );
        RelayBuilder {
            pool,
            dub,
            config: Config {
                name,
                max_in_flight: 16,
                lease: DEFAULT_LEASE,
                poll_interval: Duration::from_secs(1),
                settings: Settings {
                    max_age: Duration::from_secs(6 * 3600),
                    backoff: Backoff::doubling(Duration::from_secs(1), Duration::from_secs(300)),
                    settle: crate::DEFAULT_ATTEMPT_TIMEOUT,
                    honour_retry_after: true,
                },
                budget: None,
                retention: Some(super::DEFAULT_RETENTION),
            },
            shared_rate_limit: None,
        }
    }
}

impl RelayBuilder {
    /// At most this many deliveries at once (16 by default, at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.max_in_flight = n.max(1);
        self
    }

    /// How long a claimed row stays this relay's (50 s by default, at least 2 s): if the relay
    /// dies, the others take its rows over once this has passed (they look every 5 s, so
    /// within a minute by default). Every attempt is cut off at
    /// half of it, so that it is over before anyone else may start one.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease.max(Duration::from_secs(2));
        self
    }

    /// How often the outbox is polled when no notification arrives (1 s by default).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.config.poll_interval = every.max(Duration::from_millis(10));
        self
    }

    /// The first and the longest wait before an event is retried (1 s and 5 min by default).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.settings.backoff = Backoff::doubling(initial, max.max(initial));
        self
    }

    /// How long an event is retried before it is given up (6 hours by default): then it ends
    /// `failed`, or `uncertain` if an attempt may have reached Dub.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.config.settings.max_age = age;
        self
    }

    /// How long to wait after an attempt whose outcome is unknown before an event Dub
    /// deduplicates is sent again (by default the client's default attempt timeout, 10 s): the
    /// earlier attempt may still be running at Dub, and Dub's invoice check is read-then-write,
    /// so two overlapping attempts of one invoice would both be recorded. Make it at least
    /// your client's attempt timeout.
    pub fn settle(mut self, wait: Duration) -> Self {
        self.config.settings.settle = wait;
        self
    }

    /// How long delivered rows are kept before the relay deletes them (`None`: never; by
    /// default [`DEFAULT_RETENTION`](super::DEFAULT_RETENTION), 30 days). Every relay prunes
    /// at start and hourly; deleting is idempotent, so several relays pruning at once is fine.
    pub fn retention(mut self, keep: Option<Duration>) -> Self {
        self.config.retention = keep;
        self
    }

    /// The name this relay writes into `locked_by` (by default `$HOSTNAME-pid-random`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Paces every relay on this client's API key together at `per_minute` requests a minute
    /// (the key's limit; they use 97% of it), from one budget row in the database: N relays
    /// then send `per_minute` a minute together, not N times that, and a 429 seen by one holds
    /// them all back. The row is keyed by a SHA-256 of the API key; the key never enters the
    /// database. The client's own rate limiter stays the safety net for other users of the key.
    ///
    /// Without it the relays learn the limit together: they send unpaced until Dub refuses one
    /// of them with a 429 naming the limit (`X-RateLimit-Limit`; Dub sends it only with
    /// errors), which that relay writes into the row, and from then on every relay on the key
    /// paces by it as if it had been given. A relay given the limit writes it there too, so
    /// relays started without it follow. Give every relay on a key the same limit.
    pub fn shared_rate_limit(mut self, per_minute: u32) -> Self {
        self.shared_rate_limit = Some(per_minute);
        self
    }

    /// The relay, ready to run.
    pub fn build(self) -> Relay {
        let mut config = self.config;
        config.budget = SharedBudget::new(&self.dub, self.shared_rate_limit);
        Relay {
            pool: self.pool,
            dub: self.dub,
            config,
        }
    }
}

/// What one relay did while it ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayReport {
    /// Events it delivered.
    pub delivered: u64,
    /// Events it ended `failed`.
    pub failed: u64,
    /// Events it ended `uncertain`.
    pub uncertain: u64,
    /// Attempts that failed and were put back to be retried.
    pub retried: u64,
    /// Rows of relays that were gone that it took over.
    pub taken_over: u64,
    /// Delivered rows past their retention that it deleted.
    pub pruned: u64,
    /// Outcomes it could not write before it stopped (the database stayed away): those rows
    /// are taken over by another relay once their lease runs out.
    pub unwritten: u64,
}

/// PostgreSQL's availability as the relay sees it: after an error, nothing is tried before
/// `retry_at`, with a doubling wait.
#[derive(Debug, Default)]
struct Database {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Database {
    fn failed(&mut self, what: &str, e: &sqlx_core::Error) {
        self.failures = self.failures.saturating_add(1);
        let doubling = 1u32
            .checked_shl(self.failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let wait = Duration::from_millis(200)
            .saturating_mul(doubling)
            .min(MAX_DATABASE_BACKOFF);
        tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "dub relay: cannot {what}; waiting for PostgreSQL");
        self.retry_at = Some(Instant::now() + wait);
    }

    fn worked(&mut self) {
        if self.failures > 0 {
            tracing::info!("dub relay: PostgreSQL is back");
        }
        *self = Database::default();
    }

    fn ready(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }
}

/// One finished attempt.
struct Attempted {
    id: i64,
    write: Write,
    /// `Some(true)`: failed for an outage; `Some(false)`: Dub answered; `None`: not sent.
    outage: Option<bool>,
}

impl Relay {
    /// Delivers until `shutdown` completes, then stops claiming, lets the attempts in flight
    /// finish, writes their outcomes and returns what it did. Never fails: database and Dub
    /// troubles are waited out (and logged with `tracing`).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> RelayReport {
        let Relay { pool, dub, config } = self;
        let mut report = RelayReport::default();
        // Each attempt with whether it was started as a probe of an outage.
        let mut deliveries: JoinSet<(bool, Attempted)> = JoinSet::new();
        let mut unwritten: Vec<(i64, Write, Option<bool>)> = Vec::new();
        let mut db = Database::default();
        let mut outage = Outage::new("dub relay");
        let mut listener: Option<PgListener> = None;
        let mut next_take_over = Instant::now();
        let mut next_prune = Instant::now();
        let mut stopping_since: Option<Instant> = None;
        let mut shutdown = std::pin::pin!(shutdown);

        loop {
            let now = Instant::now();
            // Outcomes first: a row stays this relay's until its outcome is written.
            if !unwritten.is_empty() && db.ready(now) {
                let mut still = Vec::new();
                for (id, write, down) in std::mem::take(&mut unwritten) {
                    if !db.ready(Instant::now()) {
                        still.push((id, write, down));
                        continue;
                    }
                    match lease::write(&pool, &config.name, id, &write).await {
                        Ok(written) => {
                            db.worked();
                            if written {
                                count(&mut report, &write);
                            } else {
                                tracing::warn!(
                                    id,
                                    "dub relay: the row was taken over before its outcome was written"
                                );
                            }
                        }
                        Err(e) => {
                            db.failed("write an outcome", &e);
                            still.push((id, write, down));
                        }
                    }
                }
                unwritten = still;
            }
            if let Some(since) = stopping_since {
                if deliveries.is_empty() && unwritten.is_empty() {
                    break;
                }
                if deliveries.is_empty() && since.elapsed() >= config.lease {
                    report.unwritten = unwritten.len() as u64;
                    tracing::error!(
                        unwritten = unwritten.len(),
                        "dub relay: stopping without writing some outcomes (PostgreSQL is away); \
                         their rows are taken over once their lease runs out"
                    );
                    break;
                }
            }

            let now = Instant::now();
            if stopping_since.is_none() && db.ready(now) {
                if now >= next_take_over {
                    match lease::take_over_expired(&pool, config.settings.settle).await {
                        Ok(n) => {
                            db.worked();
                            report.taken_over += n;
                            next_take_over = now + TAKE_OVER_EVERY;
                        }
                        Err(e) => db.failed("take over expired leases", &e),
                    }
                }
                if let Some(keep) = config.retention
                    && now >= next_prune
                    && db.ready(Instant::now())
                {
                    match super::prune(&pool, keep).await {
                        Ok(n) => {
                            db.worked();
                            report.pruned += n;
                            next_prune = now + PRUNE_EVERY;
                        }
                        Err(super::OutboxError::Database(e)) => db.failed("prune", &e),
                        Err(e) => {
                            tracing::warn!(error = %e, "dub relay: cannot prune");
                            next_prune = now + PRUNE_EVERY;
                        }
                    }
                }
                if listener.is_none() && db.ready(Instant::now()) {
                    listener = listen(&pool).await;
                }
            }

            // Claim what there is room for.
            let mut claimed_full = false;
            if stopping_since.is_none() && db.ready(Instant::now()) {
                let free = config.max_in_flight.saturating_sub(deliveries.len());
                let n = outage.allowed(Instant::now(), free, deliveries.len());
                if n > 0 {
                    match lease::claim(&pool, &config.name, n, config.lease).await {
                        Ok(rows) => {
                            db.worked();
                            claimed_full = rows.len() == n;
                            for row in rows {
                                let probe = outage.probing();
                                let attempt =
                                    attempt(dub.clone(), pool.clone(), row, config.clone());
                                deliveries.spawn(async move { (probe, attempt.await) });
                            }
                        }
                        Err(e) => db.failed("claim events", &e),
                    }
                }
            }
            if claimed_full && deliveries.len() < config.max_in_flight {
                continue;
            }

            // Wait for something to do.
            let wake_at = match db.retry_at {
                Some(at) => at.max(Instant::now() + Duration::from_millis(10)),
                None => Instant::now() + config.poll_interval,
            };
            let wake_at = match outage.paused_until() {
                Some(until) if until > Instant::now() => wake_at.min(until),
                _ => wake_at,
            };
            tokio::select! {
                Some(done) = deliveries.join_next(), if !deliveries.is_empty() => {
                    let Ok((probe, done)) = done else { continue };
                    match done.outage {
                        Some(true) => outage.failed(Instant::now(), probe, done.write.error()),
                        Some(false) => outage.cleared(),
                        None => {}
                    }
                    unwritten.push((done.id, done.write, done.outage));
                }
                notified = notification(&mut listener) => {
                    if notified.is_err() {
                        // Polling covers the gap; listen again once the database answers.
                        listener = None;
                    }
                }
                () = tokio::time::sleep_until(wake_at) => {}
                () = &mut shutdown, if stopping_since.is_none() => {
                    stopping_since = Some(Instant::now());
                }
            }
        }
        report
    }
}

fn count(report: &mut RelayReport, write: &Write) {
    match write {
        Write::Delivered(_) => report.delivered += 1,
        Write::Failed(_) => report.failed += 1,
        Write::Uncertain(_) => report.uncertain += 1,
        Write::Retry { .. } => report.retried += 1,
        Write::Unsent { .. } => {}
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(CHANNEL).await.ok()?;
    Some(listener)
}

/// The next notification, or never without a listener.
async fn notification(listener: &mut Option<PgListener>) -> Result<(), sqlx_core::Error> {
    match listener {
        Some(l) => l.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// One attempt of one row: read the record, check it, send it once, judge the result.
async fn attempt(dub: Dub, pool: PgPool, row: Claimed, config: Config) -> Attempted {
    // Every attempt is over by half the lease, well before anyone may take the row over.
    let cut_at = Instant::now() + config.lease / 2;
    let id = row.id;
    let failed = |text: String| Attempted {
        id,
        write: Write::Failed(text),
        outage: None,
    };
    let event: Event = match serde_json::from_value(row.event.clone()) {
        Ok(event) => event,
        Err(e) => return failed(unreadable(&row.event, &e)),
    };
    if let Err(e) = event.validate() {
        return failed(e.to_string());
    }
    if let Some(budget) = &config.budget
        && let Err(after) = take_turn(budget, &pool, cut_at, config.settings.settle).await
    {
        // Nothing was sent: back to the queue until the turn could come.
        return Attempted {
            id,
            write: Write::Unsent { after },
            outage: None,
        };
    }
    // One request per attempt; the client's limiter may hold it back, but not past the cut.
    let policy = RetryConfig::none()
        .with_max_elapsed_time(cut_at.saturating_duration_since(Instant::now()) * 2 / 3);
    let dedup = event.is_deduplicated();
    let call = async {
        match event {
            Event::Lead(r) => dub
                .track()
                .lead(r)
                .retry_config(policy)
                .await
                .map(|r| serde_json::to_value(r).unwrap_or_default()),
            Event::Sale(r) => dub
                .track()
                .sale(r)
                .retry_config(policy)
                .await
                .map(|r| serde_json::to_value(r).unwrap_or_default()),
        }
    };
    let result = match tokio::time::timeout_at(cut_at, call).await {
        Ok(result) => result,
        Err(_) => {
            let mut e = Error::cut_off();
            e.inner_mut().message =
                Some("the relay cut this attempt off at half its lease while in flight".into());
            Err(e)
        }
    };
    let error = match result {
        Ok(response) => {
            return Attempted {
                id,
                write: Write::Delivered(response),
                outage: Some(false),
            };
        }
        Err(e) => e,
    };
    if error.kind() == ErrorKind::RateLimitExceeded
        && error.status().is_none()
        && !error.may_have_been_recorded()
    {
        // The client's own limiter had no turn for it before the attempt's deadline: nothing
        // was sent. Back to the queue as after a refused turn of the shared budget, due at the
        // limiter's next turn; not after a backoff that doubles with every such attempt, which
        // would leave events of a busy key waiting minutes while turns go unused.
        return Attempted {
            id,
            write: Write::Unsent {
                after: error
                    .retry_after()
                    .unwrap_or_default()
                    .max(config.settings.backoff.initial),
            },
            outage: None,
        };
    }
    if let Some(budget) = &config.budget
        && error.status().is_some_and(|s| s.as_u16() == 429)
    {
        let wait = error.retry_after().unwrap_or(Duration::from_secs(1));
        let limit = error.headers().and_then(crate::rate_limit::limit);
        if let Err(e) = budget.refused(&pool, wait, limit).await {
            tracing::warn!(error = %e, "dub relay: cannot hold the shared budget back after a 429");
        }
    }
    let (write, outage) = verdict::judge(
        Row {
            // Both the database's key and the crate's rule must agree: when unsure, never resend.
            dedup: row.dedup && dedup,
            maybe_sent: row.maybe_sent,
            attempts: row.attempts,
            age: row.age,
        },
        error,
        &config.settings,
        fastrand::f64(),
    );
    Attempted { id, write, outage }
}

/// Why a record is not an event, naming the field when serde's message does not: each field is
/// tried alone beside `type`, and the first that fails other than by leaving a field missing is
/// the culprit (serde stops at the first bad field, and reports missing ones only at the end).
fn unreadable(record: &serde_json::Value, e: &serde_json::Error) -> String {
    if let Some(fields) = record.as_object() {
        for (name, value) in fields.iter().filter(|(name, _)| *name != "type") {
            let mut alone = serde_json::Map::new();
            if let Some(kind) = fields.get("type") {
                alone.insert("type".to_owned(), kind.clone());
            }
            alone.insert(name.clone(), value.clone());
            if let Err(e) = serde_json::from_value::<Event>(serde_json::Value::Object(alone))
                && !e.to_string().starts_with("missing field")
            {
                return format!("invalid record: {name}: {e}");
            }
        }
    }
    format!("invalid record: {e}")
}

/// Waits for this attempt's turn in the shared budget; when none comes in time, nothing is sent,
/// no turn is taken from the others, and the row is due again when the next could come
/// (returned).
///
/// A turn must leave the request its whole attempt timeout (`margin`) before the cut: one
/// taken at the edge would be sent with milliseconds left, time out, and count as possibly
/// recorded (an event Dub does not deduplicate would end uncertain for nothing).
async fn take_turn(
    budget: &SharedBudget,
    pool: &PgPool,
    cut_at: Instant,
    margin: Duration,
) -> Result<(), Duration> {
    loop {
        let left = cut_at.saturating_duration_since(Instant::now());
        let within = left.saturating_sub(margin).max(left / 2);
        match budget.turn(pool, within).await {
            Ok(Turn::Go(wait)) => {
                tokio::time::sleep(wait).await;
                return Ok(());
            }
            Ok(Turn::NotBefore(next)) => return Err(next.max(Duration::from_millis(100))),
            Err(e) if schema_too_old(&e) => {
                // Pacing is a courtesy to Dub, not a condition of delivery: send unpaced (the
                // client's own limiter still reacts to 429s) and say how to fix it.
                static SAID: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::error!(
                        error = %e,
                        "dub relay: the outbox schema is older than this relay (run \
                         `dub-track outbox migrate` or `dub::outbox::migrate`); sending \
                         without the shared rate-limit budget meanwhile"
                    );
                }
                return Ok(());
            }
            Err(e) => {
                let pause = Duration::from_millis(500);
                if Instant::now() + pause >= cut_at {
                    tracing::warn!(error = %e, "dub relay: cannot take a turn in the shared rate-limit budget; the event waits");
                    return Err(Duration::from_secs(1));
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// An error of a database that lacks the budget's table or columns (SQLSTATE 42P01, 42703):
/// one migrated by an older version of this crate.
fn schema_too_old(e: &sqlx_core::Error) -> bool {
    matches!(e, sqlx_core::Error::Database(db)
        if matches!(db.code().as_deref(), Some("42P01" | "42703")))
}
