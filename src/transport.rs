//! The HTTP exchange of every call: the generated client's `exec` hook.
//!
//! progenitor's generated `Client` builds each request (URL, JSON body, `Accept`,
//! `api-version`) and decodes the final response; everything in between happens here, once per
//! call: authentication and user headers, the per-attempt timeout, retries with backoff and
//! Retry-After, the retry budget, and a cap on how much body is read. The hook records what it
//! saw in the call's [`Report`], because the generated error type keeps neither the status of an
//! undecodable body nor the attempt count.
//!
//! The generated client takes a [`Call`] as its "inner" value, so a generated `Client` is made
//! per call; that costs one `String` for the base URL and a few reference-count increments.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use progenitor_client::{ClientHooks, ClientInfo, OperationInfo};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::{Request, Response, ResponseBuilderExt, StatusCode};
use tokio::time::Instant;
use tracing::Instrument;

use crate::generated::Client as Generated;
use crate::retry::{self, RETRY_COST, RetryBudget, RetryConfig, TIMEOUT_RETRY_COST};

/// Most of a success body we read; Dub's are a few hundred bytes.
pub(crate) const MAX_SUCCESS_BODY: usize = 1024 * 1024;
/// Most of an error body we read and keep.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// Settings shared by every call of one client.
#[derive(Debug)]
pub(crate) struct Shared {
    pub http: reqwest::Client,
    pub auth: HeaderValue,
    pub user_agent: HeaderValue,
    pub default_headers: HeaderMap,
    pub budget: RetryBudget,
    pub base_url: String,
    pub timeout: Duration,
    /// The timeout `http` applies to every request by itself (set when we built it), which a
    /// request with the same timeout therefore need not carry.
    pub client_timeout: Option<Duration>,
    pub retry: RetryConfig,
    pub allow_insecure_http: bool,
}

/// One call: its settings and, once it ran, its [`Report`].
#[derive(Debug)]
pub(crate) struct Call {
    pub shared: Arc<Shared>,
    pub operation: &'static str,
    /// This call's retry policy, when it overrides the client's (see [`Call::policy`]).
    pub retry: Option<RetryConfig>,
    pub attempt_timeout: Duration,
    pub headers: HeaderMap,
    /// Whether Dub deduplicates this call, making a retry after an ambiguous failure safe.
    pub idempotent: bool,
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
    /// The error of the last attempt was our deadline, not the attempt timeout.
    pub deadline_exceeded: bool,
}

// The generated client derives Clone, so its inner value must be Clone; we never clone it.
impl Clone for Call {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            operation: self.operation,
            retry: self.retry.clone(),
            attempt_timeout: self.attempt_timeout,
            headers: self.headers.clone(),
            idempotent: self.idempotent,
            report: Mutex::new(self.report()),
        }
    }
}

impl Call {
    /// The retry policy in force: the call's own, else the client's.
    pub(crate) fn policy(&self) -> &RetryConfig {
        self.retry.as_ref().unwrap_or(&self.shared.retry)
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

/// How one attempt ended, as far as retrying is concerned.
#[expect(
    clippy::large_enum_variant,
    reason = "one lives per call; boxing the usual variant would allocate per attempt"
)]
enum Outcome {
    /// A whole response (its body read up to the cap).
    Response(Received),
    /// No connection was made: nothing reached Dub.
    NotSent(reqwest::Error),
    /// The request may have reached Dub, and no whole response came back: a timeout, a reset,
    /// a body cut short (then with the status that began it).
    Ambiguous(reqwest::Error, Option<StatusCode>),
}

/// A response whose body is in memory.
struct Received {
    status: StatusCode,
    version: reqwest::Version,
    url: reqwest::Url,
    headers: HeaderMap,
    body: Bytes,
    truncated: bool,
}

