//! Retry behaviour over real loopback HTTP, on tokio's paused clock: exact schedules without
//! real sleeps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{self, TOKEN, lead, refused_url};
use dub::mock::{ExactReply, MockDub};
use dub::models::{LeadMode, TrackSaleRequest};
use dub::{Dub, ErrorKind, Jitter, RateLimit, RetryBudget, RetryConfig};
use tokio::time::Instant;

fn exact() -> RetryConfig {
    RetryConfig::default().with_jitter(Jitter::None)
}

/// A client whose waits are exactly the policy's. The rate limiter is off: with it on, a 429's
/// wait is the limiter's, for the whole client (tests/rate_limits.rs).
fn dub(server: &MockDub, retry: RetryConfig) -> Dub {
    support::client(&server.url())
        .rate_limit(RateLimit::off())
        .attempt_timeout(Duration::from_secs(3600))
        .retry_config(retry)
        .retry_budget(RetryBudget::unlimited())
        .build()
        .unwrap()
}

fn status(s: u16) -> ExactReply {
    support::error(s, "oops", "Failed.")
}

#[tokio::test(start_paused = true)]
async fn backoff_schedule_is_exact() {
    let server = support::mock_with([status(503), status(503)]).await;
    dub(&server, exact()).track().lead(lead()).await.unwrap();
    assert_eq!(support::arrivals_ms(&server), [0, 500, 1500]);
}

