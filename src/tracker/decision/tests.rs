//! `decide` against the README's table "What the tracker does with a finished delivery", row by
//! row and column by column, and the promise over every combination of what a delivery can
//! end with: what Dub does not deduplicate is never sent again once it may have been recorded.

use std::time::Duration;

use reqwest::StatusCode;

use super::*;

const KINDS: [ErrorKind; 16] = ErrorKind::ALL;

const MAX_AGE: Duration = Duration::from_secs(6 * 3600);

fn settings() -> Settings {
    Settings {
        max_age: MAX_AGE,
        backoff: Backoff::doubling(Duration::from_secs(1), Duration::from_secs(300)),
        settle: Duration::ZERO,
        honour_retry_after: false,
    }
}

fn error(kind: ErrorKind, status: Option<u16>, recorded: bool, race: bool) -> Error {
    let mut e = Error::new(kind);
    let i = e.inner_mut();
    i.status = status.and_then(|s| StatusCode::from_u16(s).ok());
    i.may_have_been_recorded = recorded;
    i.lead_race = race;
    if kind == ErrorKind::Decode {
        i.raw_body = Some(bytes::Bytes::from_static(b"{\"leadEventName\":\"x\"}"));
    }
    e
}

fn facts(deduplicated: bool, maybe_sent: bool, age: Duration) -> Facts {
    Facts {
        deduplicated,
        maybe_sent,
        deliveries: 3,
        age,
    }
}

/// A verdict's class, as the table words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Delivered,
    Retried,
    Uncertain,
    Queued,
    /// Failed, or uncertain if a request may have been recorded.
    FailedOrUncertain,
}

fn class(cell: &str) -> Class {
    if cell.starts_with("delivered") {
        Class::Delivered
    } else if cell.starts_with("retried") {
        Class::Retried
    } else if cell.starts_with("uncertain") {
        Class::Uncertain
    } else if cell.starts_with("queued again") {
        Class::Queued
    } else if cell.starts_with("failed, or uncertain if") {
        Class::FailedOrUncertain
    } else {
        panic!("a verdict this test does not know: {cell}")
    }
}

/// The README's table: (row label, [deduplicated, not deduplicated]).
fn table() -> Vec<(String, [Class; 2])> {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
    let start = readme
        .find("**What the tracker does with a finished delivery**")
        .expect("README.md has the tracker's table");
    let rows: Vec<(String, [Class; 2])> = readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "{line}");
            (cells[0].to_owned(), [class(cells[1]), class(cells[2])])
        })
        .collect();
    assert_eq!(rows.len(), 7, "the table has seven rows");
    rows
}

