//! build.rs removes the request constraints from what progenitor sees; the crate's validator
//! enforces them instead. This reads every constraint openapi.yaml states on a request field
//! and checks, through the public API against a loopback server, that a value at the limit is
//! sent and a value past it is refused before sending, naming the field. A constraint added to
//! the spec for a field this test does not know fails it.

use crate::support::client;
use dub::ErrorKind;
use dub::mock::MockDub;
use dub::models::{TrackLeadRequest, TrackSaleRequest};
use serde_json::Value;

enum Req {
    Lead(TrackLeadRequest),
    Sale(TrackSaleRequest),
}

/// A valid request of `schema` with `field` set to `value`.
fn with(schema: &str, field: &str, value: Value) -> Req {
    let s = || value.as_str().unwrap().to_owned();
    let n = || value.as_i64().unwrap();
    let mut lead = TrackLeadRequest::builder()
        .click_id("clk_1")
        .event_name("Sign up")
        .customer_external_id("user_42")
        .build();
    let mut sale = TrackSaleRequest::builder()
        .customer_external_id("user_42")
        .amount(100)
        .build();
    match (schema, field) {
        ("TrackLeadRequest", "eventName") => Req::Lead(
            TrackLeadRequest::builder()
                .click_id("clk_1")
                .event_name(s())
                .customer_external_id("user_42")
                .build(),
        ),
        ("TrackLeadRequest", "customerExternalId") => Req::Lead(
            TrackLeadRequest::builder()
                .click_id("clk_1")
                .event_name("Sign up")
                .customer_external_id(s())
                .build(),
        ),
        ("TrackLeadRequest", "customerName") => {
            lead.customer_name = Some(s());
            Req::Lead(lead)
        }
        ("TrackLeadRequest", "customerEmail") => {
            lead.customer_email = Some(s());
            Req::Lead(lead)
        }
        ("TrackLeadRequest", "eventQuantity") => {
            lead.event_quantity = Some(n());
            Req::Lead(lead)
        }
        ("TrackSaleRequest", "customerExternalId") => Req::Sale(
            TrackSaleRequest::builder()
                .customer_external_id(s())
                .amount(100)
                .build(),
        ),
        ("TrackSaleRequest", "amount") => Req::Sale(
            TrackSaleRequest::builder()
                .customer_external_id("user_42")
                .amount(n() as u64)
                .build(),
        ),
        ("TrackSaleRequest", "eventName") => {
            sale.event_name = s();
            Req::Sale(sale)
        }
        ("TrackSaleRequest", "customerName") => {
            sale.customer_name = Some(s());
            Req::Sale(sale)
        }
        ("TrackSaleRequest", "customerEmail") => {
            sale.customer_email = Some(s());
            Req::Sale(sale)
        }
        _ => panic!(
            "openapi.yaml constrains {schema}.{field}: teach src/models/validate.rs and this test about it"
        ),
    }
}

/// A string of `len` UTF-16 units that is valid for `field` apart from its length.
fn text(field: &str, len: usize) -> Value {
    if field == "customerEmail" {
        let domain = "@example.com";
        return Value::from(format!(
            "{}{domain}",
            "a".repeat(len.saturating_sub(domain.len()))
        ));
    }
    Value::from("x".repeat(len))
}

#[tokio::test]
async fn every_request_constraint_in_the_spec_is_enforced() {
    let text_spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let spec: Value = serde_yaml_ng::from_str(&text_spec).unwrap();
    let server = MockDub::start().await.unwrap();
    let dub = client(&server.url())
        .retry_config(dub::RetryConfig::none())
        .build()
        .unwrap();
    let mut checked = 0;
    for schema in ["TrackLeadRequest", "TrackSaleRequest"] {
        for (field, prop) in spec["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap()
        {
            let mut cases: Vec<(Value, bool)> = Vec::new();
            if let Some(max) = prop["maxLength"].as_u64() {
                cases.push((text(field, max as usize), true));
                cases.push((text(field, max as usize + 1), false));
            }
            if let Some(min) = prop["minLength"].as_u64().filter(|m| *m > 0) {
                cases.push((text(field, min as usize), true));
                cases.push((text(field, min as usize - 1), false));
            }
            if let Some(max) = prop["maximum"].as_i64() {
                cases.push((max.into(), true));
                cases.push(((max + 1).into(), false));
            }
            if let Some(min) = prop["minimum"].as_i64().filter(|m| *m > 0) {
                cases.push((min.into(), true));
                cases.push(((min - 1).into(), false));
            }
            if prop.get("pattern").is_some() {
                cases.push((Value::from("ada@example.com"), true));
                cases.push((Value::from("ada@@example"), false));
            }
            for (value, ok) in cases {
                checked += 1;
                let before = server.request_count();
                let result = match with(schema, field, value.clone()) {
                    Req::Lead(r) => dub.track().lead(r).await.map(drop),
                    Req::Sale(r) => dub.track().sale(r).await.map(drop),
                };
                match (result, ok) {
                    (Ok(()), true) => assert_eq!(server.request_count(), before + 1),
                    (Err(e), false) => {
                        assert_eq!(
                            (e.kind(), e.field()),
                            (ErrorKind::Validation, Some(field.as_str())),
                            "{schema}.{field}={value}"
                        );
                        assert_eq!(
                            server.request_count(),
                            before,
                            "{schema}.{field}: refused input was sent"
                        );
                    }
                    (r, _) => panic!("{schema}.{field} = {value}: expected ok={ok}, got {r:?}"),
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} constraint cases");
}
