//! A local Dub server for tests: [`MockDub`] answers `POST /track/lead` and `POST /track/sale`
//! on `127.0.0.1` the way Dub's API does, records what it accepted, and can be told to fail in
//! the ways a real network and a real server fail. Enabled by the `mock` cargo feature.
//!
//! ```
//! use dub::mock::{Fault, MockDub};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dub = MockDub::start().await?;
//! let http = reqwest::Client::new();
//! let lead = json!({"clickId": "cl_1", "eventName": "Sign up", "customerExternalId": "user_1"});
//!
//! // The first attempt fails after Dub has recorded the lead; the retry is de-duplicated.
//! dub.push_fault(Fault::ErrorAfterRecord(503));
//! for expected in [503, 200] {
//!     let response = http
//!         .post(format!("{}/track/lead", dub.url()))
//!         .bearer_auth(dub.token())
//!         .json(&lead)
//!         .send()
//!         .await?;
//!     assert_eq!(response.status(), expected);
//! }
//! assert_eq!(dub.leads().len(), 1);
//! assert_eq!(dub.request_count(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! # What it reproduces
//!
//! - Routes: only `POST /track/lead` and `POST /track/sale`; other paths get 404
//!   `not_found`, other methods 405 `method_not_allowed`, both with Dub's error body.
//! - Authentication: no `Authorization` header is 401, one not starting with `Bearer ` is 400,
//!   a token other than [`MockDub::token`] is 401.
//! - Bodies: larger than 1 MiB is 413; not JSON is 400 `bad_request` (JSON nested up to 512
//!   levels is read, as Dub's `JSON.parse` reads deep metadata); a schema violation is
//!   422 `unprocessable_entity` naming the first offending field, in Dub's
//!   `<issue>: <field>: <message>` form. As on Dub, `externalId` and `customerId` are accepted
//!   for `customerExternalId`, and a request with none of the three is 400
//!   `customerExternalId is required`; a lead's `clickId` may be left out (it then counts as
//!   `""`).
//! - Leads: de-duplicated on customer + event name (lowercased, spaces as dashes); a
//!   duplicate gets 200 with `link: null` and records nothing. `eventQuantity: N` records N
//!   leads. `mode: "deferred"` records nothing and skips de-duplication, but creates the
//!   customer with its click, so a later lead with `clickId: ""` is attributed to it. An empty
//!   `clickId` for a customer without a stored click is 400.
//! - Sales: the first successful response for an `invoiceId` is returned byte for byte for
//!   every later sale with that `invoiceId`, recording nothing. Without `invoiceId` every sale
//!   is recorded. A sale for an unknown customer without `clickId`, or with `amount: 0`, gets
//!   200 with `customer: null, sale: null` and records no sale. A sale with `clickId` for an
//!   unknown customer is a direct sale: Dub creates the customer and records a lead for it
//!   first. A sale for a known customer without a lead (or without a lead named
//!   `leadEventName`) is 404.
//! - Rate limits: like Dub, only error responses carry `X-RateLimit-Limit`,
//!   `X-RateLimit-Remaining` and `X-RateLimit-Reset` (epoch milliseconds); a success carries
//!   none. [`MockDubBuilder::rate_limit`] enforces Dub's sliding-window limit with Dub's 429;
//!   without it nothing is refused and errors report a limit of 600.
//! - The lead-then-sale race, opt-in with [`MockDubBuilder::lead_race`]: a sale right after an
//!   `async` lead gets Dub's 404 "Lead event not found" until the lead's event is written.
//! - The invoice read-then-write race, opt-in with [`MockDubBuilder::invoice_race`]: a second
//!   sale for an `invoiceId` that arrives before the first one's response is cached is
//!   recorded again.
//! - Connections: HTTP/1.1 with keep-alive; a client may shut its side down after sending
//!   and still gets its answer; a connection silent for 30 s while none of its requests is
//!   being handled is closed ([`MockDubBuilder::idle_timeout`]), so stalled or forgotten
//!   clients do not pile up.
//!
//! Every click ID is accepted as a click on one mock link, amounts are never converted to USD,
//! and the error `message`s match Dub's where Dub's source states them.
//!
//! # What it keeps
//!
//! The last 100,000 requests, leads and sales ([`MockDubBuilder::history`] sets how many), and
//! exact counts of everything ([`MockDub::request_count`], [`MockDub::stats`]), so that a
//! server running for days stays bounded. Tests in other languages, which run it as
//! `dub-track mock`, read the same over HTTP without a token: `GET /__mock/stats` (the
//! counters), `GET /__mock/requests` (the kept requests as JSON) and `DELETE /__mock/requests`
//! (forget them and reset the request counters). Requests to `/__mock/` are not recorded,
//! counted, rate limited or given faults.
//!
//! # Faults
//!
//! [`MockDub::push_fault`] scripts the fate of the next requests, one fault per request in
//! arrival order; [`MockDub::random_faults`] draws faults from a seeded generator for every
//! request without a scripted one. See [`Fault`] for what each does to the connection.