/// The cases a row covers, for a column (deduplicated or not).
fn cases(label: &str, dedup: bool) -> Vec<(Ended, Facts, bool)> {
    let young = [Duration::ZERO, Duration::from_secs(599)];
    let mut out = Vec::new();
    // (ended, facts, may a request have been recorded)
    let mut push = |ended: Ended, f: Facts| {
        let recorded = f.maybe_sent
            || matches!(&ended, Ended::Failed(e) if e.may_have_been_recorded())
            || matches!(ended, Ended::CutOff);
        out.push((ended, f, recorded));
    };
    if label.starts_with("Dub's 2xx") {
        for maybe_sent in [false, true] {
            for age in young.into_iter().chain([MAX_AGE * 2]) {
                push(
                    Ended::Answered(Response::Raw(serde_json::json!({}))),
                    facts(dedup, maybe_sent, age),
                );
                push(
                    Ended::Failed(error(ErrorKind::Decode, Some(200), true, false)),
                    facts(dedup, maybe_sent, age),
                );
            }
        }
    } else if label.starts_with("never sent") {
        for age in young {
            for kind in [ErrorKind::Connect, ErrorKind::Timeout] {
                push(
                    Ended::Failed(error(kind, None, false, false)),
                    facts(dedup, false, age),
                );
            }
        }
    } else if label.starts_with("429") {
        for age in young {
            push(
                Ended::Failed(error(ErrorKind::RateLimitExceeded, Some(429), false, false)),
                facts(dedup, false, age),
            );
            push(
                Ended::Failed(error(ErrorKind::NotFound, Some(404), false, true)),
                facts(dedup, false, age),
            );
        }
    } else if label.starts_with("timeout") {
        for age in young {
            for maybe_sent in [false, true] {
                for (kind, status) in [
                    (ErrorKind::Timeout, None),
                    (ErrorKind::Transport, None),
                    (ErrorKind::InternalServerError, Some(500)),
                    (ErrorKind::UnexpectedStatus, Some(502)),
                    (ErrorKind::UnexpectedStatus, Some(503)),
                    (ErrorKind::UnexpectedStatus, Some(504)),
                ] {
                    push(
                        Ended::Failed(error(kind, status, true, false)),
                        facts(dedup, maybe_sent, age),
                    );
                }
            }
        }
    } else if label.starts_with("any other 4xx") {
        for maybe_sent in [false, true] {
            for recorded in [false, true] {
                for age in young {
                    for (kind, status) in [
                        (ErrorKind::BadRequest, 400),
                        (ErrorKind::Unauthorized, 401),
                        (ErrorKind::Forbidden, 403),
                        (ErrorKind::NotFound, 404),
                        (ErrorKind::Conflict, 409),
                        (ErrorKind::InviteExpired, 410),
                        (ErrorKind::UnprocessableEntity, 422),
                        (ErrorKind::UnexpectedStatus, 418),
                    ] {
                        push(
                            Ended::Failed(error(kind, Some(status), recorded, false)),
                            facts(dedup, maybe_sent, age),
                        );
                    }
                }
                push(
                    Ended::Failed(error(ErrorKind::NotFound, Some(404), recorded, true)),
                    facts(dedup, maybe_sent, LEAD_RACE_WINDOW),
                );
            }
        }
    } else if label.starts_with("a retryable failure after `max_age`") {
        for maybe_sent in [false, true] {
            for (kind, status, recorded) in [
                (ErrorKind::Connect, None, false),
                (ErrorKind::RateLimitExceeded, Some(429), false),
                (ErrorKind::Timeout, None, true),
                (ErrorKind::UnexpectedStatus, Some(503), true),
            ] {
                push(
                    Ended::Failed(error(kind, status, recorded, false)),
                    facts(dedup, maybe_sent, MAX_AGE),
                );
            }
        }
    } else if label.starts_with("cut off") {
        for maybe_sent in [false, true] {
            for age in young.into_iter().chain([MAX_AGE]) {
                push(Ended::CutOff, facts(dedup, maybe_sent, age));
            }
        }
    } else {
        panic!("a row this test does not know: {label}")
    }
    out
}

fn verdict_class(v: &Verdict) -> &'static str {
    match v {
        Verdict::Delivered(_) => "delivered",
        Verdict::Failed(_) => "failed",
        Verdict::Uncertain(_) => "uncertain",
        Verdict::Retry { .. } => "retried",
        Verdict::Requeue => "queued again",
    }
}

