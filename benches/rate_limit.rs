//! How close the client gets to Dub's rate limit (issue 12): 1.5 times a key's per-minute limit
//! in distinct leads, delivered against `MockDub` enforcing Dub's sliding window (two
//! epoch-aligned one-minute windows, the previous one weighted by the part of it still inside
//! the last minute) in real time.
//!
//! ```text
//! cargo bench --bench rate_limit                   # 4,500 leads at 3,000 a minute, 7 - 9 minutes
//! cargo bench --bench rate_limit -- --quick        # 900 leads at 600 a minute (still ~90 s each)
//! cargo bench --bench rate_limit -- --scenarios ac # only some scenarios
//! ```
//!
//! Scenarios, each on a fresh `MockDub` and started at the same point of the epoch-aligned
//! minute (1 s past it unless `--offset` says otherwise):
//!
//! - `a`: one client that knows the limit (`RateLimit::per_minute`), `--tasks` tasks taking
//!   events from a shared queue;
//! - `b`: `--clients` independent clients on the key that do not know it
//!   (`RateLimit::adaptive()`, the default), each with its own `--tasks` tasks delivering an
//!   equal share;
//! - `c`: the background tracker of one client that knows the limit, handed every event at once.
//!
//! Calls get a deadline long enough not to give up (600 s, 100 attempts); a call that gives up
//! anyway (the retry budget) puts its event back on the queue and is counted. Leads have
//! distinct `customerExternalId`s, so each is recorded once (the mock's count is checked and
//! printed).
//!
//! Figures per scenario: elapsed time from the first call to the last delivery, against the
//! minimum the window allows (`60 × events / limit` s) and against the fastest the window allows
//! from the run's start position (every request sent the moment the window admits it, computed
//! with Dub's algorithm); requests refused with 429; requests per event. It prints figures and
//! asserts nothing; see BENCHMARKS.md for the method and results.

#[path = "support/window.rs"]
mod window;

