//! Generates the raw client and models from `openapi.yaml` with progenitor.
//!
//! The spec is used as checked in, after a small normalisation applied here in memory (the file
//! itself is never rewritten, and nothing generated is checked in). Each step exists because
//! progenitor needs it or because a client of a live API must tolerate what the server sends:
//!
//! 1. **One shared error schema.** progenitor 0.15 panics when an operation's error responses
//!    use more than one schema; Dub's nine error responses differ only in the one-value `enum`
//!    of `error.code`. They all become `ErrorBody`, with `code` a plain string, so codes the spec
//!    does not list (`exceeded_limit` on 403, `invite_pending` on 409) decode.
//! 2. **Responses ignore unknown fields.** Upstream marks response objects
//!    `additionalProperties: false`, but the server adds fields over time (the lead response
//!    gained `link`). Dropping the keyword stops typify emitting `deny_unknown_fields`; any
//!    `enum` inside a response schema is dropped as well so new values decode.
//! 3. **Request enums are open.** `mode` and `paymentProcessor` are hoisted into the named
//!    schemas `LeadMode` and `PaymentProcessor` and replaced by the hand-written enums in
//!    `src/open_enum.rs`, which keep any value this spec predates.
//! 4. **Request constraints are checked by the wrapper, not by types.** typify turns
//!    `minLength`/`maxLength`/`pattern` into fallible newtypes, which would make every setter
//!    fallible and report errors without the field name. The keywords are removed from request
//!    schemas here; `src/models/validate.rs` enforces the same rules before anything is sent,
//!    and `tests/it/spec_constraints.rs` checks that it enforces every constraint the spec states.
//!    One keyword stays: an integer's `minimum: 0` (the sale's `amount`), which typify turns
//!    into `u64`, so a negative amount cannot be expressed at all.
//! 5. **Generated structs are `#[non_exhaustive]`** (after generation, on the syntax tree): a
//!    field Dub adds to a request or a response in a later release of the crate must not break
//!    code that builds or destructures the old shape (smithy-rs's rule). Requests are built with
//!    the hand-written builders in `src/models/builders.rs`, responses are read by field.

use serde_json::{Map, Value, json};
use std::path::PathBuf;

const SPEC: &str = "openapi.yaml";
const ERROR_SCHEMA: &str = "ErrorBody";
/// (request schema, property, named schema replaced by a hand-written type)
const OPEN_ENUMS: [(&str, &str, &str); 2] = [
    ("TrackLeadRequest", "mode", "LeadMode"),
    ("TrackSaleRequest", "paymentProcessor", "PaymentProcessor"),
];
const REQUEST_SCHEMAS: [&str; 2] = ["TrackLeadRequest", "TrackSaleRequest"];
const RESPONSE_SCHEMAS: [&str; 2] = ["TrackLeadResponse", "TrackSaleResponse"];
const CONSTRAINT_KEYWORDS: [&str; 5] = ["minLength", "maxLength", "pattern", "minimum", "maximum"];

fn main() {
    // Only the spec feeds generation; edits anywhere else in the crate must not rerun this.
    println!("cargo:rerun-if-changed={SPEC}");
    let text = std::fs::read_to_string(SPEC).unwrap_or_else(|e| fail(&format!("reading: {e}")));
    let mut spec: Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| fail(&format!("parsing: {e}")));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The mock checks emails with the spec's own pattern; normalise() drops it from the models.
    let email = spec
        .pointer("/components/schemas/TrackLeadRequest/properties/customerEmail/pattern")
        .and_then(Value::as_str)
        .unwrap_or_else(|| fail("TrackLeadRequest.customerEmail has no pattern"));
    std::fs::write(
        out.join("email_pattern.rs"),
        format!("/// `customerEmail`'s pattern in openapi.yaml.\npub(crate) const EMAIL_PATTERN: &str = {email:?};\n"),
    )
    .unwrap_or_else(|e| fail(&format!("writing: {e}")));
    normalise(&mut spec).unwrap_or_else(|e| fail(&e));
    let spec: openapiv3::OpenAPI =
        serde_json::from_value(spec).unwrap_or_else(|e| fail(&format!("not OpenAPI 3.0: {e}")));

    let mut settings = progenitor::GenerationSettings::default();
    settings
        .with_interface(progenitor::InterfaceStyle::Positional)
        .with_derive("PartialEq")
        // Our exec hook (src/generated.rs, into src/transport/) owns every exchange; the per-call settings it needs
        // travel as the generated client's inner value.
        .with_hooks(progenitor::HooksMode::Expected)
        .with_inner_type(quote::quote!(crate::transport::Call));
    // The `schemars` feature derives JSON Schema for every model.
    if std::env::var_os("CARGO_FEATURE_SCHEMARS").is_some() {
        settings.with_derive("schemars::JsonSchema");
    }
    for (_, _, name) in OPEN_ENUMS {
        settings.with_replacement(name, format!("crate::open_enum::{name}"), [].into_iter());
    }
    let tokens = progenitor::Generator::new(&settings)
        .generate_tokens(&spec)
        .unwrap_or_else(|e| fail(&format!("progenitor: {e}")));
    let mut file: syn::File =
        syn::parse2(tokens).unwrap_or_else(|e| fail(&format!("generated code: {e}")));
    mark_non_exhaustive(&mut file);
    std::fs::write(out.join("generated.rs"), prettyplease::unparse(&file))
        .unwrap_or_else(|e| fail(&format!("writing: {e}")));
}

