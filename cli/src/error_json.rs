//! Dub's errors as JSON, for standard error and the `--failed` file.

use serde_json::{Map, Value, json};

/// `BadRequest` -> `bad_request`: the kind's name, spelled like Dub's error codes. Derived from
/// the `Debug` name so that kinds a later release of the crate adds still get one.
pub fn kind_name(kind: dub::ErrorKind) -> String {
    let debug = format!("{kind:?}");
    let mut out = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `{"kind", "status", "code", "message", "field", "mayHaveBeenRecorded"}`; absent parts are
/// left out. The error's text never holds the API token (the crate promises it).
pub fn error(e: &dub::Error) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), Value::String(kind_name(e.kind())));
    if let Some(status) = e.status() {
        m.insert("status".into(), json!(status.as_u16()));
    }
    if let Some(code) = e.code() {
        m.insert("code".into(), json!(code));
    }
    let message = e.message().map_or_else(|| e.to_string(), str::to_owned);
    m.insert("message".into(), json!(message));
    if let Some(field) = e.field() {
        m.insert("field".into(), json!(field));
    }
    m.insert(
        "mayHaveBeenRecorded".into(),
        json!(e.may_have_been_recorded()),
    );
    Value::Object(m)
}

/// A record refused before sending, in the same shape.
pub fn invalid(field: &str, rule: &str) -> Value {
    json!({
        "kind": "validation",
        "field": field,
        "message": rule,
        "mayHaveBeenRecorded": false,
    })
}

#[cfg(test)]
mod tests {
    use super::kind_name;

    #[test]
    fn kinds_are_snake_case() {
        assert_eq!(kind_name(dub::ErrorKind::BadRequest), "bad_request");
        assert_eq!(kind_name(dub::ErrorKind::Timeout), "timeout");
        assert_eq!(
            kind_name(dub::ErrorKind::RateLimitExceeded),
            "rate_limit_exceeded"
        );
    }
}
