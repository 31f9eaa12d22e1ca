//! Request validation, written from the constraints in `openapi.yaml` and the behaviour of
//! Dub's server rather than from the crate's generated types, so the mock checks the client
//! independently.
//!
//! Dub validates with zod and reports only the first issue, as `<code>: <path>: <message>`;
//! fields are checked here in the order of Dub's schemas so the same field is named. Lengths
//! are counted in UTF-16 code units, as JavaScript's `String.length` does.

use crate::models::{LeadMode, PaymentProcessor};
use serde_json::{Map, Value};

/// Why a request is refused: status, Dub error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    fn unprocessable(message: String) -> Rejection {
        Rejection {
            status: 422,
            code: "unprocessable_entity",
            message,
        }
    }

    pub fn bad_request(message: &str) -> Rejection {
        Rejection {
            status: 400,
            code: "bad_request",
            message: message.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Async,
    Wait,
    Deferred,
}

#[derive(Debug, Clone)]
pub(crate) struct LeadInput {
    /// Trimmed; empty means "use the customer's stored click".
    pub click_id: String,
    pub event_name: String,
    pub customer_external_id: String,
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub customer_avatar: Option<String>,
    pub mode: Mode,
    pub event_quantity: Option<u32>,
}

#[derive(Debug, Clone)]
pub(crate) struct SaleInput {
    pub customer_external_id: String,
    pub amount: u64,
    pub currency: String,
    pub event_name: String,
    pub payment_processor: String,
    pub invoice_id: Option<String>,
    pub metadata: Value,
    pub lead_event_name: Option<String>,
    pub click_id: Option<String>,
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub customer_avatar: Option<String>,
}

const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;
const METADATA_MAX: usize = 10_000;

/// Validates a `/track/lead` body (already parsed as JSON).
pub(crate) fn lead(body: &Value) -> Result<LeadInput, Rejection> {
    let f = Fields::new(body)?;
    let click_id = f.string("clickId", Absent::Allowed)?.map(js_trim);
    let event_name = js_trim(
        f.string("eventName", Absent::Forbidden)?
            .unwrap_or_default(),
    );
    min_len("eventName", event_name, "eventName is required")?;
    max_len("eventName", event_name, 255)?;
    let external_id = f.external_id("customerExternalId", true)?;
    let customer_name = f.string("customerName", Absent::Allowed)?;
    max_len_opt("customerName", customer_name, 100)?;
    let customer_email = f.email("customerEmail")?;
    let customer_avatar = f.string("customerAvatar", Absent::Allowed)?;
    let mode = match f.one_of("mode", LeadMode::KNOWN)? {
        Some("wait") => Mode::Wait,
        Some("deferred") => Mode::Deferred,
        _ => Mode::Async,
    };
    let event_quantity = f.event_quantity()?;
    f.metadata()?;
    let old_external_id = f.external_id("externalId", true)?;
    let old_customer_id = f.external_id("customerId", true)?;
    Ok(LeadInput {
        click_id: click_id.unwrap_or_default().to_owned(),
        event_name: event_name.to_owned(),
        customer_external_id: resolve_external_id([external_id, old_external_id, old_customer_id])?,
        customer_name: customer_name.map(str::to_owned),
        customer_email: customer_email.map(str::to_owned),
        customer_avatar: customer_avatar.map(str::to_owned),
        mode,
        event_quantity,
    })
}

/// Validates a `/track/sale` body (already parsed as JSON).
pub(crate) fn sale(body: &Value) -> Result<SaleInput, Rejection> {
    let f = Fields::new(body)?;
    // Dub's sale route, unlike the lead route, does not trim the customer ID.
    let external_id = f.external_id("customerExternalId", false)?;
    let amount = f.amount()?;
    let currency = f.string("currency", Absent::Defaulted)?.unwrap_or("usd");
    let event_name = f
        .string("eventName", Absent::Defaulted)?
        .unwrap_or("Purchase");
    max_len("eventName", event_name, 255)?;
    let payment_processor = f
        .one_of("paymentProcessor", PaymentProcessor::KNOWN)?
        .unwrap_or("custom");
    let invoice_id = f.string("invoiceId", Absent::Allowed)?;
    let metadata = f.metadata()?;
    let lead_event_name = f.string("leadEventName", Absent::Allowed)?;
    let click_id = f.string("clickId", Absent::Allowed)?.map(js_trim);
    let customer_name = f.string("customerName", Absent::Allowed)?;
    max_len_opt("customerName", customer_name, 100)?;
    let customer_email = f.email("customerEmail")?;
    let customer_avatar = f.string("customerAvatar", Absent::Allowed)?;
    let old_external_id = f.external_id("externalId", false)?;
    let old_customer_id = f.external_id("customerId", false)?;
    let owned = |s: Option<&str>| s.map(str::to_owned);
    Ok(SaleInput {
        customer_external_id: resolve_external_id([external_id, old_external_id, old_customer_id])?,
        amount,
        currency: currency.to_lowercase(),
        event_name: event_name.to_owned(),
        payment_processor: payment_processor.to_owned(),
        invoice_id: owned(invoice_id),
        metadata: metadata.cloned().map_or(Value::Null, Value::Object),
        lead_event_name: owned(lead_event_name),
        click_id: owned(click_id),
        customer_name: owned(customer_name),
        customer_email: owned(customer_email),
        customer_avatar: owned(customer_avatar),
    })
}

/// Dub's routes accept the old names `externalId` and `customerId` and take the first
/// non-empty of the three; none at all is a 400, not a 422.
fn resolve_external_id(candidates: [Option<&str>; 3]) -> Result<String, Rejection> {
    candidates
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| Rejection::bad_request("customerExternalId is required"))
}

