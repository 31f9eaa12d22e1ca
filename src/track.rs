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

use crate::client::Dub;
use crate::error::{Error, Result, from_raw};
use crate::generated::Client as Generated;
use crate::models::{
    ErrorBody, TrackLeadRequest, TrackLeadResponse, TrackSaleRequest, TrackSaleResponse,
};
use crate::options::{check_url, header, is_plain_http_loopback};
use crate::retry::RetryConfig;
use crate::transport::{Call, Report};

impl Dub {
    /// The track operations: [`Track::lead`] and [`Track::sale`].
    pub fn track(&self) -> Track {
        Track::new(self.clone())
    }
}

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
    ///     .retry_config(RetryConfig::none())
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
/// The options mirror the Python SDK's per-call arguments: `retries` (here
/// [`retry_config`](TrackCall::retry_config)), `timeout_ms` (here
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

    /// This call's retry policy instead of the client's (see
    /// [`DubBuilder::retry_config`](crate::DubBuilder::retry_config)).
    pub fn retry_config(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The former name of [`retry_config`](Self::retry_config).
    #[deprecated(since = "0.1.0", note = "renamed `retry_config`, as on `DubBuilder`")]
    pub fn retries(self, retry: RetryConfig) -> Self {
        self.retry_config(retry)
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
    /// itself (`Authorization`, `Content-Type`, ...), fails the call with [`ErrorKind::Config`](crate::ErrorKind::Config)
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
        TrackLeadRequest::validate(self)
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
        TrackSaleRequest::validate(self)
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
        let core = self.dub.core().map_err(named)?.clone();
        if let Some(e) = self.bad_option {
            return Err(named(e));
        }
        self.request.validate().map_err(named)?;
        let (base_url, plain_http_loopback) = match &self.server_url {
            Some(url) => {
                let url = check_url(url, core.allow_insecure_http).map_err(named)?;
                let plain = is_plain_http_loopback(&url);
                (Cow::Owned(url), plain)
            }
            None => (Cow::Borrowed(core.base_url.as_str()), core.base_url_direct),
        };
        let call = Call {
            retry: self.retry,
            attempt_timeout: self.attempt_timeout.or(core.attempt_timeout),
            headers: self.headers,
            deduplicated: self.request.deduplicated(),
            sale: R::SALE,
            direct: core.goes_direct(plain_http_loopback),
            operation: R::NAME,
            started,
            first_turn: Mutex::new(None),
            report: Mutex::new(Report::default()),
            core: core.clone(),
        };
        // The first turn is taken here rather than in the exchange, so that a call the rate
        // limiter cannot start in time fails without the generated code making a request.
        match core.limiter.acquire(call.deadline()).await {
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
        let http = core.client_for(call.direct).clone();
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
