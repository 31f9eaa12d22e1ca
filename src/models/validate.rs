//! The spec's request constraints, checked before anything is sent.
//!
//! build.rs removes these keywords from the schemas progenitor sees (so setters stay
//! infallible); this module enforces them instead and names the field that broke a rule.
//! `tests/it/spec_constraints.rs` reads `openapi.yaml` and checks every constraint it states is
//! enforced here, so a spec change that tightens a rule fails the tests until this follows.
//!
//! Lengths are counted in UTF-16 code units, as Dub's JavaScript server counts them.

use super::{TrackLeadRequest, TrackSaleRequest};
use crate::error::Error;
use serde_json::{Map, Value};

/// The largest integer JavaScript represents exactly: the spec's maximum `amount`.
pub(crate) const MAX_AMOUNT: u64 = (1 << 53) - 1;
/// Most characters of `metadata` serialised as JSON.
pub(crate) const MAX_METADATA_CHARS: usize = 10_000;

type Check = Result<(), Error>;

fn length(s: &str) -> usize {
    s.encode_utf16().count()
}

fn len_between(field: &'static str, value: &str, min: usize, max: usize) -> Check {
    let n = length(value);
    if n < min {
        let unit = if min == 1 { "character" } else { "characters" };
        return Err(Error::validation(
            field,
            format!("must be at least {min} {unit} long"),
        ));
    }
    if n > max {
        return Err(Error::validation(
            field,
            format!("must be at most {max} characters long (got {n})"),
        ));
    }
    Ok(())
}

fn opt_len(field: &'static str, value: &Option<String>, max: usize) -> Check {
    value
        .as_deref()
        .map_or(Ok(()), |v| len_between(field, v, 0, max))
}

fn email(field: &'static str, value: &Option<String>) -> Check {
    let Some(v) = value.as_deref() else {
        return Ok(());
    };
    len_between(field, v, 0, 100)?;
    if !is_email(v) {
        return Err(Error::validation(field, "is not a valid email address"));
    }
    Ok(())
}

/// A required text Dub trims before checking it: whitespace alone is as good as empty.
fn trimmed_len_between(field: &'static str, value: &str, max: usize) -> Check {
    len_between(field, value, 1, max)?;
    if value.chars().all(char::is_whitespace) {
        return Err(Error::validation(
            field,
            "must not be only whitespace (Dub trims it, leaving it empty)",
        ));
    }
    Ok(())
}

/// How deeply `metadata` may nest: a level takes at least two characters (`[]`), so anything
/// deeper breaks the 10,000-character rule anyway. Checked without recursion before serialising,
/// so that no value a caller builds can exhaust the stack here.
const MAX_METADATA_DEPTH: usize = MAX_METADATA_CHARS / 2;

fn depth_exceeds(map: &Map<String, Value>, limit: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = map.values().map(|v| (v, 1)).collect();
    while let Some((value, depth)) = stack.pop() {
        if depth > limit {
            return true;
        }
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(fields) => stack.extend(fields.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    false
}

fn metadata(value: &Option<Map<String, Value>>) -> Check {
    let Some(m) = value else { return Ok(()) };
    if depth_exceeds(m, MAX_METADATA_DEPTH) {
        return Err(Error::validation(
            "metadata",
            format!(
                "must be at most {MAX_METADATA_CHARS} characters as JSON (it nests more than \
                 {MAX_METADATA_DEPTH} levels deep)"
            ),
        ));
    }
    let text = serde_json::to_string(m)
        .map_err(|e| Error::validation("metadata", format!("cannot be serialised: {e}")))?;
    let n = length(&text);
    if n > MAX_METADATA_CHARS {
        return Err(Error::validation(
            "metadata",
            format!("must be at most {MAX_METADATA_CHARS} characters as JSON (got {n})"),
        ));
    }
    Ok(())
}

/// Checks a lead request against the spec's constraints.
pub(crate) fn lead(r: &TrackLeadRequest) -> Check {
    trimmed_len_between("eventName", &r.event_name, 255)?;
    trimmed_len_between("customerExternalId", &r.customer_external_id, 100)?;
    opt_len("customerName", &r.customer_name, 100)?;
    email("customerEmail", &r.customer_email)?;
    if let Some(q) = r.event_quantity
        && !(1..=100).contains(&q)
    {
        return Err(Error::validation(
            "eventQuantity",
            format!("must be from 1 to 100 (got {q})"),
        ));
    }
    metadata(&r.metadata)
}

/// Checks a sale request against the spec's constraints.
pub(crate) fn sale(r: &TrackSaleRequest) -> Check {
    // Dub's sale route does not trim the customer id (its lead route does).
    len_between("customerExternalId", &r.customer_external_id, 1, 100)?;
    if r.amount > MAX_AMOUNT {
        return Err(Error::validation(
            "amount",
            format!("must be from 0 to {MAX_AMOUNT} (got {})", r.amount),
        ));
    }
    len_between("eventName", &r.event_name, 0, 255)?;
    opt_len("customerName", &r.customer_name, 100)?;
    email("customerEmail", &r.customer_email)?;
    metadata(&r.metadata)
}

/// The spec's email pattern,
/// `^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$`,
/// written out by hand: its look-aheads are beyond the `regex` crate, and a hand-written matcher
/// costs nothing at run time. A property test checks it against the pattern itself.
pub(crate) fn is_email(s: &str) -> bool {
    if s.starts_with('.') || s.contains("..") {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = |c: char| c.is_ascii_alphanumeric() || "_'+-.".contains(c);
    let local_last_ok = |c: char| c.is_ascii_alphanumeric() || "_+-".contains(c);
    match local.chars().last() {
        Some(last) if local_last_ok(last) && local.chars().all(local_ok) => {}
        _ => return false,
    }
    let Some((labels, tld)) = domain.rsplit_once('.') else {
        return false;
    };
    let tld_ok = tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic());
    let label_ok = |l: &str| {
        l.starts_with(|c: char| c.is_ascii_alphanumeric())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    tld_ok && labels.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::is_email;

    #[test]
    fn emails() {
        for ok in [
            "ada@example.com",
            "a.b+c@x-y.co.uk",
            "o'neil_1@a.io",
            "a-@b-.cd",
        ] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "",
            "@x.com",
            ".a@x.com",
            "a..b@x.com",
            "a.@x.com",
            "a'@x.com",
            "a@x",
            "a@x.c",
            "a@-x.com",
            "a@x..com",
            "a@x.c0m",
            "a@@x.com",
            "a b@x.com",
            "é@x.com",
            "a@x.com.",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }
}
