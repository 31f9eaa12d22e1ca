//! Open string enums: the values this release knows as variants, and any other value Dub sends
//! or accepts later kept as it is. Public as `dub::models::{LeadMode, PaymentProcessor}`; a
//! module of its own because the generated request types use them (build.rs replaces the
//! spec's enums with these), and `models` re-exports the generated types.
//!
//! smithy-rs's rule is followed so that learning a value breaks no match: the catch-all variant
//! `Unknown` holds an [`UnknownValue`] that cannot be constructed outside this crate (so
//! `PaymentProcessor::Unknown("stripe")` cannot exist next to `PaymentProcessor::Stripe`), and
//! matching on it is deprecated, because a value that lands there today gets its own variant in a
//! later release. Match the variants you handle and a wildcard; read the text with `as_str()`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A value of an open enum that this version of the crate does not know.
///
/// It cannot be constructed outside the crate: parse text with `From<&str>`, which gives the
/// known variant for a known value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnknownValue(String);

impl UnknownValue {
    /// The value as Dub spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! open_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        ///
        /// A value this release does not know is kept in the deprecated `Unknown` variant; do not
        /// match on it (see the [module docs](crate::models)): use a wildcard and
        #[doc = concat!("[`", stringify!($name), "::as_str`].")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A value this version of the crate does not know, sent and received as it is.
            #[deprecated(
                note = "a value in `Unknown` moves to its own variant when the crate learns it, \
                        so matching on `Unknown` changes meaning silently; match with a wildcard \
                        and read `as_str()`"
            )]
            Unknown(UnknownValue),
        }

        #[allow(deprecated)]
        impl $name {
            /// Every value this version of the crate knows, as Dub spells them.
            pub const KNOWN: &'static [&'static str] = &[$($text),*];

            /// The value as Dub spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Unknown(v) => v.as_str(),
                }
            }

            /// Whether this release knows the value (it is not `Unknown`).
            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Unknown(_))
            }
        }

        #[allow(deprecated)]
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($text => Self::$variant,)*
                    other => Self::Unknown(UnknownValue(other.to_owned())),
                }
            }
        }

        #[allow(deprecated)]
        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $($text => Self::$variant,)*
                    _ => Self::Unknown(UnknownValue(s)),
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

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self::from)
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
    };
}

open_enum! {
    /// How Dub records a lead (`mode`). Dub's default is `async`.
    LeadMode {
        /// Record in the background; the call returns at once. A sale sent right after may
        /// find no lead yet (Dub's 404 "Lead event not found"), which this crate retries; `Wait`
        /// avoids it.
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
    ///
    /// ```
    /// use dub::models::PaymentProcessor;
    ///
    /// // A value Dub added after this release round-trips as it is...
    /// let p: PaymentProcessor = serde_json::from_str("\"mollie\"")?;
    /// assert_eq!(p.as_str(), "mollie");
    /// assert!(!p.is_known());
    /// assert_eq!(serde_json::to_string(&p)?, "\"mollie\"");
    /// // ...and a known value is always its variant, however it was made.
    /// assert_eq!(PaymentProcessor::from("stripe"), PaymentProcessor::Stripe);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
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
