//! Work in progress: the generated client compiles; the wrapper follows.
#![allow(dead_code)]
#[cfg(feature = "mock")]
pub mod mock;
pub mod models;
mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}
