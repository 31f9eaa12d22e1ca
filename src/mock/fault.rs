//! Fault injection: what can go wrong between a client and Dub, scripted or drawn at random.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Something that goes wrong with one request instead of (or on top of) Dub's normal answer.
///
/// Faults are consumed one per HTTP request, in the order requests arrive, whatever their path.
/// "Recorded" means the lead or sale is stored as if Dub had accepted it (see
/// [`MockDub::leads`](super::MockDub::leads)); the request itself always appears in
/// [`MockDub::requests`](super::MockDub::requests).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status and a Dub-shaped error body; nothing is recorded. The error code
    /// is Dub's for the nine statuses it documents, otherwise derived from the reason phrase
    /// (502 -> `bad_gateway`). A 429 also carries Dub's millisecond-timestamp `Retry-After`.
    Status(u16),
    /// Answer 429 `rate_limit_exceeded` with `Retry-After` in the given form; nothing is
    /// recorded.
    RateLimited(RetryAfter),
    /// Wait, then handle the request normally. The request is processed (and recorded, if valid)
    /// even when the client gives up waiting, as a real server would.
    Delay(Duration),
    /// Read the whole request, then reset the connection (TCP RST) without answering; nothing
    /// is recorded. Retrying after this is always safe.
    ResetBeforeRecord,
    /// Process the request (recording it if valid), then reset the connection without
    /// answering. The client cannot tell this from [`Fault::ResetBeforeRecord`].
    ResetAfterRecord,
    /// Process the request (recording it if valid), then answer with this status and a
    /// Dub-shaped error body: the client sees a failure for an event Dub kept.
    ErrorAfterRecord(u16),
    /// Process the request (recording it if valid), then send its response with a
    /// `Content-Length` larger than the bytes that follow, and close the connection.
    TruncatedBody,
    /// Process the request (recording it if valid), then answer 200 with an HTML body; a
    /// request the mock refuses (invalid, rate-limited) gets its error as usual.
    NonJsonBody,
    /// Answer with this status and an HTML body, as a proxy in front of Dub would (e.g. 502);
    /// nothing is recorded.
    Html(u16),
    /// Answer with exactly this status, headers and body (after its delay); nothing is
    /// recorded. For what Dub never sends but a client must survive: a body that does not
    /// parse, headers at odd values, a status no fault above gives.
    Reply(ExactReply),
}

/// The answer of [`Fault::Reply`]: status, headers and body as given, nothing added but the
/// `content-length` and `date` that hyper writes (a status outside 200..=999 or header text
/// hyper refuses is written to the socket as it is).
///
/// ```
/// use dub::mock::{ExactReply, Fault};
/// use std::time::Duration;
///
/// let page = Fault::Reply(
///     ExactReply::new(502, "<h1>Bad gateway</h1>")
///         .header("content-type", "text/html")
///         .delay(Duration::from_millis(50)),
/// );
/// let lead = Fault::Reply(ExactReply::json(200, &serde_json::json!({"click": {"id": "c"}})));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExactReply {
    /// The status code.
    pub status: u16,
    /// The headers, in order, repeated names allowed.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl ExactReply {
    /// This status and body, no header, no delay.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> ExactReply {
        ExactReply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// This status and JSON body, with `content-type: application/json`.
    pub fn json(status: u16, body: &serde_json::Value) -> ExactReply {
        ExactReply::new(status, body.to_string()).header("content-type", "application/json")
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> ExactReply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Waits this long before answering (the request is read first).
    pub fn delay(mut self, delay: Duration) -> ExactReply {
        self.delay = delay;
        self
    }
}

impl Fault {
    /// One fault of every kind, with `delay` for [`Fault::Delay`]: the default set of
    /// [`RandomFaults`].
    pub fn every_kind(delay: Duration) -> Vec<Fault> {
        vec![
            Fault::Status(503),
            Fault::RateLimited(RetryAfter::Seconds(1)),
            Fault::Delay(delay),
            Fault::ResetBeforeRecord,
            Fault::ResetAfterRecord,
            Fault::ErrorAfterRecord(500),
            Fault::TruncatedBody,
            Fault::NonJsonBody,
            Fault::Html(502),
        ]
    }
}

/// How a 429 says when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`, the standard form.
    Seconds(u64),
    /// `retry-after-ms: <milliseconds>`, the form some SDKs (OpenAI, Anthropic, Speakeasy's)
    /// read before `Retry-After`. No `Retry-After` header is sent.
    Millis(u64),
    /// `Retry-After: <HTTP date>`, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`. Times before 1970 or
    /// after 9999 are clamped to those bounds.
    HttpDate(SystemTime),
    /// `Retry-After: <Unix time in milliseconds>`: what Dub's server actually sends. A client
    /// reading this as seconds would wait for decades.
    UnixMillis(u64),
    /// `Retry-After` with exactly this text, valid or not. Text that cannot go in an HTTP header
    /// (control characters) is still written to the socket as given.
    Raw(String),
}

impl RetryAfter {
    /// `UnixMillis` for a moment `delay` from now: Dub's form with a realistic value.
    pub fn dub_after(delay: Duration) -> RetryAfter {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let at = now.saturating_add(delay).as_millis();
        RetryAfter::UnixMillis(u64::try_from(at).unwrap_or(u64::MAX))
    }