/// How a field may be left out. zod tells a missing key (`undefined`) from `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// Required: missing and null are both invalid.
    Forbidden,
    /// Has a default: missing is fine, null is invalid.
    Defaulted,
    /// Nullish: missing and null are both fine.
    Allowed,
}

struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn new(body: &'a Value) -> Result<Fields<'a>, Rejection> {
        match body {
            Value::Object(map) => Ok(Fields(map)),
            other => Err(Rejection::unprocessable(format!(
                "invalid_type: Invalid input: expected object, received {}",
                kind(Some(other))
            ))),
        }
    }

    fn absent_ok(&self, key: &str, absent: Absent) -> bool {
        match self.0.get(key) {
            None => absent != Absent::Forbidden,
            Some(Value::Null) => absent == Absent::Allowed,
            Some(_) => false,
        }
    }

    fn string(&self, key: &str, absent: Absent) -> Result<Option<&'a str>, Rejection> {
        match self.0.get(key) {
            Some(Value::String(s)) => Ok(Some(s)),
            _ if self.absent_ok(key, absent) => Ok(None),
            got => Err(invalid_type(key, "string", got)),
        }
    }

    fn external_id(&self, key: &str, trim: bool) -> Result<Option<&'a str>, Rejection> {
        let id = self.string(key, Absent::Allowed)?;
        let id = if trim { id.map(js_trim) } else { id };
        // Dub's routes no longer check this length themselves; the spec states it, so a client
        // that sends more is caught here.
        max_len_opt(key, id, 100)?;
        Ok(id)
    }

    fn email(&self, key: &str) -> Result<Option<&'a str>, Rejection> {
        let email = self.string(key, Absent::Allowed)?;
        if let Some(email) = email {
            if !is_email(email) {
                return Err(Rejection::unprocessable(format!(
                    "invalid_format: {key}: Invalid email address"
                )));
            }
            max_len(key, email, 100)?;
        }
        Ok(email)
    }

    fn one_of(
        &self,
        key: &str,
        allowed: &[&'static str],
    ) -> Result<Option<&'static str>, Rejection> {
        let value = self.0.get(key);
        if value.is_none() {
            return Ok(None);
        }
        let found = value
            .and_then(Value::as_str)
            .and_then(|s| allowed.iter().copied().find(|a| *a == s));
        found.map(Some).ok_or_else(|| {
            let options: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
            Rejection::unprocessable(format!(
                "invalid_value: {key}: Invalid option: expected one of {}",
                options.join("|")
            ))
        })
    }

    /// A JSON number that is a whole number, as JavaScript sees it (`2.0` is an integer).
    fn integer(
        &self,
        key: &str,
        absent: Absent,
        type_message: Option<&str>,
    ) -> Result<Option<f64>, Rejection> {
        let value = self.0.get(key);
        let number = match value {
            Some(Value::Number(n)) => n.as_f64(),
            _ if self.absent_ok(key, absent) => return Ok(None),
            _ => None,
        };
        let Some(number) = number else {
            return Err(match type_message {
                Some(m) => Rejection::unprocessable(format!("invalid_type: {key}: {m}")),
                None => invalid_type(key, "number", value),
            });
        };
        if !number.is_finite() || number.fract() != 0.0 {
            return Err(invalid_type(key, "int", value));
        }
        Ok(Some(number))
    }

    fn event_quantity(&self) -> Result<Option<u32>, Rejection> {
        let key = "eventQuantity";
        let Some(n) = self.integer(key, Absent::Allowed, None)? else {
            return Ok(None);
        };
        if n < 1.0 {
            return Err(Rejection::unprocessable(format!(
                "too_small: {key}: Too small: expected number to be >0"
            )));
        }
        if n > 100.0 {
            return Err(Rejection::unprocessable(format!(
                "too_big: {key}: Too big: expected number to be <=100"
            )));
        }
        // In 1..=100 by the checks above.
        Ok(Some(n as u32))
    }

    fn amount(&self) -> Result<u64, Rejection> {
        let key = "amount";
        let n = self
            .integer(key, Absent::Forbidden, Some("amount is required"))?
            .unwrap_or_default();
        if n > MAX_SAFE_INTEGER {
            return Err(Rejection::unprocessable(format!(
                "too_big: {key}: Too big: expected int to be <={}",
                MAX_SAFE_INTEGER as u64
            )));
        }
        if n < 0.0 {
            return Err(Rejection::unprocessable(format!(
                "too_small: {key}: amount cannot be negative"
            )));
        }
        // A whole number in 0..=2^53-1 by the checks above.
        Ok(n as u64)
    }

    fn metadata(&self) -> Result<Option<&'a Map<String, Value>>, Rejection> {
        let key = "metadata";
        let metadata = match self.0.get(key) {
            Some(Value::Object(map)) => map,
            _ if self.absent_ok(key, Absent::Allowed) => return Ok(None),
            got => return Err(invalid_type(key, "record", got)),
        };
        // JSON.stringify and serde_json agree on compact output except for the rendering of
        // some floats (1.0 vs 1), which moves the limit by a few characters at most.
        let text = Value::Object(metadata.clone()).to_string();
        if js_len(&text) > METADATA_MAX {
            return Err(Rejection::unprocessable(format!(
                "custom: {key}: Metadata must be less than 10,000 characters when stringified"
            )));
        }
        Ok(Some(metadata))
    }
}

