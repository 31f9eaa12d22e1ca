//! `dub-track send`'s progress: a bar on a terminal, a line every few seconds otherwise. The
//! rate is rounded to what a reader can use, and the time left is estimated from the pace the
//! rate limiter allows once it knows the key's limit: while the client ramps up (after a 429,
//! the pace grows back over some 20 s) the rate seen so far would promise hours for a run of
//! minutes.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dub::rate_limit::RateLimiterState;
use dub::tracker::Tracker;

/// How often progress lines are printed when standard error is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often the bar is redrawn.
const BAR_EVERY: Duration = Duration::from_millis(200);
/// The span the observed rate is measured over.
const RATE_SPAN: Duration = Duration::from_secs(10);

/// Counts the progress display reads while the run goes on.
#[derive(Default)]
pub struct Counts {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub uncertain: AtomicU64,
}

/// Shows the run's progress until aborted (which clears the bar).
pub async fn show(
    counts: Arc<Counts>,
    total: u64,
    tracker: Tracker,
    dub: dub::Dub,
    stopping: Arc<AtomicBool>,
) {
    if total == 0 {
        return;
    }
    let started = Instant::now();
    let mut rate = Rate::new(started);
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} delivered, {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Arc::new(Mutex::new(bar))
    });
    // Aborting this task drops the guard, which clears the bar.
    let _guard = bar.clone().map(ClearOnDrop);
    loop {
        tokio::time::sleep(if terminal {
            BAR_EVERY
        } else {
            PLAIN_PROGRESS_EVERY
        })
        .await;
        let delivered = counts.delivered.load(Ordering::Relaxed);
        let failed = counts.failed.load(Ordering::Relaxed);
        let uncertain = counts.uncertain.load(Ordering::Relaxed);
        let stats = tracker.stats();
        let limited = stats.rate_limited;
        let done = delivered + failed + uncertain;
        let per_sec = rate.observe(Instant::now(), done);
        let left = total.saturating_sub(done);
        // Deliveries failing and being retried (Dub unreachable, a wrong --base-url): say why,
        // since the counts stand still, and promise no end.
        let retrying = stats
            .last_failure
            .map(|e| format!(", retrying: {e}"))
            .unwrap_or_default();
        let eta = if retrying.is_empty() {
            eta_text(eta(left, per_sec, dub.rate_limiter().as_ref()))
        } else {
            "unknown".to_owned()
        };
        let per_sec = rate_text(per_sec);
        match &bar {
            Some(bar) => {
                let bar = bar.lock().unwrap_or_else(PoisonError::into_inner);
                bar.set_position(delivered);
                let mut msg = format!("{per_sec}, 429s {limited}");
                if failed + uncertain > 0 {
                    msg.push_str(&format!(", failed {failed}, uncertain {uncertain}"));
                }
                if stopping.load(Ordering::Relaxed) {
                    msg.push_str(", stopping");
                }
                msg.push_str(&format!(", ETA {eta}{retrying}"));
                bar.set_message(msg);
            }
            None => eprintln!(
                "dub-track: {delivered}/{total} delivered, {failed} failed, {uncertain} \
                 uncertain, {per_sec}, 429s {limited}, eta {eta}{retrying}"
            ),
        }
    }
}

/// Records done a second over the last [`RATE_SPAN`] (over the whole run until it is that
/// long).
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn new(started: Instant) -> Rate {
        Rate {
            samples: VecDeque::from([(started, 0)]),
        }
    }

    fn observe(&mut self, now: Instant, done: u64) -> f64 {
        self.samples.push_back((now, done));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_SPAN)
        {
            self.samples.pop_front();
        }
        let (since, before) = self.samples[0];
        let secs = now.duration_since(since).as_secs_f64();
        if secs <= 0.0 {
            0.0
        } else {
            done.saturating_sub(before) as f64 / secs
        }
    }
}

