//! `dub-track relay` as separate processes sharing one PostgreSQL outbox, and
//! `dub-track outbox migrate|stats|retry`, against a real PostgreSQL server (started by the
//! library's test harness) and `MockDub`.

// This binary uses part of the shared helpers.
#[allow(dead_code)]
mod support;

// The library's throwaway-cluster harness, shared rather than copied.
#[allow(dead_code)]
#[path = "../../tests/it/support/postgres.rs"]
mod postgres;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dub::mock::{Fault, MockDub, RandomFaults, RetryAfter};
use postgres::Postgres;
use support::{Scratch, command, run};
use tokio::process::Child;

fn outbox(mock: &MockDub, dir: &Scratch, url: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = command(mock, &dir.0, args);
    cmd.env("DATABASE_URL", url);
    cmd
}

/// A relay process, pacing with the others from the shared budget; its stderr in a file.
fn relay(mock: &MockDub, dir: &Scratch, url: &str, n: usize) -> Child {
    let log = std::fs::File::create(dir.0.join(format!("relay{n}.log"))).unwrap();
    outbox(
        mock,
        dir,
        url,
        &[
            "relay",
            "--lease-secs",
            "3",
            "--max-in-flight",
            "8",
            "--rate-limit",
            "3000",
        ],
    )
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .expect("spawn dub-track relay")
}

/// Waits until `child` holds a claimed row (its name is `$HOSTNAME-pid-random`), so that
/// killing it interrupts attempts in flight rather than an idle process.
async fn holding_rows(pg: &Postgres, child: &Child) {
    let pid = child.id().expect("a running relay");
    let started = Instant::now();
    let sql = format!(
        "SELECT count(*) FROM dub_outbox WHERE state = 'in_flight' \
         AND locked_by LIKE '%-{pid}-________'"
    );
    while pg.psql("postgres", &sql) == "0" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "relay {pid} claimed nothing in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn kill_9(child: &mut Child) {
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
}

async fn sigterm(mut child: Child) -> i32 {
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill with a pid of a child we own.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the relay stops on SIGTERM")
        .unwrap()
        .code()
        .unwrap_or(-1)
}

