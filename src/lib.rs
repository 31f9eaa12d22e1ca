#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "blocking")]
pub mod blocking;
mod client;
mod clock;
mod error;
mod generated;
#[cfg(feature = "mock")]
pub mod mock;
pub mod models;
mod open_enum;
mod options;
#[cfg(feature = "postgres")]
pub mod outbox;
pub mod rate_limit;
pub mod retry;
mod track;
pub mod tracker;
mod transport;
mod wait;

pub use client::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_SERVER_URL, Dub, DubBuilder,
};
pub use error::{Error, ErrorKind, Result};
pub use rate_limit::{RateLimit, RateLimiterState};
pub use retry::{Jitter, RetryBudget, RetryConfig};
pub use track::{Operation, Track, TrackCall};
pub use tracker::Tracker;
