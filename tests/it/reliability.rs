//! Nothing lost, nothing counted twice: thousands of calls through random faults.
//!
//! 2,000 leads and 2,000 sales with invoice ids, 32 in flight, through a local Dub server that
//! fails a fixed-seed random 30% of attempts with every fault kind it knows (errors before and
//! after recording, resets before and after recording, delays beyond the client's timeout,
//! 429s, truncated and non-JSON bodies, HTML from a proxy). Then 500 sales without invoice ids
//! through the ambiguous faults only. For every call:
//!
//! - `Ok` means Dub recorded the event exactly once;
//! - `Err` means it recorded it at most once, and `may_have_been_recorded()` is true whenever it
//!   did (otherwise the caller, told "not recorded", would send it again: a duplicate).
#![cfg(feature = "mock")]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support;
use dub::mock::{Fault, MockDub, RandomFaults, RetryAfter};
use dub::models::{TrackLeadRequest, TrackSaleRequest};
use dub::{Dub, Jitter, RetryBudget, RetryConfig};
use futures_util::StreamExt;

const IN_FLIGHT: usize = 32;
const MAX_ATTEMPTS: u32 = 8;
const TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Default, Debug)]
struct Tally {
    calls: usize,
    ok: usize,
    errors: usize,
    recorded: usize,
    duplicated: usize,
    lost: usize,
    by_kind: std::collections::BTreeMap<String, usize>,
    /// Whether the calls are ones Dub deduplicates (so every failure but Decode is retried).
    idempotent: bool,
    /// Errors of idempotent calls, other than Decode, that stopped before using every attempt.
    gave_up_early: usize,
}

impl Tally {
    /// Checks one call's result against how many times the server recorded it.
    fn check(&mut self, name: &str, result: &dub::Result<()>, times: usize) {
        self.calls += 1;
        self.recorded += usize::from(times > 0);
        if times > 1 {
            self.duplicated += 1;
            eprintln!("DUPLICATED {name}: recorded {times} times ({result:?})");
        }
        match result {
            Ok(()) => {
                self.ok += 1;
                if times == 0 {
                    self.lost += 1;
                    eprintln!("LOST {name}: Ok but never recorded");
                }
            }
            Err(e) => {
                self.errors += 1;
                *self.by_kind.entry(format!("{:?}", e.kind())).or_default() += 1;
                if self.idempotent
                    && e.kind() != dub::ErrorKind::Decode
                    && e.attempts() < MAX_ATTEMPTS
                {
                    self.gave_up_early += 1;
                    eprintln!("{name}: {e:?}");
                }
                if times > 0 && !e.may_have_been_recorded() {
                    self.lost += 1;
                    eprintln!("LOST {name}: recorded, but the error says it was not: {e:?}");
                }
            }
        }
    }
}

fn client(mock: &MockDub, retry: RetryConfig) -> Dub {
    support::client(&mock.url())
        .attempt_timeout(TIMEOUT)
        // Random 429 faults carry no real limit; pacing is tests/rate_limits.rs's subject.
        .rate_limit(dub::RateLimit::off())
        .retry_config(retry)
        .retry_budget(RetryBudget::unlimited())
        .build()
        .unwrap()
}

fn fast_retries() -> RetryConfig {
    RetryConfig::default()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_interval(Duration::from_millis(20))
        .with_max_interval(Duration::from_millis(200))
        .with_max_elapsed_time(Duration::from_secs(20))
        .with_jitter(Jitter::Full)
}

