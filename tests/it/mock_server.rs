//! Behaviour of `dub::mock::MockDub` over real HTTP on 127.0.0.1, driven by plain reqwest (not
//! the SDK client) so the mock is checked on its own.
#![cfg(feature = "mock")]

use dub::mock::{Fault, MockDub, RandomFaults, RetryAfter};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use std::error::Error as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

async fn post(dub: &MockDub, path: &str, body: &Value) -> Response {
    try_post(&http(), dub, path, body).await.expect("request")
}

async fn try_post(
    http: &Client,
    dub: &MockDub,
    path: &str,
    body: &Value,
) -> reqwest::Result<Response> {
    http.post(format!("{}{path}", dub.url()))
        .bearer_auth(dub.token())
        .json(body)
        .send()
        .await
}

fn lead(customer: &str, event: &str) -> Value {
    json!({"clickId": "cl_123", "eventName": event, "customerExternalId": customer})
}

fn sale(customer: &str, amount: u64) -> Value {
    json!({"customerExternalId": customer, "amount": amount})
}

/// Status, `error.code`, `error.message` of a Dub error response, checking the envelope.
async fn dub_error(response: Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON error body");
    let error = &body["error"];
    let code = error["code"].as_str().expect("error.code").to_owned();
    let doc_url = error["doc_url"].as_str().expect("error.doc_url");
    assert!(
        doc_url.starts_with("https://dub.co/docs/api-reference/errors#"),
        "{doc_url}"
    );
    let message = error["message"].as_str().expect("error.message").to_owned();
    (status, code, message)
}

fn is_connection_reset(err: &reqwest::Error) -> bool {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionReset
        {
            return true;
        }
        source = e.source();
    }
    false
}

// ---- routes and auth ----

#[tokio::test]
async fn missing_authorization_is_401() {
    let dub = MockDub::start().await.unwrap();
    let response = http()
        .post(format!("{}/track/lead", dub.url()))
        .json(&lead("u1", "Sign up"))
        .send()
        .await
        .unwrap();
    let (status, code, message) = dub_error(response).await;
    assert_eq!((status.as_u16(), code.as_str()), (401, "unauthorized"));
    assert_eq!(message, "Missing Authorization header.");
    assert!(dub.leads().is_empty());
}

#[tokio::test]
async fn authorization_without_bearer_is_400() {
    let dub = MockDub::start().await.unwrap();
    for header in [
        dub.token().to_owned(),
        format!("bearer {}", dub.token()),
        format!("Basic {}", dub.token()),
    ] {
        let response = http()
            .post(format!("{}/track/lead", dub.url()))
            .header("authorization", header)
            .json(&lead("u1", "Sign up"))
            .send()
            .await
            .unwrap();
        let (status, code, message) = dub_error(response).await;
        assert_eq!((status.as_u16(), code.as_str()), (400, "bad_request"));
        assert!(message.contains("Bearer "), "{message}");
    }
    assert!(dub.leads().is_empty());
}

#[tokio::test]
async fn wrong_token_is_401() {
    let dub = MockDub::start().await.unwrap();
    let response = http()
        .post(format!("{}/track/sale", dub.url()))
        .bearer_auth("dub_wrong")
        .json(&sale("u1", 100))
        .send()
        .await
        .unwrap();
    let (status, code, _) = dub_error(response).await;
    assert_eq!((status.as_u16(), code.as_str()), (401, "unauthorized"));
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_405() {
    let dub = MockDub::start().await.unwrap();
    let (status, code, _) = dub_error(post(&dub, "/track/click", &json!({})).await).await;
    assert_eq!((status.as_u16(), code.as_str()), (404, "not_found"));
    let (status, code, _) = dub_error(post(&dub, "/track/lead/", &json!({})).await).await;
    assert_eq!((status.as_u16(), code.as_str()), (404, "not_found"));

    let response = http()
        .get(format!("{}/track/lead", dub.url()))
        .bearer_auth(dub.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    let (status, code, _) = dub_error(response).await;
    assert_eq!(
        (status.as_u16(), code.as_str()),
        (405, "method_not_allowed")
    );
}

// ---- bodies and schema ----

#[tokio::test]
async fn invalid_json_is_400() {
    let dub = MockDub::start().await.unwrap();
    for body in ["{\"clickId\": ", "", "not json", "{'a': 1}"] {
        let response = http()
            .post(format!("{}/track/lead", dub.url()))
            .bearer_auth(dub.token())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, code, message) = dub_error(response).await;
        assert_eq!(
            (status.as_u16(), code.as_str()),
            (400, "bad_request"),
            "{body}"
        );
        assert!(message.starts_with("Invalid JSON"), "{message}");
    }
}

#[tokio::test]
async fn each_schema_violation_is_422_naming_the_field() {
    let dub = MockDub::start().await.unwrap();
    let long = |n: usize| "x".repeat(n);
    let big_metadata = json!({ "note": long(10_000) });
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/track/lead", json!([1, 2]), "expected object"),
        (
            "/track/lead",
            json!({"clickId": "c", "customerExternalId": "u"}),
            "eventName",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "", "customerExternalId": "u"}),
            "eventName",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "  ", "customerExternalId": "u"}),
            "eventName",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": long(256), "customerExternalId": "u"}),
            "eventName",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": 7, "customerExternalId": "u"}),
            "eventName",
        ),
        (
            "/track/lead",
            json!({"clickId": 7, "eventName": "e", "customerExternalId": "u"}),
            "clickId",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": long(101)}),
            "customerExternalId",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": 12}),
            "customerExternalId",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "customerName": long(101)}),
            "customerName",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "customerEmail": "not-an-email"}),
            "customerEmail",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "customerEmail": format!("{}@example.com", long(95))}),
            "customerEmail",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "customerAvatar": 5}),
            "customerAvatar",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "mode": "sync"}),
            "mode",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "mode": null}),
            "mode",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "eventQuantity": 0}),
            "eventQuantity",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "eventQuantity": 101}),
            "eventQuantity",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "eventQuantity": 1.5}),
            "eventQuantity",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "eventQuantity": "2"}),
            "eventQuantity",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "metadata": big_metadata}),
            "metadata",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "metadata": [1]}),
            "metadata",
        ),
        (
            "/track/lead",
            json!({"clickId": "c", "eventName": "e", "externalId": long(101)}),
            "externalId",
        ),
        ("/track/sale", json!({"customerExternalId": "u"}), "amount"),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": "100"}),
            "amount",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": -1}),
            "amount",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": 12.5}),
            "amount",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": 9_007_199_254_740_992u64}),
            "amount",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": long(101), "amount": 1}),
            "customerExternalId",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": 1, "eventName": long(256)}),
            "eventName",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": 1, "currency": 840}),
            "currency",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": 1, "paymentProcessor": "paypal"}),
            "paymentProcessor",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": 1, "invoiceId": 42}),
            "invoiceId",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": 1, "metadata": "x"}),
            "metadata",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": 1, "metadata": big_metadata}),
            "metadata",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": 1, "customerEmail": "a@b"}),
            "customerEmail",
        ),
        (
            "/track/sale",
            json!({"customerExternalId": "u", "amount": 1, "customerName": long(101)}),
            "customerName",
        ),
    ];
    for (path, body, field) in cases {
        let (status, code, message) = dub_error(post(&dub, path, &body).await).await;
        assert_eq!(status, 422, "{path} {body}: {message}");
        assert_eq!(code, "unprocessable_entity");
        assert!(
            message.contains(field),
            "{path} {body}: {message:?} does not name {field}"
        );
    }
    assert!(dub.leads().is_empty() && dub.sales().is_empty());
}