impl Received {
    /// Back into the `reqwest::Response` the generated code decodes.
    fn into_response(self) -> Response {
        // Given no URL, reqwest would parse a placeholder one for every response.
        let mut out = http::Response::builder()
            .url(self.url)
            .body(self.body)
            .expect("a builder given only an extension cannot fail");
        *out.status_mut() = self.status;
        *out.version_mut() = self.version;
        *out.headers_mut() = self.headers;
        Response::from(out)
    }
}

impl ClientHooks<Call> for Generated {
    // Not `async fn`: handing over `exchange`'s future as it is keeps the request out of one
    // more layer of the call's future, which is boxed and moved whole.
    fn exec(
        &self,
        request: Request,
        _info: &OperationInfo,
    ) -> impl Future<Output = reqwest::Result<Response>> {
        exchange(self.client(), self.inner(), request)
    }
}

/// One attempt: await the request `sent`, then read the body with a cap, so that an attempt
/// only succeeds with a whole response and a hostile server cannot make the client buffer
/// without bound.
async fn attempt(sent: impl Future<Output = reqwest::Result<Response>>) -> Outcome {
    let mut response = match sent.await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Outcome::NotSent(e),
        Err(e) => return Outcome::Ambiguous(e, None),
    };
    let status = response.status();
    let cap = if status.is_success() {
        MAX_SUCCESS_BODY
    } else {
        MAX_ERROR_BODY
    };
    let mut body = BytesMut::new();
    let mut truncated = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Outcome::Ambiguous(e, Some(status)),
        }
    }
    Outcome::Response(Received {
        status,
        version: response.version(),
        url: response.url().clone(),
        headers: std::mem::take(response.headers_mut()),
        body: body.freeze(),
        truncated,
    })
}

