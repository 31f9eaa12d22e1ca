//! The [`Dub`] client and its builder.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

use crate::error::{Error, Result};
use crate::options::{check_url, header, is_plain_http_loopback, redact_url};
use crate::rate_limit::{Limiter, RateLimit, RateLimiterState};
use crate::retry::{RetryBudget, RetryConfig};
use crate::transport::{ClientCore, Http};

/// Dub's API.
pub const DEFAULT_SERVER_URL: &str = "https://api.dub.co";
/// The default timeout of each attempt, from sending to the end of the response body.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default timeout for opening a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const USER_AGENT: &str = concat!("dub-rust/", env!("CARGO_PKG_VERSION"));

/// A client of Dub's conversion-tracking API.
///
/// Cheap to clone: clones share one connection pool, configuration, retry budget and rate
/// limiter. Make one per process and clone it where needed.
///
/// A client's connections belong to the tokio runtime that opened them. Use a client from one
/// runtime (or from runtimes that all keep running): a pooled connection of a runtime that is
/// alive but not being driven, such as a `current_thread` runtime outside `block_on`, stalls a
/// call made from another runtime until its timeout. `dub::blocking::Dub` runs its own
/// always-driven runtime for this reason.
///
/// ```no_run
/// # async fn run() -> dub::Result<()> {
/// use dub::Dub;
/// use dub::models::TrackLeadRequest;
///
/// let dub = Dub::new("dub_xxx");
/// let lead = dub
///     .track()
///     .lead(
///         TrackLeadRequest::builder()
///             .click_id("clk_123")
///             .event_name("Sign up")
///             .customer_external_id("user_42")
///             .build(),
///     )
///     .await?;
/// println!("attributed to click {}", lead.click.id);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dub {
    // A client whose configuration was refused by `Dub::new` keeps the reason and reports it
    // from every call, so that `new` never panics.
    inner: std::result::Result<Arc<ClientCore>, Arc<str>>,
}

impl Dub {
    /// The `Authorization` header value, for a fingerprint of the key that is not the key (the
    /// outbox's shared budget); `None` for a client whose configuration was refused.
    #[cfg(feature = "postgres")]
    pub(crate) fn authorization(&self) -> Option<&HeaderValue> {
        self.inner.as_ref().ok().map(|core| &core.auth)
    }

    /// A client for Dub's API with the API key `token` and default settings.
    ///
    /// This never fails or panics: if the token cannot be used (it is empty, or not valid in an
    /// HTTP header), every call returns an [`ErrorKind::Config`](crate::ErrorKind::Config)
    /// error. Use [`Dub::builder`] to find out at construction instead.
    pub fn new(token: impl Into<String>) -> Self {
        match Self::builder().token(token).build() {
            Ok(dub) => dub,
            Err(e) => Self {
                inner: Err(e.message().unwrap_or("invalid configuration").into()),
            },
        }
    }

    /// A client configured from the environment: `DUB_API_KEY` (required) and `DUB_BASE_URL`
    /// (optional, for example a local `dub::mock::MockDub`; empty means Dub's API).
    ///
    /// ```no_run
    /// let dub = dub::Dub::from_env()?;
    /// # Ok::<(), dub::Error>(())
    /// ```
    pub fn from_env() -> Result<Self> {
        Self::builder_from_env()?.build()
    }