#[tokio::test]
async fn values_at_the_limits_are_accepted() {
    let dub = MockDub::start().await.unwrap();
    let long = |n: usize| "x".repeat(n);
    let body = json!({
        "clickId": "c",
        "eventName": long(255),
        "customerExternalId": long(100),
        "customerName": long(100),
        "customerEmail": format!("{}@example.com", long(88)),
        "mode": "wait",
        "eventQuantity": 100,
        "metadata": { "n": long(9_990) },
    });
    assert_eq!(post(&dub, "/track/lead", &body).await.status(), 200);
    assert_eq!(dub.leads().len(), 100);
    let processors = [
        "stripe",
        "shopify",
        "polar",
        "paddle",
        "apple",
        "revenuecat",
        "dub",
        "custom",
        "lemonsqueezy",
    ];
    for (i, processor) in processors.iter().enumerate() {
        let body = json!({
            "customerExternalId": long(100),
            "amount": 9_007_199_254_740_991u64,
            "paymentProcessor": processor,
            "invoiceId": format!("inv_{i}"),
        });
        assert_eq!(
            post(&dub, "/track/sale", &body).await.status(),
            200,
            "{processor}"
        );
    }
    assert_eq!(dub.sales().len(), processors.len());
}

#[tokio::test]
async fn customer_external_id_aliases_and_missing_id() {
    let dub = MockDub::start().await.unwrap();
    let body = json!({"clickId": "c", "eventName": "Sign up", "externalId": "old_1"});
    assert_eq!(post(&dub, "/track/lead", &body).await.status(), 200);
    let body = json!({"clickId": "c", "eventName": "Sign up", "customerId": "older_1"});
    assert_eq!(post(&dub, "/track/lead", &body).await.status(), 200);
    let ids: Vec<_> = dub
        .leads()
        .into_iter()
        .map(|l| l.customer_external_id)
        .collect();
    assert_eq!(ids, ["old_1", "older_1"]);

    // As on Dub, a missing ID is the route's own 400, not a schema 422.
    for body in [
        json!({"clickId": "c", "eventName": "Sign up"}),
        json!({"clickId": "c", "eventName": "Sign up", "customerExternalId": ""}),
    ] {
        let (status, code, message) = dub_error(post(&dub, "/track/lead", &body).await).await;
        assert_eq!((status.as_u16(), code.as_str()), (400, "bad_request"));
        assert_eq!(message, "customerExternalId is required");
    }
    let (status, _, message) =
        dub_error(post(&dub, "/track/sale", &json!({"amount": 5})).await).await;
    assert_eq!(
        (status.as_u16(), message.as_str()),
        (400, "customerExternalId is required")
    );
}

#[tokio::test]
async fn oversized_body_is_413() {
    let dub = MockDub::start().await.unwrap();
    let body = json!({"clickId": "c", "eventName": "e", "customerExternalId": "u", "metadata": {"x": "y".repeat(1 << 20)}});
    let response = post(&dub, "/track/lead", &body).await;
    assert_eq!(response.status(), 413);
    assert!(dub.leads().is_empty());
    assert_eq!(dub.request_count(), 1);
    // The server is still there.
    assert_eq!(
        post(&dub, "/track/lead", &lead("u", "e")).await.status(),
        200
    );
}

// ---- leads ----

#[tokio::test]
async fn lead_response_and_recording() {
    let dub = MockDub::start().await.unwrap();
    let body = json!({
        "clickId": "cl_abc",
        "eventName": "Sign up",
        "customerExternalId": "user_1",
        "customerName": "Ada",
        "customerEmail": "ada@example.com",
        "metadata": {"plan": "pro"},
    });
    let response = post(&dub, "/track/lead", &body).await;
    assert_eq!(response.status(), 200);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["click"], json!({"id": "cl_abc"}));
    assert_eq!(
        json["customer"],
        json!({"name": "Ada", "email": "ada@example.com", "avatar": null, "externalId": "user_1"})
    );
    let link = json["link"].as_object().expect("a link object");
    for key in [
        "id",
        "domain",
        "key",
        "shortLink",
        "url",
        "partnerId",
        "programId",
        "tenantId",
        "externalId",
    ] {
        assert!(link.contains_key(key), "link.{key}");
    }
    let leads = dub.leads();
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].customer_external_id, "user_1");
    assert_eq!(leads[0].event_name, "Sign up");
    assert_eq!(leads[0].click_id, "cl_abc");
    assert_eq!(leads[0].body, body);
}

