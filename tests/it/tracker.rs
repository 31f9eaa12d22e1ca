//! The background tracker against MockDub.

use std::time::Duration;

use dub::Dub;
use dub::mock::MockDub;
use dub::models::{TrackLeadRequest, TrackSaleRequest};
use dub::tracker::Outcome;

use crate::support;

#[tokio::test]
async fn delivers_leads_before_sales_and_reports_receipts() {
    let mock = MockDub::start().await.unwrap();
    let tracker = support::dub(&mock)
        .tracker()
        .max_in_flight(8)
        .start()
        .unwrap();
    let mut receipts = vec![];
    for c in 0..50 {
        let customer = format!("user_{c}");
        let lead = TrackLeadRequest::builder()
            .click_id("clk")
            .event_name("Sign up")
            .customer_external_id(&customer)
            .build();
        receipts.push(tracker.lead(lead).await.unwrap());
        for n in 0..3 {
            let sale = TrackSaleRequest::builder()
                .customer_external_id(&customer)
                .amount(100)
                .invoice_id(format!("in_{c}_{n}"))
                .build();
            receipts.push(tracker.sale(sale).await.unwrap());
        }
    }
    for r in receipts {
        let outcome = r.await;
        assert!(outcome.is_delivered(), "{outcome:?}");
    }
    assert_eq!(mock.leads().len(), 50);
    assert_eq!(mock.sales().len(), 150);
    let report = tracker.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    assert_eq!(report.stats.delivered, 200);
    let _ = Outcome::NotDelivered;
}

fn lead(customer: &str) -> TrackLeadRequest {
    crate::support::lead_for(customer).build()
}

use crate::support::sale_for as sale;

