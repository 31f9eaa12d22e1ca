//! Request and response types of the track operations.
//!
//! The structs are generated from `openapi.yaml` by progenitor at build time. They are
//! `#[non_exhaustive]`: a field Dub adds in a later version of the crate breaks nobody's build.
//! Requests are made with builders that name every required field and refuse, at compile time,
//! to build a request that lacks one:
//!
//! ```
//! use dub::models::{LeadMode, PaymentProcessor, TrackLeadRequest, TrackSaleRequest};
//!
//! let lead = TrackLeadRequest::builder()
//!     .click_id("clk_123")
//!     .event_name("Sign up")
//!     .customer_external_id("user_42")
//!     .customer_email("ada@example.com")
//!     .mode(LeadMode::Wait)
//!     .build();
//! let sale = TrackSaleRequest::builder()
//!     .customer_external_id("user_42")
//!     .amount(996500)
//!     .payment_processor(PaymentProcessor::Paddle)
//!     .invoice_id("in_1")
//!     .currency("usd")
//!     .build();
//! assert_eq!(sale.amount, 996500);
//! assert_eq!(lead.customer_external_id, "user_42");
//! ```
//!
//! Leaving a required field out does not compile:
//!
//! ```compile_fail
//! # use dub::models::TrackLeadRequest;
//! // error: the lead's required field `event_name` is not set
//! let lead = TrackLeadRequest::builder()
//!     .click_id("clk_123")
//!     .customer_external_id("user_42")
//!     .build();
//! ```
//!
//! A request stays a plain value: it can be stored, cloned, compared, logged and (de)serialised
//! as Dub's JSON, for example to queue it:
//!
//! ```
//! # use dub::models::TrackSaleRequest;
//! let json = r#"{"customerExternalId":"user_42","amount":4900,"invoiceId":"in_7"}"#;
//! let sale: TrackSaleRequest = serde_json::from_str(json)?;
//! assert_eq!(sale.currency, "usd"); // the spec's default
//! # Ok::<(), serde_json::Error>(())
//! ```
//!
//! The two enums of the requests, [`LeadMode`] and [`PaymentProcessor`], are open: a value Dub
//! adds after this release still round-trips, and equals the variant a later release gives it.

mod builders;
pub(crate) mod validate;

pub use crate::generated::types::{
    ErrorBody, ErrorBodyError, TrackLeadRequest, TrackLeadResponse, TrackLeadResponseClick,
    TrackLeadResponseCustomer, TrackLeadResponseLink, TrackSaleRequest, TrackSaleResponse,
    TrackSaleResponseCustomer, TrackSaleResponseSale,
};
pub use crate::open_enum::{LeadMode, PaymentProcessor, UnknownValue};
pub use builders::{IsSet, Missing, Set, TrackLeadRequestBuilder, TrackSaleRequestBuilder, field};

impl TrackLeadRequest {
    /// Whether Dub deduplicates this lead (every mode but `deferred`), so that sending it again
    /// after a failure whose outcome is unknown cannot record it twice.
    pub fn is_deduplicated(&self) -> bool {
        // A mode this release does not know counts as not deduplicated: when unsure, never resend.
        matches!(self.mode, None | Some(LeadMode::Async | LeadMode::Wait))
    }

    /// Checks the request against the rules of Dub's API (lengths, the email pattern, ranges,
    /// the size of `metadata`) without sending it. Every call does this before sending; it is
    /// public so that a queue can refuse a bad event when it is handed over.
    pub fn validate(&self) -> crate::Result<()> {
        validate::lead(self)
    }
}

impl TrackSaleRequest {
    /// Whether Dub deduplicates this sale: it has a non-empty `invoice_id`, and Dub records one
    /// sale per invoice id. A sale without one may be recorded twice if it is sent again after a
    /// failure whose outcome is unknown.
    pub fn is_deduplicated(&self) -> bool {
        self.invoice_id.as_deref().is_some_and(|id| !id.is_empty())
    }

    /// Checks the request against the rules of Dub's API without sending it; see
    /// [`TrackLeadRequest::validate`].
    pub fn validate(&self) -> crate::Result<()> {
        validate::sale(self)
    }
}
