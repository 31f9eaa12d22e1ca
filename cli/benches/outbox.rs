//! The PostgreSQL outbox and its fleet of relays (issue 20), measured against a real PostgreSQL
//! cluster (the tests' throwaway-cluster harness) and `MockDub`, with every relay a separate
//! `dub-track relay` process (the release binary Cargo builds beside this benchmark).
//!
//! ```text
//! cargo bench -p dub-track --bench outbox                        # everything, about 8 minutes
//! cargo bench -p dub-track --bench outbox -- --only paced,learn  # some sections
//! ```
//!
//! Sections (`--only`, comma-separated, in this order):
//!
//! - `paced`: `--events` (4,500) events already in the outbox (a lead then two invoiced sales
//!   per customer), `--relays` (3) relay processes sharing one API key that `MockDub` limits to
//!   `--limit` (3,000) a minute with Dub's sliding window, each relay told `--rate-limit
//!   LIMIT`: they pace from one budget row. Time until the last event is delivered, against the
//!   minimum `60 × events / limit` s, and the 429s.
//! - `learn`: the same with no `--rate-limit`: the relays learn the limit from Dub's 429s
//!   (`X-RateLimit-Limit`), written to the budget row for all of them.
//! - `enqueue`: `--enqueue-n` (2,000) transactions `BEGIN; INSERT user; COMMIT` and as many
//!   `BEGIN; INSERT user; dub::outbox::enqueue(lead); COMMIT`, interleaved, on one connection:
//!   latency of each (p50, p99) and the difference, the cost an outbox adds to a request.
//! - `throughput`: `--throughput-events` (20,000) events against an unlimited `MockDub`,
//!   delivered by 1 relay, then by `--relays` relays: events per second.
//! - `idle`: one relay on an empty outbox for `--idle-secs` (60): its CPU time and memory
//!   (`/proc/PID/stat`, `/proc/PID/status`), and the CPU of the PostgreSQL backends serving it.
//!
//! The paced sections start at 1 s past an epoch-aligned minute (as `benches/rate_limit.rs`),
//! since where a run starts in Dub's window decides what an unpaced burst gets. Each section
//! has its own database and its own `MockDub`. Prints figures, asserts nothing (beyond every
//! event being delivered); see BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../../tests/it/support/postgres.rs"]
mod postgres;
#[path = "../../benches/support/window.rs"]
mod window;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dub::mock::MockDub;
use dub::models::TrackLeadRequest;
use postgres::Postgres;
use sqlx_core::query::query;
use sqlx_core::query_scalar::query_scalar;
use sqlx_postgres::{PgPool, PgPoolOptions};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_dub-track");

