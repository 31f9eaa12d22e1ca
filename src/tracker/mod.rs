//! A background tracker: hand leads and sales over without waiting for Dub, and have them
//! delivered through outages, rate limits and (with a spool) restarts.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use dub::Dub;
//! use dub::models::TrackLeadRequest;
//! use std::time::Duration;
//!
//! let dub = Dub::from_env()?;
//! let tracker = dub.tracker().capacity(50_000).start()?;
//!
//! // In a request handler: returns as soon as the event is queued.
//! let lead = TrackLeadRequest::builder()
//!     .click_id("clk_123")
//!     .event_name("Sign up")
//!     .customer_external_id("user_42")
//!     .build();
//! let receipt = tracker.lead(lead).await?;
//! // Await the receipt only where confirmation matters (an importer committing an offset).
//! let outcome = receipt.await;
//! assert!(outcome.is_delivered());
//!
//! // At exit: deliver what can be delivered in 10 s; the rest comes back in the report.
//! let report = tracker.shutdown(Duration::from_secs(10)).await;
//! assert!(report.undelivered.is_empty());
//! # Ok(()) }
//! ```
//!
//! # What it promises
//!
//! - **Hand-over never waits on the network.** [`Tracker::lead`], [`Tracker::sale`] and
//!   [`Tracker::send`] return once the event is queued: in memory at once; with a spool once it
//!   is committed to disk (many events share one commit). The queue is bounded
//!   ([`TrackerBuilder::capacity`]): when it is full the hand-over fails at once with the event
//!   in the error, never a silent drop, never an unbounded wait. Events are validated at
//!   hand-over, so a bad one is refused there, naming the field.
//! - **Dub's order where Dub needs it.** A customer's events (by `customerExternalId`) are sent
//!   one at a time in hand-over order, so a lead precedes that customer's sales; different
//!   customers are sent concurrently ([`TrackerBuilder::max_in_flight`]), paced by the client's
//!   [rate limiter](crate::rate_limit), so a burst drains at the key's limit.
//! - **Retried until delivered, within the safety rule.** An event that certainly did not reach
//!   Dub, or that Dub deduplicates (a lead that is not `deferred`, a sale with an invoice id), is
//!   retried with capped backoff for as long as [`TrackerBuilder::max_age`] allows (6 hours by
//!   default), through outages: when deliveries fail with outage errors the tracker pauses and
//!   probes with one event at a time instead of retrying everything. An event whose outcome is
//!   unknown and that Dub does not deduplicate is never resent: it ends [`Outcome::Uncertain`].
//!   An event Dub refuses (a 4xx other than 429 and the lead race) ends [`Outcome::Failed`] with
//!   Dub's error.
//! - **Outcomes are observable**: per event by awaiting its [`Receipt`]; for all events through
//!   [`TrackerBuilder::on_outcome`]; as counts through [`Tracker::stats`] (also traced every 10 s
//!   while there is work).
//! - **Shutdown loses nothing.** [`Tracker::shutdown`] stops taking events, delivers what it can
//!   before the deadline (each attempt bounded by it), and returns what is left
//!   ([`ShutdownReport::undelivered`]) or leaves it in the spool. An accepted event ends in exactly
//!   one place: delivered, in the report, or in the spool; a hand-over racing the shutdown is
//!   either accepted (and then one of those) or refused with the event. What may have reached Dub
//!   never comes back as undelivered: a delivery Dub answered is delivered even if the tracker
//!   was cut short before settling it, and one cut off in flight is [`Outcome::Uncertain`] unless
//!   Dub deduplicates the event. Dropping the last handle without shutdown logs how many events
//!   were not delivered (receipts of those in flight resolve the same way). A tracker whose
//!   runtime was shut down refuses hand-overs with the event, and its report lists what it holds.

pub(crate) mod decision;
mod dispatcher;
mod event;
mod in_flight;
mod memory;
mod outcome;
mod receipts;
#[cfg(feature = "spool")]
mod spool;
mod state;
mod store;

pub use event::{Event, EventId};
pub use outcome::{
    EventOutcome, HandOver, HandOverError, HandOverErrorKind, HandOverFuture, Outcome, Receipt,
    ReceiptFuture, Response, ShutdownReport, Stats,
};
pub use state::OutcomeCallback;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::models::{TrackLeadRequest, TrackSaleRequest};
use crate::{Dub, Error, RetryConfig};
use in_flight::InFlight;
use memory::MemoryQueue;
use receipts::Receipts;
use state::{Config, Core, Counters, Stopping};
use store::Store;

