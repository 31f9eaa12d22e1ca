//! Request and response types of the track operations.
//!
//! The structs are generated from `openapi.yaml` by progenitor at build time; this module adds
//! constructors for the required fields and chained setters for the optional ones, and the two
//! open enums that replace the spec's closed ones, so a value Dub adds later still round-trips.
//!
//! ```
//! use dub::models::{LeadMode, PaymentProcessor, TrackLeadRequest, TrackSaleRequest};
//!
//! let lead = TrackLeadRequest::new("clk_123", "Sign up", "user_42")
//!     .customer_email("ada@example.com")
//!     .mode(LeadMode::Wait);
//! let sale = TrackSaleRequest::new("user_42", 996500)
//!     .payment_processor(PaymentProcessor::Paddle)
//!     .invoice_id("in_1")
//!     .currency("usd");
//! assert_eq!(sale.amount, 996500);
//! # let _ = lead;
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

pub use crate::generated::types::{
    ErrorBody, ErrorBodyError, TrackLeadRequest, TrackLeadResponse, TrackLeadResponseClick,
    TrackLeadResponseCustomer, TrackLeadResponseLink, TrackSaleRequest, TrackSaleResponse,
    TrackSaleResponseCustomer, TrackSaleResponseSale,
};

/// Defines a string enum that keeps values it does not know in `Other`.
macro_rules! open_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A value this version of the crate does not know, sent and received as is.
            Other(String),
        }

        impl $name {
            /// Every value this version of the crate knows, as Dub spells them.
            pub const KNOWN: &'static [&'static str] = &[$($text),*];

            /// The value as Dub spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($text => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match Self::from(s.as_str()) {
                    Self::Other(_) => Self::Other(s),
                    known => known,
                }
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self::from(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        #[cfg(feature = "schemars")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                // Open: the listed values, or any other string Dub adds later.
                schemars::json_schema!({
                    "type": "string",
                    "examples": [$($text),*],
                })
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self::from)
            }
        }
    };
}

open_enum! {
    /// How Dub records a lead (`mode`). Dub's default is `async`.
    LeadMode {
        /// Record in the background; the call returns at once.
        Async = "async",
        /// Return once the lead is fully recorded.
        Wait = "wait",
        /// Remember the customer now and record the lead with a later call. Dub does not
        /// deduplicate deferred leads, so they are not retried after ambiguous failures.
        Deferred = "deferred",
    }
}

open_enum! {
    /// The payment processor a sale went through (`paymentProcessor`). Dub's default is
    /// `custom`.
    PaymentProcessor {
        /// Stripe.
        Stripe = "stripe",
        /// Shopify.
        Shopify = "shopify",
        /// Polar.
        Polar = "polar",
        /// Paddle.
        Paddle = "paddle",
        /// Apple (App Store).
        Apple = "apple",
        /// RevenueCat.
        Revenuecat = "revenuecat",
        /// Dub itself.
        Dub = "dub",
        /// Anything else.
        Custom = "custom",
        /// Lemon Squeezy.
        Lemonsqueezy = "lemonsqueezy",
    }
}

/// Generates chained setters for optional `String` fields.
macro_rules! string_setters {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, value: impl Into<String>) -> Self {
                self.$field = Some(value.into());
                self
            }
        )*
    };
}

/// Generates the `metadata` setters, the same for both requests.
macro_rules! metadata_setters {
    () => {
        /// Metadata stored with the event (at most 10,000 characters as JSON).
        pub fn metadata(mut self, metadata: Map<String, Value>) -> Self {
            self.metadata = Some(metadata);
            self
        }

        /// Adds one metadata entry.
        pub fn metadata_entry(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
            self.metadata
                .get_or_insert_with(Map::new)
                .insert(key.into(), value.into());
            self
        }
    };
}

impl TrackLeadRequest {
    /// A lead for the click `click_id` (the `dub_id` cookie; `""` reuses the customer's stored
    /// click in the deferred flow), named `event_name`, for your customer `customer_external_id`.
    pub fn new(
        click_id: impl Into<String>,
        event_name: impl Into<String>,
        customer_external_id: impl Into<String>,
    ) -> Self {
        Self {
            click_id: click_id.into(),
            event_name: event_name.into(),
            customer_external_id: customer_external_id.into(),
            customer_avatar: None,
            customer_email: None,
            customer_name: None,
            event_quantity: None,
            metadata: None,
            mode: None,
        }
    }

    string_setters! {
        /// The customer's name (at most 100 characters); Dub makes one up if absent.
        customer_name,
        /// The customer's email address (at most 100 characters).
        customer_email,
        /// The URL of the customer's avatar.
        customer_avatar,
    }

    /// How Dub records the lead.
    pub fn mode(mut self, mode: LeadMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Record the lead `quantity` times (1 to 100), for example one per seat of a trial.
    pub fn event_quantity(mut self, quantity: i64) -> Self {
        self.event_quantity = Some(quantity);
        self
    }

    metadata_setters!();

    /// Whether Dub deduplicates this lead, so a retry cannot record it twice.
    pub(crate) fn is_idempotent(&self) -> bool {
        self.mode != Some(LeadMode::Deferred)
    }
}

impl TrackSaleRequest {
    /// A sale of `amount` in the currency's smallest unit (cents for USD) by your customer
    /// `customer_external_id`. The currency defaults to `usd` and the event name to `Purchase`.
    pub fn new(customer_external_id: impl Into<String>, amount: u64) -> Self {
        Self {
            customer_external_id: customer_external_id.into(),
            // Out-of-range amounts saturate and are then refused by validation, never wrapped.
            amount: i64::try_from(amount).unwrap_or(i64::MAX),
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
        }
    }

    /// The ISO 4217 currency code (default `usd`).
    pub fn currency(mut self, currency: impl Into<String>) -> Self {
        self.currency = currency.into();
        self
    }

    /// The sale event's name (default `Purchase`; at most 255 characters).
    pub fn event_name(mut self, name: impl Into<String>) -> Self {
        self.event_name = name.into();
        self
    }

    /// The processor the payment went through (Dub's default is `custom`).
    pub fn payment_processor(mut self, processor: PaymentProcessor) -> Self {
        self.payment_processor = Some(processor);
        self
    }

    string_setters! {
        /// Your invoice id: Dub's idempotency key for sales. With one, Dub records at most one
        /// sale per invoice and this crate can safely retry the call; without one it cannot.
        invoice_id,
        /// The lead event this sale follows (case-sensitive), instead of the latest one.
        lead_event_name,
        /// For direct sale tracking: the click the sale is attributed to.
        click_id,
        /// For direct sale tracking: the customer's name (at most 100 characters).
        customer_name,
        /// For direct sale tracking: the customer's email (at most 100 characters).
        customer_email,
        /// For direct sale tracking: the URL of the customer's avatar.
        customer_avatar,
    }

    metadata_setters!();

    /// Whether Dub deduplicates this sale (it has a non-empty invoice id).
    pub(crate) fn is_idempotent(&self) -> bool {
        self.invoice_id.as_deref().is_some_and(|id| !id.is_empty())
    }
}
