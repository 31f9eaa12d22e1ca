//! What goes over the wire, and what comes back decodes: exact request bodies and headers,
//! 200 bodies built from the spec's schemas, the nine error bodies from the spec's examples.

use crate::support::{self, TOKEN, client, lead_body, sale_body};
use dub::models::{LeadMode, PaymentProcessor, TrackLeadRequest, TrackSaleRequest};
use dub::{ErrorKind, RetryConfig};
use serde_json::{Value, json};

use crate::support::schema::spec;

#[tokio::test]
async fn lead_request_is_exact() {
    let server = support::mock_with([support::json(200, lead_body())]).await;
    let dub = client(&server.url())
        .retry_config(dub::RetryConfig::none())
        .build()
        .unwrap();
    dub.track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("clk_123")
                .event_name("Sign up")
                .customer_external_id("user_42")
                .customer_name("Ada Lovelace")
                .customer_email("ada@example.com")
                .customer_avatar("https://example.com/ada.png")
                .mode(LeadMode::Wait)
                .event_quantity(3)
                .metadata_entry("plan", "pro")
                .build(),
        )
        .await
        .unwrap();
    let got = &server.requests()[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/track/lead");
    assert_eq!(
        got.json().unwrap(),
        json!({"clickId": "clk_123", "eventName": "Sign up", "customerExternalId": "user_42",
               "customerName": "Ada Lovelace", "customerEmail": "ada@example.com",
               "customerAvatar": "https://example.com/ada.png", "mode": "wait",
               "eventQuantity": 3, "metadata": {"plan": "pro"}})
    );
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("accept"), Some("application/json"));
    assert_eq!(
        got.header("user-agent"),
        Some(concat!("dub-rust/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(got.header("api-version"), Some("0.0.1"));
}

#[tokio::test]
async fn minimal_lead_sends_only_required_fields() {
    let server = support::mock_with([support::json(200, lead_body())]).await;
    client(&server.url())
        .retry_config(dub::RetryConfig::none())
        .build()
        .unwrap()
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("")
                .event_name("Sign up")
                .customer_external_id("user_42")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(
        server.requests()[0].json().unwrap(),
        json!({"clickId": "", "eventName": "Sign up", "customerExternalId": "user_42"})
    );
}

#[tokio::test]
async fn sale_request_is_exact() {
    let server = support::mock_with([support::json(200, sale_body())]).await;
    let dub = dub::Dub::builder()
        .token(TOKEN)
        .server_url(server.url())
        .user_agent_suffix("shop/2.1")
        .default_header("x-team", "growth")
        .build()
        .unwrap();
    dub.track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("user_42")
                .amount(996500)
                .payment_processor(PaymentProcessor::Paddle)
                .invoice_id("in_1")
                .currency("eur")
                .event_name("Invoice paid")
                .lead_event_name("Sign up")
                .click_id("clk_9")
                .customer_name("Ada")
                .customer_email("ada@example.com")
                .customer_avatar("https://example.com/a.png")
                .metadata(
                    json!({"nested": {"a": [1, 2]}})
                        .as_object()
                        .unwrap()
                        .clone(),
                )
                .build(),
        )
        .header("x-request-id", "r1")
        .await
        .unwrap();
    let got = &server.requests()[0];
    assert_eq!(got.path, "/track/sale");
    assert_eq!(
        got.json().unwrap(),
        json!({"customerExternalId": "user_42", "amount": 996500, "paymentProcessor": "paddle",
               "invoiceId": "in_1", "currency": "eur", "eventName": "Invoice paid",
               "leadEventName": "Sign up", "clickId": "clk_9", "customerName": "Ada",
               "customerEmail": "ada@example.com", "customerAvatar": "https://example.com/a.png",
               "metadata": {"nested": {"a": [1, 2]}}})
    );
    assert_eq!(
        got.header("user-agent"),
        Some(concat!("dub-rust/", env!("CARGO_PKG_VERSION"), " shop/2.1"))
    );
    assert_eq!(got.header("x-team"), Some("growth"));
    assert_eq!(got.header("x-request-id"), Some("r1"));
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

#[tokio::test]
async fn minimal_sale_sends_spec_defaults() {
    let server = support::mock_with([support::json(200, sale_body())]).await;
    client(&server.url())
        .retry_config(dub::RetryConfig::none())
        .build()
        .unwrap()
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("user_42")
                .amount(0)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(
        server.requests()[0].json().unwrap(),
        json!({"customerExternalId": "user_42", "amount": 0, "currency": "usd", "eventName": "Purchase"})
    );
}

/// An example instance of a schema: `example` values where the spec gives them, otherwise a
/// value of the right type; every property present; nullable ones null when `nulls`.
fn example(schema: &Value, nulls: bool) -> Value {
    if nulls && schema["nullable"] == json!(true) {
        return Value::Null;
    }
    if let Some(e) = schema.get("example") {
        return e.clone();
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut out = serde_json::Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in props {
                    out.insert(k.clone(), example(v, nulls));
                }
            }
            Value::Object(out)
        }
        Some("string") => match schema.get("enum") {
            Some(Value::Array(values)) => values[0].clone(),
            _ => json!("https://dub.sh/example"),
        },
        Some("number") => json!(12.5),
        Some("integer") => json!(7),
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        _ => json!({}),
    }
}