mod control;
mod fault;
mod history;
mod records;
mod reply;
mod rules;
mod schema;
mod server;
mod window;

pub use fault::{ExactReply, Fault, RandomFaults, RetryAfter};
pub use records::{MockStats, ReceivedRequest, RecordedLead, RecordedSale};

use fault::FaultPlan;
use history::History;
use reply::{RateLimit, Reply};
use rules::{Context, Incoming, Workspace};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use window::SlidingWindow;

/// The API token the mock accepts.
const TOKEN: &str = "dub_mock_token";

/// A running mock Dub server on `127.0.0.1`.
///
/// Clones are handles to the same server. It stops when the last handle is dropped or when
/// [`MockDub::shutdown`] is called; both need the Tokio runtime that started it to keep
/// running for connections to close cleanly.
#[derive(Clone)]
pub struct MockDub {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<MockState>,
    url: String,
    stop: watch::Sender<bool>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl fmt::Debug for MockDub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockDub")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl MockDub {
    /// Starts a server on `127.0.0.1` with a port chosen by the OS, no enforced rate limit and
    /// no lead race: [`MockDub::builder`] for those.
    ///
    /// Must be called inside a Tokio runtime, which then runs the server.
    pub async fn start() -> std::io::Result<MockDub> {
        MockDub::builder().start().await
    }

    /// A server to configure before it starts.
    ///
    /// ```
    /// use dub::mock::MockDub;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let dub = MockDub::builder()
    ///     .rate_limit(1_200) // requests a minute, Dub's sliding window
    ///     .lead_race(Duration::from_millis(500))
    ///     .start()
    ///     .await?;
    /// assert_eq!(dub.rate_limit(), Some(1_200));
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> MockDubBuilder {
        MockDubBuilder::default()
    }

