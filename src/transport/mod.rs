//! The HTTP exchange of every call: the generated client's `exec` hook.
//!
//! progenitor's generated `Client` builds each request (URL, JSON body, `Accept`,
//! `api-version`) and decodes the final response; everything in between happens here, once per
//! call: authentication and user headers, the rate limiter's turns, the per-attempt timeout,
//! and the retry loop. The loop only carries out decisions: whether and when to try again is
//! [`RetryConfig::decide`](crate::RetryConfig::decide), a pure function. The hook records what it
//! saw in the call's [`Report`], because the generated error type keeps neither the status of an
//! undecodable body nor the attempt count.
//!
//! The generated client takes a [`Call`] as its "inner" value, so a generated `Client` is made
//! per call; that costs one `String` for the base URL and a few reference-count increments.

mod attempt;
mod client_core;
mod connect;

pub(crate) use attempt::MAX_ERROR_BODY;
pub(crate) use client_core::{ClientCore, Http};

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, USER_AGENT};
use reqwest::{Request, Response, StatusCode};
use tokio::time::Instant;
use tracing::Instrument;

use crate::rate_limit::{self, Permit};
use crate::retry::{self, Attempt, Decision, Reason, RetryBudget, RetryConfig, Stop};
use attempt::{AttemptEnd, attempt};
use connect::{CONNECT_FIRST, with_deadline};

/// One call: its settings and, once it ran, its [`Report`].
#[derive(Debug)]
pub(crate) struct Call {
    pub core: Arc<ClientCore>,
    pub operation: &'static str,
    /// This call's retry policy, when it overrides the client's (see [`Call::policy`]).
    pub retry: Option<RetryConfig>,
    pub attempt_timeout: Option<Duration>,
    pub headers: HeaderMap,
    /// Whether Dub deduplicates this call, making a retry after an ambiguous failure safe.
    pub deduplicated: bool,
    /// A sale (whose 404 "Lead event not found" is the lead race).
    pub sale: bool,
    /// Whether the call goes direct, not via a proxy (see [`ClientCore::goes_direct`]).
    pub direct: bool,
    /// When the call started, before it waited for its first turn.
    pub started: Instant,
    /// The first attempt's turn, taken before the generated code runs (see `track.rs`).
    pub first_turn: Mutex<Option<Permit>>,
    pub report: Mutex<Report>,
}

/// What the exchange saw, for building errors the generated code cannot.
#[derive(Debug, Default, Clone)]
pub(crate) struct Report {
    pub attempts: u32,
    pub may_have_been_recorded: bool,
    pub status: Option<StatusCode>,
    pub headers: Option<HeaderMap>,
    pub retry_after: Option<Duration>,
    pub body_truncated: bool,
    /// The final body, when the status was not 200 (the generated code decodes only 200s
    /// and documented errors, and keeps no bytes of a 4xx/5xx it could not decode).
    pub body: Option<Bytes>,
    /// The error of the last attempt was the call's deadline, not the attempt timeout.
    pub deadline_exceeded: bool,
    /// Why the loop stopped.
    pub stop: Option<Stop>,
    /// The last attempt was answered with a sale's 404 "Lead event not found".
    pub lead_race: bool,
    /// The rate limiter could not give the next attempt a turn before the deadline; the
    /// earliest turn was this far away.
    pub limiter_wait: Option<Duration>,
}

// The generated client derives Clone, so its inner value must be Clone; we never clone it.
impl Clone for Call {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            operation: self.operation,
            retry: self.retry.clone(),
            attempt_timeout: self.attempt_timeout,
            headers: self.headers.clone(),
            deduplicated: self.deduplicated,
            sale: self.sale,
            direct: self.direct,
            started: self.started,
            first_turn: Mutex::new(None),
            report: Mutex::new(self.report()),
        }
    }
}

impl Call {
    /// The retry policy in force: the call's own, else the client's.
    pub(crate) fn policy(&self) -> &RetryConfig {
        self.retry.as_ref().unwrap_or(&self.core.retry)
    }

