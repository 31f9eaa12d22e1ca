//! With the `schemars` feature every model has a JSON Schema.
#![cfg(feature = "schemars")]

use dub::models::{PaymentProcessor, TrackLeadRequest, TrackSaleResponse};

#[test]
fn models_have_json_schemas() {
    let lead = serde_json::to_value(schemars::schema_for!(TrackLeadRequest)).unwrap();
    let props = lead["properties"].as_object().unwrap();
    assert!(props.contains_key("clickId") && props.contains_key("customerExternalId"));
    assert!(
        lead["required"]
            .as_array()
            .unwrap()
            .contains(&"eventName".into())
    );
    let sale = serde_json::to_value(schemars::schema_for!(TrackSaleResponse)).unwrap();
    assert!(sale["properties"].as_object().unwrap().contains_key("sale"));
    let pp = serde_json::to_value(schemars::schema_for!(PaymentProcessor)).unwrap();
    assert_eq!(pp["type"], "string");
    assert!(
        pp["examples"]
            .as_array()
            .unwrap()
            .contains(&"lemonsqueezy".into())
    );
}