    pub(crate) fn header(&self) -> (&'static str, String) {
        match self {
            RetryAfter::Seconds(s) => ("retry-after", s.to_string()),
            RetryAfter::Millis(ms) => ("retry-after-ms", ms.to_string()),
            RetryAfter::HttpDate(t) => ("retry-after", httpdate::fmt_http_date(clamp_date(*t))),
            RetryAfter::UnixMillis(ms) => ("retry-after", ms.to_string()),
            RetryAfter::Raw(text) => ("retry-after", text.clone()),
        }
    }
}

/// httpdate panics outside 1970..=9999; a test's odd date must not take the server down.
fn clamp_date(t: SystemTime) -> SystemTime {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let latest = UNIX_EPOCH + Duration::from_secs(LAST_SECOND_OF_9999);
    t.clamp(UNIX_EPOCH, latest)
}

/// Random faults: each request independently gets a fault with probability `probability`,
/// chosen uniformly from `kinds`, from a PRNG seeded with `seed`.
///
/// The same seed gives the same sequence of faults for the same sequence of requests, so a
/// failing chaos test can be replayed. Scripted faults ([`MockDub::push_fault`]) are used first
/// and do not advance the random sequence.
///
/// [`MockDub::push_fault`]: super::MockDub::push_fault
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RandomFaults {
    /// Seed of the generator.
    pub seed: u64,
    /// Chance, from 0.0 to 1.0, that a request gets a fault. Values outside are clamped; NaN
    /// counts as 0.
    pub probability: f64,
    /// The faults to draw from; empty means no faults.
    pub kinds: Vec<Fault>,
}

impl RandomFaults {
    /// The delay of [`Fault::Delay`] in the default set: longer than a typical test timeout
    /// of one second, so the delay shows up as a timeout.
    pub const DEFAULT_DELAY: Duration = Duration::from_secs(2);

    /// Every kind of fault ([`Fault::every_kind`] with [`Self::DEFAULT_DELAY`]).
    pub fn new(seed: u64, probability: f64) -> RandomFaults {
        RandomFaults {
            seed,
            probability,
            kinds: Fault::every_kind(Self::DEFAULT_DELAY),
        }
    }

    /// Sets the duration of every [`Fault::Delay`] in `kinds`, e.g. just above the client's
    /// timeout.
    pub fn delay(mut self, delay: Duration) -> RandomFaults {
        for kind in &mut self.kinds {
            if let Fault::Delay(d) = kind {
                *d = delay;
            }
        }
        self
    }

    /// Draws from these faults instead.
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = Fault>) -> RandomFaults {
        self.kinds = kinds.into_iter().collect();
        self
    }
}

/// The faults waiting for the next requests.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    scripted: VecDeque<Fault>,
    random: Option<(RandomFaults, fastrand::Rng)>,
}

impl FaultPlan {
    pub fn push(&mut self, fault: Fault) {
        self.scripted.push_back(fault);
    }

    pub fn set_random(&mut self, config: RandomFaults) {
        let rng = fastrand::Rng::with_seed(config.seed);
        self.random = Some((config, rng));
    }

    pub fn clear(&mut self) {
        *self = FaultPlan::default();
    }

    pub fn next(&mut self) -> Option<Fault> {
        if let Some(fault) = self.scripted.pop_front() {
            return Some(fault);
        }
        let (config, rng) = self.random.as_mut()?;
        // Both draws happen on every request so that one request's outcome never shifts the
        // sequence seen by the next: replaying a seed replays every request.
        let hit = rng.f64() < config.probability;
        let pick = rng.u64(..);
        if !hit || config.kinds.is_empty() {
            return None;
        }
        let len = config.kinds.len() as u64;
        let index = usize::try_from(pick % len).unwrap_or(0);
        config.kinds.get(index).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_faults_come_first_and_in_order() {
        let mut plan = FaultPlan::default();
        plan.set_random(RandomFaults::new(1, 1.0).kinds([Fault::NonJsonBody]));
        plan.push(Fault::Status(500));
        plan.push(Fault::Html(502));
        assert_eq!(plan.next(), Some(Fault::Status(500)));
        assert_eq!(plan.next(), Some(Fault::Html(502)));
        assert_eq!(plan.next(), Some(Fault::NonJsonBody));
    }

    #[test]
    fn probability_bounds() {
        let mut never = FaultPlan::default();
        never.set_random(RandomFaults::new(7, 0.0));
        assert!((0..1000).all(|_| never.next().is_none()));
        let mut nan = FaultPlan::default();
        nan.set_random(RandomFaults::new(7, f64::NAN));
        assert!((0..1000).all(|_| nan.next().is_none()));
        let mut always = FaultPlan::default();
        always.set_random(RandomFaults::new(7, 1.0));
        assert!((0..1000).all(|_| always.next().is_some()));
    }

    #[test]
    fn delay_rewrites_every_delay_kind() {
        let config = RandomFaults::new(0, 0.5).delay(Duration::from_millis(10));
        assert!(
            config
                .kinds
                .contains(&Fault::Delay(Duration::from_millis(10)))
        );
        assert!(
            !config
                .kinds
                .contains(&Fault::Delay(RandomFaults::DEFAULT_DELAY))
        );
    }

    #[test]
    fn http_dates_are_clamped_not_panicking() {
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(
            RetryAfter::HttpDate(before).header().1,
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        let far = UNIX_EPOCH + Duration::from_secs(1_000_000_000_000);
        assert_eq!(
            RetryAfter::HttpDate(far).header().1,
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }
}
