//! One capped exponential backoff, for every wait that grows with failures: a call's retries
//! ([`RetryConfig`](super::RetryConfig)), a tracker's resends of an event, its outage pause and
//! its waits for a store that cannot be written, and the rate limiter's hold after refused
//! probes.

use std::time::Duration;

use super::Jitter;

/// `initial * exponent^(n - 1)`, capped at `max`, then jittered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// At least 1.
    pub exponent: f64,
    pub jitter: Jitter,
}

impl Backoff {
    /// Doubling from `initial` up to `max`, with equal jitter.
    pub(crate) fn doubling(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            exponent: 2.0,
            jitter: Jitter::Equal,
        }
    }

    /// The wait before the `n`th try again (1 for the first), before jitter, capped.
    pub(crate) fn base(&self, n: u32) -> Duration {
        let factor = self
            .exponent
            .powi(i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX));
        let secs = self.initial.as_secs_f64() * factor;
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The wait before the `n`th try again, jittered with `unit`, a number in `[0, 1)`.
    pub(crate) fn delay(&self, n: u32, unit: f64) -> Duration {
        let d = self.base(n);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self.jitter {
            Jitter::None => d,
            Jitter::Full => scale(d, unit),
            Jitter::Equal => (d / 2).saturating_add(scale(d / 2, unit)),
        }
    }
}

/// `d * factor` for a factor in `[0, 1]`, never panicking: `Duration::mul_f64` panics when
/// float rounding takes the product past `Duration::MAX`.
fn scale(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor)
        .unwrap_or(d)
        .min(d)
}
