//! `RetryConfig::decide` against the safety table in README.md (also the crate docs), for every
//! row and column, over random attempts, timings and policies: the table and the code agree.

use std::time::Duration;

use dub::retry::{Attempt, Decision, Seen, Stop};
use dub::{Jitter, RetryConfig};
use proptest::prelude::*;

/// The README's safety table: (row label, [lead, sale with invoice, no dedup]) as "retried"?
fn safety_table() -> Vec<(String, [bool; 3])> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("**The safety rule**")
        .expect("README.md has the safety table");
    let rows: Vec<(String, [bool; 3])> = readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 4, "{line}");
            let retried = |c: &str| {
                let c = c.trim_start_matches("**");
                assert!(
                    c.starts_with("retried") || c.starts_with("not retried"),
                    "{c}"
                );
                c.starts_with("retried")
            };
            (
                cells[0].to_owned(),
                [retried(cells[1]), retried(cells[2]), retried(cells[3])],
            )
        })
        .collect();
    assert_eq!(rows.len(), 4, "the table has four rows");
    rows
}

/// What each row of the table covers, for a column that is (or is not) a sale.
fn row_cases(label: &str, sale: bool) -> BoxedStrategy<Seen> {
    let response = |status: u16, retry_after: Option<Duration>, race: bool| Seen::Response {
        status,
        retry_after,
        lead_not_found: race,
    };
    if label.starts_with("never sent") {
        any::<bool>()
            .prop_map(|t| Seen::NotSent { timed_out: t })
            .boxed()
    } else if label.starts_with("429") {
        let rate_limited = (0u64..5_000)
            .prop_map(move |ms| response(429, Some(Duration::from_millis(ms)), false))
            .boxed();
        if sale {
            prop_oneof![rate_limited, Just(response(404, None, true))].boxed()
        } else {
            rate_limited
        }
    } else if label.starts_with("timeout") {
        prop_oneof![
            any::<bool>().prop_map(|t| Seen::NoResponse { timed_out: t }),
            prop::sample::select(vec![500u16, 502, 503, 504])
                .prop_map(move |s| response(s, None, false)),
        ]
        .boxed()
    } else if label.starts_with("any other 4xx") {
        (400u16..500)
            .prop_filter("429 has its own row", |s| *s != 429)
            .prop_map(move |s| response(s, None, false))
            .boxed()
    } else {
        panic!("a row this test does not know: {label}")
    }
}

fn policy() -> impl Strategy<Value = RetryConfig> {
    (
        2u32..10,
        0u64..2_000,
        prop::sample::select(vec![Jitter::None, Jitter::Full, Jitter::Equal]),
    )
        .prop_map(|(attempts, initial, jitter)| {
            RetryConfig::default()
                .with_max_attempts(attempts)
                .with_initial_interval(Duration::from_millis(initial))
                .with_max_interval(Duration::from_secs(5))
                .with_max_elapsed_time(Duration::from_secs(3600))
                .with_jitter(jitter)
        })
}

#[test]
fn the_decision_follows_the_safety_table_in_every_cell() {
    let table = safety_table();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    for (label, cells) in &table {
        for (column, &expected) in cells.iter().enumerate() {
            // Columns: lead (deduplicated), sale with invoice (deduplicated), the rest.
            let deduplicated = column < 2;
            let sale = column >= 1;
            let strategy = (row_cases(label, sale), policy(), 0.0f64..1.0);
            runner
                .run(&strategy, |(seen, policy, unit)| {
                    let number = 1; // attempts remain; the deadline is an hour away
                    let attempt = Attempt::new(number, Duration::from_millis(10), deduplicated);
                    let decision = policy.decide(&seen, &attempt, unit);
                    let retried = matches!(decision, Decision::Retry { .. });
                    prop_assert_eq!(
                        retried,
                        expected,
                        "row {:?} column {}: {:?} -> {:?}",
                        label,
                        column,
                        seen,
                        decision
                    );
                    if !expected && !deduplicated && seen.may_have_been_recorded() {
                        prop_assert_eq!(decision, Decision::Stop(Stop::MayHaveBeenRecorded));
                    }
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn no_setting_ever_retries_an_unsafe_attempt_unless_opted_in() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let ambiguous = prop_oneof![
        any::<bool>().prop_map(|t| Seen::NoResponse { timed_out: t }),
        (500u16..600).prop_map(Seen::status),
    ];
    let strategy = (
        ambiguous,
        any::<u32>(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        prop::collection::vec(any::<u16>(), 0..8),
        any::<bool>(),
        any::<f64>(),
    );
    runner
        .run(
            &strategy,
            |(seen, number, elapsed, deadline, statuses, connection, unit)| {
                let policy = RetryConfig::default()
                    .with_max_attempts(u32::MAX)
                    .with_max_elapsed_time(deadline.map(Duration::from_nanos))
                    .with_retry_statuses(statuses)
                    .with_retry_connection_errors(connection);
                let attempt = Attempt::new(number, Duration::from_nanos(elapsed), false);
                let decision = policy.decide(&seen, &attempt, unit);
                prop_assert!(
                    !matches!(decision, Decision::Retry { .. }),
                    "{seen:?} -> {decision:?}"
                );
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn deadlines_attempts_and_retry_after_stop_a_call_in_time() {
    let policy = RetryConfig::default(); // 3 attempts, 30 s
    let sale = |n, s| Attempt::new(n, Duration::from_secs(s), true);
    assert_eq!(
        policy.decide(&Seen::status(503), &sale(3, 1), 0.5),
        Decision::Stop(Stop::AttemptsExhausted)
    );
    assert_eq!(
        policy.decide(&Seen::status(503), &sale(1, 30), 0.5),
        Decision::Stop(Stop::DeadlineWouldPass)
    );
    let asked = |secs| Seen::Response {
        status: 429,
        retry_after: Some(Duration::from_secs(secs)),
        lead_not_found: false,
    };
    // Beyond max_interval (10 s) but within the deadline: waited as asked.
    assert!(matches!(
        policy.decide(&asked(15), &sale(1, 1), 0.5),
        Decision::Retry { after, .. } if after == Duration::from_secs(15)
    ));
    assert_eq!(
        policy.decide(&asked(29), &sale(1, 1), 0.5),
        Decision::Stop(Stop::RetryAfterBeyondDeadline)
    );
    // A retry after a timeout costs twice as much of the budget.
    assert!(matches!(
        policy.decide(&Seen::NoResponse { timed_out: true }, &sale(1, 1), 0.5),
        Decision::Retry { cost: 10, .. }
    ));
}