fn kind(value: Option<&Value>) -> &'static str {
    match value {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

fn invalid_type(key: &str, expected: &str, got: Option<&Value>) -> Rejection {
    Rejection::unprocessable(format!(
        "invalid_type: {key}: Invalid input: expected {expected}, received {}",
        kind(got)
    ))
}

fn min_len(key: &str, s: &str, message: &str) -> Result<(), Rejection> {
    if s.is_empty() {
        return Err(Rejection::unprocessable(format!(
            "too_small: {key}: {message}"
        )));
    }
    Ok(())
}

fn max_len(key: &str, s: &str, max: usize) -> Result<(), Rejection> {
    if js_len(s) > max {
        return Err(Rejection::unprocessable(format!(
            "too_big: {key}: Too big: expected string to have <={max} characters"
        )));
    }
    Ok(())
}

fn max_len_opt(key: &str, s: Option<&str>, max: usize) -> Result<(), Rejection> {
    s.map_or(Ok(()), |s| max_len(key, s, max))
}

/// JavaScript's `String.length`.
fn js_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// JavaScript's `String.prototype.trim`, which also strips the byte-order mark.
fn js_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
}

include!(concat!(env!("OUT_DIR"), "/email_pattern.rs"));

/// Whether `s` matches the spec's `customerEmail` pattern, compiled as the spec states it
/// (with look-ahead, hence fancy-regex). The client's own check (`crate::models::validate`) is written
/// by hand; a property test holds both to the pattern.
pub(crate) fn is_email(s: &str) -> bool {
    static PATTERN: std::sync::OnceLock<Option<fancy_regex::Regex>> = std::sync::OnceLock::new();
    PATTERN
        .get_or_init(|| fancy_regex::Regex::new(EMAIL_PATTERN).ok())
        .as_ref()
        // Backtracking past fancy-regex's limit on a hostile input: not an email.
        .is_some_and(|re| re.is_match(s).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn email_pattern() {
        for ok in [
            "a@b.co",
            "first.last+tag@mail.example.com",
            "o'neil@x-y.io",
            "_@a.bc",
        ] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "@b.co",
            ".a@b.co",
            "a..b@c.co",
            "a.@b.co",
            "a@b",
            "a@b.c",
            "a@-b.co",
            "a@b..co",
            "a@b.co1",
            "a@@b.co",
            "a b@c.co",
            "é@b.co",
            "a@b.co.",
            "a'@b.co",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn lengths_count_utf16_units() {
        // 50 emoji are 100 UTF-16 units: the limit exactly.
        let name = "😀".repeat(50);
        let body = json!({"clickId": "c", "eventName": "e", "customerExternalId": "x", "customerName": name});
        assert!(lead(&body).is_ok());
        let body = json!({"clickId": "c", "eventName": "e", "customerExternalId": "x", "customerName": format!("{name}a")});
        assert!(lead(&body).unwrap_err().message.contains("customerName"));
    }

    #[test]
    fn first_issue_in_schema_order() {
        let body = json!({"eventName": 5, "customerName": 5});
        let err = lead(&body).unwrap_err();
        assert_eq!(
            err.message,
            "invalid_type: eventName: Invalid input: expected string, received number"
        );
    }

    #[test]
    fn integers_as_javascript_sees_them() {
        let body = json!({"customerExternalId": "x", "amount": 1000.0});
        assert_eq!(sale(&body).unwrap().amount, 1000);
        let body = json!({"customerExternalId": "x", "amount": 10.5});
        assert!(
            sale(&body)
                .unwrap_err()
                .message
                .starts_with("invalid_type: amount")
        );
        let body = json!({"customerExternalId": "x", "amount": 9_007_199_254_740_992u64});
        assert!(
            sale(&body)
                .unwrap_err()
                .message
                .starts_with("too_big: amount")
        );
    }

    #[test]
    fn aliases_resolve_in_order() {
        let body = json!({"clickId": "c", "eventName": "e", "customerExternalId": " ", "externalId": "old", "customerId": "older"});
        assert_eq!(lead(&body).unwrap().customer_external_id, "old");
        let body = json!({"clickId": "c", "eventName": "e"});
        assert_eq!(lead(&body).unwrap_err().status, 400);
    }
}
