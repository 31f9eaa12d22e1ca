//! Dub's 200 bodies for a lead and a sale, as the tests script them (and the overhead
//! benchmark serves them).

use serde_json::{Value, json};

/// A lead's 200 body as Dub sends it.
pub fn lead_body() -> Value {
    json!({
        "click": {"id": "clk_123"},
        "link": {"id": "link_1", "domain": "dub.sh", "key": "try", "shortLink": "https://dub.sh/try",
                 "url": "https://dub.co", "partnerId": null, "programId": null, "tenantId": null,
                 "externalId": null},
        "customer": {"name": "Ada", "email": "ada@example.com", "avatar": null, "externalId": "user_42"}
    })
}

/// A sale's 200 body as Dub sends it.
pub fn sale_body() -> Value {
    json!({
        "eventName": "Purchase",
        "customer": {"id": "cus_1", "name": "Ada", "email": "ada@example.com", "avatar": null, "externalId": "user_42"},
        "sale": {"amount": 996500, "currency": "usd", "paymentProcessor": "paddle", "invoiceId": "in_1", "metadata": null}
    })
}