#[tokio::test]
async fn duplicate_lead_gets_null_link_and_records_nothing() {
    let dub = MockDub::start().await.unwrap();
    let first: Value = post(&dub, "/track/lead", &lead("u1", "Sign Up"))
        .await
        .json()
        .await
        .unwrap();
    assert!(first["link"].is_object());
    // Same key: event names are compared lowercased with spaces as dashes.
    for event in ["Sign Up", "sign up", "sign-up"] {
        let again = post(&dub, "/track/lead", &lead("u1", event)).await;
        assert_eq!(again.status(), 200);
        let again: Value = again.json().await.unwrap();
        assert!(again["link"].is_null(), "{event}: {again}");
        assert_eq!(again["customer"]["externalId"], "u1");
    }
    assert_eq!(dub.leads().len(), 1);
    // A different event or customer is a new lead.
    post(&dub, "/track/lead", &lead("u1", "Activated")).await;
    post(&dub, "/track/lead", &lead("u2", "Sign Up")).await;
    assert_eq!(dub.leads().len(), 3);
}

#[tokio::test]
async fn event_quantity_records_that_many_leads() {
    let dub = MockDub::start().await.unwrap();
    let mut body = lead("u1", "Seat added");
    body["eventQuantity"] = json!(7);
    assert_eq!(post(&dub, "/track/lead", &body).await.status(), 200);
    assert_eq!(dub.leads().len(), 7);
    assert!(dub.leads().iter().all(|l| l.event_name == "Seat added"));
}

#[tokio::test]
async fn deferred_lead_then_empty_click_id() {
    let dub = MockDub::start().await.unwrap();
    // No stored click for this customer yet.
    let mut body = lead("u1", "Sign up");
    body["clickId"] = json!("");
    let (status, code, message) = dub_error(post(&dub, "/track/lead", &body).await).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "bad_request"));
    assert!(message.contains("clickId"), "{message}");

    let mut deferred = lead("u1", "Sign up");
    deferred["clickId"] = json!("cl_deferred");
    deferred["mode"] = json!("deferred");
    assert_eq!(post(&dub, "/track/lead", &deferred).await.status(), 200);
    assert_eq!(post(&dub, "/track/lead", &deferred).await.status(), 200);
    assert!(
        dub.leads().is_empty(),
        "deferred records nothing and is not de-duplicated"
    );

    assert_eq!(post(&dub, "/track/lead", &body).await.status(), 200);
    let leads = dub.leads();
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].click_id, "cl_deferred");
}

// ---- sales ----

#[tokio::test]
async fn sale_response_and_recording() {
    let dub = MockDub::start().await.unwrap();
    post(&dub, "/track/lead", &lead("u1", "Sign up")).await;
    let body = json!({
        "customerExternalId": "u1",
        "amount": 4_999,
        "currency": "EUR",
        "paymentProcessor": "stripe",
        "invoiceId": "in_1",
        "metadata": {"sku": "pro"},
    });
    let response = post(&dub, "/track/sale", &body).await;
    assert_eq!(response.status(), 200);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["eventName"], "Purchase");
    assert_eq!(json["customer"]["externalId"], "u1");
    assert!(json["customer"]["id"].as_str().unwrap().starts_with("cus_"));
    assert_eq!(
        json["sale"],
        json!({"amount": 4_999, "currency": "eur", "paymentProcessor": "stripe", "invoiceId": "in_1", "metadata": {"sku": "pro"}})
    );
    let sales = dub.sales();
    assert_eq!(sales.len(), 1);
    assert_eq!(sales[0].amount, 4_999);
    assert_eq!(sales[0].invoice_id.as_deref(), Some("in_1"));
    assert_eq!(sales[0].customer_id, dub.leads()[0].customer_id);
}

