//! Planning: read and check every record (the first pass), make the client, check the
//! `--failed` file and the state file, and start the tracker on the state file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dub::tracker::Tracker;

use super::{Failure, SendArgs};
use crate::exit::{self, CliError};
use crate::input::{self, Entry, Inputs, Rules};
use crate::{error_json, failed_file, state_file};

/// What planning leaves for sending and the summary.
pub(super) struct Plan {
    pub inputs: Inputs,
    /// One per valid record, in order.
    pub entries: Vec<Entry>,
    /// Invalid records (sent on with --skip-invalid, which makes them failures).
    pub invalid: u64,
    /// The invalid records, for the --failed file.
    pub failures: Vec<Failure>,
    /// Started on the state file, if there is one.
    pub tracker: Tracker,
    /// The client the tracker delivers through (its rate limiter paces the progress's ETA).
    pub dub: dub::Dub,
    pub state_path: Option<PathBuf>,
}

/// Plans the run; an error is a usage or input error, with nothing sent.
pub(super) async fn plan(args: &SendArgs) -> Result<Plan, CliError> {
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

    Ok(Plan {
        dub,
        inputs,
        entries,
        invalid,
        failures,
        tracker,
        state_path,
    })
}

/// How many records are handed to the tracker ahead of their turn: enough to keep every slot
/// busy while some customers wait on their earlier events, few enough that the queue stays
/// small.
pub(super) fn window(max_in_flight: usize) -> usize {
    (max_in_flight * 4).max(16)
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
