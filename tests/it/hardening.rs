//! The hardening issue's defects and rough edges, one test each: no panic and no clear-text
//! token from any input, "not sent" whichever timer fires, budgets that survive cancellation,
//! errors that say what happened.

use std::io::{Read, Write};
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{self, lead};
use dub::mock::{Fault, MockDub, RetryAfter};
use dub::models::{TrackLeadRequest, TrackSaleRequest};
use dub::{Dub, ErrorKind, RateLimit, RetryBudget, RetryConfig};
use tokio::time::Instant;

fn sale_without_invoice() -> TrackSaleRequest {
    TrackSaleRequest::builder()
        .customer_external_id("user_1")
        .amount(4900)
        .build()
}

/// Runs the test `name` of this binary again in a child process with `env`; its `CHILD` guard
/// makes it do the work there. For what needs a process's environment (proxies, `DUB_*`).
fn run_child(name: &str, env: &[(&str, &str)]) -> (bool, String) {
    let full = match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{name}"),
        None => name.to_owned(),
    };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([full.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env("DUB_HARDENING_CHILD", name)
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs again");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ran = text.contains("1 passed");
    (out.status.success() && ran, text)
}

fn in_child(name: &str) -> bool {
    std::env::var("DUB_HARDENING_CHILD").is_ok_and(|v| v == name)
}

// --- Defect 3: the token never crosses the network in clear text through a proxy.

/// A "proxy" that counts the connections it gets and the bytes sent to it.
fn recording_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (url, seen)
}

