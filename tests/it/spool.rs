//! The tracker's durable spool (feature `spool`): restarts, keys remembered after delivery,
//! several trackers sharing one file, and `kill -9` of real processes in the middle of hand-over
//! and delivery.
#![cfg(all(feature = "spool", feature = "mock"))]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support;
use dub::RetryConfig;
use dub::mock::{Fault, MockDub};
use dub::tracker::{Event, Outcome, Tracker};

fn temp_spool(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dub-spool-test-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn lead(customer: &str) -> Event {
    crate::support::lead_for(customer).build().into()
}

fn sale(customer: &str, invoice: &str) -> Event {
    crate::support::sale_for(customer, Some(invoice)).into()
}

fn unsafe_sale(customer: &str) -> Event {
    crate::support::sale_for(customer, None).into()
}

#[tokio::test]
async fn events_left_at_shutdown_are_delivered_by_the_next_tracker() {
    let mock = MockDub::start().await.unwrap();
    let path = temp_spool("restart.sqlite");
    let dub = support::dub(&mock);
    // Dub is down: nothing can be delivered before the deadline.
    mock.random_faults(dub::mock::RandomFaults::new(1, 1.0).kinds([Fault::Status(503)]));
    let tracker = dub.tracker().spool(&path).start().unwrap();
    for c in 0..20 {
        let customer = format!("user_{c}");
        let _ = tracker.send(lead(&customer)).await.unwrap();
        let _ = tracker
            .send(sale(&customer, &format!("in_{c}")))
            .await
            .unwrap();
    }
    let report = tracker.shutdown(Duration::from_millis(300)).await;
    assert!(!report.drained);
    assert!(report.undelivered.is_empty(), "a spool keeps them");
    assert_eq!(report.left_in_spool, 40);

    mock.clear_faults();
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    let report = tracker.shutdown(Duration::from_secs(20)).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(report.stats.delivered, 40);
    assert_eq!(mock.leads().len(), 20);
    assert_eq!(mock.sales().len(), 20);
    // A customer's lead went before its sales: no sale met "Lead event not found".
    assert!(mock.requests().iter().all(|r| r.status != Some(404)));
}

#[tokio::test]
async fn a_key_handed_over_again_gets_the_stored_outcome_and_is_not_sent_again() {
    let mock = MockDub::start().await.unwrap();
    let path = temp_spool("keys.sqlite");
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    let first = tracker
        .send_with_key("row-1", lead("user_1"))
        .await
        .unwrap();
    assert!(first.await.is_delivered());
    tracker.shutdown(Duration::from_secs(5)).await;
    let requests = mock.request_count();

    // A rerun after a restart: the key's outcome comes from the file.
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    let again = tracker
        .send_with_key("row-1", lead("user_1"))
        .await
        .unwrap();
    match again.await {
        Outcome::Delivered(_) => {}
        other => panic!("{other:?}"),
    }
    tracker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(mock.request_count(), requests);
}

#[tokio::test]
async fn refused_events_are_stored_failed_with_dubs_error() {
    let mock = MockDub::start().await.unwrap();
    let path = temp_spool("failed.sqlite");
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    mock.push_fault(Fault::Status(403));
    let receipt = tracker.send_with_key("k", lead("user_1")).await.unwrap();
    let Outcome::Failed(e) = receipt.await else {
        panic!("expected failed")
    };
    assert_eq!(e.status().map(|s| s.as_u16()), Some(403));
    tracker.shutdown(Duration::from_secs(5)).await;
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    let Outcome::Failed(e) = tracker
        .send_with_key("k", lead("user_1"))
        .await
        .unwrap()
        .await
    else {
        panic!("expected the stored failure")
    };
    assert_eq!(e.status().map(|s| s.as_u16()), Some(403));
    assert!(!e.may_have_been_recorded());
    tracker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_sharing_a_spool_deliver_each_event_once() {
    let mock = MockDub::start().await.unwrap();
    let path = temp_spool("shared.sqlite");
    let trackers: Vec<Tracker> = (0..3)
        .map(|_| {
            support::dub(&mock)
                .tracker()
                .spool(&path)
                .max_in_flight(8)
                .start()
                .unwrap()
        })
        .collect();
    // Sales without invoice id: a second delivery would be a second sale in the records.
    let mut receipts = Vec::new();
    for c in 0..100 {
        let customer = format!("user_{c}");
        let t = &trackers[c % 3];
        receipts.push(t.send(lead(&customer)).await.unwrap());
        receipts.push(t.send(unsafe_sale(&customer)).await.unwrap());
    }
    let mut delivered = 0;
    for t in trackers {
        let report = t.shutdown(Duration::from_secs(30)).await;
        delivered += report.stats.delivered;
    }
    assert_eq!(delivered, 200);
    assert_eq!(mock.leads().len(), 100);
    assert_eq!(mock.sales().len(), 100);
    assert_eq!(mock.request_count(), 200, "no event was sent twice");
    drop(receipts);
}

#[tokio::test]
async fn a_hand_over_completes_only_once_committed_and_refuses_beyond_capacity() {
    let mock = MockDub::start().await.unwrap();
    let path = temp_spool("capacity.sqlite");
    mock.random_faults(dub::mock::RandomFaults::new(1, 1.0).kinds([Fault::Status(503)]));
    let tracker = support::dub(&mock)
        .tracker()
        .spool(&path)
        .capacity(5)
        .retry_config(RetryConfig::none())
        .start()
        .unwrap();
    let mut receipts = vec![];
    for c in 0..5 {
        receipts.push(tracker.send(lead(&format!("u{c}"))).await.unwrap());
    }
    let refused = tracker.send(lead("u5")).await.unwrap_err();
    assert_eq!(refused.kind(), dub::tracker::HandOverErrorKind::Full);
    assert!(refused.into_event().is_some(), "the event comes back");
    // Delivered events no longer count against the capacity.
    mock.clear_faults();
    for r in receipts {
        assert!(r.await.is_delivered());
    }
    mock.random_faults(dub::mock::RandomFaults::new(1, 1.0).kinds([Fault::Status(503)]));
    for c in 6..11 {
        let _ = tracker.send(lead(&format!("u{c}"))).await.unwrap();
    }
    let refused = tracker.send(lead("u11")).await.unwrap_err();
    assert_eq!(refused.kind(), dub::tracker::HandOverErrorKind::Full);
    // What was acknowledged is on disk: another connection sees it.
    let report = tracker.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.left_in_spool, 5);
}

// --- kill -9: real processes.

const CRASH_EVENTS: usize = 3_000;

/// The child: hands over every event (a lead then a sale with an invoice id per customer) under
/// a key, printing each key once its hand-over is acknowledged, then waits for delivery.
/// It does nothing unless run by the crash test.
#[test]
#[ignore = "run by spool_survives_kill_9 as a child process"]
fn spool_crash_child() {
    let (Ok(path), Ok(url)) = (
        std::env::var("DUB_TEST_SPOOL"),
        std::env::var("DUB_TEST_URL"),
    ) else {
        return;
    };
    let token = std::env::var("DUB_TEST_TOKEN").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let tracker = support::client(&url)
            .token(token)
            .build()
            .unwrap()
            .tracker()
            .spool(&path)
            .capacity(CRASH_EVENTS)
            .max_in_flight(16)
            .start()
            .unwrap();
        let mut receipts = Vec::new();
        let mut out = std::io::stdout().lock();
        for i in 0..CRASH_EVENTS / 2 {
            let customer = format!("user_{i}");
            for (key, event) in [
                (format!("lead-{i}"), lead(&customer)),
                (format!("sale-{i}"), sale(&customer, &format!("in_{i}"))),
            ] {
                let receipt = tracker.send_with_key(key.as_str(), event).await.unwrap();
                use std::io::Write;
                writeln!(out, "acked {key}").unwrap();
                receipts.push(receipt);
            }
        }
        for receipt in receipts {
            let outcome = receipt.await;
            assert!(outcome.is_delivered(), "{outcome:?}");
        }
        let report = tracker.shutdown(Duration::from_secs(10)).await;
        assert!(report.drained);
        use std::io::Write;
        writeln!(out, "done").unwrap();
    });
}

