//! The tracker's promise at its edges: hand-overs racing shutdown, a slow outcome callback, the
//! last handle dropped mid-delivery, a runtime shut down under the tracker.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support;
use dub::mock::{Fault, MockDub, RandomFaults};
use dub::models::{TrackLeadRequest, TrackSaleRequest};
use dub::tracker::{Event, EventId, HandOverErrorKind, Outcome, Receipt, Tracker};

fn lead(customer: &str) -> TrackLeadRequest {
    crate::support::lead_for(customer).build()
}

/// A sale without invoice id (Dub does not deduplicate it), identified by its amount.
fn unsafe_sale(customer: &str, amount: u64) -> TrackSaleRequest {
    TrackSaleRequest::builder()
        .customer_external_id(customer)
        .amount(amount)
        .build()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Two threads hand leads over (`HandOver::wait`) until the tracker refuses them, while a task
/// of the tracker's runtime shuts it down. Returns the receipts of what was accepted.
fn race_shutdown(rt: &tokio::runtime::Runtime, tracker: Tracker, round: usize) -> RaceRound {
    let handed = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (tracker, handed) = (tracker.clone(), handed.clone());
            std::thread::spawn(move || {
                let mut receipts = Vec::new();
                for n in 0.. {
                    match tracker.lead(lead(&format!("r{round}_t{t}_{n}"))).wait() {
                        Ok(receipt) => {
                            receipts.push(receipt);
                            handed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert_eq!(e.kind(), HandOverErrorKind::Stopped, "{e}");
                            assert!(e.into_event().is_some(), "the refused event comes back");
                            break;
                        }
                    }
                }
                receipts
            })
        })
        .collect();
    let started = std::time::Instant::now();
    while handed.load(Ordering::Relaxed) < 200 && started.elapsed() < Duration::from_secs(10) {
        std::thread::yield_now();
    }
    let deadline = Duration::from_millis([0, 5, 10][round % 3]);
    let report = rt.block_on(rt.spawn(tracker.shutdown(deadline))).unwrap();
    let receipts = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    RaceRound {
        receipts,
        reported: report.undelivered.iter().map(|(id, _)| *id).collect(),
        left_in_spool: report.left_in_spool,
    }
}

struct RaceRound {
    receipts: Vec<Receipt>,
    reported: HashSet<EventId>,
    left_in_spool: u64,
}

