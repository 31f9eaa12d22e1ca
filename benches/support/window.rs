//! Dub's rate-limit window as the benchmarks reckon with it (shared by `benches/rate_limit.rs`
//! and `cli/benches/outbox.rs`, included by `#[path]`): two epoch-aligned one-minute windows,
//! the previous one weighted by the part of it still inside the last minute.

use std::time::Duration;

/// One window, in milliseconds.
pub const WINDOW_MS: u64 = 60_000;

/// Sleeps until `offset_ms` past the next epoch-aligned minute at least 2 s away: where a run
/// starts in Dub's window decides what an unpaced burst gets, so runs start at the same place.
pub async fn align(now_ms: u64, offset_ms: u64) {
    let mut at = now_ms / WINDOW_MS * WINDOW_MS + offset_ms;
    if at < now_ms + 2_000 {
        at += WINDOW_MS;
    }
    tokio::time::sleep(Duration::from_millis(at - now_ms)).await;
}

/// The fastest `events` requests can all be accepted by Dub's sliding window on a key unused
/// for two minutes, from `start_ms` (each sent the moment the window admits it). Seconds.
pub fn window_minimum(start_ms: u64, events: u64, limit: u64) -> f64 {
    let (mut index, mut previous, mut current, mut sent) = (start_ms / WINDOW_MS, 0u64, 0u64, 0);
    let mut t = start_ms;
    loop {
        let i = t / WINDOW_MS;
        if i != index {
            previous = if i == index + 1 { current } else { 0 };
            current = 0;
            index = i;
        }
        let weighted = previous * (WINDOW_MS - t % WINDOW_MS) / WINDOW_MS;
        let used = weighted + current;
        if used < limit {
            let n = (limit - used).min(events - sent);
            current += n;
            sent += n;
            if sent == events {
                return (t - start_ms) as f64 / 1000.0;
            }
        }
        t += 1;
    }
}
