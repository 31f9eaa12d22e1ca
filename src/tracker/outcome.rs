//! What becomes of events: outcomes, receipts, counts, the shutdown report, hand-over errors.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Shared;

use super::event::{Event, EventId};
use crate::Error;
use crate::models::{TrackLeadResponse, TrackSaleResponse};

/// Dub's answer to a delivered event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Response {
    /// The lead's response.
    Lead(TrackLeadResponse),
    /// The sale's response.
    Sale(TrackSaleResponse),
    /// Dub's answer as JSON: when it was recorded by an earlier process on the same spool, or
    /// Dub answered 2xx with a body this crate could not decode (`Null` if not JSON).
    Raw(serde_json::Value),
}

/// The terminal outcome of one event.
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "made once per event; boxing the response would cost an allocation for nothing"
)]
#[non_exhaustive]
pub enum Outcome {
    /// Dub recorded it (or already had it: a deduplicated lead or a repeated invoice id).
    Delivered(Response),
    /// Dub refused it (a 4xx other than 429 and the lead race), or it was given up without any
    /// attempt possibly reaching Dub: it is certainly not recorded. Fix it and hand it over
    /// again.
    Failed(Error),
    /// An attempt may have reached Dub, and Dub does not deduplicate the event (a sale without
    /// invoice id, a `deferred` lead), so it was not sent again; or it was given up after such
    /// an attempt. Reconcile with Dub before sending it again.
    Uncertain(Error),
    /// The tracker stopped before delivering it: it is in the
    /// [`ShutdownReport`] (in memory) or still in the spool for the next start.
    NotDelivered,
}

impl Outcome {
    /// Whether the event was delivered.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered(_))
    }

    /// The error of a failed or uncertain event.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Outcome::Failed(e) | Outcome::Uncertain(e) => Some(e),
            _ => None,
        }
    }

    /// `"delivered"`, `"failed"`, `"uncertain"` or `"not_delivered"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Failed(_) => "failed",
            Outcome::Uncertain(_) => "uncertain",
            Outcome::NotDelivered => "not_delivered",
        }
    }
}

/// One event's terminal outcome, as the tracker's outcome callback sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct EventOutcome {
    /// The event's id.
    pub id: EventId,
    /// The key it was handed over with, if any.
    pub key: Option<String>,
    /// The event.
    pub event: Event,
    /// What became of it.
    pub outcome: Outcome,
    /// HTTP attempts made for it, over all its deliveries.
    pub attempts: u32,
    /// Time from hand-over to the outcome (from the original hand-over, across restarts).
    pub age: Duration,
}

/// The receipt of a handed-over event: await it (or [`wait`](Receipt::wait) from sync code) for
/// the event's [`Outcome`], when the caller needs confirmation that Dub has it.
///
/// Dropping a receipt changes nothing: the event is delivered all the same, and its outcome
/// still reaches the tracker's outcome callback. Every receipt of one event (a key handed over
/// again gets one too) shares one result: holding many costs the tracker nothing more.
///
/// With a spool shared by several processes, another process may deliver the event (its
/// dispatcher claims any pending row): the receipt then resolves with the outcome that process
/// stored, within about a second of it; the outcome callback and [`Tracker::stats`] of this
/// tracker do not count it, since this tracker did not settle it. A key handed over again
/// after its event was settled (in an earlier run, say) gets a receipt that is ready at once
/// with the stored outcome, again without the callback or the counts.
///
/// [`Tracker::stats`]: super::Tracker::stats
#[must_use = "await the receipt, or drop it if the outcome callback is enough"]
pub struct Receipt {
    pub(crate) id: EventId,
    /// Shared by every receipt of the event (a key handed over again gets a clone).
    pub(crate) rx: Option<SharedOutcome>,
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt").field("id", &self.id).finish()
    }
}