#[derive(Debug, Clone)]
struct Opts {
    only: Vec<String>,
    events: u64,
    limit: u64,
    relays: usize,
    enqueue_n: usize,
    throughput_events: u64,
    idle_secs: u64,
    align: bool,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            only: ["paced", "learn", "enqueue", "throughput", "idle"]
                .map(String::from)
                .to_vec(),
            events: 4_500,
            limit: 3_000,
            relays: 3,
            enqueue_n: 2_000,
            throughput_events: 20_000,
            idle_secs: 60,
            align: true,
        };
        // `cargo bench` passes `--bench`; nothing here takes it.
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .unwrap_or_else(|| panic!("{arg} needs a value"))
                    .clone()
            };
            match arg.as_str() {
                "--only" => o.only = value().split(',').map(str::to_owned).collect(),
                "--events" => o.events = value().parse().expect("--events N"),
                "--limit" => o.limit = value().parse().expect("--limit N"),
                "--relays" => o.relays = value().parse().expect("--relays N"),
                "--enqueue-n" => o.enqueue_n = value().parse().expect("--enqueue-n N"),
                "--throughput-events" => {
                    o.throughput_events = value().parse().expect("--throughput-events N")
                }
                "--idle-secs" => o.idle_secs = value().parse().expect("--idle-secs S"),
                "--no-align" => o.align = false,
                other => panic!(
                    "unknown argument {other:?}; flags: --only paced,learn,enqueue,throughput,idle \
                     --events --limit --relays --enqueue-n --throughput-events --idle-secs --no-align"
                ),
            }
        }
        o
    }

    fn runs(&self, section: &str) -> bool {
        self.only.iter().any(|s| s == section)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Waits until 1 s past the next epoch-aligned minute (or the current one, if that is still
/// more than 2 s ahead).
async fn align(opts: &Opts) {
    if opts.align {
        window::align(now_ms(), 1_000).await;
    }
}

/// A fresh database with the outbox's schema, and a pool on it.
async fn database(pg: &Postgres) -> (String, PgPool) {
    let url = pg.fresh_database();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("connect to the benchmark's database");
    dub::outbox::migrate(&pool).await.expect("migrate");
    (url, pool)
}

/// `n` events with plain SQL, in one statement: customer `i / 3` gets event `i`, its lead
/// first, then sales with invoices `in_C_1`, `in_C_2`.
async fn fill(pool: &PgPool, n: u64) {
    query(
        "INSERT INTO dub_outbox (event)
         SELECT CASE WHEN i % 3 = 0 THEN jsonb_build_object(
                    'type', 'lead', 'clickId', 'clk_' || i / 3, 'eventName', 'Sign up',
                    'customerExternalId', 'cust_' || i / 3)
                ELSE jsonb_build_object(
                    'type', 'sale', 'customerExternalId', 'cust_' || i / 3,
                    'amount', 900 + i % 3, 'invoiceId', 'in_' || i / 3 || '_' || i % 3)
                END
         FROM generate_series(0, $1 - 1) AS i ORDER BY i",
    )
    .bind(i64::try_from(n).expect("events fit in i64"))
    .execute(pool)
    .await
    .expect("fill the outbox");
}

/// A `dub-track relay` process on `url` against `mock`.
fn relay(mock: &MockDub, url: &str, args: &[&str], log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).expect("relay log");
    Command::new(BIN)
        .arg("relay")
        .args(args)
        .env("DATABASE_URL", url)
        .env("DUB_API_KEY", mock.token())
        .env("DUB_BASE_URL", mock.url())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dub-track relay")
}

async fn sigterm(mut child: Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill with the pid of a child we own and have not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(90), child.wait()).await;
}

#[derive(Debug, Default)]
struct Counts {
    delivered: u64,
    failed: u64,
    uncertain: u64,
}

async fn counts(pool: &PgPool) -> Counts {
    let (delivered, failed, uncertain): (i64, i64, i64) = sqlx_core::query_as::query_as(
        "SELECT count(*) FILTER (WHERE state = 'delivered'),
                count(*) FILTER (WHERE state = 'failed'),
                count(*) FILTER (WHERE state = 'uncertain')
         FROM dub_outbox",
    )
    .fetch_one(pool)
    .await
    .expect("count rows");
    Counts {
        delivered: delivered as u64,
        failed: failed as u64,
        uncertain: uncertain as u64,
    }
}

/// The epoch milliseconds at which the last row was finished.
async fn last_finished_ms(pool: &PgPool) -> u64 {
    let ms: f64 = query_scalar(
        "SELECT (extract(epoch FROM max(finished_at)) * 1000)::double precision FROM dub_outbox",
    )
    .fetch_one(pool)
    .await
    .expect("last finished");
    ms as u64
}

/// Delivered rows per 10 s from `start_ms`.
async fn per_ten_seconds(pool: &PgPool, start_ms: u64) -> Vec<(i64, i64)> {
    sqlx_core::query_as::query_as(
        "SELECT floor((extract(epoch FROM finished_at) * 1000 - $1) / 10000)::bigint AS slot,
                count(*)
         FROM dub_outbox WHERE state = 'delivered' GROUP BY slot ORDER BY slot",
    )
    .bind(start_ms as f64)
    .fetch_all(pool)
    .await
    .expect("per 10 s")
}

/// The summary line each relay prints when it stops.
fn relay_summary(log: &std::path::Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.split_once("relay stopped: ").map(|(_, s)| s.to_owned()))
        .unwrap_or_else(|| "(no summary line)".into())
}

