//! `dub-track send`: every record of some files, through the SDK's background tracker, with a
//! journal that lets the same command, run again, send only what is not yet done.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Args;
use dub::tracker::{HandOverErrorKind, Outcome, Tracker};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::failed_file;
use crate::input::{self, ERROR_FIELD, Entry, Format, Inputs, ReadError, Record, Reread, Rules};
use crate::signals::Stop;
use crate::state::{Journal, Mark, NoState, StateStore};
use crate::{Connection, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, error_json};

/// How often progress lines are printed when standard error is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);
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
/// uncertain) as it happens. A record is known by its content (its fields, in any order or
/// format) and its rank among identical records, so editing other lines of a file, or naming a
/// file twice, never sends a record again. After Ctrl-C, a crash or kill -9, the same command sends only what
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

    /// Use the state file although it was written for input files of other names (after
    /// renaming them, say). Without it, a state file of other inputs is refused when records Dub
    /// does not deduplicate would be sent on its word
    #[arg(long)]
    adopt_state: bool,

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

/// Counts the progress display reads while the run goes on.
#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
    uncertain: AtomicU64,
}

/// What the plan says of one record, decided from the state before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Send it.
    Send,
    /// Delivered in an earlier run.
    Done,
    /// Failed or uncertain in an earlier run: reported again, not sent.
    Earlier,
    /// Handed over by an earlier run that stopped before its end: uncertain, not sent.
    Interrupted,
}

/// What planning decided for every record of the first pass, in order.
struct Plan {
    decisions: Vec<Decision>,
    /// How many records are to be sent.
    to_send: u64,
    /// Of those, how many Dub does not deduplicate.
    unsafe_to_send: u64,
    /// Records done in an earlier run (delivered, failed or uncertain).
    skipped: u64,
    /// Of those, how many failed or are uncertain.
    earlier_undelivered: u64,
    /// Records found interrupted: uncertain now.
    interrupted: u64,
}

/// Decides what becomes of each record from what earlier runs recorded. An unsafe record an
/// earlier run handed over without an end is marked uncertain in the state here.
fn plan(entries: &[Entry], state: &dyn StateStore) -> Plan {
    let mut plan = Plan {
        decisions: Vec::with_capacity(entries.len()),
        to_send: 0,
        unsafe_to_send: 0,
        skipped: 0,
        earlier_undelivered: 0,
        interrupted: 0,
    };
    let mut key = String::new();
    for entry in entries {
        use std::fmt::Write as _;
        key.clear();
        let _ = write!(key, "{}", entry.key());
        let decision = match state.prior(&key) {
            Some(prior) if prior.mark == Mark::Delivered => Decision::Done,
            Some(prior) if prior.mark.is_terminal() => Decision::Earlier,
            Some(_) => {
                if let Err(e) = state.finished(&key, Mark::Uncertain, Some(&interrupted_error())) {
                    eprintln!("dub-track: cannot write the state file: {e}");
                }
                Decision::Interrupted
            }
            None => Decision::Send,
        };
        match decision {
            Decision::Send => {
                plan.to_send += 1;
                plan.unsafe_to_send += u64::from(!entry.deduplicated);
            }
            Decision::Done => plan.skipped += 1,
            Decision::Earlier => {
                plan.skipped += 1;
                plan.earlier_undelivered += 1;
            }
            Decision::Interrupted => plan.interrupted += 1,
        }
        plan.decisions.push(decision);
    }
    plan
}

/// The error of a record an earlier run stopped in the middle of sending.
fn interrupted_error() -> Value {
    json!({
        "kind": "interrupted",
        "message": "an earlier run stopped while sending this record, which Dub does not \
                    deduplicate: it may have been recorded; check in Dub before sending it again",
        "mayHaveBeenRecorded": true,
    })
}