    async fn start_with(builder: MockDubBuilder) -> std::io::Result<MockDub> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, builder.port)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let config = Config {
            rate_limit: builder.rate_limit,
            lead_race: builder.lead_race,
            invoice_race: builder.invoice_race,
            history: builder.history,
        };
        let shared = Arc::new(MockState {
            state: Mutex::new(State::new(config)),
        });
        if let Some(faults) = builder.random_faults {
            shared.lock().faults.set_random(faults);
        }
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(server::run(
            listener,
            shared.clone(),
            stopped,
            builder.idle_timeout,
        ));
        Ok(MockDub {
            inner: Arc::new(Inner {
                shared,
                url,
                stop,
                server: Mutex::new(Some(server)),
            }),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// The bearer token the mock accepts; any other is 401.
    pub fn token(&self) -> &str {
        TOKEN
    }

    /// Every lead event recorded, oldest first (the last [`MockDubBuilder::history`] of them).
    pub fn leads(&self) -> Vec<RecordedLead> {
        self.inner.shared.lock().workspace.leads.to_vec()
    }

    /// Every sale event recorded, oldest first (the last [`MockDubBuilder::history`] of them).
    pub fn sales(&self) -> Vec<RecordedSale> {
        self.inner.shared.lock().workspace.sales.to_vec()
    }

    /// Every HTTP request received, in arrival order, whatever became of it (the last
    /// [`MockDubBuilder::history`] of them). Requests hyper could not parse as HTTP are not
    /// included, nor those to the mock's own `/__mock/` endpoints.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.inner.shared.lock().requests.to_vec()
    }

    /// The number of HTTP requests received, including those no longer kept.
    pub fn request_count(&self) -> usize {
        usize::try_from(self.inner.shared.lock().requests.total()).unwrap_or(usize::MAX)
    }

    /// What the server has received and recorded so far, counted whether or not the requests
    /// and events are still kept. The same figures are served as JSON at `GET /__mock/stats`.
    pub fn stats(&self) -> MockStats {
        self.inner.shared.lock().stats()
    }

    /// Forgets the kept requests and the request counters ([`MockDub::request_count`],
    /// [`MockDub::rate_limited_count`], [`MockDub::stats`]), as `DELETE /__mock/requests`
    /// does; recorded events, customers and the rate-limit window stay.
    pub fn clear_requests(&self) {
        self.inner.shared.lock().clear_requests();
    }

    /// Queues a fault for the next request that has none yet.
    pub fn push_fault(&self, fault: Fault) {
        self.inner.shared.lock().faults.push(fault);
    }

    /// Queues faults for the next requests, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        let mut state = self.inner.shared.lock();
        for fault in faults {
            state.faults.push(fault);
        }
    }

    /// Gives every request without a scripted fault a random one, replacing any earlier
    /// random configuration and restarting its sequence from the seed.
    pub fn random_faults(&self, config: RandomFaults) {
        self.inner.shared.lock().faults.set_random(config);
    }

    /// Drops the queued faults and turns random faults off.
    pub fn clear_faults(&self) {
        self.inner.shared.lock().faults.clear();
    }

    /// Enforces `per_minute` requests a minute from now on (`None`: counts without refusing),
    /// keeping the counts of the current and previous minute.
    pub fn set_rate_limit(&self, per_minute: Option<u64>) {
        let mut state = self.inner.shared.lock();
        state.window.set_limit(per_minute);
        state.config.rate_limit = per_minute;
    }

    /// The enforced limit, requests a minute, if any.
    pub fn rate_limit(&self) -> Option<u64> {
        self.inner.shared.lock().window.enforced_limit()
    }

    /// Makes leads tracked from now on in `async` mode invisible to sales for `delay`
    /// (`None`: visible at once). See [`MockDubBuilder::lead_race`].
    pub fn set_lead_race(&self, delay: Option<Duration>) {
        self.inner.shared.lock().config.lead_race = delay;
    }

    /// Leaves sales recorded from now on out of the invoice cache for `delay` (`None`: cached
    /// at once). See [`MockDubBuilder::invoice_race`].
    pub fn set_invoice_race(&self, delay: Option<Duration>) {
        self.inner.shared.lock().config.invoice_race = delay;
    }

    /// The number of requests refused with 429 by the enforced rate limit.
    pub fn rate_limited_count(&self) -> usize {
        usize::try_from(self.inner.shared.lock().counts.rate_limited).unwrap_or(usize::MAX)
    }

    /// Returns the server to its state right after it started, on the same port and with the
    /// same configuration (rate limit, lead and invoice races): forgets customers, recorded events, the
    /// de-duplication and invoice caches, received requests, the rate-limit counts and all
    /// faults.
    pub fn reset(&self) {
        let mut state = self.inner.shared.lock();
        *state = State::new(state.config.clone());
    }

    /// Stops accepting connections and closes open ones, for every handle to this server.
    /// Returns once the port is released.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }
}

