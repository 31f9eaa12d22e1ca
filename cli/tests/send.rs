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
    // Not a terminal: no notice.
    assert!(
        !out.stderr.contains("reading records from standard input"),
        "{out:?}"
    );
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
async fn two_sends_on_one_state_file_share_the_work_and_send_each_record_once() {
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(
        dub::mock::RandomFaults::new(1, 1.0).kinds([dub::mock::Fault::Delay(
            std::time::Duration::from_millis(20),
        )]),
    );
    let dir = Scratch::new("share");
    // Sales Dub does not deduplicate: one sent by both processes would be recorded twice.
    let records: Vec<Value> = (0..200)
        .map(|c| unsafe_sale(&format!("l{c}"), 100))
        .collect();
    dir.write("sales.jsonl", &jsonl(&records));
    let args = [
        "send",
        "--allow-unsafe",
        "--max-in-flight",
        "4",
        "sales.jsonl",
    ];
    let first = support::command(&mock, &dir.0, &args).spawn().unwrap();
    while mock.request_count() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let second = run(&mock, &dir.0, &args).await;
    let first = support::Run::from(first.wait_with_output().await.unwrap(), mock.token());
    assert_eq!((first.code, second.code), (0, 0), "{first:?} {second:?}");
    assert_eq!(mock.request_count(), 200, "a record was sent twice");
    assert_eq!(mock.sales().len(), 200);
    let (d1, d2) = (first.count("delivered"), second.count("delivered"));
    assert_eq!(d1 + d2, 200, "{first:?} {second:?}");
    assert!(d2 > 0, "the second process did no work: {second:?}");
    for out in [&first, &second] {
        assert_eq!(
            out.count("delivered") + out.count("skipped"),
            200,
            "{out:?}"
        );
    }
}

