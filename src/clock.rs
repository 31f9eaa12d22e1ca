//! Wall-clock time read through tokio's clock.
//!
//! Dub speaks in absolute times (`Retry-After` and `X-RateLimit-Reset` are Unix milliseconds, and
//! its rate-limit windows are aligned to the epoch), but everything that waits in this crate waits
//! on tokio's clock. Reading "now" as one process-wide anchor plus tokio's elapsed time keeps the
//! two in step: in production tokio's clock is the monotonic clock, so this is the wall clock as it
//! was at the anchor plus real elapsed time; in a test on tokio's paused clock, the client and
//! `MockDub` on that runtime both see the same virtual epoch, so an epoch-millisecond `Retry-After`
//! means the same wait to both of them.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wall clock and the monotonic clock read together, once per process.
fn anchor() -> &'static (SystemTime, std::time::Instant) {
    static ANCHOR: OnceLock<(SystemTime, std::time::Instant)> = OnceLock::new();
    ANCHOR.get_or_init(|| (SystemTime::now(), std::time::Instant::now()))
}

/// Now, as wall-clock time, advanced by tokio's clock.
pub(crate) fn now() -> SystemTime {
    let (wall, mono) = anchor();
    let elapsed = tokio::time::Instant::now()
        .into_std()
        .saturating_duration_since(*mono);
    wall.checked_add(elapsed).unwrap_or(*wall)
}

/// Now, in milliseconds since the Unix epoch (0 before 1970, saturating far in the future).
#[allow(dead_code)]
pub(crate) fn now_ms() -> u64 {
    to_ms(now())
}

/// A wall-clock time in Unix milliseconds, saturating at both ends.
pub(crate) fn to_ms(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokios_paused_clock() {
        let before = now_ms();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let after = now_ms();
        // An hour of virtual time passed in no real time at all.
        assert!((3_600_000..3_600_500).contains(&(after - before)), "{}", after - before);
    }

    #[test]
    fn saturates() {
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert!(to_ms(SystemTime::now()) > 1_700_000_000_000);
    }
}