/// Waits until the outbox holds no unfinished row, or `limit` passes.
async fn drained(pool: &PgPool, n: u64, limit: Duration) -> Counts {
    let started = Instant::now();
    loop {
        let c = counts(pool).await;
        if c.delivered + c.failed + c.uncertain >= n || started.elapsed() > limit {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Delivery {
    elapsed: f64,
    counts: Counts,
    requests: usize,
    refused: usize,
    recorded: u64,
    start_ms: u64,
    summaries: Vec<String>,
    slots: Vec<(i64, i64)>,
}

/// `relays` relay processes with `args` deliver `n` events already in the outbox to `mock`.
async fn deliver(
    pg: &Postgres,
    opts: &Opts,
    mock: &MockDub,
    n: u64,
    relays: usize,
    args: &[&str],
    aligned: bool,
) -> Delivery {
    let (url, pool) = database(pg).await;
    fill(&pool, n).await;
    let logs: Vec<_> = (0..relays)
        .map(|i| pg.directory().join(format!("relay-{}-{i}.log", now_ms())))
        .collect();
    if aligned {
        align(opts).await;
    }
    let start_ms = now_ms();
    let started = Instant::now();
    let children: Vec<Child> = logs
        .iter()
        .map(|log| relay(mock, &url, args, log))
        .collect();
    let counts = drained(&pool, n, Duration::from_secs(900)).await;
    let seen = started.elapsed().as_secs_f64();
    let end_ms = last_finished_ms(&pool).await;
    for child in children {
        sigterm(child).await;
    }
    let stats = mock.stats();
    let slots = per_ten_seconds(&pool, start_ms).await;
    pool.close().await;
    Delivery {
        elapsed: if end_ms > start_ms {
            (end_ms - start_ms) as f64 / 1000.0
        } else {
            seen
        },
        counts,
        requests: stats.requests as usize,
        refused: stats.rate_limited as usize,
        recorded: stats.leads + stats.sales,
        start_ms,
        summaries: logs.iter().map(|l| relay_summary(l)).collect(),
        slots,
    }
}

fn print_delivery(d: &Delivery, n: u64) {
    println!(
        "  delivered {} failed {} uncertain {} of {n}; recorded by the mock {}",
        d.counts.delivered, d.counts.failed, d.counts.uncertain, d.recorded
    );
    println!(
        "  requests {}, refused (429) {} = {:.2} %, requests per event {:.3}",
        d.requests,
        d.refused,
        100.0 * d.refused as f64 / d.requests.max(1) as f64,
        d.requests as f64 / n as f64
    );
    for (i, s) in d.summaries.iter().enumerate() {
        println!("  relay {i}: {s}");
    }
    let slots: Vec<String> = d
        .slots
        .iter()
        .map(|(slot, count)| format!("{}s:{count}", slot * 10))
        .collect();
    println!("  delivered per 10 s: {}", slots.join(" "));
}

async fn paced(pg: &Postgres, opts: &Opts, learn: bool) -> (f64, f64, usize, usize) {
    let mock = MockDub::builder()
        .rate_limit(opts.limit)
        .history(1_000)
        .start()
        .await
        .expect("mock");
    let limit = opts.limit.to_string();
    let args: Vec<&str> = if learn {
        vec![]
    } else {
        vec!["--rate-limit", &limit]
    };
    println!(
        "\n{} ({} relay processes, {} events, key limited to {}/min, load {})",
        if learn {
            "learn: no --rate-limit, the relays learn the limit from the first 429s"
        } else {
            "paced: every relay --rate-limit LIMIT, one shared budget"
        },
        opts.relays,
        opts.events,
        opts.limit,
        load_average()
    );
    let d = deliver(pg, opts, &mock, opts.events, opts.relays, &args, true).await;
    let min = 60.0 * opts.events as f64 / opts.limit as f64;
    let window_min = window::window_minimum(d.start_ms, opts.events, opts.limit);
    println!(
        "  started {:.3} s into the minute; elapsed {:.1} s = {:.3} x {:.0} s ({:.3} x {:.1} s, \
         the fastest the window allows from this start); load at the end {}",
        (d.start_ms % window::WINDOW_MS) as f64 / 1000.0,
        d.elapsed,
        d.elapsed / min,
        min,
        d.elapsed / window_min,
        window_min,
        load_average()
    );
    print_delivery(&d, opts.events);
    mock.shutdown().await;
    (d.elapsed, d.elapsed / min, d.refused, d.requests)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn enqueue_cost(pg: &Postgres, opts: &Opts) -> (f64, f64, f64, f64) {
    let (_, pool) = database(pg).await;
    // One connection, so that both kinds of transaction run on the same backend.
    let pool1 = PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("pool");
    pool.close().await;
    query("CREATE TABLE bench_users (id bigserial PRIMARY KEY, email text NOT NULL)")
        .execute(&pool1)
        .await
        .expect("users table");
    println!(
        "\nenqueue: {} transactions of each kind, interleaved, one connection (load {})",
        opts.enqueue_n,
        load_average()
    );
    let mut plain = Vec::with_capacity(opts.enqueue_n);
    let mut with = Vec::with_capacity(opts.enqueue_n);
    let warm = opts.enqueue_n / 10;
    for i in 0..(warm + opts.enqueue_n) {
        // Alternate which kind goes first, so that neither always follows the other.
        for kind in if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let started = Instant::now();
            let mut tx = pool1.begin().await.expect("begin");
            query("INSERT INTO bench_users (email) VALUES ($1)")
                .bind(format!("user_{i}_{kind}@example.com"))
                .execute(&mut *tx)
                .await
                .expect("insert user");
            if kind {
                let lead = TrackLeadRequest::builder()
                    .click_id("clk_bench")
                    .event_name("Sign up")
                    .customer_external_id(format!("user_{i}"))
                    .build();
                dub::outbox::enqueue(&mut *tx, lead).await.expect("enqueue");
            }
            tx.commit().await.expect("commit");
            let us = started.elapsed().as_secs_f64() * 1e6;
            if i >= warm {
                (if kind { &mut with } else { &mut plain }).push(us);
            }
        }
    }
    plain.sort_by(f64::total_cmp);
    with.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&plain, 0.5), percentile(&plain, 0.99));
    let (e50, e99) = (percentile(&with, 0.5), percentile(&with, 0.99));
    println!("  BEGIN; INSERT user; COMMIT:                  p50 {p50:.0} µs, p99 {p99:.0} µs");
    println!("  BEGIN; INSERT user; enqueue(lead); COMMIT:   p50 {e50:.0} µs, p99 {e99:.0} µs");
    println!(
        "  added by enqueue: p50 +{:.0} µs ({:.2}x), p99 +{:.0} µs",
        e50 - p50,
        e50 / p50,
        e99 - p99
    );
    pool1.close().await;
    (p50, p99, e50, e99)
}

async fn throughput(pg: &Postgres, opts: &Opts, relays: usize) -> f64 {
    let mock = MockDub::builder()
        .history(1_000)
        .start()
        .await
        .expect("mock");
    println!(
        "\nthroughput: {} relay process(es), {} events, unlimited MockDub (load {})",
        relays,
        opts.throughput_events,
        load_average()
    );
    let d = deliver(pg, opts, &mock, opts.throughput_events, relays, &[], false).await;
    let rate = opts.throughput_events as f64 / d.elapsed;
    println!(
        "  elapsed {:.2} s: {:.0} events/s; load at the end {}",
        d.elapsed,
        rate,
        load_average()
    );
    print_delivery(&d, opts.throughput_events);
    mock.shutdown().await;
    rate
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks as f64 / hz)
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

async fn idle(pg: &Postgres, opts: &Opts) -> (f64, u64, u64, f64) {
    let mock = MockDub::builder()
        .history(1_000)
        .start()
        .await
        .expect("mock");
    let (url, pool) = database(pg).await;
    let database: String = query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .expect("database name");
    println!(
        "\nidle: one relay on an empty outbox, {} s (load {})",
        opts.idle_secs,
        load_average()
    );
    let log = pg.directory().join("relay-idle.log");
    let child = relay(&mock, &url, &[], &log);
    let pid = child.id().expect("relay pid");
    // Start-up: connecting, the first take-over, prune and claim, LISTEN.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let backends: Vec<(i32, String)> = sqlx_core::query_as::query_as(
        "SELECT pid, coalesce(query, '') FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&database)
    .fetch_all(&pool)
    .await
    .expect("backends");
    let listening = backends.iter().any(|(_, q)| q.contains("LISTEN"));
    let backend_cpu = |backends: &[(i32, String)]| -> f64 {
        backends
            .iter()
            .filter_map(|(p, _)| cpu_secs(*p as u32))
            .sum()
    };
    let cpu0 = cpu_secs(pid).unwrap_or(f64::NAN);
    let pg0 = backend_cpu(&backends);
    let rss0 = status_kb(pid, "VmRSS").unwrap_or(0);
    let requests0 = mock.request_count();
    tokio::time::sleep(Duration::from_secs(opts.idle_secs)).await;
    let cpu1 = cpu_secs(pid).unwrap_or(f64::NAN);
    let pg1 = backend_cpu(&backends);
    let rss1 = status_kb(pid, "VmRSS").unwrap_or(0);
    let hwm = status_kb(pid, "VmHWM").unwrap_or(0);
    let threads = status_kb(pid, "Threads").unwrap_or(0);
    let cpu = cpu1 - cpu0;
    println!(
        "  relay pid {pid}: CPU {:.0} ms in {} s ({:.3} % of one core), RSS {:.1} MB at 5 s, \
         {:.1} MB at {} s, peak {:.1} MB, {threads} threads",
        cpu * 1000.0,
        opts.idle_secs,
        100.0 * cpu / opts.idle_secs as f64,
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        5 + opts.idle_secs,
        hwm as f64 / 1024.0,
    );
    println!(
        "  its {} PostgreSQL backend(s) (LISTEN among them: {listening}): CPU {:.0} ms in {} s; \
         requests to Dub meanwhile: {}",
        backends.len(),
        (pg1 - pg0) * 1000.0,
        opts.idle_secs,
        mock.request_count() - requests0
    );
    sigterm(child).await;
    pool.close().await;
    mock.shutdown().await;
    (cpu, rss1, hwm, pg1 - pg0)
}

fn main() {
    let opts = Opts::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(pg) = Postgres::start() else {
        eprintln!("outbox bench: no PostgreSQL server, nothing measured");
        return;
    };
    let began = Instant::now();
    println!(
        "outbox: {} ({} cores), load {}; relays are `{BIN}` processes",
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let mut summary: BTreeMap<&str, String> = BTreeMap::new();
    runtime.block_on(async {
        if opts.runs("paced") {
            let (elapsed, ratio, refused, requests) = paced(&pg, &opts, false).await;
            summary.insert(
                "1 paced (--rate-limit)",
                format!(
                    "{elapsed:.1} s = {ratio:.3}x, 429: {refused} of {requests} (goal <= 1.05x, 0)"
                ),
            );
        }
        if opts.runs("learn") {
            let (elapsed, ratio, refused, requests) = paced(&pg, &opts, true).await;
            summary.insert(
                "2 learning",
                format!(
                    "{elapsed:.1} s = {ratio:.3}x, 429: {refused} of {requests} = {:.2} % \
                     (goal <= 1.2x, <= 2 %)",
                    100.0 * refused as f64 / requests.max(1) as f64
                ),
            );
        }
        if opts.runs("enqueue") {
            let (p50, p99, e50, e99) = enqueue_cost(&pg, &opts).await;
            summary.insert(
                "3 enqueue",
                format!(
                    "p50 {p50:.0} -> {e50:.0} µs (+{:.0}), p99 {p99:.0} -> {e99:.0} µs (+{:.0})",
                    e50 - p50,
                    e99 - p99
                ),
            );
        }
        if opts.runs("throughput") {
            let one = throughput(&pg, &opts, 1).await;
            let many = throughput(&pg, &opts, opts.relays).await;
            summary.insert(
                "4 throughput",
                format!(
                    "1 relay {one:.0} events/s, {} relays {many:.0} events/s (goal >= 1000)",
                    opts.relays
                ),
            );
        }
        if opts.runs("idle") {
            let (cpu, rss, hwm, pg_cpu) = idle(&pg, &opts).await;
            summary.insert(
                "5 idle",
                format!(
                    "relay CPU {:.0} ms / {} s, RSS {:.1} MB (peak {:.1} MB); its backends {:.0} ms",
                    cpu * 1000.0,
                    opts.idle_secs,
                    rss as f64 / 1024.0,
                    hwm as f64 / 1024.0,
                    pg_cpu * 1000.0
                ),
            );
        }
    });
    println!(
        "\nsummary (total {:.0} s, load {}):",
        began.elapsed().as_secs_f64(),
        load_average()
    );
    for (k, v) in summary {
        println!("  {k}: {v}");
    }
}
