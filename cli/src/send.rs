//! `dub-track send`: every record of some files, through the SDK's background tracker, whose
//! spool is the state file that lets the same command, run again, send only what is not yet
//! done. In three steps: planning (read and check every record, check the state file), sending
//! (hand each record over under its identity), and the summary.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Args;
use dub::tracker::{HandOverError, Outcome, Tracker};
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::exit::{self, CliError, Status};
use crate::failed_file;
use crate::input::{self, ERROR_FIELD, Entry, Format, Inputs, ReadError, Record, Reread, Rules};
use crate::signals::Stop;
use crate::state_file;
use crate::{Connection, error_json};

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
/// The run is resumable: the state file (an SQLite file, the SDK tracker's spool) holds each
/// record from its hand-over to its end (delivered, failed, uncertain). A record is known by its
/// content (its fields, in any order or format) and its rank among identical records, so
/// editing other lines of a file, or naming a file twice, never sends a record again. After
/// Ctrl-C, a crash or kill -9, the same command sends only what is not done yet. Records Dub
/// deduplicates that were in flight at a crash are sent again (Dub records them once); an
/// unsafe record that was being sent is reported uncertain, never sent again. Two processes
/// running the same command on one state file share the work, each record sent once. A
/// customer's records are sent in file order, so put a customer's lead before its sales.
///
/// At the end one line goes to standard output:
/// `delivered=N failed=N uncertain=N skipped=N rate_limited=N elapsed_s=S` (delivered, failed,
/// uncertain: by this process in this run; skipped: done in an earlier run or by another process
/// on the state file; rate_limited: 429 responses received). Exit 0 when every record was delivered,
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

    /// The state file that makes the run resumable, an SQLite file [default: beside the first
    /// file, named after it, e.g. sales.jsonl.dub-state; none for standard input]. Processes
    /// given the same file share the work. Delete it to send everything again
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

