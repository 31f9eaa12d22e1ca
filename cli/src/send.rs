//! `dub-track send`: every record of some files, through the SDK's background tracker, whose
//! spool is the state file that lets the same command, run again, send only what is not yet
//! done. In three steps: planning (read and check every record, check the state file), sending
//! (hand each record over under its identity), and the summary.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::{Map, Value};

mod plan;
mod sending;

use plan::Plan;

use crate::Connection;
use crate::exit::{CliError, Status};
use crate::failed_file;
use crate::input::{ERROR_FIELD, Format};

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

/// Runs `dub-track send`: planning, sending, the summary.
pub async fn run(args: SendArgs) -> Result<Status, CliError> {
    let started = Instant::now();
    let plan = plan::plan(&args).await?;
    let sent = sending::send(&plan, usize::from(args.max_in_flight)).await;
    Ok(summary(&args, plan, sent, started))
}

/// Says what became of the records: the failures (to the --failed file, or the first of them
/// on standard error), then the summary line; returns how the run ends.
fn summary(args: &SendArgs, plan: Plan, done: sending::Done, started: Instant) -> Status {
    let sending::Done {
        tally,
        stats,
        was_interrupted,
    } = done;
    // What this process settled is in the tracker's counts; what the receipts answered beyond
    // that was settled before (an earlier run) or elsewhere (another process on the file).
    let ours = stats.delivered + stats.failed + stats.uncertain;
    let answered = tally.delivered + tally.failed + tally.uncertain;
    let delivered = stats.delivered;
    let failed = plan.invalid + stats.failed;
    let uncertain = stats.uncertain;
    let skipped = answered.saturating_sub(ours);
    let earlier_undelivered =
        (tally.failed + tally.uncertain).saturating_sub(stats.failed + stats.uncertain);
    // Records never handed over (an interrupted run) are not sent, as are those the tracker
    // still held when it stopped.
    let not_sent = (plan.entries.len() as u64).saturating_sub(answered);
    let rate_limited = stats.rate_limited;
    let mut failures = plan.failures;
    failures.extend(tally.failures);
    if let Some(e) = &tally.read_error {
        eprintln!("dub-track: {e}");
    }
    if skipped > 0 {
        eprintln!(
            "dub-track: {skipped} record{} done in an earlier run or by another process (state: \
             {})",
            if skipped == 1 { "" } else { "s" },
            plan.state_path
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
    if was_interrupted && not_sent > 0 {
        Status::Interrupted
    } else if failed + uncertain + earlier_undelivered + not_sent > 0 {
        Status::Failed
    } else {
        Status::Ok
    }
}

impl Failure {
    /// The --failed file's line: the record as read, with the error under "_error".
    fn line(&self) -> Value {
        let mut record = self.raw.clone();
        record.insert(ERROR_FIELD.into(), self.error.clone());
        Value::Object(record)
    }
}