/// The counts `dub-track outbox stats` prints.
async fn stats(mock: &MockDub, dir: &Scratch, url: &str) -> Option<HashMap<String, u64>> {
    let out = outbox(mock, dir, url, &["outbox", "stats"])
        .output()
        .await
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !line.starts_with("pending=") {
        return None;
    }
    Some(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_one_killed_twice_and_a_postgres_crash_deliver_every_event_once_in_order() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.url();
    let dir = Scratch::new("relay");
    // Dub's two races and its random troubles.
    let mock = MockDub::builder()
        .lead_race(Duration::from_millis(300))
        .invoice_race(Duration::from_millis(500))
        .random_faults(RandomFaults::new(7, 0.1).kinds([
            Fault::Status(503),
            Fault::ErrorAfterRecord(500),
            Fault::ResetBeforeRecord,
            Fault::ResetAfterRecord,
            Fault::Delay(Duration::from_millis(300)),
            Fault::RateLimited(RetryAfter::Seconds(1)),
        ]))
        .start()
        .await
        .unwrap();

    let first = run(
        &mock,
        &dir.0,
        &["outbox", "migrate", "--database-url", &url],
    )
    .await;
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(
        first.stdout.trim(),
        "outbox schema migrated from version 0 to 3"
    );
    let again = run(
        &mock,
        &dir.0,
        &["outbox", "migrate", "--database-url", &url],
    )
    .await;
    assert_eq!(again.stdout.trim(), "outbox schema is current (version 3)");

    // 40 customers, each a lead and two invoiced sales; 10 of them a sale without invoice.
    let mut values = Vec::new();
    for c in 0..40 {
        values.push(format!(
            r#"('{{"type":"lead","clickId":"cl_{c}","eventName":"Sign up","customerExternalId":"c{c}"}}')"#
        ));
        for s in 0..2 {
            values.push(format!(
                r#"('{{"type":"sale","customerExternalId":"c{c}","amount":{},"invoiceId":"in_{c}_{s}"}}')"#,
                100 + s
            ));
        }
        if c < 10 {
            values.push(format!(
                r#"('{{"type":"sale","customerExternalId":"c{c}","amount":7}}')"#
            ));
        }
    }
    pg.psql(
        "postgres",
        &format!(
            "INSERT INTO dub_outbox (event) VALUES {}",
            values.join(", ")
        ),
    );

    let mut relays: Vec<Child> = (0..3).map(|n| relay(&mock, &dir, &url, n)).collect();
    let started = Instant::now();
    let wait_for = |requests: usize| {
        let mock = mock.clone();
        async move {
            while mock.request_count() < requests {
                assert!(started.elapsed() < Duration::from_secs(120), "stuck");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // One relay killed with `kill -9` in the middle of its deliveries, restarted, and the
    // restarted one killed the same way after PostgreSQL crashed under all three.
    wait_for(20).await;
    holding_rows(&pg, &relays[0]).await;
    kill_9(&mut relays[0]).await;
    relays[0] = relay(&mock, &dir, &url, 3);
    wait_for(45).await;
    pg.stop_immediate();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    pg.restart();
    wait_for(70).await;
    holding_rows(&pg, &relays[0]).await;
    kill_9(&mut relays[0]).await;
    relays[0] = relay(&mock, &dir, &url, 4);

    let finished = loop {
        if let Some(s) = stats(&mock, &dir, &url).await
            && s["pending"] == 0
            && s["in_flight"] == 0
        {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not drained; relay logs in {:?}",
            dir.0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for child in relays {
        assert_eq!(sigterm(child).await, 0);
    }
    // What the surviving relays did, for the log of a failing run.
    for n in [1, 2, 4] {
        let log = std::fs::read_to_string(dir.0.join(format!("relay{n}.log"))).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("relay stopped")) {
            eprintln!("relay {n}: {line}");
        }
    }
    let attempts = pg.psql("postgres", "SELECT sum(attempts) FROM dub_outbox");
    eprintln!(
        "{} requests, {attempts} attempts, {} s; {finished:?}",
        mock.request_count(),
        started.elapsed().as_secs()
    );

    // Nothing lost, nothing failed.
    let total = 40 * 3 + 10;
    assert_eq!(
        finished["delivered"] + finished["uncertain"],
        total,
        "{finished:?}"
    );
    assert_eq!(finished["failed"], 0);
    // Every event Dub deduplicates recorded exactly once, through kills, a crash, the races.
    let mut leads: HashMap<String, usize> = HashMap::new();
    for lead in mock.leads() {
        *leads.entry(lead.customer_external_id).or_default() += 1;
    }
    assert_eq!(leads.len(), 40);
    assert!(leads.values().all(|n| *n == 1), "{leads:?}");
    let mut invoices: HashMap<String, usize> = HashMap::new();
    let mut plain = 0;
    for sale in mock.sales() {
        match sale.invoice_id {
            Some(invoice) => *invoices.entry(invoice).or_default() += 1,
            None => plain += 1,
        }
    }
    assert_eq!(invoices.len(), 80);
    assert!(invoices.values().all(|n| *n == 1), "{invoices:?}");
    // What Dub does not deduplicate: at most once; delivered ones exactly once.
    let plain_delivered: i64 = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM dub_outbox WHERE state = 'delivered' AND dedup_key IS NULL",
        )
        .parse()
        .unwrap();
    assert!(plain <= 10);
    assert!(plain as i64 >= plain_delivered, "{plain} {plain_delivered}");
    let dedup_not_delivered = pg.psql(
        "postgres",
        "SELECT count(*) FROM dub_outbox WHERE state <> 'delivered' AND dedup_key IS NOT NULL",
    );
    assert_eq!(dedup_not_delivered, "0");
    // Every outcome written: a response for each delivered row, an error for the others.
    let unexplained = pg.psql(
        "postgres",
        "SELECT count(*) FROM dub_outbox WHERE (state = 'delivered' AND response IS NULL)
            OR (state = 'uncertain' AND last_error IS NULL)",
    );
    assert_eq!(unexplained, "0");
    // A customer's lead reached Dub before any of its sales, across relays.
    let mut lead_at: HashMap<String, usize> = HashMap::new();
    for (i, request) in mock.requests().iter().enumerate() {
        let body: serde_json::Value = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(_) => continue,
        };
        let customer = body["customerExternalId"].as_str().unwrap_or("").to_owned();
        if request.path == "/track/lead" {
            lead_at.entry(customer).or_insert(i);
        } else {
            assert!(
                lead_at.contains_key(&customer),
                "a sale of {customer} before its lead"
            );
        }
    }
}

#[tokio::test]
async fn outbox_retry_puts_failed_events_back_and_stats_counts_them() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.url();
    let dir = Scratch::new("outbox-retry");
    let mock = MockDub::start().await.unwrap();
    assert_eq!(
        run(
            &mock,
            &dir.0,
            &["outbox", "migrate", "--database-url", &url]
        )
        .await
        .code,
        0
    );
    pg.psql(
        "postgres",
        r#"INSERT INTO dub_outbox (event, state, last_error) VALUES
           ('{"type":"sale","customerExternalId":"u","amount":1,"invoiceId":"a"}', 'failed', 'HTTP 422'),
           ('{"type":"sale","customerExternalId":"u","amount":1,"invoiceId":"b"}', 'failed', 'HTTP 422'),
           ('{"type":"sale","customerExternalId":"u","amount":1}', 'uncertain', 'HTTP 503')"#,
    );
    let stats = stats(&mock, &dir, &url).await.unwrap();
    assert_eq!((stats["failed"], stats["uncertain"]), (2, 1));
    let retried = run(&mock, &dir.0, &["outbox", "retry", "--database-url", &url]).await;
    assert_eq!(
        (retried.code, retried.stdout.trim()),
        (0, "retried=2"),
        "{retried:?}"
    );
    let after = run(&mock, &dir.0, &["outbox", "stats", "--database-url", &url]).await;
    assert!(
        after
            .stdout
            .starts_with("pending=2 in_flight=0 delivered=0 failed=0 uncertain=1"),
        "{after:?}"
    );

    // No database: a clear error, not a panic.
    let none = run(
        &mock,
        &dir.0,
        &[
            "outbox",
            "stats",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/x",
        ],
    )
    .await;
    assert_eq!(none.code, 1, "{none:?}");
    assert!(none.stderr.contains("outbox database error"), "{none:?}");
    let unset = command(&mock, &dir.0, &["outbox", "stats"])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(unset.status.code(), Some(2));
}

/// `relay` and `outbox` reach a PostgreSQL over TLS (managed databases require it), verifying
/// its certificate against the CA `sslrootcert` names: a server certificate from elsewhere is
/// refused, not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_commands_speak_tls_to_postgres_and_verify_its_certificate() {
    let Some(pg) = Postgres::start() else { return };
    let Some(ca) = pg.enable_tls() else { return };
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("outbox-tls");
    let url = |mode: &str, root: &std::path::Path| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={mode}&sslrootcert={}",
            pg.port(),
            root.display()
        )
    };
    // The server takes the TLS settings on a reload, which is asynchronous: a few tries.
    let verified = url("verify-full", &ca);
    let started = Instant::now();
    let migrated = loop {
        let out = outbox(&mock, &dir, &verified, &["outbox", "migrate"])
            .output()
            .await
            .unwrap();
        if out.status.success() || started.elapsed() > Duration::from_secs(10) {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let stats = outbox(&mock, &dir, &verified, &["outbox", "stats"])
        .output()
        .await
        .unwrap();
    assert!(stats.status.success());
    assert!(String::from_utf8_lossy(&stats.stdout).starts_with("pending=0 in_flight=0"));

    // The server's own certificate is no CA: with it as the root, the server is not trusted.
    let wrong = url("verify-full", &ca.with_file_name("server.crt"));
    let refused = outbox(&mock, &dir, &wrong, &["outbox", "stats"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}

/// `--retention-days` is the period after which delivered rows are pruned (at start, then
/// hourly); failed and uncertain rows stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_prunes_delivered_rows_older_than_its_retention_days() {
    let Some(pg) = Postgres::shared() else { return };
    let url = pg.fresh_database();
    let mock = MockDub::start().await.unwrap();
    let dir = Scratch::new("relay-retention");
    let migrated = run(
        &mock,
        &dir.0,
        &["outbox", "migrate", "--database-url", &url],
    )
    .await;
    assert_eq!(migrated.code, 0, "{}", migrated.stderr);
    let database = url.rsplit('/').next().unwrap();
    let row = |n: u32, state: &str, days: u32| {
        format!(
            "INSERT INTO dub_outbox (event, state, finished_at) VALUES \
             ('{{\"type\":\"sale\",\"customerExternalId\":\"u{n}\",\"amount\":1,\"invoiceId\":\"in_{n}\"}}', \
             '{state}', now() - interval '{days} days')"
        )
    };
    for (n, state, days) in [
        (1, "delivered", 3),
        (2, "delivered", 1),
        (3, "failed", 3),
        (4, "uncertain", 3),
    ] {
        pg.psql(database, &row(n, state, days));
    }
    let log = std::fs::File::create(dir.0.join("relay.log")).unwrap();
    let child = outbox(&mock, &dir, &url, &["relay", "--retention-days", "2"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while pg.psql(database, "SELECT count(*) FROM dub_outbox").trim() != "3" {
        assert!(started.elapsed() < Duration::from_secs(30), "not pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sigterm(child).await, 0);
    let left = pg.psql(
        database,
        "SELECT event->>'invoiceId' FROM dub_outbox ORDER BY id",
    );
    assert_eq!(
        left.split_whitespace().collect::<Vec<_>>(),
        ["in_2", "in_3", "in_4"]
    );
    let log = std::fs::read_to_string(dir.0.join("relay.log")).unwrap();
    assert!(log.contains("pruned=1"), "{log}");
}