#[tokio::test(start_paused = true)]
async fn shutdown_while_dub_is_slow_returns_by_the_deadline_and_reports_everything() {
    use dub::mock::{Fault, RandomFaults};
    use std::sync::{Arc, Mutex};
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([Fault::Delay(Duration::from_secs(20))]));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let seen = outcomes.clone();
    let tracker = support::dub(&mock)
        .tracker()
        .max_in_flight(4)
        .on_outcome(move |o| {
            let dedup = o.event.is_deduplicated();
            seen.lock().unwrap().push((o.outcome.as_str(), dedup));
        })
        .start()
        .unwrap();
    let mut receipts = vec![];
    for c in 0..20 {
        // Half of them Dub deduplicates, half it does not.
        let customer = format!("user_{c}");
        let receipt = if c % 2 == 0 {
            tracker
                .sale(sale(&customer, Some(&format!("in_{c}"))))
                .await
        } else {
            tracker.sale(sale(&customer, None)).await
        };
        receipts.push(receipt.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = tokio::time::Instant::now();
    let report = tracker.shutdown(Duration::from_secs(2)).await;
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(2_100), "{took:?}");
    // Every event is accounted for: left undelivered, or settled (uncertain: cut off in flight).
    let settled = outcomes.lock().unwrap().clone();
    assert_eq!(
        report.undelivered.len() + settled.len(),
        20,
        "{report:?} {settled:?}"
    );
    // Cut off in flight: only events Dub does not deduplicate became uncertain; the others
    // came back with the rest.
    assert!(!settled.is_empty());
    assert!(
        settled.iter().all(|o| *o == ("uncertain", false)),
        "{settled:?}"
    );
    assert!(report.undelivered.iter().any(|(_, e)| e.is_deduplicated()));
    assert!(!report.drained);
    for r in receipts {
        let o = r.await;
        assert!(
            matches!(o, Outcome::NotDelivered | Outcome::Uncertain(_)),
            "{o:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_outage_costs_a_trickle_of_requests_and_loses_nothing() {
    use dub::mock::{Fault, RandomFaults};
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([Fault::Status(503)]));
    let tracker = support::dub(&mock).tracker().start().unwrap();
    let mut receipts = vec![];
    for c in 0..50 {
        let customer = format!("user_{c}");
        receipts.push(tracker.lead(lead(&customer)).await.unwrap());
        receipts.push(
            tracker
                .sale(sale(&customer, Some(&format!("in_{c}"))))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
    let during = mock.request_count();
    eprintln!("requests during two minutes of outage: {during}");
    assert_eq!(mock.leads().len(), 0);
    mock.clear_faults();
    for r in receipts {
        assert!(r.await.is_delivered());
    }
    assert_eq!(mock.leads().len(), 50);
    assert_eq!(mock.sales().len(), 50);
    // 100 events through two minutes of 503s: the first wave, then probes.
    assert!(during < 300, "{during} requests during the outage");
    let stats = tracker.stats();
    assert_eq!(
        (stats.delivered, stats.queued, stats.in_flight),
        (100, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn the_tracker_resumes_soon_after_a_short_outage_ends() {
    use dub::mock::{Fault, RandomFaults};
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([Fault::Status(503)]));
    let tracker = support::dub(&mock).tracker().start().unwrap();
    let mut receipts = vec![];
    for c in 0..100 {
        receipts.push(tracker.lead(lead(&format!("user_{c}"))).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Nothing gets through, and the counts say nothing: the stats say why.
    let why = tracker
        .stats()
        .last_failure
        .expect("a failure while retrying");
    assert!(why.contains("503"), "{why}");
    mock.clear_faults();
    let ended = tokio::time::Instant::now();
    for r in receipts {
        assert!(r.await.is_delivered());
    }
    assert_eq!(tracker.stats().last_failure, None);
    // The first wave (32 deliveries failing together) is one failure, so the pauses go 1 s,
    // 2 s, ...; counted one each they doubled to the 60 s maximum at once.
    let took = ended.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "drained {took:?} after the outage"
    );
}

/// During an outage of 5xx, a sale Dub does not deduplicate ends uncertain at its first
/// failure (it may have been recorded). Those endings count towards the outage pause too, so
/// an outage spends a trickle of such events, one probe per pause, not the whole queue.
#[tokio::test(start_paused = true)]
async fn an_outage_spends_a_trickle_of_unsafe_events_not_the_queue() {
    use dub::mock::{Fault, RandomFaults};
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([Fault::Status(503)]));
    let tracker = support::dub(&mock)
        .tracker()
        .max_in_flight(1)
        .start()
        .unwrap();
    let mut receipts = vec![];
    for c in 0..20 {
        receipts.push(
            tracker
                .sale(sale(&format!("user_{c}"), None))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Five failures in a row make the outage; then one probe after 1 s, 2 s, 4 s.
    let spent = mock.request_count();
    assert!(
        spent <= 9,
        "{spent} of 20 unsafe sales sent into a 10 s outage"
    );
    mock.clear_faults();
    let mut delivered = 0;
    for r in receipts {
        if r.await.is_delivered() {
            delivered += 1;
        }
    }
    assert_eq!(delivered, 20 - spent);
}

#[tokio::test]
async fn hand_over_refuses_at_once_what_it_cannot_take_and_gives_it_back() {
    use dub::tracker::{Event, HandOverErrorKind};
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(
        dub::mock::RandomFaults::new(1, 1.0)
            .kinds([dub::mock::Fault::Delay(Duration::from_secs(30))]),
    );
    let tracker = support::dub(&mock).tracker().capacity(3).start().unwrap();
    for c in 0..3 {
        let _ = tracker.lead(lead(&format!("u{c}"))).await.unwrap();
    }
    let e = tracker.lead(lead("u3")).await.unwrap_err();
    assert_eq!(e.kind(), HandOverErrorKind::Full);
    assert!(matches!(e.into_event(), Some(Event::Lead(l)) if l.customer_external_id == "u3"));
    let bad = TrackLeadRequest::builder()
        .click_id("c")
        .event_name("")
        .customer_external_id("u")
        .build();
    let e = tracker.lead(bad).await.unwrap_err();
    assert_eq!(e.kind(), HandOverErrorKind::Invalid);
    assert_eq!(e.validation().and_then(|v| v.field()), Some("eventName"));
    let report = tracker.shutdown(Duration::ZERO).await;
    let _ = report;
}

#[tokio::test(start_paused = true)]
async fn uncertain_and_failed_events_are_reported_never_resent() {
    use dub::mock::Fault;
    let mock = MockDub::start().await.unwrap();
    let tracker = support::dub(&mock).tracker().start().unwrap();
    // A sale without invoice id whose response is lost after Dub recorded it: never resent.
    mock.push_fault(Fault::ResetAfterRecord);
    let uncertain = tracker.sale(sale("u1", None)).await.unwrap().await;
    assert!(
        matches!(uncertain, Outcome::Uncertain(ref e) if e.may_have_been_recorded()),
        "{uncertain:?}"
    );
    assert_eq!(
        mock.sales().len(),
        0,
        "no lead yet: Dub answers a sale of an unknown customer with nulls"
    );
    assert_eq!(mock.request_count(), 1);
    // A 403 is Dub's refusal: failed, with Dub's error, not retried.
    mock.push_fault(Fault::Status(403));
    let failed = tracker.lead(lead("u2")).await.unwrap().await;
    assert!(
        matches!(failed, Outcome::Failed(ref e) if e.status().map(|s| s.as_u16()) == Some(403)),
        "{failed:?}"
    );
    assert_eq!(mock.request_count(), 2);
    let stats = tracker.stats();
    assert_eq!((stats.uncertain, stats.failed), (1, 1));
}

#[test]
fn sync_code_hands_over_and_waits_without_a_runtime() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockDub::start()).unwrap();
    let dub = Dub::builder()
        .token(mock.token())
        .server_url(mock.url())
        .build()
        .unwrap();
    let tracker = dub.tracker().start_in_background().unwrap();
    let receipt = tracker.lead(lead("sync_user")).wait().unwrap();
    assert!(receipt.wait().is_delivered());
    let report = tracker.shutdown_blocking(Duration::from_secs(5));
    assert!(report.drained);
    assert_eq!(mock.leads().len(), 1);
}

/// Issue 13's reliability run: 5,000 events from concurrent producers through random faults
/// (30% of requests), Dub's enforced rate limit and a two-minute outage, on the paused clock.
#[tokio::test(start_paused = true)]
async fn five_thousand_events_through_faults_limits_and_an_outage() {
    use dub::mock::RandomFaults;
    use dub::tracker::{Event, HandOverErrorKind};
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const CUSTOMERS: usize = 1_000;
    const CAPACITY: usize = 500;
    // Every kind of fault but the 429: those come from the enforced limit itself (random 429s
    // that no pace can avoid would only teach the adaptive limiter a slower pace).
    let kinds = dub::mock::Fault::every_kind(Duration::from_secs(11))
        .into_iter()
        .filter(|f| !matches!(f, dub::mock::Fault::RateLimited(_)));
    let faults = RandomFaults::new(13, 0.3).kinds(kinds);
    let started = tokio::time::Instant::now();
    let mock = MockDub::builder()
        .rate_limit(1_200)
        .random_faults(faults.clone())
        .start()
        .await
        .unwrap();
    let tracker = support::dub(&mock)
        .tracker()
        .capacity(CAPACITY)
        .max_in_flight(32)
        .start()
        .unwrap();

    // Per customer: a lead, three sales with invoice ids (deduplicated), one without (not),
    // whose amount identifies it in the mock's records.
    let events = |c: usize| -> Vec<Event> {
        let customer = format!("user_{c}");
        let mut v: Vec<Event> = vec![lead(&customer).into()];
        for n in 0..3 {
            v.push(sale(&customer, Some(&format!("in_{c}_{n}"))).into());
        }
        v.push(
            TrackSaleRequest::builder()
                .customer_external_id(&customer)
                .amount(1_000_000 + c as u64)
                .build()
                .into(),
        );
        v
    };
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (tracker, peak) = (tracker.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                let s = tracker.stats();
                peak.fetch_max(s.queued + s.in_flight, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Eight producers; a full queue is an error at once, and the producer tries again later.
    let mut producers = Vec::new();
    for p in 0..8 {
        let tracker = tracker.clone();
        producers.push(tokio::spawn(async move {
            let mut receipts = Vec::new();
            for c in (p..CUSTOMERS).step_by(8) {
                for (k, event) in events(c).into_iter().enumerate() {
                    let mut event = event;
                    loop {
                        match tracker.send(event).await {
                            Ok(r) => {
                                // k == 4: the sale without invoice id.
                                receipts.push((c, k == 4, r));
                                break;
                            }
                            Err(e) => {
                                assert_eq!(e.kind(), HandOverErrorKind::Full, "{e}");
                                event = e.into_event().expect("the event comes back");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                }
            }
            receipts
        }));
    }
    // Two minutes into the run Dub goes down for two minutes.
    tokio::time::sleep(Duration::from_secs(60)).await;
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([dub::mock::Fault::Status(503)]));
    tokio::time::sleep(Duration::from_secs(120)).await;
    mock.random_faults(faults);

    let mut outcomes: Vec<(usize, bool, Outcome)> = Vec::new();
    for producer in producers {
        for (c, plain, receipt) in producer.await.unwrap() {
            outcomes.push((c, plain, receipt.await));
        }
    }
    watcher.abort();
    let report = tracker.shutdown(Duration::from_secs(1)).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(outcomes.len(), 5 * CUSTOMERS);

    let mut leads: HashMap<String, usize> = HashMap::new();
    for l in mock.leads() {
        *leads.entry(l.customer_external_id).or_default() += 1;
    }
    let mut invoices: HashMap<String, usize> = HashMap::new();
    let mut plain: HashMap<u64, usize> = HashMap::new();
    for s in mock.sales() {
        match s.invoice_id {
            Some(i) => *invoices.entry(i).or_default() += 1,
            None => *plain.entry(s.amount).or_default() += 1,
        }
    }
    let (mut delivered, mut uncertain, mut failed) = (0, 0, 0);
    for (c, plain, outcome) in &outcomes {
        match outcome {
            Outcome::Delivered(_) => delivered += 1,
            Outcome::Uncertain(_) => uncertain += 1,
            Outcome::Failed(_) => failed += 1,
            other => panic!("{other:?}"),
        }
        if !plain {
            assert!(outcome.is_delivered(), "customer {c}: {outcome:?}");
        }
    }
    eprintln!(
        "{:?}: delivered {delivered}, uncertain {uncertain}, failed {failed}, requests {}, 429s {}, peak queue {}",
        started.elapsed(),
        mock.request_count(),
        mock.rate_limited_count(),
        peak.load(Ordering::Relaxed)
    );
    // What Dub deduplicates is recorded exactly once.
    assert_eq!(leads.len(), CUSTOMERS);
    assert!(leads.values().all(|&n| n == 1));
    assert_eq!(invoices.len(), 3 * CUSTOMERS);
    assert!(invoices.values().all(|&n| n == 1));
    // What it does not is recorded at most once, and what is not recorded was reported.
    for (c, _, outcome) in outcomes.iter().filter(|(_, plain, _)| *plain) {
        let recorded = plain.get(&(1_000_000 + *c as u64)).copied().unwrap_or(0);
        match outcome {
            Outcome::Delivered(_) => assert_eq!(recorded, 1, "customer {c}"),
            Outcome::Failed(_) => assert_eq!(recorded, 0, "customer {c}"),
            _ => assert!(recorded <= 1, "customer {c}"),
        }
    }
    assert_eq!(failed, 0, "nothing here is refused by Dub");
    eprintln!("uncertain: {uncertain} (sales without invoice id only)");
    // Memory stays within the bound.
    assert!(peak.load(Ordering::Relaxed) <= CAPACITY as u64);
}

#[tokio::test]
async fn a_tracker_stopped_right_after_it_started_stops() {
    let mock = MockDub::start().await.unwrap();
    for _ in 0..20 {
        // The dispatcher may not have run yet when stop is called: it must still see it.
        let tracker = support::dub(&mock).tracker().start().unwrap();
        let report = tokio::time::timeout(Duration::from_secs(5), tracker.stop())
            .await
            .expect("stop returns");
        assert!(report.drained);
        let tracker = support::dub(&mock).tracker().start().unwrap();
        let report = tokio::time::timeout(
            Duration::from_secs(5),
            tracker.shutdown(Duration::from_secs(1)),
        )
        .await
        .expect("shutdown returns");
        assert!(report.drained);
    }
}