#[test]
fn a_loopback_server_is_never_reached_through_a_proxy() {
    let (proxy, seen) = recording_proxy();
    let env = [
        ("HTTP_PROXY", proxy.as_str()),
        ("http_proxy", proxy.as_str()),
        ("ALL_PROXY", proxy.as_str()),
        ("all_proxy", proxy.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
        ("NO_PROXY", ""),
        ("no_proxy", ""),
    ];
    let (ok, output) = run_child("proxied_calls_to_a_local_mock", &env);
    assert!(ok, "the calls with proxy variables set failed:\n{output}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the proxy was contacted:\n{output}"
    );
}

#[tokio::test]
async fn proxied_calls_to_a_local_mock() {
    if !in_child("proxied_calls_to_a_local_mock") {
        return;
    }
    assert!(std::env::var("HTTP_PROXY").is_ok());
    let mock = MockDub::start().await.unwrap();
    let dub = support::dub(&mock);
    dub.track().lead(lead()).await.unwrap();
    // `localhost` is loopback too.
    let url = mock.url().replace("127.0.0.1", "localhost");
    dub.track().lead(lead()).server_url(url).await.unwrap();
    assert_eq!(mock.request_count(), 2);
}

// --- Defect 4: the blocking client runs where blocking code belongs, and only there.

#[cfg(feature = "blocking")]
mod blocking {
    use super::*;

    fn blocking_client(mock: &MockDub) -> dub::blocking::Dub {
        dub::blocking::Dub::builder()
            .token(mock.token())
            .server_url(mock.url())
            .build()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn works_in_spawn_blocking_block_in_place_and_entered_threads() {
        let mock = MockDub::start().await.unwrap();
        let dub = blocking_client(&mock);
        let d = dub.clone();
        tokio::task::spawn_blocking(move || d.track().lead(lead()).send())
            .await
            .unwrap()
            .expect("inside spawn_blocking");
        let d = dub.clone();
        tokio::task::block_in_place(|| d.track().lead(lead()).send()).expect("in block_in_place");
        let handle = tokio::runtime::Handle::current();
        let d = dub.clone();
        std::thread::spawn(move || {
            let _entered = handle.enter();
            d.track().lead(lead()).send()
        })
        .join()
        .unwrap()
        .expect("on a thread that entered a runtime handle");
        assert_eq!(mock.request_count(), 3);
    }

    #[tokio::test]
    async fn refuses_with_an_error_in_async_code_and_in_block_on() {
        let mock = MockDub::start().await.unwrap();
        let dub = blocking_client(&mock);
        let e = dub.track().lead(lead()).send().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("async code"), "{e}");
        let d = dub.clone();
        let in_task = tokio::spawn(async move { d.track().lead(lead()).send() })
            .await
            .unwrap();
        assert_eq!(in_task.unwrap_err().kind(), ErrorKind::Config);
        assert_eq!(mock.request_count(), 0);
    }
}

// --- Defect 6: nothing was sent before a connection existed, whichever timer fires.

/// Accepts TCP connections and never answers the TLS handshake: a connection that never opens.
fn silent_tls_server() -> String {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = vec![];
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    url
}

#[tokio::test]
async fn an_attempt_timeout_before_the_connection_opens_means_not_sent() {
    let url = silent_tls_server();
    let dub = Dub::builder()
        .token("dub_test")
        .server_url(&url)
        .connect_timeout(Duration::from_secs(30))
        .attempt_timeout(Duration::from_millis(200))
        .retry_config(RetryConfig::default().with_initial_interval(Duration::from_millis(10)))
        .build()
        .unwrap();
    // A sale without invoice id is retried only when nothing can have reached Dub.
    let e = dub.track().sale(sale_without_invoice()).await.unwrap_err();
    assert!(!e.may_have_been_recorded(), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e:?}");
    assert_eq!(e.attempts(), 3, "retried as never sent: {e:?}");
    // The same through the connect timeout, and through a per-call timeout of zero.
    let dub = Dub::builder()
        .token("dub_test")
        .server_url(&url)
        .connect_timeout(Duration::from_millis(200))
        .retry_config(RetryConfig::none())
        .build()
        .unwrap();
    let e = dub.track().sale(sale_without_invoice()).await.unwrap_err();
    assert!(!e.may_have_been_recorded(), "{e:?}");
    let e = dub
        .track()
        .sale(sale_without_invoice())
        .attempt_timeout(Duration::ZERO)
        .await
        .unwrap_err();
    assert!(!e.may_have_been_recorded(), "{e:?}");
}

// --- Defect 7: cancelled calls give their retry tokens back.

#[tokio::test(start_paused = true)]
async fn calls_dropped_during_backoff_do_not_drain_the_budget() {
    let mock = MockDub::start().await.unwrap();
    let budget = RetryBudget::default();
    let dub = support::client(&mock.url())
        .retry_budget(budget.clone())
        .build()
        .unwrap();
    for _ in 0..150 {
        mock.push_fault(Fault::Status(503));
        // The first attempt gets 503; the call is dropped during its 500 ms backoff.
        let cancelled =
            tokio::time::timeout(Duration::from_millis(100), dub.track().lead(lead())).await;
        assert!(cancelled.is_err());
    }
    assert_eq!(budget.available(), Some(500));
    mock.push_fault(Fault::Status(503));
    dub.track()
        .lead(lead())
        .await
        .expect("the next 503 is retried");
}

// --- Defect 2 (see also the properties below): no setting panics.

#[tokio::test(start_paused = true)]
async fn extreme_settings_never_panic() {
    let mock = MockDub::start().await.unwrap();
    let huge = [Duration::ZERO, Duration::from_nanos(1), Duration::MAX];
    for &d in &huge {
        let policy = RetryConfig::default()
            .with_max_elapsed_time(d)
            .with_initial_interval(d)
            .with_max_interval(d)
            .with_exponent(f64::INFINITY)
            .with_max_attempts(u32::MAX);
        for rate in [
            RateLimit::per_minute(1),
            RateLimit::per_minute(u32::MAX),
            RateLimit::off(),
        ] {
            let dub = support::client(&mock.url())
                .attempt_timeout(d)
                .connect_timeout(d)
                .retry_config(policy.clone())
                .retry_budget(RetryBudget::new(u64::MAX))
                .rate_limit(rate)
                .build()
                .unwrap();
            // Whatever the outcome, it is an outcome.
            let _ = tokio::time::timeout(Duration::from_secs(120), dub.track().lead(lead())).await;
        }
    }
}

/// Any value of every numeric setting, extreme ones weighted in: building the client and making
/// a call (against a mock answering half the requests 503, so the retry schedule runs, and the
/// call ends: zero backoff with unlimited attempts and budget against a server that always
/// fails would retry at full speed for ever, as configured) never panics.
#[test]
fn no_value_of_any_setting_panics() {
    use proptest::prelude::*;
    let duration = || {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            any::<u64>().prop_map(Duration::from_nanos),
            any::<u64>().prop_map(Duration::from_secs),
            (0u64..5_000).prop_map(Duration::from_millis),
        ]
    };
    let float = prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        any::<f64>()
    ];
    let strategy = (
        (duration(), duration(), duration(), duration()),
        (
            proptest::option::of(duration()),
            float,
            any::<u32>(),
            // The budget bounds the retries: a 1 ns attempt timeout, unlimited attempts and no
            // deadline retry "never sent" attempts for as long as the budget lasts, as
            // configured (extreme_settings_never_panic covers a budget of u64::MAX).
            0u64..1_000,
        ),
        (any::<u32>(), 0u8..3, 0u8..3),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &strategy,
            |(
                (attempt, connect, initial, max),
                (elapsed, exponent, attempts, budget),
                (limit, mode, jitter),
            )| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .start_paused(true)
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let mock = MockDub::start().await.unwrap();
                    mock.random_faults(
                        dub::mock::RandomFaults::new(1, 0.5).kinds([Fault::Status(503)]),
                    );
                    let policy = RetryConfig::default()
                        .with_initial_interval(initial)
                        .with_max_interval(max)
                        .with_max_elapsed_time(elapsed)
                        .with_exponent(exponent)
                        .with_max_attempts(attempts)
                        .with_jitter(match jitter {
                            0 => dub::Jitter::None,
                            1 => dub::Jitter::Full,
                            _ => dub::Jitter::Equal,
                        });
                    let rate = match mode {
                        0 => RateLimit::off(),
                        1 => RateLimit::adaptive(),
                        _ => RateLimit::per_minute(limit),
                    };
                    let dub = support::client(&mock.url())
                        .attempt_timeout(attempt)
                        .connect_timeout(connect)
                        .retry_config(policy)
                        .retry_budget(RetryBudget::new(budget))
                        .rate_limit(rate)
                        .build()
                        .unwrap();
                    let call = dub.track().lead(lead()).attempt_timeout(attempt);
                    let _ = tokio::time::timeout(Duration::from_secs(600), call).await;
                });
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