impl Receipt {
    /// The event's id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// Blocks this thread until the outcome is known. For sync code; in async code, `.await`
    /// the receipt instead. Do not call it on the thread of a current-thread runtime that
    /// runs the tracker: that thread would wait for itself.
    pub fn wait(self) -> Outcome {
        match self.rx {
            Some(rx) => crate::wait::block_on(rx).unwrap_or(Outcome::NotDelivered),
            None => Outcome::NotDelivered,
        }
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; the receipt comes back if it ran out.
    pub fn wait_timeout(self, timeout: Duration) -> Result<Outcome, Receipt> {
        let Receipt { id, rx } = self;
        let Some(rx) = rx else {
            return Ok(Outcome::NotDelivered);
        };
        let deadline = std::time::Instant::now().checked_add(timeout);
        match crate::wait::block_until(rx, deadline) {
            Ok(outcome) => Ok(outcome.unwrap_or(Outcome::NotDelivered)),
            Err(rx) => Err(Receipt { id, rx: Some(rx) }),
        }
    }

    /// The outcome, if it is already known; the receipt otherwise.
    pub fn try_outcome(mut self) -> Result<Outcome, Receipt> {
        let ready = self.rx.as_mut().map(crate::wait::now_or_never);
        match ready {
            None => Ok(Outcome::NotDelivered),
            Some(Some(outcome)) => Ok(outcome.unwrap_or(Outcome::NotDelivered)),
            Some(None) => Err(self),
        }
    }
}

impl IntoFuture for Receipt {
    type Output = Outcome;
    type IntoFuture = ReceiptFuture;
    fn into_future(self) -> ReceiptFuture {
        ReceiptFuture(self)
    }
}

/// The future of a [`Receipt`] (a receipt is not a future itself, so that dropping one unawaited
/// is plainly fine).
#[derive(Debug)]
pub struct ReceiptFuture(Receipt);

impl Future for ReceiptFuture {
    type Output = Outcome;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match self.0.rx.as_mut() {
            Some(rx) => Pin::new(rx)
                .poll(cx)
                .map(|o| o.unwrap_or(Outcome::NotDelivered)),
            None => Poll::Ready(Outcome::NotDelivered),
        }
    }
}

/// The receiving side every receipt of one event clones.
pub(crate) type SharedOutcome = Shared<oneshot::AsyncReceiver<Outcome>>;

/// A hand-over's answer: a receipt, or the event back with the reason.
pub(crate) type HandOverResult = Result<Receipt, HandOverError>;

/// A hand-over in progress: ready once the store holds the event (a durable store once it is
/// committed; in memory, at once). `.await` it in async code, [`wait`](HandOver::wait) for it in
/// sync code.
#[must_use = "the event may not be queued until the hand-over is awaited or waited for"]
pub struct HandOver {
    state: HandOverState,
}

enum HandOverState {
    Done(Option<HandOverResult>),
    /// The store answers when it has stored the event.
    #[cfg(feature = "spool")]
    Pending(oneshot::AsyncReceiver<HandOverResult>),
}

impl fmt::Debug for HandOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let done = matches!(self.state, HandOverState::Done(_));
        f.debug_struct("HandOver").field("done", &done).finish()
    }
}

impl HandOver {
    pub(crate) fn done(result: HandOverResult) -> Self {
        Self {
            state: HandOverState::Done(Some(result)),
        }
    }

    /// A hand-over the store completes later, through the sender.
    #[cfg(feature = "spool")]
    pub(crate) fn pending() -> (oneshot::Sender<HandOverResult>, Self) {
        let (tx, rx) = oneshot::channel();
        let state = HandOverState::Pending(rx.into_future());
        (tx, Self { state })
    }

    /// Blocks this thread until the event is queued (or refused). For sync code; do not call
    /// it on the thread of a current-thread runtime that runs the tracker (it would wait for
    /// itself).
    pub fn wait(self) -> HandOverResult {
        crate::wait::block_on(self.into_future())
    }
}

/// The future of a [`HandOver`].
#[derive(Debug)]
pub struct HandOverFuture(HandOver);

impl IntoFuture for HandOver {
    type Output = HandOverResult;
    type IntoFuture = HandOverFuture;
    fn into_future(self) -> HandOverFuture {
        HandOverFuture(self)
    }
}

impl Future for HandOverFuture {
    type Output = HandOverResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Only a store that answers later (a spool) needs the context.
        #[cfg(not(feature = "spool"))]
        let _ = cx;
        match &mut self.0.state {
            HandOverState::Done(result) => {
                Poll::Ready(result.take().unwrap_or_else(|| Err(HandOverError::gone())))
            }
            #[cfg(feature = "spool")]
            HandOverState::Pending(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(HandOverError::gone()))),
        }
    }
}

