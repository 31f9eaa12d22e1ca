//! `dub.track()`: recording leads and sales, with per-call options.

use std::borrow::Cow;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use progenitor_client::{ClientInfo, Error as RawError, ResponseValue};
use reqwest::header::HeaderMap;
use tracing::Instrument;

use crate::client::{Dub, check_url, header};
use crate::error::{Error, ErrorKind, Result};
use crate::generated::Client as Generated;
use crate::models::{
    ErrorBody, TrackLeadRequest, TrackLeadResponse, TrackSaleRequest, TrackSaleResponse,
};
use crate::retry::RetryConfig;
use crate::transport::{Call, Report};
use crate::validate;

/// The track operations of a [`Dub`] client, from [`Dub::track`].
#[derive(Debug, Clone)]
pub struct Track {
    dub: Dub,
}

impl Track {
    pub(crate) fn new(dub: Dub) -> Self {
        Self { dub }
    }

    /// Records a lead: a sign-up tied to the click that brought the visitor.
    ///
    /// Await the returned [`TrackCall`], optionally after setting per-call options. A lead
    /// (unless `deferred`) is deduplicated by Dub, so it is retried after ambiguous failures.
    ///
    /// The response's `link` is `None` when Dub already had this lead (same customer and
    /// event name): it recorded nothing new. That also happens when an earlier attempt of the
    /// same call was recorded but its response was lost, so `link: None` after a retry still
    /// means the lead is recorded, once.
    ///
    /// ```no_run
    /// # async fn run(dub: dub::Dub) -> dub::Result<()> {
    /// use dub::models::TrackLeadRequest;
    /// let lead = TrackLeadRequest::builder()
    ///     .click_id("clk_123")
    ///     .event_name("Sign up")
    ///     .customer_external_id("user_42")
    ///     .build();
    /// let res = dub.track().lead(lead).await?;
    /// match res.link {
    ///     Some(link) => println!("new lead via {}", link.short_link),
    ///     None => println!("Dub already had this lead"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lead(&self, request: TrackLeadRequest) -> TrackCall<TrackLeadRequest> {
        TrackCall::new(self.dub.clone(), request)
    }

    /// Records a sale: revenue tied to a customer.
    ///
    /// Give the sale an invoice id
    /// ([`TrackSaleRequestBuilder::invoice_id`](crate::models::TrackSaleRequestBuilder::invoice_id)):
    /// Dub records one sale per invoice id, which is what makes retrying it safe. Without one, a
    /// sale is not retried after a failure that may have reached Dub (see [`crate::retry`]).
    ///
    /// ```no_run
    /// # async fn run(dub: dub::Dub) -> dub::Result<()> {
    /// use dub::models::{PaymentProcessor, TrackSaleRequest};
    /// use dub::RetryConfig;
    /// use std::time::Duration;
    ///
    /// let sale = TrackSaleRequest::builder()
    ///     .customer_external_id("user_42")
    ///     .amount(996500)
    ///     .payment_processor(PaymentProcessor::Paddle)
    ///     .invoice_id("in_1")
    ///     .currency("usd")
    ///     .build();
    /// let res = dub
    ///     .track()
    ///     .sale(sale)
    ///     .retries(RetryConfig::none())
    ///     .attempt_timeout(Duration::from_secs(5))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn sale(&self, request: TrackSaleRequest) -> TrackCall<TrackSaleRequest> {
        TrackCall::new(self.dub.clone(), request)
    }
}

/// One pending call with its per-call options. Nothing is sent until it is awaited.
///
/// The options mirror the Python SDK's per-call arguments: `retries`, `timeout_ms` (here
/// [`attempt_timeout`](TrackCall::attempt_timeout); the whole call's deadline is the retry
/// policy's `max_elapsed_time`), `server_url` and `http_headers`.
#[must_use = "a TrackCall does nothing until it is awaited"]
pub struct TrackCall<R> {
    dub: Dub,
    request: R,
    retry: Option<RetryConfig>,
    attempt_timeout: Option<Duration>,
    server_url: Option<String>,
    headers: HeaderMap,
    bad_option: Option<Error>,
}

impl<R: fmt::Debug> fmt::Debug for TrackCall<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackCall")
            .field("request", &self.request)
            .field("retry", &self.retry)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("server_url", &self.server_url)
            .finish_non_exhaustive()
    }
}

