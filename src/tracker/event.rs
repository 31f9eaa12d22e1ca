//! What a tracker carries: an event (a lead or a sale request) and its id.

use serde::{Deserialize, Serialize};

use crate::models::{TrackLeadRequest, TrackSaleRequest};

/// A conversion handed to a [`Tracker`](super::Tracker): a lead or a sale, as the request
/// that records it.
///
/// It serialises as the request's JSON with a `"type"` of `"lead"` or `"sale"`, the record
/// format of the `dub-track` command-line tool:
///
/// ```
/// use dub::tracker::Event;
///
/// let event: Event = serde_json::from_str(
///     r#"{"type":"sale","customerExternalId":"user_42","amount":4900,"invoiceId":"in_1"}"#,
/// )?;
/// assert!(event.is_deduplicated());
/// assert_eq!(event.customer_external_id(), "user_42");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Event {
    /// A lead: `POST /track/lead`.
    Lead(TrackLeadRequest),
    /// A sale: `POST /track/sale`.
    Sale(TrackSaleRequest),
}

impl Event {
    /// The customer the event belongs to; a customer's events are delivered in order.
    pub fn customer_external_id(&self) -> &str {
        match self {
            Event::Lead(r) => &r.customer_external_id,
            Event::Sale(r) => &r.customer_external_id,
        }
    }

    /// Whether Dub deduplicates the event, so that it may be sent again after a failure whose
    /// outcome is unknown (see [`TrackLeadRequest::is_deduplicated`] and
    /// [`TrackSaleRequest::is_deduplicated`]).
    pub fn is_deduplicated(&self) -> bool {
        match self {
            Event::Lead(r) => r.is_deduplicated(),
            Event::Sale(r) => r.is_deduplicated(),
        }
    }

    /// Checks the event against the rules of Dub's API without sending it.
    pub fn validate(&self) -> crate::Result<()> {
        match self {
            Event::Lead(r) => r.validate(),
            Event::Sale(r) => r.validate(),
        }
    }

    /// `"lead"` or `"sale"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Lead(_) => "lead",
            Event::Sale(_) => "sale",
        }
    }
}

impl From<TrackLeadRequest> for Event {
    fn from(r: TrackLeadRequest) -> Self {
        Event::Lead(r)
    }
}

impl From<TrackSaleRequest> for Event {
    fn from(r: TrackSaleRequest) -> Self {
        Event::Sale(r)
    }
}

/// A tracker's id for an event, in hand-over order. With a spool it stays the same across
/// restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(pub(crate) u64);

impl EventId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}
