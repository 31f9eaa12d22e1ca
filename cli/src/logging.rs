//! What the library logs, on standard error: the tracker's and the relay's warnings and errors
//! (a spool that cannot be written, PostgreSQL away, events left uncertain by a process that
//! died) would otherwise reach nobody, and a run that stops making progress would not say why.
//!
//! `DUB_TRACK_LOG` sets the level: `off`, `error`, `warn` (the default), `info` (adds the
//! tracker's and the relay's progress every few seconds), `debug` or `trace`.

use tracing_subscriber::filter::LevelFilter;

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
    // Writes that fail (a closed standard error) are dropped by the subscriber, not a panic.
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
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