impl Dub {
    /// A builder for a background [`Tracker`] that delivers through this client (its retry
    /// budget and rate limiter included).
    pub fn tracker(&self) -> TrackerBuilder {
        TrackerBuilder {
            dub: self.clone(),
            config: Config::default(),
            on_outcome: None,
        }
    }
}

/// Configures and starts a [`Tracker`]; from [`Dub::tracker`].
#[must_use = "a tracker builder does nothing until started"]
pub struct TrackerBuilder {
    dub: Dub,
    config: Config,
    on_outcome: Option<OutcomeCallback>,
}

impl fmt::Debug for TrackerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TrackerBuilder {
    /// The most undelivered events (queued, waiting for a retry, or in flight) the tracker
    /// holds; a hand-over beyond it fails with [`HandOverErrorKind::Full`] (default 10,000).
    /// This bounds the tracker's memory.
    pub fn capacity(mut self, events: usize) -> Self {
        self.config.capacity = events.max(1);
        self
    }

    /// The most events sent at the same time, each of a different customer (default 32).
    pub fn max_in_flight(mut self, events: usize) -> Self {
        self.config.max_in_flight = events.max(1);
        self
    }

    /// How long an event may go undelivered before the tracker gives up on it (default 6 h):
    /// it then ends [`Outcome::Failed`], or [`Outcome::Uncertain`] if an attempt may have
    /// reached Dub.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.config.max_age = age;
        self
    }

    /// The wait before an event's first retry and the longest wait between its retries
    /// (default 1 s and 5 min, doubling, jittered).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.backoff.initial = initial;
        self.config.backoff.max = max.max(initial);
        self
    }

    /// The retry policy of each delivery call (default [`RetryConfig::default`]: 3 attempts
    /// within 30 s); the tracker retries beyond it. The same setting as
    /// [`DubBuilder::retry_config`](crate::DubBuilder::retry_config) and
    /// [`TrackCall::retry_config`](crate::TrackCall::retry_config).
    pub fn retry_config(mut self, policy: RetryConfig) -> Self {
        self.config.call_policy = policy;
        self
    }

    /// The former name of [`retry_config`](Self::retry_config).
    #[deprecated(since = "0.1.0", note = "renamed `retry_config`, as on `DubBuilder`")]
    pub fn call_retries(self, policy: RetryConfig) -> Self {
        self.retry_config(policy)
    }

    /// Keeps the queue in a durable spool, a SQLite file at `path` (created if missing), instead
    /// of memory. Feature `spool`.
    ///
    /// - A hand-over completes once the event is committed to disk (many hand-overs share one
    ///   commit), so an acknowledged event survives `kill -9` and power loss.
    /// - At start the tracker delivers what a previous process left. An event that was in
    ///   flight when its process died may have reached Dub: it is sent again only if Dub
    ///   deduplicates it, and otherwise ends [`Outcome::Uncertain`], reported through
    ///   [`on_outcome`](Self::on_outcome).
    /// - Several processes on one host may share the file: each event is claimed by one of
    ///   them, and a customer's events still go in order.
    /// - [`Tracker::send_with_key`] remembers keys after delivery: handing a key over again
    ///   answers with the stored outcome instead of sending twice.
    /// - [`capacity`](Self::capacity) bounds the undelivered events in the file, whichever
    ///   process handed them over. Events left at shutdown stay in the file
    ///   ([`ShutdownReport::left_in_spool`]).
    /// - [`start`](Self::start) refuses, in one line, a file that cannot be written, that is not a
    ///   spool, or that is damaged (SQLite's `quick_check`, about 0.1 s per 100,000 events in
    ///   the file). A disk that fills up later pauses the tracker's writes (one error logged)
    ///   until it has room again.
    ///
    /// ```no_run
    /// # fn run(dub: dub::Dub) -> dub::Result<()> {
    /// let tracker = dub.tracker().spool("/var/lib/myapp/dub-spool.sqlite").start()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "spool")]
    #[cfg_attr(docsrs, doc(cfg(feature = "spool")))]
    pub fn spool(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.spool = Some(path.into());
        self
    }

    /// Called with every event's terminal outcome, from the tracker's task (keep it quick: it
    /// delays the deliveries behind it; a panic in it is caught and logged). Outcomes of
    /// deliveries still unsettled when the tracker is cut short are reported from
    /// [`Tracker::shutdown`] or from dropping the last handle.
    pub fn on_outcome(mut self, callback: impl Fn(&EventOutcome) + Send + Sync + 'static) -> Self {
        self.on_outcome = Some(Arc::new(callback));
        self
    }

    /// Starts the tracker on the current tokio runtime.
    ///
    /// Fails with [`ErrorKind::Config`](crate::ErrorKind::Config) outside a tokio runtime (use
    /// [`start_in_background`](Self::start_in_background) from sync code) or when the client's
    /// configuration was refused.
    pub fn start(self) -> crate::Result<Tracker> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config(
                "Tracker::start needs a tokio runtime; from sync code use start_in_background",
            )
        })?;
        self.launch(runtime, None)
    }

    /// Starts the tracker on a runtime of its own (one worker thread), for sync code: hand
    /// events over from any thread, [`HandOver::wait`], [`Receipt::wait`] and
    /// [`Tracker::shutdown_blocking`].
    pub fn start_in_background(self) -> crate::Result<Tracker> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dub-tracker")
            .enable_all()
            .build()
            .map_err(|e| Error::config(format!("the tracker's runtime could not start: {e}")))?;
        let handle = runtime.handle().clone();
        self.launch(handle, Some(runtime))
    }

    /// The store, handed the receipts it registers and the dispatcher's wake-up.
    fn store(&self, receipts: &Arc<Receipts>, wake: &Arc<Notify>) -> crate::Result<Box<dyn Store>> {
        #[cfg(feature = "spool")]
        if let Some(path) = &self.config.spool {
            let spool =
                spool::Spool::open(path, self.config.capacity, receipts.clone(), wake.clone())
                    .map_err(|e| {
                        Error::config(format!(
                            "the spool at {} cannot be used: {e}",
                            path.display()
                        ))
                    })?;
            return Ok(Box::new(store::OffThread(Arc::new(spool))));
        }
        Ok(Box::new(MemoryQueue::new(
            self.config.capacity,
            receipts.clone(),
            wake.clone(),
        )))
    }

    fn launch(
        self,
        runtime: tokio::runtime::Handle,
        own: Option<tokio::runtime::Runtime>,
    ) -> crate::Result<Tracker> {
        self.dub.core()?;
        let receipts = Arc::new(Receipts::default());
        let wake = Arc::new(Notify::new());
        let store = self.store(&receipts, &wake)?;
        let (shutdown, _) = watch::channel(None);
        let core = Arc::new(Core {
            dub: self.dub,
            config: self.config,
            store,
            wake,
            receipts,
            in_flight: InFlight::default(),
            counters: Counters::default(),
            accepting: AtomicBool::new(true),
            running: AtomicBool::new(true),
            shutdown,
            on_outcome: self.on_outcome,
        });
        let dispatcher = runtime.spawn(dispatcher::run(core.clone()));
        Ok(Tracker {
            handle: Arc::new(Handle {
                core,
                dispatcher: Mutex::new(Some(dispatcher)),
                runtime,
                own: Mutex::new(own),
            }),
        })
    }
}

