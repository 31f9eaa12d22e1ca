#![doc = include_str!("../README.md")]
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
#[cfg(feature = "postgres")]
pub mod outbox;
pub mod rate_limit;
pub mod retry;
mod track;
pub mod tracker;
mod transport;
mod validate;

#[allow(missing_docs, clippy::all, private_interfaces, dead_code)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

pub use client::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_SERVER_URL, Dub, DubBuilder,
};
pub use error::{Error, ErrorKind, Result};
pub use rate_limit::{RateLimit, RateLimiterState};
pub use retry::{Jitter, RetryBudget, RetryConfig};
pub use track::{Operation, Track, TrackCall};
pub use tracker::Tracker;