/// Runs `calls` with `IN_FLIGHT` at a time and returns their results in order.
async fn run<F>(calls: Vec<F>) -> Vec<dub::Result<()>>
where
    F: std::future::Future<Output = dub::Result<()>>,
{
    let mut results: Vec<_> = futures_util::stream::iter(calls.into_iter().enumerate())
        .map(|(i, call)| async move { (i, call.await) })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_nothing_duplicated() {
    let mock = MockDub::start().await.unwrap();
    let dub = Arc::new(client(&mock, fast_retries()));
    // Customers exist before the storm, so every sale is attributable.
    for c in 0..10 {
        dub.track()
            .lead(
                TrackLeadRequest::builder()
                    .click_id(format!("clk_{c}"))
                    .event_name("Sign up")
                    .customer_external_id(format!("cust-{c}"))
                    .build(),
            )
            .await
            .unwrap();
    }
    let warmup = mock.request_count();
    let every_kind = vec![
        Fault::Status(503),
        Fault::Status(500),
        Fault::RateLimited(RetryAfter::Seconds(1)),
        Fault::RateLimited(RetryAfter::dub_after(Duration::from_millis(100))),
        Fault::RateLimited(RetryAfter::Millis(50)),
        Fault::Delay(TIMEOUT * 3),
        Fault::ResetBeforeRecord,
        Fault::ResetAfterRecord,
        Fault::ErrorAfterRecord(500),
        Fault::ErrorAfterRecord(502),
        Fault::TruncatedBody,
        Fault::NonJsonBody,
        Fault::Html(502),
    ];
    mock.random_faults(RandomFaults::new(20261124, 0.3).kinds(every_kind));

    let leads = (0..2000).map(|i| {
        let dub = dub.clone();
        async move {
            let req = TrackLeadRequest::builder()
                .click_id(format!("clk_{i}"))
                .event_name("Sign up")
                .customer_external_id(format!("lead-{i}"))
                .build();
            dub.track().lead(req).await.map(drop)
        }
    });
    let lead_results = run(leads.collect()).await;
    let sales = (0..2000).map(|i| {
        let dub = dub.clone();
        async move {
            let req = TrackSaleRequest::builder()
                .customer_external_id(format!("cust-{}", i % 10))
                .amount(100 + i)
                .invoice_id(format!("inv-{i}"))
                .build();
            dub.track().sale(req).await.map(drop)
        }
    });
    let sale_results = run(sales.collect()).await;
    // Let delayed requests finish processing on the server before counting.
    tokio::time::sleep(TIMEOUT * 4).await;

    let mut lead_counts: HashMap<String, usize> = HashMap::new();
    for l in mock.leads() {
        *lead_counts.entry(l.customer_external_id).or_default() += 1;
    }
    let mut sale_counts: HashMap<String, usize> = HashMap::new();
    for s in mock.sales() {
        if let Some(inv) = s.invoice_id {
            *sale_counts.entry(inv).or_default() += 1;
        }
    }
    let mut tally = Tally {
        idempotent: true,
        ..Tally::default()
    };
    for (i, r) in lead_results.iter().enumerate() {
        let name = format!("lead-{i}");
        tally.check(&name, r, lead_counts.get(&name).copied().unwrap_or(0));
    }
    for (i, r) in sale_results.iter().enumerate() {
        let name = format!("inv-{i}");
        tally.check(&name, r, sale_counts.get(&name).copied().unwrap_or(0));
    }
    let requests = mock.requests();
    let attempts = requests.len() - warmup;
    let faulted = requests[warmup..]
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    println!(
        "idempotent calls: {} calls, {attempts} attempts, {} retries, {faulted} faults injected ({:.0}% of attempts), \
         {} ok, {} errors, {} recorded, {} duplicated, {} lost",
        tally.calls,
        attempts - tally.calls,
        100.0 * faulted as f64 / attempts as f64,
        tally.ok,
        tally.errors,
        tally.recorded,
        tally.duplicated,
        tally.lost
    );
    assert!(
        faulted as f64 >= 0.2 * attempts as f64,
        "too few faults to mean anything"
    );
    assert_eq!((tally.duplicated, tally.lost), (0, 0), "{tally:?}");
    println!("idempotent calls' errors by kind: {:?}", tally.by_kind);
    // Retries carry every idempotent call through unless all its attempts fail, except a 200
    // whose body is not JSON: the event was recorded, so it is reported
    // (may_have_been_recorded) rather than sent again.
    assert_eq!(tally.gave_up_early, 0, "{tally:?}");

    // Sales without an invoice id: only ambiguous faults, which must never be retried.
    let phase1 = mock.request_count();
    mock.random_faults(RandomFaults::new(7, 0.4).kinds([
        Fault::ResetBeforeRecord,
        Fault::ResetAfterRecord,
        Fault::ErrorAfterRecord(500),
        Fault::Delay(TIMEOUT * 3),
        Fault::Status(503),
        Fault::TruncatedBody,
        Fault::RateLimited(RetryAfter::Millis(20)),
    ]));
    let bare = (0..500).map(|i| {
        let dub = dub.clone();
        async move {
            let req = TrackSaleRequest::builder()
                .customer_external_id(format!("cust-{}", i % 10))
                .amount(7)
                .metadata_entry("call", format!("bare-{i}"))
                .build();
            dub.track().sale(req).await.map(drop)
        }
    });
    let bare_results = run(bare.collect()).await;
    // Let delayed requests finish processing on the server before counting.
    tokio::time::sleep(TIMEOUT * 4).await;
    let mut bare_counts: HashMap<String, usize> = HashMap::new();
    for s in mock.sales() {
        if let Some(call) = s.body["metadata"]["call"].as_str() {
            *bare_counts.entry(call.to_owned()).or_default() += 1;
        }
    }
    let mut bare_tally = Tally::default();
    for (i, r) in bare_results.iter().enumerate() {
        let name = format!("bare-{i}");
        bare_tally.check(&name, r, bare_counts.get(&name).copied().unwrap_or(0));
    }
    // Each call's attempts in arrival order, by the call's name in its metadata: an attempt may
    // follow only a 429 (Dub processed nothing); after any other fault the sale may have been
    // recorded, and a second attempt could count it twice. Counted by name, not as every request
    // since phase 1 ended: on a loaded machine a phase-1 request the client already gave up on
    // can still be read by the server during this phase.
    let mut histories: HashMap<String, Vec<Option<Fault>>> = HashMap::new();
    let (mut attempts, mut rate_limited) = (0, 0);
    for r in &mock.requests()[phase1..] {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let Some(call) = body["metadata"]["call"]
            .as_str()
            .filter(|c| c.starts_with("bare-"))
        else {
            continue;
        };
        attempts += 1;
        rate_limited += usize::from(matches!(r.fault, Some(Fault::RateLimited(_))));
        histories
            .entry(call.to_owned())
            .or_default()
            .push(r.fault.clone());
    }
    let resent_after_an_ambiguous_fault: Vec<_> = histories
        .iter()
        .filter(|(_, faults)| {
            faults
                .iter()
                .rev()
                .skip(1)
                .any(|f| !matches!(f, Some(Fault::RateLimited(_))))
        })
        .collect();
    assert!(
        resent_after_an_ambiguous_fault.is_empty(),
        "only 429s may be retried without an invoice id; sent again after another fault \
         (each call's faults in order): {resent_after_an_ambiguous_fault:?}"
    );
    assert_eq!(
        attempts - bare_tally.calls,
        rate_limited,
        "every attempt of a sale without invoice id is its call's first or follows a 429"
    );
    println!(
        "sales without invoice id, errors by kind: {:?}",
        bare_tally.by_kind
    );
    assert_eq!(
        (bare_tally.duplicated, bare_tally.lost),
        (0, 0),
        "{bare_tally:?}"
    );
    assert!(
        bare_tally.errors > 50,
        "the faults should have failed some calls: {bare_tally:?}"
    );
}