/// A background tracker; from [`Dub::tracker`]. See the [module docs](self).
///
/// Cheap to clone: clones hand over to the same queue. The tracker stops when
/// [`shutdown`](Tracker::shutdown) is called, or when the last clone is dropped (then it logs
/// how many events it did not deliver).
#[derive(Clone)]
pub struct Tracker {
    handle: Arc<Handle>,
}

struct Handle {
    core: Arc<Core>,
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    /// The tracker's own runtime, from `start_in_background`.
    own: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let running = self
            .dispatcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = running {
            drop(self.core.stop_taking());
            task.abort();
            // What was in flight may have reached Dub: settled honestly, not "not delivered";
            // on the tracker's runtime while it runs (a store may need it), here when it is
            // gone or is the tracker's own (shut down below, before a task of it would run).
            let core = self.core.clone();
            let settle = async move {
                dispatcher::abandon(&core).await;
                core.receipts.resolve_rest();
            };
            let own = self
                .own
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some();
            if self.core.running.load(Ordering::Acquire) && !own {
                drop(self.runtime.spawn(settle));
            } else {
                crate::wait::block_on(Box::pin(settle));
            }
            let stats = self.core.stats();
            let left = stats.queued + stats.in_flight;
            if left > 0 {
                tracing::warn!(
                    undelivered = left,
                    durable = self.core.store.is_durable(),
                    "dub tracker dropped without shutdown: {left} events not delivered"
                );
            }
        }
        if let Some(rt) = self
            .own
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            // Dropping a runtime inside async code panics; this never does.
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// Hands a lead over. See [`send`](Self::send).
    pub fn lead(&self, request: TrackLeadRequest) -> HandOver {
        self.hand_over(None, Event::Lead(request))
    }

    /// Hands a sale over. See [`send`](Self::send).
    pub fn sale(&self, request: TrackSaleRequest) -> HandOver {
        self.hand_over(None, Event::Sale(request))
    }

