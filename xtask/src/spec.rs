//! Extracting the track operations from Dub's upstream spec and re-applying our corrections.
//!
//! Upstream is the spec the official SDKs are generated from. We keep only the operations the
//! crate wraps, give their bodies stable component names (so the generated Rust types are
//! `TrackLeadRequest`, `TrackLeadResponse`, ...), copy every component they reference, and apply
//! the corrections in [`CORRECTIONS`]. Each correction leaves an `x-dub-correction` note on the
//! schema it changed, so a reader (and the spec-coverage test) can tell our edits from upstream
//! text. A correction upstream has caught up with is reported and leaves no note.

use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeSet;

/// The paths this crate wraps.
pub const TRACK_PATHS: [&str; 2] = ["/track/lead", "/track/sale"];

/// The extension key that marks a corrected schema.
pub const CORRECTION_KEY: &str = "x-dub-correction";

/// One known erratum of the upstream spec, fixed on a property of a named request schema.
pub struct Correction {
    pub schema: &'static str,
    pub property: &'static str,
    pub note: &'static str,
    /// Applies the fix; returns false when upstream already says what the fix would.
    pub apply: fn(&mut Mapping) -> bool,
}

/// What Dub's server accepts as `paymentProcessor` (its request schema, read in November 2026),
/// plus `lemonsqueezy`, which the latest official SDKs send; in the order we list them.
pub const PAYMENT_PROCESSORS: [&str; 9] = [
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

pub const CORRECTIONS: [Correction; 2] = [
    Correction {
        schema: "TrackLeadRequest",
        property: "eventQuantity",
        note: "upstream types eventQuantity as `number`; the server takes an integer 1..100 \
               (N records N lead events)",
        apply: |prop| {
            let before = prop.clone();
            prop.insert("type".into(), "integer".into());
            prop.insert("minimum".into(), 1.into());
            prop.insert("maximum".into(), 100.into());
            *prop != before
        },
    },
    Correction {
        schema: "TrackSaleRequest",
        property: "paymentProcessor",
        note: "upstream's enum lags the server: it accepts stripe, shopify, polar, paddle, apple, \
               revenuecat, dub, custom, and the current official SDKs also send lemonsqueezy",
        apply: |prop| {
            let mut values: Vec<Value> = match prop.get("enum") {
                Some(Value::Sequence(seq)) => seq.clone(),
                _ => Vec::new(),
            };
            let mut changed = false;
            for p in PAYMENT_PROCESSORS {
                if !values.iter().any(|v| v.as_str() == Some(p)) {
                    values.push(p.into());
                    changed = true;
                }
            }
            prop.insert("enum".into(), Value::Sequence(values));
            changed
        },
    },
];

/// The result of an extraction: the new spec and what happened to each correction.
#[derive(Debug)]
pub struct Extracted {
    pub spec: Value,
    pub report: Vec<String>,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping()?.get(key)
}

fn get_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    v.as_mapping_mut()?.get_mut(key)
}