/// Issue 18, defect 1: an accepted event ends in exactly one place: delivered, or in the
/// report (and its receipt says `NotDelivered`).
#[test]
fn a_hand_over_racing_shutdown_is_delivered_or_reported() {
    let rt = runtime();
    let mock = rt.block_on(MockDub::start()).unwrap();
    let dub = support::dub(&mock);
    let (mut accepted, mut lost) = (0, Vec::new());
    for round in 0..150 {
        let tracker = {
            let _entered = rt.enter();
            dub.tracker().capacity(1_000_000).start().unwrap()
        };
        let RaceRound {
            receipts, reported, ..
        } = race_shutdown(&rt, tracker, round);
        accepted += receipts.len();
        for receipt in receipts {
            let id = receipt.id();
            match receipt.wait_timeout(Duration::from_secs(10)) {
                Ok(Outcome::Delivered(_)) if !reported.contains(&id) => {}
                Ok(Outcome::NotDelivered) if reported.contains(&id) => {}
                other => lost.push(format!("round {round}, {id}: {other:?}")),
            }
        }
        mock.reset();
    }
    eprintln!("accepted {accepted} events over 150 rounds");
    assert!(accepted >= 80_000, "only {accepted} events accepted");
    assert!(
        lost.is_empty(),
        "{} lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

/// The same race with a spool: what is accepted is delivered or stays in the spool, and the
/// report counts it.
#[test]
fn a_hand_over_racing_shutdown_is_delivered_or_left_in_the_spool() {
    let rt = runtime();
    let mock = rt.block_on(MockDub::start()).unwrap();
    let dub = support::dub(&mock);
    let dir = std::env::temp_dir().join(format!(
        "dub-tracker-edges-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut accepted, mut wrong) = (0, Vec::new());
    for round in 0..60 {
        let path = dir.join(format!("spool-{round}.sqlite"));
        let tracker = {
            let _entered = rt.enter();
            dub.tracker().spool(&path).start().unwrap()
        };
        let out = race_shutdown(&rt, tracker, round);
        accepted += out.receipts.len();
        let mut not_delivered = 0;
        for receipt in out.receipts {
            let id = receipt.id();
            match receipt.wait_timeout(Duration::from_secs(10)) {
                Ok(Outcome::Delivered(_)) => {}
                Ok(Outcome::NotDelivered) => not_delivered += 1,
                other => wrong.push(format!("round {round}, {id}: {other:?}")),
            }
        }
        if not_delivered != out.left_in_spool {
            wrong.push(format!(
                "round {round}: {not_delivered} receipts not delivered, {} left in the spool",
                out.left_in_spool
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("accepted {accepted} events over 60 rounds");
    assert!(wrong.is_empty(), "{wrong:?}");
}

/// Issue 18, defect 2: a 25 ms outcome callback makes the dispatcher late; shutdown cuts it
/// off, and what Dub recorded must not come back as undelivered (handing it to the next
/// tracker would count it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_outcome_callback_never_puts_a_recorded_sale_in_the_report() {
    let mock = MockDub::start().await.unwrap();
    let dub = support::dub(&mock);
    for c in 0..60 {
        dub.track().lead(lead(&format!("u{c}"))).await.unwrap();
    }
    let tracker = dub
        .tracker()
        .on_outcome(|_| std::thread::sleep(Duration::from_millis(25)))
        .start()
        .unwrap();
    let mut receipts = Vec::new();
    for c in 0..60u64 {
        let sale = unsafe_sale(&format!("u{c}"), 1_000 + c);
        receipts.push((1_000 + c, tracker.sale(sale).await.unwrap()));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = tracker.shutdown(Duration::from_millis(100)).await;
    let recorded: HashSet<u64> = mock.sales().iter().map(|s| s.amount).collect();
    let back: HashSet<u64> = report
        .undelivered
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Sale(s) => Some(s.amount),
            _ => None,
        })
        .collect();
    let twice: Vec<_> = back.intersection(&recorded).collect();
    assert!(
        twice.is_empty(),
        "{} of {} sales in the report were recorded by Dub: {twice:?}",
        twice.len(),
        back.len()
    );
    for (amount, receipt) in receipts {
        let outcome = tokio::time::timeout(Duration::from_secs(10), receipt)
            .await
            .expect("every receipt resolves");
        let fine = match &outcome {
            Outcome::Delivered(_) => recorded.contains(&amount),
            Outcome::Uncertain(_) => true,
            Outcome::NotDelivered => back.contains(&amount) && !recorded.contains(&amount),
            _ => false,
        };
        assert!(fine, "sale {amount}: {outcome:?}");
    }
}

/// Issue 18, defect 2 (second half): the last handle dropped while sales without invoice id are
/// in flight; Dub records them after: their receipts say uncertain, never not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_tracker_mid_delivery_makes_unsafe_sales_uncertain() {
    let mock = MockDub::start().await.unwrap();
    let dub = support::dub(&mock);
    for c in 0..32 {
        dub.track().lead(lead(&format!("u{c}"))).await.unwrap();
    }
    mock.push_faults((0..32).map(|_| Fault::Delay(Duration::from_millis(500))));
    let tracker = dub.tracker().max_in_flight(32).start().unwrap();
    let mut receipts = Vec::new();
    for c in 0..32u64 {
        let sale = unsafe_sale(&format!("u{c}"), 1_000 + c);
        receipts.push(tracker.sale(sale).await.unwrap());
    }
    let started = tokio::time::Instant::now();
    while mock.request_count() < 64 {
        assert!(started.elapsed() < Duration::from_secs(10), "never sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(tracker);
    for receipt in receipts {
        let outcome = tokio::time::timeout(Duration::from_secs(10), receipt)
            .await
            .expect("every receipt resolves");
        assert!(matches!(outcome, Outcome::Uncertain(_)), "{outcome:?}");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(mock.sales().len(), 32, "Dub recorded them all");
}

/// Issue 18, defect 5: a tracker whose runtime is shut down under it refuses hand-overs with the
/// event back, and its report lists what it holds.
#[test]
fn a_tracker_whose_runtime_is_gone_refuses_and_reports_what_it_holds() {
    let mock_rt = runtime();
    let mock = mock_rt.block_on(MockDub::start()).unwrap();
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([Fault::Delay(Duration::from_secs(30))]));
    let rt = runtime();
    let tracker = {
        let _entered = rt.enter();
        support::dub(&mock)
            .tracker()
            .max_in_flight(4)
            .start()
            .unwrap()
    };
    let receipts: Vec<_> = (0..11)
        .map(|c| tracker.lead(lead(&format!("u{c}"))).wait().unwrap())
        .collect();
    let started = std::time::Instant::now();
    while mock.request_count() < 4 && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(rt);
    let refused = tracker.lead(lead("late")).wait().unwrap_err();
    assert_eq!(refused.kind(), HandOverErrorKind::Stopped, "{refused}");
    assert!(refused.into_event().is_some(), "the event comes back");
    let report = tracker.shutdown_blocking(Duration::from_secs(1));
    assert_eq!(report.undelivered.len(), 11, "{report:?}");
    assert!(!report.drained);
    for receipt in receipts {
        let outcome = receipt.wait_timeout(Duration::from_secs(5));
        assert!(matches!(outcome, Ok(Outcome::NotDelivered)), "{outcome:?}");
    }
}

/// Issue 18, SIGTERM (the library's part): the sign-up example, run as a service, shuts its
/// tracker down on SIGTERM as on Ctrl-C, so a lead handed over just before is delivered, not
/// lost with the process.
#[cfg(unix)]
#[test]
fn the_signup_example_shuts_its_tracker_down_on_sigterm() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--all-features", "--example", "signup_handler"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success());
    // target/<profile>/deps/it-... -> target/<profile>/examples/signup_handler
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/signup_handler");
    let mut child = Command::new(&example)
        .arg("--serve")
        .env_remove("DUB_API_KEY")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    let rt = runtime();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(url)
            .body(r#"{"user_id":"user_1","dub_id":"clk_1"}"#)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 201);
    // SAFETY: kill(2) with the pid of a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}: {rest}");
    assert!(
        rest.contains("shut down: 1 delivered, 0 left undelivered"),
        "{rest}"
    );
}

/// Issue 19, §1: a spool's batch is handed over while the dispatcher is idle and Dub is fast.
/// A row claimed and delivered before its receipt was registered would leave that receipt to
/// resolve `NotDelivered` at shutdown although Dub recorded the event: every receipt must say
/// delivered.
#[test]
fn every_receipt_of_a_spool_batch_resolves_delivered() {
    let rt = runtime();
    let mock = rt.block_on(MockDub::start()).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "dub-tracker-receipts-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let tracker = {
        let _entered = rt.enter();
        support::dub(&mock)
            .tracker()
            .spool(dir.join("spool.sqlite"))
            .start()
            .unwrap()
    };
    let mut stuck = Vec::new();
    for batch in 0..200 {
        // Four threads hand over at once, so that one commit holds several events.
        let handed: Vec<Receipt> = (0..4)
            .map(|t| {
                let tracker = tracker.clone();
                std::thread::spawn(move || {
                    (0..5)
                        .map(|n| {
                            let customer = format!("b{batch}_t{t}_{n}");
                            tracker.lead(lead(&customer)).wait().unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        for receipt in handed {
            let id = receipt.id();
            match receipt.wait_timeout(Duration::from_secs(5)) {
                Ok(Outcome::Delivered(_)) => {}
                other => stuck.push(format!("batch {batch}, {id}: {other:?}")),
            }
        }
        if !stuck.is_empty() {
            break;
        }
    }
    let report = tracker.shutdown_blocking(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stuck.is_empty(), "{stuck:?}");
    assert!(report.drained, "{report:?}");
}

/// The same for a tracker on a runtime of its own (`start_in_background`), dropped from sync
/// code: its runtime stops with it, and the receipts still say uncertain.
#[test]
fn dropping_a_background_tracker_mid_delivery_makes_unsafe_sales_uncertain() {
    let rt = runtime();
    let mock = rt.block_on(MockDub::start()).unwrap();
    let dub = support::dub(&mock);
    rt.block_on(async {
        for c in 0..8 {
            dub.track().lead(lead(&format!("u{c}"))).await.unwrap();
        }
    });
    mock.push_faults((0..8).map(|_| Fault::Delay(Duration::from_millis(500))));
    let tracker = dub.tracker().start_in_background().unwrap();
    let receipts: Vec<Receipt> = (0..8u64)
        .map(|c| {
            let sale = unsafe_sale(&format!("u{c}"), 1_000 + c);
            tracker.sale(sale).wait().unwrap()
        })
        .collect();
    let started = std::time::Instant::now();
    while mock.request_count() < 16 {
        assert!(started.elapsed() < Duration::from_secs(10), "never sent");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(tracker);
    for receipt in receipts {
        let outcome = receipt.wait_timeout(Duration::from_secs(10));
        assert!(matches!(outcome, Ok(Outcome::Uncertain(_))), "{outcome:?}");
    }
}