impl<R> TrackCall<R> {
    fn new(dub: Dub, request: R) -> Self {
        Self {
            dub,
            request,
            retry: None,
            attempt_timeout: None,
            server_url: None,
            headers: HeaderMap::new(),
            bad_option: None,
        }
    }

    /// This call's retry policy instead of the client's.
    pub fn retries(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// This call's per-attempt timeout instead of the client's (see
    /// [`DubBuilder::attempt_timeout`](crate::DubBuilder::attempt_timeout)).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Send this call to another server (same rules as
    /// [`DubBuilder::server_url`](crate::DubBuilder::server_url)).
    pub fn server_url(mut self, url: impl Into<String>) -> Self {
        self.server_url = Some(url.into());
        self
    }

    /// An extra header for this call. An invalid name or value, or a header the crate sets
    /// itself (`Authorization`, `Content-Type`, ...), fails the call with [`ErrorKind::Config`]
    /// before anything is sent.
    pub fn header(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        match header(name.as_ref(), value.as_ref()) {
            Ok((n, v)) => {
                self.headers.insert(n, v);
            }
            Err(e) => self.bad_option = self.bad_option.or(Some(e)),
        }
        self
    }
}

type RawResult<T> = std::result::Result<ResponseValue<T>, RawError<ErrorBody>>;

/// What differs between the two operations.
pub trait Operation: Send + Sync + 'static + sealed::Sealed {
    /// The decoded 200 body.
    type Response: Send + 'static;
    #[doc(hidden)]
    const NAME: &'static str;
    #[doc(hidden)]
    fn validate(&self) -> Result<()>;
    #[doc(hidden)]
    fn deduplicated(&self) -> bool;
    #[doc(hidden)]
    const SALE: bool;
    #[doc(hidden)]
    fn send<'a>(
        &'a self,
        client: &'a Generated,
    ) -> impl Future<Output = RawResult<Self::Response>> + Send + 'a;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::models::TrackLeadRequest {}
    impl Sealed for crate::models::TrackSaleRequest {}
}

impl Operation for TrackLeadRequest {
    type Response = TrackLeadResponse;
    const NAME: &'static str = "track.lead";
    const SALE: bool = false;
    fn validate(&self) -> Result<()> {
        validate::lead(self)
    }
    fn deduplicated(&self) -> bool {
        self.is_deduplicated()
    }
    fn send<'a>(
        &'a self,
        c: &'a Generated,
    ) -> impl Future<Output = RawResult<TrackLeadResponse>> + Send + 'a {
        c.track_lead(self)
    }
}

impl Operation for TrackSaleRequest {
    type Response = TrackSaleResponse;
    const NAME: &'static str = "track.sale";
    const SALE: bool = true;
    fn validate(&self) -> Result<()> {
        validate::sale(self)
    }
    fn deduplicated(&self) -> bool {
        self.is_deduplicated()
    }
    fn send<'a>(
        &'a self,
        c: &'a Generated,
    ) -> impl Future<Output = RawResult<TrackSaleResponse>> + Send + 'a {
        c.track_sale(self)
    }
}

impl<R: Operation> IntoFuture for TrackCall<R> {
    type Output = Result<R::Response>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let span = tracing::info_span!(
            "dub.call",
            operation = R::NAME,
            attempts = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        Box::pin(self.run().instrument(span))
    }
}

