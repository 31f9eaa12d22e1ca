//! The retry decision as one pure function: what an attempt saw, the call, the policy and the
//! time elapsed in, stop or retry out. No I/O, no clock, no randomness of its own.

use std::time::Duration;

use super::{RETRY_COST, RetryConfig, TIMEOUT_RETRY_COST};

/// What one attempt of a call saw, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Seen {
    /// A whole response arrived.
    Response {
        /// Its HTTP status.
        status: u16,
        /// How long the server asked to wait (`Retry-After` and its variants), if it did and
        /// the caller wants it honoured.
        retry_after: Option<Duration>,
        /// A sale's 404 "Lead event not found": Dub has not finished recording the customer's
        /// `async` lead, and recorded nothing for this sale.
        lead_not_found: bool,
    },
    /// Nothing reached Dub: no connection could be made, or the server refused the request
    /// before processing it (an HTTP/2 refused stream).
    NotSent {
        /// The connection attempt timed out.
        timed_out: bool,
    },
    /// The request may have reached Dub and no whole response came back: a timeout, a reset,
    /// a body cut short.
    NoResponse {
        /// The attempt timed out (rather than the connection breaking).
        timed_out: bool,
    },
}

impl Seen {
    /// A whole response with this status, no `Retry-After`, and not the lead race.
    pub fn status(status: u16) -> Seen {
        Seen::Response {
            status,
            retry_after: None,
            lead_not_found: false,
        }
    }

    /// Whether Dub may have recorded the event in this attempt: it answered 2xx or 5xx, or the
    /// request may have reached it without a whole answer.
    pub fn may_have_been_recorded(&self) -> bool {
        match *self {
            Seen::Response { status, .. } => (200..300).contains(&status) || status >= 500,
            Seen::NotSent { .. } => false,
            Seen::NoResponse { .. } => true,
        }
    }

    fn timed_out(&self) -> bool {
        matches!(
            self,
            Seen::NotSent { timed_out: true } | Seen::NoResponse { timed_out: true }
        )
    }
}

/// Facts about the call an attempt belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// The attempt's number, 1 for the first.
    pub number: u32,
    /// Time since the call started, waits included.
    pub elapsed: Duration,
    /// Whether Dub deduplicates the call (a lead that is not `deferred`, a sale with an
    /// invoice id), so that a second attempt cannot record it twice.
    pub deduplicated: bool,
}

impl Attempt {
    /// Attempt number `number` (1 for the first) of a call that started `elapsed` ago.
    pub fn new(number: u32, elapsed: Duration, deduplicated: bool) -> Attempt {
        Attempt {
            number,
            elapsed,
            deduplicated,
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Return the attempt's result.
    Stop(Stop),
    /// Try again.
    Retry {
        /// After this long.
        after: Duration,
        /// Tokens this retry takes from the client's [`RetryBudget`](super::RetryBudget).
        cost: u64,
        /// Why.
        reason: Reason,
    },
}

/// Why a call stops after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stop {
    /// The attempt succeeded.
    Succeeded,
    /// The policy does not retry what the attempt saw (a 4xx, or a status or failure it was
    /// told not to retry).
    NotRetryable,
    /// Dub may have recorded the event and does not deduplicate it: another attempt could
    /// record it twice (the safety rule).
    MayHaveBeenRecorded,
    /// The last attempt the policy allows was made.
    AttemptsExhausted,
    /// The server asked to wait beyond the call's deadline.
    RetryAfterBeyondDeadline,
    /// The backoff would end after the call's deadline.
    DeadlineWouldPass,
}

/// Why a call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// 429: Dub refused the request unprocessed.
    RateLimited,
    /// A sale's 404 "Lead event not found" right after its customer's `async` lead.
    LeadRace,
    /// Another status in the policy's list (a 4xx is safe; a 5xx only for deduplicated calls).
    Status(u16),
    /// The request never left (no connection, a refused HTTP/2 stream).
    NotSent,
    /// The attempt timed out after the request may have been sent.
    TimedOut,
    /// The connection broke after the request may have been sent.
    ConnectionLost,
}