fn pascal(operation_id: &str) -> String {
    let mut chars = operation_id.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Moves an inline schema found at `holder[content][application/json][schema]` into
/// `components/schemas/<name>` and leaves a `$ref` behind.
fn hoist(holder: &mut Value, name: &str, schemas: &mut Mapping) -> Result<(), String> {
    let schema = get_mut(holder, "content")
        .and_then(|c| get_mut(c, "application/json"))
        .and_then(|c| c.as_mapping_mut())
        .ok_or_else(|| format!("{name}: no application/json content"))?;
    let inline = schema
        .remove("schema")
        .ok_or_else(|| format!("{name}: no schema"))?;
    if get(&inline, "$ref").is_some() {
        // Already a named component upstream: rename by reference, keep its content.
        schema.insert("schema".into(), inline);
        return Ok(());
    }
    schemas.insert(name.into(), inline);
    let mut reference = Mapping::new();
    reference.insert("$ref".into(), format!("#/components/schemas/{name}").into());
    schema.insert("schema".into(), Value::Mapping(reference));
    Ok(())
}

fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                if k.as_str() == Some("$ref")
                    && let Some(r) = val.as_str()
                {
                    out.insert(r.to_owned());
                }
                collect_refs(val, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Extracts the track operations from a whole upstream spec (JSON or YAML text).
pub fn extract(upstream_text: &str) -> Result<Extracted, String> {
    let upstream: Value =
        serde_yaml_ng::from_str(upstream_text).map_err(|e| format!("parsing upstream: {e}"))?;
    let version = get(&upstream, "openapi")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !version.starts_with("3.0") {
        return Err(format!(
            "upstream is OpenAPI {version:?}; progenitor reads only 3.0.x"
        ));
    }
    let up_paths = get(&upstream, "paths").ok_or("upstream has no paths")?;

    let mut paths = Mapping::new();
    let mut schemas = Mapping::new();
    for path in TRACK_PATHS {
        let mut item = get(up_paths, path)
            .cloned()
            .ok_or_else(|| format!("upstream has no path {path}"))?;
        let op = get_mut(&mut item, "post").ok_or_else(|| format!("{path}: no POST"))?;
        let id = get(op, "operationId")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{path}: no operationId"))?;
        let base = pascal(id);
        let body = get_mut(op, "requestBody").ok_or_else(|| format!("{path}: no requestBody"))?;
        hoist(body, &format!("{base}Request"), &mut schemas)?;
        let ok = get_mut(op, "responses")
            .and_then(|r| get_mut(r, "200"))
            .ok_or_else(|| format!("{path}: no 200 response"))?;
        hoist(ok, &format!("{base}Response"), &mut schemas)?;
        paths.insert(path.into(), item);
    }

    // Copy every component reachable from the paths, transitively.
    let up_components = get(&upstream, "components");
    let mut components = Mapping::new();
    let mut seen = BTreeSet::new();
    let mut pending = BTreeSet::new();
    collect_refs(&Value::Mapping(paths.clone()), &mut pending);
    collect_refs(&Value::Mapping(schemas.clone()), &mut pending);
    while let Some(r) = pending.pop_first() {
        if !seen.insert(r.clone()) {
            continue;
        }
        let parts: Vec<&str> = r.trim_start_matches("#/components/").split('/').collect();
        let [kind, name] = parts[..] else {
            return Err(format!("unsupported $ref {r}"));
        };
        if kind == "schemas" && schemas.contains_key(name) {
            continue;
        }
        let found = up_components
            .and_then(|c| get(c, kind))
            .and_then(|c| get(c, name))
            .ok_or_else(|| format!("dangling $ref {r}"))?;
        collect_refs(found, &mut pending);
        let section = components
            .entry(kind.into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if let Value::Mapping(m) = section {
            m.insert(name.into(), found.clone());
        }
    }

    // Security schemes named by the operations.
    let mut schemes = Mapping::new();
    let mut wanted = BTreeSet::new();
    for item in paths.values() {
        if let Some(Value::Sequence(reqs)) = get(item, "post").and_then(|op| get(op, "security")) {
            for req in reqs.iter().filter_map(Value::as_mapping) {
                wanted.extend(req.keys().filter_map(Value::as_str).map(str::to_owned));
            }
        }
    }
    for name in wanted {
        let scheme = up_components
            .and_then(|c| get(c, "securitySchemes"))
            .and_then(|c| get(c, &name))
            .ok_or_else(|| format!("missing security scheme {name}"))?;
        schemes.insert(name.into(), scheme.clone());
    }

    let mut report = Vec::new();
    for c in &CORRECTIONS {
        let prop = schemas
            .get_mut(c.schema)
            .and_then(|s| get_mut(s, "properties"))
            .and_then(|p| get_mut(p, c.property))
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| format!("correction target {}.{} is gone", c.schema, c.property))?;
        if (c.apply)(prop) {
            prop.insert(CORRECTION_KEY.into(), c.note.into());
            report.push(format!("corrected {}.{}", c.schema, c.property));
        } else {
            report.push(format!(
                "upstream already fixes {}.{}: correction not applied, consider removing it",
                c.schema, c.property
            ));
        }
    }

    // Hoisted bodies first, then referenced upstream schemas, then the other sections.
    if let Some(Value::Mapping(referenced)) = components.remove("schemas") {
        schemas.extend(referenced);
    }
    let mut all_components = Mapping::new();
    all_components.insert("schemas".into(), Value::Mapping(schemas));
    all_components.extend(components);
    all_components.insert("securitySchemes".into(), Value::Mapping(schemes));

    let mut info = get(&upstream, "info").cloned().unwrap_or_default();
    if let Value::Mapping(m) = &mut info {
        m.insert(
            "x-dub-extracted".into(),
            "paths /track/lead and /track/sale with the components they reference, \
             by `cargo xtask update-spec`"
                .into(),
        );
    }
    let mut spec = Mapping::new();
    spec.insert("openapi".into(), version.into());
    spec.insert("info".into(), info);
    if let Some(servers) = get(&upstream, "servers") {
        spec.insert("servers".into(), servers.clone());
    }
    spec.insert("paths".into(), Value::Mapping(paths));
    spec.insert("components".into(), Value::Mapping(all_components));
    Ok(Extracted {
        spec: Value::Mapping(spec),
        report,
    })
}

/// The text written to `openapi.yaml`.
pub fn render(spec: &Value) -> Result<String, String> {
    let body = serde_yaml_ng::to_string(spec).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Dub's track operations, extracted from Dub's upstream OpenAPI spec by\n\
         # `cargo xtask update-spec <upstream-openapi.json>`. build.rs generates the client from\n\
         # this file. Our corrections of upstream errata carry an `{CORRECTION_KEY}` note.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../fixtures/upstream-mini.json");

    fn extracted() -> Value {
        extract(FIXTURE).expect("fixture extracts").spec
    }

    fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
        path.iter().fold(v, |v, k| {
            get(v, k).unwrap_or_else(|| panic!("missing {k} in {path:?}"))
        })
    }

    #[test]
    fn keeps_only_track_paths_and_names_bodies() {
        let spec = extracted();
        let paths: Vec<_> = at(&spec, &["paths"])
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(paths, ["/track/lead", "/track/sale"]);
        let schema_ref = at(
            &spec,
            &[
                "paths",
                "/track/sale",
                "post",
                "requestBody",
                "content",
                "application/json",
                "schema",
                "$ref",
            ],
        );
        assert_eq!(
            schema_ref.as_str(),
            Some("#/components/schemas/TrackSaleRequest")
        );
        let names: Vec<_> = at(&spec, &["components", "schemas"])
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "TrackLeadRequest",
                "TrackLeadResponse",
                "TrackSaleRequest",
                "TrackSaleResponse",
                "ErrorCode"
            ]
        );
    }

    #[test]
    fn copies_referenced_components_transitively_and_nothing_else() {
        let spec = extracted();
        let responses = at(&spec, &["components", "responses"])
            .as_mapping()
            .unwrap();
        assert!(responses.contains_key("400"));
        // The fixture's unrelated path references 418; it must not come along.
        assert!(!responses.contains_key("418"));
        let schemes = at(&spec, &["components", "securitySchemes"])
            .as_mapping()
            .unwrap();
        assert_eq!(schemes.len(), 1);
        assert!(schemes.contains_key("token"));
    }

    #[test]
    fn applies_and_marks_corrections() {
        let spec = extracted();
        let q = at(
            &spec,
            &[
                "components",
                "schemas",
                "TrackLeadRequest",
                "properties",
                "eventQuantity",
            ],
        );
        assert_eq!(at(q, &["type"]).as_str(), Some("integer"));
        assert_eq!(at(q, &["maximum"]).as_u64(), Some(100));
        assert!(get(q, CORRECTION_KEY).is_some());
        let pp = at(
            &spec,
            &[
                "components",
                "schemas",
                "TrackSaleRequest",
                "properties",
                "paymentProcessor",
            ],
        );
        let mut values: Vec<_> = at(pp, &["enum"])
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        // Upstream's values keep their order; the missing ones follow.
        assert_eq!(
            &values[..5],
            ["stripe", "shopify", "polar", "paddle", "custom"]
        );
        values.sort_unstable();
        let mut expected = PAYMENT_PROCESSORS;
        expected.sort_unstable();
        assert_eq!(values, expected);
        assert!(get(pp, CORRECTION_KEY).is_some());
    }

    #[test]
    fn a_correction_upstream_already_has_is_not_marked() {
        let fixed = FIXTURE.replace(r#""eventQuantity": {"type": "number", "nullable": true}"#,
            r#""eventQuantity": {"type": "integer", "minimum": 1, "maximum": 100, "nullable": true}"#);
        assert_ne!(fixed, FIXTURE, "fixture text changed; update this test");
        let out = extract(&fixed).unwrap();
        let q = at(
            &out.spec,
            &[
                "components",
                "schemas",
                "TrackLeadRequest",
                "properties",
                "eventQuantity",
            ],
        );
        assert!(get(q, CORRECTION_KEY).is_none());
        assert!(
            out.report
                .iter()
                .any(|l| l.contains("already fixes TrackLeadRequest.eventQuantity"))
        );
    }

    #[test]
    fn rejects_openapi_31_and_missing_paths() {
        let v31 = FIXTURE.replace(r#""openapi": "3.0.3""#, r#""openapi": "3.1.0""#);
        assert!(extract(&v31).unwrap_err().contains("3.0.x"));
        let no_sale = FIXTURE.replace("/track/sale", "/track/sold");
        assert!(extract(&no_sale).unwrap_err().contains("/track/sale"));
    }

    #[test]
    fn rendering_round_trips() {
        let spec = extracted();
        let text = render(&spec).unwrap();
        let back: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, spec);
    }
}
