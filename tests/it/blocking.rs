//! The blocking client passes the same happy-path and error tests as the async one.
#![cfg(feature = "blocking")]

use crate::support::{self, TOKEN};
use dub::blocking::Dub;
use dub::mock::{ExactReply, MockDub};
use dub::models::{PaymentProcessor, TrackLeadRequest, TrackSaleRequest};
use dub::{ErrorKind, Jitter, RetryConfig};
use std::time::Duration;

/// Starts a `MockDub` answering `script` first, on a runtime of its own, as a sync program's
/// test would.
fn server(script: Vec<ExactReply>) -> (tokio::runtime::Runtime, MockDub) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(support::mock_with(script));
    (rt, server)
}

/// The blocking client (its own builder, hence not `support::client`).
fn client(server: &MockDub) -> Dub {
    Dub::builder()
        .token(TOKEN)
        .server_url(server.url())
        .attempt_timeout(Duration::from_secs(5))
        .retry_config(
            RetryConfig::default()
                .with_jitter(Jitter::None)
                .with_initial_interval(Duration::from_millis(10)),
        )
        .build()
        .unwrap()
}

#[test]
fn lead_and_sale() {
    let (_rt, server) = server(vec![]);
    let dub = client(&server);
    let lead = dub
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("clk_123")
                .event_name("Sign up")
                .customer_external_id("user_42")
                .build(),
        )
        .send()
        .unwrap();
    assert_eq!(lead.click.id, "clk_123");
    let sale = dub
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("user_42")
                .amount(996500)
                .payment_processor(PaymentProcessor::Paddle)
                .invoice_id("in_1")
                .build(),
        )
        .header("x-request-id", "r-9")
        .send()
        .unwrap();
    assert_eq!(sale.sale.unwrap().amount, 996500.0);
    let got = server.requests();
    assert_eq!(got[1].json().unwrap()["paymentProcessor"], "paddle");
    assert_eq!(
        got[1].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(got[1].header("x-request-id"), Some("r-9"));
}

#[test]
fn errors_are_the_same() {
    let (_rt, server) = server(vec![
        support::error(403, "exceeded_limit", "Limit exceeded."),
        support::raw(502, "<html>Bad Gateway</html>"),
        support::error(503, "unavailable", "Try again."),
    ]);
    let dub = client(&server);
    let e = dub
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name("e")
                .customer_external_id("u")
                .build(),
        )
        .send()
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Forbidden, Some("exceeded_limit"))
    );
    let e = dub
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(1)
                .build(),
        )
        .send()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedStatus);
    assert!(e.may_have_been_recorded());
    // A lead is deduplicated by Dub, so the 503 is retried.
    dub.track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name("e")
                .customer_external_id("u")
                .build(),
        )
        .send()
        .unwrap();
    assert_eq!(server.request_count(), 4);
    let e = dub
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name("e")
                .customer_external_id("u")
                .customer_email("nope")
                .build(),
        )
        .send()
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Validation, Some("customerEmail"))
    );
    assert_eq!(server.request_count(), 4, "validation sent nothing");
    let slow = support::json(200, support::lead_body()).delay(Duration::from_secs(3));
    let (_rt2, slow_server) = server_with(slow);
    let e = client(&slow_server)
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name("e")
                .customer_external_id("u")
                .build(),
        )
        .attempt_timeout(Duration::from_millis(200))
        .retry_config(RetryConfig::none())
        .send()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(!format!("{dub:?} {e:?} {e}").contains(TOKEN));
}

fn server_with(reply: ExactReply) -> (tokio::runtime::Runtime, MockDub) {
    server(vec![reply])
}

#[tokio::test]
async fn refuses_to_block_async_code_and_drops_safely() {
    let dub = Dub::new(TOKEN);
    let e = dub
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name("e")
                .customer_external_id("u")
                .build(),
        )
        .send()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().unwrap().contains("async"));
    drop(dub); // dropping its runtime here must not panic
}