    /// The call's deadline, if its policy has one that fits in the clock.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.policy()
            .max_elapsed_time()
            .and_then(|d| self.started.checked_add(d))
    }

    pub(crate) fn report(&self) -> Report {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Report)) {
        f(&mut self.report.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The exchange of one call, from the generated client's hook (`src/generated.rs`).
pub(crate) async fn exchange(
    http: &reqwest::Client,
    call: &Call,
    mut request: Request,
) -> reqwest::Result<Response> {
    let headers = request.headers_mut();
    headers.insert(AUTHORIZATION, call.core.auth.clone());
    headers.insert(USER_AGENT, call.core.user_agent.clone());
    for (name, value) in call.core.default_headers.iter().chain(call.headers.iter()) {
        headers.insert(name, value.clone());
    }

    let policy = call.policy();
    let budget = &call.core.budget;
    let limiter = &call.core.limiter;
    let deadline = call.deadline();
    let first_turn = call
        .first_turn
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let mut turn = match first_turn {
        Some(turn) => turn,
        // Only when the generated client runs without `track.rs` having taken a turn.
        None => match limiter.acquire(deadline).await {
            Ok(turn) => turn,
            Err(_) => return http.execute(request).await,
        },
    };
    let mut request = Some(request);
    let mut number = 0u32;
    let mut spent = 0u64;
    loop {
        number = number.saturating_add(1);
        let now = Instant::now();
        let remaining = deadline.map(|d| d.saturating_duration_since(now));
        // With a user's client and no attempt timeout, the client's own timeout bounds the
        // attempt (a request timeout here would replace it), and the deadline is kept between
        // attempts.
        let timeout = match (call.attempt_timeout, remaining) {
            (Some(t), Some(r)) => Some(t.min(r)),
            (Some(t), None) => Some(t),
            (None, _) => None,
        };
        // Taken before reqwest starts its own timer, so that the connector's deadline comes
        // first (see `connect.rs`).
        let sent_at = Instant::now();
        let client = call.core.client(call.direct, timeout);
        // Only a client with the deadline layer reads the deadline (see `ClientCore::client`).
        let attempt_deadline = timeout
            .filter(|_| call.core.reads_deadline(timeout))
            .and_then(|t| sent_at.checked_add(t));
        // The last attempt the policy allows sends the request itself; the others send a copy
        // (the JSON body is in memory, so it can always be made), keeping it for a retry.
        // (A retry is only made while `request` is kept; see below.)
        let kept = request
            .as_ref()
            .expect("the request is kept for every retry");
        let sent = if number >= policy.max_attempts() {
            let last = request.take().expect("the request is kept for every retry");
            send(client, last, call, timeout)
        } else {
            match kept.try_clone() {
                Some(copy) => send(client, copy, call, timeout),
                None => {
                    let only = request.take().expect("the request is kept for every retry");
                    return client.execute(only).await;
                }
            }
        };
        let span = tracing::debug_span!("dub.attempt", attempt = number);
        let outcome = match attempt_deadline {
            Some(d) => {
                with_deadline(d, attempt(sent))
                    .instrument(span.clone())
                    .await
            }
            None => attempt(sent).instrument(span.clone()).await,
        };
        let latency_ms = u64::try_from(sent_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let AttemptEnd::Response(r) = &outcome {
            limiter.on_response(&turn, r.status.as_u16(), &r.headers);
        }

        let (retry_after, lead_race) = record(call, &outcome, number, remaining, timeout);
        match &outcome {
            AttemptEnd::Response(r) => {
                tracing::debug!(parent: &span, status = r.status.as_u16(), latency_ms, "response")
            }
            AttemptEnd::NotSent(e) | AttemptEnd::NoResponse(e, _) => {
                tracing::debug!(parent: &span, latency_ms, error = %e, "no whole response")
            }
        }
        // With the limiter on, a 429's wait is the limiter's: it holds the whole client back
        // and knows Dub's window, where a per-call `Retry-After` would send every waiting call
        // at the window's start, when Dub has the least room.
        let honoured = match &outcome {
            AttemptEnd::Response(r) if r.status == StatusCode::TOO_MANY_REQUESTS => {
                retry_after.filter(|_| !limiter.config().is_enabled())
            }
            _ => retry_after,
        };
        let seen = outcome.seen(honoured, lead_race);
        let facts = Attempt::new(number, call.started.elapsed(), call.deduplicated);
        let (after, cost, reason) = match policy.decide(&seen, &facts, fastrand::f64()) {
            Decision::Stop(stop) => {
                log_stop(stop, &seen);
                call.update(|rep| rep.stop = Some(stop));
                return finish(outcome, budget, spent);
            }
            // The policy stops after its last attempt, whose request was sent itself.
            Decision::Retry { .. } if request.is_none() => {
                return finish(outcome, budget, spent);
            }
            Decision::Retry {
                after,
                cost,
                reason,
            } => (after, cost, reason),
        };
        let Some(withdrawal) = budget.try_withdraw(cost) else {
            tracing::warn!(
                reason = reason.as_str(),
                "not retrying: the client's retry budget is spent"
            );
            return finish(outcome, budget, spent);
        };
        tracing::info!(
            attempt = number,
            delay_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            reason = %describe(&reason),
            "retrying"
        );
        // The outcome is kept until the retry is sent, in case the retry never is.
        tokio::time::sleep(after).await;
        match limiter.acquire(deadline).await {
            Ok(next) => turn = next,
            Err(earliest) => {
                let wait = earliest.saturating_duration_since(Instant::now());
                tracing::info!(
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "not retrying: the rate limiter has no turn before the deadline"
                );
                call.update(|rep| {
                    rep.limiter_wait = Some(wait);
                    rep.stop = Some(Stop::DeadlineWouldPass);
                });
                // `withdrawal` is dropped unspent here: the retry never went out.
                return finish(outcome, budget, spent);
            }
        }
        spent = withdrawal.spend();
        drop(outcome);
    }
}

/// Records what an attempt saw in the call's report; returns the server's `Retry-After` and
/// whether the response was a sale's "Lead event not found" race.
fn record(
    call: &Call,
    outcome: &AttemptEnd,
    number: u32,
    remaining: Option<Duration>,
    timeout: Option<Duration>,
) -> (Option<Duration>, bool) {
    match outcome {
        AttemptEnd::Response(r) => {
            let status = r.status;
            let asked = (!status.is_success())
                .then(|| rate_limit::retry_after(&r.headers, crate::clock::now()))
                .flatten();
            let lead_race = call.sale && status == StatusCode::NOT_FOUND && is_lead_race(&r.body);
            call.update(|rep| {
                rep.attempts = number;
                rep.may_have_been_recorded |= status.is_success() || status.is_server_error();
                rep.deadline_exceeded = false;
                rep.status = Some(status);
                rep.retry_after = asked;
                rep.body_truncated = r.truncated;
                // Only errors need the headers and raw body; a 200 is decoded as is.
                rep.headers = (!status.is_success()).then(|| r.headers.clone());
                rep.body = (status != StatusCode::OK).then(|| r.body.clone());
                rep.lead_race = lead_race;
            });
            (asked, lead_race)
        }
        AttemptEnd::NotSent(e) | AttemptEnd::NoResponse(e, _) => {
            let not_sent = matches!(outcome, AttemptEnd::NotSent(_));
            let began = match outcome {
                AttemptEnd::NoResponse(_, status) => *status,
                _ => None,
            };
            let timed_out = e.is_timeout();
            call.update(|rep| {
                rep.attempts = number;
                rep.may_have_been_recorded |= !not_sent;
                rep.deadline_exceeded =
                    timed_out && matches!((remaining, timeout), (Some(r), Some(t)) if r <= t);
                rep.status = began;
                rep.headers = None;
                rep.retry_after = None;
                rep.body = None;
                rep.lead_race = false;
            });
            (None, false)
        }
    }
}

/// Dub's 404 for a sale whose customer's `async` lead is not recorded yet.
fn is_lead_race(body: &[u8]) -> bool {
    // The two fields of Dub's error body that tell the race (the whole body is `ErrorBody`,
    // decoded into the error later).
    #[derive(serde::Deserialize)]
    struct Body {
        error: Fields,
    }
    #[derive(serde::Deserialize)]
    struct Fields {
        code: String,
        message: String,
    }
    serde_json::from_slice::<Body>(body).is_ok_and(|b| {
        b.error.code == "not_found" && b.error.message.starts_with("Lead event not found")
    })
}

/// A retry's reason for logs: "HTTP 503", "HTTP 429", "timeout", ...
fn describe(reason: &Reason) -> std::borrow::Cow<'static, str> {
    match reason {
        Reason::Status(s) => format!("HTTP {s}").into(),
        Reason::RateLimited => "HTTP 429".into(),
        Reason::LeadRace => "HTTP 404 lead not found yet".into(),
        other => other.as_str().into(),
    }
}

fn log_stop(stop: Stop, seen: &retry::Seen) {
    match stop {
        Stop::Succeeded | Stop::NotRetryable | Stop::AttemptsExhausted => {}
        Stop::MayHaveBeenRecorded => tracing::info!(
            ?seen,
            "not retrying: Dub may have recorded the event and does not deduplicate it"
        ),
        Stop::RetryAfterBeyondDeadline => {
            tracing::info!(?seen, "not retrying: Retry-After is past the deadline")
        }
        Stop::DeadlineWouldPass => {
            tracing::info!(?seen, "not retrying: the deadline would pass")
        }
    }
}

/// Sends `request` with the attempt's timeout. A plain function, so that the request takes no
/// room in `exchange`'s future (a local moved before an `await` still does).
fn send(
    http: &reqwest::Client,
    mut copy: Request,
    call: &Call,
    timeout: Option<Duration>,
) -> impl Future<Output = reqwest::Result<Response>> + use<> {
    if let Some(t) = timeout {
        // The connector gives up at the attempt's deadline itself (a connection error: nothing
        // sent); the request's own timeout fires just after, so it never wins that race.
        let t = t.saturating_add(CONNECT_FIRST);
        if call.core.client_timeout != Some(t) {
            *copy.timeout_mut() = Some(t);
        }
    }
    http.execute(copy)
}

/// Settles the retry budget and hands the last outcome to the generated code.
fn finish(outcome: AttemptEnd, budget: &RetryBudget, spent: u64) -> reqwest::Result<Response> {
    match outcome {
        AttemptEnd::Response(r) => {
            if r.status.is_success() {
                budget.deposit(if spent > 0 { spent } else { 1 });
            }
            Ok(r.into_response())
        }
        AttemptEnd::NotSent(e) | AttemptEnd::NoResponse(e, _) => Err(e),
    }
}
