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

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use tokio::time::Instant;

/// Share of the known limit the client paces at.
const MARGIN: f64 = 0.98;
/// The cut on each 429 (AWS's adaptive mode and CUBIC use 0.7).
const BETA: f64 = 0.7;
/// How long the pace takes to grow back to where it was cut, in seconds. AWS's constant
/// (a fixed 0.4 requests/s³) brings a pace of a few requests a second back within about a
/// second, which suits a per-second bucket; Dub's window is a minute, and clients sharing a
/// key only converge if each grows back slowly compared with how fast refusals reach it.
const RECOVERY_SECS: f64 = 20.0;
/// Growth above the pace of the last cut, as a share of it per `RECOVERY_SECS`.
const PROBE_GROWTH: f64 = 0.05;
/// The slowest pace: one request every two seconds.
const MIN_RATE: f64 = 0.5;
/// The shortest and longest hold after a 429.
const MIN_HOLD: Duration = Duration::from_millis(100);
const MAX_HOLD: Duration = Duration::from_secs(60);

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

/// One client's limiter, shared by its calls.
#[derive(Debug)]
pub(crate) struct Limiter {
    config: RateLimit,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: Option<u64>,
    learned: bool,
    /// Whether a 429 has been seen: the cubic curve is in force from then on.
    cut: bool,
    /// The pace before the last cut, and when the cut happened.
    w_max: f64,
    cut_at: Instant,
    /// Counts cuts; a 429 for a request sent before the latest cut does not cut again.
    epoch: u64,
    /// The earliest start of the next request (even spacing).
    next: Instant,
    /// No request starts before this (after a 429).
    gate: Instant,
    last_refusal: Option<Instant>,
    /// Refusals of requests sent after the previous refusal arrived: probes that failed.
    consecutive: u32,
    throttled: u64,
    /// Requests started in the current and the previous second, for the first cut.
    second_start: Instant,
    this_second: u64,
    last_second: u64,
    /// Responses in each of the last seconds: how many Dub let through and how many it refused.
    answers: Answers,
}

/// What Dub answered this client lately. Under a saturated window the share it lets through
/// is this client's part of the key's limit, whoever else is using the key.
#[derive(Debug)]
struct Answers {
    origin: Instant,
    /// Seconds since `origin` of the newest bucket.
    second: u64,
    accepted: [u32; ANSWER_SECS],
    refused: [u32; ANSWER_SECS],
}

const ANSWER_SECS: usize = 10;

impl Answers {
    fn new(origin: Instant) -> Self {
        Self {
            origin,
            second: 0,
            accepted: [0; ANSWER_SECS],
            refused: [0; ANSWER_SECS],
        }
    }

    fn advance(&mut self, now: Instant) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let shift = second.saturating_sub(self.second);
        for buckets in [&mut self.accepted, &mut self.refused] {
            if shift >= ANSWER_SECS as u64 {
                *buckets = [0; ANSWER_SECS];
            } else if shift > 0 {
                let shift = shift as usize;
                buckets.rotate_left(shift);
                buckets[ANSWER_SECS - shift..].fill(0);
            }
        }
        self.second = self.second.max(second);
    }

    fn record(&mut self, now: Instant, accepted: bool) {
        self.advance(now);
        let buckets = if accepted {
            &mut self.accepted
        } else {
            &mut self.refused
        };
        let last = &mut buckets[ANSWER_SECS - 1];
        *last = last.saturating_add(1);
    }

    /// The share of recent requests Dub let through, if there were any.
    fn share(&mut self, now: Instant) -> Option<f64> {
        self.advance(now);
        let accepted: f64 = self.accepted.iter().map(|&n| f64::from(n)).sum();
        let refused: f64 = self.refused.iter().map(|&n| f64::from(n)).sum();
        (accepted + refused > 0.0).then(|| accepted / (accepted + refused))
    }
}

/// A turn to send one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Permit {
    epoch: u64,
    issued: Instant,
}

impl Limiter {
    pub(crate) fn new(config: RateLimit) -> Self {
        let now = Instant::now();
        Self {
            config,
            state: Mutex::new(State {
                limit: config.limit_per_minute().map(u64::from),
                learned: false,
                cut: false,
                w_max: 0.0,
                cut_at: now,
                epoch: 0,
                next: now,
                gate: now,
                last_refusal: None,
                consecutive: 0,
                throttled: 0,
                second_start: now,
                this_second: 0,
                last_second: 0,
                answers: Answers::new(now),
            }),
        }
    }

