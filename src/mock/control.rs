//! The mock's own endpoints under `/__mock/`, for test suites in other languages that run
//! `dub-track mock` and cannot call [`MockDub`](super::MockDub)'s methods: read the counters,
//! read and clear the kept requests. No token is needed (the server listens on loopback only),
//! and these requests are neither recorded, counted, rate limited nor given faults.

use super::MockState;
use super::reply::Reply;
use serde_json::{Value, json};

/// Paths starting with this are the mock's own.
pub(crate) const PREFIX: &str = "/__mock/";

pub(crate) fn answer(method: &str, path: &str, shared: &MockState) -> Reply {
    match (method, path.trim_end_matches('/')) {
        ("GET", "/__mock/stats") => Reply::json(200, &shared.lock().stats().to_json()),
        ("GET", "/__mock/requests") => {
            let state = shared.lock();
            let requests: Vec<Value> = state
                .requests
                .numbered()
                .map(|(n, r)| r.to_json(n))
                .collect();
            Reply::json(200, &json!({ "requests": requests }))
        }
        ("DELETE", "/__mock/requests") => {
            shared.lock().clear_requests();
            Reply::json(200, &json!({ "cleared": true }))
        }
        (_, "/__mock/stats" | "/__mock/requests") => Reply::error(
            405,
            "method_not_allowed",
            "The /__mock/ endpoints are GET /__mock/stats, GET /__mock/requests and \
             DELETE /__mock/requests.",
        ),
        _ => Reply::error(
            404,
            "not_found",
            "The /__mock/ endpoints are GET /__mock/stats, GET /__mock/requests and \
             DELETE /__mock/requests.",
        ),
    }
}
