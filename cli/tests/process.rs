//! `dub-track` as a Unix process: closed pipes, signals, and what it writes where.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use dub::mock::{Fault, MockDub, RandomFaults};
use serde_json::json;
use support::{BIN, Run, Scratch, command, jsonl, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// A standard output whose reading end is already closed, as after `| head -1` or `| true`:
/// every write to it fails with EPIPE.
fn closed_stdout() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Stdio::from(writer)
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request over a fresh connection; the whole answer as text.
async fn http(port: u16, request: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer in 10 s"))??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// `POST path` with a JSON body and the mock's token, over a fresh connection; the answer.
async fn post(port: u16, path: &str, body: &str) -> String {
    http(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer dub_mock_token\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
    .unwrap()
}

/// Waits until something accepts connections on `port`, for at most 10 s.
async fn wait_for_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kill(child: &tokio::process::Child, signal: i32) {
    let pid = i32::try_from(child.id().expect("running")).unwrap();
    // SAFETY: kill(2) on a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// SIGTERM, then the exit code, which must come within `within`.
async fn sigterm(child: &mut tokio::process::Child, within: Duration) -> Option<i32> {
    kill(child, libc::SIGTERM);
    tokio::time::timeout(within, child.wait())
        .await
        .expect("no stop on SIGTERM in time")
        .unwrap()
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_with_a_closed_stdout_delivers_and_exits_by_what_happened() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("closed-stdout-send");
    let records: Vec<_> = (0..20)
        .map(|c| {
            json!({"type": "sale", "customerExternalId": format!("u{c}"), "clickId": "c",
                   "amount": 100, "invoiceId": format!("in_{c}")})
        })
        .collect();
    dir.write("sales.jsonl", &jsonl(&records));
    let mut cmd = command(&mock, &dir.0, &["send", "sales.jsonl"]);
    cmd.stdout(closed_stdout());
    // Not `output()`, which would pipe standard output again.
    let out = cmd.spawn().unwrap().wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(mock.sales().len(), 20);

    // A record that fails still says so through the exit code.
    dir.write(
        "bad.jsonl",
        &jsonl(&[
            json!({"type": "sale", "customerExternalId": "u", "amount": -1,
                         "invoiceId": "in_x"}),
        ]),
    );
    let mut cmd = command(&mock, &dir.0, &["send", "--skip-invalid", "bad.jsonl"]);
    cmd.stdout(closed_stdout());
    // Not `output()`, which would pipe standard output again.
    let out = cmd.spawn().unwrap().wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A run that cannot reach its server (a wrong --base-url, Dub unreachable, a stale address)
/// makes no progress: it says why on standard error instead of counting nothing towards an
/// end in sight, and SIGTERM still stops it with every record kept for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_that_cannot_reach_its_server_says_why_and_keeps_every_record() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("unreachable-send");
    let records: Vec<_> = (0..8)
        .map(|c| {
            json!({"type": "sale", "customerExternalId": format!("u{c}"), "amount": 100,
                   "invoiceId": format!("in_{c}")})
        })
        .collect();
    dir.write("sales.jsonl", &jsonl(&records));
    // Nothing listens on port 1 of the loopback (a privileged port no test takes): every
    // connection is refused.
    let nowhere = "http://127.0.0.1:1".to_owned();
    let mut cmd = command(
        &mock,
        &dir.0,
        &["send", "--state", "s.state", "sales.jsonl"],
    );
    cmd.env("DUB_BASE_URL", &nowhere);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let said_why = |seen: &str| {
        seen.contains("deliveries are failing")
            && seen
                .lines()
                .any(|l| l.contains("eta unknown, retrying: ") && l.contains("could not connect"))
    };
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if said_why(&seen) {
                break;
            }
        }
    })
    .await;
    assert!(waited.is_ok() && said_why(&seen), "{seen}");
    assert!(
        !seen.contains(mock.token()),
        "the token was printed: {seen}"
    );
    assert!(mock.requests().is_empty());

    kill(&child, libc::SIGTERM);
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        (rest, child.wait().await.unwrap())
    })
    .await;
    let (rest, status) = rest.expect("send did not stop on SIGTERM");
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(rest.contains("not sent"), "{rest}");

    // Pointed at the server, the same command sends them all, once.
    let again = run(
        &mock,
        &dir.0,
        &["send", "--state", "s.state", "sales.jsonl"],
    )
    .await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("delivered=8 "), "{}", again.stdout);
    assert_eq!(mock.requests().len(), 8);
}

