//! Wall-clock time read through tokio's clock.
//!
//! Dub speaks in absolute times (`Retry-After` and `X-RateLimit-Reset` are Unix milliseconds, and
//! its rate-limit windows are aligned to the epoch), but everything that waits in this crate waits
//! on tokio's clock. "Now" is therefore the wall clock shifted by however far tokio's clock is
//! from the monotonic clock: in production they are the same clock, so this is exactly
//! `SystemTime::now()`; in a test on tokio's paused clock, the wall clock moves with virtual
//! time, so the client and `MockDub` on that runtime see the same virtual epoch, and an
//! epoch-millisecond `Retry-After` means the same wait to both of them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, as wall-clock time, advanced (or held back) with tokio's clock.
pub(crate) fn now() -> SystemTime {
    let wall = SystemTime::now();
    let real = std::time::Instant::now();
    let tokio = tokio::time::Instant::now().into_std();
    if tokio >= real {
        wall.checked_add(tokio - real).unwrap_or(wall)
    } else {
        wall.checked_sub(real - tokio).unwrap_or(wall)
    }
}

/// Now, in milliseconds since the Unix epoch (0 before 1970, saturating far in the future).
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
        assert!(
            (3_600_000..3_600_500).contains(&(after - before)),
            "{}",
            after - before
        );
    }

    #[tokio::test]
    async fn is_the_wall_clock_on_a_running_clock() {
        let ours = to_ms(now());
        let wall = to_ms(SystemTime::now());
        assert!(ours.abs_diff(wall) < 50, "{ours} {wall}");
    }

    #[test]
    fn saturates() {
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert!(to_ms(SystemTime::now()) > 1_700_000_000_000);
    }
}
