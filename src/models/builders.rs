//! Builders for the two requests, in which every required field is named where it is set and a
//! request that lacks one does not compile.
//!
//! Each builder carries one type parameter per required field, [`Missing`] until the field's
//! setter is called and [`Set`] after; `build()` exists only when all are `Set`. Nothing required
//! is defaulted: an unset `click_id` is a compile error, not `""` (which means "reuse the
//! customer's stored click" to Dub). Optional fields are plain chained setters.

use std::marker::PhantomData;

use serde_json::{Map, Value};

use super::{LeadMode, PaymentProcessor, TrackLeadRequest, TrackSaleRequest};

/// Type-state of a builder's required field: not set yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Missing;

/// Type-state of a builder's required field: set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Set;

/// Names of the required fields, for the compiler's message when one is missing.
#[allow(non_camel_case_types, missing_debug_implementations)]
pub mod field {
    /// `clickId` of a lead.
    pub enum click_id {}
    /// `eventName` of a lead.
    pub enum event_name {}
    /// `customerExternalId` of a lead or a sale.
    pub enum customer_external_id {}
    /// `amount` of a sale.
    pub enum amount {}
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Set {}
}

/// Implemented by [`Set`] only: the bound `build()` puts on each required field.
#[diagnostic::on_unimplemented(
    message = "the request's required field `{F}` is not set",
    label = "`{F}` is missing here",
    note = "set it with `.{F}(..)` before `.build()`"
)]
pub trait IsSet<F>: sealed::Sealed {}
impl<F> IsSet<F> for Set {}

/// The builder's type-state, as a function type so the builder stays `Send` and `Sync`.
type LeadState<C, E, X> = fn() -> (C, E, X);

/// Builds a [`TrackLeadRequest`]; from [`TrackLeadRequest::builder`].
///
/// `click_id`, `event_name` and `customer_external_id` are required, in any order.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.build()`"]
pub struct TrackLeadRequestBuilder<
    ClickId = Missing,
    EventName = Missing,
    CustomerExternalId = Missing,
> {
    // Required fields hold placeholders until their setter runs; `build` is only reachable once
    // every one of them has.
    request: TrackLeadRequest,
    state: PhantomData<LeadState<ClickId, EventName, CustomerExternalId>>,
}

impl TrackLeadRequest {
    /// Starts a lead request.
    ///
    /// ```
    /// use dub::models::TrackLeadRequest;
    ///
    /// let lead = TrackLeadRequest::builder()
    ///     .click_id("clk_123") // the visitor's `dub_id` cookie
    ///     .event_name("Sign up")
    ///     .customer_external_id("user_42")
    ///     .customer_email("ada@example.com")
    ///     .build();
    /// # let _ = lead;
    /// ```
    pub fn builder() -> TrackLeadRequestBuilder {
        TrackLeadRequestBuilder {
            request: TrackLeadRequest {
                click_id: String::new(),
                event_name: String::new(),
                customer_external_id: String::new(),
                customer_avatar: None,
                customer_email: None,
                customer_name: None,
                event_quantity: None,
                metadata: None,
                mode: None,
            },
            state: PhantomData,
        }
    }
}

impl<C, E, X> TrackLeadRequestBuilder<C, E, X> {
    fn with<C2, E2, X2>(self) -> TrackLeadRequestBuilder<C2, E2, X2> {
        TrackLeadRequestBuilder {
            request: self.request,
            state: PhantomData,
        }
    }

    /// Required: the click the lead is attributed to, from the visitor's `dub_id` cookie. In
    /// the deferred flow, `""` asks Dub to reuse the click stored for the customer.
    pub fn click_id(mut self, click_id: impl Into<String>) -> TrackLeadRequestBuilder<Set, E, X> {
        self.request.click_id = click_id.into();
        self.with()
    }

    /// Required: the name of the lead event, 1 to 255 characters (for example `Sign up`). Dub
    /// records one lead per customer and event name.
    pub fn event_name(mut self, name: impl Into<String>) -> TrackLeadRequestBuilder<C, Set, X> {
        self.request.event_name = name.into();
        self.with()
    }

    /// Required: your id of the customer, 1 to 100 characters; their later sales use it.
    pub fn customer_external_id(
        mut self,
        id: impl Into<String>,
    ) -> TrackLeadRequestBuilder<C, E, Set> {
        self.request.customer_external_id = id.into();
        self.with()
    }

    /// The customer's name (at most 100 characters); Dub makes one up if absent.
    pub fn customer_name(mut self, name: impl Into<String>) -> Self {
        self.request.customer_name = Some(name.into());
        self
    }

    /// The customer's email address (at most 100 characters).
    pub fn customer_email(mut self, email: impl Into<String>) -> Self {
        self.request.customer_email = Some(email.into());
        self
    }

    /// The URL of the customer's avatar.
    pub fn customer_avatar(mut self, url: impl Into<String>) -> Self {
        self.request.customer_avatar = Some(url.into());
        self
    }

    /// How Dub records the lead (Dub's default: [`LeadMode::Async`]).
    pub fn mode(mut self, mode: LeadMode) -> Self {
        self.request.mode = Some(mode);
        self
    }

    /// Record the lead `quantity` times (1 to 100), for example one per seat of a trial.
    pub fn event_quantity(mut self, quantity: u32) -> Self {
        self.request.event_quantity = Some(i64::from(quantity));
        self
    }

