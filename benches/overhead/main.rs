//! How much the SDK adds to a raw HTTP call: `dub.track().lead(..)` / `.sale(..)` against the
//! same POST made with bare reqwest and serde_json, in one run, against one local server.
//!
//! ```text
//! cargo bench --bench overhead                                  # all figures, ~2 minutes
//! cargo bench --bench overhead -- --quick                       # a tenth of the calls
//! cargo bench --bench overhead -- --svg benches/overhead.svg    # and write the chart
//! ```
//!
//! The server is this binary re-executed in `server` mode (hyper, HTTP/1.1, keep-alive) in its
//! own process, so it is the same for both sides. The timed runs alternate between the SDK and
//! the floor in blocks (ABBA order), so drift from other load on the machine hits both alike;
//! read the ratios rather than the absolute figures. Peak memory is measured in fresh
//! processes (`rss` mode), one per side and setting, and read from `VmHWM`.
//!
//! It prints figures and never asserts on them; see BENCHMARKS.md for the method.

mod svg;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dub::models::{
    PaymentProcessor, TrackLeadRequest, TrackLeadResponse, TrackSaleRequest, TrackSaleResponse,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Request, Response, StatusCode};

// Dub's 200 bodies, as the behaviour tests serve them.
#[path = "../../tests/it/support/bodies.rs"]
mod support;

const TOKEN: &str = "dub_bench_0123456789";
const SDK_USER_AGENT: &str = concat!("dub-rust/", env!("CARGO_PKG_VERSION"));

fn main() {
    // `cargo bench` passes `--bench`; nothing else here takes it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("server") => server(),
        Some("rss") => rss_child(&Opts::parse(&args[1..])),
        _ => orchestrate(&Opts::parse(&args)),
    }
}

/// Command-line settings (all optional).
#[derive(Debug, Clone)]
struct Opts {
    seq_calls: usize,
    conc_calls: usize,
    inflight: usize,
    rounds: usize,
    rss_calls: usize,
    rss_inflight: Vec<usize>,
    rss_reps: usize,
    svg: Option<String>,
    /// Run the calls on tokio's current-thread runtime (steadier instruction counts under
    /// callgrind) instead of the multi-threaded one.
    current_thread: bool,
    // `rss` mode only.
    side: Option<Side>,
    url: Option<String>,
    /// `rss` mode only: which operations the calls make (both, alternating, by default).
    ops: fn(usize) -> Op,
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut o = Opts {
            seq_calls: 20_000,
            conc_calls: 50_000,
            inflight: 64,
            rounds: 10,
            rss_calls: 50_000,
            rss_inflight: vec![64, 256],
            rss_reps: 3,
            svg: None,
            current_thread: false,
            side: None,
            url: None,
            ops: alternate,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().unwrap_or_else(|| usage(flag));
            let number = |v: String| v.parse::<usize>().unwrap_or_else(|_| usage(flag));
            match flag.as_str() {
                "--quick" => {
                    o.seq_calls /= 10;
                    o.conc_calls /= 10;
                    o.rss_calls /= 10;
                    o.rss_reps = 1;
                }
                "--seq-calls" => o.seq_calls = number(value()),
                "--conc-calls" => o.conc_calls = number(value()),
                "--inflight" => o.inflight = number(value()),
                "--rounds" => o.rounds = number(value()).max(1),
                "--rss-calls" => o.rss_calls = number(value()),
                "--rss-reps" => o.rss_reps = number(value()),
                "--rss-inflight" => {
                    o.rss_inflight = value()
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| number(s.to_owned()))
                        .collect()
                }
                "--svg" => o.svg = Some(value()),
                "--current-thread" => o.current_thread = true,
                "--side" => {
                    o.side = Some(match value().as_str() {
                        "sdk" => Side::Sdk,
                        "floor" => Side::Floor,
                        "none" => Side::None,
                        _ => usage(flag),
                    })
                }
                "--url" => o.url = Some(value()),
                "--ops" => {
                    o.ops = match value().as_str() {
                        "both" => alternate,
                        "lead" => |_| Op::Lead,
                        "sale" => |_| Op::Sale,
                        _ => usage(flag),
                    }
                }
                _ => usage(flag),
            }
        }
        o
    }
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "bad argument {flag:?}\n\
         usage: overhead [--quick] [--seq-calls N] [--conc-calls N] [--inflight N] [--rounds N]\n\
         \x20               [--rss-calls N] [--rss-inflight N,N] [--rss-reps N] [--svg PATH]\n\
         \x20               [--current-thread]\n\
         \x20       overhead rss --side sdk|floor|none --url URL [--ops both|lead|sale] ..."
    );
    std::process::exit(2)
}