/// How a [`MockDub`] is set up before it starts: [`MockDub::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MockDubBuilder {
    port: u16,
    rate_limit: Option<u64>,
    lead_race: Option<Duration>,
    invoice_race: Option<Duration>,
    random_faults: Option<RandomFaults>,
    history: usize,
    idle_timeout: Duration,
}

impl Default for MockDubBuilder {
    fn default() -> Self {
        MockDubBuilder {
            port: 0,
            rate_limit: None,
            lead_race: None,
            invoice_race: None,
            random_faults: None,
            history: history::DEFAULT_LIMIT,
            idle_timeout: server::IDLE_TIMEOUT,
        }
    }
}

impl MockDubBuilder {
    /// Listens on this port of `127.0.0.1`; 0 (the default) lets the OS choose.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Enforces Dub's rate limit: `per_minute` requests a minute for the whole server (one API
    /// key), with Dub's algorithm (Upstash's sliding window: two epoch-aligned one-minute
    /// windows, the previous one weighted by the part of it still inside the last minute;
    /// refused requests are not counted; every authenticated request that gets through is,
    /// whatever its outcome). A refused request gets Dub's 429 with `Retry-After` and
    /// `X-RateLimit-Reset` in epoch milliseconds. Time is read through Tokio's clock, so a
    /// test on a paused clock runs minutes of traffic in no time.
    ///
    /// Without it nothing is refused, and error responses report a limit of 600.
    pub fn rate_limit(mut self, per_minute: u64) -> Self {
        self.rate_limit = Some(per_minute);
        self
    }

    /// Reproduces Dub's lead-then-sale race: a lead tracked in `async` mode (the default)
    /// stays invisible to sales for `delay`, during which a sale for that customer gets Dub's
    /// 404 "Lead event not found for externalId: …" and records nothing. Leads tracked with
    /// `mode: "wait"` are visible at once, as on Dub.
    pub fn lead_race(mut self, delay: Duration) -> Self {
        self.lead_race = Some(delay);
        self
    }

    /// Reproduces Dub's invoice read-then-write race: Dub looks up the cached response for a
    /// sale's `invoiceId` before recording the sale and caches its own response only after
    /// answering, so two sales for one invoice that overlap are both recorded. Here a sale's
    /// response enters the invoice cache `delay` after the sale was recorded; another sale for
    /// the same invoice before then is recorded again and answered with its own response.
    /// After that, every sale for the invoice gets the first response, recording nothing.
    ///
    /// Without it (the default) the cache is written at once, so only the first sale for an
    /// invoice is ever recorded.
    ///
    /// ```
    /// use dub::mock::MockDub;
    /// use serde_json::json;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dub = MockDub::builder()
    ///     .invoice_race(Duration::from_secs(5))
    ///     .start()
    ///     .await?;
    /// let http = reqwest::Client::new();
    /// let sale = json!({"customerExternalId": "u1", "clickId": "cl_1", "amount": 900, "invoiceId": "in_1"});
    /// for _ in 0..2 {
    ///     http.post(format!("{}/track/sale", dub.url()))
    ///         .bearer_auth(dub.token())
    ///         .json(&sale)
    ///         .send()
    ///         .await?;
    /// }
    /// assert_eq!(dub.sales().len(), 2, "both overlapping sales were recorded");
    /// # Ok(())
    /// # }
    /// ```
    pub fn invoice_race(mut self, delay: Duration) -> Self {
        self.invoice_race = Some(delay);
        self
    }

    /// Keeps the last `n` requests, leads and sales (default 100,000 of each) for
    /// [`MockDub::requests`], [`MockDub::leads`] and [`MockDub::sales`]; older ones are only
    /// counted ([`MockDub::request_count`], [`MockDub::stats`]). A server that runs for long
    /// (`dub-track mock` keeps 1,000) then stays bounded in memory whatever it receives; 0
    /// keeps none.
    pub fn history(mut self, n: usize) -> Self {
        self.history = n;
        self
    }