/// Whether the state file was written for other inputs than these: then says so, and returns
/// the refusal when records Dub does not deduplicate would be sent on its word.
fn check_state_inputs(
    state: &dyn StateStore,
    state_path: Option<&Path>,
    inputs: &Inputs,
    plan: &Plan,
    adopt: bool,
) -> Result<(), String> {
    let known = state.inputs();
    let ours: Vec<&String> = inputs.files.iter().map(|f| &f.identity).collect();
    if state.len() == 0 || known.is_empty() || ours.iter().any(|i| known.contains(*i)) {
        return Ok(());
    }
    let path = state_path.map_or_else(|| "-".into(), |p| p.display().to_string());
    let written_for = known.iter().cloned().collect::<Vec<_>>().join(", ");
    eprintln!(
        "dub-track: the state file {path} was written for {written_for}, not for {}: records \
         are matched by their content, so those it holds are not sent again",
        ours.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if plan.unsafe_to_send > 0 && !adopt {
        let n = plan.unsafe_to_send;
        return Err(format!(
            "nothing sent: {n} record{} Dub does not deduplicate {} not in this state file; if \
             {} already sent with another state file, sending {} again would record {} twice. \
             Pass the state file written for these inputs with --state, or --adopt-state if \
             this one is theirs (after renaming the files, say)",
            if n == 1 { "" } else { "s" },
            if n == 1 { "is" } else { "are" },
            if n == 1 { "it was" } else { "they were" },
            if n == 1 { "it" } else { "them" },
            if n == 1 { "it" } else { "them" },
        ));
    }
    Ok(())
}

/// Runs `dub-track send`; returns the exit code.
pub async fn run(args: SendArgs) -> u8 {
    let started = Instant::now();
    let rules = Rules {
        allow_unsafe: args.allow_unsafe,
    };
    let inputs = match Inputs::open(&args.files, args.format, rules) {
        Ok(i) => i,
        Err(e) => return usage(&e.to_string()),
    };
    // The first pass: every record checked, only its identity kept.
    let mut invalid = 0u64;
    let mut failures: Vec<Failure> = Vec::new();
    let entries = inputs.scan(|p| {
        eprintln!("{p}");
        invalid += 1;
        if args.skip_invalid {
            failures.push(Failure {
                order: (p.file_index, p.line),
                error: error_json::invalid(&p.field, &p.rule),
                file: p.file,
                line: p.line,
                raw: p.raw.unwrap_or_default(),
            });
        }
    });
    let entries = match entries {
        Ok(e) => e,
        Err(e) => return usage(&e.to_string()),
    };
    if invalid > 0 && !args.skip_invalid {
        eprintln!(
            "dub-track: nothing sent: {invalid} invalid record{} (fix {}, or pass --skip-invalid \
             to send the rest)",
            if invalid == 1 { "" } else { "s" },
            if invalid == 1 { "it" } else { "them" },
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

    let plan = plan(&entries, &*state);
    if let Err(refusal) = check_state_inputs(
        &*state,
        state_path.as_deref(),
        &inputs,
        &plan,
        args.adopt_state,
    ) {
        return usage(&refusal);
    }
    let identities: Vec<String> = inputs.files.iter().map(|f| f.identity.clone()).collect();
    if let Err(e) = state.add_inputs(&identities) {
        eprintln!("dub-track: cannot write the state file: {e}");
    }
    let mut failed = invalid;
    let mut uncertain = plan.interrupted;
    let skipped = plan.skipped;
    let earlier_undelivered = plan.earlier_undelivered;
    if skipped > 0 {
        eprintln!(
            "dub-track: {skipped} record{} done in an earlier run (state: {})",
            if skipped == 1 { "" } else { "s" },
            state_path
                .as_deref()
                .map_or_else(|| "-".into(), |p| p.display().to_string())
        );
    }

    // The second pass: the records again, sent (or reported) one by one as they are read.
    let mut records = inputs.reread(&entries);
    let mut tally = Tally {
        failures,
        ..Tally::default()
    };
    // Outcomes are written to the journal from the tracker's own task, before the tracker
    // starts another delivery: a crash can then only lose the ends of requests still in
    // flight, which is what bounds the requests a rerun repeats.
    let journal_broken = Arc::new(AtomicBool::new(false));
    let (rate_limited, was_interrupted) = if plan.to_send == 0 {
        report_earlier(&mut records, &plan.decisions, &*state, &mut tally);
        (0, false)
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
        let progress = tokio::spawn(show_progress(
            counts.clone(),
            plan.to_send,
            tracker.clone(),
            started,
            stopping.clone(),
        ));

        deliver(
            &tracker,
            &mut records,
            &plan.decisions,
            &*state,
            usize::from(args.max_in_flight),
            &counts,
            &interrupted,
            &stopping,
            &mut tally,
        )
        .await;
        let was_interrupted = stopping.load(Ordering::Relaxed);
        let stats = tracker.stop().await;
        progress.abort();
        let _ = progress.await;
        signals.abort();
        flusher.abort();
        // Records reported from earlier runs that come after where sending stopped.
        if plan.earlier_undelivered + plan.interrupted > tally.reported_earlier {
            report_earlier(&mut records, &plan.decisions, &*state, &mut tally);
        }
        (stats.stats.rate_limited, was_interrupted)
    };

    let delivered = tally.delivered;
    failed += tally.failed;
    uncertain += tally.uncertain;
    // Records never handed over (an interrupted run) are not sent, as are those the tracker
    // still held when it stopped.
    let not_sent = plan
        .to_send
        .saturating_sub(tally.delivered + tally.failed + tally.uncertain);
    let mut failures = tally.failures;
    if let Some(e) = &tally.read_error {
        eprintln!("dub-track: {e}");
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

/// What the second pass found: this run's ends, and the failures to report.
#[derive(Default)]
struct Tally {
    delivered: u64,
    failed: u64,
    uncertain: u64,
    /// Failed and uncertain records of earlier runs reported so far.
    reported_earlier: u64,
    failures: Vec<Failure>,
    /// Why the second pass stopped before the end of the inputs, if it did.
    read_error: Option<ReadError>,
}

/// What is kept of a record while it is being sent: enough to report it.
struct Sent {
    key: String,
    deduplicated: bool,
    order: (usize, u64),
    file: String,
    line: u64,
    raw: Map<String, Value>,
}

impl Sent {
    fn of(record: Record) -> Sent {
        Sent {
            deduplicated: record.event.is_deduplicated(),
            order: (record.file_index, record.line),
            key: record.key,
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

fn failure(record: Record, error: Value) -> Failure {
    Sent::of(record).failure(error)
}

/// The failure an earlier run left for a record planned `decision`, if any.
fn earlier_failure(decision: Decision, record: Record, state: &dyn StateStore) -> Option<Failure> {
    match decision {
        Decision::Earlier => {
            let error = state
                .prior(&record.key)
                .and_then(|p| p.error)
                .unwrap_or(Value::Null);
            Some(failure(record, error))
        }
        Decision::Interrupted => Some(failure(record, interrupted_error())),
        Decision::Send | Decision::Done => None,
    }
}

/// Reads the rest of the records, sending none, to report those earlier runs left failed or
/// uncertain.
fn report_earlier(
    records: &mut Reread<'_>,
    decisions: &[Decision],
    state: &dyn StateStore,
    tally: &mut Tally,
) {
    if tally.read_error.is_some() {
        return;
    }
    for next in records {
        match next {
            Ok((index, record)) => {
                if let Some(f) = earlier_failure(decisions[index], record, state) {
                    tally.reported_earlier += 1;
                    tally.failures.push(f);
                }
            }
            Err(e) => {
                tally.read_error = Some(e);
                return;
            }
        }
    }
}

/// Hands the records planned for sending over in order as the second pass reads them, keeping
/// at most a window of them undelivered, and counts each one's end in `tally`.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename the arguments"
)]
async fn deliver(
    tracker: &Tracker,
    records: &mut Reread<'_>,
    decisions: &[Decision],
    state: &dyn StateStore,
    max_in_flight: usize,
    counts: &Arc<Counts>,
    interrupted: &Notify,
    stopping: &AtomicBool,
    tally: &mut Tally,
) {
    let window = window(max_in_flight);
    let mut pending: JoinSet<(Sent, Outcome)> = JoinSet::new();
    let settle = |(sent, outcome): (Sent, Outcome), tally: &mut Tally| match outcome {
        Outcome::Delivered(_) => {
            counts.delivered.fetch_add(1, Ordering::Relaxed);
            tally.delivered += 1;
        }
        Outcome::Failed(e) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            tally.failed += 1;
            tally.failures.push(sent.failure(error_json::error(&e)));
        }
        Outcome::Uncertain(e) => {
            counts.uncertain.fetch_add(1, Ordering::Relaxed);
            tally.uncertain += 1;
            tally.failures.push(sent.failure(error_json::error(&e)));
        }
        // Stopped before its turn: never attempted, so not uncertain either.
        _ => release(state, &sent),
    };

    'records: loop {
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        let (index, record) = match records.next() {
            None => break,
            Some(Ok(next)) => next,
            Some(Err(e)) => {
                tally.read_error = Some(e);
                break;
            }
        };
        if decisions[index] != Decision::Send {
            if let Some(f) = earlier_failure(decisions[index], record, state) {
                tally.reported_earlier += 1;
                tally.failures.push(f);
            }
            continue;
        }
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
                Some(Ok(result)) = pending.join_next() => settle(result, tally),
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
        let event = record.event.clone();
        let sent = Sent::of(record);
        loop {
            match tracker.send_with_key(sent.key.clone(), event.clone()).await {
                Ok(receipt) => {
                    pending.spawn(async move { (sent, receipt.await) });
                    break;
                }
                Err(e) if e.kind() == HandOverErrorKind::Full && !pending.is_empty() => {
                    tokio::select! {
                        Some(Ok(result)) = pending.join_next() => settle(result, tally),
                        () = interrupted.notified() => {}
                    }
                    if stopping.load(Ordering::Relaxed) {
                        release(state, &sent);
                        break 'records;
                    }
                }
                Err(e) => {
                    match e.validation() {
                        Some(v) => settle((sent, Outcome::Failed(v.clone())), tally),
                        None => {
                            eprintln!("dub-track: {}:{}: {e}", sent.file, sent.line);
                            release(state, &sent);
                            break 'records;
                        }
                    }
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
                Some(Ok(result)) => settle(result, tally),
                Some(Err(_)) => {}
                None => break,
            },
            () = interrupted.notified(), if !stopped => {}
        }
    }
}

/// Takes back the "started" mark of an unsafe record that was not sent after all, so that the
/// next run sends it instead of reporting it uncertain.
fn release(state: &dyn StateStore, sent: &Sent) {
    if !sent.deduplicated
        && let Err(e) = state.released(&sent.key)
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

/// A bar when standard error is a terminal; a plain line every few seconds when it is not.
async fn show_progress(
    counts: Arc<Counts>,
    total: u64,
    tracker: Tracker,
    started: Instant,
    stopping: Arc<AtomicBool>,
) {
    if total == 0 {
        return;
    }
    let read = move || {
        let delivered = counts.delivered.load(Ordering::Relaxed);
        let failed = counts.failed.load(Ordering::Relaxed);
        let uncertain = counts.uncertain.load(Ordering::Relaxed);
        (delivered, failed, uncertain, tracker.stats().rate_limited)
    };
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} delivered, {per_sec}, {msg}, ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        let bar = Arc::new(Mutex::new(bar));
        // Aborting this task drops the guard, which clears the bar.
        let _guard = ClearOnDrop(bar.clone());
        loop {
            let (delivered, failed, uncertain, limited) = read();
            {
                let bar = bar.lock().unwrap_or_else(PoisonError::into_inner);
                bar.set_position(delivered);
                let mut msg = format!("429s {limited}");
                if failed + uncertain > 0 {
                    msg.push_str(&format!(", failed {failed}, uncertain {uncertain}"));
                }
                if stopping.load(Ordering::Relaxed) {
                    msg.push_str(", stopping");
                }
                bar.set_message(msg);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        loop {
            tokio::time::sleep(PLAIN_PROGRESS_EVERY).await;
            let (delivered, failed, uncertain, limited) = read();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let rate = delivered as f64 / secs;
            let left = total.saturating_sub(delivered + failed + uncertain);
            let eta = if rate > 0.0 {
                format!("{:.0}s", left as f64 / rate)
            } else {
                "-".into()
            };
            eprintln!(
                "dub-track: {delivered}/{total} delivered, {failed} failed, {uncertain} \
                 uncertain, {rate:.1}/s, 429s {limited}, eta {eta}"
            );
        }
    }
}

/// Clears the progress bar when the progress task is aborted.
struct ClearOnDrop(Arc<Mutex<indicatif::ProgressBar>>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .finish_and_clear();
    }
}

fn usage(message: &str) -> u8 {
    eprintln!("dub-track: {message}");
    EXIT_USAGE
}
