//! `dub-track send`: every record of some files, through the SDK's background tracker, with a
//! journal that lets the same command, run again, send only what is not yet done.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use dub::tracker::{HandOverErrorKind, Outcome, Tracker};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::failed_file;
use crate::input::{self, ERROR_FIELD, Format, Record, Rules};
use crate::progress::{self, Counts};
use crate::signals::Stop;
use crate::state::{Journal, Mark, NoState, StateStore};
use crate::{Connection, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, error_json};

/// How many failures are listed on standard error when there is no --failed file.
const FAILURES_LISTED: usize = 20;

/// Send every lead and sale of some files to Dub, resumably.
///
/// A file is JSON Lines (.jsonl, .ndjson, or - for standard input) or CSV (.csv, with a header
/// row). Each record has "type": "lead" or "sale" and the request's fields under Dub's names
/// (clickId, eventName, customerExternalId, amount, invoiceId, metadata, ...); in CSV an empty
/// cell is a field left out and metadata is a JSON object in the cell.
///
/// Every record is checked before anything is sent: invalid records are listed by file, line,
/// field and rule, and nothing is sent (exit 2) unless --skip-invalid. Records Dub does not
/// deduplicate (a sale without invoiceId, a lead with mode "deferred") are refused unless
/// --allow-unsafe, since a retry or a resumed run could record them twice.
///
/// The run is resumable: the state file records each record's end (delivered, failed,
/// uncertain) as it happens. After Ctrl-C, a crash or kill -9, the same command sends only what
/// is not done yet. Records Dub deduplicates that were in flight at a crash are sent again
/// (Dub records them once); an unsafe record that was being sent is reported uncertain, never
/// sent again. A customer's records are sent in file order, so put a customer's lead before its
/// sales.
///
/// At the end one line goes to standard output:
/// `delivered=N failed=N uncertain=N skipped=N rate_limited=N elapsed_s=S` (skipped: done in an
/// earlier run; rate_limited: 429 responses received). Exit 0 when every record was delivered,
/// 1 when some failed or are uncertain (now or in an earlier run), 2 for usage or input errors,
/// 130 after Ctrl-C or SIGTERM with records left (run the same command again).
///
/// Example: DUB_API_KEY=dub_xxx dub-track send --rate-limit 3000 --failed failed.jsonl sales.jsonl
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The files to send: .jsonl, .ndjson or .csv, or - for standard input (JSON Lines)
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,

    #[command(flatten)]
    connection: Connection,

    /// The API key's limit, requests a minute (1,200 or 3,000 on Dub's plans that track
    /// conversions); requests are spaced evenly below it. Without it the limit is learned from
    /// Dub's first 429, and every 429 slows the sender down. When several processes use one
    /// key, give each its share of the limit: that is the fastest way (see BENCHMARKS.md)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: Option<u32>,

    /// The state file that makes the run resumable [default: beside the first file, named
    /// after it, e.g. sales.jsonl.dub-state; none for standard input]. Delete it to send
    /// everything again
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,

    /// Write the records that failed or are uncertain to this file, as JSON Lines in the input's
    /// record format with Dub's error under "_error" (which reading ignores): fix them and send
    /// the file again
    #[arg(long, value_name = "FILE")]
    failed: Option<PathBuf>,

    /// Send the valid records even if some are invalid; the invalid ones count as failed and go
    /// to the --failed file
    #[arg(long)]
    skip_invalid: bool,

    /// Send records Dub does not deduplicate (sales without invoiceId, deferred leads). One
    /// whose outcome is unknown is then reported uncertain and never sent again
    #[arg(long)]
    allow_unsafe: bool,

    /// The files' format
    #[arg(long, value_enum, default_value_t = Format::Auto, value_name = "FORMAT")]
    format: Format,

    /// The most requests in flight at once, each for a different customer
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    max_in_flight: u16,

    /// Give a record up after this many seconds of failed attempts (through outages and 5xx it
    /// is retried with backoff until then); it then counts as failed, or uncertain if an attempt
    /// may have reached Dub
    #[arg(long, value_name = "SECONDS", default_value_t = 6 * 3600)]
    give_up_after: u64,
}

