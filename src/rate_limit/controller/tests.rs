//! The controller's rules, each as a table of explicit moments: no clock, no runtime.

use super::*;

fn ms(n: u64) -> Moment {
    Duration::from_millis(n)
}

fn secs(n: f64) -> Moment {
    Duration::from_secs_f64(n)
}

/// The spacing at a known limit, requests a minute.
fn gap(limit: u32) -> Duration {
    interval(f64::from(limit) / 60.0 * MARGIN)
}

fn refused(limit: Option<u64>, reset_in: Option<Duration>) -> Answer {
    Answer::Refused { limit, reset_in }
}

/// Takes the turn asked for at `now` at once or at its booked moment, as the gate does.
fn turn(c: &mut Controller, now: Moment) -> Permit {
    match c.next_turn(now, None) {
        Turn::Now(p) => p,
        Turn::At(at) => c.start(at, at).expect("nothing moved the gate"),
        Turn::TooLate(at) => panic!("no deadline, yet too late: {at:?}"),
    }
}

fn pace(c: &Controller, now: Moment) -> f64 {
    c.snapshot(now).pace.expect("paced")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * b.abs().max(1.0)
}

#[test]
fn a_known_limit_books_evenly_spaced_turns() {
    let g = gap(600);
    let mut c = Controller::new(ms(0), Some(600));
    // (asked at, the turn given): each booking moves the next one an interval on, and a request
    // asked for after the booked turns starts when asked.
    let rows = [
        (ms(0), Turn::At(ms(0))),
        (ms(0), Turn::At(g)),
        (ms(50), Turn::At(2 * g)),
        (ms(1000), Turn::At(ms(1000))),
        (ms(1000), Turn::At(ms(1000) + g)),
    ];
    for (i, (asked, expected)) in rows.into_iter().enumerate() {
        assert_eq!(c.next_turn(asked, None), expected, "row {i}");
    }
    // A turn is taken when it comes, whatever the delay in taking it.
    let p = c.start(ms(1000) + g + ms(3), ms(1000) + g).unwrap();
    assert_eq!(p.issued, ms(1003) + g);
    assert_eq!(c.snapshot(ms(0)).pace, Some(600.0 / 60.0 * MARGIN));
}

#[test]
fn a_turn_past_the_deadline_is_refused_and_not_booked() {
    let g = gap(60);
    let mut c = Controller::new(ms(0), Some(60));
    // (asked at, deadline, the turn given)
    let rows = [
        (ms(0), None, Turn::At(ms(0))),
        (ms(0), Some(ms(500)), Turn::TooLate(g)),
        // Nothing was booked: the same turn is still free, and a deadline on it is in time.
        (ms(0), Some(g), Turn::At(g)),
        (ms(0), Some(g), Turn::TooLate(2 * g)),
        (ms(0), None, Turn::At(2 * g)),
    ];
    for (i, (asked, deadline, expected)) in rows.into_iter().enumerate() {
        assert_eq!(c.next_turn(asked, deadline), expected, "row {i}");
    }
}

#[test]
fn adaptive_goes_at_once_until_a_429() {
    let mut c = Controller::new(ms(0), None);
    for at in [0, 0, 1, 999, 5000] {
        let turn = c.next_turn(ms(at), Some(ms(at)));
        assert_eq!(
            turn,
            Turn::Now(Permit {
                epoch: 0,
                issued: ms(at)
            }),
            "{at}"
        );
    }
    let state = c.snapshot(ms(5000));
    assert_eq!(
        (state.pace, state.limit_per_minute, state.held_for),
        (None, None, None)
    );
}

#[test]
fn a_429_teaches_the_limit_and_the_pace_grows_back_along_the_curve() {
    let mut c = Controller::new(ms(0), None);
    for _ in 0..100 {
        turn(&mut c, ms(0));
    }
    let p = turn(&mut c, ms(0));
    c.learn(ms(0), &p, &refused(Some(1200), None));
    let state = c.snapshot(ms(0));
    assert_eq!(state.limit_per_minute, Some(1200));
    assert!(state.limit_learned);
    assert_eq!(state.throttled, 1);
    // The measured rate (101 a second) was far above the ceiling: cut from the ceiling.
    let ceiling = 1200.0 / 60.0 * MARGIN;
    // (seconds after the cut, the pace): 0.7 of it at once, back along CUBIC's concave curve
    // in 20 s, and never above the ceiling.
    let rows = [
        (0.0, BETA * ceiling),
        (10.0, ceiling * (1.0 - (1.0 - BETA) * 0.5f64.powi(3))),
        (20.0, ceiling),
        (60.0, ceiling),
    ];
    for (t, expected) in rows {
        let got = pace(&c, secs(t));
        assert!(close(got, expected), "{t} s: {got} != {expected}");
    }
}

#[test]
fn without_a_limit_the_pace_probes_above_the_last_cut() {
    let mut c = Controller::new(ms(0), None);
    for _ in 0..29 {
        turn(&mut c, ms(0));
    }
    let p = turn(&mut c, ms(0));
    // `X-RateLimit-Limit: 0` is "unknown": no ceiling is learned.
    c.learn(ms(0), &p, &refused(None, None));
    assert_eq!(c.snapshot(ms(0)).limit_per_minute, None);
    // 30 sent in the second before the cut: w_max = 30 a second.
    let rows = [
        (0.0, 21.0),
        (10.0, 30.0 * (1.0 - 0.3 * 0.125)),
        (20.0, 30.0),
        // Past the recovery time, 5% of w_max per 20 s, then the cubic term.
        (40.0, 30.0 * (1.0 + PROBE_GROWTH * 2.0)),
        (60.0, 30.0 * (1.0 + PROBE_GROWTH * (2.0 + 8.0))),
    ];
    for (t, expected) in rows {
        let got = pace(&c, secs(t));
        assert!(close(got, expected), "{t} s: {got} != {expected}");
    }
}