/// Adds `#[non_exhaustive]` to every struct of the generated `types` module (step 5).
fn mark_non_exhaustive(file: &mut syn::File) {
    let types = file.items.iter_mut().find_map(|item| match item {
        syn::Item::Mod(m) if m.ident == "types" => m.content.as_mut(),
        _ => None,
    });
    let Some((_, items)) = types else {
        fail("progenitor generated no `types` module")
    };
    for item in items {
        if let syn::Item::Struct(s) = item
            && matches!(s.fields, syn::Fields::Named(_))
        {
            s.attrs.push(syn::parse_quote!(#[non_exhaustive]));
        }
    }
}

fn fail(msg: &str) -> ! {
    panic!("{SPEC}: {msg}")
}

fn schemas(spec: &mut Value) -> Result<&mut Map<String, Value>, String> {
    spec.pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| "no components/schemas".to_owned())
}

fn normalise(spec: &mut Value) -> Result<(), String> {
    share_error_schema(spec)?;
    let schemas = schemas(spec)?;
    for name in RESPONSE_SCHEMAS.iter().copied().chain([ERROR_SCHEMA]) {
        let schema = schemas.get_mut(name).ok_or(format!("no schema {name}"))?;
        walk(schema, &mut |obj| {
            obj.remove("enum");
            if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
                obj.remove("additionalProperties");
            }
        });
    }
    for (schema, property, name) in OPEN_ENUMS {
        let pointer = format!("/{schema}/properties/{property}");
        let prop = Value::Object(schemas.clone())
            .pointer(&pointer)
            .cloned()
            .ok_or(format!("no {schema}.{property}"))?;
        let reference = json!({ "$ref": format!("#/components/schemas/{name}") });
        *schemas
            .get_mut(schema)
            .and_then(|s| s.pointer_mut(&format!("/properties/{property}")))
            .ok_or(format!("no {schema}.{property}"))? = reference;
        schemas.insert(name.to_owned(), prop);
    }
    for name in REQUEST_SCHEMAS {
        let schema = schemas.get_mut(name).ok_or(format!("no schema {name}"))?;
        walk(schema, &mut |obj| {
            let unsigned =
                obj.get("type") == Some(&json!("integer")) && obj.get("minimum") == Some(&json!(0));
            for k in CONSTRAINT_KEYWORDS {
                if !(unsigned && k == "minimum") {
                    obj.remove(k);
                }
            }
        });
    }
    Ok(())
}

/// Points every error response at one `ErrorBody` schema (step 1).
fn share_error_schema(spec: &mut Value) -> Result<(), String> {
    let responses = spec
        .pointer_mut("/components/responses")
        .and_then(Value::as_object_mut)
        .ok_or("no components/responses")?;
    let mut shared: Option<Value> = None;
    for (status, response) in responses.iter_mut() {
        let schema = response
            .pointer_mut("/content/application~1json/schema")
            .ok_or(format!("error response {status} has no JSON schema"))?;
        let mut plain = schema.clone();
        if let Some(obj) = plain.as_object_mut() {
            obj.remove("x-speakeasy-name-override");
        }
        walk(&mut plain, &mut |obj| {
            obj.remove("example");
            obj.remove("enum");
        });
        match &shared {
            None => shared = Some(plain),
            Some(s) if *s == plain => {}
            Some(_) => {
                return Err(format!(
                    "error response {status} differs from the others beyond `error.code`; \
                     extend build.rs before progenitor sees two error schemas"
                ));
            }
        }
        *schema = json!({ "$ref": format!("#/components/schemas/{ERROR_SCHEMA}") });
    }
    let shared = shared.ok_or("no error responses")?;
    schemas(spec)?.insert(ERROR_SCHEMA.to_owned(), shared);
    Ok(())
}

/// Calls `f` on every schema object below `v`, depth first.
fn walk(v: &mut Value, f: &mut impl FnMut(&mut Map<String, Value>)) {
    match v {
        Value::Object(obj) => {
            f(obj);
            obj.values_mut().for_each(|x| walk(x, f));
        }
        Value::Array(items) => items.iter_mut().for_each(|x| walk(x, f)),
        _ => {}
    }
}
