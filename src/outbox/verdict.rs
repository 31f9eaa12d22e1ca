//! What one delivery attempt's failure means for an outbox row. The rules are the tracker's
//! ([`decide`]): delivered, retried when, given up failed or uncertain, the outage flag, the
//! lead race. This module only maps the tracker's verdict onto what the relay writes to the
//! row, so that a relay and a tracker can never judge one failure two ways.

use super::lease::Write;
use crate::Error;
use crate::tracker::Response;
use crate::tracker::decision::{Ended, Facts, Settings, Verdict, decide};

/// The row as the verdict needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    /// Dub deduplicates the event (a sale with an invoice, a lead not `deferred`).
    pub dedup: bool,
    /// An earlier attempt may have reached Dub.
    pub maybe_sent: bool,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// Since the row was inserted.
    pub age: std::time::Duration,
}

/// What the relay writes to the row after the attempt failed with `e`, and what the failure
/// says of an outage (`Some(true)`: Dub looks down, `Some(false)`: Dub answered, `None`:
/// nothing is learnt). `jitter`, in `[0, 1)`, spreads retries of events that failed together.
pub(crate) fn judge(row: Row, e: Error, settings: &Settings, jitter: f64) -> (Write, Option<bool>) {
    let facts = Facts {
        deduplicated: row.dedup,
        maybe_sent: row.maybe_sent,
        deliveries: row.attempts,
        age: row.age,
    };
    let verdict = decide(Ended::Failed(e), &facts, settings, jitter);
    let outage = verdict.dub_down();
    let write = match verdict {
        Verdict::Delivered(response) => Write::Delivered(json(response)),
        Verdict::Failed(e) => Write::Failed(e.to_string()),
        Verdict::Uncertain(e) => Write::Uncertain(e.to_string()),
        Verdict::Retry {
            after,
            maybe_sent,
            error,
            ..
        } => Write::Retry {
            after,
            maybe_sent,
            error: error.to_string(),
        },
        // Only a delivery cut off at a tracker's shutdown is queued again as it was, and the
        // relay's attempts end in an error instead; were it ever given, the row goes back to
        // pending as possibly sent, which only an event Dub deduplicates is.
        Verdict::Requeue => Write::Retry {
            after: settings.settle,
            maybe_sent: true,
            error: Error::cut_off().to_string(),
        },
    };
    (write, outage)
}

