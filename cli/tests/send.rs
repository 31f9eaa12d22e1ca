//! `dub-track send` end to end: the built binary against a `MockDub` on 127.0.0.1.

mod support;

use dub::mock::MockDub;
use serde_json::{Value, json};
use support::{Scratch, jsonl, run};

fn lead(customer: &str) -> Value {
    json!({"type": "lead", "clickId": format!("clk_{customer}"), "eventName": "Sign up",
           "customerExternalId": customer})
}

fn sale(customer: &str, invoice: &str, amount: u64) -> Value {
    json!({"type": "sale", "customerExternalId": customer, "amount": amount,
           "invoiceId": invoice})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonl_and_a_csv_file_are_delivered() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("delivered");
    dir.write(
        "events.jsonl",
        &jsonl(&[
            lead("u1"),
            sale("u1", "in_1", 1000),
            lead("u2"),
            json!({"type": "sale", "customerExternalId": "u2", "amount": 250, "invoiceId": "in_2",
                   "currency": "eur", "metadata": {"plan": "pro"}}),
        ]),
    );
    dir.write(
        "more.csv",
        "type,clickId,eventName,customerExternalId,amount,invoiceId,metadata\n\
         lead,clk_c1,Sign up,c1,,,\n\
         sale,,,c1,4900,in_c1,\"{\"\"seats\"\":3}\"\n",
    );
    let out = run(&mock, &dir.0, &["send", "events.jsonl", "more.csv"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let s = out.summary();
    assert_eq!(
        (s["delivered"], s["failed"], s["uncertain"], s["skipped"]),
        (6.0, 0.0, 0.0, 0.0)
    );
    let leads = mock.leads();
    let sales = mock.sales();
    assert_eq!(leads.len(), 3);
    assert_eq!(sales.len(), 3);
    let c1 = sales
        .iter()
        .find(|s| s.customer_external_id == "c1")
        .unwrap();
    assert_eq!(c1.amount, 4900);
    assert_eq!(c1.body["metadata"], json!({"seats": 3}));
    let u2 = sales
        .iter()
        .find(|s| s.customer_external_id == "u2")
        .unwrap();
    assert_eq!(
        (u2.currency.as_str(), &u2.body["metadata"]),
        ("eur", &json!({"plan": "pro"}))
    );

    // The same command again sends nothing: everything is done.
    let again = run(&mock, &dir.0, &["send", "events.jsonl", "more.csv"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!((again.count("delivered"), again.count("skipped")), (0, 6));
    assert_eq!(mock.request_count(), 6);
    assert!(dir.path("events.jsonl.dub-state").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_input_is_read_as_json_lines() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("stdin");
    let mut cmd = support::command(&mock, &dir.0, &["send", "-"]);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, jsonl(&[lead("s1")]).as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = support::Run::from(child.wait_with_output().await.unwrap(), mock.token());
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.count("delivered"), 1);
    assert_eq!(mock.leads().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_sends_nothing_and_names_file_line_and_field() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("invalid");
    dir.write(
        "bad.jsonl",
        &format!(
            "{}{}\n{}{}{}",
            jsonl(&[lead("u1")]),
            r#"{"type":"sale","customerExternalId":"u1","invoiceId":"in_1"}"#,
            jsonl(&[
                json!({"type": "lead", "clickId": "c", "eventName": "Sign up",
                           "customerExternalId": "u3", "customerEmail": "not-an-email"})
            ]),
            jsonl(&[
                json!({"type": "sale", "customerExternalId": "u4", "amount": 5,
                           "invoiceID": "typo"})
            ]),
            "{not json\n",
        ),
    );
    dir.write(
        "bad.csv",
        "type,customerExternalId,amount,invoiceId\nsale,u5,lots,in_5\n",
    );
    let out = run(&mock, &dir.0, &["send", "bad.jsonl", "bad.csv"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    for expected in [
        "bad.jsonl:2: amount: is required",
        "bad.jsonl:3: customerEmail:",
        "bad.jsonl:4: invoiceID:",
        "bad.jsonl:5: -: is not valid JSON",
        "bad.csv:2: amount: must be a whole number",
        "nothing sent: 5 invalid records",
    ] {
        assert!(
            out.stderr.contains(expected),
            "{expected:?} missing: {}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("bad.jsonl:1:"), "{}", out.stderr);
    assert_eq!(mock.request_count(), 0, "an invalid file sent something");
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_dub_does_not_deduplicate_are_refused_unless_allowed() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("unsafe");
    dir.write(
        "unsafe.jsonl",
        &jsonl(&[
            lead("u1"),
            json!({"type": "sale", "customerExternalId": "u1", "amount": 100}),
            json!({"type": "lead", "clickId": "clk_u2", "eventName": "Sign up",
                   "customerExternalId": "u2", "mode": "deferred"}),
        ]),
    );
    let out = run(&mock, &dir.0, &["send", "unsafe.jsonl"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("unsafe.jsonl:2: invoiceId:"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unsafe.jsonl:3: mode:"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--allow-unsafe"), "{}", out.stderr);
    assert_eq!(mock.request_count(), 0);

    let out = run(&mock, &dir.0, &["send", "--allow-unsafe", "unsafe.jsonl"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.count("delivered"), 3);
    assert_eq!(mock.sales().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failed_file_holds_exactly_the_refused_records_and_sends_again_once_fixed() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("failed");
    // A lead with an empty clickId for a customer Dub does not know is refused with 400.
    let mut records = Vec::new();
    for i in 0..20 {
        let customer = format!("c{i}");
        if i % 5 == 0 {
            records.push(
                json!({"type": "lead", "clickId": "", "eventName": "Sign up",
                                "customerExternalId": customer}),
            );
        } else {
            records.push(lead(&customer));
        }
    }
    dir.write("leads.jsonl", &jsonl(&records));
    let out = run(
        &mock,
        &dir.0,
        &["send", "--failed", "failed.jsonl", "leads.jsonl"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    let s = out.summary();
    assert_eq!(
        (s["delivered"], s["failed"], s["uncertain"]),
        (16.0, 4.0, 0.0)
    );

    let failed = std::fs::read_to_string(dir.path("failed.jsonl")).unwrap();
    let failed: Vec<Value> = failed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let customers: Vec<&str> = failed
        .iter()
        .map(|r| r["customerExternalId"].as_str().unwrap())
        .collect();
    assert_eq!(customers, ["c0", "c5", "c10", "c15"]);
    for r in &failed {
        assert_eq!(r["_error"]["status"], 400, "{r}");
        assert_eq!(r["_error"]["mayHaveBeenRecorded"], false, "{r}");
        assert!(
            r["_error"]["message"].as_str().unwrap().contains("clickId"),
            "{r}"
        );
        assert_eq!(r["type"], "lead");
    }

    // Fix them (give each its click), leave the error in, and send the failed file.
    let fixed: String = failed
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["clickId"] = json!(format!("clk_{}", r["customerExternalId"].as_str().unwrap()));
            format!("{r}\n")
        })
        .collect();
    std::fs::write(dir.path("failed.jsonl"), fixed).unwrap();
    let out = run(&mock, &dir.0, &["send", "failed.jsonl"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.count("delivered"), 4);
    let mut recorded: Vec<String> = mock
        .leads()
        .into_iter()
        .map(|l| l.customer_external_id)
        .collect();
    recorded.sort();
    recorded.dedup();
    assert_eq!(recorded.len(), 20);
    assert_eq!(mock.leads().len(), 20);

    // The original command again: nothing is sent, the failures are still reported (exit 1),
    // and the failed file is written again with the same four records.
    let before = mock.request_count();
    let out = run(
        &mock,
        &dir.0,
        &["send", "--failed", "again.jsonl", "leads.jsonl"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.count("skipped"), 20);
    assert_eq!(mock.request_count(), before);
    let again = std::fs::read_to_string(dir.path("again.jsonl")).unwrap();
    assert_eq!(again.lines().count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_invalid_sends_the_rest_and_lists_the_invalid_as_failed() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("skip");
    dir.write(
        "mixed.jsonl",
        &jsonl(&[
            lead("u1"),
            json!({"type": "sale", "customerExternalId": "u1", "amount": "ten", "invoiceId": "i"}),
        ]),
    );
    let out = run(
        &mock,
        &dir.0,
        &[
            "send",
            "--skip-invalid",
            "--failed",
            "f.jsonl",
            "mixed.jsonl",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!((out.count("delivered"), out.count("failed")), (1, 1));
    let failed = std::fs::read_to_string(dir.path("f.jsonl")).unwrap();
    let r: Value = serde_json::from_str(failed.trim()).unwrap();
    assert_eq!(r["_error"]["field"], "amount");
    assert_eq!(r["amount"], "ten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("usage");
    dir.write("x.txt", "");
    let out = run(&mock, &dir.0, &["send", "x.txt"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--format"), "{}", out.stderr);
    let out = run(&mock, &dir.0, &["send", "missing.jsonl"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    let out = run(&mock, &dir.0, &["send"]).await;
    assert_eq!(out.code, 2, "{out:?}");

    dir.write("ok.jsonl", &jsonl(&[lead("u1")]));
    let mut cmd = support::command(&mock, &dir.0, &["send", "ok.jsonl"]);
    cmd.env_remove("DUB_API_KEY");
    let out = support::Run::from(cmd.output().await.unwrap(), mock.token());
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("DUB_API_KEY"), "{}", out.stderr);
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_given_up_after_give_up_after_when_dub_keeps_failing() {
    let mock = MockDub::start().await.unwrap();
    // Every request answered 503 before anything is recorded.
    mock.random_faults(dub::mock::RandomFaults::new(3, 1.0).kinds([dub::mock::Fault::Status(503)]));
    let dir = Scratch::new("give-up");
    dir.write("e.jsonl", &jsonl(&[lead("u1"), sale("u2", "in_2", 5)]));
    let out = run(
        &mock,
        &dir.0,
        &[
            "send",
            "--give-up-after",
            "2",
            "--failed",
            "f.jsonl",
            "e.jsonl",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    // A 503 may come after Dub recorded the event, so they end uncertain (the SDK's judgement);
    // both records are deduplicated by Dub, so sending the failed file again is still safe.
    assert_eq!(out.count("delivered"), 0, "{out:?}");
    assert_eq!(out.count("failed") + out.count("uncertain"), 2, "{out:?}");
    let failed = std::fs::read_to_string(dir.path("f.jsonl")).unwrap();
    for line in failed.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["_error"]["status"], 503, "{r}");
    }
    assert_eq!(failed.lines().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_sales_wait_for_its_lead_through_dubs_lead_race() {
    // Dub records an async lead in the background: a sale right after it gets 404 for a while.
    let mock = MockDub::builder()
        .lead_race(std::time::Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let dir = Scratch::new("race");
    let mut records = Vec::new();
    for c in 0..5 {
        let customer = format!("r{c}");
        records.push(lead(&customer));
        records.push(sale(&customer, &format!("in_{c}"), 100));
    }
    dir.write("race.jsonl", &jsonl(&records));
    let out = run(&mock, &dir.0, &["send", "race.jsonl"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.count("delivered"), 10);
    assert_eq!(mock.leads().len(), 5);
    assert_eq!(mock.sales().len(), 5);
    // The sales did meet the race (404s), and were sent again after it.
    assert!(mock.request_count() > 10, "{}", mock.request_count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_the_429s_received() {
    let mock = MockDub::start().await.unwrap();
    mock.push_faults([
        dub::mock::Fault::RateLimited(dub::mock::RetryAfter::Seconds(0)),
        dub::mock::Fault::RateLimited(dub::mock::RetryAfter::Seconds(0)),
    ]);
    let dir = Scratch::new("429");
    dir.write("e.jsonl", &jsonl(&[lead("u1"), lead("u2"), lead("u3")]));
    let out = run(&mock, &dir.0, &["send", "--max-in-flight", "1", "e.jsonl"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        (out.count("delivered"), out.count("rate_limited")),
        (3, 2),
        "{out:?}"
    );
    assert_eq!(mock.leads().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_send_on_the_same_state_file_is_refused_while_the_first_runs() {
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(
        dub::mock::RandomFaults::new(1, 1.0).kinds([dub::mock::Fault::Delay(
            std::time::Duration::from_millis(20),
        )]),
    );
    let dir = Scratch::new("lock");
    let records: Vec<Value> = (0..200).map(|c| lead(&format!("l{c}"))).collect();
    dir.write("leads.jsonl", &jsonl(&records));
    let first = support::command(
        &mock,
        &dir.0,
        &["send", "--max-in-flight", "4", "leads.jsonl"],
    )
    .spawn()
    .unwrap();
    while mock.request_count() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let second = run(&mock, &dir.0, &["send", "leads.jsonl"]).await;
    assert_eq!(second.code, 2, "{second:?}");
    assert!(
        second.stderr.contains("in use by another dub-track"),
        "{second:?}"
    );
    let first = support::Run::from(first.wait_with_output().await.unwrap(), mock.token());
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(mock.request_count(), 200);
}