/// Why an event was not handed over. Nothing is dropped silently: the event comes back with
/// the error ([`HandOverError::into_event`]), for the caller to decide.
#[derive(Debug)]
pub struct HandOverError {
    pub(crate) kind: HandOverErrorKind,
    pub(crate) event: Option<Box<Event>>,
    pub(crate) detail: Option<String>,
    pub(crate) source: Option<Error>,
}

/// What kind of refusal a [`HandOverError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandOverErrorKind {
    /// The queue holds as many undelivered events as it may ([`TrackerBuilder::capacity`](super::TrackerBuilder::capacity)).
    Full,
    /// The event breaks a rule of Dub's API ([`HandOverError::validation`] says which).
    Invalid,
    /// The tracker is shutting down or stopped.
    Stopped,
    /// The spool could not store the event.
    Storage,
}

impl HandOverError {
    pub(crate) fn new(kind: HandOverErrorKind, event: Option<Event>) -> Self {
        Self {
            kind,
            event: event.map(Box::new),
            detail: None,
            source: None,
        }
    }

    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    fn gone() -> Self {
        Self::new(HandOverErrorKind::Stopped, None)
            .with_detail("the tracker stopped before the hand-over completed")
    }

    /// What kind of refusal this is.
    pub fn kind(&self) -> HandOverErrorKind {
        self.kind
    }

    /// For [`HandOverErrorKind::Invalid`]: the validation error, naming the field.
    pub fn validation(&self) -> Option<&Error> {
        self.source.as_ref()
    }

    /// The event that was not handed over.
    pub fn into_event(self) -> Option<Event> {
        self.event.map(|e| *e)
    }
}

impl fmt::Display for HandOverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            HandOverErrorKind::Full => f.write_str("the tracker's queue is full")?,
            HandOverErrorKind::Invalid => f.write_str("the event is invalid")?,
            HandOverErrorKind::Stopped => f.write_str("the tracker is stopped")?,
            HandOverErrorKind::Storage => f.write_str("the spool could not store the event")?,
        }
        if let Some(e) = &self.source {
            write!(f, ": {e}")?;
        }
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for HandOverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A tracker's counts, from [`Tracker::stats`](super::Tracker::stats).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Events waiting to be sent (including those waiting for a retry).
    pub queued: u64,
    /// Events being sent now.
    pub in_flight: u64,
    /// Events delivered since the tracker started.
    pub delivered: u64,
    /// Events failed since the tracker started.
    pub failed: u64,
    /// Events found uncertain since the tracker started.
    pub uncertain: u64,
    /// Deliveries that will be tried again (a failure that was safe to retry).
    pub retried: u64,
    /// 429 responses seen by the tracker's client.
    pub rate_limited: u64,
    /// How long the oldest undelivered event has waited.
    pub oldest_age: Option<Duration>,
    /// Why the latest delivery that will be tried again failed (its error, as displayed),
    /// until a later delivery settles its event (or nothing is left to deliver). While nothing gets through (Dub unreachable,
    /// a wrong base URL, a proxy refusing) the counts stand still; this says why, for a
    /// progress display or a health check.
    pub last_failure: Option<String>,
    /// Why the spool could not be read when these counts were taken (a damaged or vanished
    /// file): `queued`, `in_flight` and `oldest_age` are then unknown, not zero.
    pub store_error: Option<String>,
}

/// What [`Tracker::shutdown`](super::Tracker::shutdown) left.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The counts at the end.
    pub stats: Stats,
    /// Events not delivered by the deadline, in hand-over order, when the tracker keeps them in
    /// memory: store them or hand them to the next tracker.
    pub undelivered: Vec<(EventId, Event)>,
    /// Events not delivered by the deadline that stay in the spool for the next start.
    pub left_in_spool: u64,
    /// Whether everything was delivered before the deadline: never when the spool could not be
    /// read ([`Stats::store_error`] in [`stats`](Self::stats) says why).
    pub drained: bool,
}
