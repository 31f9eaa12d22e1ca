//! What a tracker's handles and its dispatcher share: settings, the store, receipts, the
//! deliveries in flight, counts, and how the tracker is stopping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::in_flight::InFlight;
use super::outcome::{EventOutcome, Stats};
use super::receipts::Receipts;
use super::store::{Store, StoreFuture};
use crate::{Dub, RetryConfig};

/// Called with every event's terminal outcome, on the tracker's task: keep it quick.
pub type OutcomeCallback = Arc<dyn Fn(&EventOutcome) + Send + Sync>;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub capacity: usize,
    pub max_in_flight: usize,
    pub max_age: Duration,
    /// Between an event's deliveries (default 1 s doubling to 5 min, equal jitter).
    pub backoff: crate::retry::Backoff,
    pub call_policy: RetryConfig,
    #[cfg(feature = "spool")]
    pub spool: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_in_flight: 32,
            max_age: Duration::from_secs(6 * 3600),
            backoff: crate::retry::Backoff::doubling(
                Duration::from_secs(1),
                Duration::from_secs(300),
            ),
            call_policy: RetryConfig::default(),
            #[cfg(feature = "spool")]
            spool: None,
        }
    }
}

/// What the tracker's handles and its dispatcher task share.
pub(crate) struct Core {
    pub dub: Dub,
    pub config: Config,
    pub store: Box<dyn Store>,
    /// Wakes the dispatcher: an event was handed over (the store rings it).
    pub wake: Arc<Notify>,
    pub receipts: Arc<Receipts>,
    /// Deliveries started and not yet settled, with what Dub answered.
    pub in_flight: InFlight,
    pub counters: Counters,
    pub accepting: AtomicBool,
    /// The dispatcher task exists (false once it ended, or its runtime dropped it).
    pub running: AtomicBool,
    /// How the tracker is stopping, once it is.
    pub shutdown: watch::Sender<Option<Stopping>>,
    pub on_outcome: Option<OutcomeCallback>,
}

/// How a tracker stops: new deliveries start until `claim_until`; deliveries still running at
/// `cut_at` are cut off (never, for [`Tracker::stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopping {
    pub claim_until: Instant,
    pub cut_at: Option<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub uncertain: AtomicU64,
    pub retried: AtomicU64,
    /// [`Stats::last_failure`].
    pub last_failure: std::sync::Mutex<Option<String>>,
}

impl Counters {
    pub fn set_last_failure(&self, failure: Option<String>) {
        *self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = failure;
    }

    fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Core {
    /// Takes no more hand-overs: a hand-over is either stored before this ends (then
    /// delivered, in the report or in the store) or refused with its event.
    pub(crate) fn stop_taking(&self) -> StoreFuture<()> {
        self.accepting.store(false, Ordering::Release);
        self.store.close_hand_overs()
    }

    pub(crate) fn stats(&self) -> Stats {
        let (counts, store_error) = match self.store.counts() {
            Ok(counts) => (counts, None),
            Err(e) => ((0, 0, None), Some(e.to_string())),
        };
        let (queued, in_flight, oldest) = counts;
        let now = crate::clock::now_ms();
        Stats {
            store_error,
            queued,
            in_flight,
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            uncertain: self.counters.uncertain.load(Ordering::Relaxed),
            retried: self.counters.retried.load(Ordering::Relaxed),
            rate_limited: self.dub.rate_limiter().map_or(0, |state| state.throttled),
            oldest_age: oldest.map(|created| Duration::from_millis(now.saturating_sub(created))),
            // Nothing left to deliver: nothing is held up by it.
            last_failure: (queued + in_flight > 0)
                .then(|| self.counters.last_failure())
                .flatten(),
        }
    }
}

impl Core {
    /// Receipt slots held for undelivered events (what a caller's repeated hand-overs cost).
    #[cfg(test)]
    pub(crate) fn receipt_slots(&self) -> usize {
        self.receipts.len()
    }
}
