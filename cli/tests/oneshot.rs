//! `dub-track lead`, `dub-track sale` and `dub-track mock` end to end.

mod support;

use std::process::Stdio;
use std::time::Duration;

use dub::mock::MockDub;
use serde_json::{Value, json};
use support::{BIN, Run, Scratch, jsonl, run};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lead_and_sale_print_dubs_response() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("oneshot");
    let out = run(
        &mock,
        &dir.0,
        &[
            "lead",
            "--click-id",
            "clk_1",
            "--event-name",
            "Sign up",
            "--customer-external-id",
            "u1",
            "--customer-email",
            "ada@example.com",
            "--metadata",
            r#"{"plan":"pro"}"#,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let body: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(body["click"]["id"], "clk_1");
    assert_eq!(body["customer"]["externalId"], "u1");
    let leads = mock.leads();
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].body["metadata"]["plan"], "pro");

    let out = run(
        &mock,
        &dir.0,
        &[
            "sale",
            "--customer-external-id",
            "u1",
            "--amount",
            "4900",
            "--invoice-id",
            "in_1",
            "--currency",
            "eur",
            "--payment-processor",
            "stripe",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let body: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(body["sale"]["amount"].as_f64(), Some(4900.0));
    let sales = mock.sales();
    assert_eq!(sales.len(), 1);
    assert_eq!(
        (
            sales[0].currency.as_str(),
            sales[0].payment_processor.as_str()
        ),
        ("eur", "stripe")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_go_to_stderr_with_kind_status_code_and_whether_recorded() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("oneshot-errors");
    // Dub refuses a lead without a click for a customer it does not know: 400.
    let out = run(
        &mock,
        &dir.0,
        &[
            "lead",
            "--click-id",
            "",
            "--event-name",
            "Sign up",
            "--customer-external-id",
            "new",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty());
    let err: Value = serde_json::from_str(out.stderr.trim()).unwrap();
    assert_eq!(err["error"]["kind"], "bad_request");
    assert_eq!(err["error"]["status"], 400);
    assert_eq!(err["error"]["code"], "bad_request");
    assert_eq!(err["error"]["mayHaveBeenRecorded"], false);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("clickId")
    );

    // A field breaking a rule is refused before sending: exit 2, nothing sent.
    let before = mock.request_count();
    let out = run(
        &mock,
        &dir.0,
        &[
            "lead",
            "--click-id",
            "c",
            "--event-name",
            "e",
            "--customer-external-id",
            "u",
            "--customer-email",
            "nope",
        ],
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    let err: Value = serde_json::from_str(out.stderr.trim()).unwrap();
    assert_eq!(err["error"]["field"], "customerEmail");
    assert_eq!(mock.request_count(), before);

    // Bad usage: a missing required option, metadata that is not an object.
    let out = run(&mock, &dir.0, &["sale", "--amount", "5"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    let out = run(
        &mock,
        &dir.0,
        &[
            "sale",
            "--customer-external-id",
            "u",
            "--amount",
            "5",
            "--metadata",
            "[1]",
        ],
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");

    // A wrong token: 401, exit 1, and the token is not printed (Run checks the real one).
    let mut cmd = support::command(
        &mock,
        &dir.0,
        &[
            "sale",
            "--customer-external-id",
            "u",
            "--amount",
            "5",
            "--invoice-id",
            "i",
        ],
    );
    cmd.env("DUB_API_KEY", "dub_wrong_secret");
    let out = Run::from(cmd.output().await.unwrap(), mock.token());
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("unauthorized"), "{}", out.stderr);
    assert!(!out.stderr.contains("dub_wrong_secret"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_prints_its_url_and_token_and_serves_until_stopped() {
    let dir = Scratch::new("mock");
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut server = Command::new(BIN)
        .args([
            "mock",
            "--port",
            &port,
            "--rate-limit",
            "3000",
            "--faults",
            "0",
            "--seed",
            "7",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut env = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the mock printed nothing in 10 s")
            .unwrap()
            .unwrap();
        let (k, v) = line.split_once('=').unwrap();
        env.push((k.to_owned(), v.to_owned()));
    }
    assert_eq!(env[0].0, "DUB_BASE_URL");
    assert_eq!(env[0].1, format!("http://127.0.0.1:{port}"));
    assert_eq!(env[1].0, "DUB_API_KEY");

    dir.write(
        "e.jsonl",
        &jsonl(&[
            json!({"type": "lead", "clickId": "c", "eventName": "Sign up",
                   "customerExternalId": "u"}),
            json!({"type": "sale", "customerExternalId": "u", "amount": 5, "invoiceId": "i"}),
        ]),
    );
    // Two processes share the server.
    let send = |args: &'static [&'static str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(&dir.0)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd.output()
    };
    let (a, b) = tokio::join!(
        send(&["send", "e.jsonl"]),
        send(&[
            "lead",
            "--click-id",
            "c2",
            "--event-name",
            "Sign up",
            "--customer-external-id",
            "u2"
        ]),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.status.code(), Some(0), "{a:?}");
    assert_eq!(b.status.code(), Some(0), "{b:?}");
    let a = Run::from(a, env[1].1.as_str());
    assert_eq!(a.count("delivered"), 2, "{a:?}");

    // SIGTERM (what a test harness sends) stops it cleanly.
    let pid = i32::try_from(server.id().unwrap()).unwrap();
    // SAFETY: kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("the mock did not stop on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_has_complete_help() {
    for (args, needles) in [
        (
            vec!["--help"],
            vec!["send", "lead", "sale", "mock", "DUB_API_KEY"],
        ),
        (
            vec!["send", "--help"],
            vec![
                "--rate-limit",
                "--state",
                "--failed",
                "--skip-invalid",
                "--allow-unsafe",
                "--base-url",
                "Example:",
                "delivered=N",
            ],
        ),
        (
            vec!["lead", "--help"],
            vec![
                "--click-id",
                "--event-name",
                "--customer-external-id",
                "--mode",
                "--metadata",
                "Example:",
            ],
        ),
        (
            vec!["sale", "--help"],
            vec![
                "--customer-external-id",
                "--amount",
                "--invoice-id",
                "--currency",
                "--payment-processor",
                "Example:",
            ],
        ),
        (
            vec!["mock", "--help"],
            vec!["--port", "--rate-limit", "--faults", "--seed", "Example:"],
        ),
    ] {
        let out = Command::new(BIN).args(&args).output().await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(text.contains(n), "{args:?} help lacks {n}:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_numbers_are_refused_by_the_rule_they_break_not_by_the_parser() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("negative");
    let sale = ["sale", "--customer-external-id", "u", "--amount", "-5"];
    let out = run(&mock, &dir.0, &sale).await;
    assert_eq!(out.code, 2, "{out:?}");
    let err: Value = serde_json::from_str(out.stderr.trim()).expect("a JSON error");
    assert_eq!(err["error"]["field"], "amount", "{out:?}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("must be from 0 to "),
        "{out:?}"
    );

    let lead = [
        "lead",
        "--click-id",
        "c",
        "--event-name",
        "Sign up",
        "--customer-external-id",
        "u",
        "--event-quantity",
        "-1",
    ];
    let out = run(&mock, &dir.0, &lead).await;
    assert_eq!(out.code, 2, "{out:?}");
    let err: Value = serde_json::from_str(out.stderr.trim()).expect("a JSON error");
    assert_eq!(err["error"]["field"], "eventQuantity", "{out:?}");
    assert_eq!(mock.request_count(), 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_another_host_needs_allow_insecure_http_and_warns() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("insecure");
    // The mock's own socket through an address that is not loopback by its spelling (an
    // IPv4-mapped IPv6 address): plain http to it is refused unless allowed.
    let port = mock.url().rsplit(':').next().unwrap().to_owned();
    let url = format!("http://[::ffff:127.0.0.1]:{port}");
    let sale = [
        "sale",
        "--customer-external-id",
        "u",
        "--amount",
        "5",
        "--invoice-id",
        "i",
        "--click-id",
        "c",
        "--base-url",
        &url,
    ];
    let out = run(&mock, &dir.0, &sale).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--allow-insecure-http"), "{out:?}");
    assert!(!out.stderr.contains("allow_insecure_http("), "{out:?}");
    assert_eq!(mock.request_count(), 0);

    let mut allowed = sale.to_vec();
    allowed.push("--allow-insecure-http");
    let out = run(&mock, &dir.0, &allowed).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("warning: --allow-insecure-http"),
        "{out:?}"
    );
    assert_eq!(mock.sales().len(), 1);

    // `send` takes it too.
    dir.write(
        "s.jsonl",
        &jsonl(&[
            json!({"type": "sale", "customerExternalId": "u", "amount": 5,
                         "invoiceId": "i2"}),
        ]),
    );
    let out = run(
        &mock,
        &dir.0,
        &[
            "send",
            "--allow-insecure-http",
            "--base-url",
            &url,
            "s.jsonl",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(mock.sales().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_value_lists_are_the_crates() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("values");
    let help = run(&mock, &dir.0, &["sale", "--help"]).await;
    let help = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for processor in dub::models::PaymentProcessor::KNOWN {
        assert!(help.contains(processor), "{processor} missing: {help}");
    }
    let help = run(&mock, &dir.0, &["lead", "--help"]).await;
    for mode in dub::models::LeadMode::KNOWN {
        assert!(help.stdout.contains(mode), "{mode} missing: {help:?}");
    }
    // A value the crate knows is sent as it is.
    let sale = [
        "sale",
        "--customer-external-id",
        "u",
        "--amount",
        "5",
        "--invoice-id",
        "in_v",
        "--click-id",
        "clk_v",
        "--payment-processor",
        "revenuecat",
    ];
    let out = run(&mock, &dir.0, &sale).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(mock.sales()[0].body["paymentProcessor"], "revenuecat");
}
