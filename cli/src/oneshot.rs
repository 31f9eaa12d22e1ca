//! `dub-track lead` and `dub-track sale`: one call, by hand, for debugging an integration.

use clap::Args;
use serde_json::{Map, Value};

use crate::{Connection, EXIT_FAILED, EXIT_OK, EXIT_USAGE, error_json};

/// Track one lead: a sign-up tied to the click that brought the visitor.
///
/// Prints Dub's response as JSON on standard output (exit 0), or the error as JSON on standard
/// error with its kind, HTTP status, Dub's code and message, and whether the lead may have been
/// recorded anyway (exit 1). The client retries what is safe to retry, as the SDK does. A lead
/// Dub deduplicates (every mode but deferred) answers again with `"link": null`.
///
/// Example: dub-track lead --click-id clk_123 --event-name "Sign up" --customer-external-id user_42
#[derive(Debug, Args)]
pub struct LeadArgs {
    /// The click's id: the `dub_id` cookie of the visitor
    #[arg(long, value_name = "ID")]
    click_id: String,
    /// The event's name, e.g. "Sign up"
    #[arg(long, value_name = "NAME")]
    event_name: String,
    /// Your id for the customer
    #[arg(long, value_name = "ID")]
    customer_external_id: String,
    /// The customer's name
    #[arg(long, value_name = "NAME")]
    customer_name: Option<String>,
    /// The customer's email address
    #[arg(long, value_name = "EMAIL")]
    customer_email: Option<String>,
    /// The URL of the customer's avatar
    #[arg(long, value_name = "URL")]
    customer_avatar: Option<String>,
    /// async (default: recorded in the background), wait (recorded before Dub answers), or
    /// deferred (customer and click stored, lead recorded by a later lead; not deduplicated)
    #[arg(long, value_name = "MODE", value_parser = ["async", "wait", "deferred"])]
    mode: Option<String>,
    /// How many leads this event counts for (1 to 100)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    event_quantity: Option<i64>,
    /// A JSON object stored with the event, e.g. '{"plan":"pro"}'
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

/// Track one sale: revenue tied to a customer who came through a lead.
///
/// Prints Dub's response as JSON on standard output (exit 0), or the error as JSON on standard
/// error with its kind, HTTP status, Dub's code and message, and whether the sale may have been
/// recorded anyway (exit 1). Give --invoice-id: Dub then records one sale per invoice, and the
/// client may retry it safely; without one a sale whose outcome is unknown is not retried.
///
/// Example: dub-track sale --customer-external-id user_42 --amount 4900 --invoice-id in_1
#[derive(Debug, Args)]
pub struct SaleArgs {
    /// Your id for the customer (who must have a lead, unless --click-id is given)
    #[arg(long, value_name = "ID")]
    customer_external_id: String,
    /// The amount in the currency's smallest unit (cents)
    // Signed, so that `--amount -5` reaches the rule it breaks instead of clap's "unexpected
    // argument '-5'".
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    amount: i64,
    /// The invoice's id: Dub records one sale per invoice id, so the sale is safe to resend
    #[arg(long, value_name = "ID")]
    invoice_id: Option<String>,
    /// A three-letter currency code [Dub's default: usd]
    #[arg(long, value_name = "CODE")]
    currency: Option<String>,
    /// stripe, shopify, polar, paddle, revenuecat or custom [Dub's default: custom]
    #[arg(long, value_name = "NAME")]
    payment_processor: Option<String>,
    /// The event's name [Dub's default: Purchase]
    #[arg(long, value_name = "NAME")]
    event_name: Option<String>,
    /// The name of the lead event the sale belongs to [default: the customer's latest]
    #[arg(long, value_name = "NAME")]
    lead_event_name: Option<String>,
    /// A click id, for a sale whose customer has no lead yet (direct sale tracking)
    #[arg(long, value_name = "ID")]
    click_id: Option<String>,
    /// The customer's name
    #[arg(long, value_name = "NAME")]
    customer_name: Option<String>,
    /// The customer's email address
    #[arg(long, value_name = "EMAIL")]
    customer_email: Option<String>,
    /// The URL of the customer's avatar
    #[arg(long, value_name = "URL")]
    customer_avatar: Option<String>,
    /// A JSON object stored with the event, e.g. '{"plan":"pro"}'
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

/// The largest amount Dub takes: the largest integer JavaScript represents exactly.
const MAX_AMOUNT: u64 = (1 << 53) - 1;

fn put(m: &mut Map<String, Value>, name: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        m.insert(name.to_owned(), v.into());
    }
}

fn metadata(m: &mut Map<String, Value>, text: Option<&str>) -> Result<(), String> {
    let Some(text) = text else { return Ok(()) };
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => {
            m.insert("metadata".into(), v);
            Ok(())
        }
        _ => Err("--metadata: must be a JSON object, e.g. '{\"plan\":\"pro\"}'".into()),
    }
}

