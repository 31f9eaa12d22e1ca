//! `dub-track mock`: the crate's local Dub server in the foreground, for test suites in any
//! language.

use clap::Args;
use std::time::Duration;

use dub::mock::{MockDub, RandomFaults};

use crate::exit::{self, CliError, Status};
use crate::signals::Stop;

/// Run a local Dub server on 127.0.0.1 until Ctrl-C or SIGTERM, for tests.
///
/// It answers POST /track/lead and POST /track/sale as Dub's API does (validation, lead
/// deduplication, one sale per invoice id, Dub's error bodies), keeping what it records in
/// memory. It prints its URL and token as two lines, `DUB_BASE_URL=...` and `DUB_API_KEY=...`,
/// ready for `export`; any number of processes may send to it at once, sharing one rate limit
/// as processes sharing one Dub key do.
///
/// It counts every request and keeps the last --history of them (and of the leads and sales it
/// recorded), so that it stays small however long it runs. Its own endpoints, which need no
/// token and are not counted:
///
/// - GET /__mock/stats: the counters, as JSON: requests, requestsKept, statuses (answered
///   requests by status), rateLimited, faults, leads, sales
///
/// - GET /__mock/requests: the kept requests, oldest first: {"requests": [{n, method, path,
///   query, headers, body, status, fault}, ...]}
///
/// - DELETE /__mock/requests: forget the kept requests and reset the request counters
///
/// Example: dub-track mock --port 4010 --rate-limit 3000
#[derive(Debug, Args)]
pub struct MockArgs {
    /// The port to listen on [default: one the system picks]
    #[arg(long, value_name = "P")]
    port: Option<u16>,
    /// Refuse requests beyond N a minute with 429, with Dub's sliding window over two
    /// epoch-aligned minutes [default: no limit]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: Option<u32>,
    /// Give each request a random fault (a 5xx, a 429, a reset connection, a delay, ...) with
    /// this probability, from 0 to 1
    #[arg(long, value_name = "RATE", requires = "seed")]
    faults: Option<f64>,
    /// The seed of the random faults: the same seed replays the same faults
    #[arg(long, value_name = "S", requires = "faults")]
    seed: Option<u64>,
    /// Reproduce Dub's lead-then-sale race: an async-mode lead stays invisible to sales for MS
    /// milliseconds, during which a sale for that customer gets 404 "Lead event not found"
    #[arg(long, value_name = "MS")]
    lead_race_ms: Option<u64>,
    /// Reproduce Dub's invoice read-then-write race: a sale's response is cached for its
    /// invoiceId only MS milliseconds after it was recorded, so another sale for that invoice
    /// within them is recorded again (later ones get the first response and record nothing)
    #[arg(long, value_name = "MS")]
    invoice_race_ms: Option<u64>,
    /// How many of the latest requests, leads and sales to keep for GET /__mock/requests (older
    /// ones are only counted)
    #[arg(long, value_name = "N", default_value_t = 1000)]
    history: usize,
    /// Close a connection that has been silent this long while none of its requests is being
    /// handled (a client that connected and stalled, or an idle keep-alive connection)
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
}

/// Runs `dub-track mock` until Ctrl-C (or SIGTERM).
pub async fn run(args: MockArgs) -> Result<Status, CliError> {
    if let Some(rate) = args.faults
        && !(0.0..=1.0).contains(&rate)
    {
        return Err(exit::usage("--faults must be from 0 to 1"));
    }
    let mut stop = Stop::listen();
    let mock = start(&args)
        .await
        .map_err(|e| exit::usage(format!("the mock server could not start: {e}")))?;
    println!("DUB_BASE_URL={}", mock.url());
    println!("DUB_API_KEY={}", mock.token());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    eprintln!(
        "dub-track: mock Dub server on {}; Ctrl-C to stop",
        mock.url()
    );
    stop.next().await;
    mock.shutdown().await;
    Ok(Status::Ok)
}

async fn start(args: &MockArgs) -> std::io::Result<MockDub> {
    let mut builder = MockDub::builder()
        .port(args.port.unwrap_or(0))
        .history(args.history)
        .idle_timeout(Duration::from_secs(args.idle_timeout));
    if let Some(n) = args.rate_limit {
        builder = builder.rate_limit(u64::from(n));
    }
    if let Some(ms) = args.lead_race_ms {
        builder = builder.lead_race(Duration::from_millis(ms));
    }
    if let Some(ms) = args.invoice_race_ms {
        builder = builder.invoice_race(Duration::from_millis(ms));
    }
    if let (Some(rate), Some(seed)) = (args.faults, args.seed) {
        builder = builder.random_faults(RandomFaults::new(seed, rate));
    }
    builder.start().await
}
