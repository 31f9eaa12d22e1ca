//! Dub's rate limiter, as Dub's server source has it: Upstash's `slidingWindow(limit, "1 m")`
//! keyed by the (hashed) API key, shared by every process using the key.
//!
//! Two fixed one-minute windows aligned to the Unix epoch; a request is refused when
//! `floor((1 - p) * previous) + current >= limit`, `p` being the part of the current window
//! already gone. A refused request is not counted; every accepted one is, whatever its outcome.

use super::reply::RateLimit;

pub(crate) const WINDOW_MS: u64 = 60_000;
/// What the headers report when no limit is enforced: a pro plan's limit.
pub(crate) const DEFAULT_LIMIT: u64 = 600;

/// The counts of one key.
#[derive(Debug, Clone)]
pub(crate) struct SlidingWindow {
    limit: u64,
    /// Refuse over the limit; when false the window only counts, for the headers.
    enforce: bool,
    /// `floor(now_ms / 60000)` of the current window.
    index: u64,
    current: u64,
    previous: u64,
}

impl Default for SlidingWindow {
    fn default() -> Self {
        SlidingWindow::new(None)
    }
}

impl SlidingWindow {
    /// `Some(limit)` enforces `limit` requests a minute; `None` counts against the default.
    pub fn new(limit: Option<u64>) -> SlidingWindow {
        SlidingWindow {
            limit: limit.unwrap_or(DEFAULT_LIMIT),
            enforce: limit.is_some(),
            index: 0,
            current: 0,
            previous: 0,
        }
    }

    pub fn enforced_limit(&self) -> Option<u64> {
        self.enforce.then_some(self.limit)
    }

    /// Changes the limit, keeping the counts: the next request is judged by the new one.
    pub fn set_limit(&mut self, limit: Option<u64>) {
        self.limit = limit.unwrap_or(DEFAULT_LIMIT);
        self.enforce = limit.is_some();
    }

    fn roll(&mut self, now_ms: u64) {
        let index = now_ms / WINDOW_MS;
        if index == self.index {
            return;
        }
        // The window just ended becomes the previous one; one further back weighs nothing.
        self.previous = if index == self.index.saturating_add(1) {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.index = index;
    }

    /// What the previous window still weighs, plus the current window's count.
    fn used(&self, now_ms: u64) -> u64 {
        let elapsed = now_ms % WINDOW_MS;
        // floor((1 - p) * previous) in integers: previous * (WINDOW - elapsed) / WINDOW.
        let weighted =
            u128::from(self.previous) * u128::from(WINDOW_MS - elapsed) / u128::from(WINDOW_MS);
        u64::try_from(weighted)
            .unwrap_or(u64::MAX)
            .saturating_add(self.current)
    }

    fn headers(&self, remaining: u64) -> RateLimit {
        RateLimit {
            limit: self.limit,
            remaining,
            reset_ms: self.index.saturating_add(1).saturating_mul(WINDOW_MS),
        }
    }

    /// Judges one authenticated request at `now_ms`: `Ok` (counted) with the headers Dub would
    /// send on an error, or `Err` with those of its 429.
    pub fn hit(&mut self, now_ms: u64) -> Result<RateLimit, RateLimit> {
        self.roll(now_ms);
        let used = self.used(now_ms);
        if self.enforce && used >= self.limit {
            return Err(self.headers(0));
        }
        self.current = self.current.saturating_add(1);
        Ok(self.headers(self.limit.saturating_sub(used.saturating_add(1))))
    }

    /// The headers as they stand, counting nothing: for answers that never reach the limiter.
    pub fn peek(&mut self, now_ms: u64) -> RateLimit {
        self.roll(now_ms);
        let used = self.used(now_ms);
        self.headers(self.limit.saturating_sub(used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_040_000; // a window boundary: 1_700_000_040_000 % 60_000 == 0

    #[test]
    fn windows_are_epoch_aligned() {
        assert_eq!(T0 % WINDOW_MS, 0);
    }

    #[test]
    fn refuses_at_the_limit_and_does_not_count_refusals() {
        let mut w = SlidingWindow::new(Some(3));
        for _ in 0..3 {
            assert!(w.hit(T0 + 10).is_ok());
        }
        for _ in 0..100 {
            let refused = w.hit(T0 + 20).unwrap_err();
            assert_eq!(refused.remaining, 0);
            assert_eq!(refused.reset_ms, T0 + WINDOW_MS);
        }
        // The refusals cost nothing: at 2/3 into the next window the previous 3 weigh 1.
        assert!(w.hit(T0 + WINDOW_MS + 40_000).is_ok());
        assert!(w.hit(T0 + WINDOW_MS + 40_000).is_ok());
        assert!(w.hit(T0 + WINDOW_MS + 40_000).is_err());
    }

    #[test]
    fn the_previous_window_weighs_what_is_left_of_it() {
        let mut w = SlidingWindow::new(Some(100));
        for _ in 0..100 {
            w.hit(T0 + 59_000).unwrap();
        }
        // Right after the boundary the previous minute still weighs (almost) all of it:
        // waiting for X-RateLimit-Reset is not enough.
        assert!(w.hit(T0 + WINDOW_MS).is_err());
        assert!(w.hit(T0 + WINDOW_MS + 600).is_ok()); // floor(0.99 * 100) = 99
        assert!(w.hit(T0 + WINDOW_MS + 600).is_err());
        // Two windows later nothing of the full minute is left; the one request of the
        // minute between weighs floor(59_999 / 60_000) = 0.
        assert!(w.hit(T0 + 2 * WINDOW_MS + 1).is_ok());
        assert_eq!(w.peek(T0 + 2 * WINDOW_MS + 1).remaining, 99);
    }

    #[test]
    fn unenforced_counts_but_never_refuses() {
        let mut w = SlidingWindow::new(None);
        for _ in 0..1_000 {
            assert!(w.hit(T0).is_ok());
        }
        assert_eq!(w.peek(T0).remaining, 0);
    }

    #[test]
    fn any_time_at_all() {
        let mut w = SlidingWindow::new(Some(u64::MAX));
        for now in [0, 1, u64::MAX - 1, u64::MAX, 5] {
            let _ = w.hit(now);
            let _ = w.peek(now);
        }
        let mut w = SlidingWindow::new(Some(0));
        assert!(w.hit(T0).is_err());
    }
}
