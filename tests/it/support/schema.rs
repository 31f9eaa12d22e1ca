//! The OpenAPI 3.0 schemas of `openapi.yaml`, used two ways by the tests:
//!
//! - [`violations`] checks a JSON value against a schema: a small validator for exactly the
//!   keywords the spec uses. A keyword it does not know fails the test, so a constraint added to
//!   the spec can never be skipped silently.
//! - [`arb_instance`] is a proptest strategy for JSON values a schema allows, with unknown
//!   fields added to every object, as a server that gained fields would send them.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// `openapi.yaml`, as JSON.
pub fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("openapi.yaml is readable");
    serde_yaml_ng::from_str(&text).expect("openapi.yaml parses")
}

/// `components/schemas/<name>`.
pub fn component(spec: &Value, name: &str) -> Value {
    let schema = &spec["components"]["schemas"][name];
    assert!(schema.is_object(), "openapi.yaml has no schema {name}");
    schema.clone()
}

/// Follows a `$ref` (only local `#/...` references occur in the spec).
pub fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {r}"));
            let target = spec
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(spec, target)
        }
        None => schema,
    }
}

/// How string lengths are counted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Length {
    /// As JSON Schema (and Prism) counts: Unicode code points.
    CodePoints,
    /// As Dub's JavaScript server counts: UTF-16 code units (`string.length`).
    Utf16,
}

impl Length {
    fn of(self, s: &str) -> u64 {
        match self {
            Self::CodePoints => s.chars().count() as u64,
            Self::Utf16 => s.encode_utf16().count() as u64,
        }
    }
}

/// Keywords that describe without constraining.
const ANNOTATIONS: &[&str] = &["description", "example", "default", "title"];

/// Every way `value` breaks `schema`, as `path: rule` lines (empty when it conforms).
pub fn violations(spec: &Value, schema: &Value, value: &Value, length: Length) -> Vec<String> {
    let mut out = Vec::new();
    check(spec, schema, value, length, "$", &mut out);
    out
}

fn check(
    spec: &Value,
    schema: &Value,
    value: &Value,
    len: Length,
    at: &str,
    out: &mut Vec<String>,
) {
    let schema = resolve(spec, schema);
    let obj = schema
        .as_object()
        .unwrap_or_else(|| panic!("schema at {at} is not an object"));
    for key in obj.keys() {
        let known = ANNOTATIONS.contains(&key.as_str())
            || key.starts_with("x-")
            || [
                "type",
                "nullable",
                "properties",
                "required",
                "additionalProperties",
                "minLength",
                "maxLength",
                "pattern",
                "minimum",
                "maximum",
                "enum",
                "format",
            ]
            .contains(&key.as_str());
        assert!(
            known,
            "the test validator does not know the keyword {key:?} (at {at}); teach it before \
             trusting it"
        );
    }
    if value.is_null() {
        if obj.get("nullable") != Some(&json!(true)) && !obj.is_empty() {
            out.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    if let Some(t) = obj.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "number" => value.is_number(),
            "integer" => {
                value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            other => panic!("unknown type {other} at {at}"),
        };
        if !ok {
            out.push(format!("{at}: not of type {t}: {value}"));
            return;
        }
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array)
        && !values.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {values:?}"));
    }
    if let Some(s) = value.as_str() {
        let n = len.of(s);
        if let Some(min) = obj.get("minLength").and_then(Value::as_u64)
            && n < min
        {
            out.push(format!("{at}: length {n} < minLength {min}"));
        }
        if let Some(max) = obj.get("maxLength").and_then(Value::as_u64)
            && n > max
        {
            out.push(format!("{at}: length {n} > maxLength {max}"));
        }
        if let Some(p) = obj.get("pattern").and_then(Value::as_str) {
            let re = fancy_regex::Regex::new(p).expect("the spec's pattern compiles");
            if !re.is_match(s).expect("the pattern runs") {
                out.push(format!("{at}: {s:?} does not match {p}"));
            }
        }
        // `format` (email, uri) is an annotation in OpenAPI 3.0: the spec states the real email
        // rule as `pattern`, which is checked above.
    }
    if let Some(x) = value.as_f64() {
        if let Some(min) = obj.get("minimum").and_then(Value::as_f64)
            && x < min
        {
            out.push(format!("{at}: {value} < minimum {min}"));
        }
        if let Some(max) = obj.get("maximum").and_then(Value::as_f64)
            && x > max
        {
            out.push(format!("{at}: {value} > maximum {max}"));
        }
        // Beyond 2^53 an f64 comparison is not exact: compare integers as integers.
        if let (Some(v), Some(max)) = (value.as_u64(), obj.get("maximum").and_then(Value::as_u64))
            && v > max
            && x <= max as f64
        {
            out.push(format!("{at}: {value} > maximum {max}"));
        }
    }
    if let Some(map) = value.as_object() {
        let props = obj.get("properties").and_then(Value::as_object);
        for name in obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().expect("required names are strings");
            if !map.contains_key(name) {
                out.push(format!("{at}: required property {name} is missing"));
            }
        }
        for (k, v) in map {
            let path = format!("{at}.{k}");
            match (
                props.and_then(|p| p.get(k)),
                obj.get("additionalProperties"),
            ) {
                (Some(s), _) => check(spec, s, v, len, &path, out),
                (None, Some(Value::Bool(false))) => {
                    out.push(format!("{path}: not allowed (additionalProperties: false)"))
                }
                (None, Some(s @ Value::Object(_))) => check(spec, s, v, len, &path, out),
                (None, _) => {}
            }
        }
    }
}

