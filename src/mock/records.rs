//! What the mock remembers for tests to inspect: the events Dub would have stored and the raw
//! HTTP requests it received.

use serde_json::Value;
use std::collections::BTreeMap;

/// A lead event the mock stored, as Dub would have.
///
/// A request with `eventQuantity: N` stores N of these; a direct sale (a sale with a `clickId`
/// for a customer without a lead) stores one with the sale's body.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RecordedLead {
    /// The customer ID as resolved from `customerExternalId` or its aliases, trimmed.
    pub customer_external_id: String,
    /// The event name, trimmed.
    pub event_name: String,
    /// The click the lead is attributed to: the one sent, or the customer's stored click when
    /// `clickId` was empty.
    pub click_id: String,
    /// The mock's ID for the customer (`cus_…`), shared with the customer's sales.
    pub customer_id: String,
    /// The request body as received.
    pub body: Value,
}

/// A sale event the mock stored, as Dub would have.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RecordedSale {
    /// The customer ID as resolved from `customerExternalId` or its aliases.
    pub customer_external_id: String,
    /// The mock's ID for the customer (`cus_…`).
    pub customer_id: String,
    /// The amount in the currency's smallest unit, as sent (the mock converts no currency).
    pub amount: u64,
    /// The currency, lowercased.
    pub currency: String,
    /// The sale event name (`Purchase` unless given).
    pub event_name: String,
    /// The payment processor (`custom` unless given).
    pub payment_processor: String,
    /// The invoice ID, if one was sent.
    pub invoice_id: Option<String>,
    /// The request body as received.
    pub body: Value,
}

/// An HTTP request as the mock received it, whatever its path and whatever became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceivedRequest {
    /// `POST`, `GET`, …
    pub method: String,
    /// The path without the query, e.g. `/track/lead`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// Headers with lowercase names, repeated names grouped together but otherwise in the
    /// order received; values that are not UTF-8 are decoded lossily.
    pub headers: Vec<(String, String)>,
    /// The body, or empty when it was larger than the mock accepts (1 MiB).
    pub body: Vec<u8>,
    /// The fault this request got, scripted or random, if any.
    pub fault: Option<super::Fault>,
    /// The status it was answered with; `None` while it is being handled, or when the
    /// connection was reset or the response written raw by a fault.
    pub status: Option<u16>,
    /// When it arrived, on Tokio's clock (paused in tests that pause it).
    pub at: tokio::time::Instant,
}

impl ReceivedRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What a [`MockDub`](super::MockDub) has received and recorded, counted whether or not the
/// requests and events are still kept: [`MockDub::stats`](super::MockDub::stats), or
/// `GET /__mock/stats` as JSON (`requests`, `requestsKept`, `statuses`, `rateLimited`,
/// `faults`, `leads`, `sales`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MockStats {
    /// HTTP requests received (not counting those to `/__mock/`).
    pub requests: u64,
    /// How many of them are kept for [`MockDub::requests`](super::MockDub::requests).
    pub requests_kept: usize,
    /// Answered requests by status; a request whose connection a fault reset or wrote raw has
    /// none.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests refused with 429 by the enforced rate limit.
    pub rate_limited: u64,
    /// Requests given a fault, scripted or random.
    pub faults: u64,
    /// Lead events recorded.
    pub leads: u64,
    /// Sale events recorded.
    pub sales: u64,
}

impl MockStats {
    /// The JSON of `GET /__mock/stats`.
    pub(crate) fn to_json(&self) -> Value {
        let statuses: serde_json::Map<String, Value> = self
            .statuses
            .iter()
            .map(|(status, n)| (status.to_string(), Value::from(*n)))
            .collect();
        serde_json::json!({
            "requests": self.requests,
            "requestsKept": self.requests_kept,
            "statuses": statuses,
            "rateLimited": self.rate_limited,
            "faults": self.faults,
            "leads": self.leads,
            "sales": self.sales,
        })
    }
}

impl ReceivedRequest {
    /// The request as `GET /__mock/requests` lists it, numbered in arrival order from 0.
    pub(crate) fn to_json(&self, n: u64) -> Value {
        let body = match self.json() {
            Some(json) => json,
            None => Value::String(String::from_utf8_lossy(&self.body).into_owned()),
        };
        serde_json::json!({
            "n": n,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": body,
            "status": self.status,
            "fault": self.fault.as_ref().map(|f| format!("{f:?}")),
        })
    }
}