impl Reason {
    /// A short name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::RateLimited => "rate limited",
            Reason::LeadRace => "lead not found yet",
            Reason::Status(_) => "status",
            Reason::NotSent => "not sent",
            Reason::TimedOut => "timeout",
            Reason::ConnectionLost => "connection lost",
        }
    }
}

impl RetryConfig {
    /// Decides whether, and after how long, to try a call again after an attempt.
    ///
    /// `unit` is a random number in `[0, 1)` for jitter (anything else counts as 0). The rule,
    /// in order:
    ///
    /// 1. a 2xx stops ([`Stop::Succeeded`]); what the policy does not retry stops
    ///    ([`Stop::NotRetryable`]): statuses outside [`retry_statuses`](Self::retry_statuses)
    ///    (the lead race is governed by [`retry_lead_race`](Self::retry_lead_race) instead),
    ///    connection failures when [`retry_connection_errors`](Self::retry_connection_errors)
    ///    is off;
    /// 2. if Dub may have recorded the event (a 5xx, a timeout or a broken connection after
    ///    sending) and does not deduplicate the call, it stops ([`Stop::MayHaveBeenRecorded`])
    ///    unless [`retry_ambiguous`](Self::retry_ambiguous) opts in;
    /// 3. after [`max_attempts`](Self::max_attempts) it stops;
    /// 4. the delay is the server's `Retry-After` when given (stopping at once if it ends
    ///    after the deadline; capped at [`max_interval`](Self::max_interval) when there is no
    ///    deadline), otherwise the jittered exponential backoff; a delay that ends at or after the
    ///    deadline stops ([`Stop::DeadlineWouldPass`]);
    /// 5. the retry costs 10 tokens after a timeout, 5 otherwise.
    pub fn decide(&self, seen: &Seen, attempt: &Attempt, unit: f64) -> Decision {
        let (reason, asked) = match *seen {
            Seen::Response { status, .. } if (200..300).contains(&status) => {
                return Decision::Stop(Stop::Succeeded);
            }
            Seen::Response {
                status: 404,
                lead_not_found: true,
                ..
            } if self.retry_lead_race => (Reason::LeadRace, None),
            Seen::Response {
                status,
                retry_after,
                ..
            } => {
                if !self.statuses.contains(&status) {
                    return Decision::Stop(Stop::NotRetryable);
                }
                let reason = if status == 429 {
                    Reason::RateLimited
                } else {
                    Reason::Status(status)
                };
                (reason, retry_after)
            }
            Seen::NotSent { .. } | Seen::NoResponse { .. } if !self.retry_connection_errors => {
                return Decision::Stop(Stop::NotRetryable);
            }
            Seen::NotSent { .. } => (Reason::NotSent, None),
            Seen::NoResponse { timed_out: true } => (Reason::TimedOut, None),
            Seen::NoResponse { timed_out: false } => (Reason::ConnectionLost, None),
        };
        if seen.may_have_been_recorded() && !attempt.deduplicated && !self.retry_ambiguous {
            return Decision::Stop(Stop::MayHaveBeenRecorded);
        }
        if attempt.number >= self.max_attempts {
            return Decision::Stop(Stop::AttemptsExhausted);
        }
        let remaining = self
            .max_elapsed_time
            .map(|deadline| deadline.saturating_sub(attempt.elapsed));
        let after = match (asked, remaining) {
            (Some(wait), Some(left)) if wait >= left => {
                return Decision::Stop(Stop::RetryAfterBeyondDeadline);
            }
            (Some(wait), Some(_)) => wait,
            (Some(wait), None) => wait.min(self.backoff.max),
            (None, _) => self.backoff(attempt.number, unit),
        };
        if remaining.is_some_and(|left| after >= left) {
            return Decision::Stop(Stop::DeadlineWouldPass);
        }
        let cost = if seen.timed_out() {
            TIMEOUT_RETRY_COST
        } else {
            RETRY_COST
        };
        Decision::Retry {
            after,
            cost,
            reason,
        }
    }
}