/// A record that did not get delivered, for the --failed file.
struct Failure {
    order: (usize, u64),
    file: String,
    line: u64,
    raw: Map<String, Value>,
    error: Value,
}

/// Runs `dub-track send`; returns the exit code.
pub async fn run(args: SendArgs) -> u8 {
    let started = Instant::now();
    let rules = Rules {
        allow_unsafe: args.allow_unsafe,
    };
    let inputs = match input::read_all(&args.files, args.format, rules) {
        Ok(i) => i,
        Err(e) => return usage(&e.to_string()),
    };
    for p in &inputs.problems {
        eprintln!("{p}");
    }
    if !inputs.problems.is_empty() && !args.skip_invalid {
        eprintln!(
            "dub-track: nothing sent: {} invalid record{} (fix {}, or pass --skip-invalid to \
             send the rest)",
            inputs.problems.len(),
            if inputs.problems.len() == 1 { "" } else { "s" },
            if inputs.problems.len() == 1 {
                "it"
            } else {
                "them"
            },
        );
        return EXIT_USAGE;
    }

    let mut builder = match args.connection.builder() {
        Ok(b) => b,
        Err(e) => return usage(&e),
    };
    if let Some(n) = args.rate_limit {
        builder = builder.rate_limit(dub::RateLimit::per_minute(n));
    }
    let dub = match builder.build() {
        Ok(d) => d,
        Err(e) => return usage(&crate::config_error(&e)),
    };

    if let Some(path) = &args.failed
        && let Err(e) = failed_file::check(path)
    {
        return usage(&format!(
            "nothing sent: cannot write the failed file {}: {e}",
            path.display()
        ));
    }

    let state_path = args
        .state
        .clone()
        .or_else(|| input::default_state_path(&args.files[0]));
    let state: Arc<dyn StateStore> = match &state_path {
        Some(path) => match Journal::open(path) {
            Ok(j) => Arc::new(j),
            Err(e) => return usage(&e.to_string()),
        },
        None => {
            eprintln!(
                "dub-track: no --state for standard input: this run cannot be resumed, and a \
                 rerun sends everything again"
            );
            Arc::new(NoState)
        }
    };

    let file_order = |name: &str| args.files.iter().position(|f| f == name).unwrap_or(0);
    let mut failures: Vec<Failure> = inputs
        .problems
        .iter()
        .map(|p| Failure {
            order: (file_order(&p.file), p.line),
            file: p.file.clone(),
            line: p.line,
            raw: p.raw.clone().unwrap_or_default(),
            error: error_json::invalid(&p.field, &p.rule),
        })
        .collect();
    let mut failed = inputs.problems.len() as u64;
    let mut uncertain = 0u64;
    let mut skipped = 0u64;
    let mut earlier_undelivered = 0u64;
    let mut to_send: Vec<usize> = Vec::new();
    for (index, record) in inputs.records.iter().enumerate() {
        match state.prior(&record.key) {
            Some(prior) if prior.mark.is_terminal() => {
                skipped += 1;
                if prior.mark != Mark::Delivered {
                    earlier_undelivered += 1;
                    failures.push(failure(
                        &args.files,
                        record,
                        prior.error.unwrap_or(Value::Null),
                    ));
                }
            }
            Some(_) => {
                // Handed over by a run that stopped before it knew the end: the record may have
                // reached Dub, which would record it again.
                let error = json!({
                    "kind": "interrupted",
                    "message": "an earlier run stopped while sending this record, which Dub \
                                does not deduplicate: it may have been recorded; check in Dub \
                                before sending it again",
                    "mayHaveBeenRecorded": true,
                });
                if let Err(e) = state.finished(&record.key, Mark::Uncertain, Some(&error)) {
                    eprintln!("dub-track: cannot write the state file: {e}");
                }
                uncertain += 1;
                failures.push(failure(&args.files, record, error));
            }
            None => to_send.push(index),
        }
    }
    if skipped > 0 {
        eprintln!(
            "dub-track: {skipped} record{} done in an earlier run (state: {})",
            if skipped == 1 { "" } else { "s" },
            state_path
                .as_deref()
                .map_or_else(|| "-".into(), |p| p.display().to_string())
        );
    }

    // Outcomes are written to the journal from the tracker's own task, before the tracker
    // starts another delivery: a crash can then only lose the ends of requests still in
    // flight, which is what bounds the requests a rerun repeats.
    let journal_broken = Arc::new(AtomicBool::new(false));
    let (outcomes, rate_limited, was_interrupted) = if to_send.is_empty() {
        (Vec::new(), 0, false)
    } else {
        let flush = Arc::new(Notify::new());
        let tracker = {
            let state = state.clone();
            let broken = journal_broken.clone();
            let flush = flush.clone();
            let in_flight = usize::from(args.max_in_flight);
            dub.tracker()
                .max_in_flight(in_flight)
                .max_age(Duration::from_secs(args.give_up_after))
                .capacity(window(in_flight) * 2)
                .on_outcome(move |o| {
                    let (mark, error) = match &o.outcome {
                        Outcome::Delivered(_) => (Mark::Delivered, None),
                        Outcome::Failed(e) => (Mark::Failed, Some(error_json::error(e))),
                        Outcome::Uncertain(e) => (Mark::Uncertain, Some(error_json::error(e))),
                        _ => return,
                    };
                    let Some(key) = &o.key else { return };
                    if state.finished(key, mark, error.as_ref()).is_err() {
                        broken.store(true, Ordering::Relaxed);
                    }
                    flush.notify_one();
                })
                .start()
        };
        let tracker = match tracker {
            Ok(t) => t,
            Err(e) => return usage(e.message().unwrap_or("the sender could not start")),
        };
        // Tracker::stop right after start can miss the tracker's task before it first runs (it then
        // never stops): give it a moment to start.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let flusher = tokio::spawn(flush_batches(state.clone(), flush, journal_broken.clone()));

        let interrupted = Arc::new(Notify::new());
        let stopping = Arc::new(AtomicBool::new(false));
        let signals = tokio::spawn(watch_signals(
            Stop::listen(),
            interrupted.clone(),
            stopping.clone(),
            state.clone(),
        ));

        let counts = Arc::new(Counts::default());
        let progress = tokio::spawn(progress::show(
            counts.clone(),
            to_send.len() as u64,
            tracker.clone(),
            dub.clone(),
            stopping.clone(),
        ));

        let outcomes = deliver(
            &tracker,
            &inputs.records,
            &to_send,
            &*state,
            usize::from(args.max_in_flight),
            &counts,
            &interrupted,
            &stopping,
        )
        .await;
        let was_interrupted = stopping.load(Ordering::Relaxed);
        let stats = tracker.stop().await;
        progress.abort();
        let _ = progress.await;
        signals.abort();
        flusher.abort();
        (outcomes, stats.stats.rate_limited, was_interrupted)
    };

    let mut delivered = 0u64;
    // Records never handed over (an interrupted run) are not sent, as are those the tracker
    // still held when it stopped.
    let mut not_sent = to_send.len().saturating_sub(outcomes.len()) as u64;
    for (index, outcome) in outcomes {
        let record = &inputs.records[index];
        match outcome {
            Outcome::Delivered(_) => delivered += 1,
            Outcome::Failed(e) => {
                failed += 1;
                failures.push(failure(&args.files, record, error_json::error(&e)));
            }
            Outcome::Uncertain(e) => {
                uncertain += 1;
                failures.push(failure(&args.files, record, error_json::error(&e)));
            }
            // Stopped before its turn: never attempted, so not uncertain either.
            _ => {
                release(&*state, record);
                not_sent += 1;
            }
        }
    }

    // Everything this run learnt, on disk before it says it is done.
    if let Err(e) = state.sync() {
        eprintln!("dub-track: cannot write the state file: {e}");
        journal_broken.store(true, Ordering::Relaxed);
    }

    failures.sort_by_key(|f| f.order);
    if let Some(path) = &args.failed {
        let records: Vec<Value> = failures.iter().map(Failure::line).collect();
        if let Err(e) = failed_file::write(path, &records) {
            // The last place the failures can go: they must not be lost with the file.
            eprintln!(
                "dub-track: cannot write the failed file {}: {e}; its {} record{} follow, one \
                 JSON line each",
                path.display(),
                records.len(),
                if records.len() == 1 { "" } else { "s" },
            );
            for record in &records {
                eprintln!("{record}");
            }
        }
    } else {
        for f in failures.iter().take(FAILURES_LISTED) {
            let message = f.error.get("message").and_then(Value::as_str).unwrap_or("");
            let kind = f.error.get("kind").and_then(Value::as_str).unwrap_or("");
            eprintln!("{}:{}: {kind}: {message}", f.file, f.line);
        }
        if failures.len() > FAILURES_LISTED {
            eprintln!(
                "dub-track: ... and {} more (use --failed FILE to keep them all)",
                failures.len() - FAILURES_LISTED
            );
        }
    }
    if journal_broken.load(Ordering::Relaxed) {
        eprintln!("dub-track: the state file could not be written: a rerun may send records again");
    }
    if earlier_undelivered > 0 {
        eprintln!(
            "dub-track: {earlier_undelivered} skipped record{} failed or {} uncertain in an \
             earlier run",
            if earlier_undelivered == 1 { "" } else { "s" },
            if earlier_undelivered == 1 {
                "was"
            } else {
                "were"
            },
        );
    }
    if was_interrupted && not_sent > 0 {
        eprintln!(
            "dub-track: interrupted: {not_sent} record{} not sent; run the same command again to \
             send {}",
            if not_sent == 1 { "" } else { "s" },
            if not_sent == 1 { "it" } else { "them" },
        );
    }
    println!(
        "delivered={delivered} failed={failed} uncertain={uncertain} skipped={skipped} \
         rate_limited={} elapsed_s={:.1}",
        rate_limited,
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    if was_interrupted && not_sent > 0 {
        EXIT_INTERRUPTED
    } else if failed + uncertain + earlier_undelivered + not_sent > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// How many records are handed to the tracker ahead of their turn: enough to keep every slot
/// busy while some customers wait on their earlier events, few enough that the queue stays
/// small.
fn window(max_in_flight: usize) -> usize {
    (max_in_flight * 4).max(16)
}

impl Failure {
    /// The --failed file's line: the record as read, with the error under "_error".
    fn line(&self) -> Value {
        let mut record = self.raw.clone();
        record.insert(ERROR_FIELD.into(), self.error.clone());
        Value::Object(record)
    }
}

fn failure(files: &[String], record: &Record, error: Value) -> Failure {
    Failure {
        order: (
            files.iter().position(|f| *f == record.file).unwrap_or(0),
            record.line,
        ),
        file: record.file.clone(),
        line: record.line,
        raw: record.raw.clone(),
        error,
    }
}

/// Hands the records over in order, keeping at most a window of them undelivered, and returns
/// each handed-over record's outcome.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename the arguments"
)]
async fn deliver(
    tracker: &Tracker,
    records: &[Record],
    to_send: &[usize],
    state: &dyn StateStore,
    max_in_flight: usize,
    counts: &Arc<Counts>,
    interrupted: &Notify,
    stopping: &AtomicBool,
) -> Vec<(usize, Outcome)> {
    let window = window(max_in_flight);
    let mut pending: JoinSet<(usize, Outcome)> = JoinSet::new();
    let mut done = Vec::with_capacity(to_send.len());
    let settle = |result: (usize, Outcome), done: &mut Vec<(usize, Outcome)>| {
        let counter = match &result.1 {
            Outcome::Delivered(_) => &counts.delivered,
            Outcome::Failed(_) => &counts.failed,
            Outcome::Uncertain(_) => &counts.uncertain,
            _ => {
                done.push(result);
                return;
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        done.push(result);
    };

    'records: for &index in to_send {
        let record = &records[index];
        // An unsafe record's "started" line is written just before its hand-over; handing it
        // over only when a slot is nearly free keeps "started" close to "sent", so that an
        // interruption leaves few such records uncertain that were never sent.
        let room = if record.event.is_deduplicated() {
            window
        } else {
            max_in_flight
        };
        loop {
            if stopping.load(Ordering::Relaxed) {
                break 'records;
            }
            if pending.len() < room {
                break;
            }
            tokio::select! {
                Some(Ok(result)) = pending.join_next() => settle(result, &mut done),
                () = interrupted.notified() => {}
            }
        }
        if !record.event.is_deduplicated() {
            let key = record.key.clone();
            if let Err(e) = tokio::task::block_in_place(|| state.started(&key)) {
                eprintln!(
                    "dub-track: cannot write the state file ({e}): stopping, since {}:{} could \
                     not be sent safely",
                    record.file, record.line
                );
                stopping.store(true, Ordering::Relaxed);
                break;
            }
        }
        loop {
            match tracker
                .send_with_key(record.key.clone(), record.event.clone())
                .await
            {
                Ok(receipt) => {
                    pending.spawn(async move { (index, receipt.await) });
                    break;
                }
                Err(e) if e.kind() == HandOverErrorKind::Full && !pending.is_empty() => {
                    tokio::select! {
                        Some(Ok(result)) = pending.join_next() => settle(result, &mut done),
                        () = interrupted.notified() => {}
                    }
                    if stopping.load(Ordering::Relaxed) {
                        release(state, record);
                        break 'records;
                    }
                }
                Err(e) => {
                    let error = match e.validation() {
                        Some(v) => Outcome::Failed(v.clone()),
                        None => {
                            eprintln!("dub-track: {}:{}: {e}", record.file, record.line);
                            release(state, record);
                            break 'records;
                        }
                    };
                    settle((index, error), &mut done);
                    break;
                }
            }
        }
    }
    // What was handed over ends delivered, failed or uncertain. After Ctrl-C (before or during
    // this wait) the tracker stops once the attempts in flight are answered, and the records it
    // still holds resolve as not delivered: they stay unjournaled, for the next run.
    let mut stopped = false;
    loop {
        if !stopped && stopping.load(Ordering::Relaxed) {
            stopped = true;
            let _ = tracker.clone().stop().await;
        }
        tokio::select! {
            next = pending.join_next() => match next {
                Some(Ok(result)) => settle(result, &mut done),
                Some(Err(_)) => {}
                None => break,
            },
            () = interrupted.notified(), if !stopped => {}
        }
    }
    done
}

/// Takes back the "started" mark of an unsafe record that was not sent after all, so that the
/// next run sends it instead of reporting it uncertain.
fn release(state: &dyn StateStore, record: &Record) {
    if !record.event.is_deduplicated()
        && let Err(e) = state.released(&record.key)
    {
        eprintln!("dub-track: cannot write the state file: {e}");
    }
}

/// Makes the journal durable after each batch of outcomes: a wake-up that arrives during a
/// fsync is served by the next one, so the fsyncs never queue up behind deliveries.
async fn flush_batches(state: Arc<dyn StateStore>, flush: Arc<Notify>, broken: Arc<AtomicBool>) {
    loop {
        flush.notified().await;
        let state = state.clone();
        let synced = tokio::task::spawn_blocking(move || state.sync()).await;
        if !matches!(synced, Ok(Ok(()))) {
            broken.store(true, Ordering::Relaxed);
        }
    }
}

/// First Ctrl-C or SIGTERM: stop handing records over and let the attempts in flight finish.
/// Second: leave at once, with the journal made durable.
async fn watch_signals(
    mut stop: Stop,
    interrupted: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    state: Arc<dyn StateStore>,
) {
    stop.next().await;
    stopping.store(true, Ordering::Relaxed);
    interrupted.notify_waiters();
    interrupted.notify_one();
    eprintln!("\ndub-track: stopping after the requests in flight (Ctrl-C again to quit at once)");
    stop.next().await;
    let _ = state.sync();
    eprintln!("dub-track: quit; run the same command again to send the rest");
    std::process::exit(i32::from(EXIT_INTERRUPTED));
}

fn usage(message: &str) -> u8 {
    eprintln!("dub-track: {message}");
    EXIT_USAGE
}