/// A relay whose standard error is a closed pipe (`2>&1 | logger` after the logger died) keeps
/// going through its warnings (PostgreSQL unreachable here, one warning per reconnection) and
/// stops on SIGTERM with 0, not with a panic's 101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_with_a_closed_stderr_survives_its_warnings() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("closed-stderr-relay");
    let mut cmd = command(
        &mock,
        &dir.0,
        &[
            "relay",
            "--lease-secs",
            "2",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/nowhere",
        ],
    );
    cmd.stderr(closed_stdout());
    let mut child = cmd.spawn().unwrap();
    // A warning as each wait for a connection (5 s) gives up: at least one in 7 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the relay died: {:?}",
        child.try_wait()
    );
    // Within one wait for a connection, not sqlx's default 30 s.
    assert_eq!(sigterm(&mut child, Duration::from_secs(15)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_with_a_closed_stdout_keeps_serving() {
    let port = free_port();
    let mut server = Command::new(BIN)
        .args(["mock", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(closed_stdout())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if let Some(status) = server.try_wait().unwrap() {
            let mut stderr = String::new();
            let _ = server
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .await;
            panic!("the mock died with {status}: {stderr}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no mock on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = http(
        port,
        "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(server.try_wait().unwrap().is_none(), "the mock stopped");

    assert_eq!(sigterm(&mut server, Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_failed_file_is_refused_before_anything_is_sent() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("failed-unwritable");
    dir.write(
        "leads.jsonl",
        &jsonl(&[
            json!({"type": "lead", "clickId": "c", "eventName": "Sign up",
                         "customerExternalId": "u"}),
        ]),
    );
    for failed in ["no-such-dir/failed.jsonl", "."] {
        let out = run(&mock, &dir.0, &["send", "--failed", failed, "leads.jsonl"]).await;
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains(failed), "{out:?}");
        assert_eq!(mock.request_count(), 0, "sent before the check");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_that_cannot_be_written_at_the_end_go_to_stderr() {
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("failed-lost");
    // One invalid record (a failure to report) and enough slow leads to remove the failed
    // file's directory while they are sent.
    let mut records = vec![json!({"type": "sale", "customerExternalId": "bad_one",
                                  "amount": -1, "invoiceId": "in_bad"})];
    records.extend((0..100).map(|c| {
        json!({"type": "lead", "clickId": "c", "eventName": "Sign up",
               "customerExternalId": format!("u{c}")})
    }));
    dir.write("events.jsonl", &jsonl(&records));
    std::fs::create_dir(dir.path("out")).unwrap();
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([Fault::Delay(Duration::from_millis(20))]));
    let child = command(
        &mock,
        &dir.0,
        &[
            "send",
            "--skip-invalid",
            "--max-in-flight",
            "4",
            "--failed",
            "out/failed.jsonl",
            "events.jsonl",
        ],
    )
    .spawn()
    .unwrap();
    while mock.request_count() < 10 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    std::fs::remove_dir_all(dir.path("out")).unwrap();
    let out = Run::from(child.wait_with_output().await.unwrap(), mock.token());
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.count("delivered"), 100, "{out:?}");
    let listed: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(listed.len(), 1, "{out:?}");
    assert_eq!(listed[0]["customerExternalId"], "bad_one");
    assert_eq!(listed[0]["_error"]["field"], "amount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_keeps_a_bounded_history_served_and_cleared_over_http() {
    let port = free_port();
    let mut server = Command::new(BIN)
        .args(["mock", "--port", &port.to_string(), "--history", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(port).await;
    for i in 0..5 {
        let body = format!(
            "{{\"clickId\":\"c\",\"eventName\":\"Sign up\",\"customerExternalId\":\"u{i}\"}}"
        );
        let answer = post(port, "/track/lead", &body).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let get = |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        async move { http(port, &request).await }
    };
    let json_of = |answer: String| -> serde_json::Value {
        let (_, body) = answer.split_once("\r\n\r\n").expect("a body");
        serde_json::from_str(body).expect("JSON")
    };
    let stats = json_of(get("/__mock/stats").await.unwrap());
    assert_eq!(stats["requests"], 5, "{stats}");
    assert_eq!(stats["requestsKept"], 2, "{stats}");
    assert_eq!(stats["leads"], 5, "{stats}");
    let kept = json_of(get("/__mock/requests").await.unwrap());
    assert_eq!(kept["requests"].as_array().unwrap().len(), 2, "{kept}");
    assert_eq!(kept["requests"][1]["body"]["customerExternalId"], "u4");

    let answer = http(
        port,
        "DELETE /__mock/requests HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let stats = json_of(get("/__mock/stats").await.unwrap());
    assert_eq!(stats["requests"], 0, "{stats}");

    assert_eq!(sigterm(&mut server, Duration::from_secs(10)).await, Some(0));
}

/// `--invoice-race-ms`: Dub's invoice check is read-then-write, so a second sale for an
/// invoice within the window of the first is recorded again; past it, the first response is
/// returned and nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_invoice_race_records_a_second_sale_only_within_its_window() {
    const WINDOW: Duration = Duration::from_millis(3000);
    let port = free_port();
    let mut server = Command::new(BIN)
        .args([
            "mock",
            "--port",
            &port.to_string(),
            "--invoice-race-ms",
            &WINDOW.as_millis().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(port).await;
    let sale = |invoice: &'static str| async move {
        let body = format!(
            "{{\"customerExternalId\":\"u\",\"clickId\":\"c\",\"amount\":900,\"invoiceId\":\"{invoice}\"}}"
        );
        let answer = post(port, "/track/sale", &body).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    };
    let sales = || async {
        let answer = http(
            port,
            "GET /__mock/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let (_, body) = answer.split_once("\r\n\r\n").expect("a body");
        let stats: serde_json::Value = serde_json::from_str(body).expect("JSON");
        stats["sales"].as_u64().expect("a sales count")
    };

    sale("in_late").await;
    // Recorded before it was answered: the window ends at most WINDOW after this.
    let first_of_late = Instant::now();
    // Within the window: recorded again, as on Dub.
    sale("in_race").await;
    sale("in_race").await;
    assert_eq!(sales().await, 3);
    // Past the window: the first response is cached, the copy records nothing.
    tokio::time::sleep_until((first_of_late + WINDOW + Duration::from_millis(500)).into()).await;
    sale("in_late").await;
    assert_eq!(sales().await, 3);
    let kept = http(
        port,
        "GET /__mock/requests HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(kept.matches("\"status\":200").count(), 4, "{kept}");

    assert_eq!(sigterm(&mut server, Duration::from_secs(10)).await, Some(0));
}
