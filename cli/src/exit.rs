//! How a command ends, and its exit code: mapped here and nowhere else.
//!
//! 0 when everything was delivered (or the call succeeded), 1 when some record failed or is
//! uncertain (or the one-shot call failed), 2 for usage and input errors (nothing was sent),
//! 130 when interrupted by Ctrl-C or SIGTERM before every record was sent.

use std::fmt;
use std::process::ExitCode;

use serde_json::Value;

/// What a command that ran reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every record delivered; the call succeeded; the server stopped when asked.
    Ok,
    /// Some record failed or is uncertain (now or in an earlier run), or the call failed.
    Failed,
    /// Stopped by Ctrl-C or SIGTERM with records left to send: run the same command again.
    /// SIGTERM gets Ctrl-C's code rather than 143 because it is handled the same way: the run
    /// stopped cleanly and can be resumed.
    Interrupted,
}

impl Status {
    /// The process's exit code.
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Failed => 1,
            Status::Interrupted => 130,
        }
    }
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> ExitCode {
        ExitCode::from(status.code())
    }
}

/// Why a command did not do its work: bad usage or input, nothing sent.
#[derive(Debug)]
pub enum CliError {
    /// Printed as `dub-track: MESSAGE`.
    Usage(String),
    /// A request the crate refused before sending, printed as the one-shot commands print
    /// errors: `{"error": ...}` in the crate's JSON encoding.
    InvalidRequest(Value),
}

impl CliError {
    /// The exit code of every usage or input error.
    pub const CODE: u8 = 2;

    /// Says what went wrong on standard error; returns the exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("{self}");
        ExitCode::from(Self::CODE)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) => write!(f, "dub-track: {message}"),
            CliError::InvalidRequest(error) => {
                write!(f, "{}", serde_json::json!({ "error": error }))
            }
        }
    }
}

/// A usage or input error from anything that reads as one.
pub fn usage(message: impl fmt::Display) -> CliError {
    CliError::Usage(message.to_string())
}