/// Arbitrary JSON (for free-form objects such as `metadata`), nested at most `depth` deep.
pub fn arb_json(depth: u32) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(depth, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A name no schema property has, so that an added field is unknown to the client.
fn unknown_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_]{1,10}".prop_map(|s| format!("unknown_{s}"))
}

/// JSON values that `schema` allows, with 0 to 2 unknown fields added to every object.
///
/// Strings are arbitrary Unicode (also where the spec says `format: uri`: the client keeps
/// them as text and must not choke on any); numbers are any finite `f64`, integers any `i64`
/// within `minimum`/`maximum`.
pub fn arb_instance(spec: &Value, schema: &Value) -> BoxedStrategy<Value> {
    let schema = resolve(spec, schema).clone();
    let obj = schema.as_object().expect("schemas are objects").clone();
    let inner: BoxedStrategy<Value> =
        if let Some(values) = obj.get("enum").and_then(Value::as_array) {
            prop::sample::select(values.clone()).boxed()
        } else {
            match obj.get("type").and_then(Value::as_str) {
                Some("string") => ".{0,16}".prop_map(Value::from).boxed(),
                Some("boolean") => any::<bool>().prop_map(Value::from).boxed(),
                Some("integer") => {
                    let min = obj
                        .get("minimum")
                        .and_then(Value::as_i64)
                        .unwrap_or(i64::MIN);
                    let max = obj
                        .get("maximum")
                        .and_then(Value::as_i64)
                        .unwrap_or(i64::MAX);
                    (min..=max).prop_map(Value::from).boxed()
                }
                Some("number") => prop_oneof![
                    any::<i64>().prop_map(Value::from),
                    any::<f64>()
                        .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                        .prop_map(Value::from),
                ]
                .boxed(),
                Some("object") => arb_object(spec, &obj),
                None if obj.keys().all(|k| ANNOTATIONS.contains(&k.as_str())) => arb_json(2),
                other => panic!("arb_instance does not know type {other:?}"),
            }
        };
    if obj.get("nullable") == Some(&json!(true)) {
        prop_oneof![1 => Just(Value::Null), 3 => inner].boxed()
    } else {
        inner
    }
}

fn arb_object(spec: &Value, obj: &Map<String, Value>) -> BoxedStrategy<Value> {
    let required: Vec<String> = obj
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let props: Vec<(String, Value)> = obj
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let free_form = matches!(obj.get("additionalProperties"), Some(Value::Object(_)));
    let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = Vec::new();
    for (name, schema) in props {
        let value = arb_instance(spec, &schema);
        let n = name.clone();
        let present = value.prop_map(move |v| Some((n.clone(), v)));
        fields.push(if required.contains(&name) {
            present.boxed()
        } else {
            prop_oneof![Just(None), present].boxed()
        });
    }
    let extra = if free_form {
        prop::collection::btree_map(".{0,8}", arb_json(2), 0..4).boxed()
    } else {
        prop::collection::btree_map(unknown_name(), arb_json(1), 0..3).boxed()
    };
    (fields, extra)
        .prop_map(|(fields, extra)| {
            let mut map: Map<String, Value> = extra.into_iter().collect();
            for (k, v) in fields.into_iter().flatten() {
                map.insert(k, v);
            }
            Value::Object(map)
        })
        .boxed()
}

/// `value` without the fields `schema` does not name (inside free-form objects everything is
/// kept), i.e. what a client that ignores unknown fields should have understood.
pub fn known_part(spec: &Value, schema: &Value, value: &Value) -> Value {
    let schema = resolve(spec, schema);
    match value {
        Value::Object(map) => {
            if matches!(schema.get("additionalProperties"), Some(Value::Object(_)))
                && schema.get("properties").is_none()
            {
                return value.clone();
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let mut out = Map::new();
            for (k, v) in map {
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    out.insert(k.clone(), known_part(spec, s, v));
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Whether two JSON values are equal, numbers compared as `f64` up to rounding (a JSON number
/// may be parsed one ulp off, and an integer typed `number` comes back as a float).
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
