//! The limiter's decisions, with no clock and no sleep.
//!
//! The time comes in as an argument and a turn or a wait goes back. A moment is the time since
//! an origin the caller picks ([`Moment`]): the [gate](super::gate) uses when it was made; a
//! store shared by several processes could use the Unix epoch. Everything the controller knows
//! is in [`Controller`], a small plain value (`Copy`, no pointers, no clock), so it can be
//! loaded, asked and stored again by whoever holds it.

use std::time::Duration;

use super::RateLimiterState;
use crate::retry::{Backoff, Jitter};

/// A moment, as the time elapsed since an origin fixed by the controller's owner.
pub(crate) type Moment = Duration;

/// Share of the known limit the client paces at.
pub(crate) const MARGIN: f64 = 0.98;
/// The cut on each 429 (AWS's adaptive mode and CUBIC use 0.7).
pub(crate) const BETA: f64 = 0.7;
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
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(60);

/// A turn to send one request, to hand back to [`Controller::learn`] with its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permit {
    /// The cut in force when the turn was given; a refusal of a request sent before the latest
    /// cut does not cut again.
    epoch: u64,
    issued: Moment,
}

impl Permit {
    /// A turn given without asking the controller (the limiter is off).
    pub(crate) fn unpaced(issued: Moment) -> Self {
        Self { epoch: 0, issued }
    }
}

/// What [`Controller::next_turn`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Go now.
    Now(Permit),
    /// A turn is booked at this moment: wait for it, then [`Controller::start`].
    At(Moment),
    /// The earliest turn is this moment, after the deadline; nothing was booked.
    TooLate(Moment),
}

/// What Dub answered to a request, as far as the limiter cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Anything but a 429.
    Accepted,
    /// A 429.
    Refused {
        /// `X-RateLimit-Limit`, requests a minute (`None` when absent or `0`, "unknown").
        limit: Option<u64>,
        /// How far away the window boundary Dub named is (`Retry-After`, else
        /// `X-RateLimit-Reset`).
        reset_in: Option<Duration>,
    },
}

/// Everything one limiter knows: the pace, the refusals, the turns booked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Controller {
    /// Whether the limit was configured (then a 429's header does not replace it).
    configured: bool,
    limit: Option<u64>,
    learned: bool,
    /// Whether a 429 has been seen: the cubic curve is in force from then on.
    cut: bool,
    /// The pace before the last cut, and when the cut happened.
    w_max: f64,
    cut_at: Moment,
    /// Counts cuts; a 429 for a request sent before the latest cut does not cut again.
    epoch: u64,
    /// The earliest start of the next request (even spacing).
    next: Moment,
    /// No request starts before this (after a 429).
    gate: Moment,
    last_refusal: Option<Moment>,
    /// Refusals of requests sent after the previous refusal arrived: probes that failed.
    consecutive: u32,
    throttled: u64,
    /// Requests started in the current and the previous second, for the first cut.
    second_start: Moment,
    this_second: u64,
    last_second: u64,
    /// Responses in each of the last seconds: how many Dub let through and how many it refused.
    answers: Answers,
}

/// What Dub answered this client lately, by second since the origin. Under a saturated window
/// the share it lets through is this client's part of the key's limit, whoever else is using
/// the key.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Answers {
    /// Seconds since the origin of the newest bucket.
    second: u64,
    accepted: [u32; ANSWER_SECS],
    refused: [u32; ANSWER_SECS],
}

const ANSWER_SECS: usize = 10;

impl Answers {
    fn new() -> Self {
        Self {
            second: 0,
            accepted: [0; ANSWER_SECS],
            refused: [0; ANSWER_SECS],
        }
    }

