//! `dub-track relay`: delivers a PostgreSQL outbox (the crate's `dub::outbox`) to Dub until
//! Ctrl-C or SIGTERM.

use clap::Args;
use std::time::Duration;

use dub::RateLimit;
use dub::outbox::Relay;

use crate::exit::{self, CliError, Status};
use crate::signals::Stop;
use crate::{Connection, config_error};

/// Deliver the events in a PostgreSQL outbox (table dub_outbox) to Dub, until Ctrl-C or SIGTERM.
///
/// Any number of relays, on any number of machines, share one outbox: each claims rows under a
/// lease, a customer's events in insertion order, and writes every outcome to its row. On
/// Ctrl-C or SIGTERM it stops claiming, finishes the attempts in flight, writes their outcomes
/// and exits 0. When PostgreSQL is unreachable it waits and reconnects; an event is never
/// marked failed for it. Create the table first with `dub-track outbox migrate`.
///
/// Example: DATABASE_URL=postgres://app@db/app dub-track relay --rate-limit 3000
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The outbox's database [default: DATABASE_URL]
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    connection: Connection,
    /// The API key's rate limit, requests a minute: every relay on the key paces together to
    /// it, from one budget in the database (N relays send N a minute together, not N times
    /// that). Without it the relays learn it together: the first 429 naming the limit sets it
    /// for all of them
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: Option<u32>,
    /// At most N deliveries at once
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: u32,
    /// How long a claimed row stays this relay's before others may take it over, in seconds
    #[arg(long, value_name = "S", default_value_t = 50, value_parser = clap::value_parser!(u64).range(2..))]
    lease_secs: u64,
    /// Delete delivered rows this many days after their delivery (every relay prunes at start
    /// and hourly); failed and uncertain rows are kept until you delete them
    #[arg(long, value_name = "DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    retention_days: u32,
}

/// Runs `dub-track relay` until Ctrl-C (or SIGTERM).
pub async fn run(args: RelayArgs) -> Result<Status, CliError> {
    let mut stop = Stop::listen();
    let pool = crate::outbox::lazy_pool(&args.database_url).map_err(exit::usage)?;
    let mut builder = args.connection.builder().map_err(exit::usage)?;
    // The adaptive limiter stays the safety net for other users of the key.
    builder = builder.rate_limit(RateLimit::adaptive());
    let dub = builder.build().map_err(|e| exit::usage(config_error(&e)))?;
    let mut relay = Relay::builder(pool, dub)
        .max_in_flight(args.max_in_flight as usize)
        .lease(Duration::from_secs(args.lease_secs))
        .retention(Some(Duration::from_secs(
            u64::from(args.retention_days) * 86_400,
        )));
    if let Some(n) = args.rate_limit {
        relay = relay.shared_rate_limit(n);
    }
    let relay = relay.build();
    eprintln!(
        "dub-track: relaying the outbox; Ctrl-C or SIGTERM stops after the attempts in flight"
    );
    let report = relay.run_until(async move { stop.next().await }).await;
    eprintln!(
        "dub-track: relay stopped: delivered={} failed={} uncertain={} retried={} taken_over={} unwritten={} pruned={}",
        report.delivered,
        report.failed,
        report.uncertain,
        report.retried,
        report.taken_over,
        report.unwritten,
        report.pruned
    );
    Ok(Status::Ok)
}