/// A sale Dub does not deduplicate (no invoiceId): each request for it is recorded again.
fn unsafe_sale(customer: &str, amount: u64) -> Value {
    json!({"type": "sale", "customerExternalId": customer, "amount": amount,
           "clickId": format!("clk_{customer}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_named_twice_or_through_other_paths_sends_each_record_once() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("twice");
    let records: Vec<Value> = (0..30)
        .map(|c| unsafe_sale(&format!("t{c}"), 100))
        .collect();
    dir.write("f.jsonl", &jsonl(&records));
    std::os::unix::fs::symlink(dir.path("f.jsonl"), dir.path("link.jsonl")).unwrap();
    std::fs::hard_link(dir.path("f.jsonl"), dir.path("hard.jsonl")).unwrap();
    let out = run(
        &mock,
        &dir.0,
        &[
            "send",
            "--allow-unsafe",
            "f.jsonl",
            "f.jsonl",
            "./f.jsonl",
            "link.jsonl",
            "hard.jsonl",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.count("delivered"), 30, "{out:?}");
    assert_eq!(mock.sales().len(), 30, "a record was sent twice");
    assert_eq!(mock.request_count(), 30);
    assert!(
        out.stderr
            .contains("link.jsonl is the same file as f.jsonl"),
        "{out:?}"
    );
}

/// Sends `file` with --allow-unsafe and the state file `st`; returns the run.
async fn send_unsafe(mock: &MockDub, dir: &Scratch, extra: &[&str], file: &str) -> support::Run {
    let mut args = vec!["send", "--allow-unsafe", "--state", "st"];
    args.extend_from_slice(extra);
    args.push(file);
    run(mock, &dir.0, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_other_lines_never_resends_a_delivered_unsafe_record() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("edits");
    let a = unsafe_sale("e1", 100).to_string();
    let b = unsafe_sale("e2", 200).to_string();
    let c = unsafe_sale("e3", 300).to_string();
    // `a` twice: two records, both sent.
    dir.write("s.jsonl", &format!("{a}\n{b}\n{a}\n{c}\n"));
    let out = send_unsafe(&mock, &dir, &[], "s.jsonl").await;
    assert_eq!((out.code, out.count("delivered")), (0, 4), "{out:?}");
    assert_eq!(mock.sales().len(), 4);

    // Each edit leaves the four records as they were; none is sent again.
    let edits = [
        (
            "a blank line inserted at the top",
            format!("\n{a}\n{b}\n{a}\n{c}\n"),
        ),
        ("lines moved", format!("{c}\n{a}\n{b}\n{a}\n")),
        (
            "fields reordered and spaced",
            format!(
                "{a}\n{{ \"amount\": 200, \"type\": \"sale\", \"clickId\": \"clk_e2\", \
                 \"customerExternalId\": \"e2\" }}\n{a}\n{c}\n"
            ),
        ),
        (
            "another record inserted at the top",
            format!("{}\n{a}\n{b}\n{a}\n{c}\n", unsafe_sale("e4", 400)),
        ),
    ];
    let mut expected = 4;
    for (edit, text) in edits {
        dir.write("s.jsonl", &text);
        let out = send_unsafe(&mock, &dir, &[], "s.jsonl").await;
        assert_eq!(out.code, 0, "{edit}: {out:?}");
        if edit.starts_with("another") {
            expected += 1;
            assert_eq!(out.count("delivered"), 1, "{edit}: {out:?}");
        } else {
            assert_eq!(out.count("delivered"), 0, "{edit}: {out:?}");
        }
        assert_eq!(
            mock.sales().len(),
            expected,
            "{edit}: a record was sent again"
        );
    }

    // One of the two identical lines removed: the other is still known; a third copy added is a
    // new record, sent once.
    let e4 = unsafe_sale("e4", 400).to_string();
    dir.write("s.jsonl", &format!("{e4}\n{b}\n{a}\n{c}\n"));
    let out = send_unsafe(&mock, &dir, &[], "s.jsonl").await;
    assert_eq!((out.code, out.count("delivered")), (0, 0), "{out:?}");
    dir.write("s.jsonl", &format!("{e4}\n{a}\n{b}\n{a}\n{c}\n{a}\n"));
    let out = send_unsafe(&mock, &dir, &[], "s.jsonl").await;
    assert_eq!((out.code, out.count("delivered")), (0, 1), "{out:?}");
    assert_eq!(mock.sales().len(), 6);
    let e1 = mock
        .sales()
        .iter()
        .filter(|s| s.customer_external_id == "e1")
        .count();
    assert_eq!(e1, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_invalid_line_after_skip_invalid_resends_nothing() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("edit-invalid");
    let good: Vec<String> = (0..5)
        .map(|c| unsafe_sale(&format!("v{c}"), 100 + c).to_string())
        .collect();
    let bad = r#"{"type":"sale","customerExternalId":"bad","amount":"ten"}"#;
    dir.write(
        "s.jsonl",
        &format!(
            "{}\n{bad}\n{}\n",
            good[..2].join("\n"),
            good[2..].join("\n")
        ),
    );
    let out = send_unsafe(&mock, &dir, &["--skip-invalid"], "s.jsonl").await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        (out.count("delivered"), out.count("failed")),
        (5, 1),
        "{out:?}"
    );
    dir.write("s.jsonl", &format!("{}\n", good.join("\n")));
    let out = send_unsafe(&mock, &dir, &["--skip-invalid"], "s.jsonl").await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        (out.count("delivered"), out.count("skipped")),
        (0, 5),
        "{out:?}"
    );
    assert_eq!(mock.sales().len(), 5, "a delivered sale was sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_header_named_twice_is_refused() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("csv-twice");
    dir.write(
        "s.csv",
        "type,customerExternalId,amount,invoiceId,amount\nsale,u1,100,in_1,9999\n",
    );
    let out = run(&mock, &dir.0, &["send", "s.csv"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("s.csv:1: amount:") && out.stderr.contains("twice"),
        "{out:?}"
    );
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_of_other_inputs_is_named_and_refused_where_unsafe_records_would_be_sent() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("other-state");
    let a: Vec<Value> = (0..3).map(|c| unsafe_sale(&format!("a{c}"), 100)).collect();
    let b: Vec<Value> = (0..3).map(|c| unsafe_sale(&format!("b{c}"), 100)).collect();
    dir.write("a.jsonl", &jsonl(&a));
    dir.write("b.jsonl", &jsonl(&b));
    let out = send_unsafe(&mock, &dir, &[], "a.jsonl").await;
    assert_eq!((out.code, out.count("delivered")), (0, 3), "{out:?}");

    // b's unsafe records on a's state: they may have been sent with b's own state.
    let out = send_unsafe(&mock, &dir, &[], "b.jsonl").await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("was written for") && out.stderr.contains("a.jsonl"),
        "{out:?}"
    );
    assert!(out.stderr.contains("--adopt-state"), "{out:?}");
    assert_eq!(mock.request_count(), 3);

    // a copied under another name, with a's state: said, and nothing is sent again.
    std::fs::copy(dir.path("a.jsonl"), dir.path("copy.jsonl")).unwrap();
    let out = send_unsafe(&mock, &dir, &[], "copy.jsonl").await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.count("skipped"), 3, "{out:?}");
    assert!(out.stderr.contains("was written for"), "{out:?}");
    assert_eq!(mock.request_count(), 3);

    // Records Dub deduplicates are sent with a word only; --adopt-state takes the file as theirs.
    dir.write("safe.jsonl", &jsonl(&[sale("s1", "in_s1", 100)]));
    let out = send_unsafe(&mock, &dir, &[], "safe.jsonl").await;
    assert_eq!((out.code, out.count("delivered")), (0, 1), "{out:?}");
    assert!(out.stderr.contains("was written for"), "{out:?}");
    let out = send_unsafe(&mock, &dir, &["--adopt-state"], "b.jsonl").await;
    assert_eq!((out.code, out.count("delivered")), (0, 3), "{out:?}");
    assert_eq!(mock.request_count(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_dash_on_a_terminal_says_it_reads_standard_input() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: python3 is needed to give dub-track a terminal (pty)");
        return;
    }
    // Standard input a pty: wait for the notice on standard error (10 s at most), then type a
    // record and Ctrl-D.
    const SCRIPT: &str = r#"
import os, pty, select, subprocess, sys, time
master, slave = pty.openpty()
p = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
os.close(slave)
err = b""
deadline = time.time() + 10
while b"\n" not in err and time.time() < deadline:
    ready, _, _ = select.select([p.stderr], [], [], 0.1)
    if ready:
        chunk = os.read(p.stderr.fileno(), 4096)
        if not chunk:
            break
        err += chunk
os.write(master, sys.stdin.buffer.read() + b"\n\x04")
out, rest = p.communicate(timeout=60)
sys.stdout.buffer.write(out)
sys.stderr.buffer.write(err + rest)
sys.exit(p.returncode)
"#;
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("tty");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", SCRIPT, support::BIN, "send", "-"])
        .current_dir(&dir.0)
        .env("DUB_API_KEY", mock.token())
        .env("DUB_BASE_URL", mock.url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, lead("p1").to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = support::Run::from(child.wait_with_output().await.unwrap(), mock.token());
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("reading records from standard input"),
        "{out:?}"
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(mock.leads().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_from_before_the_sqlite_state_gets_a_clear_error() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("old-state");
    dir.write("e.jsonl", &jsonl(&[lead("o1")]));
    // The JSON Lines journal earlier versions wrote beside the file.
    let journal = format!(
        "{{\"key\":\"{}:1:0123456789abcdef\",\"outcome\":\"delivered\"}}\n",
        dir.path("e.jsonl").display()
    );
    dir.write("e.jsonl.dub-state", &journal);
    let out = run(&mock, &dir.0, &["send", "e.jsonl"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("written by an earlier dub-track")
            && out.stderr.contains("move the file away"),
        "{out:?}"
    );
    assert_eq!(mock.request_count(), 0);
    // Left as it was.
    assert_eq!(
        std::fs::read_to_string(dir.path("e.jsonl.dub-state")).unwrap(),
        journal
    );
}
