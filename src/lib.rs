//! Rust SDK for [Dub](https://dub.co)'s conversion-tracking API.
#![warn(missing_docs)]

#[cfg(feature = "blocking")]
pub mod blocking;
mod client;
mod error;
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