#[tokio::test]
async fn invoice_id_returns_the_first_response_byte_for_byte() {
    let dub = MockDub::start().await.unwrap();
    post(&dub, "/track/lead", &lead("u1", "Sign up")).await;
    let mut body = sale("u1", 1_000);
    body["invoiceId"] = json!("inv_42");
    let first = post(&dub, "/track/sale", &body)
        .await
        .bytes()
        .await
        .unwrap();
    let again = post(&dub, "/track/sale", &body)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(first, again);
    // Even a different payload with the same invoice gets the cached response.
    body["amount"] = json!(5);
    let different = post(&dub, "/track/sale", &body)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(first, different);
    assert_eq!(dub.sales().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn invoice_race_records_a_sale_again_until_the_first_is_cached() {
    let dub = MockDub::builder()
        .invoice_race(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    post(&dub, "/track/lead", &lead("u1", "Sign up")).await;
    let mut body = sale("u1", 1_000);
    body["invoiceId"] = json!("inv_race");
    let first = post(&dub, "/track/sale", &body)
        .await
        .bytes()
        .await
        .unwrap();

    // A webhook delivered twice: the copy arrives while Dub has not yet cached the first.
    tokio::time::advance(Duration::from_secs(1)).await;
    body["amount"] = json!(2_000);
    let second: Value = post(&dub, "/track/sale", &body).await.json().await.unwrap();
    assert_eq!(second["sale"]["amount"], 2_000, "answered for itself");
    let amounts: Vec<u64> = dub.sales().iter().map(|s| s.amount).collect();
    assert_eq!(amounts, [1_000, 2_000], "both recorded");

    // Once the first response is cached, the invoice is answered from it.
    tokio::time::advance(Duration::from_millis(1_500)).await;
    body["amount"] = json!(3_000);
    let third = post(&dub, "/track/sale", &body)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(third, first);
    assert_eq!(dub.sales().len(), 2);

    // A refused sale caches nothing, so it opens no window of its own.
    let mut orphan = sale("nobody_known", 500);
    orphan["invoiceId"] = json!("inv_orphan");
    post(&dub, "/track/sale", &orphan).await;
    assert_eq!(dub.sales().len(), 2);

    // The race survives `reset` (it is configuration) and can be turned off.
    dub.reset();
    post(&dub, "/track/lead", &lead("u1", "Sign up")).await;
    for _ in 0..2 {
        post(&dub, "/track/sale", &body).await;
    }
    assert_eq!(dub.sales().len(), 2, "raced after reset");
    dub.set_invoice_race(None);
    body["invoiceId"] = json!("inv_calm");
    for _ in 0..2 {
        post(&dub, "/track/sale", &body).await;
    }
    assert_eq!(dub.sales().len(), 3, "without the race, once per invoice");
}

#[tokio::test]
async fn sales_without_invoice_id_are_each_recorded() {
    let dub = MockDub::start().await.unwrap();
    post(&dub, "/track/lead", &lead("u1", "Sign up")).await;
    for _ in 0..3 {
        assert_eq!(
            post(&dub, "/track/sale", &sale("u1", 1_000)).await.status(),
            200
        );
    }
    assert_eq!(dub.sales().len(), 3);
}

#[tokio::test]
async fn unknown_customer_and_zero_amount_get_nulls() {
    let dub = MockDub::start().await.unwrap();
    let unknown: Value = post(&dub, "/track/sale", &sale("nobody", 1_000))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        unknown,
        json!({"eventName": "Purchase", "customer": null, "sale": null})
    );

    post(&dub, "/track/lead", &lead("u1", "Sign up")).await;
    let mut zero = sale("u1", 0);
    zero["invoiceId"] = json!("inv_zero");
    zero["eventName"] = json!("Refund");
    let response: Value = post(&dub, "/track/sale", &zero).await.json().await.unwrap();
    assert_eq!(
        response,
        json!({"eventName": "Refund", "customer": null, "sale": null})
    );
    assert!(dub.sales().is_empty());
    // A null answer is not cached for the invoice: a real amount later is recorded.
    zero["amount"] = json!(300);
    let response: Value = post(&dub, "/track/sale", &zero).await.json().await.unwrap();
    assert_eq!(response["sale"]["amount"], 300);
    assert_eq!(dub.sales().len(), 1);
}

#[tokio::test]
async fn direct_sale_with_click_id_creates_customer_and_lead() {
    let dub = MockDub::start().await.unwrap();
    let body = json!({"customerExternalId": "u9", "amount": 2_500, "clickId": "cl_direct"});
    let response: Value = post(&dub, "/track/sale", &body).await.json().await.unwrap();
    assert_eq!(response["customer"]["externalId"], "u9");
    let leads = dub.leads();
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].click_id, "cl_direct");
    assert_eq!(leads[0].event_name, "Direct sale tracking lead event");
    assert_eq!(dub.sales().len(), 1);
}

#[tokio::test]
async fn sale_for_customer_without_that_lead_is_404() {
    let dub = MockDub::start().await.unwrap();
    let mut deferred = lead("u1", "Sign up");
    deferred["mode"] = json!("deferred");
    post(&dub, "/track/lead", &deferred).await;
    let (status, code, _) = dub_error(post(&dub, "/track/sale", &sale("u1", 10)).await).await;
    assert_eq!((status.as_u16(), code.as_str()), (404, "not_found"));

    post(&dub, "/track/lead", &lead("u1", "Sign up")).await;
    let mut named = sale("u1", 10);
    named["leadEventName"] = json!("Trial started");
    let (status, _, message) = dub_error(post(&dub, "/track/sale", &named).await).await;
    assert_eq!(status, 404);
    assert!(message.contains("Trial started"), "{message}");
    named["leadEventName"] = json!("Sign up");
    assert_eq!(post(&dub, "/track/sale", &named).await.status(), 200);
}

// ---- headers and recording of requests ----