// ---------------------------------------------------------------------------------------------
// The two sides.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    /// `dub.track().lead(..)` / `.sale(..)`.
    Sdk,
    /// The same POST with bare reqwest and serde_json.
    Floor,
    /// Nothing: the process's own footprint (runtime and binary), for the memory table.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lead,
    Sale,
}

/// The request both sides send (the floor serializes the very same struct).
fn lead_request() -> TrackLeadRequest {
    TrackLeadRequest::builder()
        .click_id("clk_123")
        .event_name("Sign up")
        .customer_external_id("user_42")
        .customer_name("Ada")
        .customer_email("ada@example.com")
        .build()
}

fn sale_request() -> TrackSaleRequest {
    TrackSaleRequest::builder()
        .customer_external_id("user_42")
        .amount(996_500)
        .payment_processor(PaymentProcessor::Paddle)
        .invoice_id("in_1")
        .currency("usd")
        .build()
}

/// The SDK as an application would use it, with default settings (retries on).
fn sdk_client(url: &str) -> dub::Dub {
    dub::Dub::builder()
        .token(TOKEN)
        .server_url(url)
        .build()
        .expect("SDK client")
}

/// What a hand-written integration would hold: one shared reqwest client (configured as the
/// SDK configures its own), the two URLs and the header values.
struct Floor {
    http: reqwest::Client,
    lead_url: String,
    sale_url: String,
    auth: HeaderValue,
    user_agent: HeaderValue,
}

impl Floor {
    fn new(url: &str) -> Floor {
        Floor {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("reqwest client"),
            lead_url: format!("{url}/track/lead"),
            sale_url: format!("{url}/track/sale"),
            auth: HeaderValue::try_from(format!("Bearer {TOKEN}")).expect("token"),
            user_agent: HeaderValue::from_static(SDK_USER_AGENT),
        }
    }

    /// The same request as the SDK's (JSON body, Authorization, User-Agent, Accept,
    /// api-version), its status checked and its body decoded into the same struct.
    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<T, String> {
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(USER_AGENT, self.user_agent.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header("api-version", HeaderValue::from_static("0.0.1"))
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("HTTP {status}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

/// One side's client, ready to call.
enum Caller {
    Sdk(dub::Dub),
    Floor(Floor),
}

impl Caller {
    fn new(side: Side, url: &str) -> Caller {
        match side {
            Side::Sdk => Caller::Sdk(sdk_client(url)),
            Side::Floor => Caller::Floor(Floor::new(url)),
            Side::None => unreachable!("nothing calls for side none"),
        }
    }

    /// One call; any failure makes the figures meaningless, so it is fatal.
    async fn call(&self, op: Op) {
        let outcome = match (self, op) {
            (Caller::Sdk(dub), Op::Lead) => dub
                .track()
                .lead(lead_request())
                .await
                .map(|r| drop(std::hint::black_box(r)))
                .map_err(|e| e.to_string()),
            (Caller::Sdk(dub), Op::Sale) => dub
                .track()
                .sale(sale_request())
                .await
                .map(|r| drop(std::hint::black_box(r)))
                .map_err(|e| e.to_string()),
            (Caller::Floor(f), Op::Lead) => f
                .post::<_, TrackLeadResponse>(&f.lead_url, &lead_request())
                .await
                .map(|r| drop(std::hint::black_box(r))),
            (Caller::Floor(f), Op::Sale) => f
                .post::<_, TrackSaleResponse>(&f.sale_url, &sale_request())
                .await
                .map(|r| drop(std::hint::black_box(r))),
        };
        if let Err(e) = outcome {
            eprintln!("a benchmark call failed: {e}");
            std::process::exit(1);
        }
    }
}

/// What one block of calls measured.
#[derive(Default)]
struct Sample {
    calls: usize,
    wall: Duration,
    cpu: Duration,
    latencies_ns: Vec<u64>,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.calls += other.calls;
        self.wall += other.wall;
        self.cpu += other.cpu;
        self.latencies_ns.extend(other.latencies_ns);
    }
    fn calls_per_s(&self) -> f64 {
        self.calls as f64 / self.wall.as_secs_f64()
    }
    fn cpu_us_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.calls as f64
    }
    /// The `q` quantile of the latencies in microseconds (latencies must be sorted).
    fn quantile_us(&self, q: f64) -> f64 {
        let n = self.latencies_ns.len();
        let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        self.latencies_ns[i] as f64 / 1e3
    }
}

/// Makes `calls` calls with `inflight` of them in flight at once; `ops` picks each call's
/// operation from its index.
async fn run_calls(
    caller: Arc<Caller>,
    ops: fn(usize) -> Op,
    calls: usize,
    inflight: usize,
    record: bool,
) -> Sample {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = process_cpu();
    let started = Instant::now();
    let workers: Vec<_> = (0..inflight.max(1))
        .map(|_| {
            let (caller, next) = (caller.clone(), next.clone());
            let capacity = if record {
                calls / inflight.max(1) + 1
            } else {
                0
            };
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(capacity);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return latencies;
                    }
                    let t = Instant::now();
                    caller.call(ops(i)).await;
                    if record {
                        latencies.push(t.elapsed().as_nanos() as u64);
                    }
                }
            })
        })
        .collect();
    let mut latencies_ns = Vec::with_capacity(if record { calls } else { 0 });
    for w in workers {
        latencies_ns.extend(w.await.expect("worker"));
    }
    Sample {
        calls,
        wall: started.elapsed(),
        cpu: process_cpu().saturating_sub(cpu_before),
        latencies_ns,
    }
}

