//! Retry policy as data: when to try a call again, how long to wait, and when a retry is safe.
//!
//! # The safety rule
//!
//! A retry must never record a conversion twice. After an *ambiguous* failure (the request was
//! sent and then the connection broke, the attempt timed out, or the server answered 5xx) Dub
//! may already have recorded the event, so the call is retried only when Dub deduplicates it: a
//! lead that is not `deferred`, a sale with an invoice id. Failures that prove nothing was
//! processed (no connection, a 429, a sale's "Lead event not found" race) are retried for every
//! call; other 4xx for none. The table is in the [crate docs](crate#retries);
//! [`RetryConfig::with_retry_ambiguous`] opts in to retrying the rest at the risk of
//! double-counting.
//!
//! # The decision is a pure function
//!
//! [`RetryConfig::decide`] takes what an attempt saw ([`Seen`]), facts about the call
//! ([`Attempt`]: its number, the time elapsed, whether Dub deduplicates it) and a random number
//! for jitter, and returns a [`Decision`]: stop (with why) or retry after a delay at a cost to the
//! client's [`RetryBudget`]. The loop that sends requests only carries decisions out, so the
//! rule above can be (and is) checked exhaustively without a network:
//!
//! ```
//! use dub::retry::{Attempt, Decision, RetryConfig, Seen, Stop};
//! use std::time::Duration;
//!
//! let policy = RetryConfig::default();
//! let timed_out = Seen::NoResponse { timed_out: true };
//! // A sale without an invoice id may already be recorded: not retried.
//! let sale = Attempt::new(1, Duration::from_secs(1), false);
//! assert_eq!(policy.decide(&timed_out, &sale, 0.5), Decision::Stop(Stop::MayHaveBeenRecorded));
//! // With an invoice id Dub answers a second attempt with the first one's response: retried.
//! let invoiced = Attempt::new(1, Duration::from_secs(1), true);
//! assert!(matches!(policy.decide(&timed_out, &invoiced, 0.5), Decision::Retry { .. }));
//! ```
//!
//! # Where retries happen
//!
//! Exactly one layer retries: the generated client's `exec` hook in `transport/`, which owns
//! each HTTP exchange. reqwest's own retries (of HTTP/2 refused streams) are turned off on the
//! client this crate builds, so [`Error::attempts`](crate::Error::attempts) counts every request
//! that went out; a refused stream is classified as "never sent" here instead. A
//! `reqwest::Client` you pass with [`DubBuilder::http_client`](crate::DubBuilder::http_client)
//! keeps its own retry setting, whose retries the count cannot see.

mod backoff;
mod decision;
mod outage;

pub(crate) use backoff::Backoff;
pub use decision::{Attempt, Decision, Reason, Seen, Stop};
pub(crate) use outage::Outage;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How the backoff delay is randomised, so that clients failing together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly the backoff delay.
    None,
    /// Uniform in `[0, delay]` (AWS's "full jitter").
    Full,
    /// Uniform in `[delay / 2, delay]`: spread out, but never much sooner than planned.
    Equal,
}

/// When and how a call is retried. Set per client with
/// [`DubBuilder::retry_config`](crate::DubBuilder::retry_config), override per call with
/// [`TrackCall::retry_config`](crate::TrackCall::retry_config), and for a tracker's deliveries
/// with [`TrackerBuilder::retry_config`](crate::tracker::TrackerBuilder::retry_config).
///
/// The default makes at most 3 attempts (2 retries, as Stripe's and OpenAI's SDKs do) within
/// 30 seconds: 500 ms, then 1 s, doubling up to 10 s, with equal jitter; it retries 429, 500,
/// 502, 503 and 504, connection failures and a sale's "Lead event not found" race, under the
/// safety rule in the [module docs](self). The official Dub SDKs retry nothing by default; the
/// safety rule is what makes retrying by default harmless here.
///
/// Setters are `with_*`, getters are plain:
///
/// ```
/// use dub::{Jitter, RetryConfig};
/// use std::time::Duration;
///
/// let patient = RetryConfig::default()
///     .with_max_attempts(5)
///     .with_initial_interval(Duration::from_secs(1))
///     .with_max_interval(Duration::from_secs(20))
///     .with_max_elapsed_time(Duration::from_secs(120))
///     .with_jitter(Jitter::Full);
/// assert_eq!(patient.max_attempts(), 5);
/// assert_eq!(RetryConfig::none().max_attempts(), 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    max_attempts: u32,
    backoff: Backoff,
    max_elapsed_time: Option<Duration>,
    statuses: Vec<u16>,
    retry_connection_errors: bool,
    retry_ambiguous: bool,
    retry_lead_race: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::doubling(Duration::from_millis(500), Duration::from_secs(10)),
            max_elapsed_time: Some(Duration::from_secs(30)),
            statuses: vec![429, 500, 502, 503, 504],
            retry_connection_errors: true,
            retry_ambiguous: false,
            retry_lead_race: true,
        }
    }
}