use std::collections::{BTreeMap, VecDeque};
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dub::mock::MockDub;
use dub::models::TrackLeadRequest;
use dub::{Dub, RateLimit, RetryConfig};
use futures_util::future::join_all;
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Opts {
    limit: u64,
    events: usize,
    tasks: usize,
    clients: usize,
    /// Seconds past the epoch-aligned minute at which each scenario starts.
    offset: f64,
    align: bool,
    scenarios: String,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            limit: 3_000,
            events: 4_500,
            tasks: 64,
            clients: 4,
            offset: 1.0,
            align: true,
            scenarios: "abc".into(),
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
                "--quick" => {
                    o.limit = 600;
                    o.events = 900;
                }
                "--limit" => o.limit = value().parse().expect("--limit N"),
                "--events" => o.events = value().parse().expect("--events N"),
                "--tasks" => o.tasks = value().parse().expect("--tasks N"),
                "--clients" => o.clients = value().parse().expect("--clients N"),
                "--offset" => o.offset = value().parse().expect("--offset SECONDS"),
                "--no-align" => o.align = false,
                "--scenarios" => o.scenarios = value(),
                other => panic!(
                    "unknown argument {other:?}; flags: --quick --limit --events --tasks \
                     --clients --offset --no-align --scenarios"
                ),
            }
        }
        assert!(o.limit > 0 && o.events > 0 && o.tasks > 0 && o.clients > 0);
        assert!((0.0..60.0).contains(&o.offset), "--offset is in [0, 60)");
        o
    }

    /// `60 × events / limit` seconds: the minimum the sliding window allows at a steady pace.
    fn minimum(&self) -> f64 {
        60.0 * self.events as f64 / self.limit as f64
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
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Waits until `offset` seconds past the next epoch-aligned minute (or the current one, if that
/// point is still ahead by more than 2 s).
async fn align(opts: &Opts) {
    if opts.align {
        window::align(now_ms(), (opts.offset * 1000.0) as u64).await;
    }
}

fn lead(i: usize) -> TrackLeadRequest {
    TrackLeadRequest::builder()
        .click_id("cl_bench")
        .event_name("Sign up")
        .customer_external_id(format!("bench_{i}"))
        .build()
}

/// A per-call policy that does not give up within the run: 600 s and 100 attempts.
fn patient() -> RetryConfig {
    RetryConfig::default()
        .with_max_elapsed_time(Some(Duration::from_secs(600)))
        .with_max_attempts(100)
}

fn client(mock: &MockDub, rate_limit: RateLimit) -> Dub {
    Dub::builder()
        .token(mock.token())
        .server_url(mock.url())
        .rate_limit(rate_limit)
        .retry_config(patient())
        .build()
        .expect("client")
}

/// Calls that gave up (and were put back on the queue), by error kind.
#[derive(Default)]
struct GaveUp(Mutex<BTreeMap<String, usize>>);

impl GaveUp {
    fn add(&self, what: String) {
        *self.0.lock().unwrap().entry(what).or_default() += 1;
    }

    fn summary(&self) -> String {
        let map = self.0.lock().unwrap();
        if map.is_empty() {
            return "0".into();
        }
        let total: usize = map.values().sum();
        let parts: Vec<String> = map.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!("{total} ({})", parts.join(", "))
    }
}

/// Delivers the events in `queue` through `dub` with `tasks` tasks; returns when all are
/// delivered, at that moment.
async fn deliver(dub: Dub, queue: Vec<usize>, tasks: usize, gave_up: Arc<GaveUp>) -> Instant {
    let queue = Arc::new(Mutex::new(VecDeque::from(queue)));
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (dub, queue, gave_up) = (dub.clone(), queue.clone(), gave_up.clone());
            tokio::spawn(async move {
                loop {
                    let Some(i) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    if let Err(e) = dub.track().lead(lead(i)).await {
                        // Leads are deduplicated by Dub (and the mock): sending again is safe.
                        gave_up.add(format!("{:?} after {} attempts", e.kind(), e.attempts()));
                        queue.lock().unwrap().push_back(i);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    Instant::now()
}

/// What a scenario measured.
struct Run {
    name: &'static str,
    position: f64,
    elapsed: f64,
    window_min: f64,
    requests: usize,
    refused: usize,
    recorded: usize,
    gave_up: String,
    notes: Vec<String>,
}

async fn scenario(opts: &Opts, which: char) -> Run {
    let mock = MockDub::builder()
        .rate_limit(opts.limit)
        .start()
        .await
        .expect("mock");
    let per_minute = u32::try_from(opts.limit).expect("limit fits u32");
    let gave_up = Arc::new(GaveUp::default());
    let mut notes = vec![];
    align(opts).await;
    let load_before = load_average();
    let start_ms = now_ms();
    let start = Instant::now();
    let (name, end) = match which {
        'a' => {
            let dub = client(&mock, RateLimit::per_minute(per_minute));
            let end = deliver(
                dub.clone(),
                (0..opts.events).collect(),
                opts.tasks,
                gave_up.clone(),
            )
            .await;
            notes.push(format!("limiter at the end: {:?}", dub.rate_limiter()));
            ("a: one client, limit known", end)
        }
        'b' => {
            let clients: Vec<Dub> = (0..opts.clients)
                .map(|_| client(&mock, RateLimit::adaptive()))
                .collect();
            let runs: Vec<_> = clients
                .iter()
                .enumerate()
                .map(|(c, dub)| {
                    // Client c delivers every clients-th event: an equal share.
                    let share: Vec<usize> = (c..opts.events).step_by(opts.clients).collect();
                    tokio::spawn(deliver(dub.clone(), share, opts.tasks, gave_up.clone()))
                })
                .collect();
            let mut ends = vec![];
            for run in runs {
                ends.push(run.await.expect("client run"));
            }
            let done: Vec<String> = ends
                .iter()
                .map(|e| format!("{:.1}", (*e - start).as_secs_f64()))
                .collect();
            notes.push(format!("clients done at (s): {}", done.join(", ")));
            for (c, dub) in clients.iter().enumerate() {
                let s = dub.rate_limiter().expect("limiter");
                notes.push(format!(
                    "client {c}: 429s {}, limit {:?} (learned {}), pace at the end {:.1}/s",
                    s.throttled,
                    s.limit_per_minute,
                    s.limit_learned,
                    s.pace.unwrap_or(f64::NAN)
                ));
            }
            (
                "b: independent clients, limit not known",
                *ends.iter().max().expect("a client"),
            )
        }
        'c' => {
            let dub = client(&mock, RateLimit::per_minute(per_minute));
            let tracker = dub
                .tracker()
                .capacity(opts.events.max(10_000))
                .start()
                .expect("tracker");
            let mut receipts = Vec::with_capacity(opts.events);
            for i in 0..opts.events {
                receipts.push(tracker.lead(lead(i)).await.expect("hand-over"));
            }
            notes.push(format!(
                "all handed over in {:.0} ms",
                start.elapsed().as_secs_f64() * 1000.0
            ));
            let outcomes = join_all(receipts.into_iter().map(IntoFuture::into_future)).await;
            let end = Instant::now();
            let delivered = outcomes.iter().filter(|o| o.is_delivered()).count();
            let report = tracker.shutdown(Duration::from_secs(5)).await;
            notes.push(format!(
                "outcomes: {delivered} delivered of {}; tracker stats {:?}",
                outcomes.len(),
                report.stats
            ));
            ("c: background tracker, limit known", end)
        }
        other => panic!("no scenario {other:?}; scenarios are a, b, c"),
    };
    let elapsed = (end - start).as_secs_f64();
    let requests = mock.requests();
    let refused = mock.rate_limited_count();
    // Accepted and refused requests per 10 s of the run: how the window was used.
    let buckets = (elapsed / 10.0).ceil() as usize + 1;
    let mut timeline = vec![(0usize, 0usize); buckets];
    for r in &requests {
        let b = ((r.at.saturating_duration_since(start)).as_secs() / 10) as usize;
        let slot = &mut timeline[b.min(buckets - 1)];
        if r.status == Some(429) {
            slot.1 += 1;
        } else {
            slot.0 += 1;
        }
    }
    let timeline: Vec<String> = timeline
        .iter()
        .enumerate()
        .filter(|(_, (ok, no))| ok + no > 0)
        .map(|(i, (ok, no))| format!("{}s {ok}/{no}", i * 10))
        .collect();
    notes.push(format!(
        "accepted/refused per 10 s from the start: {}",
        timeline.join(", ")
    ));
    notes.push(format!(
        "load average (1 min) before {load_before}, after {}",
        load_average()
    ));
    Run {
        name,
        position: (start_ms % window::WINDOW_MS) as f64 / 1000.0,
        elapsed,
        window_min: window::window_minimum(start_ms, opts.events as u64, opts.limit),
        requests: requests.len(),
        refused,
        recorded: mock.leads().len(),
        gave_up: gave_up.summary(),
        notes,
    }
}

fn main() {
    let opts = Opts::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "rate_limit: {} distinct leads, limit {}/min, {} tasks per client, {} clients in b; \
         minimum at a steady pace 60 x {} / {} = {:.1} s",
        opts.events,
        opts.limit,
        opts.tasks,
        opts.clients,
        opts.events,
        opts.limit,
        opts.minimum()
    );
    let mut runs = vec![];
    for which in opts.scenarios.chars() {
        let run = runtime.block_on(scenario(&opts, which));
        let min = opts.minimum();
        println!("\n{}", run.name);
        println!(
            "  started {:.3} s into the minute; elapsed {:.1} s = {:.3} x {:.1} s \
             ({:.3} x {:.1} s, the fastest the window allows from this start)",
            run.position,
            run.elapsed,
            run.elapsed / min,
            min,
            run.elapsed / run.window_min,
            run.window_min
        );
        println!(
            "  requests {}, refused (429) {} = {:.1} %, requests per event {:.3}, \
             leads recorded {} of {}, calls given up {}",
            run.requests,
            run.refused,
            100.0 * run.refused as f64 / run.requests as f64,
            run.requests as f64 / opts.events as f64,
            run.recorded,
            opts.events,
            run.gave_up
        );
        for note in &run.notes {
            println!("  {note}");
        }
        runs.push(run);
    }
    println!(
        "\n| scenario | start (s into minute) | elapsed (s) | / {:.0} s | / window min | \
         requests | 429 | refused | requests/event | given up |",
        opts.minimum()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {:.2} | {:.1} | {:.3} | {:.3} ({:.1} s) | {} | {} | {:.1} % | {:.3} | {} |",
            r.name,
            r.position,
            r.elapsed,
            r.elapsed / opts.minimum(),
            r.elapsed / r.window_min,
            r.window_min,
            r.requests,
            r.refused,
            100.0 * r.refused as f64 / r.requests as f64,
            r.requests as f64 / opts.events as f64,
            r.gave_up
        );
    }
}