    /// Hands an event over: `.await` the returned [`HandOver`] (or [`HandOver::wait`] in sync
    /// code) for the event's [`Receipt`]. In memory it is ready at once; with a spool once the
    /// event is committed to disk. It never waits on the network.
    pub fn send(&self, event: impl Into<Event>) -> HandOver {
        self.hand_over(None, event.into())
    }

    /// Hands an event over under `key`, your id for it (a webhook's event id, a file and line).
    /// While an event with that key is undelivered (and with a spool, also after it was
    /// delivered), handing the key over again queues nothing and returns a receipt for the
    /// first.
    pub fn send_with_key(&self, key: impl Into<String>, event: impl Into<Event>) -> HandOver {
        self.hand_over(Some(key.into()), event.into())
    }

    fn hand_over(&self, key: Option<String>, event: Event) -> HandOver {
        let core = &self.handle.core;
        if !core.accepting.load(Ordering::Acquire) {
            return HandOver::done(Err(HandOverError::new(
                HandOverErrorKind::Stopped,
                Some(event),
            )));
        }
        if let Err(e) = event.validate() {
            let mut err = HandOverError::new(HandOverErrorKind::Invalid, Some(event));
            err.source = Some(e);
            return HandOver::done(Err(err));
        }
        core.store.hand_over(key, event, crate::clock::now_ms())
    }

    /// Whether `key` was handed over before: its event is queued or in flight, or (with a
    /// spool) settled, by this process or another sharing the spool, in this run or an
    /// earlier one. Handing such a key over again sends nothing new: the receipt answers for
    /// the event already held. With a spool this reads the file: it blocks for a moment.
    ///
    /// Useful before handing over events that Dub does not deduplicate, to tell which would be
    /// sent for the first time. A spool that cannot be read answers with its error.
    pub fn knows_key(&self, key: &str) -> Result<bool, Error> {
        self.handle
            .core
            .store
            .has_key(key)
            .map_err(|e| Error::config(format!("the tracker's store cannot be read: {e}")))
    }

    /// The tracker's counts now.
    pub fn stats(&self) -> Stats {
        self.handle.core.stats()
    }

