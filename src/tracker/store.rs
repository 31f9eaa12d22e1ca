//! The seam between the tracker and where it keeps events: the [`Store`] trait. The memory
//! queue and (feature `spool`) the SQLite spool implement it; a new store (a database shared by
//! several hosts) plugs in here.
//!
//! The operations that touch storage return futures and may fail: a store on the network waits
//! for it and meets transient errors, which the dispatcher logs and meets again on its next
//! turn (an event stays claimed or queued, never lost). `counts` and `next_due` are synchronous
//! hints, asked on every turn of the dispatcher and by [`Tracker::stats`](super::Tracker::stats):
//! a store that cannot answer them cheaply answers from what it last saw. A store that blocks
//! (SQLite) implements [`BlockingStore`] instead and runs behind [`OffThread`].
//!
//! A store is handed what it needs when it is built (the tracker's receipts and the
//! dispatcher's wake-up) and never reaches back into the tracker.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
#[cfg(feature = "spool")]
use std::sync::Arc;

use super::event::{Event, EventId};
use super::outcome::{HandOver, Outcome};

/// An event taken for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub id: EventId,
    pub key: Option<String>,
    pub event: Event,
    /// HTTP attempts made so far, over earlier deliveries.
    pub attempts: u32,
    /// Hand-over time, Unix milliseconds.
    pub created_ms: u64,
    /// An earlier delivery may have reached Dub.
    pub maybe_sent: bool,
}

/// A terminal state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Terminal {
    Delivered,
    Failed,
    Uncertain,
}

/// Why a store operation failed; the operation may be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for StoreError {
    fn from(message: String) -> Self {
        StoreError(message)
    }
}

/// What a stopped tracker leaves: events it gives back (memory), or keeps (a durable store).
#[derive(Debug, Default)]
pub(crate) struct Left {
    pub undelivered: Vec<(EventId, Event)>,
    pub in_store: u64,
}

/// A store operation under way.
pub(crate) type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

fn ready<T: Send + 'static>(value: Result<T, StoreError>) -> StoreFuture<T> {
    Box::pin(std::future::ready(value))
}

/// Where a tracker keeps its events.
pub(crate) trait Store: Send + Sync + fmt::Debug {
    /// Takes an event (validated already) and registers its receipt: at once, or once stored.
    /// Never waits on the network.
    fn hand_over(&self, key: Option<String>, event: Event, created_ms: u64) -> HandOver;
    /// Refuses hand-overs from now on; what was accepted before is stored when this ends.
    fn close_hand_overs(&self) -> StoreFuture<()>;
    /// Takes up to `max` events whose turn has come (a customer's oldest undelivered event
    /// only), marking them in flight.
    fn claim(&self, max: usize, now_ms: u64) -> StoreFuture<Vec<Claimed>>;
    /// Records terminal outcomes, each with what to keep of it (a response or an error, JSON).
    fn finish(&self, done: Vec<(EventId, Terminal, Vec<u8>)>) -> StoreFuture<()>;
    /// Puts an in-flight event back, due at `due_ms`.
    fn reschedule(
        &self,
        id: EventId,
        due_ms: u64,
        attempts: u32,
        maybe_sent: bool,
    ) -> StoreFuture<()>;
    /// Of `ids` (events this tracker holds receipts for), those another process sharing the
    /// store settled, with their stored outcomes. A store no other process shares has none.
    fn settled(&self, ids: Vec<EventId>) -> StoreFuture<Vec<(EventId, Outcome)>> {
        let _ = ids;
        ready(Ok(Vec::new()))
    }
    /// Whether `key` was handed over to the store: queued, in flight, or (in a store that keeps
    /// outcomes) settled. May block for a moment on a local file.
    fn has_key(&self, key: &str) -> Result<bool, StoreError>;
    /// Takes back what processes that died had in flight; returns the events that end
    /// uncertain (possibly sent, not deduplicated by Dub).
    fn recover(&self) -> StoreFuture<Vec<Claimed>> {
        ready(Ok(Vec::new()))
    }
    /// What is left once the tracker stopped: the events themselves, or their count.
    fn left(&self) -> StoreFuture<Left>;
    /// The earliest due time of a claimable event (a hint).
    fn next_due(&self) -> Option<u64>;
    /// (queued, in flight, creation time of the oldest) (a hint), or why they cannot be known
    /// (never zeros in their place: a store that cannot count is not empty).
    fn counts(&self) -> Result<(u64, u64, Option<u64>), StoreError>;
    /// Whether events survive the process.
    fn is_durable(&self) -> bool;
}

