//! The limiter a client's calls share: the [controller](super::controller) behind a lock, read
//! with tokio's clock, and the only place that sleeps.

use std::sync::{Mutex, MutexGuard, PoisonError};

use reqwest::header::HeaderMap;
use tokio::time::Instant;

use super::controller::{Controller, MAX_HOLD, Moment, Permit, Turn};
use super::{RateLimit, RateLimiterState, headers};

/// One client's limiter, shared by its calls.
#[derive(Debug)]
pub(crate) struct Limiter {
    config: RateLimit,
    /// The controller's moments are the time since this instant.
    origin: Instant,
    controller: Mutex<Controller>,
}

impl Limiter {
    pub(crate) fn new(config: RateLimit) -> Self {
        Self {
            config,
            origin: Instant::now(),
            controller: Mutex::new(Controller::new(Moment::ZERO, config.limit_per_minute())),
        }
    }

    pub(crate) fn config(&self) -> RateLimit {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, Controller> {
        self.controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> Moment {
        self.moment(Instant::now())
    }

    fn moment(&self, at: Instant) -> Moment {
        at.saturating_duration_since(self.origin)
    }

    fn instant(&self, at: Moment) -> Instant {
        self.origin
            .checked_add(at)
            .unwrap_or_else(|| Instant::now() + MAX_HOLD)
    }

    /// Waits for a turn to send. Returns the earliest moment a turn could start instead when
    /// that is after `deadline`; nothing is reserved then.
    pub(crate) async fn acquire(&self, deadline: Option<Instant>) -> Result<Permit, Instant> {
        if !self.config.is_enabled() {
            return Ok(Permit::unpaced(self.now()));
        }
        let deadline = deadline.map(|d| self.moment(d));
        loop {
            let booked = match self.lock().next_turn(self.now(), deadline) {
                Turn::Now(permit) => return Ok(permit),
                Turn::TooLate(earliest) => return Err(self.instant(earliest)),
                Turn::At(booked) => booked,
            };
            tokio::time::sleep_until(self.instant(booked)).await;
            if let Some(permit) = self.lock().start(self.now(), booked) {
                return Ok(permit);
            }
        }
    }

    /// Learns from the response to a request sent with `permit`.
    pub(crate) fn on_response(&self, permit: &Permit, status: u16, headers: &HeaderMap) {
        if !self.config.is_enabled() {
            return;
        }
        let answer = headers::answer(status, headers, crate::clock::now());
        self.lock().learn(self.now(), permit, &answer);
    }

    pub(crate) fn state(&self) -> RateLimiterState {
        if !self.config.is_enabled() {
            return RateLimiterState {
                enabled: false,
                pace: None,
                limit_per_minute: None,
                limit_learned: false,
                throttled: 0,
                held_for: None,
            };
        }
        self.lock().snapshot(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::controller::MARGIN;
    use reqwest::header::HeaderValue;
    use std::time::Duration;

    fn refusal(limit: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", HeaderValue::from(limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(0));
        h
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_limit_spaces_requests_evenly() {
        let limiter = Limiter::new(RateLimit::per_minute(600));
        let t0 = Instant::now();
        let mut starts = vec![];
        for _ in 0..5 {
            limiter.acquire(None).await.unwrap();
            starts.push((Instant::now() - t0).as_micros());
        }
        // 600 a minute at 98%: one every 1/9.8 s (tokio's timer rounds each wake up to the
        // millisecond; turns are spaced from the planned start, so the error never adds up).
        let gap = (1.0 / (600.0 / 60.0 * MARGIN) * 1e6) as u128;
        for (i, at) in starts.iter().enumerate() {
            assert!(at.abs_diff(gap * i as u128) <= 1_000, "{starts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_past_the_deadline_is_refused_without_reserving() {
        let limiter = Limiter::new(RateLimit::per_minute(60));
        limiter.acquire(None).await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(500);
        let earliest = limiter.acquire(Some(deadline)).await.unwrap_err();
        assert!(earliest > deadline);
        // Nothing was reserved: the next turn is still about one second after the first.
        let t = Instant::now();
        limiter.acquire(None).await.unwrap();
        assert!(Instant::now() - t < Duration::from_millis(1100));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_double_the_hold_up_to_the_named_reset() {
        let limiter = Limiter::new(RateLimit::per_minute(600));
        let mut holds = vec![];
        for _ in 0..6 {
            let p = limiter.acquire(None).await.unwrap();
            limiter.on_response(&p, 429, &refusal(600));
            holds.push(limiter.state().held_for.unwrap().as_millis());
        }
        // Each failed probe holds longer (by less than double while the pace grows back).
        assert!(holds.windows(2).all(|w| w[1] > w[0]), "{holds:?}");
        assert!(holds[5] >= 16 * holds[0], "{holds:?}");
        let mut reset = refusal(600);
        let at = crate::clock::now_ms() + 3_000;
        reset.insert("x-ratelimit-reset", HeaderValue::from(at));
        let p = limiter.acquire(None).await.unwrap();
        limiter.on_response(&p, 429, &reset);
        assert!(limiter.state().held_for.unwrap() <= Duration::from_millis(3_000 + 200));
    }

    #[tokio::test(start_paused = true)]
    async fn off_never_waits() {
        let limiter = Limiter::new(RateLimit::off());
        let p = limiter.acquire(None).await.unwrap();
        limiter.on_response(&p, 429, &refusal(60));
        let t = Instant::now();
        for _ in 0..1000 {
            limiter.acquire(Some(t)).await.unwrap();
        }
        assert_eq!(Instant::now(), t);
        assert_eq!(limiter.state().pace, None);
    }
}
