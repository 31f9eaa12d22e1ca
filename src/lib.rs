//! Rust SDK for [Dub](https://dub.co)'s conversion-tracking API: record **leads** (a sign-up
//! tied to the click that brought the visitor) and **sales** (revenue tied to that customer)
//! from your backend.
//!
//! ```no_run
//! use dub::Dub;
//! use dub::models::{PaymentProcessor, TrackLeadRequest, TrackSaleRequest};
//!
//! # async fn run() -> dub::Result<()> {
//! let dub = Dub::from_env()?; // DUB_API_KEY
//!
//! // The visitor signed up: attribute them to the click in their `dub_id` cookie.
//! let lead = dub
//!     .track()
//!     .lead(TrackLeadRequest::new("clk_123", "Sign up", "user_42").customer_email("ada@example.com"))
//!     .await?;
//!
//! // They paid: record the revenue, keyed by your invoice id so it can never count twice.
//! let sale = dub
//!     .track()
//!     .sale(TrackSaleRequest::new("user_42", 4900)
//!         .payment_processor(PaymentProcessor::Stripe)
//!         .invoice_id("in_1PqR"))
//!     .await?;
//! # let _ = (lead, sale);
//! # Ok(()) }
//! ```
//!
//! # What you get
//!
//! - **Types generated from Dub's OpenAPI spec** ([`models`]), with constructors for the
//!   required fields and chained setters for the rest. Enums accept values added after this
//!   release; responses ignore fields they do not know.
//! - **Retries that never double-count** ([`retry`]): on by default (3 attempts within 30 s,
//!   backoff with jitter, `Retry-After` honoured and capped, a per-client retry budget), but a
//!   call that may have reached Dub is retried only when Dub deduplicates it: a sale with an
//!   `invoice_id`, a lead that is not `deferred`.
//! - **One error type** ([`Error`]) with [`kind`](Error::kind), [`status`](Error::status),
//!   [`code`](Error::code), [`message`](Error::message), [`retry_after`](Error::retry_after)
//!   and [`may_have_been_recorded`](Error::may_have_been_recorded), which tells you whether
//!   to reconcile before sending again.
//! - **Validation before sending**: the spec's limits (lengths, the email pattern, amounts,
//!   metadata size) are checked locally and reported with the field's name.
//! - A **blocking** client (feature `blocking`) and a **local Dub server** for tests and demos
//!   (feature `mock`).
//!
//! # Coming from the Python SDK
//!
//! Every call in the Python SDK's `track` docs has a Rust equivalent:
//!
//! | Python | Rust |
//! |---|---|
//! | `Dub(token="DUB_API_KEY")` | [`Dub::new("DUB_API_KEY")`](Dub::new), or [`Dub::from_env`] |
//! | `dub.track.lead(request={...})` | `dub.track().lead(TrackLeadRequest::new(..)).await` |
//! | `dub.track.sale(request={...})` | `dub.track().sale(TrackSaleRequest::new(..)).await` |
//! | `retries=RetryConfig(...)` | `.retries(RetryConfig::default()...)` on the call |
//! | `timeout_ms=`, `server_url=`, `http_headers=` | `.timeout(..)`, `.server_url(..)`, `.header(..)` |
//! | `with Dub(...) as dub:` (sync) | [`blocking::Dub`](crate::blocking) (feature `blocking`) |
//! | `errors.RateLimitExceeded` etc. | [`ErrorKind::RateLimitExceeded`] etc. |
//! | `external_id=`, `customer_id=` | `customer_external_id` (Dub's current name for both) |
//!
//! The Python docs' lead example:
//!
//! ```no_run
//! use dub::Dub;
//! use dub::models::TrackLeadRequest;
//!
//! # async fn run() -> dub::Result<()> {
//! let dub = Dub::new("DUB_API_KEY");
//! // Python passes `external_id: ""`; Dub requires 1 to 100 characters, so this crate refuses
//! // an empty id before sending (ErrorKind::Validation), where Python would get a 422.
//! let res = dub.track().lead(TrackLeadRequest::new("<id>", "Sign up", "user_42")).await?;
//! println!("{res:?}");
//! # Ok(()) }
//! ```
//!
//! The Python docs' sale example:
//!
//! ```no_run
//! use dub::Dub;
//! use dub::models::{PaymentProcessor, TrackSaleRequest};
//!
//! # async fn run() -> dub::Result<()> {
//! let dub = Dub::new("DUB_API_KEY");
//! let res = dub
//!     .track()
//!     .sale(TrackSaleRequest::new("user_42", 996500)
//!         .payment_processor(PaymentProcessor::Paddle)
//!         .event_name("Purchase")
//!         .currency("usd"))
//!     .await?;
//! println!("{res:?}");
//! # Ok(()) }
//! ```
//!
//! The same calls without async, as Python's sync client makes them:
//!
//! ```no_run
//! # #[cfg(feature = "blocking")]
//! # fn run() -> dub::Result<()> {
//! use dub::blocking::Dub;
//! use dub::models::{PaymentProcessor, TrackLeadRequest, TrackSaleRequest};
//! use dub::RetryConfig;
//!
//! let dub = Dub::new("DUB_API_KEY");
//! let lead = dub.track().lead(TrackLeadRequest::new("<id>", "Sign up", "user_42")).send()?;
//! let sale = dub
//!     .track()
//!     .sale(TrackSaleRequest::new("user_42", 996500).payment_processor(PaymentProcessor::Paddle))
//!     .retries(RetryConfig::none())
//!     .send()?;
//! # let _ = (lead, sale);
//! # Ok(()) }
//! ```
//!
//! # Handling errors
//!
//! ```no_run
//! use dub::{Dub, ErrorKind};
//! use dub::models::TrackSaleRequest;
//!
//! # async fn run(dub: Dub) {
//! match dub.track().sale(TrackSaleRequest::new("user_42", 4900)).await {
//!     Ok(sale) => println!("recorded: {:?}", sale.sale),
//!     Err(e) if e.kind() == ErrorKind::Validation => eprintln!("fix {}: {e}", e.field().unwrap_or("?")),
//!     Err(e) if e.may_have_been_recorded() => eprintln!("outcome unknown, reconcile: {e}"),
//!     Err(e) => eprintln!("not recorded, safe to send again later: {e}"),
//! }
//! # }
//! ```
//!
//! # Features
//!
//! - `rustls` (default): TLS with rustls. `native-tls`: the platform's TLS instead (turn off
//!   default features).
//! - `blocking`: [`blocking::Dub`](crate::blocking).
//! - `mock`: `dub::mock::MockDub`, a local Dub server.
//!
//! # How the client is made
//!
//! `build.rs` runs [progenitor](https://github.com/oxidecomputer/progenitor) over the
//! crate's `openapi.yaml` (Dub's track operations) at build time; nothing generated is checked
//! in. The hand-written layer is small: `client.rs` (the builder), `track.rs` (calls),
//! `transport.rs` (the one place HTTP exchanges and retries happen), `retry.rs`, `error.rs`,
//! `validate.rs`.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "blocking")]
pub mod blocking;
mod client;
mod clock;
mod error;
#[cfg(feature = "mock")]
pub mod mock;
pub mod models;
pub mod retry;
mod track;
mod transport;
mod validate;

#[allow(missing_docs, clippy::all, private_interfaces, dead_code)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

pub use client::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_SERVER_URL, DEFAULT_TIMEOUT, Dub, DubBuilder};
pub use error::{Error, ErrorKind, Result};
pub use retry::{Jitter, RetryBudget, RetryConfig};
pub use track::{Operation, Track, TrackCall};

// The README's Rust examples compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
