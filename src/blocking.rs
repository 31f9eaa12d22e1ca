//! A blocking client, for code without an async runtime (the sync half of the Python SDK).
//!
//! It is the async [`crate::Dub`] driven by a private single-worker tokio runtime, so retries,
//! timeouts, validation and errors are exactly the same. Calls end with `.send()`.
//!
//! ```no_run
//! use dub::blocking::Dub;
//! use dub::models::{PaymentProcessor, TrackSaleRequest};
//!
//! let dub = Dub::new("dub_xxx");
//! let sale = TrackSaleRequest::builder()
//!     .customer_external_id("user_42")
//!     .amount(996500)
//!     .payment_processor(PaymentProcessor::Paddle)
//!     .invoice_id("in_1")
//!     .build();
//! let res = dub.track().sale(sale).send()?;
//! # Ok::<(), dub::Error>(())
//! ```
//!
//! It works wherever blocking is allowed: plain threads, `tokio::task::spawn_blocking`,
//! `tokio::task::block_in_place`, a thread that entered a runtime's handle. Called from async
//! code itself (a task, or a runtime's `block_on`), where waiting would stall the runtime's
//! worker thread, it returns an [`ErrorKind::Config`] error instead, and never panics. Use
//! [`crate::Dub`] there.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::models::{TrackLeadRequest, TrackSaleRequest};
use crate::retry::{RetryBudget, RetryConfig};
use crate::track::Operation;

#[cfg(doc)]
use crate::ErrorKind;

/// The blocking client. Cheap to clone; clones share the runtime and connection pool.
#[derive(Clone)]
pub struct Dub {
    inner: crate::Dub,
    runtime: Arc<Runtime>,
}

impl fmt::Debug for Dub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::Dub").field(&self.inner).finish()
    }
}

/// The runtime, or why it could not be made (reported by every call rather than panicking).
struct Runtime(Option<std::result::Result<tokio::runtime::Runtime, String>>);

impl Runtime {
    fn new() -> Self {
        // Multi-threaded with one worker, so that it is always driven: a connection it pooled
        // never waits for a caller to poll it (see the note on `crate::Dub`).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dub-blocking")
            .enable_all()
            .build()
            .map_err(|e| format!("the blocking client's runtime could not start: {e}"));
        Self(Some(rt))
    }

    /// Runs `f` on the private runtime and waits for it on this thread. The wait parks this
    /// thread on a one-shot channel ([`crate::wait`], as every sync wait of the crate), not
    /// `Runtime::block_on`, so no runtime context of the caller's can make it panic.
    fn run<F>(&self, f: F) -> Result<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if in_async_code() {
            return Err(Error::config(
                "dub::blocking was called from async code, where waiting would stall the \
                 runtime's worker thread; use dub::Dub there (or call it in spawn_blocking)",
            ));
        }
        let rt = match &self.0 {
            Some(Ok(rt)) => rt,
            Some(Err(reason)) => return Err(Error::config(reason.clone())),
            None => return Err(Error::config("the blocking client was shut down")),
        };
        let (tx, rx) = oneshot::channel();
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        crate::wait::block_on(std::future::IntoFuture::into_future(rx)).map_err(|_| {
            Error::config("the blocking client's runtime stopped before the call finished")
        })
    }
}

/// Whether this thread is running async code: a task being polled, or the future of a
/// runtime's `block_on`. tokio gives exactly that code a cooperative budget (128 units); plain
/// threads, `spawn_blocking` and `block_in_place` run unconstrained. Taking units until tokio
/// says the budget is spent tells the two apart; the units are all given back, since dropping
/// each `RestoreOnPending` restores the budget as it was before it was taken.
fn in_async_code() -> bool {
    use std::task::{Context, Poll, Waker};
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut taken = Vec::with_capacity(129);
    let mut constrained = false;
    for _ in 0..=128 {
        match tokio::task::coop::poll_proceed(&mut cx) {
            Poll::Ready(unit) => taken.push(unit),
            Poll::Pending => {
                constrained = true;
                break;
            }
        }
    }
    while let Some(unit) = taken.pop() {
        drop(unit);
    }
    constrained
}

