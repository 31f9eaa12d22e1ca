//! `kill -9` in the middle of `dub-track send`, then the same command again.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use dub::mock::{Fault, MockDub, RandomFaults};
use serde_json::{Value, json};
use support::{Scratch, command, jsonl, run};

/// The sender's concurrency in these tests: the bound on requests a kill can make it repeat.
const IN_FLIGHT: usize = 16;

/// Slows every request down so that the kill lands in the middle of the run.
fn slow(mock: &MockDub, delay_ms: u64) {
    mock.random_faults(
        RandomFaults::new(1, 1.0).kinds([Fault::Delay(Duration::from_millis(delay_ms))]),
    );
}

/// Starts `dub-track ARGS` and kills it with SIGKILL once the server has received `after`
/// requests; returns how many it had received by then.
async fn kill_after(mock: &MockDub, dir: &Scratch, args: &[&str], after: usize) -> usize {
    let mut child = command(mock, &dir.0, args).spawn().unwrap();
    let start = Instant::now();
    while mock.request_count() < after {
        assert!(
            child.try_wait().unwrap().is_none(),
            "dub-track ended before the kill: make the run slower"
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the run is stuck"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // SIGKILL: no chance to flush, sync or say goodbye.
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    // Let requests already on the wire reach the server's records.
    tokio::time::sleep(Duration::from_millis(300)).await;
    mock.request_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_send_then_rerun_delivers_every_record_exactly_once() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("kill9");
    // 1,000 customers, each a lead and two sales: 3,000 records Dub deduplicates.
    let mut records = Vec::with_capacity(3000);
    for c in 0..1000 {
        let customer = format!("cust_{c}");
        records.push(json!({"type": "lead", "clickId": format!("clk_{c}"),
                            "eventName": "Sign up", "customerExternalId": customer}));
        for s in 0..2 {
            records.push(json!({"type": "sale", "customerExternalId": customer,
                                "amount": 100 + s, "invoiceId": format!("in_{c}_{s}")}));
        }
    }
    dir.write("events.jsonl", &jsonl(&records));
    let args = ["send", "--max-in-flight", "16", "events.jsonl"];

    slow(&mock, 10);
    let at_kill = kill_after(&mock, &dir, &args, 1000).await;
    assert!(at_kill < 3000, "the kill came after the run: {at_kill}");

    mock.clear_faults();
    let out = run(&mock, &dir.0, &args).await;
    assert_eq!(out.code, 0, "{out:?}");
    let (delivered, skipped) = (out.count("delivered"), out.count("skipped"));
    assert_eq!(delivered + skipped, 3000, "{out:?}");
    assert!(
        skipped >= 900,
        "the state file kept too little of the first run: {out:?}"
    );
    assert_eq!((out.count("failed"), out.count("uncertain")), (0, 0));

    // Every record exactly once in the server's records.
    let leads = mock.leads();
    assert_eq!(leads.len(), 1000);
    let lead_customers: HashSet<_> = leads.iter().map(|l| &l.customer_external_id).collect();
    assert_eq!(lead_customers.len(), 1000);
    let sales = mock.sales();
    assert_eq!(sales.len(), 2000);
    let invoices: HashSet<_> = sales.iter().filter_map(|s| s.invoice_id.as_ref()).collect();
    assert_eq!(invoices.len(), 2000);

    // The rerun repeated at most the requests that were in flight at the kill.
    let repeated = mock.request_count() - 3000;
    eprintln!(
        "{at_kill} requests at the kill; rerun: {}; {repeated} repeated",
        out.stdout.trim()
    );
    assert!(
        repeated <= IN_FLIGHT,
        "{repeated} requests repeated, more than the {IN_FLIGHT} in flight"
    );

    // And a third run has nothing left to do.
    let before = mock.request_count();
    let out = run(&mock, &dir.0, &args).await;
    assert_eq!((out.code, out.count("skipped")), (0, 3000), "{out:?}");
    assert_eq!(mock.request_count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_never_resends_a_record_dub_does_not_deduplicate() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("kill9-unsafe");
    // Direct sales without invoice ids: Dub would record each again if it were resent.
    let records: Vec<Value> = (0..600)
        .map(|c| {
            json!({"type": "sale", "customerExternalId": format!("cust_{c}"),
                   "clickId": format!("clk_{c}"), "amount": 1000 + c})
        })
        .collect();
    dir.write("sales.jsonl", &jsonl(&records));
    let args = [
        "send",
        "--allow-unsafe",
        "--max-in-flight",
        "16",
        "--failed",
        "failed.jsonl",
        "sales.jsonl",
    ];

    slow(&mock, 20);
    kill_after(&mock, &dir, &args, 200).await;
    mock.clear_faults();
    let out = run(&mock, &dir.0, &args).await;
    let uncertain = out.count("uncertain");
    eprintln!("rerun: {}", out.stdout.trim());
    assert_eq!(out.code, if uncertain > 0 { 1 } else { 0 }, "{out:?}");
    assert_eq!(
        out.count("delivered") + out.count("skipped") + uncertain,
        600,
        "{out:?}"
    );
    assert!(uncertain as usize <= IN_FLIGHT, "{out:?}");

    // No customer's sale was recorded twice, and no request was sent twice.
    let mut per_customer: HashMap<String, usize> = HashMap::new();
    for s in mock.sales() {
        *per_customer.entry(s.customer_external_id).or_default() += 1;
    }
    assert!(
        per_customer.values().all(|&n| n == 1),
        "a sale was recorded twice"
    );
    assert!(mock.request_count() <= 600);

    // Every record not recorded is one reported uncertain, in the failed file.
    let failed = std::fs::read_to_string(dir.path("failed.jsonl")).unwrap();
    let reported: HashSet<String> = failed
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            assert_eq!(r["_error"]["mayHaveBeenRecorded"], true, "{r}");
            r["customerExternalId"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(reported.len() as u64, uncertain);
    for c in 0..600 {
        let customer = format!("cust_{c}");
        assert!(
            per_customer.contains_key(&customer) || reported.contains(&customer),
            "{customer} is neither recorded nor reported uncertain"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_after_the_requests_in_flight_and_a_rerun_repeats_none() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("ctrl-c");
    let records: Vec<Value> = (0..400)
        .map(|c| {
            json!({"type": "lead", "clickId": format!("clk_{c}"), "eventName": "Sign up",
                   "customerExternalId": format!("cust_{c}")})
        })
        .collect();
    dir.write("leads.jsonl", &jsonl(&records));
    let args = ["send", "--max-in-flight", "16", "leads.jsonl"];

    slow(&mock, 20);
    let child = command(&mock, &dir.0, &args).spawn().unwrap();
    while mock.request_count() < 100 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pid = i32::try_from(child.id().unwrap()).unwrap();
    // SAFETY: kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let at_interrupt = mock.request_count();
    let first = support::Run::from(child.wait_with_output().await.unwrap(), mock.token());
    // It stopped handing records over: at most those already claimed went out after Ctrl-C.
    let after = mock.request_count() - at_interrupt;
    assert!(after <= IN_FLIGHT, "{after} requests sent after Ctrl-C");
    assert_eq!(first.code, 130, "{first:?}");
    assert!(
        first.stderr.contains("run the same command again"),
        "{first:?}"
    );
    let sent_first = mock.request_count() as u64;
    // Every request the first run made got its answer before it stopped.
    assert_eq!(first.count("delivered"), sent_first, "{first:?}");

    mock.clear_faults();
    let out = run(&mock, &dir.0, &args).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.count("skipped"), sent_first, "{out:?}");
    assert_eq!(mock.request_count(), 400, "a request was repeated");
    assert_eq!(mock.leads().len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_leaves_no_unsafe_record_uncertain() {
    a_stop_leaves_no_unsafe_record_uncertain(libc::SIGINT, "ctrl-c-unsafe").await;
}

/// SIGTERM (what systemd, Docker and Kubernetes send) stops a run as Ctrl-C does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_send_as_ctrl_c_does_and_leaves_no_unsafe_record_uncertain() {
    a_stop_leaves_no_unsafe_record_uncertain(libc::SIGTERM, "sigterm-unsafe").await;
}

/// Stops a send of sales without invoice ids (one sent twice would be recorded twice) with
/// `signal` mid-run: it waits for the sales in flight and never sends the rest, so the rerun
/// sends exactly the rest and calls none of them uncertain.
async fn a_stop_leaves_no_unsafe_record_uncertain(signal: i32, name: &str) {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new(name);
    let records: Vec<Value> = (0..200)
        .map(|c| {
            json!({"type": "sale", "customerExternalId": format!("cust_{c}"),
                   "clickId": format!("clk_{c}"), "amount": 1000 + c})
        })
        .collect();
    dir.write("sales.jsonl", &jsonl(&records));
    let args = [
        "send",
        "--allow-unsafe",
        "--max-in-flight",
        "4",
        "sales.jsonl",
    ];
    slow(&mock, 20);
    let child = command(&mock, &dir.0, &args).spawn().unwrap();
    while mock.request_count() < 40 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pid = i32::try_from(child.id().unwrap()).unwrap();
    // SAFETY: kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let first = support::Run::from(child.wait_with_output().await.unwrap(), mock.token());
    assert_eq!(first.code, 130, "{first:?}");
    assert!(
        first.stderr.contains("run the same command again"),
        "{first:?}"
    );
    assert_eq!(first.count("uncertain"), 0, "{first:?}");

    mock.clear_faults();
    let out = run(&mock, &dir.0, &args).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.count("uncertain"), 0, "{out:?}");
    assert_eq!(
        out.count("delivered") + out.count("skipped"),
        200,
        "{out:?}"
    );
    assert_eq!(mock.request_count(), 200, "a sale was sent twice");
    assert_eq!(mock.sales().len(), 200);
}