/// Whether the state file was written for other inputs than these: then says so, and refuses
/// when records Dub does not deduplicate would be sent on its word (records the file does not
/// know, which another state file may have sent).
async fn check_state_inputs(
    known: &BTreeSet<String>,
    state_path: &Path,
    inputs: &Inputs,
    entries: &[Entry],
    tracker: &Tracker,
    adopt: bool,
) -> Result<(), String> {
    let ours: Vec<&String> = inputs.files.iter().map(|f| &f.identity).collect();
    if known.is_empty() || ours.iter().any(|i| known.contains(*i)) {
        return Ok(());
    }
    let written_for = known.iter().cloned().collect::<Vec<_>>().join(", ");
    eprintln!(
        "dub-track: the state file {} was written for {written_for}, not for {}: records are \
         matched by their content, so those it holds are not sent again",
        state_path.display(),
        ours.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if adopt {
        return Ok(());
    }
    let mut unknown_unsafe = 0u64;
    let mut key = String::new();
    for entry in entries.iter().filter(|e| !e.deduplicated) {
        use std::fmt::Write as _;
        key.clear();
        let _ = write!(key, "{}", entry.key());
        let known = tokio::task::block_in_place(|| tracker.knows_key(&key));
        if !known.map_err(|e| e.to_string())? {
            unknown_unsafe += 1;
        }
    }
    if unknown_unsafe > 0 {
        let n = unknown_unsafe;
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

/// Runs `dub-track send`.
pub async fn run(args: SendArgs) -> Result<Status, CliError> {
    let started = Instant::now();
    let rules = Rules {
        allow_unsafe: args.allow_unsafe,
    };
    let inputs = Inputs::open(&args.files, args.format, rules).map_err(exit::usage)?;
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
    let entries = entries.map_err(exit::usage)?;
    if invalid > 0 && !args.skip_invalid {
        return Err(exit::usage(format!(
            "nothing sent: {invalid} invalid record{} (fix {}, or pass --skip-invalid to send \
             the rest)",
            if invalid == 1 { "" } else { "s" },
            if invalid == 1 { "it" } else { "them" },
        )));
    }

    let mut builder = args.connection.builder().map_err(exit::usage)?;
    if let Some(n) = args.rate_limit {
        builder = builder.rate_limit(dub::RateLimit::per_minute(n));
    }
    let dub = builder
        .build()
        .map_err(|e| exit::usage(crate::config_error(&e)))?;

    if let Some(path) = &args.failed
        && let Err(e) = failed_file::check(path)
    {
        return Err(exit::usage(format!(
            "nothing sent: cannot write the failed file {}: {e}",
            path.display()
        )));
    }

    let state_path = args
        .state
        .clone()
        .or_else(|| input::default_state_path(&args.files[0]));
    if let Some(path) = &state_path {
        state_file::check_format(path).map_err(exit::usage)?;
    } else {
        eprintln!(
            "dub-track: no --state for standard input: this run cannot be resumed, and a rerun \
             sends everything again"
        );
    }

    // The state is the tracker's spool: a record's key is on disk before it is sent, claimed
    // right before each attempt, and kept with its outcome, so a rerun (or another process on
    // the same file) answers from the file instead of sending again; a record Dub does not
    // deduplicate that was in flight at a crash ends uncertain, never resent.
    let in_flight = usize::from(args.max_in_flight);
    let mut tracker = dub
        .tracker()
        .max_in_flight(in_flight)
        .max_age(Duration::from_secs(args.give_up_after));
    tracker = match &state_path {
        // Undelivered rows of earlier runs and of other processes count against the capacity:
        // the window below is what bounds this run's hand-overs.
        Some(path) => tracker.spool(path).capacity(usize::MAX >> 1),
        None => tracker.capacity(window(in_flight) * 2),
    };
    let tracker = tracker.start().map_err(|e| {
        exit::usage(format!(
            "the state file{}: {}",
            state_path
                .as_deref()
                .map_or_else(String::new, |p| format!(" {}", p.display())),
            e.message().unwrap_or("the sender could not start")
        ))
    })?;
    if let Some(path) = &state_path {
        let checked = async {
            let table = state_file::Inputs::open(path)?;
            let known = table.known()?;
            check_state_inputs(&known, path, &inputs, &entries, &tracker, args.adopt_state).await?;
            let identities: Vec<String> = inputs.files.iter().map(|f| f.identity.clone()).collect();
            table.add(&identities)
        }
        .await;
        if let Err(refusal) = checked {
            tracker.stop().await;
            return Err(exit::usage(refusal));
        }
    }

    // The second pass: the records again, handed over as they are read.
    let mut records = inputs.reread(&entries);
    let mut tally = Tally {
        failures,
        ..Tally::default()
    };
    let interrupted = Arc::new(Notify::new());
    let stopping = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(watch_signals(
        Stop::listen(),
        interrupted.clone(),
        stopping.clone(),
    ));
    let counts = Arc::new(Counts::default());
    let progress = tokio::spawn(show_progress(
        counts.clone(),
        entries.len() as u64,
        tracker.clone(),
        started,
        stopping.clone(),
    ));
    deliver(
        &tracker,
        &mut records,
        in_flight,
        &counts,
        &interrupted,
        &stopping,
        &mut tally,
    )
    .await;
    let was_interrupted = stopping.load(Ordering::Relaxed);
    let report = tracker.stop().await;
    progress.abort();
    let _ = progress.await;
    signals.abort();
    let rate_limited = report.stats.rate_limited;

    // What this process settled is in the tracker's counts; what the receipts answered beyond
    // that was settled before (an earlier run) or elsewhere (another process on the file).
    let ours = report.stats.delivered + report.stats.failed + report.stats.uncertain;
    let answered = tally.delivered + tally.failed + tally.uncertain;
    let delivered = report.stats.delivered;
    let failed = invalid + report.stats.failed;
    let uncertain = report.stats.uncertain;
    let skipped = answered.saturating_sub(ours);
    let earlier_undelivered = (tally.failed + tally.uncertain)
        .saturating_sub(report.stats.failed + report.stats.uncertain);
    // Records never handed over (an interrupted run) are not sent, as are those the tracker
    // still held when it stopped.
    let not_sent = (entries.len() as u64).saturating_sub(answered);
    let mut failures = tally.failures;
    if let Some(e) = &tally.read_error {
        eprintln!("dub-track: {e}");
    }
    if skipped > 0 {
        eprintln!(
            "dub-track: {skipped} record{} done in an earlier run or by another process (state: \
             {})",
            if skipped == 1 { "" } else { "s" },
            state_path
                .as_deref()
                .map_or_else(|| "-".into(), |p| p.display().to_string())
        );
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
    Ok(if was_interrupted && not_sent > 0 {
        Status::Interrupted
    } else if failed + uncertain + earlier_undelivered + not_sent > 0 {
        Status::Failed
    } else {
        Status::Ok
    })
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

/// What the second pass found: the outcome of each record handed over, and the failures to
/// report.
#[derive(Default)]
struct Tally {
    delivered: u64,
    failed: u64,
    uncertain: u64,
    failures: Vec<Failure>,
    /// Why the second pass stopped before the end of the inputs, if it did.
    read_error: Option<ReadError>,
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
    // Whether a hand-over was refused: then nothing more is handed over.
    let mut refused = false;
    let mut settle = |(sent, result): Handed, tally: &mut Tally| match result {
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
                if !refused {
                    eprintln!("dub-track: {}:{}: {e}", sent.file, sent.line);
                }
                refused = true;
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