/// User plus system CPU time of this process so far (all threads).
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Peak resident set size of this process, in kB (`VmHWM`).
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The runtime both sides run on: tokio's default multi-threaded runtime unless asked.
fn runtime(current_thread: bool) -> tokio::runtime::Runtime {
    let mut builder = if current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build().expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// `server` mode: Dub's 200 bodies on 127.0.0.1, until stdin closes.

fn server() {
    let lead = Bytes::from(support::lead_body().to_string());
    let sale = Bytes::from(support::sale_body().to_string());
    let auth = HeaderValue::try_from(format!("Bearer {TOKEN}")).expect("token");
    // The parent holds our stdin; when it exits (or closes it) we go too.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    runtime(false).block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("address"));
        std::io::stdout().flush().expect("stdout");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (lead, sale, auth) = (lead.clone(), sale.clone(), auth.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    answer(req, lead.clone(), sale.clone(), auth.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Dub's 200 body for the path, after checking that the request is what the SDK sends (so
/// the floor cannot get away with less).
async fn answer(
    req: Request<Incoming>,
    lead: Bytes,
    sale: Bytes,
    auth: HeaderValue,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let h = &parts.headers;
    let json = HeaderValue::from_static("application/json");
    let complete = parts.method == hyper::Method::POST
        && h.get(AUTHORIZATION) == Some(&auth)
        && h.get(CONTENT_TYPE) == Some(&json)
        && h.get(ACCEPT) == Some(&json)
        && h.get("api-version").is_some_and(|v| v == "0.0.1")
        && h.get(USER_AGENT).is_some_and(|v| v == SDK_USER_AGENT)
        && body.first() == Some(&b'{');
    let (status, body) = match parts.uri.path() {
        _ if !complete => (StatusCode::BAD_REQUEST, Bytes::from_static(b"{}")),
        "/track/lead" => (StatusCode::OK, lead),
        "/track/sale" => (StatusCode::OK, sale),
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, json);
    Ok(response)
}

/// The server process, stopped when dropped.
struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    url: String,
}

impl ServerProcess {
    fn start() -> ServerProcess {
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .arg("server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server address");
        ServerProcess {
            stdin: child.stdin.take(),
            url: format!("http://{}", line.trim()),
            child,
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// `rss` mode: one side alone in a fresh process; prints its peak RSS.

fn rss_child(o: &Opts) {
    let side = o.side.unwrap_or_else(|| usage("--side"));
    let url = o.url.clone().unwrap_or_else(|| usage("--url"));
    let rt = runtime(o.current_thread);
    let mut rate = 0.0;
    if side != Side::None {
        let caller = Arc::new(Caller::new(side, &url));
        let sample = rt.block_on(run_calls(caller, o.ops, o.rss_calls, o.inflight, false));
        rate = sample.calls_per_s();
    }
    println!("{} {rate:.0}", peak_rss_kb());
}

fn alternate(i: usize) -> Op {
    if i.is_multiple_of(2) {
        Op::Lead
    } else {
        Op::Sale
    }
}

/// Peak RSS (kB) and calls/s of one side in its own process.
fn measure_rss(o: &Opts, side: Side, url: &str, calls: usize, inflight: usize) -> (u64, f64) {
    let name = match side {
        Side::Sdk => "sdk",
        Side::Floor => "floor",
        Side::None => "none",
    };
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args(["rss", "--side", name, "--url", url])
        .args(["--rss-calls", &calls.to_string()])
        .args(["--inflight", &inflight.to_string()])
        .args(o.current_thread.then_some("--current-thread"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run the rss process");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    match (
        out.status.success(),
        fields.next().and_then(|f| f.parse().ok()),
        fields.next().and_then(|f| f.parse().ok()),
    ) {
        (true, Some(kb), Some(rate)) => (kb, rate),
        _ => {
            eprintln!("the rss process failed: {} {text}", out.status);
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The default mode: everything, printed as Markdown.

struct Scenario {
    name: String,
    op: Op,
    inflight: usize,
    sdk: Sample,
    floor: Sample,
}

struct RssRow {
    inflight: usize,
    calls: usize,
    sdk_kb: u64,
    floor_kb: u64,
    sdk_rate: f64,
    floor_rate: f64,
}

fn orchestrate(o: &Opts) {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with `cargo bench` or `--release`");
    }
    let server = ServerProcess::start();
    let url = server.url.clone();
    println!("{}", machine());
    let flavour = if o.current_thread {
        "current-thread".to_owned()
    } else {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!("multi-thread, {workers} workers")
    };
    println!(
        "server: {url} (a separate process, hyper HTTP/1.1 keep-alive); client runtime: tokio \
         {flavour}; {} alternating blocks per side (ABBA)\n",
        o.rounds
    );

    let rt = runtime(o.current_thread);
    let sdk = Arc::new(Caller::new(Side::Sdk, &url));
    let floor = Arc::new(Caller::new(Side::Floor, &url));
    let mut scenarios = Vec::new();
    for (mode, calls, inflight) in [
        ("sequential", o.seq_calls, 1),
        ("concurrent", o.conc_calls, o.inflight),
    ] {
        for op in [Op::Lead, Op::Sale] {
            let ops: fn(usize) -> Op = match op {
                Op::Lead => |_| Op::Lead,
                Op::Sale => |_| Op::Sale,
            };
            // Warm up both: open the connections, fault in the code and the allocator.
            for c in [&sdk, &floor] {
                rt.block_on(run_calls(c.clone(), ops, 2_000.min(calls), inflight, false));
            }
            let mut s = Scenario {
                name: format!(
                    "{} {mode} ({inflight} in flight)",
                    if op == Op::Lead { "lead" } else { "sale" }
                ),
                op,
                inflight,
                sdk: Sample::default(),
                floor: Sample::default(),
            };
            for round in 0..o.rounds {
                let share = calls / o.rounds + usize::from(round < calls % o.rounds);
                // ABBA: SDK first in even rounds, floor first in odd ones.
                let order = if round.is_multiple_of(2) {
                    [Side::Sdk, Side::Floor]
                } else {
                    [Side::Floor, Side::Sdk]
                };
                for side in order {
                    let (caller, into) = match side {
                        Side::Sdk => (&sdk, &mut s.sdk),
                        _ => (&floor, &mut s.floor),
                    };
                    into.add(rt.block_on(run_calls(caller.clone(), ops, share, inflight, true)));
                }
            }
            s.sdk.latencies_ns.sort_unstable();
            s.floor.latencies_ns.sort_unstable();
            eprintln!(
                "done: {} (SDK {:.0}/s, floor {:.0}/s)",
                s.name,
                s.sdk.calls_per_s(),
                s.floor.calls_per_s()
            );
            scenarios.push(s);
        }
    }
    drop((sdk, floor));
    drop(rt);

    let baseline_kb = if o.rss_inflight.is_empty() {
        0
    } else {
        measure_rss(o, Side::None, &url, 0, 1).0
    };
    let mut rss = Vec::new();
    for &inflight in &o.rss_inflight {
        let (mut sdk, mut floor) = (Vec::new(), Vec::new());
        for rep in 0..o.rss_reps {
            let order = if rep.is_multiple_of(2) {
                [Side::Sdk, Side::Floor]
            } else {
                [Side::Floor, Side::Sdk]
            };
            for side in order {
                let m = measure_rss(o, side, &url, o.rss_calls, inflight);
                if side == Side::Sdk {
                    &mut sdk
                } else {
                    &mut floor
                }
                .push(m);
            }
        }
        let row = RssRow {
            inflight,
            calls: o.rss_calls,
            sdk_kb: median(sdk.iter().map(|m| m.0 as f64).collect()) as u64,
            floor_kb: median(floor.iter().map(|m| m.0 as f64).collect()) as u64,
            sdk_rate: median(sdk.iter().map(|m| m.1).collect()),
            floor_rate: median(floor.iter().map(|m| m.1).collect()),
        };
        eprintln!(
            "done: peak RSS at {inflight} in flight (SDK {} kB, floor {} kB)",
            row.sdk_kb, row.floor_kb
        );
        rss.push(row);
    }
    drop(server);

    print!("{}", speed_table(&scenarios));
    if !rss.is_empty() {
        println!();
        print!("{}", rss_table(&rss, o.rss_reps, baseline_kb));
    }
    if let Some(path) = &o.svg {
        let chart = chart(&scenarios, &rss);
        std::fs::write(path, chart).unwrap_or_else(|e| {
            eprintln!("writing {path}: {e}");
            std::process::exit(1)
        });
        eprintln!("wrote {path}");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// CPU model, core count, compiler and profile, for the record.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "rustc unknown".into());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release (opt-level 3, no LTO)"
    };
    format!(
        "machine: {cpu}, {} CPUs; {rustc}; profile {profile}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn speed_table(scenarios: &[Scenario]) -> String {
    let mut t = String::from(
        "| scenario | side | calls | calls/s | p50 µs | p99 µs | client CPU µs/call |\n\
         |---|---|--:|--:|--:|--:|--:|\n",
    );
    for s in scenarios {
        for (side, m) in [("SDK", &s.sdk), ("floor", &s.floor)] {
            t += &format!(
                "| {} | {side} | {} | {:.0} | {:.1} | {:.1} | {:.1} |\n",
                if side == "SDK" { s.name.as_str() } else { "" },
                thousands(m.calls),
                m.calls_per_s(),
                m.quantile_us(0.5),
                m.quantile_us(0.99),
                m.cpu_us_per_call(),
            );
        }
        t += &format!(
            "| | **SDK / floor** | | **{:.3}** | **{:.3}** | **{:.3}** | **{:.3}** |\n",
            // Time per call, so that above 1 means the SDK is slower, as for latency.
            s.floor.calls_per_s() / s.sdk.calls_per_s(),
            s.sdk.quantile_us(0.5) / s.floor.quantile_us(0.5),
            s.sdk.quantile_us(0.99) / s.floor.quantile_us(0.99),
            s.sdk.cpu_us_per_call() / s.floor.cpu_us_per_call(),
        );
    }
    t + "\nThe calls/s ratio is time per call (floor calls/s ÷ SDK calls/s): above 1 means the \
         SDK is slower.\n"
}

fn rss_table(rows: &[RssRow], reps: usize, baseline_kb: u64) -> String {
    let mb = |kb: u64| kb as f64 / 1024.0;
    let mut t = String::from(
        "| in flight | calls | SDK peak RSS MB | floor peak RSS MB | SDK / floor | \
         SDK calls/s | floor calls/s |\n|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        t += &format!(
            "| {} | {} | {:.1} | {:.1} | **{:.3}** | {:.0} | {:.0} |\n",
            r.inflight,
            thousands(r.calls),
            mb(r.sdk_kb),
            mb(r.floor_kb),
            r.sdk_kb as f64 / r.floor_kb as f64,
            r.sdk_rate,
            r.floor_rate,
        );
    }
    t + &format!(
        "\nMedian of {reps} processes per cell (VmHWM, lead and sale alternating). The same \
         process making no call peaks at {:.1} MB.\n",
        mb(baseline_kb)
    )
}

fn chart(scenarios: &[Scenario], rss: &[RssRow]) -> String {
    let short = |s: &Scenario| {
        format!(
            "{} {}",
            if s.op == Op::Lead { "lead" } else { "sale" },
            if s.inflight == 1 {
                "seq".to_owned()
            } else {
                format!("×{}", s.inflight)
            }
        )
    };
    let mut panels = vec![
        svg::Panel {
            title: "Throughput (calls/s, higher is better; ratio of time per call)".into(),
            groups: scenarios
                .iter()
                .map(|s| (short(s), s.sdk.calls_per_s(), s.floor.calls_per_s()))
                .collect(),
            decimals: 0,
            rate: true,
        },
        svg::Panel {
            title: "Median latency (µs, lower is better)".into(),
            groups: scenarios
                .iter()
                .map(|s| (short(s), s.sdk.quantile_us(0.5), s.floor.quantile_us(0.5)))
                .collect(),
            decimals: 1,
            rate: false,
        },
    ];
    if !rss.is_empty() {
        panels.push(svg::Panel {
            title: "Peak RSS (MB, lower is better)".into(),
            groups: rss
                .iter()
                .map(|r| {
                    (
                        format!("×{}", r.inflight),
                        r.sdk_kb as f64 / 1024.0,
                        r.floor_kb as f64 / 1024.0,
                    )
                })
                .collect(),
            decimals: 1,
            rate: false,
        });
    }
    svg::render("dub SDK vs bare reqwest + serde_json", &panels)
}