// --- Defect 1: nothing a server sends panics the client.

#[tokio::test(start_paused = true)]
async fn absurd_retry_after_values_never_panic() {
    let mock = MockDub::start().await.unwrap();
    for limiter in [RateLimit::off(), RateLimit::adaptive()] {
        for value in [
            RetryAfter::Raw("99999999999999999999999999999".into()),
            RetryAfter::Raw("18446744073709551615".into()),
            RetryAfter::Millis(u64::MAX),
            RetryAfter::UnixMillis(u64::MAX),
            RetryAfter::Seconds(u64::MAX),
        ] {
            for policy in [
                RetryConfig::default(),
                RetryConfig::default().with_max_elapsed_time(None),
            ] {
                let dub = support::client(&mock.url())
                    .retry_config(policy)
                    .rate_limit(limiter)
                    .build()
                    .unwrap();
                mock.push_fault(Fault::RateLimited(value.clone()));
                let call = tokio::time::timeout(Duration::from_secs(60), dub.track().lead(lead()));
                let _ = call.await;
                mock.clear_faults();
            }
        }
    }
}

// --- Rough edges.

#[tokio::test]
async fn connection_failures_say_what_happened() {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let dub = Dub::builder()
        .token("dub_test")
        .server_url(url)
        .retry_config(RetryConfig::none())
        .build()
        .unwrap();
    let e = dub.track().lead(lead()).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("connection refused"), "{text}");
    assert!(!text.contains('\n'));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_that_fits_the_deadline_is_waited_as_asked() {
    let mock = MockDub::start().await.unwrap();
    let dub = support::client(&mock.url())
        .rate_limit(RateLimit::off())
        .build()
        .unwrap();
    mock.push_fault(Fault::RateLimited(RetryAfter::Seconds(15)));
    let started = Instant::now();
    dub.track().lead(lead()).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(15), "{waited:?}");
    assert!(waited < Duration::from_secs(16), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_users_client_keeps_its_own_timeout() {
    let mock = MockDub::start().await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let dub = support::client(&mock.url())
        .http_client(http)
        .retry_config(RetryConfig::none())
        .build()
        .unwrap();
    assert_eq!(dub.attempt_timeout(), None);
    mock.push_fault(Fault::Delay(Duration::from_secs(5)));
    let started = Instant::now();
    let e = dub.track().lead(lead()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn whitespace_only_ids_and_names_are_refused_locally_by_name() {
    let mock = MockDub::start().await.unwrap();
    let dub = support::dub(&mock);
    let blank_id = TrackLeadRequest::builder()
        .click_id("clk")
        .event_name("Sign up")
        .customer_external_id("   ")
        .build();
    let e = dub.track().lead(blank_id).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Validation, Some("customerExternalId"))
    );
    let blank_event = TrackLeadRequest::builder()
        .click_id("clk")
        .event_name("\t")
        .customer_external_id("user_1")
        .build();
    let e = dub.track().lead(blank_event).await.unwrap_err();
    assert_eq!(e.field(), Some("eventName"));
    let empty = TrackLeadRequest::builder()
        .click_id("clk")
        .event_name("")
        .customer_external_id("user_1")
        .build();
    let e = dub.track().lead(empty).await.unwrap_err();
    assert!(e.to_string().contains("at least 1 character long"), "{e}");
    let huge = TrackSaleRequest::builder()
        .customer_external_id("user_1")
        .amount(u64::MAX)
        .build();
    let e = dub.track().sale(huge).await.unwrap_err();
    assert!(e.to_string().contains(&u64::MAX.to_string()), "{e}");
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn a_base_url_with_stray_whitespace_still_reaches_the_right_path() {
    let mock = MockDub::start().await.unwrap();
    let dub = Dub::builder()
        .token(mock.token())
        .server_url(format!("{}/\n", mock.url()))
        .build()
        .unwrap();
    dub.track().lead(lead()).await.unwrap();
    let paths: Vec<String> = mock.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/track/lead"]);
}

#[test]
fn the_environment_is_read_carefully() {
    let (ok, output) = run_child(
        "environment_child",
        &[
            ("DUB_API_KEY", "  dub_token_with_spaces \n"),
            ("DUB_BASE_URL", ""),
        ],
    );
    assert!(ok, "{output}");
}

#[test]
fn environment_child() {
    if !in_child("environment_child") {
        return;
    }
    let dub = Dub::from_env().unwrap();
    assert_eq!(dub.server_url(), Some(dub::DEFAULT_SERVER_URL));
    // The token was trimmed: it is valid in a header (a newline would not be).
    assert!(format!("{dub:?}").contains("<redacted>"));
}

#[cfg(unix)]
#[test]
fn a_non_unicode_api_key_is_reported_as_such() {
    let (ok, output) = run_child("non_unicode_child", &[]);
    assert!(ok, "{output}");
}

#[cfg(unix)]
#[test]
fn non_unicode_child() {
    if !in_child("non_unicode_child") {
        return;
    }
    // Set here, in the child, which runs this test alone.
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: the child process runs one test on one thread.
    unsafe { std::env::set_var("DUB_API_KEY", std::ffi::OsStr::from_bytes(b"dub_\xff")) };
    let e = Dub::from_env().unwrap_err();
    assert!(e.to_string().contains("not valid Unicode"), "{e}");
}

#[test]
fn the_readme_examples_read_whole_on_github() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut in_rust = false;
    for (n, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_rust = line.starts_with("```rust");
            continue;
        }
        // rustdoc hides `# ` lines; GitHub shows them: README examples must not need them.
        assert!(
            !(in_rust && (line.starts_with("# ") || line == "#")),
            "README.md line {}: a hidden doctest line: {line}",
            n + 1
        );
    }
}
