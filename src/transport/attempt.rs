//! One attempt: send, then read the whole body with a cap, then say what happened in the terms
//! the retry decision uses.

use std::error::Error as _;

use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderMap;
use reqwest::{Response, ResponseBuilderExt, StatusCode};

use crate::retry::Seen;

/// Most of a success body we read; Dub's are a few hundred bytes.
pub(crate) const MAX_SUCCESS_BODY: usize = 1024 * 1024;
/// Most of an error body we read and keep.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// How one attempt ended.
#[expect(
    clippy::large_enum_variant,
    reason = "one lives per call; boxing the usual variant would allocate per attempt"
)]
pub(crate) enum AttemptEnd {
    /// A whole response (its body read up to the cap).
    Response(Received),
    /// Nothing reached Dub: no connection was made, or an HTTP/2 stream was refused.
    NotSent(reqwest::Error),
    /// The request may have reached Dub, and no whole response came back: a timeout, a reset,
    /// a body cut short (then with the status that began it).
    NoResponse(reqwest::Error, Option<StatusCode>),
}

impl AttemptEnd {
    /// What the retry decision needs to know.
    pub(crate) fn seen(&self, retry_after: Option<std::time::Duration>, lead_race: bool) -> Seen {
        match self {
            AttemptEnd::Response(r) => Seen::Response {
                status: r.status.as_u16(),
                retry_after,
                lead_not_found: lead_race,
            },
            AttemptEnd::NotSent(e) => Seen::NotSent {
                timed_out: e.is_timeout(),
            },
            AttemptEnd::NoResponse(e, _) => Seen::NoResponse {
                timed_out: e.is_timeout(),
            },
        }
    }
}

/// A response whose body is in memory.
pub(crate) struct Received {
    pub status: StatusCode,
    pub version: reqwest::Version,
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub truncated: bool,
}

impl Received {
    /// Back into the `reqwest::Response` the generated code decodes, without the headers: it
    /// reads only the status and body, and would copy the headers into a `ResponseValue` that
    /// is thrown away (the report keeps an error's headers).
    pub(crate) fn into_response(self) -> Response {
        // Given no URL, reqwest would parse a placeholder one for every response.
        let mut out = match http::Response::builder().url(self.url).body(self.body) {
            Ok(out) => out,
            // A builder given nothing but an extension does not fail; were it to, the URL is
            // all that would be missing.
            Err(_) => http::Response::new(Bytes::new()),
        };
        *out.status_mut() = self.status;
        *out.version_mut() = self.version;
        Response::from(out)
    }
}

/// Awaits the request `sent`, then reads the body with a cap, so that an attempt only succeeds
/// with a whole response and a hostile server cannot make the client buffer without bound.
pub(crate) async fn attempt(sent: impl Future<Output = reqwest::Result<Response>>) -> AttemptEnd {
    let mut response = match sent.await {
        Ok(r) => r,
        Err(e) if never_sent(&e) => return AttemptEnd::NotSent(e),
        Err(e) => return AttemptEnd::NoResponse(e, None),
    };
    let status = response.status();
    let cap = if status.is_success() {
        MAX_SUCCESS_BODY
    } else {
        MAX_ERROR_BODY
    };
    // A body of one chunk (Dub's usual few hundred bytes) is kept as it came, without a copy;
    // a second chunk starts a buffer.
    let mut single = Bytes::new();
    let mut buffer: Option<BytesMut> = None;
    let mut truncated = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let held = buffer.as_ref().map_or(single.len(), BytesMut::len);
                let room = cap - held;
                let chunk = if chunk.len() > room {
                    truncated = true;
                    chunk.slice(..room)
                } else {
                    chunk
                };
                match &mut buffer {
                    Some(b) => b.extend_from_slice(&chunk),
                    None if single.is_empty() => single = chunk,
                    None => {
                        let mut b = BytesMut::with_capacity(single.len() + chunk.len());
                        b.extend_from_slice(&single);
                        b.extend_from_slice(&chunk);
                        buffer = Some(b);
                    }
                }
                if truncated {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return AttemptEnd::NoResponse(e, Some(status)),
        }
    }
    let body = match buffer {
        Some(b) => b.freeze(),
        // A chunk is a slice of the connection's read buffer: an error body, which may be kept
        // in an `Error` for long, gets its own copy rather than holding that buffer.
        None if !status.is_success() => Bytes::copy_from_slice(&single),
        None => single,
    };
    AttemptEnd::Response(Received {
        status,
        version: response.version(),
        url: response.url().clone(),
        headers: std::mem::take(response.headers_mut()),
        body,
        truncated,
    })
}

/// Whether an error proves the request never reached the server: no connection was opened
/// (refused, DNS, TLS, the attempt's deadline while connecting), the request could not be built,
/// or an HTTP/2 server refused the stream unprocessed (REFUSED_STREAM, or a graceful GOAWAY,
/// which RFC 9113 §8.7 makes safe to retry; reqwest would otherwise retry these itself).
fn never_sent(e: &reqwest::Error) -> bool {
    if e.is_connect() || e.is_builder() {
        return true;
    }
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            let refused = h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            let goaway = h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR);
            return h2.is_remote() && (refused || goaway);
        }
        source = cause.source();
    }
    false
}
