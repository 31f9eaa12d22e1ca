//! One error type for every way a call can fail, with accessors instead of nested enums.
//!
//! An [`Error`] answers the three questions a caller has after a failed conversion call:
//! *what happened* ([`Error::kind`], [`Error::status`], [`Error::code`], [`Error::message`]),
//! *can I try again* ([`Error::is_retryable`], [`Error::retry_after`]) and *was the event
//! recorded anyway* ([`Error::may_have_been_recorded`]), so revenue can be reconciled rather
//! than guessed at.

use bytes::Bytes;
use progenitor_client::Error as RawError;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use std::fmt;
use std::time::Duration;

use crate::generated::types::ErrorBody;
use crate::transport::{MAX_ERROR_BODY, Report};

/// The result of a Dub call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is.
///
/// The first nine are the statuses Dub documents, matched by HTTP status (not by the body's
/// `code`, which the server extends: a 403 may carry `exceeded_limit`). Any other HTTP status is
/// [`ErrorKind::UnexpectedStatus`]. The rest describe failures with no usable HTTP response.
/// Each variant says what to do about it.
///
/// ```
/// # fn handle(err: dub::Error) {
/// use dub::ErrorKind;
/// match err.kind() {
///     ErrorKind::RateLimitExceeded => { /* back off: err.retry_after() */ }
///     ErrorKind::Validation => { /* fix the input: err.field() names it */ }
///     _ if err.may_have_been_recorded() => { /* reconcile before sending again */ }
///     _ => eprintln!("{err}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400: the request was malformed (for example an `Authorization` header without
    /// `Bearer `). What to do: read [`Error::message`]; this is a bug to fix, not to retry.
    BadRequest,
    /// 401: the API key is missing, invalid or expired. What to do: check `DUB_API_KEY`
    /// (a key from the right workspace, not revoked).
    Unauthorized,
    /// 403: the key is valid but not allowed: the plan cannot track conversions (business plan
    /// or higher), the key lacks the scope, or `code()` is `exceeded_limit` (a plan limit, not
    /// the rate limit). What to do: fix the plan or key; retrying will not help.
    Forbidden,
    /// 404: not found. For a sale right after its customer's lead this is usually Dub's
    /// "Lead event not found" race, retried automatically; if it persists, the customer has no
    /// lead: track the lead first (or send the sale with `click_id` for direct sale tracking).
    NotFound,
    /// 409: the request conflicts with the server's state (`code()` may be
    /// `invite_pending`). What to do: read [`Error::message`].
    Conflict,
    /// 410: an invite expired. What to do: re-invite; not something a track call causes.
    InviteExpired,
    /// 422: well-formed JSON that breaks a rule of the API; [`Error::message`] names the field.
    /// What to do: fix the request (this crate's validation catches most of these first).
    UnprocessableEntity,
    /// 429: too many requests for the API key's plan. What to do: nothing was recorded; send it
    /// again after [`Error::retry_after`]. The client paces itself after a 429; give it the
    /// key's limit with [`RateLimit::per_minute`](crate::RateLimit::per_minute), or queue events
    /// with the background tracker.
    RateLimitExceeded,
    /// 500: Dub failed. What to do: check [`Error::may_have_been_recorded`] before sending a
    /// sale without an invoice id again; retry later.
    InternalServerError,
    /// Any other HTTP status, for example a proxy's 502 (read it with [`Error::status`]). A
    /// later release may give some of these statuses kinds of their own, so treat this as a
    /// catch-all after the kinds you handle. What to do: as for a 500.
    UnexpectedStatus,
    /// The attempt, or the whole call's deadline, ran out. What to do: the event may have been
    /// recorded unless [`Error::may_have_been_recorded`] says otherwise; raise
    /// `attempt_timeout` or `max_elapsed_time` if Dub is merely slow.
    Timeout,
    /// No connection could be made (refused, DNS, TLS handshake, proxy). Nothing was sent.
    /// What to do: check the server URL, the network and proxies; sending again is safe.
    Connect,
    /// The connection failed after the request was sent, or the response could not be read.
    /// What to do: as for a timeout.
    Transport,
    /// A response arrived but its body is not what the API documents. A 2xx was recorded all
    /// the same. What to do: do not send it again; look at [`Error::raw_body`] (a proxy's HTML
    /// page?).
    Decode,
    /// The request broke a rule of the API; it was not sent. [`Error::field`] names the field.
    /// What to do: fix the input.
    Validation,
    /// The client was misconfigured (empty token, unusable URL or header, no TLS backend).
    /// Nothing was sent. What to do: fix the setting the message names.
    Config,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub(crate) const ALL: [ErrorKind; 16] = [
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::InviteExpired,
        ErrorKind::UnprocessableEntity,
        ErrorKind::RateLimitExceeded,
        ErrorKind::InternalServerError,
        ErrorKind::UnexpectedStatus,
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::Transport,
        ErrorKind::Decode,
        ErrorKind::Validation,
        ErrorKind::Config,
    ];

    /// The kind's name in JSON, spelled like Dub's error codes: `"bad_request"`,
    /// `"rate_limit_exceeded"`, `"timeout"`, ... It is the `kind` of
    /// [`Error::to_json`], and never changes for a kind once released.
    ///
    /// ```
    /// assert_eq!(dub::ErrorKind::RateLimitExceeded.as_str(), "rate_limit_exceeded");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InviteExpired => "invite_expired",
            ErrorKind::UnprocessableEntity => "unprocessable_entity",
            ErrorKind::RateLimitExceeded => "rate_limit_exceeded",
            ErrorKind::InternalServerError => "internal_server_error",
            ErrorKind::UnexpectedStatus => "unexpected_status",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Transport => "transport",
            ErrorKind::Decode => "decode",
            ErrorKind::Validation => "validation",
            ErrorKind::Config => "config",
        }
    }

    /// The kind named `name` by [`as_str`](Self::as_str) (or, as spools written before it
    /// existed spell it, by its Rust name, `"BadRequest"`).
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name || format!("{k:?}") == name)
    }

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
            _ => Self::UnexpectedStatus,
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
/// `Debug` ever contains the API token. Cheap to clone (the underlying cause is shared).
#[derive(Clone)]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Debug, Clone)]
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
    /// A sale's 404 "Lead event not found", decided by the transport from the body.
    pub lead_race: bool,
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
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
                lead_race: false,
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

    /// The rate limiter had no turn for the call before its deadline; nothing was sent.
    pub(crate) fn not_started(wait: Duration) -> Self {
        let mut e = Self::new(ErrorKind::RateLimitExceeded);
        e.inner.message = Some(format!(
            "not sent: the client's rate limiter has no turn for this call before its deadline \
             (the next is in {} ms)",
            wait.as_millis()
        ));
        e.inner.retry_after = Some(wait);
        e
    }

    /// A tracker's delivery cut off by its shutdown deadline while in flight.
    pub(crate) fn cut_off() -> Self {
        let mut e = Self::new(ErrorKind::Timeout);
        e.inner.message = Some(
            "the tracker's shutdown deadline cut this delivery off while it was in flight"
                .to_owned(),
        );
        e.inner.may_have_been_recorded = true;
        e
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::Config);
        e.inner.message = Some(message.into());
        e
    }

    /// Adds what the caller knows to the message.
    pub(crate) fn with_context(mut self, context: String) -> Self {
        self.inner.message = Some(match self.inner.message.take() {
            Some(m) => format!("{m}; {context}"),
            None => context,
        });
        self
    }

    /// An event a tracker's process was sending when it stopped (crash, `kill -9`): whether
    /// Dub got it is unknown.
    #[cfg_attr(not(feature = "spool"), allow(dead_code))]
    pub(crate) fn abandoned() -> Self {
        let mut e = Self::new(ErrorKind::Transport);
        e.inner.message = Some(
            "the tracker stopped (dropped without shutdown, or its runtime shut down) while this \
             delivery was in flight"
                .to_owned(),
        );
        e.inner.may_have_been_recorded = true;
        e
    }

    pub(crate) fn interrupted() -> Self {
        let mut e = Self::new(ErrorKind::Transport);
        e.inner.message =
            Some("the process delivering this event stopped while it was in flight".to_owned());
        e.inner.may_have_been_recorded = true;
        e
    }

    /// An error as [`to_json`](Self::to_json) stored it, read back from a spool.
    #[cfg_attr(not(feature = "spool"), allow(dead_code))]
    pub(crate) fn from_stored(value: &serde_json::Value) -> Self {
        let kind = value["kind"]
            .as_str()
            .and_then(ErrorKind::from_name)
            .unwrap_or(ErrorKind::Transport);
        let mut e = Self::new(kind);
        let text = |name: &str| value[name].as_str().map(str::to_owned);
        e.inner.operation = match value["operation"].as_str() {
            Some("track.lead") => Some("track.lead"),
            Some("track.sale") => Some("track.sale"),
            _ => None,
        };
        e.inner.status = value["status"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .and_then(|s| StatusCode::from_u16(s).ok());
        e.inner.code = text("code");
        e.inner.message = text("message");
        e.inner.attempts = value["attempts"]
            .as_u64()
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0);
        // Unknown means possibly recorded: the safe reading of a record that does not say.
        // (Spools written before `to_json` was public spell it in snake case.)
        e.inner.may_have_been_recorded = value["mayHaveBeenRecorded"]
            .as_bool()
            .or_else(|| value["may_have_been_recorded"].as_bool())
            .unwrap_or(true);
        e
    }

    /// The error's essentials as one JSON object: what the spool stores with a failed or
    /// uncertain event, and what `dub-track` writes (its `--failed` file, its one-shot
    /// commands' errors). Parts the error does not have are left out:
    ///
    /// `{"kind": "bad_request", "operation": "track.lead", "status": 400, "code": "bad_request",
    /// "message": "...", "field": "clickId", "attempts": 1, "mayHaveBeenRecorded": false}`
    ///
    /// `kind` is [`ErrorKind::as_str`]; `message` is [`message`](Self::message), else the
    /// error's one-line `Display`. Like `Display`, it never holds the API token.
    pub fn to_json(&self) -> serde_json::Value {
        let i = &self.inner;
        let mut m = serde_json::Map::new();
        m.insert("kind".into(), i.kind.as_str().into());
        if let Some(operation) = i.operation {
            m.insert("operation".into(), operation.into());
        }
        if let Some(status) = i.status {
            m.insert("status".into(), status.as_u16().into());
        }
        if let Some(code) = &i.code {
            m.insert("code".into(), code.as_str().into());
        }
        let message = i.message.clone().unwrap_or_else(|| self.to_string());
        m.insert("message".into(), message.into());
        if let Some(field) = i.field {
            m.insert("field".into(), field.into());
        }
        if i.attempts > 0 {
            m.insert("attempts".into(), i.attempts.into());
        }
        m.insert(
            "mayHaveBeenRecorded".into(),
            i.may_have_been_recorded.into(),
        );
        serde_json::Value::Object(m)
    }

    pub(crate) fn inner_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.inner.source = Some(std::sync::Arc::new(source));
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

    /// Whether this is Dub's 404 "Lead event not found" for a sale: the customer's lead (tracked
    /// with `mode: async`) is not recorded yet. Dub processed nothing, so the sale may be sent
    /// again once the lead is there; a background tracker retries it for up to 10 minutes.
    /// Decided once, from the response body, by the transport that made the call.
    pub fn is_lead_race(&self) -> bool {
        self.inner.lead_race
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
            ErrorKind::UnexpectedStatus => self
                .status()
                .is_some_and(|s| matches!(s.as_u16(), 408 | 502 | 503 | 504)),
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
            (ErrorKind::RateLimitExceeded, None) => f.write_str("rate limited")?,
            (_, None) => f.write_str("transport error")?,
        }
        if let Some(code) = &i.code {
            write!(f, " {}", OneLine(code))?;
        }
        match (&i.message, &i.source) {
            (Some(m), _) => write!(f, ": {}", OneLine(m))?,
            (None, Some(s)) => write!(f, ": {}", OneLine(&s.to_string()))?,
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

/// Text from a server or a library, shown on one line: control characters (newlines, ANSI
/// escapes) are written escaped, and very long text is cut.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 500;
        for (n, c) in self.0.chars().enumerate() {
            if n == MAX_CHARS {
                return f.write_str("…");
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// What went wrong underneath a reqwest error, in words: "connection refused", the DNS or TLS
/// failure, a proxy. reqwest's own text ("error sending request for url (...)") says none of it.
fn describe_cause(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut parts: Vec<String> = Vec::new();
    let mut io_kind = None;
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        let text = cause.to_string();
        // hyper-util's "client error (Connect)" and similar wrappers name no cause.
        let generic = text.starts_with("client error (") || text.is_empty();
        if !generic && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    let summary = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => Some("connection refused"),
        Some(std::io::ErrorKind::ConnectionReset) => Some("connection reset"),
        Some(std::io::ErrorKind::ConnectionAborted) => Some("connection aborted"),
        Some(std::io::ErrorKind::TimedOut) => Some("timed out"),
        Some(std::io::ErrorKind::UnexpectedEof) => Some("connection closed early"),
        _ => None,
    };
    let detail = parts.join(": ");
    let proxy = detail.contains("proxy") || detail.contains("tunnel");
    let mut out = String::new();
    if let Some(s) = summary {
        out.push_str(s);
    }
    if proxy && !out.contains("proxy") {
        out.push_str(if out.is_empty() {
            "via a proxy"
        } else {
            " (via a proxy)"
        });
    }
    if !detail.is_empty() {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&detail);
    }
    if out.is_empty() {
        out = if e.is_timeout() {
            "timed out".into()
        } else if e.is_body() || e.is_decode() {
            "the response body could not be read".into()
        } else {
            "the request failed".into()
        };
    }
    out
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

/// Turns the generated client's error and the exchange's report into one [`Error`].
pub(crate) fn from_raw(raw: RawError<ErrorBody>, report: Report) -> Error {
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
                    describe_cause(&cause)
                )
            } else {
                describe_cause(&cause)
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
    i.lead_race = report.lead_race;
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
        i.raw_body = Some(bytes.slice(..bytes.len().min(MAX_ERROR_BODY)));
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