#[test]
fn every_row_and_column_of_the_readme_table_holds() {
    let mut checked = 0;
    for (label, columns) in table() {
        for (column, dedup) in [(0, true), (1, false)] {
            let expected = columns[column];
            for (ended, f, recorded) in cases(&label, dedup) {
                let described = format!("{label} / dedup {dedup} / {ended:?} / {f:?}");
                let v = decide(ended, &f, &settings(), 0.5);
                let ok = match expected {
                    Class::Delivered => matches!(v, Verdict::Delivered(_)),
                    Class::Retried => matches!(v, Verdict::Retry { .. }),
                    Class::Uncertain => matches!(v, Verdict::Uncertain(_)),
                    Class::Queued => matches!(v, Verdict::Requeue),
                    Class::FailedOrUncertain if recorded => matches!(v, Verdict::Uncertain(_)),
                    Class::FailedOrUncertain => matches!(v, Verdict::Failed(_)),
                };
                assert!(
                    ok,
                    "{described}: {} (table: {expected:?})",
                    verdict_class(&v)
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 200, "{checked}");
}

/// Every kind of error, status, flag, age and history: nothing Dub does not deduplicate is
/// sent again (retried or queued again) once a request for it may have reached Dub; nothing is
/// called failed that may have been recorded; a retry waits within the backoff's bounds.
#[test]
fn what_dub_does_not_deduplicate_is_never_sent_again_once_it_may_have_been_recorded() {
    let statuses = [
        None,
        Some(200),
        Some(201),
        Some(400),
        Some(404),
        Some(409),
        Some(418),
        Some(429),
        Some(500),
        Some(503),
    ];
    let ages = [
        Duration::ZERO,
        LEAD_RACE_WINDOW - Duration::from_millis(1),
        LEAD_RACE_WINDOW,
        MAX_AGE - Duration::from_millis(1),
        MAX_AGE,
        Duration::MAX,
    ];
    let s = settings();
    let mut checked = 0u32;
    for kind in KINDS {
        for status in statuses {
            for recorded in [false, true] {
                for race in [false, true] {
                    for dedup in [false, true] {
                        for maybe_sent in [false, true] {
                            for age in ages {
                                for deliveries in [1, 2, 30, u32::MAX] {
                                    for jitter in [0.0, 0.999, f64::NAN] {
                                        let f = Facts {
                                            deduplicated: dedup,
                                            maybe_sent,
                                            deliveries,
                                            age,
                                        };
                                        let e = error(kind, status, recorded, race);
                                        let v = decide(Ended::Failed(e), &f, &s, jitter);
                                        let may_be_recorded = maybe_sent
                                            || recorded
                                            || (kind == ErrorKind::Decode
                                                && status.is_some_and(|s| s < 300));
                                        check(&v, dedup, may_be_recorded, &s, &f);
                                        checked += 1;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    for dedup in [false, true] {
        for maybe_sent in [false, true] {
            let f = facts(dedup, maybe_sent, Duration::ZERO);
            let v = decide(Ended::CutOff, &f, &s, 0.5);
            check(&v, dedup, true, &s, &f);
            let v = decide(
                Ended::Answered(Response::Raw(serde_json::Value::Null)),
                &f,
                &s,
                0.5,
            );
            assert!(matches!(v, Verdict::Delivered(_)));
        }
    }
    assert!(checked > 100_000, "{checked}");
}

fn check(v: &Verdict, dedup: bool, may_be_recorded: bool, s: &Settings, f: &Facts) {
    let sent_again = matches!(v, Verdict::Retry { .. } | Verdict::Requeue);
    assert!(
        dedup || !(sent_again && may_be_recorded),
        "sent again although Dub does not deduplicate it and it may be recorded: {v:?} {f:?}"
    );
    assert!(
        !(matches!(v, Verdict::Failed(_)) && may_be_recorded),
        "failed although it may be recorded: {v:?} {f:?}"
    );
    if let Verdict::Retry {
        after, maybe_sent, ..
    } = v
    {
        assert!(*after <= s.backoff.max, "{after:?}");
        assert!(dedup || !maybe_sent, "{v:?}");
    }
}

/// The relay's two settings: after a delivery that may have reached Dub the retry waits out
/// the settle window, and it waits at least the `Retry-After` Dub asked for; with the tracker's
/// settings (zero, off) the backoff alone decides.
#[test]
fn settle_and_retry_after_lengthen_a_retry_only_when_set() {
    let relay = Settings {
        settle: Duration::from_secs(10),
        honour_retry_after: true,
        ..settings()
    };
    let after = |e: Error, s: &Settings| match decide(
        Ended::Failed(e),
        &facts(true, false, Duration::ZERO),
        s,
        0.5,
    ) {
        Verdict::Retry { after, .. } => after,
        v => panic!("{v:?}"),
    };
    let unknown = || error(ErrorKind::UnexpectedStatus, Some(503), true, false);
    let refused_before_sending = || error(ErrorKind::Connect, None, false, false);
    assert_eq!(after(unknown(), &relay), Duration::from_secs(10));
    assert!(after(refused_before_sending(), &relay) < Duration::from_secs(10));
    assert!(after(unknown(), &settings()) < Duration::from_secs(10));
    let asked = || {
        let mut e = error(ErrorKind::RateLimitExceeded, Some(429), false, false);
        e.inner_mut().retry_after = Some(Duration::from_secs(42));
        e
    };
    assert_eq!(after(asked(), &relay), Duration::from_secs(42));
    assert!(after(asked(), &settings()) < Duration::from_secs(42));
}