#[test]
fn refusals_of_requests_in_flight_together_cut_once() {
    let mut c = Controller::new(ms(0), Some(3000));
    let permits: Vec<_> = (0..10).map(|_| turn(&mut c, ms(0))).collect();
    let last = permits[9].issued;
    for p in &permits {
        c.learn(last, p, &refused(Some(0), None));
    }
    let state = c.snapshot(last);
    assert_eq!(state.throttled, 10);
    assert_eq!(state.limit_per_minute, Some(3000));
    assert!(!state.limit_learned);
    let expected = 3000.0 / 60.0 * MARGIN * BETA;
    assert!(close(state.pace.unwrap(), expected), "{state:?}");
}

#[test]
fn a_refusal_voids_booked_turns_behind_a_hold() {
    let g = gap(600);
    let mut c = Controller::new(ms(0), Some(600));
    let p = turn(&mut c, ms(0));
    assert_eq!(c.next_turn(ms(0), None), Turn::At(g));
    c.learn(ms(10), &p, &refused(None, None));
    // The hold is one interval at the cut pace (at least 100 ms).
    let hold = interval(BETA * 600.0 / 60.0 * MARGIN);
    assert_eq!(c.snapshot(ms(10)).held_for, Some(hold));
    // The turn booked before the refusal is void; asked again, it comes after the hold.
    assert_eq!(c.start(g, g), None);
    assert_eq!(c.next_turn(g, None), Turn::At(ms(10) + hold));
    assert!(c.start(ms(10) + hold, ms(10) + hold).is_some());
}

#[test]
fn failed_probes_double_the_hold_until_a_success_and_never_past_the_named_reset() {
    let mut c = Controller::new(ms(0), Some(600));
    let mut now = ms(0);
    // Each row: what the request sent at the next turn gets, and how the hold compares with
    // one interval at the pace after it (1 = one interval; doubling per failed probe).
    let rows: [(Answer, u32); 6] = [
        (refused(Some(600), None), 1),
        (refused(Some(600), None), 2),
        (refused(Some(600), None), 4),
        (refused(Some(600), None), 8),
        // A success of a request sent after the last refusal ends the probing...
        (Answer::Accepted, 0),
        // ...so the next refusal holds one interval again.
        (refused(Some(600), None), 1),
    ];
    for (i, (answer, factor)) in rows.into_iter().enumerate() {
        let p = turn(&mut c, now);
        now = p.issued;
        c.learn(now, &p, &answer);
        let state = c.snapshot(now);
        if factor == 0 {
            continue;
        }
        let one = interval(state.pace.unwrap()).max(MIN_HOLD);
        assert_eq!(state.held_for, Some(one * factor), "row {i}: {state:?}");
    }
    // A refusal that names the window's end 300 ms away holds no longer than just after it.
    let p = turn(&mut c, now);
    c.learn(p.issued, &p, &refused(None, Some(ms(300))));
    let state = c.snapshot(p.issued);
    assert_eq!(
        state.held_for,
        Some(ms(300) + interval(state.pace.unwrap()))
    );
}

#[test]
fn a_failed_probe_cuts_to_the_share_dub_let_through() {
    let mut c = Controller::new(ms(0), None);
    let permits: Vec<_> = (0..10).map(|_| turn(&mut c, ms(0))).collect();
    // At 1 s: the first request is refused (the first cut, from 10 a second), the other nine
    // are let through. Sent before the refusal, they are no probes.
    c.learn(secs(1.0), &permits[0], &refused(None, None));
    for p in &permits[1..] {
        c.learn(secs(1.0), p, &Answer::Accepted);
    }
    // At 2 s a request sent after the refusal is refused too: a failed probe. Dub let 9 of the
    // last 11 through, so the pace is cut to 9/11 of what it was (not to 0.7), and the curve
    // starts again from there.
    let probe = turn(&mut c, secs(2.0));
    assert_eq!(probe.issued, secs(2.0));
    let before = 10.0 * (1.0 - (1.0 - BETA) * (19.0f64 / 20.0).powi(3));
    assert!(close(pace(&c, secs(2.0)), before));
    c.learn(secs(2.0), &probe, &refused(None, None));
    let expected = BETA * (9.0 / 11.0) * before;
    let got = pace(&c, secs(2.0));
    assert!(close(got, expected), "{got} != {expected}");
}

#[test]
fn the_state_is_a_plain_value_that_can_be_stored_and_resumed() {
    // Two holders taking turns from one stored value (as processes sharing a store would)
    // get the same evenly spaced turns as one holder.
    let g = gap(600);
    let mut stored = Controller::new(ms(0), Some(600));
    let mut turns = vec![];
    for _ in 0..4 {
        let mut loaded = stored;
        turns.push(loaded.next_turn(ms(0), None));
        stored = loaded;
    }
    assert_eq!(
        turns,
        [
            Turn::At(ms(0)),
            Turn::At(g),
            Turn::At(2 * g),
            Turn::At(3 * g)
        ]
    );
}
