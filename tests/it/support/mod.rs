//! What the integration tests share: a client for a server on 127.0.0.1, scripted answers for
//! `MockDub` (the one test server), the requests most tests send, and the spec's schemas.

mod bodies;
pub mod postgres;
pub mod schema;

pub use bodies::{lead_body, sale_body};

use dub::mock::{ExactReply, Fault, MockDub};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The token every `MockDub` accepts; the tests' servers of their own take it too.
pub const TOKEN: &str = "dub_mock_token";

/// A `MockDub` that answers the next requests with `replies`, in order, then as Dub would.
pub async fn mock_with(replies: impl IntoIterator<Item = ExactReply>) -> MockDub {
    let mock = MockDub::start().await.expect("MockDub starts");
    mock.push_faults(replies.into_iter().map(Fault::Reply));
    mock
}

/// Exactly this status and body.
pub fn raw(status: u16, body: impl Into<Vec<u8>>) -> ExactReply {
    ExactReply::new(status, body)
}

/// This status and JSON body.
pub fn json(status: u16, body: Value) -> ExactReply {
    ExactReply::json(status, &body)
}

/// A Dub error body.
pub fn error(status: u16, code: &str, message: &str) -> ExactReply {
    json(
        status,
        json!({"error": {"code": code, "message": message,
            "doc_url": format!("https://dub.co/docs/api-reference/errors#{code}")}}),
    )
}

/// When each request arrived, in milliseconds after the first, on Tokio's clock (exact on a
/// paused one).
pub fn arrivals_ms(mock: &MockDub) -> Vec<u128> {
    let requests = mock.requests();
    let Some(first) = requests.first().map(|r| r.at) else {
        return Vec::new();
    };
    requests
        .iter()
        .map(|r| (r.at - first).as_millis())
        .collect()
}

/// A client of the server at `url` with [`TOKEN`]; the caller sets the rest and builds it.
pub fn client(url: &str) -> dub::DubBuilder {
    dub::Dub::builder().token(TOKEN).server_url(url)
}

/// A client of `mock` with the crate's defaults.
pub fn dub(mock: &MockDub) -> dub::Dub {
    client(&mock.url())
        .build()
        .expect("a client of a loopback server builds")
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
