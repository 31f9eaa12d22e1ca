//! `dub-track`: send files of Dub conversions (resumably), fire one lead or sale by hand, and
//! run a local Dub server for test suites in any language.
//!
//! Exit codes: 0 when everything was delivered, 1 when some record failed or is uncertain (or
//! a one-shot call failed), 2 for usage and input errors, 130 when interrupted by Ctrl-C (or
//! SIGTERM, handled the same way) before every record was sent.

// `println!` and `eprintln!` panic when their stream is closed (`dub-track mock | head -1`,
// `dub-track send f.jsonl | true`), which killed the server and hid what became of the records
// behind exit 101. A closed pipe is not a crash: these two shadow the standard macros in the
// whole crate (they are defined before the modules, so textual scope gives them precedence)
// and drop what cannot be written; the exit code still tells what happened.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod error_json;
mod exit;
mod failed_file;
mod input;
mod logging;
mod mock;
mod oneshot;
mod outbox;
mod progress;
mod relay;
mod send;
mod signals;
mod state_file;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use exit::CliError;

/// Send conversions (leads and sales) to Dub, and run a local Dub server for tests.
///
/// The API token is read from DUB_API_KEY and is never printed. The server is Dub's API unless
/// --base-url or DUB_BASE_URL names another (for example `dub-track mock`).
#[derive(Debug, Parser)]
#[command(name = "dub-track", version, about, long_about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Send(send::SendArgs),
    Lead(oneshot::LeadArgs),
    Sale(oneshot::SaleArgs),
    Mock(mock::MockArgs),
    Relay(relay::RelayArgs),
    Outbox(outbox::OutboxArgs),
}

/// Where the requests go, shared by `send`, `lead` and `sale`.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The API's base URL [default: DUB_BASE_URL, else Dub's API, https://api.dub.co]
    #[arg(long, value_name = "URL", env = "DUB_BASE_URL", hide_env = true)]
    pub base_url: Option<String>,
    /// Accept a plain http:// base URL for a host other than 127.0.0.1 or localhost: the API
    /// key then crosses the network unencrypted (a warning says so)
    #[arg(long)]
    pub allow_insecure_http: bool,
}

impl Connection {
    /// A client builder with the token from DUB_API_KEY and this base URL.
    pub fn builder(&self) -> Result<dub::DubBuilder, String> {
        let mut builder = dub::Dub::builder_from_env().map_err(|e| {
            format!(
                "{}; set DUB_API_KEY to your Dub API key (or the token `dub-track mock` prints)",
                e.message().unwrap_or("DUB_API_KEY is not usable")
            )
        })?;
        if let Some(url) = self.base_url.as_deref().filter(|u| !u.trim().is_empty()) {
            builder = builder.server_url(url);
            if self.allow_insecure_http && url.trim().to_ascii_lowercase().starts_with("http:") {
                eprintln!(
                    "dub-track: warning: --allow-insecure-http: the API key is sent unencrypted \
                     to {}",
                    url.trim()
                );
            }
        }
        builder = builder.allow_insecure_http(self.allow_insecure_http);
        Ok(builder.user_agent_suffix(concat!("dub-track/", env!("CARGO_PKG_VERSION"))))
    }
}

/// The message of an error from building the client, in the CLI's words: the crate's advice
/// names its builder method, which a CLI user reaches through a flag.
pub fn config_error(e: &dub::Error) -> String {
    e.message()
        .unwrap_or("the client's configuration is unusable")
        .replace("allow_insecure_http(true)", "--allow-insecure-http")
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}

/// Runs the command; every exit code comes from [`exit`].
fn run(cli: Cli) -> Result<ExitCode, CliError> {
    logging::init().map_err(exit::usage)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| exit::usage(format!("cannot start the async runtime: {e}")))?;
    let status = runtime.block_on(async move {
        match cli.command {
            Command::Send(args) => send::run(args).await,
            Command::Lead(args) => oneshot::lead(args).await,
            Command::Sale(args) => oneshot::sale(args).await,
            Command::Mock(args) => mock::run(args).await,
            Command::Relay(args) => relay::run(args).await,
            Command::Outbox(args) => outbox::run(args).await,
        }
    });
    // In-flight work has already been waited for or given up; do not wait on stray tasks.
    runtime.shutdown_background();
    Ok(ExitCode::from(status?))
}
