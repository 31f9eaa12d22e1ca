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
//! - Bodies: larger than 1 MiB is 413; not JSON is 400 `bad_request`; a schema violation is
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
//! - Every response carries `X-RateLimit-Limit` (600), `X-RateLimit-Remaining` (counting
//!   down over a one-minute window) and `X-RateLimit-Reset` (Unix time in milliseconds, like
//!   Dub). The limit is reported but never enforced: 429s come only from faults.
//!
//! Every click ID is accepted as a click on one mock link, amounts are never converted to USD,
//! and the error `message`s match Dub's where Dub's source states them.
//!
//! # Faults
//!
//! [`MockDub::push_fault`] scripts the fate of the next requests, one fault per request in
//! arrival order; [`MockDub::random_faults`] draws faults from a seeded generator for every
//! request without a scripted one. See [`Fault`] for what each does to the connection.

mod fault;
mod records;
mod reply;
mod rules;
mod schema;
mod server;

pub use fault::{Fault, RandomFaults, RetryAfter};
pub use records::{ReceivedRequest, RecordedLead, RecordedSale};

use fault::FaultPlan;
use reply::{RateLimit, Reply};
use rules::{Dub, Incoming};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The API token the mock accepts.
const TOKEN: &str = "dub_mock_token";
/// Dub's per-minute limits go from 60 to 3000 requests by plan; 600 is in between.
const RATE_LIMIT: u64 = 600;
const RATE_WINDOW_MS: u64 = 60_000;

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
    shared: Arc<Shared>,
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
    /// Starts a server on `127.0.0.1` with a port chosen by the OS.
    ///
    /// Must be called inside a Tokio runtime, which then runs the server.
    pub async fn start() -> std::io::Result<MockDub> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(server::run(listener, shared.clone(), stopped));
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

    /// Every lead event recorded, oldest first.
    pub fn leads(&self) -> Vec<RecordedLead> {
        self.inner.shared.lock().dub.leads.clone()
    }

    /// Every sale event recorded, oldest first.
    pub fn sales(&self) -> Vec<RecordedSale> {
        self.inner.shared.lock().dub.sales.clone()
    }

    /// Every HTTP request received, in arrival order, whatever became of it. Requests hyper
    /// could not parse as HTTP are not included.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.inner.shared.lock().requests.clone()
    }

    /// The number of HTTP requests received.
    pub fn request_count(&self) -> usize {
        self.inner.shared.lock().requests.len()
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

    /// Returns the server to its state right after [`MockDub::start`], on the same port:
    /// forgets customers, recorded events, the de-duplication and invoice caches, received
    /// requests, the rate-limit window and all faults.
    pub fn reset(&self) {
        *self.inner.shared.lock() = State::default();
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

/// State shared by the handle and the connection tasks.
#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    dub: Dub,
    requests: Vec<ReceivedRequest>,
    faults: FaultPlan,
    window: RateWindow,
}

/// A fixed one-minute window counting requests, for the `X-RateLimit-*` headers.
#[derive(Default)]
struct RateWindow {
    start_ms: u64,
    count: u64,
}

impl RateWindow {
    fn hit(&mut self, now_ms: u64) -> RateLimit {
        if now_ms >= self.start_ms.saturating_add(RATE_WINDOW_MS) {
            self.start_ms = now_ms;
            self.count = 0;
        }
        self.count += 1;
        RateLimit {
            limit: RATE_LIMIT,
            remaining: RATE_LIMIT.saturating_sub(self.count),
            reset_ms: self.start_ms.saturating_add(RATE_WINDOW_MS),
        }
    }
}

impl Shared {
    /// A test that panicked while holding the lock must not take the other tests' server
    /// down with it; the state is plain data and stays usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a request as it arrives and decides its fault and rate-limit headers, under
    /// one lock so that arrival order is fault order.
    fn arrive(&self, mut request: ReceivedRequest) -> (Option<Fault>, RateLimit) {
        let mut state = self.lock();
        let fault = state.faults.next();
        request.fault = fault.clone();
        state.requests.push(request);
        let rate = state.window.hit(reply::now_ms());
        (fault, rate)
    }

    fn handle(&self, request: &Incoming<'_>) -> Reply {
        self.lock().dub.handle(TOKEN, request)
    }
}
