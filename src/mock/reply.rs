//! Responses as Dub sends them: JSON bodies, the error envelope, rate-limit headers, and the
//! HTML a proxy in front of Dub answers with.

use super::fault::{ExactReply, RetryAfter};
use serde_json::{Value, json};
use std::borrow::Cow;

const DOC_URL: &str = "https://dub.co/docs/api-reference/errors";

/// A response before it is put on the wire, by hyper or written to the socket directly.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(Cow<'static, str>, String)>,
    pub body: Vec<u8>,
    /// The key's rate-limit state when the request went through Dub's limiter: Dub sends it
    /// as `X-RateLimit-*` headers on error responses only (429 and other errors); a successful
    /// `/track/*` response carries none.
    pub rate: Option<RateLimit>,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply::with_body(status, "application/json", value.to_string().into_bytes())
    }

    pub fn with_body(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), content_type.to_owned())],
            body,
            rate: None,
        }
    }

    /// Dub's error envelope. `doc_url` replaces only the first underscore, as Dub's server
    /// does (`rate-limit_exceeded`), so a client comparing URLs sees the real text.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        let doc_url = format!("{DOC_URL}#{}", code.replacen('_', "-", 1));
        let body = json!({ "error": { "code": code, "message": message, "doc_url": doc_url } });
        Reply::json(status, &body)
    }

    /// An error for any status, with the code Dub uses for it or one derived from the reason
    /// phrase (502 -> `bad_gateway`) for statuses Dub itself never sends.
    pub fn status(status: u16) -> Reply {
        let (code, message) = describe(status);
        let mut reply = Reply::error(status, &code, &message);
        if status == 429 {
            reply.set_retry_after(&RetryAfter::UnixMillis(reset_in_ms(1_000)));
        }
        reply
    }

    /// The 429 of Dub's limiter: `Retry-After` is the window's reset in epoch milliseconds.
    pub fn refused(rate: RateLimit) -> Reply {
        let mut reply = Reply::error(429, "rate_limit_exceeded", "Too many requests.");
        reply.set_retry_after(&RetryAfter::UnixMillis(rate.reset_ms));
        reply.rate = Some(rate);
        reply
    }

    /// Adds the `X-RateLimit-*` headers where Dub sends them: on errors from a request that
    /// reached its limiter, never on a success.
    pub fn finish(&mut self) {
        if self.status >= 400
            && let Some(rate) = self.rate.take()
        {
            rate.apply(self);
        }
    }

    pub fn rate_limited(retry_after: &RetryAfter) -> Reply {
        let mut reply = Reply::error(429, "rate_limit_exceeded", "Too many requests.");
        reply.set_retry_after(retry_after);
        reply
    }

    /// What a load balancer or CDN in front of Dub sends: HTML, not Dub's JSON.
    pub fn html(status: u16) -> Reply {
        let reason = reason(status).unwrap_or("Error");
        let page = format!(
            "<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>\
             <body><h1>{status} {reason}</h1><p>mock upstream proxy</p></body></html>\n"
        );
        Reply::with_body(status, "text/html; charset=utf-8", page.into_bytes())
    }

    fn set_retry_after(&mut self, retry_after: &RetryAfter) {
        let (name, value) = retry_after.header();
        self.headers.push((name.into(), value));
    }

    pub fn push_header(&mut self, name: &'static str, value: String) {
        self.headers.push((name.into(), value));
    }

    /// Exactly this answer: no header but those given (hyper adds `content-length` and
    /// `date`), no rate-limit headers.
    pub fn exact(exact: &ExactReply) -> Reply {
        Reply {
            status: exact.status,
            headers: exact
                .headers
                .iter()
                .map(|(name, value)| (Cow::Owned(name.clone()), value.clone()))
                .collect(),
            body: exact.body.clone(),
            rate: None,
        }
    }

    /// The whole response as HTTP/1.1 bytes, for the faults that bypass hyper. The connection
    /// is closed afterwards, so the response says so.
    pub fn to_http1(&self, content_length: usize) -> Vec<u8> {
        let reason = reason(self.status).unwrap_or("Unknown");
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(
            format!("content-length: {content_length}\r\nconnection: close\r\n\r\n").as_bytes(),
        );
        out
    }
}

/// The `X-RateLimit-*` values of one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimit {
    pub limit: u64,
    pub remaining: u64,
    /// Unix time in milliseconds, as Dub sends it (its docs say seconds).
    pub reset_ms: u64,
}

impl RateLimit {
    pub fn apply(&self, reply: &mut Reply) {
        let remaining = if reply.status == 429 {
            0
        } else {
            self.remaining
        };
        reply.push_header("x-ratelimit-limit", self.limit.to_string());
        reply.push_header("x-ratelimit-remaining", remaining.to_string());
        reply.push_header("x-ratelimit-reset", self.reset_ms.to_string());
    }
}

fn reset_in_ms(delta: u64) -> u64 {
    crate::clock::now_ms().saturating_add(delta)
}

fn describe(status: u16) -> (String, String) {
    let known = match status {
        400 => Some(("bad_request", "Bad request.")),
        401 => Some(("unauthorized", "Unauthorized: Invalid API key.")),
        403 => Some(("forbidden", "Forbidden.")),
        404 => Some(("not_found", "The requested resource was not found.")),
        409 => Some(("conflict", "Conflict.")),
        410 => Some(("invite_expired", "Workspace invite expired.")),
        422 => Some(("unprocessable_entity", "Unprocessable entity.")),
        429 => Some(("rate_limit_exceeded", "Too many requests.")),
        500 => Some((
            "internal_server_error",
            "An internal server error occurred. Please contact our support if the problem persists.",
        )),
        _ => None,
    };
    if let Some((code, message)) = known {
        return (code.to_owned(), message.to_owned());
    }
    match reason(status) {
        Some(reason) => (
            reason.to_ascii_lowercase().replace([' ', '-'], "_"),
            format!("{reason}."),
        ),
        None => ("unknown_error".to_owned(), format!("HTTP status {status}.")),
    }
}

fn reason(status: u16) -> Option<&'static str> {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_for_statuses_outside_the_spec() {
        assert_eq!(describe(502).0, "bad_gateway");
        assert_eq!(describe(503).0, "service_unavailable");
        assert_eq!(describe(599).0, "unknown_error");
        assert_eq!(describe(429).0, "rate_limit_exceeded");
    }

    #[test]
    fn doc_url_replaces_only_the_first_underscore() {
        let reply = Reply::error(429, "rate_limit_exceeded", "Too many requests.");
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body["error"]["doc_url"],
            "https://dub.co/docs/api-reference/errors#rate-limit_exceeded"
        );
    }
}