    /// Stops taking events, delivers what it can within `deadline`, and reports what is left;
    /// it returns within the deadline plus a few milliseconds.
    ///
    /// Deliveries started after the call are bounded by the deadline. One still running at the
    /// deadline is cut off: an event Dub deduplicates goes back to the queue (so it is in the
    /// report, or in the spool); one it does not ends [`Outcome::Uncertain`], since the cut
    /// request may have reached Dub. Receipts of events left undelivered resolve to
    /// [`Outcome::NotDelivered`].
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let at = Instant::now()
            .checked_add(deadline)
            .unwrap_or_else(far_future);
        self.finish(Stopping {
            claim_until: at,
            cut_at: Some(at),
        })
        .await
    }

    /// Stops taking events, starts no new delivery, waits for the deliveries in flight to
    /// finish (each within its call's own deadline), and reports what is left. Nothing is cut
    /// off, so no event becomes uncertain by stopping: what a command-line tool does on Ctrl-C.
    pub async fn stop(self) -> ShutdownReport {
        self.finish(Stopping {
            claim_until: Instant::now(),
            cut_at: None,
        })
        .await
    }

    async fn finish(self, stopping: Stopping) -> ShutdownReport {
        let core = self.handle.core.clone();
        // A spool's writer commits what it holds and stops, so the report counts it.
        if let Err(e) = core.stop_taking().await {
            tracing::error!(error = %e, "dub tracker: cannot close the store to hand-overs");
        }
        // send_replace, not send: `send` drops the value when nobody subscribed yet, and a
        // dispatcher stopped right after start may not have subscribed.
        core.shutdown.send_replace(Some(stopping));
        let task = self
            .handle
            .dispatcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task {
            // The dispatcher ends by the deadline itself; the grace is for scheduling.
            let grace = stopping
                .cut_at
                .and_then(|at| at.checked_add(Duration::from_millis(500)));
            let finished = match grace {
                Some(grace) => tokio::time::timeout_at(grace, &mut task).await.is_ok(),
                None => (&mut task).await.is_ok(),
            };
            if !finished {
                task.abort();
            }
        }
        dispatcher::report(&core).await
    }

    /// [`shutdown`](Self::shutdown) for sync code (a tracker from
    /// [`TrackerBuilder::start_in_background`], or any thread outside async code). If the
    /// tracker's runtime is gone, the report is made on this thread.
    ///
    /// It parks this thread until the report is ready, as [`HandOver::wait`] and
    /// [`Receipt::wait`] do: never call these on the thread of a current-thread runtime that
    /// runs the tracker (its `block_on`, or a task on it), which would wait for itself forever.
    pub fn shutdown_blocking(self, deadline: Duration) -> ShutdownReport {
        self.blocking(move |tracker| tracker.shutdown(deadline))
    }

    /// [`stop`](Self::stop) for sync code.
    pub fn stop_blocking(self) -> ShutdownReport {
        self.blocking(Tracker::stop)
    }

    fn blocking<F, Fut>(self, f: F) -> ShutdownReport
    where
        F: FnOnce(Tracker) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ShutdownReport> + Send,
    {
        let runtime = self.handle.runtime.clone();
        // The tracker's own runtime is shut down here, on this thread, after it did its work.
        let own = self
            .handle
            .own
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let core = self.handle.core.clone();
        let report = if core.running.load(Ordering::Acquire) {
            let (tx, rx) = oneshot::channel();
            runtime.spawn(async move {
                let _ = tx.send(f(self).await);
            });
            crate::wait::block_on(rx.into_future()).ok()
        } else {
            drop(self);
            None
        };
        // The runtime is gone (shut down under the tracker): the report is made here.
        let report = report.unwrap_or_else(|| {
            crate::wait::block_on(Box::pin(async {
                let _ = core.stop_taking().await;
                dispatcher::report(&core).await
            }))
        });
        if let Some(rt) = own {
            rt.shutdown_background();
        }
        report
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

#[cfg(all(test, feature = "mock"))]
mod tests {
    use super::*;
    use crate::mock::{Fault, MockDub, RandomFaults};

    /// Issue 18, defect 6: a key handed over again and again while its event is pending (a
    /// webhook retried through an outage) costs the tracker nothing more.
    #[tokio::test]
    async fn a_key_handed_over_again_and_again_holds_one_receipt_slot() {
        let mock = MockDub::start().await.unwrap();
        mock.random_faults(
            RandomFaults::new(1, 1.0).kinds([Fault::Delay(Duration::from_secs(60))]),
        );
        let dub = Dub::builder()
            .token(mock.token())
            .server_url(mock.url())
            .build()
            .unwrap();
        let tracker = dub.tracker().start().unwrap();
        let lead = TrackLeadRequest::builder()
            .click_id("clk")
            .event_name("Sign up")
            .customer_external_id("user_1")
            .build();
        let first = tracker.send_with_key("evt_1", lead.clone()).await.unwrap();
        for _ in 0..100_000 {
            let again = tracker.send_with_key("evt_1", lead.clone()).await.unwrap();
            assert_eq!(again.id(), first.id());
        }
        assert_eq!(tracker.handle.core.receipt_slots(), 1);
        assert_eq!(tracker.stats().queued + tracker.stats().in_flight, 1);
        let _ = tracker.shutdown(Duration::ZERO).await;
    }

    /// Issue 19, §1: the spool's writer is slow to answer after a commit (the pause stands for
    /// a thread descheduled there), while the dispatcher, woken by the previous commit, claims
    /// and delivers the rows just committed. Every receipt must still hear `Delivered`.
    #[cfg(feature = "spool")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_row_delivered_before_its_hand_over_answered_still_resolves_its_receipt() {
        use std::sync::atomic::Ordering;
        let mock = MockDub::start().await.unwrap();
        let dub = Dub::builder()
            .token(mock.token())
            .server_url(mock.url())
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "dub-receipt-race-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let tracker = dub.tracker().spool(dir.join("s.sqlite")).start().unwrap();
        spool::PAUSE_AFTER_COMMIT_MS.store(200, Ordering::Relaxed);
        // Handed over one after the other from two tasks: the second commit lands while the
        // dispatcher is busy with the first, and is claimed before its answer is sent.
        let mut handing = Vec::new();
        for n in 0..6 {
            let tracker = tracker.clone();
            handing.push(tokio::spawn(async move {
                let lead = TrackLeadRequest::builder()
                    .click_id("clk")
                    .event_name("Sign up")
                    .customer_external_id(format!("user_{n}"))
                    .build();
                tracker.lead(lead).await.unwrap()
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut outcomes = Vec::new();
        for h in handing {
            let receipt = h.await.unwrap();
            outcomes.push(tokio::time::timeout(Duration::from_secs(5), receipt).await);
        }
        spool::PAUSE_AFTER_COMMIT_MS.store(0, Ordering::Relaxed);
        let _ = tracker.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(mock.leads().len(), 6);
        for outcome in outcomes {
            assert!(matches!(outcome, Ok(Outcome::Delivered(_))), "{outcome:?}");
        }
    }
}