#[tokio::test(start_paused = true)]
async fn delays_are_capped_at_max_interval() {
    let server = support::mock_with([status(503), status(503), status(503)]).await;
    let retry = exact()
        .with_max_attempts(4)
        .with_initial_interval(Duration::from_secs(1))
        .with_exponent(10.0)
        .with_max_interval(Duration::from_secs(3))
        .with_max_elapsed_time(None);
    dub(&server, retry).track().lead(lead()).await.unwrap();
    assert_eq!(support::arrivals_ms(&server), [0, 1000, 4000, 7000]);
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_in_bounds() {
    for (jitter, first, second) in [
        (Jitter::Full, (0, 1000), (0, 2000)),
        (Jitter::Equal, (500, 1000), (1000, 2000)),
    ] {
        let mut gaps = Vec::new();
        for _ in 0..30 {
            let server = support::mock_with([status(503), status(503)]).await;
            let retry = RetryConfig::default()
                .with_initial_interval(Duration::from_secs(1))
                .with_jitter(jitter);
            dub(&server, retry).track().lead(lead()).await.unwrap();
            let t = support::arrivals_ms(&server);
            let (g1, g2) = (t[1] - t[0], t[2] - t[1]);
            assert!(
                (first.0..=first.1).contains(&g1),
                "{jitter:?} first gap {g1}"
            );
            assert!(
                (second.0..=second.1).contains(&g2),
                "{jitter:?} second gap {g2}"
            );
            gaps.push(g1);
        }
        gaps.dedup();
        assert!(
            gaps.len() > 5,
            "{jitter:?} delays are not randomised: {gaps:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_time_bounds_the_call() {
    let server = support::mock_with(std::iter::repeat_n(status(503), 100)).await;
    let retry = exact()
        .with_max_attempts(100)
        .with_initial_interval(Duration::from_secs(1))
        .with_exponent(1.0)
        .with_max_elapsed_time(Duration::from_millis(3500));
    let started = Instant::now();
    let err = dub(&server, retry).track().lead(lead()).await.unwrap_err();
    assert_eq!(support::arrivals_ms(&server), [0, 1000, 2000, 3000]);
    assert_eq!(err.attempts(), 4);
    assert_eq!(err.kind(), ErrorKind::UnexpectedStatus);
    assert!(started.elapsed() <= Duration::from_millis(3500));
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_are_cut_to_the_deadline() {
    let server = support::mock_with([
        support::json(200, support::lead_body()).delay(Duration::from_secs(60))
    ])
    .await;
    let retry = exact().with_max_elapsed_time(Duration::from_secs(2));
    let started = Instant::now();
    let err = dub(&server, retry).track().lead(lead()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    // reqwest's timer fires 50 ms after the attempt's deadline (CONNECT_FIRST), so that a
    // connection still opening at the deadline is reported as never sent (transport/connect.rs).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_millis(2_060),
        "{took:?}"
    );
    assert!(err.message().unwrap().contains("deadline"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn per_call_policy_overrides_the_client() {
    let server = support::mock_with([status(503), status(503)]).await;
    let off = dub(&server, RetryConfig::none());
    off.track()
        .lead(lead())
        .retry_config(exact())
        .await
        .unwrap();
    assert_eq!(server.request_count(), 3);
    let server = support::mock_with([status(503)]).await;
    let on = dub(&server, exact());
    let err = on
        .track()
        .lead(lead())
        .retry_config(RetryConfig::none())
        .await
        .unwrap_err();
    assert_eq!((server.request_count(), err.attempts()), (1, 1));
}

/// The wall clock as the client reads it (see `src/clock.rs`): on tokio's paused clock it moves
/// with virtual time, so absolute times in headers are made from it, not from `SystemTime`.
fn wall_now() -> SystemTime {
    let real = std::time::Instant::now();
    let virtual_now = tokio::time::Instant::now().into_std();
    match virtual_now.checked_duration_since(real) {
        Some(ahead) => SystemTime::now() + ahead,
        None => SystemTime::now() - real.duration_since(virtual_now),
    }
}

fn unix_ms_in(d: Duration) -> String {
    (wall_now() + d)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string()
}

#[tokio::test(start_paused = true)]
async fn retry_after_in_every_form() {
    // Each reply is made just before its case: a timestamp made earlier would be stale by the
    // wall-clock time the cases before it took (hundreds of ms on a loaded machine).
    type Make = Box<dyn Fn() -> ExactReply>;
    let cases: [(Make, u128, u128); 6] = [
        (
            Box::new(|| status(429).header("retry-after-ms", "1500")),
            1500,
            1500,
        ),
        (
            Box::new(|| status(429).header("retry-after", "2")),
            2000,
            2000,
        ),
        // An HTTP date has whole seconds (so 3 to 4 s ahead), and the client reads it after some
        // wall-clock time, up to a second on a loaded machine: anything from 2 s proves it was
        // understood (a fallback would wait 500 ms).
        (
            Box::new(|| {
                let date = httpdate::fmt_http_date(wall_now() + Duration::from_secs(4));
                status(429).header("retry-after", &date)
            }),
            2000,
            4000,
        ),
        // Dub's actual header: a Unix timestamp in milliseconds (read as seconds, it would lie
        // past the deadline and the call would not be retried; a fallback would wait 500 ms).
        (
            Box::new(|| status(429).header("retry-after", unix_ms_in(Duration::from_millis(2500)))),
            1500,
            2500,
        ),
        // Garbage and negative values fall back to the backoff.
        (
            Box::new(|| status(429).header("retry-after", "soon")),
            500,
            500,
        ),
        (
            Box::new(|| status(429).header("retry-after", "-4")),
            500,
            500,
        ),
    ];
    for (make, low, high) in cases {
        let reply = make();
        let shown = format!("{:?}", reply.headers);
        let server = support::mock_with([reply]).await;
        dub(&server, exact())
            .track()
            .sale(
                TrackSaleRequest::builder()
                    .customer_external_id("u")
                    .amount(1)
                    .build(),
            )
            .await
            .unwrap();
        let gap = support::arrivals_ms(&server)[1];
        assert!((low..=high).contains(&gap), "{shown}: waited {gap} ms");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_as_asked_within_the_deadline_and_capped_without_one() {
    // Beyond max_interval, within the deadline: the server's wait, not a refusal-bound retry.
    let server = support::mock_with([status(429).header("retry-after", "20")]).await;
    let retry = exact()
        .with_max_interval(Duration::from_secs(5))
        .with_max_elapsed_time(Duration::from_secs(60));
    dub(&server, retry).track().lead(lead()).await.unwrap();
    assert_eq!(support::arrivals_ms(&server), [0, 20_000]);
    // No deadline: capped at max_interval.
    let server = support::mock_with([status(429).header("retry-after", "20")]).await;
    let retry = exact()
        .with_max_interval(Duration::from_secs(5))
        .with_max_elapsed_time(None);
    dub(&server, retry).track().lead(lead()).await.unwrap();
    assert_eq!(support::arrivals_ms(&server), [0, 5000]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_deadline_returns_at_once() {
    let server =
        support::mock_with(
            [status(429).header("retry-after", unix_ms_in(Duration::from_secs(45)))],
        )
        .await;
    let started = Instant::now();
    let err = dub(&server, exact())
        .track()
        .lead(lead())
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(err.kind(), ErrorKind::RateLimitExceeded);
    assert_eq!(err.attempts(), 1);
    let asked = err.retry_after().unwrap();
    assert!(
        asked > Duration::from_secs(40) && asked <= Duration::from_secs(45),
        "{asked:?}"
    );
    assert!(!err.may_have_been_recorded());
}

#[tokio::test(start_paused = true)]
async fn sale_without_invoice_is_not_retried_after_a_500() {
    let server = support::mock_with([status(500)]).await;
    let err = dub(&server, exact())
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(100)
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(server.request_count(), 1);
    assert_eq!(err.kind(), ErrorKind::InternalServerError);
    assert!(err.may_have_been_recorded());
    assert!(err.to_string().contains("may have been recorded"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn sale_with_invoice_is_retried_and_succeeds() {
    let server = support::mock_with([status(500), status(502)]).await;
    let sale = dub(&server, exact())
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(100)
                .invoice_id("in_1")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(sale.event_name, "Purchase");
    assert_eq!(server.request_count(), 3);
    let bodies: Vec<_> = server.requests().iter().map(|r| r.body.clone()).collect();
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every attempt sends the same body"
    );
}

#[tokio::test(start_paused = true)]
async fn ambiguous_retries_only_when_opted_in() {
    let server = support::mock_with([status(500)]).await;
    dub(&server, exact().with_retry_ambiguous(true))
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(100)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(server.request_count(), 2);
    let server = support::mock_with([status(503)]).await;
    let mut deferred = lead();
    deferred.mode = Some(LeadMode::Deferred);
    let err = dub(&server, exact())
        .track()
        .lead(deferred)
        .await
        .unwrap_err();
    assert_eq!(
        (server.request_count(), err.may_have_been_recorded()),
        (1, true)
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_follow_the_safety_rule() {
    let slow = || support::json(200, support::sale_body()).delay(Duration::from_secs(30));
    let server = support::mock_with([slow()]).await;
    let client = Dub::builder()
        .token(TOKEN)
        .server_url(server.url())
        .attempt_timeout(Duration::from_secs(1))
        .retry_config(exact())
        .build()
        .unwrap();
    let err = client
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(1)
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (
            err.kind(),
            server.request_count(),
            err.may_have_been_recorded()
        ),
        (ErrorKind::Timeout, 1, true)
    );
    let server = support::mock_with([slow()]).await;
    let client = Dub::builder()
        .token(TOKEN)
        .server_url(server.url())
        .attempt_timeout(Duration::from_secs(1))
        .retry_config(exact())
        .build()
        .unwrap();
    client
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(1)
                .invoice_id("in_9")
                .build(),
        )
        .await
        .unwrap();
    // A 1 s attempt (ended 50 ms late by design, CONNECT_FIRST in transport/connect.rs),
    // then 500 ms.
    assert_eq!(support::arrivals_ms(&server), [0, 1550]);
}

#[tokio::test(start_paused = true)]
async fn connection_refused_is_retried() {
    let client = Dub::builder()
        .token(TOKEN)
        .server_url(refused_url().await)
        .retry_config(exact())
        .retry_budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(1)
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert_eq!(err.attempts(), 3);
    assert!(!err.may_have_been_recorded(), "nothing reached a server");
    assert_eq!(started.elapsed(), Duration::from_millis(1500));
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_never_retried() {
    for s in [400, 401, 403, 404, 409, 410, 422] {
        let server = support::mock_with([status(s)]).await;
        let err = dub(&server, exact().with_retry_ambiguous(true))
            .track()
            .lead(lead())
            .await
            .unwrap_err();
        assert_eq!((server.request_count(), err.attempts()), (1, 1), "{s}");
        assert!(!err.may_have_been_recorded());
    }
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_limits_retries_across_calls() {
    let server = support::mock_with(std::iter::repeat_n(status(503), 10)).await;
    let client = Dub::builder()
        .token(TOKEN)
        .server_url(server.url())
        .retry_config(exact().with_max_attempts(5))
        .retry_budget(RetryBudget::new(10))
        .build()
        .unwrap();
    let first = client.track().lead(lead()).await.unwrap_err();
    let second = client.track().lead(lead()).await.unwrap_err();
    assert_eq!((first.attempts(), second.attempts()), (3, 1));
    assert_eq!(server.request_count(), 4);
}