/// Runs `dub-track lead`.
pub async fn lead(a: LeadArgs) -> u8 {
    let mut m = Map::new();
    put(&mut m, "clickId", Some(a.click_id));
    put(&mut m, "eventName", Some(a.event_name));
    put(&mut m, "customerExternalId", Some(a.customer_external_id));
    put(&mut m, "customerName", a.customer_name);
    put(&mut m, "customerEmail", a.customer_email);
    put(&mut m, "customerAvatar", a.customer_avatar);
    put(&mut m, "mode", a.mode);
    put(&mut m, "eventQuantity", a.event_quantity);
    if let Err(e) = metadata(&mut m, a.metadata.as_deref()) {
        return usage(&e);
    }
    let request: dub::models::TrackLeadRequest = match serde_json::from_value(Value::Object(m)) {
        Ok(r) => r,
        Err(e) => return usage(&e.to_string()),
    };
    let dub = match client(&a.connection) {
        Ok(d) => d,
        Err(code) => return code,
    };
    report(dub.track().lead(request).await)
}

/// Runs `dub-track sale`.
pub async fn sale(a: SaleArgs) -> u8 {
    // The request's amount is unsigned: a negative one is refused here, in the words the
    // crate uses for an amount out of range.
    let Ok(amount) = u64::try_from(a.amount) else {
        let rule = format!("must be from 0 to {MAX_AMOUNT} (got {})", a.amount);
        eprintln!(
            "{}",
            serde_json::json!({ "error": error_json::invalid("amount", &rule) })
        );
        return EXIT_USAGE;
    };
    let mut m = Map::new();
    put(&mut m, "customerExternalId", Some(a.customer_external_id));
    put(&mut m, "amount", Some(amount));
    put(&mut m, "invoiceId", a.invoice_id);
    put(&mut m, "currency", a.currency);
    put(&mut m, "paymentProcessor", a.payment_processor);
    put(&mut m, "eventName", a.event_name);
    put(&mut m, "leadEventName", a.lead_event_name);
    put(&mut m, "clickId", a.click_id);
    put(&mut m, "customerName", a.customer_name);
    put(&mut m, "customerEmail", a.customer_email);
    put(&mut m, "customerAvatar", a.customer_avatar);
    if let Err(e) = metadata(&mut m, a.metadata.as_deref()) {
        return usage(&e);
    }
    let request: dub::models::TrackSaleRequest = match serde_json::from_value(Value::Object(m)) {
        Ok(r) => r,
        Err(e) => return usage(&e.to_string()),
    };
    let dub = match client(&a.connection) {
        Ok(d) => d,
        Err(code) => return code,
    };
    report(dub.track().sale(request).await)
}

fn usage(message: &str) -> u8 {
    eprintln!("dub-track: {message}");
    EXIT_USAGE
}

fn client(connection: &Connection) -> Result<dub::Dub, u8> {
    let builder = connection.builder().map_err(|e| usage(&e))?;
    builder.build().map_err(|e| usage(&crate::config_error(&e)))
}

fn report<T: serde::Serialize>(result: dub::Result<T>) -> u8 {
    match result {
        Ok(response) => match serde_json::to_string_pretty(&response) {
            Ok(text) => {
                println!("{text}");
                EXIT_OK
            }
            Err(e) => {
                eprintln!("dub-track: Dub's response could not be printed: {e}");
                EXIT_FAILED
            }
        },
        Err(e) => {
            let body = serde_json::json!({ "error": error_json::error(&e) });
            eprintln!("{body}");
            // A request refused before sending (a field breaks a rule) is an input error.
            if e.kind() == dub::ErrorKind::Validation {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            }
        }
    }
}