    /// A builder holding what [`Dub::from_env`] reads, to change further settings.
    pub fn builder_from_env() -> Result<DubBuilder> {
        let token = match std::env::var("DUB_API_KEY") {
            Ok(token) => token,
            Err(std::env::VarError::NotPresent) => {
                return Err(Error::config("DUB_API_KEY is not set"));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::config("DUB_API_KEY is set but is not valid Unicode"));
            }
        };
        let mut builder = Self::builder().token(token);
        match std::env::var("DUB_BASE_URL") {
            Ok(url) if !url.trim().is_empty() => builder = builder.server_url(url),
            Ok(_) | Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::config(
                    "DUB_BASE_URL is set but is not valid Unicode",
                ));
            }
        }
        Ok(builder)
    }

    /// A builder for a client with non-default settings.
    ///
    /// ```
    /// use dub::{Dub, RateLimit, RetryConfig};
    /// use std::time::Duration;
    ///
    /// let dub = Dub::builder()
    ///     .token("dub_xxx")
    ///     .server_url("http://127.0.0.1:4010")
    ///     .attempt_timeout(Duration::from_secs(5))
    ///     .retry_config(RetryConfig::none())
    ///     .rate_limit(RateLimit::per_minute(1200))
    ///     .build()?;
    /// assert_eq!(dub.server_url(), Some("http://127.0.0.1:4010"));
    /// # Ok::<(), dub::Error>(())
    /// ```
    pub fn builder() -> DubBuilder {
        DubBuilder::default()
    }

    /// The base URL calls go to; `None` if the client's configuration was refused.
    pub fn server_url(&self) -> Option<&str> {
        self.inner.as_ref().ok().map(|s| s.base_url.as_str())
    }

    /// The per-attempt timeout (`None` with a user's `reqwest::Client`, whose own applies).
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.inner.as_ref().ok().and_then(|s| s.attempt_timeout)
    }

    /// The timeout for opening a connection of the crate's own HTTP client.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.inner
            .as_ref()
            .ok()
            .filter(|s| s.own_http)
            .map(|s| s.connect_timeout)
    }

    /// The client's retry policy.
    pub fn retry_config(&self) -> Option<&RetryConfig> {
        self.inner.as_ref().ok().map(|s| &s.retry)
    }

    /// The client's retry budget (shared by its clones).
    pub fn retry_budget(&self) -> Option<&RetryBudget> {
        self.inner.as_ref().ok().map(|s| &s.budget)
    }

    /// How the client paces itself.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.inner.as_ref().ok().map(|s| s.limiter.config())
    }

    /// The rate limiter's current state: pace, limit, 429s seen. See [`crate::rate_limit`].
    pub fn rate_limiter(&self) -> Option<RateLimiterState> {
        self.inner.as_ref().ok().map(|s| s.limiter.state())
    }

    /// The `User-Agent` sent.
    pub fn user_agent(&self) -> Option<&str> {
        self.inner
            .as_ref()
            .ok()
            .and_then(|s| s.user_agent.to_str().ok())
    }

    /// Whether plain `http://` is accepted for hosts other than loopback.
    pub fn allow_insecure_http(&self) -> bool {
        self.inner.as_ref().is_ok_and(|s| s.allow_insecure_http)
    }

    pub(crate) fn core(&self) -> Result<&Arc<ClientCore>> {
        self.inner
            .as_ref()
            .map_err(|m| Error::config(m.to_string()))
    }
}

impl fmt::Debug for Dub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Dub");
        match &self.inner {
            Ok(s) => d
                .field("server_url", &s.base_url)
                .field("attempt_timeout", &s.attempt_timeout)
                .field("retry", &s.retry)
                .field("rate_limit", &s.limiter.config())
                .field("token", &"<redacted>"),
            Err(reason) => d.field("config_error", reason),
        };
        d.finish_non_exhaustive()
    }
}

/// Builds a [`Dub`] client. Obtained from [`Dub::builder`].
#[derive(Default)]
pub struct DubBuilder {
    token: Option<String>,
    server_url: Option<String>,
    attempt_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    retry: Option<RetryConfig>,
    budget: Option<RetryBudget>,
    rate_limit: Option<RateLimit>,
    user_agent_suffix: Option<String>,
    headers: Vec<(String, String)>,
    http: Option<reqwest::Client>,
    allow_insecure_http: bool,
}

impl fmt::Debug for DubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DubBuilder")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("server_url", &self.server_url.as_deref().map(redact_url))
            .field("attempt_timeout", &self.attempt_timeout)
            .field("retry", &self.retry)
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

impl DubBuilder {
    /// The API key (`dub_...`), sent as `Authorization: Bearer <token>`. Required. Surrounding
    /// whitespace (a newline read from a file) is removed.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The API's base URL (default `https://api.dub.co`). Plain `http://` is accepted only
    /// for loopback hosts unless [`allow_insecure_http`](Self::allow_insecure_http) is set;
    /// plain `http://` to loopback never goes through a proxy. A URL with a user name or
    /// password is refused.
    pub fn server_url(mut self, url: impl Into<String>) -> Self {
        self.server_url = Some(url.into());
        self
    }

