//! What the library logs, on standard error: the tracker's and the relay's warnings and errors
//! (a spool that cannot be written, PostgreSQL away, events left uncertain by a process that
//! died) would otherwise reach nobody, and a run that stops making progress would not say why.
//!
//! `DUB_TRACK_LOG` sets the level: `off`, `error`, `warn` (the default), `info` (adds the
//! tracker's and the relay's progress every few seconds), `debug` or `trace`.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable that sets the level.
pub const VARIABLE: &str = "DUB_TRACK_LOG";

/// Installs the logger on standard error. An unknown level is a usage error: the run would
/// otherwise go on without the log its user asked for.
pub fn init() -> Result<(), String> {
    let level = match std::env::var(VARIABLE) {
        Ok(value) => level(&value).ok_or_else(|| {
            format!(
                "{VARIABLE}={value:?} is not a level: use off, error, warn, info, debug or trace"
            )
        })?,
        Err(_) => LevelFilter::WARN,
    };
    if level == LevelFilter::OFF {
        return Ok(());
    }
    // The crate's and this program's lines at the level asked for; other crates' (sqlx's
    // slow-statement warnings, several lines of SQL each) only when they are errors.
    let targets = Targets::new()
        .with_target("dub", level)
        .with_target("dub_track", level)
        .with_default(LevelFilter::ERROR.min(level));
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        // A write that fails (standard error closed: `2>&1 | head` that ended) is dropped.
        // Reporting it, the subscriber's default, is an `eprintln!`, which panics there: the
        // relay's first warning would then kill it mid-delivery.
        .log_internal_errors(false)
        .finish()
        .with(targets)
        .try_init();
    Ok(())
}

fn level(value: &str) -> Option<LevelFilter> {
    Some(match value.trim().to_ascii_lowercase().as_str() {
        "off" => LevelFilter::OFF,
        "error" => LevelFilter::ERROR,
        "warn" | "" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_read_in_any_case_and_unknown_ones_refused() {
        assert_eq!(level("WARN"), Some(LevelFilter::WARN));
        assert_eq!(level(" info "), Some(LevelFilter::INFO));
        assert_eq!(level("off"), Some(LevelFilter::OFF));
        assert_eq!(level(""), Some(LevelFilter::WARN));
        assert_eq!(level("verbose"), None);
    }
}
