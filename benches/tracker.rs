//! The background tracker (issue 13): how long a hand-over takes, in memory and with the
//! durable spool, how many durable hand-overs a second it takes, and how fast a backlog left
//! by an outage drains under Dub's rate limit. Against `dub::mock::MockDub` on 127.0.0.1.
//!
//! ```text
//! cargo bench --bench tracker              # every figure, about 1.5 minutes
//! cargo bench --bench tracker -- --quick   # fewer events, shorter runs, about 35 s
//! cargo bench --bench tracker -- --only memory,spool,drain --spool-dir /tmp
//! cargo bench --bench tracker -- --only backlog   # one customer's 100,000-event backlog
//! ```
//!
//! It prints figures and never asserts on them; see BENCHMARKS.md for the method.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dub::mock::{Fault, MockDub, RandomFaults};
use dub::models::TrackLeadRequest;
use dub::tracker::{Event, Tracker};
use dub::{Dub, RateLimit};
use tokio::time::Instant;

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let opts = Opts::parse(&args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // On a worker thread, as a request handler would hand events over.
    runtime
        .block_on(async { tokio::spawn(run(opts)).await })
        .expect("benchmark task");
}

#[derive(Debug, Clone)]
struct Opts {
    /// Events handed over in the in-memory latency runs.
    memory_events: usize,
    /// How long each durable run hands over.
    spool_secs: f64,
    producers: Vec<usize>,
    /// Events in the spool before the backlog run.
    backlog: usize,
    /// Drain: Dub's limit (requests a minute), events handed over during the outage, and how
    /// long the outage lasts.
    drain_limit: u32,
    drain_events: usize,
    outage_secs: f64,
    /// One customer's backlog: events in the spool, and the longest a drain may take.
    one_customer: usize,
    one_customer_secs: f64,
    spool_dir: PathBuf,
    only: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut o = Opts {
            memory_events: 100_000,
            spool_secs: 5.0,
            producers: vec![1, 16, 64, 256],
            backlog: 100_000,
            drain_limit: 3_000,
            drain_events: 1_500,
            outage_secs: 5.0,
            one_customer: 100_000,
            one_customer_secs: 300.0,
            spool_dir: std::env::temp_dir(),
            only: vec![],
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().unwrap_or_else(|| usage(flag));
            let number = |v: String| v.parse::<f64>().unwrap_or_else(|_| usage(flag));
            match flag.as_str() {
                "--quick" => {
                    o.memory_events = 20_000;
                    o.spool_secs = 1.5;
                    o.backlog = 20_000;
                    o.drain_events = 600;
                    o.outage_secs = 3.0;
                    o.one_customer = 20_000;
                }
                "--memory-events" => o.memory_events = number(value()) as usize,
                "--spool-secs" => o.spool_secs = number(value()),
                "--backlog" => o.backlog = number(value()) as usize,
                "--producers" => {
                    o.producers = value()
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| number(s.to_owned()) as usize)
                        .collect()
                }
                "--drain-limit" => o.drain_limit = number(value()) as u32,
                "--drain-events" => o.drain_events = number(value()) as usize,
                "--outage-secs" => o.outage_secs = number(value()),
                "--one-customer" => o.one_customer = number(value()) as usize,
                "--one-customer-secs" => o.one_customer_secs = number(value()),
                "--spool-dir" => o.spool_dir = PathBuf::from(value()),
                "--only" => o.only = value().split(',').map(str::to_owned).collect(),
                _ => usage(flag),
            }
        }
        o
    }

    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "bad argument {flag:?}\n\
         usage: tracker [--quick] [--only memory,spool,drain] [--memory-events N]\n\
         \x20              [--spool-secs S] [--producers 1,16,64,256] [--backlog N]\n\
         \x20              [--spool-dir DIR] [--drain-limit PER_MINUTE] [--drain-events N]\n\
         \x20              [--outage-secs S] [--one-customer N] [--one-customer-secs S]"
    );
    std::process::exit(2)
}

