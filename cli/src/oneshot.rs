//! `dub-track lead` and `dub-track sale`: one call, by hand, for debugging an integration.

use clap::Args;
use clap::builder::PossibleValuesParser;
use dub::models::{LeadMode, PaymentProcessor, TrackLeadRequest, TrackSaleRequest};
use serde_json::{Map, Value};

use crate::exit::{self, CliError, Status};
use crate::{Connection, error_json};

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
    #[arg(long, value_name = "MODE", value_parser = PossibleValuesParser::new(LeadMode::KNOWN))]
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
    /// The payment processor [Dub's default: custom]
    #[arg(long, value_name = "NAME", value_parser = PossibleValuesParser::new(PaymentProcessor::KNOWN))]
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

fn metadata(text: Option<&str>) -> Result<Option<Map<String, Value>>, String> {
    let Some(text) = text else { return Ok(None) };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        _ => Err("--metadata: must be a JSON object, e.g. '{\"plan\":\"pro\"}'".into()),
    }
}

/// Runs `dub-track lead`.
pub async fn lead(a: LeadArgs) -> Result<Status, CliError> {
    let metadata = metadata(a.metadata.as_deref()).map_err(exit::usage)?;
    let mut builder = TrackLeadRequest::builder()
        .click_id(a.click_id)
        .event_name(a.event_name)
        .customer_external_id(a.customer_external_id);
    if let Some(name) = a.customer_name {
        builder = builder.customer_name(name);
    }
    if let Some(email) = a.customer_email {
        builder = builder.customer_email(email);
    }
    if let Some(url) = a.customer_avatar {
        builder = builder.customer_avatar(url);
    }
    if let Some(mode) = a.mode {
        builder = builder.mode(LeadMode::from(mode));
    }
    if let Some(metadata) = metadata {
        builder = builder.metadata(metadata);
    }
    let mut request = builder.build();
    // The builder takes a count; one out of its range (`-1`) is set as given, so that the
    // crate's validation names the rule it breaks.
    request.event_quantity = a.event_quantity;
    let dub = client(&a.connection)?;
    report(dub.track().lead(request).await)
}

/// Runs `dub-track sale`.
pub async fn sale(a: SaleArgs) -> Result<Status, CliError> {
    // The request's amount is unsigned: a negative one is refused here, in the words the
    // crate uses for an amount out of range.
    let Ok(amount) = u64::try_from(a.amount) else {
        let rule = format!("must be from 0 to {MAX_AMOUNT} (got {})", a.amount);
        return Err(CliError::InvalidRequest(error_json::invalid(
            "amount", &rule,
        )));
    };
    let metadata = metadata(a.metadata.as_deref()).map_err(exit::usage)?;
    let mut builder = TrackSaleRequest::builder()
        .customer_external_id(a.customer_external_id)
        .amount(amount);
    if let Some(id) = a.invoice_id {
        builder = builder.invoice_id(id);
    }
    if let Some(currency) = a.currency {
        builder = builder.currency(currency);
    }
    if let Some(processor) = a.payment_processor {
        builder = builder.payment_processor(PaymentProcessor::from(processor));
    }
    if let Some(name) = a.event_name {
        builder = builder.event_name(name);
    }
    if let Some(name) = a.lead_event_name {
        builder = builder.lead_event_name(name);
    }
    if let Some(id) = a.click_id {
        builder = builder.click_id(id);
    }
    if let Some(name) = a.customer_name {
        builder = builder.customer_name(name);
    }
    if let Some(email) = a.customer_email {
        builder = builder.customer_email(email);
    }
    if let Some(url) = a.customer_avatar {
        builder = builder.customer_avatar(url);
    }
    if let Some(metadata) = metadata {
        builder = builder.metadata(metadata);
    }
    let dub = client(&a.connection)?;
    report(dub.track().sale(builder.build()).await)
}

fn client(connection: &Connection) -> Result<dub::Dub, CliError> {
    let builder = connection.builder().map_err(exit::usage)?;
    builder
        .build()
        .map_err(|e| exit::usage(crate::config_error(&e)))
}

fn report<T: serde::Serialize>(result: dub::Result<T>) -> Result<Status, CliError> {
    match result {
        Ok(response) => match serde_json::to_string_pretty(&response) {
            Ok(text) => {
                println!("{text}");
                Ok(Status::Ok)
            }
            Err(e) => {
                eprintln!("dub-track: Dub's response could not be printed: {e}");
                Ok(Status::Failed)
            }
        },
        // A request refused before sending (a field breaks a rule) is an input error.
        Err(e) if e.kind() == dub::ErrorKind::Validation => {
            Err(CliError::InvalidRequest(error_json::error(&e)))
        }
        Err(e) => {
            eprintln!("{}", serde_json::json!({ "error": error_json::error(&e) }));
            Ok(Status::Failed)
        }
    }
}
