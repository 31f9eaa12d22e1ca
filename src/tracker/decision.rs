//! What a finished delivery means for its event: delivered, failed, uncertain, sent again later,
//! or back to the queue. One pure function of the event's facts, what the delivery ended with
//! and the tracker's settings: no clock, no store, no tracker. The README's table "What the
//! tracker does with a finished delivery" states the rules; `tests` checks the two agree, and
//! checks the tracker's promise over every combination: an event Dub does not deduplicate is
//! never sent again once a request for it may have reached Dub.
//!
//! The outbox's relay takes its verdicts from here too (with its own [`Settings`]), so that a
//! tracker and a fleet of relays follow one set of rules.

use std::time::Duration;

use super::outcome::Response;
use crate::retry::Backoff;
use crate::{Error, ErrorKind};

/// How long a sale may keep meeting Dub's "Lead event not found" before it is given up: the
/// race lasts seconds; beyond this the customer has no lead.
pub(crate) const LEAD_RACE_WINDOW: Duration = Duration::from_secs(600);

/// The settings the decision reads: the tracker's, or the outbox relay's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Given up after this long undelivered.
    pub max_age: Duration,
    /// The wait before an event is sent again (its first wait also after the lead race).
    pub backoff: Backoff,
    /// After a delivery whose outcome is unknown, the next waits at least this long: the
    /// earlier request may still be running at Dub, and Dub's invoice check is read-then-write,
    /// so two overlapping requests of one invoice would both be recorded. The relay sets it to
    /// at least its client's attempt timeout; the tracker sets zero, its backoff alone spacing
    /// its deliveries as before.
    pub settle: Duration,
    /// A retry waits at least the `Retry-After` Dub asked for. The relay sends one request per
    /// delivery, so the wait is the decision's; the tracker's client already honoured it
    /// within the call (and its rate limiter holds the next one back), so it does not.
    pub honour_retry_after: bool,
}

/// What one delivery of an event ended with.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one lives per delivery, on the stack"
)]
pub(crate) enum Ended {
    /// Dub answered 2xx.
    Answered(Response),
    /// The call failed (after its own retries).
    Failed(Error),
    /// The shutdown deadline cut the delivery off: its request may have reached Dub.
    CutOff,
}

/// What is known of the event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    /// Dub deduplicates it (a lead that is not `deferred`, a sale with an invoice id).
    pub deduplicated: bool,
    /// An earlier delivery may have reached Dub.
    pub maybe_sent: bool,
    /// Deliveries so far, this one included.
    pub deliveries: u32,
    /// Time since the hand-over.
    pub age: Duration,
}

/// What becomes of the event.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one lives per delivery, on the stack"
)]
pub(crate) enum Verdict {
    Delivered(Response),
    /// Certainly not recorded by Dub.
    Failed(Error),
    /// May have been recorded; not sent again.
    Uncertain(Error),
    /// Sent again after `after`. `outage`: the failure says Dub (or the way to it) is down.
    /// `maybe_sent`: this delivery may have reached Dub (only ever for an event Dub
    /// deduplicates). `error`: what this delivery failed with.
    Retry {
        after: Duration,
        outage: bool,
        maybe_sent: bool,
        error: Error,
    },
    /// Cut off at shutdown; back to the queue as it was, to be sent first next time (only ever
    /// for an event Dub deduplicates).
    Requeue,
}

impl Verdict {
    /// What the verdict says about an outage: `Some(true)` Dub looks down, `Some(false)` Dub
    /// answered, `None` nothing is learnt.
    ///
    /// An uncertain end counts too: during an outage of timeouts or 5xx, an event Dub does not
    /// deduplicate ends uncertain at its first failure, and if that taught nothing, each such
    /// probe would be followed by the next at once, spending the queue's unsafe events one
    /// after another instead of pausing.
    pub(crate) fn dub_down(&self) -> Option<bool> {
        match self {
            Verdict::Retry { outage, .. } => Some(*outage),
            Verdict::Delivered(_) | Verdict::Failed(_) => Some(false),
            Verdict::Uncertain(e) if is_outage(e) => Some(true),
            // Dub answered (a refusal after an earlier attempt may have counted).
            Verdict::Uncertain(e) if e.status().is_some() => Some(false),
            Verdict::Uncertain(_) | Verdict::Requeue => None,
        }
    }
}

/// Failures that say Dub (or the way to it) is down rather than that it refused the event.
fn is_outage(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Connect
            | ErrorKind::Timeout
            | ErrorKind::Transport
            | ErrorKind::InternalServerError
            | ErrorKind::UnexpectedStatus
    ) && !e.status().is_some_and(|s| s.is_client_error())
}

/// Judges a finished delivery. `jitter` is a number in `[0, 1)` spreading retries of events
/// that failed together.
pub(crate) fn decide(ended: Ended, facts: &Facts, settings: &Settings, jitter: f64) -> Verdict {
    let e = match ended {
        Ended::Answered(response) => return Verdict::Delivered(response),
        Ended::CutOff if facts.deduplicated => return Verdict::Requeue,
        Ended::CutOff => return Verdict::Uncertain(Error::cut_off()),
        Ended::Failed(e) => e,
    };
    // A 2xx Dub answered with a body this crate could not read: recorded all the same.
    if e.kind() == ErrorKind::Decode && e.status().is_some_and(|s| s.is_success()) {
        let body = e
            .raw_body()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(serde_json::Value::Null);
        return Verdict::Delivered(Response::Raw(body));
    }
    let maybe_sent = facts.maybe_sent || e.may_have_been_recorded();
    let lead_race = e.is_lead_race();
    let refused = match e.kind() {
        ErrorKind::NotFound => !lead_race || facts.age >= LEAD_RACE_WINDOW,
        ErrorKind::RateLimitExceeded => false,
        ErrorKind::UnexpectedStatus => e.status().is_some_and(|s| s.is_client_error()),
        ErrorKind::BadRequest
        | ErrorKind::Unauthorized
        | ErrorKind::Forbidden
        | ErrorKind::Conflict
        | ErrorKind::InviteExpired
        | ErrorKind::UnprocessableEntity
        | ErrorKind::Validation
        | ErrorKind::Config
        | ErrorKind::Decode => true,
        _ => false,
    };
    if refused {
        // Refused now; but an earlier delivery (or attempt) may have been the one that counted.
        return if facts.maybe_sent {
            Verdict::Uncertain(
                e.with_context("an earlier delivery may have been recorded".to_owned()),
            )
        } else if maybe_sent {
            Verdict::Uncertain(e)
        } else {
            Verdict::Failed(e)
        };
    }
    if maybe_sent && !facts.deduplicated {
        return Verdict::Uncertain(e);
    }
    if facts.age >= settings.max_age {
        let e = e.with_context(format!(
            "given up after {} s undelivered (max_age)",
            facts.age.as_secs()
        ));
        return if maybe_sent {
            Verdict::Uncertain(e)
        } else {
            Verdict::Failed(e)
        };
    }
    let outage = is_outage(&e);
    let mut after = if lead_race {
        // The lead is being written: soon, not later and later.
        settings.backoff.initial
    } else {
        settings.backoff.delay(facts.deliveries, jitter)
    };
    if e.may_have_been_recorded() {
        after = after.max(settings.settle);
    }
    if settings.honour_retry_after
        && let Some(asked) = e.retry_after()
    {
        after = after.max(asked);
    }
    Verdict::Retry {
        after,
        outage,
        maybe_sent: e.may_have_been_recorded(),
        error: e,
    }
}

#[cfg(test)]
mod tests;