#[tokio::test]
async fn example_200_bodies_from_the_spec_decode() {
    let spec = spec();
    for nulls in [false, true] {
        let lead = example(&spec["components"]["schemas"]["TrackLeadResponse"], nulls);
        let sale = example(&spec["components"]["schemas"]["TrackSaleResponse"], nulls);
        let server = support::mock_with([
            support::json(200, lead.clone()),
            support::json(200, sale.clone()),
        ])
        .await;
        let dub = client(&server.url())
            .retry_config(dub::RetryConfig::none())
            .build()
            .unwrap();
        let l = dub
            .track()
            .lead(
                TrackLeadRequest::builder()
                    .click_id("c")
                    .event_name("e")
                    .customer_external_id("u")
                    .build(),
            )
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            lead,
            "lead, nulls={nulls}"
        );
        let s = dub
            .track()
            .sale(
                TrackSaleRequest::builder()
                    .customer_external_id("u")
                    .amount(1)
                    .build(),
            )
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            sale,
            "sale, nulls={nulls}"
        );
    }
}

#[tokio::test]
async fn the_nine_documented_error_bodies_decode() {
    let spec = spec();
    let responses = spec["components"]["responses"].as_object().unwrap();
    assert_eq!(responses.len(), 9);
    let expected = [
        (400, ErrorKind::BadRequest),
        (401, ErrorKind::Unauthorized),
        (403, ErrorKind::Forbidden),
        (404, ErrorKind::NotFound),
        (409, ErrorKind::Conflict),
        (410, ErrorKind::InviteExpired),
        (422, ErrorKind::UnprocessableEntity),
        (429, ErrorKind::RateLimitExceeded),
        (500, ErrorKind::InternalServerError),
    ];
    for (status, kind) in expected {
        let schema = &responses[&status.to_string()]["content"]["application/json"]["schema"];
        let body = example(schema, false);
        let server = support::mock_with([support::json(status, body.clone())]).await;
        let err = client(&server.url())
            .retry_config(dub::RetryConfig::none())
            .build()
            .unwrap()
            .track()
            .lead(
                TrackLeadRequest::builder()
                    .click_id("c")
                    .event_name("e")
                    .customer_external_id("u")
                    .build(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{status}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(err.code(), body["error"]["code"].as_str(), "{status}");
        assert_eq!(err.message(), body["error"]["message"].as_str());
        assert_eq!(err.doc_url(), body["error"]["doc_url"].as_str());
    }
}

#[tokio::test]
async fn unknown_fields_and_values_decode() {
    let mut lead = lead_body();
    lead["brandNewField"] = json!({"x": 1});
    lead["customer"]["country"] = json!("NL");
    let mut sale = sale_body();
    sale["sale"]["paymentProcessor"] = json!("mollie");
    sale["sale"]["fxRate"] = json!(1.08);
    let server = support::mock_with([support::json(200, lead), support::json(200, sale)]).await;
    let dub = client(&server.url())
        .retry_config(dub::RetryConfig::none())
        .build()
        .unwrap();
    let l = dub
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name("e")
                .customer_external_id("u")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(l.click.id, "clk_123");
    let s = dub
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(1)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(s.sale.unwrap().payment_processor, "mollie");
}

#[tokio::test]
async fn error_codes_outside_the_spec_decode() {
    let server = support::mock_with([
        support::error(
            403,
            "exceeded_limit",
            "You have exceeded your plan's limit.",
        ),
        support::error(409, "invite_pending", "An invite is pending."),
    ])
    .await;
    let dub = client(&server.url())
        .retry_config(dub::RetryConfig::none())
        .build()
        .unwrap();
    let e = dub
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(1)
                .build(),
        )
        .retry_config(RetryConfig::none())
        .await
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
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Conflict, Some("invite_pending"))
    );
}

#[test]
fn open_enums_round_trip_unknown_values() {
    let p: PaymentProcessor = serde_json::from_value(json!("mollie")).unwrap();
    assert_eq!(p, PaymentProcessor::from("mollie"));
    assert_eq!(p.as_str(), "mollie");
    assert!(!p.is_known());
    // A known value is its variant however it was made: no second spelling of "stripe".
    assert_eq!(
        PaymentProcessor::from("stripe".to_owned()),
        PaymentProcessor::Stripe
    );
    assert_eq!(serde_json::to_value(&p).unwrap(), json!("mollie"));
    assert_eq!(
        PaymentProcessor::from("lemonsqueezy"),
        PaymentProcessor::Lemonsqueezy
    );
    let m: LeadMode = serde_json::from_value(json!("deferred")).unwrap();
    assert_eq!(m, LeadMode::Deferred);
}