impl RetryConfig {
    /// One attempt, no retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Attempts in all, the first included (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The delay before the first retry.
    pub fn with_initial_interval(mut self, interval: Duration) -> Self {
        self.backoff.initial = interval;
        self
    }

    /// The longest backoff between two attempts. A server's `Retry-After` is honoured beyond it
    /// when it fits in [`max_elapsed_time`](Self::max_elapsed_time), and capped by it when
    /// there is no deadline.
    pub fn with_max_interval(mut self, interval: Duration) -> Self {
        self.backoff.max = interval;
        self
    }

    /// The factor each delay grows by (values below 1, and NaN, count as 1).
    pub fn with_exponent(mut self, exponent: f64) -> Self {
        self.backoff.exponent = if exponent.is_finite() {
            exponent.max(1.0)
        } else if exponent == f64::INFINITY {
            f64::MAX
        } else {
            1.0
        };
        self
    }

    /// The deadline of the whole call, attempts, waits for the rate limiter and backoff
    /// together (default 30 s); `None` for no deadline beyond
    /// [`max_attempts`](Self::max_attempts) and the per-attempt timeout.
    pub fn with_max_elapsed_time(mut self, deadline: impl Into<Option<Duration>>) -> Self {
        self.max_elapsed_time = deadline.into();
        self
    }

    /// How delays are randomised.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.backoff.jitter = jitter;
        self
    }

    /// The HTTP statuses worth retrying (default 429, 500, 502, 503, 504). A 429 and other 4xx
    /// mean Dub processed nothing; a 5xx falls under the safety rule.
    pub fn with_retry_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Whether connection failures and attempt timeouts are retried (default true).
    pub fn with_retry_connection_errors(mut self, retry: bool) -> Self {
        self.retry_connection_errors = retry;
        self
    }

    /// Opt in to retrying calls Dub does not deduplicate (a sale without `invoice_id`, a
    /// `deferred` lead) after an ambiguous failure. This can record the event twice.
    pub fn with_retry_ambiguous(mut self, retry: bool) -> Self {
        self.retry_ambiguous = retry;
        self
    }

    /// Whether a sale refused with 404 "Lead event not found" is retried (default true). Dub
    /// records an `async` lead in the background, so a sale sent right after its customer's lead
    /// can be refused although the lead was accepted; the refused sale recorded nothing, so
    /// sending it again is safe. A lead sent with `mode: wait` avoids the race.
    pub fn with_retry_lead_race(mut self, retry: bool) -> Self {
        self.retry_lead_race = retry;
        self
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before the first retry.
    pub fn initial_interval(&self) -> Duration {
        self.backoff.initial
    }

    /// The longest backoff between two attempts.
    pub fn max_interval(&self) -> Duration {
        self.backoff.max
    }

    /// The factor each delay grows by.
    pub fn exponent(&self) -> f64 {
        self.backoff.exponent
    }

    /// The whole call's deadline.
    pub fn max_elapsed_time(&self) -> Option<Duration> {
        self.max_elapsed_time
    }

    /// How delays are randomised.
    pub fn jitter(&self) -> Jitter {
        self.backoff.jitter
    }

    /// The HTTP statuses worth retrying.
    pub fn retry_statuses(&self) -> &[u16] {
        &self.statuses
    }

    /// Whether connection failures and attempt timeouts are retried.
    pub fn retry_connection_errors(&self) -> bool {
        self.retry_connection_errors
    }

    /// Whether calls Dub does not deduplicate are retried after ambiguous failures.
    pub fn retry_ambiguous(&self) -> bool {
        self.retry_ambiguous
    }

    /// Whether a sale's "Lead event not found" race is retried.
    pub fn retry_lead_race(&self) -> bool {
        self.retry_lead_race
    }

    /// The backoff before retry number `retry` (1 for the first retry), jittered with `unit`,
    /// a number in `[0, 1)`.
    pub(crate) fn backoff(&self, retry: u32, unit: f64) -> Duration {
        self.backoff.delay(retry, unit)
    }
}

