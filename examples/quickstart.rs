//! The SDK end to end: `cargo run --example quickstart`.
//!
//! With `DUB_API_KEY` unset it needs no account and no network: it starts the crate's local
//! Dub server ([`dub::mock::MockDub`]) on 127.0.0.1 and walks through a lead, a sale, a repeated
//! sale answered from the invoice cache, a rate-limited call that is retried, a failure the
//! SDK refuses to retry because it could double-count revenue, a validation error, and the
//! background tracker carrying sales through an outage of Dub.
//!
//! With `DUB_API_KEY` set it talks to Dub (or `DUB_BASE_URL`): it tracks one lead for the
//! click in `DUB_CLICK_ID` (empty: Dub looks up the customer's earlier click) and one sale.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dub::mock::{Fault, MockDub, RandomFaults, RetryAfter};
use dub::models::{PaymentProcessor, TrackLeadRequest, TrackSaleRequest};
use dub::{Dub, ErrorKind};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match std::env::var("DUB_API_KEY") {
        Ok(_) => live().await,
        Err(_) => local().await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn local() -> Result<()> {
    let mock = MockDub::start().await?;
    println!("DUB_API_KEY is not set, so this runs against the crate's local Dub server");
    println!(
        "(dub::mock::MockDub) at {}. Set DUB_API_KEY to talk to Dub.\n",
        mock.url()
    );
    let dub = Dub::builder()
        .token(mock.token())
        .server_url(mock.url())
        .build()?;

    println!("1. A visitor who came through a short link signs up: track a lead.");
    let lead = dub
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("clk_quickstart")
                .event_name("Sign up")
                .customer_external_id("user_42")
                .customer_name("Ada Lovelace")
                .customer_email("ada@example.com")
                .build(),
        )
        .await?;
    println!(
        "   recorded: click {} -> customer {} ({})",
        lead.click.id,
        lead.customer.external_id.as_deref().unwrap_or("?"),
        lead.customer.name.as_deref().unwrap_or("?"),
    );

    println!("\n2. They pay: track a sale, keyed by the invoice id.");
    let sale = TrackSaleRequest::builder()
        .customer_external_id("user_42")
        .amount(4900)
        .payment_processor(PaymentProcessor::Stripe)
        .invoice_id("in_1001")
        .build();
    let first = dub.track().sale(sale.clone()).await?;
    let recorded = first.sale.as_ref().ok_or("the sale was not attributed")?;
    println!(
        "   recorded: {} {} via {} for invoice {}",
        recorded.amount / 100.0,
        recorded.currency.to_uppercase(),
        recorded.payment_processor,
        recorded.invoice_id.as_deref().unwrap_or("-"),
    );

    println!("\n3. The same invoice is sent again (a webhook delivered twice).");
    let again = dub.track().sale(sale).await?;
    println!(
        "   Dub answered from its invoice cache: same response = {}, sales recorded = {}",
        again == first,
        mock.sales().len(),
    );

    println!("\n4. Dub rate-limits the next call (429 with Retry-After as Dub sends it).");
    mock.push_fault(Fault::RateLimited(RetryAfter::dub_after(
        Duration::from_millis(700),
    )));
    let before = mock.request_count();
    let started = Instant::now();
    dub.track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("user_42")
                .amount(1900)
                .invoice_id("in_1002")
                .build(),
        )
        .await?;
    let limiter = dub.rate_limiter().expect("a configured client");
    println!(
        "   retried after {} ms, then recorded: {} HTTP attempts for one call",
        started.elapsed().as_millis(),
        mock.request_count() - before,
    );
    println!(
        "   the whole client now paces itself: limit {:?}/min learned from the 429, {} 429 seen",
        limiter.limit_per_minute, limiter.throttled
    );

    println!("\n5. Dub fails with a 500 after recording a sale that has no invoice id.");
    mock.push_fault(Fault::ErrorAfterRecord(500));
    let before = mock.request_count();
    let err = dub
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("user_42")
                .amount(990)
                .build(),
        )
        .await
        .expect_err("the fault makes this call fail");
    println!("   error: {err}");
    println!(
        "   not retried ({} attempt), because a retry could count the revenue twice;",
        mock.request_count() - before,
    );
    println!(
        "   may_have_been_recorded() = {}: reconcile before sending it again.",
        err.may_have_been_recorded()
    );

    println!("\n6. A typo in an email address is caught before anything is sent.");
    let before = mock.request_count();
    let err = dub
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("clk_quickstart")
                .event_name("Sign up")
                .customer_external_id("user_43")
                .customer_email("ada@example")
                .build(),
        )
        .await
        .expect_err("the email is invalid");
    assert_eq!(err.kind(), ErrorKind::Validation);
    println!(
        "   {:?} on field {}: {err}",
        err.kind(),
        err.field().unwrap_or("?")
    );
    println!("   requests sent: {}", mock.request_count() - before);

    println!("\n7. Dub is down (503s) while a burst of sales comes in: hand them to a tracker.");
    mock.random_faults(RandomFaults::new(7, 1.0).kinds([Fault::Status(503)]));
    let tracker = dub
        .tracker()
        .backoff(Duration::from_millis(100), Duration::from_millis(500))
        .start()?;
    let started = Instant::now();
    let mut receipts = Vec::new();
    for n in 0..5 {
        let sale = TrackSaleRequest::builder()
            .customer_external_id("user_42")
            .amount(500)
            .invoice_id(format!("in_20{n}"))
            .build();
        receipts.push(tracker.sale(sale).await?);
    }
    println!(
        "   5 sales handed over in {} us, none waiting for Dub",
        started.elapsed().as_micros()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    mock.clear_faults();
    println!("   Dub is back after 800 ms");
    let mut delivered = 0;
    for receipt in receipts {
        delivered += usize::from(receipt.await.is_delivered());
    }
    let report = tracker.shutdown(Duration::from_secs(5)).await;
    println!(
        "   {delivered} of 5 delivered, in order, each recorded once; {} left undelivered",
        report.undelivered.len()
    );

    println!(
        "\nDone: the local server recorded {} lead(s) and {} sale(s).",
        mock.leads().len(),
        mock.sales().len()
    );
    Ok(())
}

async fn live() -> Result<()> {
    let dub = Dub::from_env()?;
    println!("Talking to Dub with the key in DUB_API_KEY.");
    let click = std::env::var("DUB_CLICK_ID").unwrap_or_default();
    let customer =
        std::env::var("DUB_CUSTOMER_ID").unwrap_or_else(|_| "dub-rust-quickstart".into());
    match dub
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id(click)
                .event_name("Sign up")
                .customer_external_id(customer.as_str())
                .build(),
        )
        .await
    {
        Ok(lead) => println!("lead: {lead:?}"),
        Err(e) => println!("lead failed: {e} (code {:?})", e.code()),
    }
    let invoice = format!("dub-rust-quickstart-{}", std::process::id());
    let sale = dub
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id(customer)
                .amount(100)
                .invoice_id(invoice)
                .build(),
        )
        .await?;
    println!("sale: {sale:?}");
    Ok(())
}
