//! Issue 18, defect 6: the memory a tracker keeps when one key is handed over again and again
//! while its event is pending (a payment provider retrying a webhook through an outage).
//! Prints the process's peak RSS before and after 1,000,000 calls; asserts nothing.
//!
//! `cargo bench --bench repeated_key` (Linux: reads VmHWM from /proc/self/status).

use std::time::{Duration, Instant};

use dub::Dub;
use dub::mock::{Fault, MockDub, RandomFaults};
use dub::models::TrackLeadRequest;

const CALLS: usize = 1_000_000;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    let mock = MockDub::start().await.unwrap();
    // Dub is down: every request waits a minute, so the event stays pending.
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([Fault::Delay(Duration::from_secs(60))]));
    let dub = Dub::builder()
        .token(mock.token())
        .server_url(mock.url())
        .build()
        .unwrap();
    let tracker = dub.tracker().start().unwrap();
    let lead = TrackLeadRequest::builder()
        .click_id("clk_1")
        .event_name("Sign up")
        .customer_external_id("user_1")
        .build();
    let before = peak_rss_mb();
    let started = Instant::now();
    for _ in 0..CALLS {
        let receipt = tracker.send_with_key("evt_1", lead.clone()).await.unwrap();
        drop(receipt);
    }
    let took = started.elapsed();
    let after = peak_rss_mb();
    let stats = tracker.stats();
    println!(
        "{CALLS} send_with_key calls of one pending key in {took:.2?}: peak RSS {before:.1} MB before, {after:.1} MB after (+{:.1} MB); tracker holds {} event(s)",
        after - before,
        stats.queued + stats.in_flight
    );
    let _ = tracker.shutdown(Duration::ZERO).await;
}
