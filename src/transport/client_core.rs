//! What a client's calls share, and the reqwest clients they are sent with.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

use super::connect::{AttemptDeadlineLayer, CONNECT_FIRST};
use crate::rate_limit::Limiter;
use crate::retry::{RetryBudget, RetryConfig};

/// What every call of one client shares: its HTTP clients, settings, retry budget and rate
/// limiter. A [`Dub`](crate::Dub) and its clones hold one.
#[derive(Debug)]
pub(crate) struct ClientCore {
    pub http: reqwest::Client,
    /// Whether `http` is the crate's own (so its timeouts and connector are ours).
    pub own_http: bool,
    /// A client without proxies for plain-http loopback URLs, made when first needed: the
    /// token must not travel in clear text to a proxy on its way to a server on this machine.
    pub direct: OnceLock<reqwest::Client>,
    /// With our own client: clients with the attempt deadline on connecting, through a proxy
    /// and direct, made when an attempt first needs one (see [`ClientCore::client`]).
    pub with_deadline: [OnceLock<reqwest::Client>; 2],
    /// The connect timeout asked for; `http` and `direct` connect within the attempt timeout
    /// if that is shorter.
    pub connect_timeout: Duration,
    pub auth: HeaderValue,
    pub user_agent: HeaderValue,
    pub default_headers: HeaderMap,
    pub budget: RetryBudget,
    pub limiter: Limiter,
    pub base_url: String,
    /// Whether `base_url` is plain http to this machine (decided once: it takes a URL parse).
    pub base_url_direct: bool,
    /// The per-attempt timeout; `None` with a user's client whose own timeout then applies.
    pub attempt_timeout: Option<Duration>,
    /// The timeout `http` applies to every request by itself (set when we built it), which a
    /// request with the same timeout therefore need not carry.
    pub client_timeout: Option<Duration>,
    pub retry: RetryConfig,
    pub allow_insecure_http: bool,
}

impl ClientCore {
    /// Whether a call goes direct, not via a proxy: plain http to this machine
    /// (`plain_http_loopback`) never goes through one, with our own client.
    pub(crate) fn goes_direct(&self, plain_http_loopback: bool) -> bool {
        self.own_http && plain_http_loopback
    }

    /// The client for an attempt whose timeout is `timeout`.
    ///
    /// An attempt's deadline applies to opening a connection too (see `connect.rs`). Our own
    /// `http` and `direct` clients connect within the client's attempt timeout already, which
    /// is that deadline for every attempt with the client's attempt timeout (the usual case);
    /// an attempt with another timeout (a per-call one, or the call's deadline coming first)
    /// uses a client whose connector reads the deadline. A user's client keeps its own.
    pub(crate) fn client(&self, direct: bool, timeout: Option<Duration>) -> &reqwest::Client {
        if !self.own_http {
            return &self.http;
        }
        let plain = !self.reads_deadline(timeout);
        let make = |deadline: bool| {
            let connect = if deadline {
                self.connect_timeout
            } else {
                self.attempt_timeout
                    .map_or(self.connect_timeout, |t| self.connect_timeout.min(t))
            };
            own_client(connect, self.client_timeout, direct, deadline)
                .unwrap_or_else(|_| self.http.clone())
        };
        match (plain, direct) {
            (true, false) => &self.http,
            (true, true) => self.direct.get_or_init(|| make(false)),
            (false, _) => self.with_deadline[usize::from(direct)].get_or_init(|| make(true)),
        }
    }

    /// Whether an attempt with `timeout` goes through a client whose connector reads the
    /// attempt's deadline (see [`ClientCore::client`]).
    pub(crate) fn reads_deadline(&self, timeout: Option<Duration>) -> bool {
        self.own_http && timeout != self.attempt_timeout
    }

    /// The client the generated code is made with (it builds requests; `exchange` sends them
    /// with [`ClientCore::client`]).
    pub(crate) fn client_for(&self, direct: bool) -> &reqwest::Client {
        self.client(direct, self.attempt_timeout)
    }
}

/// The HTTP client a [`ClientCore`] starts from, with the timeouts that come with it.
#[derive(Debug)]
pub(crate) struct Http {
    pub client: reqwest::Client,
    /// Whether `client` is the crate's own.
    pub own: bool,
    pub attempt_timeout: Option<Duration>,
    pub client_timeout: Option<Duration>,
}

impl Http {
    /// The user's client, which keeps its own timeout unless `attempt_timeout` is set.
    pub(crate) fn user(client: reqwest::Client, attempt_timeout: Option<Duration>) -> Self {
        Self {
            client,
            own: false,
            attempt_timeout,
            client_timeout: None,
        }
    }

    /// The crate's own client with these timeouts.
    pub(crate) fn own(
        attempt_timeout: Duration,
        connect_timeout: Duration,
    ) -> reqwest::Result<Self> {
        // The request's own timeout fires just after the connector's (see `connect.rs`).
        let client_timeout = attempt_timeout.saturating_add(CONNECT_FIRST);
        // The usual attempt's deadline on connecting is the client's own connect timeout (see
        // `ClientCore::client`).
        let client = own_client(
            connect_timeout.min(attempt_timeout),
            Some(client_timeout),
            false,
            false,
        )?;
        Ok(Self {
            client,
            own: true,
            attempt_timeout: Some(attempt_timeout),
            client_timeout: Some(client_timeout),
        })
    }
}

/// The crate's own reqwest client: no redirects (an API POST must not be resent elsewhere), no
/// retries of its own (this crate's loop is the only one, and counts every attempt), with
/// `direct` no proxy, and with `deadline` the attempt's deadline on connecting.
///
/// The deadline layer costs about 3,000 instructions a request even on a pooled connection
/// (reqwest type-erases a layered connector, and hyper clones it, a few boxes each time, for
/// every request), so it is only on the clients for attempts whose deadline the plain client's
/// connect timeout does not already give (see [`ClientCore::client`]).
fn own_client(
    connect_timeout: Duration,
    timeout: Option<Duration>,
    direct: bool,
    deadline: bool,
) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never());
    if deadline {
        builder = builder.connector_layer(AttemptDeadlineLayer);
    }
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    if direct {
        builder = builder.no_proxy();
    }
    builder.build()
}
