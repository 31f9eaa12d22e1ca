//! Errors as JSON, for standard error and the `--failed` file: the crate's one encoding
//! ([`dub::Error::to_json`]), and the same shape for a record refused before sending.

use serde_json::{Value, json};

/// `{"kind", "status", "code", "message", "field", "mayHaveBeenRecorded", ...}`; absent parts
/// are left out. The error's text never holds the API token (the crate promises it).
pub fn error(e: &dub::Error) -> Value {
    e.to_json()
}

/// A record refused before sending, in the same shape.
pub fn invalid(field: &str, rule: &str) -> Value {
    json!({
        "kind": dub::ErrorKind::Validation.as_str(),
        "field": field,
        "message": rule,
        "mayHaveBeenRecorded": false,
    })
}