impl<R: Operation> TrackCall<R> {
    async fn run(self) -> Result<R::Response> {
        let started = tokio::time::Instant::now();
        let named = |mut e: Error| {
            e.inner_mut().operation = Some(R::NAME);
            e
        };
        let shared = self.dub.shared().map_err(named)?.clone();
        if let Some(e) = self.bad_option {
            return Err(named(e));
        }
        self.request.validate().map_err(named)?;
        let base_url = match &self.server_url {
            Some(url) => Cow::Owned(check_url(url, shared.allow_insecure_http).map_err(named)?),
            None => Cow::Borrowed(shared.base_url.as_str()),
        };
        let call = Call {
            retry: self.retry,
            attempt_timeout: self.attempt_timeout.or(shared.attempt_timeout),
            headers: self.headers,
            deduplicated: self.request.deduplicated(),
            sale: R::SALE,
            direct: shared.direct_for(&base_url),
            operation: R::NAME,
            started,
            first_turn: Mutex::new(None),
            report: Mutex::new(Report::default()),
            shared: shared.clone(),
        };
        // The first turn is taken here rather than in the exchange, so that a call the rate
        // limiter cannot start in time fails without the generated code making a request.
        match shared.limiter.acquire(call.deadline()).await {
            Ok(turn) => {
                *call
                    .first_turn
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(turn)
            }
            Err(earliest) => {
                let wait = earliest.saturating_duration_since(tokio::time::Instant::now());
                return Err(named(Error::not_started(wait)));
            }
        }
        let http = shared.client_for(call.direct).clone();
        let client = Generated::new_with_client(&base_url, http, call);
        let result = self.request.send(&client).await;
        let report = client.inner().report();
        let span = tracing::Span::current();
        span.record("attempts", report.attempts);
        if let Some(s) = report.status {
            span.record("status", s.as_u16());
        }
        match result {
            Ok(value) => Ok(value.into_inner()),
            Err(raw) => {
                let e = named(from_raw(raw, report));
                tracing::info!(error = %e, "call failed");
                Err(e)
            }
        }
    }
}

/// Turns the generated client's error and the exchange's report into one [`Error`].
fn from_raw(raw: RawError<ErrorBody>, report: Report) -> Error {
    let (mut err, body) = match raw {
        RawError::ErrorResponse(value) => {
            let status = value.status();
            let mut e = Error::new(ErrorKind::from_status(status));
            let body = value.into_inner();
            let i = e.inner_mut();
            i.code = Some(body.error.code);
            i.message = Some(body.error.message);
            i.doc_url = body.error.doc_url;
            (e, None)
        }
        RawError::InvalidResponsePayload(bytes, cause) => {
            let kind = match report.status {
                Some(s) if !s.is_success() => ErrorKind::from_status(s),
                _ => ErrorKind::Decode,
            };
            let mut e = Error::new(kind);
            e.inner_mut().message =
                Some(format!("the body is not what the API documents: {cause}"));
            (e.with_source(cause), Some(bytes))
        }
        RawError::UnexpectedResponse(_) => {
            let status = report.status.unwrap_or_default();
            let kind = if status.is_success() {
                ErrorKind::Decode
            } else {
                ErrorKind::from_status(status)
            };
            (Error::new(kind), report.body.clone())
        }
        RawError::CommunicationError(cause)
        | RawError::ResponseBodyError(cause)
        | RawError::InvalidUpgrade(cause) => {
            // A connection that timed out while opening is a connect error: nothing was sent.
            let kind = if cause.is_connect() {
                ErrorKind::Connect
            } else if cause.is_timeout() {
                ErrorKind::Timeout
            } else {
                ErrorKind::Transport
            };
            let mut e = Error::new(kind);
            e.inner_mut().message = Some(if report.deadline_exceeded {
                format!(
                    "the call's deadline (max_elapsed_time) passed: {}",
                    crate::error::describe_cause(&cause)
                )
            } else {
                crate::error::describe_cause(&cause)
            });
            (e.with_source(cause), None)
        }
        RawError::InvalidRequest(message) | RawError::Custom(message) => {
            let mut e = Error::new(ErrorKind::Config);
            e.inner_mut().message = Some(message);
            (e, None)
        }
    };
    let i = err.inner_mut();
    i.status = report.status;
    i.headers = report.headers;
    i.retry_after = report.retry_after.or(report.limiter_wait);
    i.attempts = report.attempts;
    i.body_truncated = report.body_truncated;
    // A 2xx that failed to decode was recorded all the same.
    i.may_have_been_recorded = report.may_have_been_recorded;
    if let Some(bytes) = body.or(report.body) {
        if i.code.is_none() {
            if let Ok(dub) = serde_json::from_slice::<ErrorBody>(&bytes) {
                i.code = Some(dub.error.code);
                i.message = Some(dub.error.message);
                i.doc_url = dub.error.doc_url;
            } else if i.message.is_none() && i.status.is_some_and(|s| !s.is_success()) {
                i.message = Some(excerpt(&bytes));
            }
        }
        i.raw_body = Some(bytes.slice(..bytes.len().min(crate::transport::MAX_ERROR_BODY)));
    }
    err
}

/// The start of a body as one line of text, for messages.
fn excerpt(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "empty body".into();
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("body: {line}")
}
