//! What one delivery attempt's failure means for an outbox row: a pure function of the event,
//! the error and the row's history, with no database and no clock, so that every rule is
//! tested on its own.
//!
//! The rules are the tracker's (its dispatcher judges a finished attempt the same way); they are
//! written here as data until the tracker's own judgement is a pure function both can share.

use crate::{Error, ErrorKind};
use std::time::Duration;

/// How long a sale may keep meeting Dub's "Lead event not found" before it is given up: the
/// race lasts seconds; beyond this the customer has no lead.
pub(crate) const LEAD_RACE_WINDOW: Duration = Duration::from_secs(600);

/// What the relay does with the row after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Dub answered 2xx with a body this crate could not read: recorded all the same.
    Delivered(serde_json::Value),
    /// Dub refused it, and no earlier attempt may have counted: not recorded.
    Failed(String),
    /// It may have been recorded, and sending it again could record it twice.
    Uncertain(String),
    /// Try again, no sooner than `after` from now.
    Retry {
        after: Duration,
        /// This attempt may have reached Dub.
        maybe_sent: bool,
        error: String,
        /// Dub or the network is failing, not this event.
        outage: bool,
    },
}

/// The row as the verdict needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    /// Dub deduplicates the event (a sale with an invoice, a lead not `deferred`).
    pub dedup: bool,
    pub is_sale: bool,
    /// An earlier attempt may have reached Dub.
    pub maybe_sent: bool,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// Since the row was inserted.
    pub age: Duration,
}

/// The relay's timing rules.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Retried for this long, then given up.
    pub max_age: Duration,
    /// After an attempt whose outcome is unknown, the next waits this long: the earlier one may
    /// still be running at Dub, and Dub's invoice check is read-then-write, so two overlapping
    /// attempts of one invoice would both be recorded.
    pub settle: Duration,
}

pub(crate) fn judge(row: Row, e: &Error, timing: &Timing) -> Verdict {
    let text = e.to_string();
    let lead_race = row.is_sale
        && e.kind() == ErrorKind::NotFound
        && e.message()
            .is_some_and(|m| m.starts_with("Lead event not found"));
    if e.kind() == ErrorKind::Decode && e.status().is_some_and(|s| s.is_success()) {
        let body = e
            .raw_body()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(serde_json::Value::Null);
        return Verdict::Delivered(body);
    }
    let refused = match e.kind() {
        ErrorKind::NotFound => !lead_race || row.age >= LEAD_RACE_WINDOW,
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
        // Refused now; but an earlier attempt may have been the one that counted.
        return if row.maybe_sent {
            Verdict::Uncertain(format!(
                "{text} (an earlier attempt may have been recorded)"
            ))
        } else {
            Verdict::Failed(text)
        };
    }
    let maybe_sent = e.may_have_been_recorded();
    if maybe_sent && !row.dedup {
        return Verdict::Uncertain(text);
    }
    if row.age >= timing.max_age {
        let text = format!(
            "{text} (given up after {} s undelivered)",
            row.age.as_secs()
        );
        return if row.maybe_sent || maybe_sent {
            Verdict::Uncertain(text)
        } else {
            Verdict::Failed(text)
        };
    }
    let outage = matches!(
        e.kind(),
        ErrorKind::Connect
            | ErrorKind::Timeout
            | ErrorKind::Transport
            | ErrorKind::InternalServerError
            | ErrorKind::UnexpectedStatus
    );
    let mut after = if lead_race {
        timing.initial_backoff
    } else {
        backoff(timing, row.attempts)
    };
    if maybe_sent {
        after = after.max(timing.settle);
    }
    if let Some(wait) = e.retry_after() {
        after = after.max(wait);
    }
    Verdict::Retry {
        after,
        maybe_sent,
        error: text,
        outage,
    }
}