/// A retry budget shared by every call of one client: a token bucket that stops retries when
/// most recent calls are failing, so an outage does not multiply the load on Dub.
///
/// Each retry withdraws tokens (5, or 10 after a timeout); each call that succeeds returns 1,
/// and a success after retries returns what its last retry cost. A retry that is never made (the
/// call was dropped during its backoff, or its deadline came first) gives its tokens back. With
/// the default 500 tokens a client may spend about 100 retries in a burst of failures before it
/// stops retrying until calls succeed again (the scheme of the AWS SDKs).
///
/// ```
/// use dub::RetryBudget;
/// let budget = RetryBudget::new(100); // fewer retries in an outage
/// let unlimited = RetryBudget::unlimited();
/// assert_eq!(budget.available(), Some(100));
/// assert_eq!(unlimited.available(), None);
/// ```
#[derive(Debug, Clone)]
pub struct RetryBudget {
    inner: Option<Arc<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    capacity: u64,
    tokens: AtomicU64,
}

pub(crate) const RETRY_COST: u64 = 5;
pub(crate) const TIMEOUT_RETRY_COST: u64 = 10;

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(500)
    }
}

impl RetryBudget {
    /// A bucket of `capacity` tokens, full.
    pub fn new(capacity: u64) -> Self {
        Self {
            inner: Some(Arc::new(Bucket {
                capacity,
                tokens: AtomicU64::new(capacity),
            })),
        }
    }

    /// No budget: every retry the policy allows is made.
    pub fn unlimited() -> Self {
        Self { inner: None }
    }

    /// Tokens left, or `None` for an unlimited budget.
    pub fn available(&self) -> Option<u64> {
        self.inner
            .as_ref()
            .map(|b| b.tokens.load(Ordering::Relaxed))
    }

    /// The bucket's size, or `None` for an unlimited budget.
    pub fn capacity(&self) -> Option<u64> {
        self.inner.as_ref().map(|b| b.capacity)
    }

    /// Takes `cost` tokens if there are that many. The tokens come back when the returned
    /// withdrawal is dropped before [`Withdrawal::spend`] (the retry was never sent).
    pub(crate) fn try_withdraw(&self, cost: u64) -> Option<Withdrawal> {
        if let Some(b) = &self.inner {
            b.tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(cost))
                .ok()?;
        }
        Some(Withdrawal {
            budget: self.clone(),
            cost,
        })
    }

    pub(crate) fn deposit(&self, amount: u64) {
        if let Some(b) = &self.inner {
            let _ = b
                .tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(t.saturating_add(amount).min(b.capacity))
                });
        }
    }
}

/// Tokens taken for one retry, given back unless the retry is sent.
#[derive(Debug)]
#[must_use]
pub(crate) struct Withdrawal {
    budget: RetryBudget,
    cost: u64,
}

impl Withdrawal {
    /// The retry is being sent: the tokens are spent. Returns their number, which a success
    /// later returns to the budget.
    pub(crate) fn spend(mut self) -> u64 {
        std::mem::take(&mut self.cost)
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        if self.cost > 0 {
            self.budget.deposit(self.cost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let c = RetryConfig::default().with_jitter(Jitter::None);
        let ms: Vec<u128> = (1..=7).map(|n| c.backoff(n, 0.5).as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 10000, 10000]);
        let full = RetryConfig::default().with_jitter(Jitter::Full);
        assert_eq!(full.backoff(2, 0.0), Duration::ZERO);
        let equal = RetryConfig::default().with_jitter(Jitter::Equal);
        assert_eq!(equal.backoff(2, 0.0), Duration::from_millis(500));
        assert!(
            RetryConfig::default()
                .with_exponent(f64::NAN)
                .backoff(9, 0.99)
                .as_millis()
                <= 500
        );
        let huge = RetryConfig::default()
            .with_jitter(Jitter::None)
            .with_exponent(f64::INFINITY)
            .with_max_interval(Duration::MAX)
            .with_initial_interval(Duration::MAX);
        assert_eq!(huge.backoff(u32::MAX, f64::NAN), Duration::MAX);
        for jitter in [Jitter::Full, Jitter::Equal] {
            for unit in [0.0, 0.5, 1.0, f64::NAN, f64::INFINITY, -1.0] {
                let d = huge.clone().with_jitter(jitter).backoff(u32::MAX, unit);
                assert!(d <= Duration::MAX, "{jitter:?} {unit}");
            }
        }
    }

    #[test]
    fn budget_drains_refills_and_refunds_unsent_retries() {
        let b = RetryBudget::new(10);
        let first = b.try_withdraw(5).unwrap();
        let second = b.try_withdraw(5).unwrap();
        assert!(b.try_withdraw(5).is_none());
        drop(first); // never sent: refunded
        assert_eq!(b.available(), Some(5));
        assert_eq!(second.spend(), 5); // sent: kept
        assert_eq!(b.available(), Some(5));
        b.deposit(100);
        assert_eq!(b.available(), Some(10));
        assert!(RetryBudget::unlimited().try_withdraw(u64::MAX).is_some());
    }
}