/// Runs the child until it finishes, or kills it with SIGKILL after `kill_after`.
fn run_child(
    path: &Path,
    mock: &MockDub,
    kill_after: Option<Duration>,
    acked: &Arc<Mutex<HashSet<String>>>,
) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spool::spool_crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DUB_TEST_SPOOL", path)
        .env("DUB_TEST_URL", mock.url())
        .env("DUB_TEST_TOKEN", mock.token())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let acked = acked.clone();
    let reader = std::thread::spawn(move || {
        let mut done = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print "test spool_crash_child ... " on the same line first.
            if let Some(at) = line.find("acked ") {
                acked.lock().unwrap().insert(line[at + 6..].to_owned());
            } else if line.ends_with("done") {
                done = true;
            }
        }
        done
    });
    if let Some(after) = kill_after {
        std::thread::sleep(after);
        // SIGKILL: no destructor, no flush, no shutdown.
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let done = reader.join().unwrap();
    if kill_after.is_none() {
        assert!(
            status.success() && done,
            "the last run must finish: {status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_survives_kill_9() {
    let mock = MockDub::start().await.unwrap();
    // Slow answers keep deliveries in flight when the kill lands.
    mock.random_faults(
        dub::mock::RandomFaults::new(7, 0.3)
            .kinds([Fault::Delay(Duration::from_millis(20)), Fault::Status(503)]),
    );
    let path = temp_spool("crash.sqlite");
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut rng = fastrand::Rng::with_seed(42);
    for round in 0..5 {
        let after = Duration::from_millis(rng.u64(150..1_200));
        let (path, mock2, acked2) = (path.clone(), mock.clone(), acked.clone());
        tokio::task::spawn_blocking(move || run_child(&path, &mock2, Some(after), &acked2))
            .await
            .unwrap();
        eprintln!(
            "round {round}: killed after {after:?}; acknowledged {}, leads {}, sales {}",
            acked.lock().unwrap().len(),
            mock.leads().len(),
            mock.sales().len()
        );
    }
    mock.clear_faults();
    let (path2, mock2, acked2) = (path.clone(), mock.clone(), acked.clone());
    tokio::task::spawn_blocking(move || run_child(&path2, &mock2, None, &acked2))
        .await
        .unwrap();

    // Every acknowledged event is recorded exactly once. (A line cut by the kill may have
    // added a prefix of a key; the last run acknowledges every key in full.)
    let acked = acked.lock().unwrap();
    for i in 0..CRASH_EVENTS / 2 {
        assert!(acked.contains(&format!("lead-{i}")) && acked.contains(&format!("sale-{i}")));
    }
    let mut leads: HashMap<String, usize> = HashMap::new();
    for l in mock.leads() {
        *leads.entry(l.customer_external_id).or_default() += 1;
    }
    let mut sales: HashMap<String, usize> = HashMap::new();
    for s in mock.sales() {
        *sales.entry(s.invoice_id.unwrap()).or_default() += 1;
    }
    assert_eq!(leads.len(), CRASH_EVENTS / 2);
    assert!(leads.values().all(|&n| n == 1));
    assert_eq!(sales.len(), CRASH_EVENTS / 2);
    assert!(sales.values().all(|&n| n == 1));
}
