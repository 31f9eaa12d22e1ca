//! One error type for every way a call can fail, with accessors instead of nested enums.
//!
//! An [`Error`] answers the three questions a caller has after a failed conversion call:
//! *what happened* ([`Error::kind`], [`Error::status`], [`Error::code`], [`Error::message`]),
//! *can I try again* ([`Error::is_retryable`], [`Error::retry_after`]) and *was the event
//! recorded anyway* ([`Error::may_have_been_recorded`]), so revenue can be reconciled rather
//! than guessed at.

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use std::fmt;
use std::time::Duration;

/// The result of a Dub call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is.
///
/// The first nine are the statuses Dub documents, matched by HTTP status (not by the body's
/// `code`, which the server extends: a 403 may carry `exceeded_limit`). Any other HTTP status is
/// [`ErrorKind::Other`]. The rest describe failures with no usable HTTP response.
///
/// ```
/// # fn handle(err: dub::Error) {
/// use dub::ErrorKind;
/// match err.kind() {
///     ErrorKind::RateLimitExceeded => { /* back off: err.retry_after() */ }
///     ErrorKind::Validation => { /* fix the input: err.message() names the field */ }
///     ErrorKind::Other(status) => eprintln!("unexpected HTTP {status}"),
///     _ => eprintln!("{err}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400: the request was malformed (for example a bad Authorization header).
    BadRequest,
    /// 401: the API key is missing, invalid or expired.
    Unauthorized,
    /// 403: the key is valid but not allowed (plan, role, or an exceeded limit).
    Forbidden,
    /// 404: the resource was not found.
    NotFound,
    /// 409: the request conflicts with the server's state.
    Conflict,
    /// 410: an invite expired.
    InviteExpired,
    /// 422: the request was well-formed JSON but broke a rule of the API.
    UnprocessableEntity,
    /// 429: too many requests; see [`Error::retry_after`].
    RateLimitExceeded,
    /// 500: the server failed.
    InternalServerError,
    /// Any other HTTP status, for example a proxy's 502.
    Other(u16),
    /// The attempt, or the whole call's deadline, ran out.
    Timeout,
    /// No connection could be made (refused, DNS, TLS handshake). Nothing was sent.
    Connect,
    /// The connection failed after the request was sent, or the response could not be read.
    Transport,
    /// A response arrived but its body is not what the API documents.
    Decode,
    /// The request broke a rule of the API; it was not sent. [`Error::field`] names the field.
    Validation,
    /// The client was misconfigured (empty token, unusable URL or header).
    Config,
}

impl ErrorKind {
    /// The kind for an HTTP error status.
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => Self::BadRequest,
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            409 => Self::Conflict,
            410 => Self::InviteExpired,
            422 => Self::UnprocessableEntity,
            429 => Self::RateLimitExceeded,
            500 => Self::InternalServerError,
            other => Self::Other(other),
        }
    }
}