/// A store whose operations block the calling thread (a local database file).
#[cfg(feature = "spool")]
pub(crate) trait BlockingStore: Send + Sync + fmt::Debug + 'static {
    fn hand_over(&self, key: Option<String>, event: Event, created_ms: u64) -> HandOver;
    fn close_hand_overs(&self);
    fn claim(&self, max: usize, now_ms: u64) -> Result<Vec<Claimed>, StoreError>;
    fn finish(&self, done: Vec<(EventId, Terminal, Vec<u8>)>) -> Result<(), StoreError>;
    fn reschedule(
        &self,
        id: EventId,
        due_ms: u64,
        attempts: u32,
        maybe_sent: bool,
    ) -> Result<(), StoreError>;
    fn recover(&self) -> Result<Vec<Claimed>, StoreError>;
    fn left(&self) -> Result<Left, StoreError>;
    fn next_due(&self) -> Option<u64>;
    fn counts(&self) -> Result<(u64, u64, Option<u64>), StoreError>;
    fn settled(&self, ids: &[EventId]) -> Result<Vec<(EventId, Outcome)>, StoreError>;
    fn has_key(&self, key: &str) -> Result<bool, StoreError>;
}

/// Runs a [`BlockingStore`]'s operations on tokio's blocking threads, so they never stall the
/// runtime's workers; on a thread without a runtime (the runtime is gone), in place.
#[cfg(feature = "spool")]
#[derive(Debug)]
pub(crate) struct OffThread<S>(pub Arc<S>);

#[cfg(feature = "spool")]
impl<S: BlockingStore> OffThread<S> {
    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&S) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let store = self.0.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let task = runtime.spawn_blocking(move || op(&store));
                Box::pin(async move {
                    task.await
                        .map_err(|e| StoreError(format!("a store operation stopped: {e}")))?
                })
            }
            Err(_) => ready(op(&store)),
        }
    }
}

#[cfg(feature = "spool")]
impl<S: BlockingStore> Store for OffThread<S> {
    fn hand_over(&self, key: Option<String>, event: Event, created_ms: u64) -> HandOver {
        self.0.hand_over(key, event, created_ms)
    }

    fn close_hand_overs(&self) -> StoreFuture<()> {
        self.run(|s| {
            s.close_hand_overs();
            Ok(())
        })
    }

    fn claim(&self, max: usize, now_ms: u64) -> StoreFuture<Vec<Claimed>> {
        self.run(move |s| s.claim(max, now_ms))
    }

    fn finish(&self, done: Vec<(EventId, Terminal, Vec<u8>)>) -> StoreFuture<()> {
        self.run(move |s| s.finish(done))
    }

    fn reschedule(
        &self,
        id: EventId,
        due_ms: u64,
        attempts: u32,
        maybe_sent: bool,
    ) -> StoreFuture<()> {
        self.run(move |s| s.reschedule(id, due_ms, attempts, maybe_sent))
    }

    fn recover(&self) -> StoreFuture<Vec<Claimed>> {
        self.run(|s| s.recover())
    }

    fn left(&self) -> StoreFuture<Left> {
        self.run(|s| s.left())
    }

    fn next_due(&self) -> Option<u64> {
        self.0.next_due()
    }

    fn counts(&self) -> Result<(u64, u64, Option<u64>), StoreError> {
        self.0.counts()
    }

    fn settled(&self, ids: Vec<EventId>) -> StoreFuture<Vec<(EventId, Outcome)>> {
        self.run(move |s| s.settled(&ids))
    }

    fn has_key(&self, key: &str) -> Result<bool, StoreError> {
        self.0.has_key(key)
    }

    fn is_durable(&self) -> bool {
        true
    }
}

/// A finished operation, for stores that answer at once (memory).
pub(crate) fn done<T: Send + 'static>(value: T) -> StoreFuture<T> {
    ready(Ok(value))
}