    /// The timeout of each attempt, from sending to the end of the response body, opening the
    /// connection included (default 10 s). It is not the whole call's deadline: that is
    /// [`RetryConfig::max_elapsed_time`], which also bounds each attempt. With
    /// [`http_client`](Self::http_client) and no `attempt_timeout`, the given client's own
    /// timeout applies instead.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The timeout for opening a connection (default 5 s). Ignored with
    /// [`http_client`](Self::http_client), whose own setting applies.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The retry policy of every call (default [`RetryConfig::default`]); a call can override
    /// it with [`TrackCall::retry_config`](crate::TrackCall::retry_config), and a tracker's
    /// deliveries with [`TrackerBuilder::retry_config`](crate::tracker::TrackerBuilder::retry_config).
    pub fn retry_config(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The retry budget shared by the client's calls (default [`RetryBudget::default`]).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// How the client paces itself under Dub's rate limit (default
    /// [`RateLimit::adaptive`]); see [`crate::rate_limit`].
    pub fn rate_limit(mut self, rate_limit: RateLimit) -> Self {
        self.rate_limit = Some(rate_limit);
        self
    }

    /// Appended to the `User-Agent` header, after `dub-rust/<version>`.
    pub fn user_agent_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.user_agent_suffix = Some(suffix.into());
        self
    }

    /// A header sent with every request. The headers the crate sets itself
    /// (`Authorization`, `Content-Type`, `Content-Length`, `Transfer-Encoding`, `Host`,
    /// `Connection`, `User-Agent`, `Accept`, `api-version`) are refused by [`build`](Self::build).
    pub fn default_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Send requests through an existing `reqwest::Client` (its pool, proxy, TLS, timeout and
    /// redirect settings). Then [`connect_timeout`](Self::connect_timeout) does not apply, its
    /// own timeout bounds each attempt unless [`attempt_timeout`](Self::attempt_timeout) is set
    /// (the call's deadline is then checked between attempts), its retry
    /// setting stays (reqwest retries refused HTTP/2 streams by itself, unseen by
    /// [`Error::attempts`](crate::Error::attempts)), and an attempt that times out while its
    /// connection is still opening counts as possibly sent, since the crate cannot see inside
    /// it. reqwest drops `Authorization` on a redirect to another host.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Accept a plain `http://` server URL for a host other than loopback. Off by default: the
    /// token would cross the network in clear text.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Builds the client, or says which setting is unusable.
    pub fn build(self) -> Result<Dub> {
        let token = self.token.unwrap_or_default();
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::config("the API token is empty"));
        }
        let mut auth = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
            Error::config("the API token contains characters not allowed in a header")
        })?;
        auth.set_sensitive(true);
        let ua = match &self.user_agent_suffix {
            Some(s) => format!("{USER_AGENT} {s}"),
            None => USER_AGENT.to_owned(),
        };
        let user_agent = HeaderValue::try_from(ua)
            .map_err(|_| Error::config("the user-agent suffix is not valid in a header"))?;
        let mut default_headers = HeaderMap::new();
        for (name, value) in self.headers {
            let (n, v) = header(&name, &value)?;
            default_headers.insert(n, v);
        }
        let base_url = check_url(
            self.server_url.as_deref().unwrap_or(DEFAULT_SERVER_URL),
            self.allow_insecure_http,
        )?;
        let connect_timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let http = match self.http {
            Some(client) => Http::user(client, self.attempt_timeout),
            None => Http::own(
                self.attempt_timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT),
                connect_timeout,
            )
            .map_err(|e| Error::config("the HTTP client could not be built").with_source(e))?,
        };
        Ok(Dub {
            inner: Ok(Arc::new(ClientCore {
                http: http.client,
                own_http: http.own,
                direct: OnceLock::new(),
                with_deadline: [OnceLock::new(), OnceLock::new()],
                connect_timeout,
                auth,
                user_agent,
                default_headers,
                budget: self.budget.unwrap_or_default(),
                limiter: Limiter::new(self.rate_limit.unwrap_or_default()),
                base_url_direct: is_plain_http_loopback(&base_url),
                base_url,
                attempt_timeout: http.attempt_timeout,
                client_timeout: http.client_timeout,
                retry: self.retry.unwrap_or_default(),
                allow_insecure_http: self.allow_insecure_http,
            })),
        })
    }
}
