//! `dub-track outbox migrate|stats|retry`: operating a PostgreSQL outbox (the crate's
//! `dub::outbox`).

use std::time::Duration;

use clap::{Args, Subcommand};
use sqlx_postgres::{PgPool, PgPoolOptions};

use crate::exit::{self, CliError, Status};

/// Operate a PostgreSQL outbox (table dub_outbox): create or upgrade its schema, count its
/// rows, put failed events back.
#[derive(Debug, Args)]
pub struct OutboxArgs {
    /// The outbox's database [default: DATABASE_URL]
    #[arg(
        long,
        value_name = "URL",
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    database_url: Option<String>,
    #[command(subcommand)]
    command: OutboxCommand,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Create the outbox's tables, or upgrade them; does nothing when they are current. Safe to
    /// run from every replica at start, all at once
    Migrate,
    /// Print one line: pending=N in_flight=N delivered=N failed=N uncertain=N oldest_pending_s=N
    Stats,
    /// Put every failed event back to be delivered again (fix their data first); uncertain
    /// events are never sent again
    Retry,
}

/// A pool that connects when first used: the relay waits for a database that is away.
pub fn lazy_pool(url: &str) -> Result<PgPool, String> {
    PgPoolOptions::new()
        .max_connections(8)
        // sqlx waits up to 30 s for a connection by default, retrying a refused one: while
        // PostgreSQL is away the relay would say nothing for 30 s and take as long to stop on
        // SIGTERM (a rolling deploy's grace period is often 30 s). A statement is never cut
        // off by this, only the wait for a connection to run it on.
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(url)
        .map_err(|e| format!("--database-url / DATABASE_URL is not usable: {e}"))
}

/// Runs one `dub-track outbox` command.
pub async fn run(args: OutboxArgs) -> Result<Status, CliError> {
    let Some(url) = args.database_url.filter(|u| !u.trim().is_empty()) else {
        return Err(exit::usage(
            "set --database-url or DATABASE_URL to the outbox's database",
        ));
    };
    let pool = lazy_pool(&url).map_err(exit::usage)?;
    let result = match args.command {
        OutboxCommand::Migrate => dub::outbox::migrate(&pool).await.map(|m| {
            if m.from == m.to {
                println!("outbox schema is current (version {})", m.to);
            } else {
                println!("outbox schema migrated from version {} to {}", m.from, m.to);
            }
        }),
        OutboxCommand::Stats => dub::outbox::stats(&pool).await.map(|s| println!("{s}")),
        OutboxCommand::Retry => dub::outbox::retry_failed(&pool)
            .await
            .map(|n| println!("retried={n}")),
    };
    pool.close().await;
    match result {
        Ok(()) => Ok(Status::Ok),
        Err(e) => {
            eprintln!("dub-track: {e}");
            Ok(Status::Failed)
        }
    }
}
