//! A client that paces itself the way Dub limits it.
//!
//! Dub limits each API key to a number of requests a minute (1,200 or 3,000 for the plans that
//! may track conversions), shared by every process using the key, with a sliding window of two
//! epoch-aligned minutes. It tells a client about the limit only when refusing a request (429),
//! so a client learns it from refusals. Every call of a [`Dub`](crate::Dub) client, and of its
//! clones, takes its turn from one limiter:
//!
//! - **Known limit** ([`RateLimit::per_minute`]): requests are spaced evenly at 98% of
//!   `limit / 60` a second. Even spacing is the only pace a sliding window sustains; the 2%
//!   margin keeps requests that arrive a little early from touching the limit.
//! - **Learned limit** ([`RateLimit::adaptive`], the default): no pacing until the first 429,
//!   whose `X-RateLimit-Limit` becomes the ceiling (`0` means "unknown" and is ignored).
//! - **On every 429 the whole client slows down**, not just the call that got it: the pace is cut
//!   to 0.7 times what it was (once per round trip, so a burst of refusals for requests already in
//!   flight counts once) and grows back along a cubic curve in 20 seconds, as AWS's adaptive retry
//!   mode and TCP CUBIC do, then probes above it only linearly (Dub's minute-long window hides an
//!   overshoot for up to a minute). A refusal while the window is still saturated cuts the pace
//!   to what Dub let this client through over the last 10 seconds: its share of the key. So
//!   several processes sharing one key settle near the limit without talking to each other. Calls waiting for their turn are held back behind the refusal for a short
//!   time that doubles while refusals continue (never past the window Dub names in
//!   `X-RateLimit-Reset`), so a saturated window is probed, not hammered.
//! - Waiting for a turn counts against the call's deadline
//!   ([`RetryConfig::max_elapsed_time`](crate::RetryConfig::max_elapsed_time)); a call whose
//!   turn would come too late fails at once with [`ErrorKind::RateLimitExceeded`](crate::ErrorKind)
//!   and `may_have_been_recorded() == false`: nothing was sent.
//!
//! [`RateLimit::off`] turns it off for code that paces itself; [`Dub::rate_limiter`](crate::Dub::rate_limiter)
//! shows its state.

// Inside: `controller` decides (a plain value, given the time), `headers` reads what Dub's
// responses say, and `gate` holds a client's controller and sleeps until the turns it gives.
mod controller;
mod gate;
mod headers;

pub(crate) use controller::Permit;
pub(crate) use gate::Limiter;
#[cfg(feature = "postgres")]
pub(crate) use headers::limit;
pub(crate) use headers::retry_after;

use std::time::Duration;

/// How a client paces its requests under Dub's per-key rate limit. See the
/// [module docs](crate::rate_limit) for the behaviour.
///
/// ```
/// use dub::{Dub, RateLimit};
///
/// // This process uses the key alone and knows its plan's limit.
/// let dub = Dub::builder().token("dub_xxx").rate_limit(RateLimit::per_minute(3000)).build()?;
/// # Ok::<(), dub::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Adaptive,
    PerMinute(u32),
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::adaptive()
    }
}

impl RateLimit {
    /// Learn the limit from Dub's first 429 and adapt to refusals (the default).
    pub fn adaptive() -> Self {
        Self {
            mode: Mode::Adaptive,
        }
    }

    /// The key's limit is `limit` requests a minute: space requests evenly from the start, and
    /// still slow down on a 429 (another process may be using the key). `0` means "unknown", as
    /// in Dub's headers, and gives [`adaptive`](Self::adaptive).
    pub fn per_minute(limit: u32) -> Self {
        match limit {
            0 => Self::adaptive(),
            n => Self {
                mode: Mode::PerMinute(n),
            },
        }
    }

    /// No pacing at all: every call is sent at once (429s are still retried per call).
    pub fn off() -> Self {
        Self { mode: Mode::Off }
    }

    /// Whether the client paces itself.
    pub fn is_enabled(&self) -> bool {
        self.mode != Mode::Off
    }

    /// The configured limit, requests a minute.
    pub fn limit_per_minute(&self) -> Option<u32> {
        match self.mode {
            Mode::PerMinute(n) => Some(n),
            _ => None,
        }
    }
}

/// A snapshot of a client's rate limiter, from [`Dub::rate_limiter`](crate::Dub::rate_limiter).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RateLimiterState {
    /// Whether the client paces itself at all.
    pub enabled: bool,
    /// The current pace, requests a second; `None` while unpaced (adaptive, before any 429).
    pub pace: Option<f64>,
    /// The key's limit, requests a minute: configured, or learned from a 429.
    pub limit_per_minute: Option<u64>,
    /// Whether [`limit_per_minute`](Self::limit_per_minute) was learned from Dub.
    pub limit_learned: bool,
    /// 429 responses the client has received.
    pub throttled: u64,
    /// How long calls are held back after a recent 429, if they are.
    pub held_for: Option<Duration>,
}
