//! What Dub's response headers say about waiting, read in one place: `Retry-After` in every form
//! (for the retry loop and for errors) and the `X-RateLimit-*` headers (for the limiter).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

use super::controller::Answer;

/// Reads how long the server asked to wait: `retry-after-ms`, else `Retry-After` as seconds,
/// an HTTP date, or (what Dub actually sends) a Unix timestamp in milliseconds. Garbage,
/// negative values and moments in the past yield `None`; any magnitude saturates instead of
/// overflowing (`Duration::MAX` at most).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = text(headers, "retry-after-ms").and_then(|t| t.parse::<f64>().ok())
        && ms >= 0.0
    {
        // NaN fails the comparison above; infinity and 1e22 saturate.
        return Some(Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX));
    }
    let value = text(headers, "retry-after")?;
    if let Ok(n) = value.parse::<u64>() {
        // Seconds are small; Dub's millisecond timestamps are past 2001 (10^12 ms).
        if n < 1_000_000_000_000 {
            return Some(Duration::from_secs(n));
        }
        let at = UNIX_EPOCH.checked_add(Duration::from_millis(n))?;
        return at.duration_since(now).ok();
    }
    if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        // More digits than a u64 holds: a moment so far ahead it is "never".
        return Some(Duration::MAX);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok()
}

/// What a response with `status` and `headers` tells the limiter, at wall-clock time `now`.
/// Only a 429's headers are read: Dub names its limit and window only when refusing.
pub(crate) fn answer(status: u16, headers: &HeaderMap, now: SystemTime) -> Answer {
    if status != 429 {
        return Answer::Accepted;
    }
    Answer::Refused {
        limit: limit(headers),
        reset_in: reset_in(headers, now),
    }
}

/// The key's limit a minute that `X-RateLimit-Limit` names; `None` when absent or `0` (Dub's
/// "unknown", sent when its limiter is slow).
pub(crate) fn limit(headers: &HeaderMap) -> Option<u64> {
    number(headers, "x-ratelimit-limit").filter(|&l| l > 0)
}

/// How far away the window boundary Dub named is: `Retry-After` in any form, else
/// `X-RateLimit-Reset` in epoch milliseconds (`0` means unknown).
fn reset_in(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(wait) = retry_after(headers, now) {
        return Some(wait);
    }
    let ms = number(headers, "x-ratelimit-reset").filter(|&ms| ms > 0)?;
    let at = UNIX_EPOCH.checked_add(Duration::from_millis(ms))?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    text(headers, name)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + NOW;
        let at = |n, v| retry_after(&headers(&[(n, v)]), now);
        assert_eq!(
            at("retry-after-ms", "1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(at("retry-after", "7"), Some(Duration::from_secs(7)));
        assert_eq!(
            at("retry-after", "1800000003000"),
            Some(Duration::from_secs(3))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(9));
        assert_eq!(at("retry-after", &date), Some(Duration::from_secs(9)));
        for garbage in ["-3", "soon", "", "1e9999", "1799999999000"] {
            assert_eq!(at("retry-after", garbage), None, "{garbage:?}");
        }
        assert_eq!(at("retry-after-ms", "-5"), None);
        assert_eq!(at("retry-after-ms", "NaN"), None);
    }

    #[test]
    fn retry_after_of_any_magnitude_saturates() {
        let now = UNIX_EPOCH + NOW;
        let at = |n, v| retry_after(&headers(&[(n, v)]), now);
        assert_eq!(
            at("retry-after-ms", "1e22"),
            Some(Duration::from_secs(10_000_000_000_000_000_000))
        );
        for huge in ["1e23", "inf", "1e308"] {
            assert_eq!(at("retry-after-ms", huge), Some(Duration::MAX), "{huge}");
        }
        assert_eq!(
            at("retry-after", "99999999999999999999999999"),
            Some(Duration::MAX)
        );
        assert!(at("retry-after", "18446744073709551615").is_some());
    }

    type Headers<'a> = &'a [(&'static str, &'a str)];

    fn refused(limit: Option<u64>, reset_in: Option<Duration>) -> Answer {
        Answer::Refused { limit, reset_in }
    }

    /// Each row: status, headers, what the limiter learns.
    #[test]
    fn answers_for_the_limiter() {
        let now = UNIX_EPOCH + NOW;
        let s = Duration::from_secs;
        let rows: [(u16, Headers, Answer); 9] = [
            // Only a refusal is read, whatever a success carries.
            (200, &[("x-ratelimit-limit", "60")], Answer::Accepted),
            (500, &[("retry-after", "3")], Answer::Accepted),
            (429, &[], refused(None, None)),
            // `0` means "unknown", as Dub sends it.
            (
                429,
                &[("x-ratelimit-limit", "0"), ("x-ratelimit-reset", "0")],
                refused(None, None),
            ),
            (
                429,
                &[("x-ratelimit-limit", " 3000 ")],
                refused(Some(3000), None),
            ),
            (429, &[("x-ratelimit-limit", "lots")], refused(None, None)),
            // The reset in epoch milliseconds; one in the past is now.
            (
                429,
                &[("x-ratelimit-reset", "1800000004000")],
                refused(None, Some(s(4))),
            ),
            (
                429,
                &[("x-ratelimit-reset", "1799999999000")],
                refused(None, Some(Duration::ZERO)),
            ),
            // Retry-After, here Dub's Unix milliseconds, wins over the reset.
            (
                429,
                &[
                    ("retry-after", "1800000002000"),
                    ("x-ratelimit-reset", "1800000004000"),
                    ("x-ratelimit-limit", "1200"),
                ],
                refused(Some(1200), Some(s(2))),
            ),
        ];
        for (status, pairs, expected) in rows {
            assert_eq!(
                answer(status, &headers(pairs), now),
                expected,
                "{status} {pairs:?}"
            );
        }
    }
}
