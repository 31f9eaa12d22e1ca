//! Retry policy as data: when to try a call again, how long to wait, and when a retry is safe.
//!
//! # The safety rule
//!
//! A retry must never record a conversion twice. After an *ambiguous* failure (the request was
//! sent and then the connection broke, the attempt timed out, or the server answered 5xx) Dub
//! may already have recorded the event, so the call is retried only when Dub deduplicates it:
//!
//! | call | retried after an ambiguous failure? |
//! |---|---|
//! | sale with `invoice_id` | yes: Dub returns the first response for an invoice id |
//! | sale without `invoice_id` | no, unless [`RetryConfig::retry_ambiguous`] opts in |
//! | lead, mode `async`/`wait` | yes: Dub dedups a customer's event name for 7 days |
//! | lead, mode `deferred` | no, unless [`RetryConfig::retry_ambiguous`] opts in |
//!
//! Failures that prove nothing was processed are retried for every call: a connection that
//! never opened (refused, DNS, TLS handshake) and a 429.
//!
//! # Where retries happen
//!
//! Exactly one layer retries: the [`progenitor_client::ClientHooks::exec`] hook in
//! `transport.rs`, which owns each HTTP exchange of the generated client. It sees the status and
//! headers of every attempt (for Retry-After) and hands the generated code only the final
//! response, so decoding happens once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

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
/// `.retries(..)`.
///
/// The default makes at most 3 attempts (2 retries, as Stripe's and OpenAI's SDKs do) within
/// 30 seconds: 500 ms, then 1 s, doubling up to 10 s, with equal jitter; it retries 429, 500,
/// 502, 503 and 504 and connection failures, under the safety rule in the
/// [module docs](self). The official Dub SDKs retry nothing by default; the safety rule is what
/// makes retrying by default harmless here.
///
/// ```
/// use dub::{Jitter, RetryConfig};
/// use std::time::Duration;
///
/// let patient = RetryConfig::default()
///     .max_attempts(5)
///     .initial_interval(Duration::from_secs(1))
///     .max_interval(Duration::from_secs(20))
///     .max_elapsed_time(Duration::from_secs(120))
///     .jitter(Jitter::Full);
/// let never = RetryConfig::none();
/// assert_eq!(never.get_max_attempts(), 1);
/// # let _ = patient;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    max_attempts: u32,
    initial_interval: Duration,
    max_interval: Duration,
    exponent: f64,
    max_elapsed_time: Option<Duration>,
    jitter: Jitter,
    statuses: Vec<u16>,
    retry_connection_errors: bool,
    retry_ambiguous: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(10),
            exponent: 2.0,
            max_elapsed_time: Some(Duration::from_secs(30)),
            jitter: Jitter::Equal,
            statuses: vec![429, 500, 502, 503, 504],
            retry_connection_errors: true,
            retry_ambiguous: false,
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
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The delay before the first retry.
    pub fn initial_interval(mut self, interval: Duration) -> Self {
        self.initial_interval = interval;
        self
    }

    /// The longest delay between two attempts; also caps what Retry-After can ask for.
    pub fn max_interval(mut self, interval: Duration) -> Self {
        self.max_interval = interval;
        self
    }

    /// The factor each delay grows by (values below 1 count as 1).
    pub fn exponent(mut self, exponent: f64) -> Self {
        self.exponent = if exponent.is_finite() {
            exponent.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// The deadline for the whole call, attempts and waits together; `None` for no deadline
    /// beyond [`max_attempts`](Self::max_attempts) and the per-attempt timeout.
    pub fn max_elapsed_time(mut self, deadline: impl Into<Option<Duration>>) -> Self {
        self.max_elapsed_time = deadline.into();
        self
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The HTTP statuses worth retrying (default 429, 500, 502, 503, 504). A 429 is always
    /// safe to retry; the others fall under the safety rule.
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Whether connection failures and attempt timeouts are retried (default true).
    pub fn retry_connection_errors(mut self, retry: bool) -> Self {
        self.retry_connection_errors = retry;
        self
    }

    /// Opt in to retrying calls Dub does not deduplicate (a sale without `invoice_id`, a
    /// `deferred` lead) after an ambiguous failure. This can record the event twice.
    pub fn retry_ambiguous(mut self, retry: bool) -> Self {
        self.retry_ambiguous = retry;
        self
    }

    /// Attempts in all.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The whole call's deadline.
    pub fn get_max_elapsed_time(&self) -> Option<Duration> {
        self.max_elapsed_time
    }

    pub(crate) fn retries_status(&self, status: StatusCode) -> bool {
        self.statuses.contains(&status.as_u16())
    }

    pub(crate) fn retries_connection_errors(&self) -> bool {
        self.retry_connection_errors
    }

    pub(crate) fn retries_ambiguous(&self) -> bool {
        self.retry_ambiguous
    }

    pub(crate) fn get_max_interval(&self) -> Duration {
        self.max_interval
    }

    /// The wait before retry number `retry` (1 for the first retry), before jitter and caps.
    fn base_delay(&self, retry: u32) -> Duration {
        let factor = self
            .exponent
            .powi(retry.saturating_sub(1).min(1_000) as i32);
        let secs = self.initial_interval.as_secs_f64() * factor;
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_interval)
            .min(self.max_interval)
    }

    /// The wait before retry number `retry`, jittered with `unit`, a number in `[0, 1)`.
    pub(crate) fn delay(&self, retry: u32, unit: f64) -> Duration {
        let d = self.base_delay(retry);
        match self.jitter {
            Jitter::None => d,
            Jitter::Full => d.mul_f64(unit),
            Jitter::Equal => d / 2 + (d / 2).mul_f64(unit),
        }
    }
}

/// Reads how long the server asked to wait: `retry-after-ms`, else `Retry-After` as seconds,
/// an HTTP date, or (what Dub actually sends) a Unix timestamp in milliseconds. Garbage,
/// negative values and moments in the past yield `None`.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|t| t.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = text("retry-after")?;
    if let Ok(n) = value.parse::<u64>() {
        // Seconds are small; Dub's millisecond timestamps are past 2001 (10^12 ms).
        if n < 1_000_000_000_000 {
            return Some(Duration::from_secs(n));
        }
        let at = UNIX_EPOCH.checked_add(Duration::from_millis(n))?;
        return at.duration_since(now).ok();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok()
}

/// A retry budget shared by every call of one client: a token bucket that stops retries when
/// most recent calls are failing, so an outage does not multiply the load on Dub.
///
/// Each retry withdraws tokens (5, or 10 after a timeout); each call that succeeds returns 1,
/// and a success after retries returns what its last retry cost. With the default 500 tokens a
/// client may spend about 100 retries in a burst of failures before it stops retrying until
/// calls succeed again (the scheme of the AWS SDKs).
///
/// ```
/// use dub::RetryBudget;
/// let budget = RetryBudget::new(100); // fewer retries in an outage
/// let unlimited = RetryBudget::unlimited();
/// # let _ = (budget, unlimited);
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

    /// Takes `cost` tokens if there are that many.
    pub(crate) fn try_withdraw(&self, cost: u64) -> bool {
        let Some(b) = &self.inner else { return true };
        b.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(cost))
            .is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |n, v| retry_after(&headers(n, v), now);
        assert_eq!(
            at("retry-after-ms", "1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(at("retry-after", "7"), Some(Duration::from_secs(7)));
        assert_eq!(
            at("retry-after", "1800000003000"),
            Some(Duration::from_secs(3))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(9));
        assert_eq!(at("retry-after", &date), Some(Duration::from_secs(9)));
        for garbage in ["-3", "soon", "", "1e9999", "1799999999000"] {
            assert_eq!(at("retry-after", garbage), None, "{garbage:?}");
        }
        assert_eq!(at("retry-after-ms", "-5"), None);
    }

    #[test]
    fn delays_grow_and_cap() {
        let c = RetryConfig::default().jitter(Jitter::None);
        let d: Vec<_> = (1..=7).map(|n| c.delay(n, 0.5)).collect();
        let ms: Vec<u128> = d.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 10000, 10000]);
        let full = RetryConfig::default().jitter(Jitter::Full);
        assert_eq!(full.delay(2, 0.0), Duration::ZERO);
        let equal = RetryConfig::default().jitter(Jitter::Equal);
        assert_eq!(equal.delay(2, 0.0), Duration::from_millis(500));
        assert!(
            RetryConfig::default()
                .exponent(f64::NAN)
                .delay(9, 0.99)
                .as_millis()
                <= 500
        );
    }

    #[test]
    fn budget_drains_and_refills() {
        let b = RetryBudget::new(10);
        assert!(b.try_withdraw(5));
        assert!(b.try_withdraw(5));
        assert!(!b.try_withdraw(5));
        b.deposit(100);
        assert_eq!(b.available(), Some(10));
        assert!(RetryBudget::unlimited().try_withdraw(u64::MAX));
    }
}
