//! The pause both deliverers of queued events (the tracker and the outbox's relay) take when
//! Dub seems down: deliveries failing with outage errors pause everyone, and one probe at a
//! time then tests the water, so an outage costs a trickle of requests instead of every queued
//! event's retries.

use std::time::Duration;

use tokio::time::Instant;

use super::{Backoff, Jitter};

/// The pause after deliveries fail with outage errors: 1 s, doubling with each failed probe up
/// to a minute, not jittered (one probe at a time).
const PAUSE: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
    exponent: 2.0,
    jitter: Jitter::None,
};

/// Outage failures in a row that make an outage.
const AFTER: u32 = 5;

/// Whether Dub seems down, and until when nothing but a probe starts.
///
/// An outage is declared after five outage failures in a row without a success, so that a few
/// scattered 5xx (or the deliveries that were in flight together when Dub went down) do not
/// count as a long outage; only failed probes make the pause longer.
#[derive(Debug)]
pub(crate) struct Outage {
    /// Who logs: "dub tracker", "dub relay".
    name: &'static str,
    consecutive: u32,
    probes_failed: u32,
    until: Option<Instant>,
}

impl Outage {
    pub(crate) fn new(name: &'static str) -> Outage {
        Outage {
            name,
            consecutive: 0,
            probes_failed: 0,
            until: None,
        }
    }

    /// A delivery failed with an outage error (`error`, for the log); `probe`: it was started
    /// as a probe of the outage.
    pub(crate) fn failed(&mut self, now: Instant, probe: bool, error: &str) {
        self.consecutive = self.consecutive.saturating_add(1);
        if probe {
            self.probes_failed = self.probes_failed.saturating_add(1);
        }
        if self.consecutive < AFTER {
            return;
        }
        let pause = PAUSE.base(self.probes_failed.saturating_add(1));
        if self.until.is_none() {
            tracing::warn!(
                error,
                "{}: deliveries are failing; pausing and probing",
                self.name
            );
        }
        self.until = now.checked_add(pause);
    }

    /// Dub answered a delivery: the outage, if there was one, is over.
    pub(crate) fn cleared(&mut self) {
        if self.until.is_some() {
            tracing::info!(
                failures = self.consecutive,
                "{}: deliveries resumed",
                self.name
            );
        }
        *self = Outage::new(self.name);
    }

    /// Whether a delivery started now is a probe of an outage.
    pub(crate) fn probing(&self) -> bool {
        self.until.is_some()
    }

    /// Until when nothing starts, during a pause.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.until
    }

    /// How many deliveries may start now, out of `free` slots with `in_flight` running.
    pub(crate) fn allowed(&self, now: Instant, free: usize, in_flight: usize) -> usize {
        match self.until {
            None => free,
            Some(until) if now < until => 0,
            // The pause is over: one probe, alone.
            Some(_) => usize::from(in_flight == 0 && free > 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_of_failures_in_flight_together_pauses_a_second_and_failed_probes_double_it() {
        let t0 = Instant::now();
        let mut outage = Outage::new("test");
        for _ in 0..4 {
            outage.failed(t0, false, "503");
        }
        assert_eq!(outage.allowed(t0, 16, 0), 16, "four failures are no outage");
        // Sixteen deliveries in flight together fail: one pause of a second, not 2^11.
        for _ in 0..12 {
            outage.failed(t0, false, "503");
        }
        assert_eq!(outage.paused_until(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(outage.allowed(t0, 16, 0), 0);
        let later = t0 + Duration::from_secs(1);
        assert!(outage.probing());
        assert_eq!(outage.allowed(later, 16, 0), 1, "one probe, alone");
        assert_eq!(outage.allowed(later, 15, 1), 0);
        for (n, pause) in [(1, 2), (2, 4), (3, 8)] {
            outage.failed(later, true, "503");
            assert_eq!(
                outage.paused_until(),
                Some(later + Duration::from_secs(pause)),
                "after {n} failed probes"
            );
        }
        outage.cleared();
        assert_eq!(outage.allowed(later, 16, 0), 16);
        assert!(!outage.probing());
    }

    #[test]
    fn the_pause_stops_growing_at_a_minute() {
        let t0 = Instant::now();
        let mut outage = Outage::new("test");
        for _ in 0..100 {
            outage.failed(t0, true, "503");
        }
        assert_eq!(outage.paused_until(), Some(t0 + Duration::from_secs(60)));
    }
}