    fn advance(&mut self, now: Moment) {
        let second = now.as_secs();
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

    fn record(&mut self, now: Moment, accepted: bool) {
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
    fn share(&mut self, now: Moment) -> Option<f64> {
        self.advance(now);
        let accepted: f64 = self.accepted.iter().map(|&n| f64::from(n)).sum();
        let refused: f64 = self.refused.iter().map(|&n| f64::from(n)).sum();
        (accepted + refused > 0.0).then(|| accepted / (accepted + refused))
    }
}

impl Controller {
    /// A controller made at `now`, with the key's limit if it is known (requests a minute).
    pub(crate) fn new(now: Moment, limit: Option<u32>) -> Self {
        Self {
            configured: limit.is_some(),
            limit: limit.map(u64::from),
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
            answers: Answers::new(),
        }
    }

    /// The next turn for a request asked for at `now`, which must start by `deadline`. A turn
    /// at a later moment is booked (the next one comes an interval after it); a turn past the
    /// deadline is not.
    pub(crate) fn next_turn(&mut self, now: Moment, deadline: Option<Moment>) -> Turn {
        let rate = self.rate(now);
        let mut start = now.max(self.gate);
        if rate.is_some() {
            start = start.max(self.next);
        }
        if deadline.is_some_and(|d| start > d) {
            return Turn::TooLate(start);
        }
        if let Some(r) = rate {
            self.next = add(start, interval(r));
        }
        // The usual case: an unpaced client (no limit known, no 429 yet) not held back takes
        // its turn at once. A paced client is given a moment even for a turn that is due, so
        // that its turns keep their spacing whatever the delay in taking them.
        if rate.is_none() && start <= now {
            return Turn::Now(self.begin(now));
        }
        Turn::At(start)
    }

    /// Takes, at `now`, the turn booked at `booked`; `None` when a 429 that arrived meanwhile
    /// moved the gate past it, and the request must ask for a turn again.
    pub(crate) fn start(&mut self, now: Moment, booked: Moment) -> Option<Permit> {
        (self.gate <= booked).then(|| self.begin(now))
    }

    fn begin(&mut self, now: Moment) -> Permit {
        self.count_start(now);
        Permit {
            epoch: self.epoch,
            issued: now,
        }
    }

    /// Learns, at `now`, from `answer` to the request sent with `permit`.
    pub(crate) fn learn(&mut self, now: Moment, permit: &Permit, answer: &Answer) {
        let (limit, reset_in) = match *answer {
            Answer::Accepted => {
                self.answers.record(now, true);
                if self.last_refusal.is_none_or(|at| permit.issued >= at) {
                    self.consecutive = 0;
                }
                return;
            }
            Answer::Refused { limit, reset_in } => (limit, reset_in),
        };
        self.throttled += 1;
        self.answers.record(now, false);
        if !self.configured
            && let Some(limit) = limit.filter(|&l| l > 0)
        {
            self.limit = Some(limit);
            self.learned = true;
        }
        // A request sent after the previous refusal arrived was a probe of a saturated window.
        let probe = self.last_refusal.is_some_and(|at| permit.issued >= at) && self.consecutive > 0;
        if permit.epoch == self.epoch {
            let current = self.rate(now).unwrap_or_else(|| self.measured(now));
            let current = self.cap().map_or(current, |c| current.min(c));
            // A saturated window lets this client through in proportion to its share of the
            // key. A first refusal cuts by BETA; a failed probe cuts the pace by the share of
            // its recent requests Dub let through (never below BETA), which leaves a client
            // alone on the key at its pace and brings several to their parts of the limit,
            // without compounding cuts that would leave one of them crawling.
            let target = if probe {
                self.answers
                    .share(now)
                    .map_or(current, |share| (share * current).max(BETA * current))
            } else {
                current
            };
            if !probe || target < current {
                self.w_max = target.min(current).max(MIN_RATE);
                self.cut_at = now;
                self.cut = true;
                self.epoch += 1;
            }
        }
        self.consecutive = if probe {
            self.consecutive.saturating_add(1)
        } else {
            self.consecutive.max(1)
        };
        let interval = self.rate(now).map_or(MIN_HOLD, interval);
        // One request's spacing, doubling with each refused probe in a row, up to a minute: the
        // crate's one backoff, not jittered (the hold is the whole client's, not one call's).
        let mut hold = Backoff {
            initial: interval.max(MIN_HOLD),
            max: MAX_HOLD,
            exponent: 2.0,
            jitter: Jitter::None,
        }
        .base(self.consecutive);
        // Capacity can return no later than just after the window Dub names, so a hold never
        // waits past it.
        if let Some(reset) = reset_in {
            hold = hold.min(reset.saturating_add(interval));
        }
        let gate = add(now, hold);
        if gate > self.gate {
            self.gate = gate;
            // Turns booked before the refusal are void: their requests ask again.
            self.next = gate;
        }
        self.last_refusal = Some(now);
    }

    /// What the controller knows at `now`, for [`Dub::rate_limiter`](crate::Dub::rate_limiter).
    pub(crate) fn snapshot(&self, now: Moment) -> RateLimiterState {
        RateLimiterState {
            enabled: true,
            pace: self.rate(now),
            limit_per_minute: self.limit,
            limit_learned: self.learned,
            throttled: self.throttled,
            held_for: (self.gate > now).then(|| self.gate - now),
        }
    }

    /// The pace ceiling from the limit, requests a second.
    fn cap(&self) -> Option<f64> {
        self.limit.map(|l| l as f64 / 60.0 * MARGIN)
    }

    /// The pace at `now`, requests a second, or `None` when unpaced.
    fn rate(&self, now: Moment) -> Option<f64> {
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
        let t = now.saturating_sub(self.cut_at).as_secs_f64();
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

    fn count_start(&mut self, now: Moment) {
        let elapsed = now.saturating_sub(self.second_start);
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
    fn measured(&self, now: Moment) -> f64 {
        let into = now
            .saturating_sub(self.second_start)
            .as_secs_f64()
            .max(0.001);
        (self.last_second as f64).max(self.this_second as f64 / into.max(1.0))
    }
}

/// The time between two requests at `rate` a second.
fn interval(rate: f64) -> Duration {
    Duration::try_from_secs_f64(1.0 / rate).unwrap_or(MAX_HOLD)
}

fn add(t: Moment, d: Duration) -> Moment {
    t.checked_add(d).unwrap_or(t.saturating_add(MAX_HOLD))
}

#[cfg(test)]
mod tests;