fn json(response: Response) -> serde_json::Value {
    match response {
        Response::Raw(body) => body,
        Response::Lead(r) => serde_json::to_value(r).unwrap_or_default(),
        Response::Sale(r) => serde_json::to_value(r).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::retry::Backoff;
    use http::StatusCode;
    use std::time::Duration;

    const SETTLE: Duration = Duration::from_secs(10);

    fn settings() -> Settings {
        Settings {
            max_age: Duration::from_secs(6 * 3600),
            backoff: Backoff::doubling(Duration::from_secs(1), Duration::from_secs(300)),
            settle: SETTLE,
            honour_retry_after: true,
        }
    }

    fn row(dedup: bool, maybe_sent: bool) -> Row {
        Row {
            dedup,
            maybe_sent,
            attempts: 1,
            age: Duration::from_secs(1),
        }
    }

    fn status(code: u16, message: &str, recorded: bool) -> Error {
        let status = StatusCode::from_u16(code).unwrap();
        let mut e = Error::new(ErrorKind::from_status(status));
        let inner = e.inner_mut();
        inner.status = Some(status);
        inner.message = Some(message.to_owned());
        inner.may_have_been_recorded = recorded;
        e
    }

    /// The transport's verdict on a sale's 404 "Lead event not found".
    fn lead_race() -> Error {
        let mut e = status(404, "Lead event not found for externalId: u", false);
        e.inner_mut().lead_race = true;
        e
    }

    fn judged(row: Row, e: Error) -> (Write, Option<bool>) {
        judge(row, e, &settings(), 0.5)
    }

    fn state(write: &Write) -> &'static str {
        match write {
            Write::Delivered(_) => "delivered",
            Write::Failed(_) => "failed",
            Write::Uncertain(_) => "uncertain",
            Write::Retry { .. } | Write::Unsent { .. } => "pending",
        }
    }

    /// One rule a line: (row, error, the row's state after it, the outage flag).
    #[test]
    fn each_verdict_lands_on_its_row_state() {
        let cases: Vec<(&str, Row, Error, &str, Option<bool>)> = vec![
            (
                "a refusal fails",
                row(true, false),
                status(422, "bad", false),
                "failed",
                Some(false),
            ),
            (
                "a refusal after an attempt that may have counted is uncertain (Dub answered)",
                row(true, true),
                status(422, "bad", false),
                "uncertain",
                Some(false),
            ),
            (
                "a 404 that is not the race fails",
                row(true, false),
                status(404, "nope", false),
                "failed",
                Some(false),
            ),
            (
                "the lead race is retried",
                row(true, false),
                lead_race(),
                "pending",
                Some(false),
            ),
            (
                "a 5xx that may have been recorded: resent when Dub deduplicates",
                row(true, false),
                status(503, "down", true),
                "pending",
                Some(true),
            ),
            (
                "a 5xx that may have been recorded: uncertain when Dub does not (Dub is down)",
                row(false, false),
                status(503, "down", true),
                "uncertain",
                Some(true),
            ),
            (
                "a 5xx before anything was recorded is retried even without dedup",
                row(false, false),
                status(503, "down", false),
                "pending",
                Some(true),
            ),
            (
                "a 429 is retried",
                row(false, false),
                status(429, "slow", false),
                "pending",
                Some(false),
            ),
        ];
        for (rule, row, error, expected, outage) in cases {
            let (write, down) = judged(row, error);
            assert_eq!(state(&write), expected, "{rule}: {write:?}");
            assert_eq!(down, outage, "{rule}: {write:?}");
        }
    }

    #[test]
    fn the_error_is_written_as_dub_track_prints_it() {
        let e = status(422, "amount: must be positive", false);
        let printed = e.to_string();
        let (write, _) = judged(row(true, false), e);
        assert_eq!(write, Write::Failed(printed));
        let (write, _) = judged(row(true, true), status(422, "bad", false));
        let Write::Uncertain(text) = write else {
            panic!("{write:?}")
        };
        assert!(
            text.contains("an earlier delivery may have been recorded"),
            "{text}"
        );
        let (write, _) = judged(row(true, false), status(503, "down", true));
        let Write::Retry { error, .. } = write else {
            panic!("{write:?}")
        };
        assert!(error.contains("503"), "{error}");
    }

    #[test]
    fn a_2xx_dub_answered_with_an_unreadable_body_is_delivered_with_that_body() {
        let mut e = Error::new(ErrorKind::Decode);
        e.inner_mut().status = Some(StatusCode::OK);
        e.inner_mut().raw_body = Some(bytes::Bytes::from_static(b"{\"odd\":1}"));
        let (write, down) = judged(row(false, false), e);
        assert_eq!(write, Write::Delivered(serde_json::json!({"odd": 1})));
        assert_eq!(down, Some(false));
    }

    /// A retry's wait and whether it says the attempt may have reached Dub.
    fn retry(write: Write) -> (Duration, bool) {
        match write {
            Write::Retry {
                after, maybe_sent, ..
            } => (after, maybe_sent),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn after_an_unknown_outcome_the_next_attempt_waits_out_the_earlier_one() {
        let (write, _) = judged(row(true, false), status(503, "down", true));
        let (after, maybe_sent) = retry(write);
        assert!(after >= SETTLE && maybe_sent, "{after:?}");
        // Nothing recorded: the usual backoff, no longer than the first step.
        let (write, _) = judged(row(true, false), status(503, "down", false));
        let (after, maybe_sent) = retry(write);
        assert!(after <= Duration::from_secs(1) && !maybe_sent, "{after:?}");
    }

    #[test]
    fn a_retry_waits_at_least_what_dub_asked_for() {
        let mut e = status(429, "slow", false);
        e.inner_mut().retry_after = Some(Duration::from_secs(42));
        let (write, _) = judged(row(true, false), e);
        assert_eq!(retry(write).0, Duration::from_secs(42));
    }

    #[test]
    fn past_max_age_an_event_is_given_up_honestly() {
        let mut old = row(true, false);
        old.age = settings().max_age;
        let (write, _) = judged(old, status(503, "down", false));
        assert_eq!(state(&write), "failed", "{write:?}");
        old.maybe_sent = true;
        let (write, _) = judged(old, status(503, "down", false));
        let Write::Uncertain(text) = write else {
            panic!("{write:?}")
        };
        assert!(text.contains("given up after"), "{text}");
    }
}