    /// Metadata stored with the event (at most 10,000 characters as JSON).
    pub fn metadata(mut self, metadata: Map<String, Value>) -> Self {
        self.request.metadata = Some(metadata);
        self
    }

    /// Adds one metadata entry.
    pub fn metadata_entry(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.request
            .metadata
            .get_or_insert_with(Map::new)
            .insert(key.into(), value.into());
        self
    }

    /// The request, once every required field is set.
    pub fn build(self) -> TrackLeadRequest
    where
        C: IsSet<field::click_id>,
        E: IsSet<field::event_name>,
        X: IsSet<field::customer_external_id>,
    {
        self.request
    }
}

/// Builds a [`TrackSaleRequest`]; from [`TrackSaleRequest::builder`].
///
/// `customer_external_id` and `amount` are required, in any order. `currency` and `event_name`
/// have the spec's defaults, `usd` and `Purchase`.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.build()`"]
pub struct TrackSaleRequestBuilder<CustomerExternalId = Missing, Amount = Missing> {
    request: TrackSaleRequest,
    state: PhantomData<fn() -> (CustomerExternalId, Amount)>,
}

impl TrackSaleRequest {
    /// Starts a sale request.
    ///
    /// ```
    /// use dub::models::{PaymentProcessor, TrackSaleRequest};
    ///
    /// let sale = TrackSaleRequest::builder()
    ///     .customer_external_id("user_42")
    ///     .amount(4900) // cents
    ///     .payment_processor(PaymentProcessor::Stripe)
    ///     .invoice_id("in_1PqR") // makes it safe to send again
    ///     .build();
    /// assert!(sale.is_deduplicated());
    /// ```
    pub fn builder() -> TrackSaleRequestBuilder {
        TrackSaleRequestBuilder {
            request: TrackSaleRequest {
                customer_external_id: String::new(),
                amount: 0,
                currency: "usd".to_owned(),
                event_name: "Purchase".to_owned(),
                click_id: None,
                customer_avatar: None,
                customer_email: None,
                customer_name: None,
                invoice_id: None,
                lead_event_name: None,
                metadata: None,
                payment_processor: None,
            },
            state: PhantomData,
        }
    }
}

impl<X, A> TrackSaleRequestBuilder<X, A> {
    fn with<X2, A2>(self) -> TrackSaleRequestBuilder<X2, A2> {
        TrackSaleRequestBuilder {
            request: self.request,
            state: PhantomData,
        }
    }

    /// Required: your id of the customer who paid, as given to their lead.
    pub fn customer_external_id(
        mut self,
        id: impl Into<String>,
    ) -> TrackSaleRequestBuilder<Set, A> {
        self.request.customer_external_id = id.into();
        self.with()
    }

    /// Required: the amount in the currency's smallest unit (cents for USD; the whole amount
    /// for zero-decimal currencies such as JPY), at most 2^53 - 1.
    pub fn amount(mut self, amount: u64) -> TrackSaleRequestBuilder<X, Set> {
        self.request.amount = amount;
        self.with()
    }

    /// The ISO 4217 currency code (default `usd`).
    pub fn currency(mut self, currency: impl Into<String>) -> Self {
        self.request.currency = currency.into();
        self
    }

    /// The sale event's name (default `Purchase`; at most 255 characters).
    pub fn event_name(mut self, name: impl Into<String>) -> Self {
        self.request.event_name = name.into();
        self
    }

    /// The processor the payment went through (Dub's default is `custom`).
    pub fn payment_processor(mut self, processor: PaymentProcessor) -> Self {
        self.request.payment_processor = Some(processor);
        self
    }

    /// Your invoice id: Dub's idempotency key for sales. With one, Dub records at most one sale
    /// per invoice and the sale can be sent again safely; without one it cannot.
    pub fn invoice_id(mut self, id: impl Into<String>) -> Self {
        self.request.invoice_id = Some(id.into());
        self
    }

    /// The lead event this sale follows (case-sensitive), instead of the customer's latest.
    pub fn lead_event_name(mut self, name: impl Into<String>) -> Self {
        self.request.lead_event_name = Some(name.into());
        self
    }

    /// For direct sale tracking (no lead before): the click the sale is attributed to.
    pub fn click_id(mut self, click_id: impl Into<String>) -> Self {
        self.request.click_id = Some(click_id.into());
        self
    }

    /// For direct sale tracking: the customer's name (at most 100 characters).
    pub fn customer_name(mut self, name: impl Into<String>) -> Self {
        self.request.customer_name = Some(name.into());
        self
    }

    /// For direct sale tracking: the customer's email (at most 100 characters).
    pub fn customer_email(mut self, email: impl Into<String>) -> Self {
        self.request.customer_email = Some(email.into());
        self
    }

    /// For direct sale tracking: the URL of the customer's avatar.
    pub fn customer_avatar(mut self, url: impl Into<String>) -> Self {
        self.request.customer_avatar = Some(url.into());
        self
    }

    /// Metadata stored with the event (at most 10,000 characters as JSON).
    pub fn metadata(mut self, metadata: Map<String, Value>) -> Self {
        self.request.metadata = Some(metadata);
        self
    }

    /// Adds one metadata entry.
    pub fn metadata_entry(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.request
            .metadata
            .get_or_insert_with(Map::new)
            .insert(key.into(), value.into());
        self
    }

    /// The request, once every required field is set.
    pub fn build(self) -> TrackSaleRequest
    where
        X: IsSet<field::customer_external_id>,
        A: IsSet<field::amount>,
    {
        self.request
    }
}
