//! The [`Dub`] client and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::error::{Error, Result};
use crate::retry::{RetryBudget, RetryConfig};
use crate::track::Track;
use crate::transport::Shared;

/// Dub's API.
pub const DEFAULT_SERVER_URL: &str = "https://api.dub.co";
/// The default per-attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default timeout for opening a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const USER_AGENT: &str = concat!("dub-rust/", env!("CARGO_PKG_VERSION"));

/// A client of Dub's conversion-tracking API.
///
/// Cheap to clone: clones share one connection pool, configuration and retry budget. Make one
/// per process and clone it where needed.
///
/// ```no_run
/// # async fn run() -> dub::Result<()> {
/// use dub::Dub;
/// use dub::models::TrackLeadRequest;
///
/// let dub = Dub::new("dub_xxx");
/// let lead = dub
///     .track()
///     .lead(TrackLeadRequest::new("clk_123", "Sign up", "user_42").customer_email("ada@example.com"))
///     .await?;
/// println!("attributed to click {}", lead.click.id);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dub {
    // A client whose configuration was refused by `Dub::new` keeps the reason and reports it
    // from every call, so that `new` never panics.
    inner: std::result::Result<Arc<Shared>, Arc<str>>,
}

impl Dub {
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
    /// (optional, for example a local `dub::mock::MockDub` or a proxy).
    ///
    /// ```no_run
    /// let dub = dub::Dub::from_env()?;
    /// # Ok::<(), dub::Error>(())
    /// ```
    pub fn from_env() -> Result<Self> {
        let token =
            std::env::var("DUB_API_KEY").map_err(|_| Error::config("DUB_API_KEY is not set"))?;
        let mut builder = Self::builder().token(token);
        if let Ok(url) = std::env::var("DUB_BASE_URL") {
            builder = builder.server_url(url);
        }
        builder.build()
    }

    /// A builder for a client with non-default settings.
    ///
    /// ```
    /// use dub::{Dub, RetryConfig};
    /// use std::time::Duration;
    ///
    /// let dub = Dub::builder()
    ///     .token("dub_xxx")
    ///     .server_url("http://127.0.0.1:4010")
    ///     .timeout(Duration::from_secs(10))
    ///     .retry_config(RetryConfig::none())
    ///     .build()?;
    /// # Ok::<(), dub::Error>(())
    /// ```
    pub fn builder() -> DubBuilder {
        DubBuilder::default()
    }

    /// The track operations: [`Track::lead`] and [`Track::sale`].
    pub fn track(&self) -> Track {
        Track::new(self.clone())
    }

    pub(crate) fn shared(&self) -> Result<&Arc<Shared>> {
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
                .field("timeout", &s.timeout)
                .field("retry", &s.retry)
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
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    retry: Option<RetryConfig>,
    budget: Option<RetryBudget>,
    user_agent_suffix: Option<String>,
    headers: Vec<(String, String)>,
    http: Option<reqwest::Client>,
    allow_insecure_http: bool,
}

impl fmt::Debug for DubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DubBuilder")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("server_url", &self.server_url)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl DubBuilder {
    /// The API key (`dub_...`), sent as `Authorization: Bearer <token>`. Required.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The API's base URL (default `https://api.dub.co`). Plain `http://` is accepted only
    /// for loopback hosts unless [`allow_insecure_http`](Self::allow_insecure_http) is set.
    pub fn server_url(mut self, url: impl Into<String>) -> Self {
        self.server_url = Some(url.into());
        self
    }

    /// The timeout of each attempt, from connecting to the end of the response body (default
    /// 10 s). The whole call is bounded by [`RetryConfig::max_elapsed_time`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The timeout for opening a connection (default 5 s). Ignored with
    /// [`http_client`](Self::http_client), whose own setting applies.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The retry policy of every call (default [`RetryConfig::default`]); calls can override
    /// it with `.retries(..)`.
    pub fn retry_config(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The retry budget shared by the client's calls (default [`RetryBudget::default`]).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Appended to the `User-Agent` header, after `dub-rust/<version>`.
    pub fn user_agent_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.user_agent_suffix = Some(suffix.into());
        self
    }

    /// A header sent with every request.
    pub fn default_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Send requests through an existing `reqwest::Client` (its pool, proxy and TLS settings).
    /// Its redirect policy then applies too; reqwest drops `Authorization` on a redirect to
    /// another host.
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
        if token.trim().is_empty() {
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
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let (http, client_timeout) = match self.http {
            Some(client) => (client, None),
            None => {
                let client = reqwest::Client::builder()
                    .connect_timeout(self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
                    .timeout(timeout)
                    // An API call is never redirected; following one would resend the event.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| {
                        Error::config("the HTTP client could not be built").with_source(e)
                    })?;
                (client, Some(timeout))
            }
        };
        Ok(Dub {
            inner: Ok(Arc::new(Shared {
                http,
                auth,
                user_agent,
                default_headers,
                budget: self.budget.unwrap_or_default(),
                base_url,
                timeout,
                client_timeout,
                retry: self.retry.unwrap_or_default(),
                allow_insecure_http: self.allow_insecure_http,
            })),
        })
    }
}

/// Parses a header, naming the culprit if it cannot be sent.
pub(crate) fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue)> {
    let n = HeaderName::try_from(name)
        .map_err(|_| Error::config(format!("{name:?} is not a valid header name")))?;
    let v = HeaderValue::try_from(value)
        .map_err(|_| Error::config(format!("the value of header {name} is not valid")))?;
    Ok((n, v))
}

/// Checks a server URL and returns it without a trailing slash.
pub(crate) fn check_url(url: &str, allow_insecure_http: bool) -> Result<String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::config(format!("server URL {url:?} is not a URL: {e}")))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback || allow_insecure_http => {}
        "http" => {
            return Err(Error::config(format!(
                "server URL {url:?} is plain http to a host that is not loopback; the token \
                 would travel unencrypted (use https, or allow_insecure_http(true))"
            )));
        }
        other => {
            return Err(Error::config(format!(
                "server URL scheme {other:?} is not http(s)"
            )));
        }
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::config(format!(
            "server URL {url:?} must not have a query or fragment"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}