/// The time left for `left` records. Once the limiter knows the key's limit (given, or learned
/// from a 429), that is the pace it paces towards: the estimate uses it (or the observed rate
/// if that is higher, as it briefly is after a burst). Without a known limit the observed rate
/// is all there is.
pub fn eta(
    left: u64,
    observed_per_sec: f64,
    limiter: Option<&RateLimiterState>,
) -> Option<Duration> {
    if left == 0 {
        return Some(Duration::ZERO);
    }
    let allowed = limiter
        .filter(|l| l.enabled)
        .and_then(|l| l.limit_per_minute)
        .map(|per_minute| per_minute as f64 / 60.0)
        .filter(|per_sec| *per_sec > 0.0);
    let per_sec = match allowed {
        Some(allowed) => allowed.max(observed_per_sec),
        None => observed_per_sec,
    };
    if !per_sec.is_finite() || per_sec <= 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(left as f64 / per_sec).ok()
}

/// `9.8/s`, `42/s`, `1234/s`: a tenth below 10 a second, whole numbers above.
pub fn rate_text(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "0/s".into()
    } else if per_sec < 9.95 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{per_sec:.0}/s")
    }
}

/// `45s`, `3m05s`, `2h07m`, or `-` when unknown.
pub fn eta_text(eta: Option<Duration>) -> String {
    let Some(eta) = eta else { return "-".into() };
    let secs = eta.as_secs_f64().ceil() as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
    }
}

/// Clears the progress bar when the progress task is aborted.
struct ClearOnDrop(Arc<Mutex<indicatif::ProgressBar>>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_rounded() {
        assert_eq!(rate_text(9.7957), "9.8/s");
        assert_eq!(rate_text(0.04), "0.0/s");
        assert_eq!(rate_text(9.96), "10/s");
        assert_eq!(rate_text(49.49), "49/s");
        assert_eq!(rate_text(1234.5678), "1235/s");
        assert_eq!(rate_text(0.0), "0/s");
        assert_eq!(rate_text(f64::NAN), "0/s");
    }

    #[test]
    fn eta_reads_as_a_duration() {
        assert_eq!(eta_text(None), "-");
        assert_eq!(eta_text(Some(Duration::from_millis(44_200))), "45s");
        assert_eq!(eta_text(Some(Duration::from_secs(185))), "3m05s");
        assert_eq!(
            eta_text(Some(Duration::from_secs(2 * 3600 + 7 * 60 + 5))),
            "2h07m"
        );
    }

    fn limiter(limit_per_minute: Option<u64>, pace: Option<f64>) -> RateLimiterState {
        // A client whose limiter is in that state, read back through the public API.
        let mut builder = dub::Dub::builder().token("dub_test");
        if let Some(limit) = limit_per_minute {
            builder = builder.rate_limit(dub::RateLimit::per_minute(limit as u32));
        }
        let mut state = builder.build().unwrap().rate_limiter().unwrap();
        state.pace = pace;
        state
    }

    #[test]
    fn eta_uses_the_pace_the_limit_allows_while_the_client_ramps_up() {
        // 2,700 left at a known 3,000 a minute: 54 s, although only 0.8/s were seen so far
        // (the run just started, or the pace was cut by a 429 and is growing back).
        let state = limiter(Some(3000), Some(0.8));
        assert_eq!(eta(2700, 0.8, Some(&state)), Some(Duration::from_secs(54)));
        assert_eq!(eta_text(eta(2700, 0.8, Some(&state))), "54s");
        // Before the limit is known only the observed rate says anything.
        let unknown = limiter(None, None);
        assert_eq!(eta(100, 2.0, Some(&unknown)), Some(Duration::from_secs(50)));
        assert_eq!(eta(100, 0.0, Some(&unknown)), None);
        assert_eq!(eta(0, 0.0, None), Some(Duration::ZERO));
    }

    #[test]
    fn the_observed_rate_is_over_the_last_ten_seconds() {
        let start = Instant::now();
        let mut rate = Rate::new(start);
        assert_eq!(rate.observe(start + Duration::from_secs(5), 50), 10.0);
        // Slower lately: 20 in the last 10 s, not 70 in 15 s.
        rate.observe(start + Duration::from_secs(10), 60);
        let per_sec = rate.observe(start + Duration::from_secs(20), 80);
        assert!((per_sec - 2.0).abs() < 1e-9, "{per_sec}");
    }
}