/// Why a call failed.
///
/// It answers the three questions a caller has after a failed conversion call: *what
/// happened* ([`kind`](Error::kind), [`status`](Error::status), [`code`](Error::code),
/// [`message`](Error::message)), *can I try again* ([`is_retryable`](Error::is_retryable),
/// [`retry_after`](Error::retry_after)) and *was the event recorded anyway*
/// ([`may_have_been_recorded`](Error::may_have_been_recorded)).
///
/// `Display` is one line with the status, the code and the message. Neither `Display` nor
/// `Debug` ever contains the API token.
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub kind: ErrorKind,
    pub operation: Option<&'static str>,
    pub status: Option<StatusCode>,
    pub headers: Option<HeaderMap>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub doc_url: Option<String>,
    pub field: Option<&'static str>,
    pub raw_body: Option<Bytes>,
    pub body_truncated: bool,
    pub retry_after: Option<Duration>,
    pub attempts: u32,
    pub may_have_been_recorded: bool,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                operation: None,
                status: None,
                headers: None,
                code: None,
                message: None,
                doc_url: None,
                field: None,
                raw_body: None,
                body_truncated: false,
                retry_after: None,
                attempts: 0,
                may_have_been_recorded: false,
                source: None,
            }),
        }
    }

    pub(crate) fn validation(field: &'static str, rule: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::Validation);
        e.inner.field = Some(field);
        e.inner.message = Some(rule.into());
        e
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::Config);
        e.inner.message = Some(message.into());
        e
    }

    pub(crate) fn inner_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.inner.source = Some(Box::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The HTTP status of the last response, if one arrived (also for [`ErrorKind::Decode`]).
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// Dub's error code, such as `rate_limit_exceeded` or `exceeded_limit`. A string, because
    /// the server returns codes its spec does not list.
    pub fn code(&self) -> Option<&str> {
        self.inner.code.as_deref()
    }

    /// The human-readable explanation: Dub's `message`, or what went wrong locally.
    pub fn message(&self) -> Option<&str> {
        self.inner.message.as_deref()
    }

    /// Dub's link to documentation of the error code, when the body carried one.
    pub fn doc_url(&self) -> Option<&str> {
        self.inner.doc_url.as_deref()
    }

    /// For [`ErrorKind::Validation`]: the request field that broke a rule, by its JSON name.
    pub fn field(&self) -> Option<&str> {
        self.inner.field
    }

    /// The headers of the last response (rate-limit headers among them), if one arrived.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.inner.headers.as_ref()
    }

    /// The start of the last response's body: at most 64 KiB of an error body and 1 MiB of a
    /// success body, whatever the server sent. See [`Error::is_body_truncated`].
    pub fn raw_body(&self) -> Option<&[u8]> {
        self.inner.raw_body.as_deref()
    }

    /// True when the server sent more body than [`Error::raw_body`] keeps.
    pub fn is_body_truncated(&self) -> bool {
        self.inner.body_truncated
    }

    /// How long the server asked us to wait (from `retry-after-ms` or `Retry-After`, whose
    /// seconds, HTTP-date and Dub's Unix-millisecond forms are all understood).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// How many HTTP attempts the call made (0 when it failed before sending anything).
    pub fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// Which operation failed: `"track.lead"` or `"track.sale"`.
    pub fn operation(&self) -> Option<&'static str> {
        self.inner.operation
    }

    /// Whether the event may have been recorded by Dub despite this error.
    ///
    /// `false` means Dub certainly did not record it: the request was refused before being
    /// processed (a validation error, a connection that never opened, a 4xx answer), so sending
    /// it again cannot double-count. `true` means the outcome is unknown (a timeout or reset
    /// after the request was sent, a 5xx) or the event was recorded (a 200 whose body could not
    /// be read): reconcile before sending a sale without an `invoice_id` again.
    pub fn may_have_been_recorded(&self) -> bool {
        self.inner.may_have_been_recorded
    }

    /// Whether the failure is transient: a 429, a 5xx, a timeout or a connection failure.
    /// Whether a retry is also *safe* is [`Error::may_have_been_recorded`]'s question.
    pub fn is_retryable(&self) -> bool {
        match self.kind() {
            ErrorKind::RateLimitExceeded
            | ErrorKind::InternalServerError
            | ErrorKind::Timeout
            | ErrorKind::Connect
            | ErrorKind::Transport => true,
            ErrorKind::Other(s) => matches!(s, 408 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// Shorthand for `kind() == ErrorKind::Timeout`.
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        if let Some(op) = i.operation {
            write!(f, "{op}: ")?;
        }
        match (self.kind(), i.status) {
            (ErrorKind::Validation, _) => {
                write!(f, "invalid request: {}", i.field.unwrap_or("request"))?
            }
            (ErrorKind::Decode, Some(s)) => write!(f, "undecodable response to HTTP {s}")?,
            (ErrorKind::Timeout, Some(s)) => write!(f, "timed out reading the body of HTTP {s}")?,
            (ErrorKind::Transport, Some(s)) => {
                write!(f, "connection lost reading the body of HTTP {s}")?
            }
            (_, Some(s)) => write!(f, "HTTP {s}")?,
            (ErrorKind::Timeout, None) => f.write_str("timed out")?,
            (ErrorKind::Connect, None) => f.write_str("could not connect")?,
            (ErrorKind::Config, None) => f.write_str("invalid configuration")?,
            (_, None) => f.write_str("transport error")?,
        }
        if let Some(code) = &i.code {
            write!(f, " {code}")?;
        }
        match (&i.message, &i.source) {
            (Some(m), _) => write!(f, ": {m}")?,
            (None, Some(s)) => write!(f, ": {s}")?,
            (None, None) => {}
        }
        if i.attempts > 1 {
            write!(f, " (after {} attempts)", i.attempts)?;
        }
        if i.may_have_been_recorded {
            f.write_str(" [the event may have been recorded]")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind());
        if let Some(op) = i.operation {
            d.field("operation", &op);
        }
        if let Some(s) = i.status {
            d.field("status", &s);
        }
        for (name, value) in [
            ("code", &i.code),
            ("message", &i.message),
            ("doc_url", &i.doc_url),
        ] {
            if let Some(v) = value {
                d.field(name, v);
            }
        }
        if let Some(field) = i.field {
            d.field("field", &field);
        }
        if let Some(r) = i.retry_after {
            d.field("retry_after", &r);
        }
        d.field("attempts", &i.attempts)
            .field("may_have_been_recorded", &i.may_have_been_recorded);
        if let Some(s) = &i.source {
            d.field("source", s);
        }
        d.finish_non_exhaustive()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