/// Capped exponential backoff with equal jitter, so that events that failed together spread.
pub(crate) fn backoff(timing: &Timing, attempts: u32) -> Duration {
    let doubling = 1u32
        .checked_shl(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let d = timing
        .initial_backoff
        .saturating_mul(doubling)
        .min(timing.max_backoff);
    let half = d / 2;
    half.saturating_add(
        Duration::try_from_secs_f64(half.as_secs_f64() * fastrand::f64()).unwrap_or(half),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    const TIMING: Timing = Timing {
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(300),
        max_age: Duration::from_secs(6 * 3600),
        settle: Duration::from_secs(10),
    };

    fn row(dedup: bool, is_sale: bool, maybe_sent: bool) -> Row {
        Row {
            dedup,
            is_sale,
            maybe_sent,
            attempts: 1,
            age: Duration::from_secs(1),
        }
    }

    fn status(code: u16, message: &str, recorded: bool) -> Error {
        let status = StatusCode::from_u16(code).unwrap();
        let mut e = Error::new(crate::ErrorKind::from_status(status));
        let inner = e.inner_mut();
        inner.status = Some(status);
        inner.message = Some(message.to_owned());
        inner.may_have_been_recorded = recorded;
        e
    }

    fn kind(verdict: &Verdict) -> &'static str {
        match verdict {
            Verdict::Delivered(_) => "delivered",
            Verdict::Failed(_) => "failed",
            Verdict::Uncertain(_) => "uncertain",
            Verdict::Retry { .. } => "retry",
        }
    }

    /// One rule a line: (row, error, what becomes of the row).
    #[test]
    fn each_rule_of_the_safety_rule() {
        let race = "Lead event not found for externalId: u and leadEventName: null";
        let cases: Vec<(&str, Row, Error, &str)> = vec![
            (
                "a refusal fails",
                row(true, true, false),
                status(422, "bad", false),
                "failed",
            ),
            (
                "a refusal after an attempt that may have counted is uncertain",
                row(true, true, true),
                status(422, "bad", false),
                "uncertain",
            ),
            (
                "a 404 that is not the race fails",
                row(true, true, false),
                status(404, "nope", false),
                "failed",
            ),
            (
                "the lead race is retried",
                row(true, true, false),
                status(404, race, false),
                "retry",
            ),
            (
                "the lead race is not a lead's",
                row(true, false, false),
                status(404, race, false),
                "failed",
            ),
            (
                "a 5xx that may have been recorded: resent when Dub deduplicates",
                row(true, true, false),
                status(503, "down", true),
                "retry",
            ),
            (
                "a 5xx that may have been recorded: uncertain when Dub does not",
                row(false, true, false),
                status(503, "down", true),
                "uncertain",
            ),
            (
                "a 5xx before anything was recorded is retried even without dedup",
                row(false, true, false),
                status(503, "down", false),
                "retry",
            ),
            (
                "a 429 is retried",
                row(false, true, false),
                status(429, "slow", false),
                "retry",
            ),
        ];
        for (rule, row, error, expected) in cases {
            let verdict = judge(row, &error, &TIMING);
            assert_eq!(kind(&verdict), expected, "{rule}: {verdict:?}");
        }
    }

    #[test]
    fn after_an_unknown_outcome_the_next_attempt_waits_out_the_earlier_one() {
        let verdict = judge(row(true, true, false), &status(503, "down", true), &TIMING);
        let Verdict::Retry {
            after,
            maybe_sent,
            outage,
            ..
        } = verdict
        else {
            panic!("{verdict:?}")
        };
        assert!(after >= TIMING.settle, "{after:?}");
        assert!(maybe_sent && outage);
        // Nothing recorded: the usual backoff, no longer than the first step.
        let verdict = judge(row(true, true, false), &status(503, "down", false), &TIMING);
        let Verdict::Retry { after, .. } = verdict else {
            panic!("{verdict:?}")
        };
        assert!(after <= TIMING.initial_backoff, "{after:?}");
    }

    #[test]
    fn past_max_age_an_event_is_given_up_honestly() {
        let mut old = row(true, true, false);
        old.age = TIMING.max_age;
        let verdict = judge(old, &status(503, "down", false), &TIMING);
        assert_eq!(kind(&verdict), "failed", "{verdict:?}");
        old.maybe_sent = true;
        let verdict = judge(old, &status(503, "down", false), &TIMING);
        assert_eq!(kind(&verdict), "uncertain", "{verdict:?}");
    }

    #[test]
    fn backoff_grows_and_is_capped_at_any_attempt_count() {
        for attempts in [0, 1, 2, 10, 31, 32, 1_000, u32::MAX] {
            let wait = backoff(&TIMING, attempts);
            assert!(wait <= TIMING.max_backoff, "{attempts}: {wait:?}");
        }
        assert!(backoff(&TIMING, 20) >= TIMING.max_backoff / 2);
    }
}