    pub(crate) fn config(&self) -> RateLimit {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a turn to send. Returns the earliest moment a turn could start instead when
    /// that is after `deadline`; nothing is reserved then.
    pub(crate) async fn acquire(&self, deadline: Option<Instant>) -> Result<Permit, Instant> {
        if !self.config.is_enabled() {
            return Ok(Permit {
                epoch: 0,
                issued: Instant::now(),
            });
        }
        loop {
            let start = {
                let mut s = self.lock();
                let now = Instant::now();
                let rate = s.rate(now);
                let mut start = now.max(s.gate);
                if rate.is_some() {
                    start = start.max(s.next);
                }
                if deadline.is_some_and(|d| start > d) {
                    return Err(start);
                }
                if let Some(r) = rate {
                    s.next = add(start, interval(r));
                }
                start
            };
            tokio::time::sleep_until(start).await;
            let mut s = self.lock();
            // A 429 that arrived while this call waited moved the gate: queue again behind it.
            if s.gate > start {
                continue;
            }
            let now = Instant::now();
            s.count_start(now);
            return Ok(Permit {
                epoch: s.epoch,
                issued: now,
            });
        }
    }

    /// Learns from the response to a request sent with `permit`.
    pub(crate) fn on_response(&self, permit: &Permit, status: u16, headers: &HeaderMap) {
        if !self.config.is_enabled() {
            return;
        }
        let mut s = self.lock();
        let now = Instant::now();
        if status != 429 {
            s.answers.record(now, true);
            if s.last_refusal.is_none_or(|at| permit.issued >= at) {
                s.consecutive = 0;
            }
            return;
        }
        s.throttled += 1;
        s.answers.record(now, false);
        if self.config.limit_per_minute().is_none()
            && let Some(limit) = header_u64(headers, "x-ratelimit-limit").filter(|&l| l > 0)
        {
            s.limit = Some(limit);
            s.learned = true;
        }
        // A request sent after the previous refusal arrived was a probe of a saturated window.
        let probe = s.last_refusal.is_some_and(|at| permit.issued >= at) && s.consecutive > 0;
        if permit.epoch == s.epoch {
            let current = s.rate(now).unwrap_or_else(|| s.measured(now));
            let current = s.cap().map_or(current, |c| current.min(c));
            // A saturated window lets this client through in proportion to its share of the
            // key. A first refusal cuts by BETA; a failed probe cuts the pace by the share of
            // its recent requests Dub let through (never below BETA), which leaves a client
            // alone on the key at its pace and brings several to their parts of the limit,
            // without compounding cuts that would leave one of them crawling.
            let target = if probe {
                s.answers
                    .share(now)
                    .map_or(current, |share| (share * current).max(BETA * current))
            } else {
                current
            };
            if !probe || target < current {
                s.w_max = target.min(current).max(MIN_RATE);
                s.cut_at = now;
                s.cut = true;
                s.epoch += 1;
            }
        }
        s.consecutive = if probe {
            s.consecutive.saturating_add(1)
        } else {
            s.consecutive.max(1)
        };
        let interval = s.rate(now).map_or(MIN_HOLD, interval);
        let doubling = 1u32
            .checked_shl(s.consecutive.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let mut hold = interval
            .max(MIN_HOLD)
            .saturating_mul(doubling)
            .min(MAX_HOLD);
        // Dub names the next window in epoch milliseconds; capacity can return no later than
        // just after it, so a hold never waits past it.
        if let Some(reset) = reset_in(headers) {
            hold = hold.min(reset.saturating_add(interval));
        }
        let gate = add(now, hold);
        if gate > s.gate {
            s.gate = gate;
            // Turns reserved before the refusal are void: their calls queue again.
            s.next = gate;
        }
        s.last_refusal = Some(now);
    }

    pub(crate) fn state(&self) -> RateLimiterState {
        let s = self.lock();
        let now = Instant::now();
        RateLimiterState {
            enabled: self.config.is_enabled(),
            pace: if self.config.is_enabled() {
                s.rate(now)
            } else {
                None
            },
            limit_per_minute: s.limit,
            limit_learned: s.learned,
            throttled: s.throttled,
            held_for: (s.gate > now).then(|| s.gate - now),
        }
    }
}

impl State {
    /// The pace ceiling from the limit, requests a second.
    fn cap(&self) -> Option<f64> {
        self.limit.map(|l| l as f64 / 60.0 * MARGIN)
    }

    /// The pace at `now`, requests a second, or `None` when unpaced.
    fn rate(&self, now: Instant) -> Option<f64> {
        let cap = self.cap();
        if !self.cut {
            return cap;
        }
        // CUBIC: w(t) = C (t - K)^3 + w_max, with w(0) = BETA * w_max.
        // Back to w_max along CUBIC's concave curve in a fixed K seconds (so C scales with
        // w_max), then probing above it gently at first (5% of w_max per K, Dub's window hiding
        // an overshoot for up to a minute) and faster the longer no refusal comes (the cubic
        // term: x2.5 after 3K, x4.4 after 4K), so that a client cut hard while others were
        // sending does not crawl once it has the key to itself.
        let k = RECOVERY_SECS;
        let t = now.saturating_duration_since(self.cut_at).as_secs_f64();
        let w = if t < k {
            self.w_max * (1.0 - (1.0 - BETA) * ((k - t) / k).powi(3))
        } else {
            let x = (t - k) / k;
            self.w_max * (1.0 + PROBE_GROWTH * (x + x.powi(3)))
        };
        let w = if w.is_finite() { w } else { f64::MAX };
        // Never slower than MIN_RATE, unless the limit itself is slower.
        let floor = cap.map_or(MIN_RATE, |c| c.min(MIN_RATE));
        Some(cap.map_or(w, |c| w.min(c)).max(floor))
    }

    fn count_start(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.second_start);
        if elapsed >= Duration::from_secs(2) {
            self.last_second = 0;
            self.this_second = 0;
            self.second_start = now;
        } else if elapsed >= Duration::from_secs(1) {
            self.last_second = self.this_second;
            self.this_second = 0;
            self.second_start = add(self.second_start, Duration::from_secs(1));
        }
        self.this_second = self.this_second.saturating_add(1);
    }

    /// The recent send rate, requests a second, for the first cut of an unpaced client.
    fn measured(&self, now: Instant) -> f64 {
        let into = now
            .saturating_duration_since(self.second_start)
            .as_secs_f64()
            .max(0.001);
        (self.last_second as f64).max(self.this_second as f64 / into.max(1.0))
    }
}

/// The time between two requests at `rate` a second.
fn interval(rate: f64) -> Duration {
    Duration::try_from_secs_f64(1.0 / rate).unwrap_or(MAX_HOLD)
}

fn add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t + MAX_HOLD)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// How far away the window boundary Dub named is: `Retry-After` in any form, else
/// `X-RateLimit-Reset` in epoch milliseconds (`0` means unknown).
fn reset_in(headers: &HeaderMap) -> Option<Duration> {
    let now = crate::clock::now();
    if let Some(wait) = crate::retry::retry_after(headers, now) {
        return Some(wait);
    }
    let ms = header_u64(headers, "x-ratelimit-reset").filter(|&ms| ms > 0)?;
    let at = UNIX_EPOCH.checked_add(Duration::from_millis(ms))?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

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
    async fn adaptive_is_unpaced_until_a_429_teaches_the_limit() {
        let limiter = Limiter::new(RateLimit::adaptive());
        for _ in 0..100 {
            limiter.acquire(None).await.unwrap();
        }
        assert_eq!(limiter.state().pace, None);
        let permit = limiter.acquire(None).await.unwrap();
        limiter.on_response(&permit, 429, &refusal(1200));
        let state = limiter.state();
        assert_eq!(state.limit_per_minute, Some(1200));
        assert!(state.limit_learned);
        assert_eq!(state.throttled, 1);
        // Cut to 0.7 of the ceiling (the measured rate was far above it).
        let pace = state.pace.unwrap();
        assert!(
            (pace - 1200.0 / 60.0 * MARGIN * BETA).abs() < 1e-6,
            "{pace}"
        );
        // ...and back at the ceiling after a while without refusals.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!((limiter.state().pace.unwrap() - 1200.0 / 60.0 * MARGIN).abs() < 1e-6);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_in_flight_together_cut_once_and_unknown_limits_are_ignored() {
        let limiter = Limiter::new(RateLimit::per_minute(3000));
        let permits: Vec<_> =
            futures_util::future::join_all((0..10).map(|_| limiter.acquire(None)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        for p in &permits {
            limiter.on_response(p, 429, &refusal(0));
        }
        let state = limiter.state();
        assert_eq!(state.throttled, 10);
        assert_eq!(state.limit_per_minute, Some(3000));
        let pace = state.pace.unwrap();
        assert!(
            (pace - 3000.0 / 60.0 * MARGIN * BETA).abs() < 1e-6,
            "cut once: {pace}"
        );
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