#[tokio::test]
async fn rate_limit_headers_only_on_errors_with_a_millisecond_reset() {
    let dub = MockDub::start().await.unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // As on Dub: a success carries no rate-limit headers; an error from a request that reached
    // the limiter (authenticated, on a track route) does; one that did not reach it has none.
    let success = post(&dub, "/track/lead", &lead("u1", "e")).await;
    assert_eq!(success.status(), 200);
    assert!(!success.headers().contains_key("x-ratelimit-limit"));
    let invalid = post(&dub, "/track/lead", &json!({})).await;
    assert!(invalid.status().is_client_error());
    let h = invalid.headers();
    let limit: u64 = h["x-ratelimit-limit"].to_str().unwrap().parse().unwrap();
    let reset: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
    let remaining: u64 = h["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!((limit, remaining), (600, 598));
    assert!(
        reset > now_ms && reset <= now_ms + 60_000 && reset.is_multiple_of(60_000),
        "reset {reset} is the end of an epoch-aligned minute in Unix ms"
    );
    assert!(!h.contains_key("retry-after"));
    let unknown = post(&dub, "/nope", &json!({})).await;
    assert_eq!(unknown.status(), 404);
    assert!(!unknown.headers().contains_key("x-ratelimit-limit"));
    let unauthenticated = http()
        .post(format!("{}/track/lead", dub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert!(!unauthenticated.headers().contains_key("x-ratelimit-limit"));
}

#[tokio::test]
async fn requests_are_recorded_as_received() {
    let dub = MockDub::start().await.unwrap();
    let response = http()
        .post(format!("{}/track/lead?x=1", dub.url()))
        .bearer_auth(dub.token())
        .header("idempotency-key", "abc")
        .json(&lead("u1", "e"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    http().get(format!("{}/", dub.url())).send().await.unwrap();
    let requests = dub.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(dub.request_count(), 2);
    let first = &requests[0];
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("POST", "/track/lead")
    );
    assert_eq!(first.query.as_deref(), Some("x=1"));
    assert_eq!(first.header("Idempotency-Key"), Some("abc"));
    assert_eq!(first.header("authorization"), Some("Bearer dub_mock_token"));
    assert_eq!(first.json(), Some(lead("u1", "e")));
    assert_eq!(
        (requests[1].method.as_str(), requests[1].path.as_str()),
        ("GET", "/")
    );

    dub.push_fault(Fault::Status(500));
    dub.reset();
    assert_eq!(dub.request_count(), 0);
    assert!(dub.leads().is_empty());
    // The dedup cache and the queued fault are gone too.
    let again: Value = post(&dub, "/track/lead", &lead("u1", "e"))
        .await
        .json()
        .await
        .unwrap();
    assert!(again["link"].is_object());
}

#[tokio::test]
async fn malformed_http_does_not_take_the_server_down() {
    let dub = MockDub::start().await.unwrap();
    let addr = dub.url().trim_start_matches("http://").to_owned();
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"POST /track/lead HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"POST /track/lead HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        &[0xff; 4096],
    ] {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = socket.write_all(garbage).await;
        let _ = socket.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.read_to_end(&mut sink)).await;
    }
    assert_eq!(
        post(&dub, "/track/lead", &lead("u1", "e")).await.status(),
        200
    );
}

#[tokio::test]
async fn shutdown_releases_the_port() {
    let dub = MockDub::start().await.unwrap();
    let handle = dub.clone();
    assert_eq!(
        post(&handle, "/track/lead", &lead("u1", "e"))
            .await
            .status(),
        200
    );
    dub.shutdown().await;
    let err = try_post(&http(), &handle, "/track/lead", &lead("u1", "e"))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let dub = MockDub::start().await.unwrap();
    let addr = dub.url().trim_start_matches("http://").to_owned();
    let clone = dub.clone();
    drop(dub);
    // A clone keeps it running.
    assert_eq!(
        post(&clone, "/track/lead", &lead("u1", "e")).await.status(),
        200
    );
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_are_deduplicated_atomically() {
    let dub = MockDub::start().await.unwrap();
    post(&dub, "/track/lead", &lead("u1", "Sign up")).await;
    let mut body = sale("u1", 1_000);
    body["invoiceId"] = json!("inv_race");
    let http = http();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, dub, body) = (http.clone(), dub.clone(), body.clone());
        tasks.spawn(async move {
            let sale = try_post(&http, &dub, "/track/sale", &body).await.unwrap();
            let lead = try_post(&http, &dub, "/track/lead", &lead("u2", "Sign up"))
                .await
                .unwrap();
            (sale.bytes().await.unwrap(), lead.status())
        });
    }
    let results = tasks.join_all().await;
    assert!(results.iter().all(|(bytes, _)| *bytes == results[0].0));
    assert!(results.iter().all(|(_, status)| *status == 200));
    assert_eq!(dub.sales().len(), 1);
    assert_eq!(dub.leads().len(), 2, "one for u1, one for u2");
    assert_eq!(dub.request_count(), 41);
}

// ---- faults ----

#[tokio::test]
async fn status_faults_have_dub_bodies_and_record_nothing() {
    let dub = MockDub::start().await.unwrap();
    dub.push_faults([
        Fault::Status(503),
        Fault::Status(502),
        Fault::Status(500),
        Fault::Status(409),
    ]);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, code, _) = dub_error(post(&dub, "/track/lead", &lead("u1", "e")).await).await;
        seen.push((status.as_u16(), code));
    }
    assert_eq!(
        seen,
        [
            (503, "service_unavailable".to_owned()),
            (502, "bad_gateway".to_owned()),
            (500, "internal_server_error".to_owned()),
            (409, "conflict".to_owned()),
        ]
    );
    assert!(dub.leads().is_empty());
    assert_eq!(
        post(&dub, "/track/lead", &lead("u1", "e")).await.status(),
        200
    );
    assert_eq!(dub.leads().len(), 1);
}

#[tokio::test]
async fn rate_limited_sends_each_retry_after_form_verbatim() {
    let dub = MockDub::start().await.unwrap();
    let date = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
    let cases = [
        (RetryAfter::Seconds(3), "retry-after", "3"),
        (RetryAfter::Millis(1_500), "retry-after-ms", "1500"),
        (
            RetryAfter::HttpDate(date),
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ),
        (
            RetryAfter::UnixMillis(1_763_942_400_000),
            "retry-after",
            "1763942400000",
        ),
        (
            RetryAfter::Raw("in a while".to_owned()),
            "retry-after",
            "in a while",
        ),
    ];
    for (retry_after, header, text) in cases {
        dub.push_fault(Fault::RateLimited(retry_after));
        let response = post(&dub, "/track/sale", &sale("u1", 1)).await;
        assert_eq!(response.headers()[header], text);
        if header == "retry-after-ms" {
            assert!(!response.headers().contains_key("retry-after"));
        }
        assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
        let (status, code, message) = dub_error(response).await;
        assert_eq!(
            (status.as_u16(), code.as_str(), message.as_str()),
            (429, "rate_limit_exceeded", "Too many requests.")
        );
    }
    assert_eq!(dub.request_count(), 5);
}

#[tokio::test]
async fn dub_style_retry_after_is_a_millisecond_timestamp() {
    let dub = MockDub::start().await.unwrap();
    dub.push_fault(Fault::RateLimited(RetryAfter::dub_after(
        Duration::from_secs(2),
    )));
    dub.push_fault(Fault::Status(429));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for _ in 0..2 {
        let response = post(&dub, "/track/lead", &lead("u1", "e")).await;
        assert_eq!(response.status(), 429);
        let at: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(at > now_ms && at < now_ms + 10_000, "{at}");
    }
}