    /// Closes a connection that has sent and received nothing for `timeout` (30 s by default)
    /// while no request of it is being handled: a client that connects and stays silent, stops
    /// half-way through its headers or body, or keeps an idle connection alive. Measured in real
    /// time, not on Tokio's clock, so that a test on a paused clock keeps its connections.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Starts with random faults, as [`MockDub::random_faults`] would right after start.
    pub fn random_faults(mut self, faults: RandomFaults) -> Self {
        self.random_faults = Some(faults);
        self
    }

    /// Starts the server. Must be called inside a Tokio runtime, which then runs it.
    pub async fn start(self) -> std::io::Result<MockDub> {
        MockDub::start_with(self).await
    }
}

/// State shared by the handle and the connection tasks.
pub(crate) struct MockState {
    state: Mutex<State>,
}

/// What survives [`MockDub::reset`].
#[derive(Debug, Clone)]
struct Config {
    rate_limit: Option<u64>,
    lead_race: Option<Duration>,
    invoice_race: Option<Duration>,
    history: usize,
}

struct State {
    config: Config,
    workspace: Workspace,
    requests: History<ReceivedRequest>,
    counts: Counts,
    faults: FaultPlan,
    window: SlidingWindow,
}

/// Request counters, exact however many requests are kept.
#[derive(Debug, Default)]
struct Counts {
    faults: u64,
    rate_limited: u64,
    /// Answered requests by status.
    statuses: std::collections::BTreeMap<u16, u64>,
}

impl State {
    fn new(config: Config) -> State {
        State {
            window: SlidingWindow::new(config.rate_limit),
            workspace: Workspace::new(config.history),
            requests: History::new(config.history),
            config,
            counts: Counts::default(),
            faults: FaultPlan::default(),
        }
    }

    fn stats(&self) -> MockStats {
        MockStats {
            requests: self.requests.total(),
            requests_kept: self.requests.kept(),
            statuses: self.counts.statuses.clone(),
            rate_limited: self.counts.rate_limited,
            faults: self.counts.faults,
            leads: self.workspace.leads.total(),
            sales: self.workspace.sales.total(),
        }
    }

    fn clear_requests(&mut self) {
        self.requests.clear();
        self.counts = Counts::default();
    }
}

impl MockState {
    /// A test that panicked while holding the lock must not take the other tests' server
    /// down with it; the state is plain data and stays usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a request as it arrives and decides its fault, under one lock so that arrival
    /// order is fault order. Returns the fault and the request's number in the log.
    fn arrive(&self, mut request: ReceivedRequest) -> (Option<Fault>, u64) {
        let mut state = self.lock();
        let fault = state.faults.next();
        if fault.is_some() {
            state.counts.faults += 1;
        }
        request.fault = fault.clone();
        let n = state.requests.push(request);
        (fault, n)
    }

    /// Notes the status a logged request was answered with.
    fn answered(&self, n: u64, status: u16, faulted: bool) {
        let mut state = self.lock();
        *state.counts.statuses.entry(status).or_default() += 1;
        if status == 429 && !faulted {
            state.counts.rate_limited += 1;
        }
        if let Some(request) = state.requests.get_mut(n) {
            request.status = Some(status);
        }
    }

    fn handle(&self, request: &Incoming<'_>) -> Reply {
        let mut state = self.lock();
        let State {
            config,
            workspace,
            window,
            ..
        } = &mut *state;
        let cx = Context {
            window,
            now_ms: crate::clock::now_ms(),
            lead_race: config.lead_race,
            invoice_race: config.invoice_race,
        };
        workspace.handle(TOKEN, request, cx)
    }

    /// The key's rate-limit state without counting a request, for 429s from faults.
    fn peek_rate(&self) -> RateLimit {
        self.lock().window.peek(crate::clock::now_ms())
    }
}