async fn exchange(
    http: &reqwest::Client,
    call: &Call,
    mut request: Request,
) -> reqwest::Result<Response> {
    let headers = request.headers_mut();
    headers.insert(AUTHORIZATION, call.shared.auth.clone());
    headers.insert(USER_AGENT, call.shared.user_agent.clone());
    for (name, value) in call
        .shared
        .default_headers
        .iter()
        .chain(call.headers.iter())
    {
        headers.insert(name, value.clone());
    }

    let policy = call.policy();
    let budget = &call.shared.budget;
    let started = Instant::now();
    let deadline = policy.get_max_elapsed_time().map(|d| started + d);
    let mut attempt_no = 0u32;
    let mut spent = 0u64;
    loop {
        attempt_no += 1;
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let timeout = remaining.map_or(call.attempt_timeout, |r| r.min(call.attempt_timeout));
        // The JSON body is in memory, so the copy is always made.
        let Some(sent) = send_copy(http, &request, call, timeout) else {
            return http.execute(request).await;
        };
        let span = tracing::debug_span!("dub.attempt", attempt = attempt_no);
        let sent_at = Instant::now();
        let outcome = attempt(sent).instrument(span.clone()).await;
        let latency_ms = sent_at.elapsed().as_millis() as u64;

        // Decide whether, and after how long, to try again.
        let (reason, wait, cost) = match &outcome {
            Outcome::Response(r) => {
                let status = r.status;
                tracing::debug!(parent: &span, status = status.as_u16(), latency_ms, "response");
                let asked = (!status.is_success())
                    .then(|| retry::retry_after(&r.headers, SystemTime::now()))
                    .flatten();
                call.update(|rep| {
                    rep.attempts = attempt_no;
                    rep.may_have_been_recorded |= status.is_success() || status.is_server_error();
                    rep.deadline_exceeded = false;
                    rep.status = Some(status);
                    rep.retry_after = asked;
                    rep.body_truncated = r.truncated;
                    // Only errors need the headers and raw body; a 200 is decoded as is.
                    rep.headers = (!status.is_success()).then(|| r.headers.clone());
                    rep.body = (status != StatusCode::OK).then(|| r.body.clone());
                });
                let allowed = policy.retries_status(status)
                    && (status == StatusCode::TOO_MANY_REQUESTS
                        || call.idempotent
                        || policy.retries_ambiguous());
                if status.is_success() || !allowed {
                    return finish(outcome, budget, spent);
                }
                (format!("HTTP {}", status.as_u16()), asked, RETRY_COST)
            }
            Outcome::NotSent(e) | Outcome::Ambiguous(e, _) => {
                let not_sent = matches!(outcome, Outcome::NotSent(_));
                let began = match outcome {
                    Outcome::Ambiguous(_, status) => status,
                    _ => None,
                };
                let timed_out = e.is_timeout();
                tracing::debug!(parent: &span, latency_ms, error = %e, "no whole response");
                call.update(|rep| {
                    rep.attempts = attempt_no;
                    rep.may_have_been_recorded |= !not_sent;
                    rep.deadline_exceeded = timed_out && remaining.is_some_and(|r| r <= timeout);
                    rep.status = began;
                    rep.headers = None;
                    rep.retry_after = None;
                    rep.body = None;
                });
                let allowed = policy.retries_connection_errors()
                    && (not_sent || call.idempotent || policy.retries_ambiguous());
                if !allowed {
                    return finish(outcome, budget, spent);
                }
                let (reason, cost) = match (timed_out, not_sent) {
                    (true, _) => ("timeout", TIMEOUT_RETRY_COST),
                    (false, true) => ("connect", RETRY_COST),
                    (false, false) => ("connection lost", RETRY_COST),
                };
                (reason.to_owned(), None, cost)
            }
        };

        if attempt_no >= policy.get_max_attempts() {
            return finish(outcome, budget, spent);
        }
        let delay = match wait {
            // The server's wish wins over backoff, but never beyond the cap or the deadline.
            Some(asked) => {
                if deadline.is_some_and(|d| Instant::now() + asked > d) {
                    tracing::info!(
                        reason,
                        retry_after_ms = asked.as_millis() as u64,
                        "not retrying: Retry-After is past the deadline"
                    );
                    return finish(outcome, budget, spent);
                }
                asked.min(policy.get_max_interval())
            }
            None => policy.delay(attempt_no, fastrand::f64()),
        };
        if deadline.is_some_and(|d| Instant::now() + delay >= d) {
            tracing::info!(
                reason,
                delay_ms = delay.as_millis() as u64,
                "not retrying: the deadline would pass"
            );
            return finish(outcome, budget, spent);
        }
        if !budget.try_withdraw(cost) {
            tracing::warn!(reason, "not retrying: the client's retry budget is spent");
            return finish(outcome, budget, spent);
        }
        spent = cost;
        tracing::info!(
            attempt = attempt_no,
            delay_ms = delay.as_millis() as u64,
            reason,
            "retrying"
        );
        drop(outcome);
        tokio::time::sleep(delay).await;
    }
}

/// Sends a copy of `request` with the attempt's timeout, or `None` if it cannot be copied.
/// A plain function, so that the copy takes no room in `exchange`'s future (a local moved
/// before an `await` still does).
fn send_copy(
    http: &reqwest::Client,
    request: &Request,
    call: &Call,
    timeout: Duration,
) -> Option<impl Future<Output = reqwest::Result<Response>> + use<>> {
    let mut copy = request.try_clone()?;
    if call.shared.client_timeout != Some(timeout) {
        *copy.timeout_mut() = Some(timeout);
    }
    Some(http.execute(copy))
}

/// Settles the retry budget and hands the last outcome to the generated code.
fn finish(outcome: Outcome, budget: &RetryBudget, spent: u64) -> reqwest::Result<Response> {
    match outcome {
        Outcome::Response(r) => {
            if r.status.is_success() {
                budget.deposit(if spent > 0 { spent } else { 1 });
            }
            Ok(r.into_response())
        }
        Outcome::NotSent(e) | Outcome::Ambiguous(e, _) => Err(e),
    }
}