#[tokio::test]
async fn delay_is_processed_even_when_the_client_times_out() {
    let dub = MockDub::start().await.unwrap();
    dub.push_fault(Fault::Delay(Duration::from_millis(600)));
    let impatient = Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let err = try_post(&impatient, &dub, "/track/lead", &lead("u1", "e"))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(dub.leads().is_empty());
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(dub.leads().len(), 1, "the lead is recorded after the delay");

    dub.push_fault(Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    let response = post(&dub, "/track/lead", &lead("u2", "e")).await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(dub.leads().len(), 2);
}

#[tokio::test]
async fn reset_before_record_is_a_connection_reset_and_records_nothing() {
    let dub = MockDub::start().await.unwrap();
    dub.push_fault(Fault::ResetBeforeRecord);
    let err = try_post(&http(), &dub, "/track/sale", &sale("u1", 1))
        .await
        .unwrap_err();
    assert!(is_connection_reset(&err), "{err:?}");
    assert_eq!(dub.request_count(), 1, "the request arrived exactly once");
    assert!(dub.requests()[0].json().is_some(), "and was read in full");
    assert!(dub.leads().is_empty() && dub.sales().is_empty());
}

#[tokio::test]
async fn reset_after_record_is_a_connection_reset_after_recording() {
    let dub = MockDub::start().await.unwrap();
    // On a pooled keep-alive connection, so that a silent retry by the HTTP stack would show.
    let http = http();
    let first = try_post(&http, &dub, "/track/lead", &lead("u0", "e")).await;
    assert_eq!(first.unwrap().status(), 200);
    dub.push_fault(Fault::ResetAfterRecord);
    let err = try_post(&http, &dub, "/track/lead", &lead("u1", "e"))
        .await
        .unwrap_err();
    assert!(is_connection_reset(&err), "{err:?}");
    assert_eq!(dub.request_count(), 2, "no silent retry");
    assert_eq!(dub.leads().len(), 2);
    // The client recovers on a new connection.
    let after = try_post(&http, &dub, "/track/lead", &lead("u2", "e")).await;
    assert_eq!(after.unwrap().status(), 200);
}

#[tokio::test]
async fn error_after_record_fails_but_keeps_the_event() {
    let dub = MockDub::start().await.unwrap();
    post(&dub, "/track/lead", &lead("u1", "e")).await;
    dub.push_fault(Fault::ErrorAfterRecord(500));
    let (status, code, _) = dub_error(post(&dub, "/track/sale", &sale("u1", 700)).await).await;
    assert_eq!(
        (status.as_u16(), code.as_str()),
        (500, "internal_server_error")
    );
    assert_eq!(dub.sales().len(), 1);
    // The retry a naive client makes double-counts: that is what the fault is for.
    post(&dub, "/track/sale", &sale("u1", 700)).await;
    assert_eq!(dub.sales().len(), 2);
}

#[tokio::test]
async fn truncated_body_fails_to_decode_after_recording() {
    let dub = MockDub::start().await.unwrap();
    dub.push_fault(Fault::TruncatedBody);
    let response = post(&dub, "/track/lead", &lead("u1", "e")).await;
    assert_eq!(response.status(), 200);
    let announced: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(announced > 0);
    assert!(!response.headers().contains_key("x-ratelimit-reset"));
    let err = response.json::<Value>().await.unwrap_err();
    assert!(err.is_body() || err.is_decode(), "{err:?}");
    assert_eq!(dub.leads().len(), 1);
    // The next request, on a new connection, is answered normally.
    assert_eq!(
        post(&dub, "/track/lead", &lead("u2", "e")).await.status(),
        200
    );
}

#[tokio::test]
async fn non_json_body_is_html_with_200_after_recording() {
    let dub = MockDub::start().await.unwrap();
    dub.push_fault(Fault::NonJsonBody);
    let response = post(&dub, "/track/lead", &lead("u1", "e")).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let text = response.text().await.unwrap();
    assert!(text.contains("<html>"), "{text}");
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert_eq!(dub.leads().len(), 1);
}

#[tokio::test]
async fn html_fault_is_a_proxy_page_and_records_nothing() {
    let dub = MockDub::start().await.unwrap();
    dub.push_fault(Fault::Html(502));
    let response = post(&dub, "/track/lead", &lead("u1", "e")).await;
    assert_eq!(response.status(), 502);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(response.text().await.unwrap().contains("502 Bad Gateway"));
    assert!(dub.leads().is_empty());
}

#[tokio::test]
async fn odd_statuses_and_header_text_do_not_break_the_server() {
    let dub = MockDub::start().await.unwrap();
    dub.push_faults([
        Fault::Status(204),
        Fault::Status(100),
        Fault::Status(1000),
        Fault::Html(0),
        Fault::RateLimited(RetryAfter::Raw("soon\r\nx-injected: 1".to_owned())),
        Fault::ErrorAfterRecord(200),
    ]);
    for _ in 0..6 {
        // Whatever the client makes of these, it gets an answer or an error, never a hang.
        let _ = try_post(&http(), &dub, "/track/lead", &lead("u1", "e")).await;
    }
    assert_eq!(dub.request_count(), 6);
    assert_eq!(
        post(&dub, "/track/lead", &lead("u2", "e")).await.status(),
        200
    );
}

#[tokio::test]
async fn faults_apply_in_order_to_any_request() {
    let dub = MockDub::start().await.unwrap();
    dub.push_fault(Fault::Status(500));
    // Even an unauthenticated request to an unknown path consumes the next fault.
    let response = http()
        .get(format!("{}/elsewhere", dub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    dub.push_faults([Fault::Status(503), Fault::Html(504)]);
    dub.clear_faults();
    assert_eq!(
        post(&dub, "/track/lead", &lead("u1", "e")).await.status(),
        200
    );
}

// ---- random faults ----

/// What a client saw, coarsely: status and content type, or the kind of failure.
async fn outcome(http: &Client, dub: &MockDub, i: usize) -> String {
    match try_post(http, dub, "/track/lead", &lead(&format!("u{i}"), "e")).await {
        Err(e) if is_connection_reset(&e) => "reset".to_owned(),
        Err(e) if e.is_timeout() => "timeout".to_owned(),
        Err(e) => format!("error {e}"),
        Ok(response) => {
            let status = response.status().as_u16();
            let html = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html");
            match response.bytes().await {
                Ok(_) => format!("{status}{}", if html { " html" } else { "" }),
                Err(_) => format!("{status} truncated"),
            }
        }
    }
}

async fn random_run(seed: u64) -> (Vec<String>, usize) {
    let dub = MockDub::start().await.unwrap();
    // Wide margins between the client timeout, a normal answer and the delay, so that a busy
    // machine cannot turn one into the other.
    dub.random_faults(RandomFaults::new(seed, 0.5).delay(Duration::from_millis(1_500)));
    let http = Client::builder()
        .timeout(Duration::from_millis(600))
        .build()
        .unwrap();
    let mut seen = Vec::new();
    for i in 0..100 {
        seen.push(outcome(&http, &dub, i).await);
    }
    // Let delayed requests finish before counting what was recorded.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    (seen, dub.leads().len())
}

// On the paused clock: a first request slowed by a busy machine cannot run into the client's
// timeout, which fires only once every run waits for nothing but a timer.
#[tokio::test(start_paused = true)]
async fn random_faults_are_deterministic_for_a_seed() {
    // Three independent servers side by side; each sees its own requests one at a time.
    let ((a, leads_a), (b, leads_b), (c, _)) =
        tokio::join!(random_run(42), random_run(42), random_run(43));
    assert_eq!(a, b);
    assert_eq!(leads_a, leads_b);
    let kinds: std::collections::HashSet<_> = a.iter().collect();
    for expected in [
        "200",
        "503",
        "429",
        "reset",
        "timeout",
        "500",
        "200 truncated",
        "200 html",
        "502 html",
    ] {
        assert!(
            kinds.contains(&expected.to_owned()),
            "{expected} never seen in {a:?}"
        );
    }
    assert_ne!(a, c);
}

#[tokio::test]
async fn random_faults_hit_the_requested_probability() {
    let dub = MockDub::start().await.unwrap();
    dub.random_faults(RandomFaults::new(7, 0.25).kinds([Fault::Status(503)]));
    let http = http();
    let mut faults = 0;
    for i in 0..1_000 {
        let status = post_status(&http, &dub, i).await;
        if status == 503 {
            faults += 1;
        } else {
            assert_eq!(status, 200);
        }
    }
    assert!(
        (200..=300).contains(&faults),
        "{faults} faults in 1000 requests at p = 0.25"
    );
    assert_eq!(dub.leads().len(), 1_000 - faults);

    // Scripted faults go first.
    dub.random_faults(RandomFaults::new(7, 0.0));
    dub.push_fault(Fault::Status(500));
    assert_eq!(post_status(&http, &dub, 5_000).await, 500);
    assert_eq!(post_status(&http, &dub, 5_001).await, 200);
}

async fn post_status(http: &Client, dub: &MockDub, i: usize) -> u16 {
    try_post(http, dub, "/track/lead", &lead(&format!("u{i}"), "e"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_nested_deeper_than_serde_jsons_default_is_accepted_as_on_dub() {
    let dub = MockDub::start().await.unwrap();
    // 500 levels: beyond serde_json's default 128, within what JSON.parse takes, and near the
    // mock's own bound (512), on a worker thread's stack.
    let mut nested = json!("leaf");
    for _ in 0..500 {
        nested = json!({ "n": nested });
    }
    let mut body = lead("deep", "e");
    body["metadata"] = json!({ "deep": nested });
    let text = serde_json::to_vec(&body).unwrap();
    let response = http()
        .post(format!("{}/track/lead", dub.url()))
        .bearer_auth(dub.token())
        .header("content-type", "application/json")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(dub.leads().len(), 1);
    // Invalid JSON is still 400, at any depth.
    let broken = format!("{}{}", "[".repeat(1_000), "]".repeat(999));
    let response = http()
        .post(format!("{}/track/lead", dub.url()))
        .bearer_auth(dub.token())
        .body(broken)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn history_keeps_the_last_requests_and_events_and_counts_them_all() {
    let dub = MockDub::builder().history(3).start().await.unwrap();
    for i in 0..5 {
        let response = post(&dub, "/track/lead", &lead(&format!("u{i}"), "Sign up")).await;
        assert_eq!(response.status(), 200);
    }
    dub.push_fault(Fault::Status(503));
    assert_eq!(
        post(&dub, "/track/lead", &lead("u9", "x")).await.status(),
        503
    );

    // The last three requests and leads are kept; all are counted.
    let kept = dub.requests();
    assert_eq!(kept.len(), 3);
    assert_eq!(kept[2].status, Some(503));
    assert_eq!(dub.request_count(), 6);
    let leads = dub.leads();
    assert_eq!(leads.len(), 3);
    assert_eq!(leads[2].customer_external_id, "u4");
    let stats = dub.stats();
    assert_eq!((stats.requests, stats.requests_kept), (6, 3));
    assert_eq!((stats.leads, stats.sales, stats.faults), (5, 0, 1));
    assert_eq!(stats.statuses.get(&200), Some(&5));
    assert_eq!(stats.statuses.get(&503), Some(&1));

    // The same over HTTP, for clients in other languages; these requests are not counted.
    let http = http();
    let get = |path: &str| http.get(format!("{}{path}", dub.url())).send();
    let body: Value = get("/__mock/stats").await.unwrap().json().await.unwrap();
    assert_eq!(body["requests"], 6);
    assert_eq!(body["requestsKept"], 3);
    assert_eq!(body["statuses"]["200"], 5);
    assert_eq!(body["leads"], 5);
    let body: Value = get("/__mock/requests").await.unwrap().json().await.unwrap();
    let listed = body["requests"].as_array().unwrap();
    let numbers: Vec<_> = listed.iter().map(|r| r["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [3, 4, 5]);
    assert_eq!(listed[0]["path"], "/track/lead");
    assert_eq!(listed[0]["body"]["customerExternalId"], "u3");
    assert_eq!(listed[2]["status"], 503);
    assert!(listed[2]["fault"].as_str().unwrap().contains("503"));
    assert_eq!(dub.request_count(), 6, "/__mock/ requests are not counted");

    let cleared = http
        .delete(format!("{}/__mock/requests", dub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 200);
    assert_eq!(dub.request_count(), 0);
    assert!(dub.requests().is_empty());
    assert_eq!(dub.stats().statuses.len(), 0);
    assert_eq!(dub.leads().len(), 3, "recorded events stay");
    assert_eq!(get("/__mock/nothing").await.unwrap().status(), 404);
    let wrong = http
        .post(format!("{}/__mock/stats", dub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);

    // A request counted after the clear is numbered on.
    post(&dub, "/track/lead", &lead("u5", "Sign up")).await;
    let body: Value = get("/__mock/requests").await.unwrap().json().await.unwrap();
    assert_eq!(body["requests"][0]["n"], 6);
    assert_eq!(dub.request_count(), 1);
}

/// Reads until the server closes the connection (or `limit` passes); what it sent.
async fn read_until_closed(socket: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    match tokio::time::timeout(limit, socket.read_to_end(&mut answer)).await {
        Ok(_) => Some(answer),
        Err(_) => None,
    }
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let dub = MockDub::builder()
        .idle_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let addr = dub.url().trim_start_matches("http://").to_owned();

    // Connected and silent; half a request line; a request then nothing more (keep-alive).
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(&addr).await.unwrap();
    partial.write_all(b"POST /track/lead HT").await.unwrap();
    let mut kept_alive = tokio::net::TcpStream::connect(&addr).await.unwrap();
    kept_alive
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut stalled_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled_body
        .write_all(b"POST /track/lead HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"cl")
        .await
        .unwrap();

    for (name, socket) in [
        ("silent", &mut silent),
        ("partial", &mut partial),
        ("kept alive", &mut kept_alive),
        ("stalled body", &mut stalled_body),
    ] {
        let answer = read_until_closed(socket, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("the {name} connection is still open after 10 s"));
        if name == "kept alive" {
            assert!(answer.starts_with(b"HTTP/1.1 404"), "{name}");
        }
    }

    // A request that takes longer than the idle timeout to handle is not cut off.
    dub.push_fault(Fault::Delay(Duration::from_millis(800)));
    assert_eq!(
        post(&dub, "/track/lead", &lead("u1", "e")).await.status(),
        200
    );
}

#[tokio::test]
async fn a_large_body_followed_by_a_half_close_gets_its_answer() {
    let dub = MockDub::start().await.unwrap();
    let addr = dub.url().trim_start_matches("http://").to_owned();
    let metadata = "x".repeat(5_000);
    let body = serde_json::to_vec(&json!({
        "clickId": "cl_1", "eventName": "Sign up", "customerExternalId": "u1",
        "metadata": {"note": metadata},
    }))
    .unwrap();
    let big = vec![b' '; 600_000];
    for body in [body.clone(), [body, big].concat()] {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /track/lead HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            dub.token(),
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&body).await.unwrap();
        // Done writing: the client waits for the answer with its side closed.
        socket.shutdown().await.unwrap();
        let answer = read_until_closed(&mut socket, Duration::from_secs(10))
            .await
            .expect("an answer within 10 s");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{:?}",
            &answer[..answer.len().min(200)]
        );
    }
    assert_eq!(dub.leads().len(), 1, "recorded once, then deduplicated");
}

#[tokio::test]
async fn reply_fault_answers_exactly_and_records_nothing() {
    let dub = MockDub::start().await.unwrap();
    dub.push_faults([
        Fault::Reply(
            dub::mock::ExactReply::new(502, "<h1>upstream</h1>")
                .header("content-type", "text/html")
                .header("x-odd", "1")
                .header("x-odd", "2"),
        ),
        Fault::Reply(dub::mock::ExactReply::json(
            200,
            &json!({"click": {"id": "c"}}),
        )),
        Fault::Reply(dub::mock::ExactReply::new(200, "").delay(Duration::from_millis(300))),
    ]);
    let response = post(&dub, "/track/lead", &lead("u1", "e")).await;
    assert_eq!(response.status(), 502);
    let odd: Vec<_> = response.headers().get_all("x-odd").iter().collect();
    assert_eq!(odd, ["1", "2"]);
    assert!(response.headers().get("x-ratelimit-limit").is_none());
    assert_eq!(response.text().await.unwrap(), "<h1>upstream</h1>");

    let response = post(&dub, "/track/lead", &lead("u1", "e")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "as given"
    );
    assert_eq!(response.text().await.unwrap(), r#"{"click":{"id":"c"}}"#);

    let started = Instant::now();
    let response = post(&dub, "/track/lead", &lead("u1", "e")).await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(dub.leads().len(), 0, "nothing recorded");
    assert_eq!(dub.request_count(), 3);
}

/// This process's descriptors for TCP sockets whose local port is `port` (Linux).
#[cfg(target_os = "linux")]
fn descriptors_on_port(port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            (u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| fields.get(9).map(|inode| (*inode).to_owned()))?
        })
        .collect();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .is_some_and(|inode| inodes.contains(inode))
        })
        .count()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_connection_holds_one_descriptor_on_the_server() {
    let dub = MockDub::start().await.unwrap();
    let addr = dub.url().trim_start_matches("http://").to_owned();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut sockets = Vec::new();
    for _ in 0..50 {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // Answered, so the server has accepted it and set it up; kept alive afterwards.
        socket
            .write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        socket.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 404");
        sockets.push(socket);
    }
    // The listener and one descriptor per accepted connection: a dup'ed spare for each
    // halved how many clients fit under `ulimit -n`.
    assert_eq!(descriptors_on_port(port), 1 + 50);
}