async fn run(o: Opts) {
    println!("# dub background tracker benchmark (issue 13)");
    println!("{}", machine());
    println!();
    if o.runs("memory") {
        memory(&o).await;
    }
    if o.runs("spool") {
        spool(&o).await;
    }
    if o.runs("drain") {
        drain(&o).await;
    }
    if o.runs("backlog") {
        backlog(&o).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn client(mock: &MockDub, rate_limit: RateLimit) -> Dub {
    Dub::builder()
        .token(mock.token())
        .server_url(mock.url())
        .rate_limit(rate_limit)
        .build()
        .expect("client")
}

/// A lead for its own customer: Dub deduplicates leads, so the tracker may resend it after an
/// outage error.
fn lead(n: usize) -> Event {
    TrackLeadRequest::builder()
        .click_id("clk_123")
        .event_name("Sign up")
        .customer_external_id(format!("user_{n}"))
        .customer_email("ada@example.com")
        .build()
        .into()
}

/// Every request answered 503: Dub is down, the tracker pauses and probes, its queue fills.
fn outage() -> RandomFaults {
    RandomFaults::new(13, 1.0).kinds([Fault::Status(503)])
}

/// Latencies in nanoseconds, sorted.
struct Latencies(Vec<u64>);

impl Latencies {
    fn new(mut ns: Vec<u64>) -> Latencies {
        ns.sort_unstable();
        Latencies(ns)
    }

    fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        Duration::from_nanos(self.0[rank - 1])
    }

    fn mean(&self) -> Duration {
        let sum: u128 = self.0.iter().map(|&n| u128::from(n)).sum();
        Duration::from_nanos((sum / self.0.len().max(1) as u128) as u64)
    }

    fn row(&self) -> String {
        format!(
            "{:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9}",
            fmt(self.quantile(0.5)),
            fmt(self.quantile(0.9)),
            fmt(self.quantile(0.99)),
            fmt(self.quantile(0.999)),
            fmt(self.quantile(1.0)),
            fmt(self.mean()),
        )
    }
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

const LATENCY_HEADER: &str =
    "      p50 |       p90 |       p99 |     p99.9 |       max |      mean";

// ---------------------------------------------------------------------------------------------
// 1. In-memory hand-over latency.

async fn memory(o: &Opts) {
    let n = o.memory_events;
    println!("## 1. Hand-over latency, in memory ({n} events, one producer)");
    println!();
    println!("| while | events/s | page faults | {LATENCY_HEADER} |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for delivering in [false, true] {
        let mock = MockDub::start().await.expect("mock");
        let dub = if delivering {
            client(&mock, RateLimit::off())
        } else {
            mock.random_faults(outage());
            client(&mock, RateLimit::adaptive())
        };
        let warmup = 1_000;
        let tracker = dub.tracker().capacity(n + warmup).start().expect("tracker");
        for i in 0..warmup {
            drop(tracker.send(lead(n + i)).await.expect("hand-over"));
        }
        let events: Vec<Event> = (0..n).map(lead).collect();
        let mut ns = Vec::with_capacity(n);
        let faults = minor_faults();
        let started = Instant::now();
        for event in events {
            let t = Instant::now();
            let receipt = tracker.send(event).await;
            ns.push(t.elapsed().as_nanos() as u64);
            drop(receipt.expect("hand-over"));
            // A request handler awaits other things between hand-overs; without this the loop
            // would keep its worker and the dispatcher woken onto it would never run.
            tokio::task::yield_now().await;
        }
        let elapsed = started.elapsed();
        let faults = minor_faults() - faults;
        let delivered = tracker.stats().delivered;
        let l = Latencies::new(ns);
        let while_ = if delivering {
            format!("Dub up, delivering unpaced ({delivered} delivered meanwhile)")
        } else {
            "Dub down (every request 503), queue filling".to_owned()
        };
        println!(
            "| {while_} | {:.0} | {faults} | {} |",
            n as f64 / elapsed.as_secs_f64(),
            l.row()
        );
        let _ = tracker.shutdown(Duration::from_millis(200)).await;
        mock.shutdown().await;
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. Durable hand-over: latency and throughput with concurrent producers.

async fn spool(o: &Opts) {
    let dir = o
        .spool_dir
        .join(format!("dub-tracker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("spool directory");
    println!(
        "## 2, 3. Durable hand-over (spool in {}, {})",
        dir.display(),
        filesystem(&dir)
    );
    println!();
    for append in [true, false] {
        let fsync = fsync_latency(&dir, 200, append);
        println!(
            "- {} 4 KiB + fdatasync on that filesystem (200 times): p50 {}, p99 {}, mean {}",
            if append { "append" } else { "overwrite" },
            fmt(fsync.quantile(0.5)),
            fmt(fsync.quantile(0.99)),
            fmt(fsync.mean())
        );
    }
    println!();
    println!(
        "Each producer awaits every hand-over (its commit) before the next; runs last {} s.",
        o.spool_secs
    );
    println!();
    println!("| producers | while | events | events/s | {LATENCY_HEADER} |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut runs: Vec<(usize, Dub_)> = o.producers.iter().map(|&p| (p, Dub_::Down)).collect();
    runs.push((64, Dub_::DownWithBacklog(o.backlog)));
    runs.push((64, Dub_::AtLimit(3_000)));
    runs.push((64, Dub_::Unpaced));
    for (i, (producers, dub_)) in runs.into_iter().enumerate() {
        let path = dir.join(format!("spool-{i}.sqlite"));
        let mock = match dub_ {
            Dub_::AtLimit(limit) => MockDub::builder().rate_limit(u64::from(limit)).start(),
            _ => MockDub::builder().start(),
        }
        .await
        .expect("mock");
        let dub = match dub_ {
            Dub_::Down | Dub_::DownWithBacklog(_) => {
                mock.random_faults(outage());
                client(&mock, RateLimit::adaptive())
            }
            Dub_::AtLimit(limit) => client(&mock, RateLimit::per_minute(limit)),
            Dub_::Unpaced => client(&mock, RateLimit::off()),
        };
        let tracker = dub
            .tracker()
            .capacity(10_000_000)
            .spool(&path)
            .start()
            .expect("tracker");
        if let Dub_::DownWithBacklog(backlog) = dub_ {
            prefill(&tracker, backlog).await;
        }
        // One hand-over first: the file's pages and the writer thread warm.
        drop(tracker.send(lead(usize::MAX)).await.expect("hand-over"));
        let (count, elapsed, l) = durable_run(&tracker, producers, o.spool_secs).await;
        let delivered = tracker.stats().delivered;
        let while_ = match dub_ {
            Dub_::Down => "Dub down".to_owned(),
            Dub_::DownWithBacklog(backlog) => {
                format!("Dub down, {backlog} events already in the spool")
            }
            Dub_::AtLimit(limit) => {
                format!("Dub up, delivering at its limit {limit}/min ({delivered} delivered)")
            }
            Dub_::Unpaced => format!("Dub up, delivering unpaced ({delivered} delivered)"),
        };
        println!(
            "| {producers} | {while_} | {count} | {:.0} | {} |",
            count as f64 / elapsed.as_secs_f64(),
            l.row()
        );
        let _ = tracker.shutdown(Duration::from_millis(200)).await;
        mock.shutdown().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    let _ = std::fs::remove_dir(&dir);
    println!();
}

/// What Dub does during a durable run.
#[derive(Debug, Clone, Copy)]
enum Dub_ {
    /// Every request 503: the tracker pauses and probes, the spool fills.
    Down,
    /// Down, with this many events handed over before the run.
    DownWithBacklog(usize),
    /// Up, with this limit (requests a minute) enforced and known to the client.
    AtLimit(u32),
    /// Up, no limit, the client unpaced.
    Unpaced,
}

/// Hands `events` over with 256 producers, untimed.
async fn prefill(tracker: &Tracker, events: usize) {
    let producers = 256;
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let tracker = tracker.clone();
            tokio::spawn(async move {
                for n in (p..events).step_by(producers) {
                    let event = lead(1_000_000_000 + n);
                    drop(tracker.send(event).await.expect("hand-over"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("producer");
    }
}

/// `producers` tasks hand over for `secs` seconds, each awaiting every hand-over.
async fn durable_run(
    tracker: &Tracker,
    producers: usize,
    secs: f64,
) -> (usize, Duration, Latencies) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let tracker = tracker.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut ns = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let event = lead(p * 10_000_000 + n);
                    n += 1;
                    let t = Instant::now();
                    let receipt = tracker.send(event).await;
                    ns.push(t.elapsed().as_nanos() as u64);
                    drop(receipt.expect("hand-over"));
                }
                ns
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("producer"));
    }
    let elapsed = started.elapsed();
    (all.len(), elapsed, Latencies::new(all))
}

/// Minor page faults of the whole process so far (the queue growing into fresh memory).
fn minor_faults() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    usage.ru_minflt
}

/// What one small durable write costs on this filesystem, for comparison with a commit:
/// appending (the file grows, so its size is journalled too) or overwriting a block in place
/// (as SQLite reuses its WAL file after a checkpoint).
fn fsync_latency(dir: &Path, times: usize, append: bool) -> Latencies {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("fsync probe");
    let block = [0u8; 4096];
    if !append {
        file.write_all(&block).expect("write");
        file.sync_all().expect("fsync");
    }
    let mut ns = Vec::with_capacity(times);
    for _ in 0..times {
        let t = std::time::Instant::now();
        if !append {
            file.seek(SeekFrom::Start(0)).expect("seek");
        }
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        ns.push(t.elapsed().as_nanos() as u64);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Latencies::new(ns)
}

/// The filesystem type and device of the mount holding `dir`, from /proc/self/mounts.
fn filesystem(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (device, at, fstype) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(at)
                .then(|| (at.len(), format!("{fstype} on {device} mounted at {at}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "filesystem unknown".to_owned(), |(_, s)| s)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "machine: {cpus} CPUs, {model}; load average at start {}",
        load.join(" ")
    )
}

// ---------------------------------------------------------------------------------------------
// 4. Drain rate after an outage.

async fn drain(o: &Opts) {
    let limit = o.drain_limit;
    let n = o.drain_events;
    println!(
        "## 4. Drain after an outage (Dub's limit {limit}/min enforced by the mock and known to \
         the client; {n} events handed over during a {} s outage of 503s)",
        o.outage_secs
    );
    println!();
    let mock = MockDub::builder()
        .rate_limit(u64::from(limit))
        .start()
        .await
        .expect("mock");
    mock.random_faults(outage());
    let dub = client(&mock, RateLimit::per_minute(limit));
    let tracker = dub.tracker().capacity(n).start().expect("tracker");
    let outage_began = Instant::now();
    for i in 0..n {
        drop(tracker.send(lead(i)).await.expect("hand-over"));
    }
    tokio::time::sleep_until(outage_began + Duration::from_secs_f64(o.outage_secs)).await;
    mock.clear_faults();
    let ended = Instant::now();
    let during = mock.request_count();
    // Give up after what twice the limit's pace would need, plus the tracker's longest pause.
    let patience = Duration::from_secs_f64(2.0 * 60.0 * n as f64 / f64::from(limit) + 70.0);
    loop {
        let s = tracker.stats();
        if s.delivered + s.failed + s.uncertain >= n as u64 || ended.elapsed() > patience {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = mock.requests();
    let accepted: Vec<Instant> = requests
        .iter()
        .filter(|r| r.status == Some(200) && r.at >= ended)
        .map(|r| r.at)
        .collect();
    let refused = requests
        .iter()
        .filter(|r| r.status == Some(429) && r.fault.is_none())
        .count();
    let stats = tracker.stats();
    let first = accepted.first().copied().unwrap_or(ended);
    let last = accepted.last().copied().unwrap_or(ended);
    let total = last.saturating_duration_since(ended);
    let per_min = |count: usize, d: Duration| count as f64 * 60.0 / d.as_secs_f64().max(1e-9);
    let from_end = per_min(accepted.len(), total);
    let steady = per_min(
        accepted.len().saturating_sub(1),
        last.saturating_duration_since(first),
    );
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| requests during the outage (all 503) | {during} |");
    println!(
        "| first accepted request after the outage ended | {} later |",
        fmt(first.saturating_duration_since(ended))
    );
    println!(
        "| drained (last accepted) after the outage ended | {} |",
        fmt(total)
    );
    println!(
        "| accepted after the outage | {} (delivered {}, failed {}, uncertain {}) |",
        accepted.len(),
        stats.delivered,
        stats.failed,
        stats.uncertain
    );
    println!("| refused by Dub's limit (429) | {refused} |");
    println!(
        "| **drain rate, end of outage to drained** | **{from_end:.0}/min = {:.1} % of the limit** |",
        100.0 * from_end / f64::from(limit)
    );
    println!(
        "| drain rate, first to last accepted request | {steady:.0}/min = {:.1} % of the limit |",
        100.0 * steady / f64::from(limit)
    );
    println!();
    let _ = tracker.shutdown(Duration::from_millis(200)).await;
    mock.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. One customer's backlog (issue 18): a customer's events go one at a time, so how fast the
// spool finds the next one is all that limits the drain.

/// Events per window at the start and the end of a drain.
const WINDOW: usize = 2_000;

async fn backlog(o: &Opts) {
    let dir = o
        .spool_dir
        .join(format!("dub-tracker-backlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("spool directory");
    println!(
        "## 5. One customer's backlog, drained from the spool against an unlimited MockDub \
         (client unpaced; at most {} s a run)",
        o.one_customer_secs
    );
    println!();
    println!("| backlog | first {WINDOW} events | last {WINDOW} events | drained in | delivered |");
    println!("|---:|---:|---:|---:|---:|");
    let mut sizes = vec![o.one_customer];
    if o.one_customer > WINDOW {
        sizes.push(WINDOW);
    }
    for n in sizes {
        let path = dir.join(format!("one-customer-{n}.sqlite"));
        let mock = MockDub::builder().start().await.expect("mock");
        // Handed over while Dub is down; the tracker is stopped before it delivers any.
        mock.random_faults(outage());
        let tracker = client(&mock, RateLimit::off())
            .tracker()
            .capacity(n + 1)
            .spool(&path)
            .start()
            .expect("tracker");
        let producers = 64;
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let tracker = tracker.clone();
                tokio::spawn(async move {
                    for _ in (p..n).step_by(producers) {
                        drop(tracker.send(lead(7)).await.expect("hand-over"));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("producer");
        }
        let _ = tracker.shutdown(Duration::ZERO).await;
        mock.clear_faults();

        let times = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
        let record = times.clone();
        let started = Instant::now();
        let tracker = client(&mock, RateLimit::off())
            .tracker()
            .capacity(n + 1)
            .spool(&path)
            .on_outcome(move |_| record.lock().expect("times").push(Instant::now()))
            .start()
            .expect("tracker");
        let limit = Duration::from_secs_f64(o.one_customer_secs);
        while times.lock().expect("times").len() < n && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let times = times.lock().expect("times").clone();
        let rate = |from: Instant, to: Instant, count: usize| {
            format!(
                "{:.0}/s",
                count as f64 / to.saturating_duration_since(from).as_secs_f64().max(1e-9)
            )
        };
        let first = match times.get(WINDOW.min(n) - 1) {
            Some(&t) => rate(started, t, WINDOW.min(n)),
            None => format!(
                "{} in {:.0} s: {}",
                times.len(),
                started.elapsed().as_secs_f64(),
                rate(started, Instant::now(), times.len())
            ),
        };
        let (last, drained) = if times.len() >= n {
            let end = times[n - 1];
            let from = if n > WINDOW {
                times[n - WINDOW - 1]
            } else {
                started
            };
            (
                rate(from, end, WINDOW.min(n)),
                fmt(end.saturating_duration_since(started)),
            )
        } else {
            (
                "-".to_owned(),
                format!("not in {:.0} s", limit.as_secs_f64()),
            )
        };
        println!("| {n} | {first} | {last} | {drained} | {} |", times.len());
        let _ = tracker.shutdown(Duration::from_millis(200)).await;
        mock.shutdown().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    let _ = std::fs::remove_dir(&dir);
    println!();
}
