//! Sending: the second pass hands each record over to the tracker under its identity, as it is
//! read, and collects the outcomes; Ctrl-C or SIGTERM stops it cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dub::tracker::{HandOverError, Outcome, Stats, Tracker};
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::Failure;
use super::plan::{Plan, window};
use crate::error_json;
use crate::exit::Status;
use crate::input::{ReadError, Record, Reread};
use crate::progress::{self, Counts};
use crate::signals::Stop;

/// What sending leaves for the summary.
pub(super) struct Done {
    pub tally: Tally,
    /// The tracker's counts: what this process settled.
    pub stats: Stats,
    /// Stopped by Ctrl-C or SIGTERM.
    pub was_interrupted: bool,
}

/// Sends the planned records; the tracker is stopped when this returns.
pub(super) async fn send(plan: &Plan, in_flight: usize) -> Done {
    let (inputs, entries, tracker) = (&plan.inputs, &plan.entries, &plan.tracker);
    // The second pass: the records again, handed over as they are read.
    let mut records = inputs.reread(entries);
    let mut tally = Tally::default();
    let interrupted = Arc::new(Notify::new());
    let stopping = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(watch_signals(
        Stop::listen(),
        interrupted.clone(),
        stopping.clone(),
    ));
    let counts = Arc::new(Counts::default());
    let progress = tokio::spawn(progress::show(
        counts.clone(),
        entries.len() as u64,
        tracker.clone(),
        plan.dub.clone(),
        stopping.clone(),
    ));
    deliver(
        tracker,
        &mut records,
        in_flight,
        &counts,
        &interrupted,
        &stopping,
        &mut tally,
    )
    .await;
    let was_interrupted = stopping.load(Ordering::Relaxed) && !tally.refused;
    let report = tracker.clone().stop().await;
    progress.abort();
    let _ = progress.await;
    signals.abort();
    Done {
        tally,
        stats: report.stats,
        was_interrupted,
    }
}

/// What the second pass found: the outcome of each record handed over, and the failures to
/// report.
#[derive(Default)]
pub(super) struct Tally {
    pub delivered: u64,
    pub failed: u64,
    pub uncertain: u64,
    pub failures: Vec<Failure>,
    /// Why the second pass stopped before the end of the inputs, if it did.
    pub read_error: Option<ReadError>,
    /// A hand-over was refused (the state file cannot be written, say): nothing more was handed
    /// over. Not an interruption: the run does not end 130.
    pub refused: bool,
}

/// What is kept of a record while it is being sent: enough to report it.
struct Sent {
    order: (usize, u64),
    file: String,
    line: u64,
    raw: Map<String, Value>,
}

impl Sent {
    fn of(record: Record) -> Sent {
        Sent {
            order: (record.file_index, record.line),
            file: record.file,
            line: record.line,
            raw: record.raw,
        }
    }

    fn failure(self, error: Value) -> Failure {
        Failure {
            order: self.order,
            file: self.file,
            line: self.line,
            raw: self.raw,
            error,
        }
    }
}

/// What became of a hand-over: the record's outcome, or why it could not be handed over.
type Handed = (Sent, Result<Outcome, HandOverError>);

/// Hands the records over in order as the second pass reads them, keeping at most a window of
/// them unanswered, and counts each one's outcome in `tally`. A record the state file already
/// settled is answered at once from the file.
async fn deliver(
    tracker: &Tracker,
    records: &mut Reread<'_>,
    max_in_flight: usize,
    counts: &Arc<Counts>,
    interrupted: &Notify,
    stopping: &AtomicBool,
    tally: &mut Tally,
) {
    let window = window(max_in_flight);
    let mut pending: JoinSet<Handed> = JoinSet::new();
    let settle = |(sent, result): Handed, tally: &mut Tally| match result {
        Ok(Outcome::Delivered(_)) => {
            counts.delivered.fetch_add(1, Ordering::Relaxed);
            tally.delivered += 1;
        }
        Ok(Outcome::Failed(e)) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            tally.failed += 1;
            tally.failures.push(sent.failure(error_json::error(&e)));
        }
        Ok(Outcome::Uncertain(e)) => {
            counts.uncertain.fetch_add(1, Ordering::Relaxed);
            tally.uncertain += 1;
            tally.failures.push(sent.failure(error_json::error(&e)));
        }
        // Stopped before its turn: it stays in the state file, for the next run.
        Ok(_) => {}
        Err(e) => match e.validation() {
            Some(v) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tally.failed += 1;
                tally.failures.push(sent.failure(error_json::error(v)));
            }
            None => {
                if !tally.refused {
                    eprintln!("dub-track: {}:{}: {e}", sent.file, sent.line);
                }
                tally.refused = true;
                stopping.store(true, Ordering::Relaxed);
            }
        },
    };

    loop {
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        while pending.len() >= window {
            tokio::select! {
                Some(Ok(handed)) = pending.join_next() => settle(handed, tally),
                () = interrupted.notified() => {}
            }
            if stopping.load(Ordering::Relaxed) {
                break;
            }
        }
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        let (_, record) = match records.next() {
            None => break,
            Some(Ok(next)) => next,
            Some(Err(e)) => {
                tally.read_error = Some(e);
                break;
            }
        };
        // Handed over without waiting for the commit: the spool commits whatever has arrived
        // meanwhile in one transaction.
        let hand_over = tracker.send_with_key(record.key.clone(), record.event.clone());
        let sent = Sent::of(record);
        pending.spawn(async move {
            let result = match hand_over.await {
                Ok(receipt) => Ok(receipt.await),
                Err(e) => Err(e),
            };
            (sent, result)
        });
    }
    // What was handed over ends delivered, failed or uncertain. After Ctrl-C (before or during
    // this wait) the tracker stops once the attempts in flight are answered, and the records it
    // still holds stay in the state file, for the next run.
    let mut stopped = false;
    loop {
        if !stopped && stopping.load(Ordering::Relaxed) {
            stopped = true;
            let _ = tracker.clone().stop().await;
        }
        tokio::select! {
            next = pending.join_next() => match next {
                Some(Ok(handed)) => settle(handed, tally),
                Some(Err(_)) => {}
                None => break,
            },
            () = interrupted.notified(), if !stopped => {}
        }
    }
}
/// First Ctrl-C or SIGTERM: stop handing records over and let the attempts in flight finish.
/// Second: leave at once (the state file holds everything handed over).
async fn watch_signals(mut stop: Stop, interrupted: Arc<Notify>, stopping: Arc<AtomicBool>) {
    stop.next().await;
    stopping.store(true, Ordering::Relaxed);
    interrupted.notify_waiters();
    interrupted.notify_one();
    eprintln!("\ndub-track: stopping after the requests in flight (Ctrl-C again to quit at once)");
    stop.next().await;
    eprintln!("dub-track: quit; run the same command again to send the rest");
    std::process::exit(i32::from(Status::Interrupted.code()));
}
