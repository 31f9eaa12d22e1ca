//! A scripted HTTP server on 127.0.0.1 for behaviour tests: it answers each request with the
//! next scripted reply (then with Dub's 200 body for the path) and records what it received,
//! with arrival times on tokio's clock so tests on a paused clock can assert exact schedules.
#![allow(dead_code)]

pub mod postgres;
pub mod schema;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

pub const TOKEN: &str = "dub_test_0123456789";

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn raw(status: u16, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: vec![],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    pub fn json(status: u16, body: Value) -> Self {
        Self::raw(status, body.to_string()).header("content-type", "application/json")
    }
    /// A Dub error body.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(
            status,
            json!({"error": {"code": code, "message": message,
                "doc_url": format!("https://dub.co/docs/api-reference/errors#{code}")}}),
        )
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

pub fn lead_body() -> Value {
    json!({
        "click": {"id": "clk_123"},
        "link": {"id": "link_1", "domain": "dub.sh", "key": "try", "shortLink": "https://dub.sh/try",
                 "url": "https://dub.co", "partnerId": null, "programId": null, "tenantId": null,
                 "externalId": null},
        "customer": {"name": "Ada", "email": "ada@example.com", "avatar": null, "externalId": "user_42"}
    })
}

pub fn sale_body() -> Value {
    json!({
        "eventName": "Purchase",
        "customer": {"id": "cus_1", "name": "Ada", "email": "ada@example.com", "avatar": null, "externalId": "user_42"},
        "sale": {"amount": 996500, "currency": "usd", "paymentProcessor": "paddle", "invoiceId": "in_1", "metadata": null}
    })
}

/// What the server received.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    received: Vec<Received>,
}

pub struct Server {
    url: String,
    state: Arc<Mutex<State>>,
    pub started: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(script: impl IntoIterator<Item = Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            script: script.into_iter().collect(),
            received: vec![],
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            url,
            state,
            started: Instant::now(),
            task,
        }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Appends a reply to the script.
    pub fn push(&self, reply: Reply) {
        self.state.lock().unwrap().script.push_back(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// Arrival times relative to the server's start, in milliseconds.
    pub fn arrivals_ms(&self) -> Vec<u128> {
        self.received()
            .iter()
            .map(|r| (r.at - self.started).as_millis())
            .collect()
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let reply = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            at,
            method: parts.method.to_string(),
            path: path.clone(),
            headers: parts.headers,
            body,
        });
        s.script.pop_front()
    };
    let reply = reply.unwrap_or_else(|| {
        Reply::json(
            200,
            if path.ends_with("/sale") {
                sale_body()
            } else {
                lead_body()
            },
        )
    });
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = hyper::StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in reply.headers {
        resp.headers_mut().append(
            hyper::header::HeaderName::try_from(k).unwrap(),
            hyper::header::HeaderValue::try_from(v).unwrap(),
        );
    }
    Ok(resp)
}

/// A client for `server` with retries off unless a test turns them on.
pub fn client(server: &Server) -> dub::Dub {
    dub::Dub::builder()
        .token(TOKEN)
        .server_url(server.url())
        .retry_config(dub::RetryConfig::none())
        .build()
        .unwrap()
}

/// A loopback URL nobody listens on.
pub async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// A lead for `user_42`, the one most tests send.
pub fn lead() -> dub::models::TrackLeadRequest {
    lead_builder().build()
}

/// [`lead`]'s builder, for a test that adds fields.
pub fn lead_builder()
-> dub::models::TrackLeadRequestBuilder<dub::models::Set, dub::models::Set, dub::models::Set> {
    lead_for("user_42")
}

/// A lead for `customer`.
pub fn lead_for(
    customer: &str,
) -> dub::models::TrackLeadRequestBuilder<dub::models::Set, dub::models::Set, dub::models::Set> {
    dub::models::TrackLeadRequest::builder()
        .click_id("clk_1")
        .event_name("Sign up")
        .customer_external_id(customer)
}

/// A sale of 1.00 for `customer`, deduplicated by Dub when it has an invoice id.
pub fn sale_for(customer: &str, invoice: Option<&str>) -> dub::models::TrackSaleRequest {
    let sale = dub::models::TrackSaleRequest::builder()
        .customer_external_id(customer)
        .amount(100);
    match invoice {
        Some(invoice) => sale.invoice_id(invoice).build(),
        None => sale.build(),
    }
}