impl Drop for Runtime {
    // Dropping a runtime inside async code panics; shutting it down in the background never does.
    fn drop(&mut self) {
        if let Some(Ok(rt)) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Dub {
    /// See [`crate::Dub::new`].
    pub fn new(token: impl Into<String>) -> Self {
        Self::wrap(crate::Dub::new(token))
    }

    /// See [`crate::Dub::from_env`].
    pub fn from_env() -> Result<Self> {
        crate::Dub::from_env().map(Self::wrap)
    }

    /// See [`crate::Dub::builder`]; finish with [`DubBuilder::build`].
    pub fn builder() -> DubBuilder {
        DubBuilder(crate::Dub::builder())
    }

    fn wrap(inner: crate::Dub) -> Self {
        Self {
            inner,
            runtime: Arc::new(Runtime::new()),
        }
    }

    /// The track operations.
    pub fn track(&self) -> Track<'_> {
        Track { dub: self }
    }
}

/// Builds a blocking [`Dub`]: the same options as [`crate::DubBuilder`].
#[derive(Debug)]
pub struct DubBuilder(crate::DubBuilder);

macro_rules! forward {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(self, $($arg: $ty),*) -> Self {
                Self(self.0.$name($($arg),*))
            }
        )*
    };
}

impl DubBuilder {
    forward! {
        /// See [`crate::DubBuilder::token`].
        token(token: impl Into<String>);
        /// See [`crate::DubBuilder::server_url`].
        server_url(url: impl Into<String>);
        /// See [`crate::DubBuilder::attempt_timeout`].
        attempt_timeout(timeout: Duration);
        /// See [`crate::DubBuilder::connect_timeout`].
        connect_timeout(timeout: Duration);
        /// See [`crate::DubBuilder::retry_config`].
        retry_config(retry: RetryConfig);
        /// See [`crate::DubBuilder::retry_budget`].
        retry_budget(budget: RetryBudget);
        /// See [`crate::DubBuilder::user_agent_suffix`].
        user_agent_suffix(suffix: impl Into<String>);
        /// See [`crate::DubBuilder::default_header`].
        default_header(name: impl Into<String>, value: impl Into<String>);
        /// See [`crate::DubBuilder::allow_insecure_http`].
        allow_insecure_http(allow: bool);
        /// See [`crate::DubBuilder::rate_limit`].
        rate_limit(rate_limit: crate::RateLimit);
    }

    /// Builds the client, or says which setting is unusable.
    pub fn build(self) -> Result<Dub> {
        self.0.build().map(Dub::wrap)
    }
}

/// The track operations of a blocking [`Dub`].
#[derive(Debug, Clone, Copy)]
pub struct Track<'a> {
    dub: &'a Dub,
}

impl<'a> Track<'a> {
    /// Records a lead; see [`crate::Track::lead`]. Finish with [`TrackCall::send`].
    pub fn lead(&self, request: TrackLeadRequest) -> TrackCall<'a, TrackLeadRequest> {
        TrackCall {
            dub: self.dub,
            call: self.dub.inner.track().lead(request),
        }
    }

    /// Records a sale; see [`crate::Track::sale`]. Finish with [`TrackCall::send`].
    pub fn sale(&self, request: TrackSaleRequest) -> TrackCall<'a, TrackSaleRequest> {
        TrackCall {
            dub: self.dub,
            call: self.dub.inner.track().sale(request),
        }
    }
}

/// One pending blocking call with its per-call options.
#[must_use = "a TrackCall does nothing until .send() is called"]
#[derive(Debug)]
pub struct TrackCall<'a, R> {
    dub: &'a Dub,
    call: crate::TrackCall<R>,
}

impl<R: Operation> TrackCall<'_, R> {
    /// This call's retry policy instead of the client's.
    pub fn retry_config(self, retry: RetryConfig) -> Self {
        Self {
            call: self.call.retry_config(retry),
            ..self
        }
    }

    /// The former name of [`retry_config`](Self::retry_config).
    #[deprecated(since = "0.1.0", note = "renamed `retry_config`, as on `DubBuilder`")]
    pub fn retries(self, retry: RetryConfig) -> Self {
        self.retry_config(retry)
    }

    /// This call's per-attempt timeout instead of the client's.
    pub fn attempt_timeout(self, timeout: Duration) -> Self {
        Self {
            call: self.call.attempt_timeout(timeout),
            ..self
        }
    }

    /// Send this call to another server.
    pub fn server_url(self, url: impl Into<String>) -> Self {
        Self {
            call: self.call.server_url(url),
            ..self
        }
    }

    /// An extra header for this call.
    pub fn header(self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        Self {
            call: self.call.header(name, value),
            ..self
        }
    }

    /// Sends the call and waits for its result.
    pub fn send(self) -> Result<R::Response> {
        self.dub
            .runtime
            .run(std::future::IntoFuture::into_future(self.call))?
    }
}
