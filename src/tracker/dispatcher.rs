//! The tracker's task: claims events whose turn has come, delivers them through the client,
//! and decides what each result means (delivered, failed, uncertain, or again later).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::decision::{self, Ended, Facts, Settings, Verdict};
use super::event::{Event, EventId};
use super::in_flight::Attempt;
use super::outcome::{EventOutcome, Outcome, Response, ShutdownReport};
use super::state::{Core, Stopping};
use super::store::{Claimed, Store, StoreError, Terminal};
use crate::Error;
use crate::retry::{Backoff, Outage};

/// How often a spool is checked for events left in flight by processes that died.
const RECOVER_EVERY: Duration = Duration::from_secs(10);
/// How often receipts waiting on a shared spool's rows are checked for rows another process
/// settled.
const SETTLED_ELSEWHERE_EVERY: Duration = Duration::from_secs(1);
/// How often the counts are traced while there is work.
const TRACE_EVERY: Duration = Duration::from_secs(10);
/// The longest wait between attempts to write to a spool that failed (a full disk): once the
/// disk has room, held outcomes are written and deliveries resume within this.
const MAX_STORE_RETRY: Duration = Duration::from_secs(30);

/// One delivery's result; `None` when the shutdown deadline cut it off.
struct Delivery {
    claimed: Claimed,
    result: Option<Result<Response, Error>>,
    /// Started as a probe of an outage.
    probe: bool,
}

/// Marks the dispatcher gone when its task ends or is dropped (its runtime shut down): the
/// tracker then refuses hand-overs instead of queueing events nobody will deliver.
struct Running(Arc<Core>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
        drop(self.0.stop_taking());
    }
}

/// A write the store could not make (a full disk), held until it can.
enum Unwritten {
    Finish(EventId, Terminal, Vec<u8>),
    Reschedule {
        id: EventId,
        due_ms: u64,
        attempts: u32,
        maybe_sent: bool,
    },
}

/// A store that fails (a full disk, a file that cannot be read): the loop would otherwise retry
/// at once, again and again. One ERROR line when the trouble begins and one INFO line when it
/// ends; no claim until a capped backoff has passed; and outcomes that could not be written
/// are held here and written first when the store works again, so their rows do not stay
/// claimed (and their customers blocked) until a restart.
#[derive(Default)]
struct StoreTrouble {
    failures: u32,
    retry_at: Option<Instant>,
    unwritten: Vec<Unwritten>,
}

impl StoreTrouble {
    fn failed(&mut self, core: &Core, e: &dyn std::fmt::Display) {
        if self.failures == 0 {
            tracing::error!(
                error = %e,
                "dub tracker: the store failed; retrying with backoff, outcomes held in memory"
            );
        }
        self.failures = self.failures.saturating_add(1);
        let backoff = Backoff {
            max: core.config.backoff.max.min(MAX_STORE_RETRY),
            ..core.config.backoff
        };
        let wait = backoff.delay(self.failures, fastrand::f64());
        self.retry_at = Instant::now().checked_add(wait);
    }

    /// A write went through: the trouble is over once nothing is held.
    fn worked(&mut self) {
        if self.failures > 0 && self.unwritten.is_empty() {
            tracing::info!(
                failures = self.failures,
                "dub tracker: the store can be written again"
            );
            self.failures = 0;
            self.retry_at = None;
        }
    }

    fn in_trouble(&self) -> bool {
        self.failures > 0
    }

    /// Whether the store is left alone until the backoff has passed.
    fn waiting(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| now < at)
    }

    /// Keeps a write for later, or makes it now when the store is not known to fail.
    async fn write(&mut self, core: &Arc<Core>, w: Unwritten) {
        self.unwritten.push(w);
        if !self.in_trouble() {
            self.write_held(core).await;
        }
    }

    /// Writes what is held; on failure keeps what is left and backs off.
    async fn write_held(&mut self, core: &Arc<Core>) {
        if self.unwritten.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.unwritten);
        let (left, error) = write_all(&*core.store, held).await;
        self.unwritten = left;
        match error {
            None => self.worked(),
            Some(e) => self.failed(core, &e),
        }
    }
}

/// Writes `held` in order: all outcomes in one transaction, then each reschedule. Returns what
/// could not be written, with the error.
async fn write_all(
    store: &dyn Store,
    held: Vec<Unwritten>,
) -> (Vec<Unwritten>, Option<StoreError>) {
    let mut finish = Vec::new();
    let mut later = Vec::new();
    for w in held {
        match w {
            Unwritten::Finish(id, t, o) => finish.push((id, t, o)),
            r @ Unwritten::Reschedule { .. } => later.push(r),
        }
    }
    if !finish.is_empty()
        && let Err(e) = store.finish(finish.clone()).await
    {
        let mut left: Vec<Unwritten> = finish
            .into_iter()
            .map(|(id, t, o)| Unwritten::Finish(id, t, o))
            .collect();
        left.extend(later);
        return (left, Some(e));
    }
    let mut later = later.into_iter();
    while let Some(w) = later.next() {
        let Unwritten::Reschedule {
            id,
            due_ms,
            attempts,
            maybe_sent,
        } = w
        else {
            continue;
        };
        if let Err(e) = store.reschedule(id, due_ms, attempts, maybe_sent).await {
            let mut left = vec![w];
            left.extend(later);
            return (left, Some(e));
        }
    }
    (Vec::new(), None)
}

pub(super) async fn run(core: Arc<Core>) {
    let _running = Running(core.clone());
    let mut tasks: JoinSet<Delivery> = JoinSet::new();
    let mut outage = Outage::new("dub tracker");
    let mut trouble = StoreTrouble::default();
    let mut shutdown = core.shutdown.subscribe();
    let mut traced = Instant::now();
    let mut recovered: Option<Instant> = None;
    let mut looked_elsewhere = Instant::now();
    loop {
        if recovered.is_none_or(|at| at.elapsed() >= RECOVER_EVERY) {
            recovered = Some(Instant::now());
            recover(&core, &mut trouble).await;
        }
        if !trouble.waiting(Instant::now()) {
            trouble.write_held(&core).await;
        }
        if core.store.is_durable() && looked_elsewhere.elapsed() >= SETTLED_ELSEWHERE_EVERY {
            looked_elsewhere = Instant::now();
            settled_elsewhere(&core).await;
        }
        let stopping = *shutdown.borrow_and_update();
        let now = Instant::now();
        let past_deadline = stopping.is_some_and(|s| now >= s.claim_until);
        if !past_deadline && !trouble.waiting(now) {
            let free = core.config.max_in_flight.saturating_sub(tasks.len());
            let allowed = outage.allowed(now, free, tasks.len());
            if allowed > 0 {
                match claim(&core, allowed).await {
                    Ok(batch) => {
                        if !batch.is_empty() {
                            trouble.worked();
                        }
                        for claimed in batch {
                            if !core.in_flight.start(&claimed) {
                                // Abandoned meanwhile: the event stays queued, unsent.
                                let (id, attempts) = (claimed.id, claimed.attempts);
                                let _ = core.store.reschedule(id, 0, attempts, false).await;
                                continue;
                            }
                            let shutdown = core.shutdown.subscribe();
                            let probe = outage.probing();
                            tasks.spawn(deliver(core.clone(), claimed, shutdown, probe));
                        }
                    }
                    Err(e) => trouble.failed(&core, &e),
                }
            }
        }
        if tasks.is_empty() && (past_deadline || (stopping.is_some() && is_drained(&core))) {
            // A last try for what the store could not take; then the rows stay claimed and the
            // next start treats them as left in flight by a process that died.
            trouble.write_held(&core).await;
            if !trouble.unwritten.is_empty() {
                tracing::error!(
                    events = trouble.unwritten.len(),
                    "dub tracker: outcomes could not be written to the store before shutdown"
                );
            }
            break;
        }
        if now.saturating_duration_since(traced) >= TRACE_EVERY {
            traced = now;
            let s = core.stats();
            if s.queued + s.in_flight > 0 {
                tracing::info!(
                    queued = s.queued,
                    in_flight = s.in_flight,
                    delivered = s.delivered,
                    failed = s.failed,
                    uncertain = s.uncertain,
                    oldest_age_s = s.oldest_age.map(|a| a.as_secs()),
                    "dub tracker"
                );
            }
        }
        // A due event matters only when one could be started: otherwise the loop would wake
        // at once, again and again, while it waits for a slot or the end of an outage pause.
        let free = core.config.max_in_flight.saturating_sub(tasks.len());
        let could_claim =
            !past_deadline && !trouble.waiting(now) && outage.allowed(now, free, tasks.len()) > 0;
        let mut wake_at = next_wake(
            &core,
            &outage,
            stopping.map(|s| s.claim_until),
            could_claim,
            traced,
            now,
        );
        if core.store.is_durable() {
            wake_at = wake_at.min((looked_elsewhere + SETTLED_ELSEWHERE_EVERY).max(now));
        }
        if let Some(retry) = trouble.retry_at.filter(|&at| at > now) {
            wake_at = wake_at.min(retry);
        }
        tokio::select! {
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(delivery) = done {
                    settle(&core, &mut outage, &mut trouble, delivery).await;
                }
            }
            _ = core.wake.notified() => {}
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = shutdown.changed() => {}
        }
    }
}

fn is_drained(core: &Core) -> bool {
    core.store
        .counts()
        .is_ok_and(|(queued, in_flight, _)| queued + in_flight == 0)
}

/// The next moment the loop has something to do without being woken.
fn next_wake(
    core: &Core,
    outage: &Outage,
    deadline: Option<Instant>,
    could_claim: bool,
    traced: Instant,
    now: Instant,
) -> Instant {
    let mut at = traced + TRACE_EVERY;
    if let Some(due) = core.store.next_due().filter(|_| could_claim) {
        let wait = due.saturating_sub(crate::clock::now_ms());
        at = at.min(now + Duration::from_millis(wait));
    }
    if let Some(until) = outage.paused_until().filter(|&u| u > now) {
        at = at.min(until);
    }
    if let Some(d) = deadline {
        at = at.min(d);
    }
    at.max(now)
}

/// Announces what a process that died had in flight and Dub does not deduplicate.
async fn recover(core: &Arc<Core>, trouble: &mut StoreTrouble) {
    match core.store.recover().await {
        Ok(lost) => {
            if !lost.is_empty() {
                tracing::warn!(
                    events = lost.len(),
                    "dub tracker: events were in flight when their process stopped; uncertain"
                );
            }
            for claimed in lost {
                core.counters.uncertain.fetch_add(1, Ordering::Relaxed);
                let age = Duration::from_millis(
                    crate::clock::now_ms().saturating_sub(claimed.created_ms),
                );
                announce(
                    core,
                    EventOutcome {
                        id: claimed.id,
                        key: claimed.key,
                        event: claimed.event,
                        outcome: Outcome::Uncertain(Error::interrupted()),
                        attempts: claimed.attempts,
                        age,
                    },
                );
            }
        }
        Err(e) => trouble.failed(core, &e),
    }
}

/// Resolves the receipts of events another process sharing the spool settled: this tracker
/// will never announce them itself. Only receipts learn of them, not the outcome callback,
/// which tells what this tracker settled.
async fn settled_elsewhere(core: &Arc<Core>) {
    let waiting = core.receipts.waiting();
    if waiting.is_empty() {
        return;
    }
    let waiting: Vec<_> = waiting
        .into_iter()
        .filter(|&id| !core.in_flight.contains(id))
        .collect();
    match core.store.settled(waiting).await {
        Ok(settled) => {
            for (id, outcome) in settled {
                core.receipts.announce(id, &outcome);
            }
        }
        Err(e) => tracing::error!(error = %e, "dub tracker: cannot read the spool"),
    }
}

async fn claim(core: &Arc<Core>, max: usize) -> Result<Vec<Claimed>, StoreError> {
    core.store.claim(max, crate::clock::now_ms()).await
}

async fn deliver(
    core: Arc<Core>,
    claimed: Claimed,
    mut shutdown: tokio::sync::watch::Receiver<Option<Stopping>>,
    probe: bool,
) -> Delivery {
    let mut policy = core.config.call_policy.clone();
    if let Some(at) = shutdown.borrow().and_then(|s| s.cut_at) {
        // Started after shutdown began: every attempt ends by the deadline.
        let left = at.saturating_duration_since(Instant::now());
        let bound = policy.max_elapsed_time().map_or(left, |m| m.min(left));
        policy = policy.with_max_elapsed_time(bound);
    }
    let track = core.dub.track();
    let call = async {
        match claimed.event.clone() {
            Event::Lead(r) => track.lead(r).retry_config(policy).await.map(Response::Lead),
            Event::Sale(r) => track.sale(r).retry_config(policy).await.map(Response::Sale),
        }
    };
    // A delivery that began before shutdown is cut off at its deadline.
    let cut = async {
        loop {
            let cut_at = shutdown.borrow_and_update().and_then(|s| s.cut_at);
            if let Some(at) = cut_at {
                tokio::time::sleep_until(at).await;
                return;
            }
            if shutdown.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let result = tokio::select! {
        result = call => Some(result),
        () = cut => None,
    };
    if let Some(Ok(response)) = &result {
        core.in_flight.answered(claimed.id, response);
    }
    Delivery {
        claimed,
        result,
        probe,
    }
}

async fn settle(core: &Arc<Core>, outage: &mut Outage, trouble: &mut StoreTrouble, d: Delivery) {
    if !core.in_flight.contains(d.claimed.id) {
        // Abandoned: already settled by `abandon`.
        return;
    }
    let now_ms = crate::clock::now_ms();
    let age = Duration::from_millis(now_ms.saturating_sub(d.claimed.created_ms));
    let deliveries = d.claimed.attempts.saturating_add(1);
    let ended = match d.result {
        None => Ended::CutOff,
        Some(Ok(response)) => Ended::Answered(response),
        Some(Err(e)) => Ended::Failed(e),
    };
    let failure = match &ended {
        Ended::Failed(e) => Some(e.to_string()),
        _ => None,
    };
    let facts = Facts {
        deduplicated: d.claimed.event.is_deduplicated(),
        maybe_sent: d.claimed.maybe_sent,
        deliveries,
        age,
    };
    let settings = Settings {
        max_age: core.config.max_age,
        backoff: core.config.backoff,
        settle: Duration::ZERO,
        honour_retry_after: false,
    };
    let verdict = decision::decide(ended, &facts, &settings, fastrand::f64());
    match verdict.dub_down() {
        Some(true) => outage.failed(Instant::now(), d.probe, failure.as_deref().unwrap_or("")),
        Some(false) => outage.cleared(),
        None => {}
    }
    // A delivery to be retried says why; one that settled clears it.
    match &verdict {
        Verdict::Retry { .. } => core.counters.set_last_failure(failure),
        Verdict::Requeue => {}
        Verdict::Delivered(_) | Verdict::Failed(_) | Verdict::Uncertain(_) => {
            core.counters.set_last_failure(None);
        }
    }
    let outcome = match verdict {
        Verdict::Requeue => {
            // Cut off at the shutdown deadline: Dub would deduplicate a second delivery, so the
            // event simply stays queued.
            let w = Unwritten::Reschedule {
                id: d.claimed.id,
                due_ms: 0,
                attempts: deliveries,
                maybe_sent: true,
            };
            trouble.write(core, w).await;
            core.in_flight.take(d.claimed.id);
            return;
        }
        Verdict::Retry {
            after,
            maybe_sent,
            error,
            ..
        } => {
            let due = now_ms.saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
            core.counters.retried.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(id = %d.claimed.id, wait_ms = after.as_millis() as u64, error = %error, "dub tracker: will retry");
            let w = Unwritten::Reschedule {
                id: d.claimed.id,
                due_ms: due,
                attempts: deliveries,
                maybe_sent,
            };
            trouble.write(core, w).await;
            core.in_flight.take(d.claimed.id);
            return;
        }
        Verdict::Delivered(response) => Outcome::Delivered(response),
        Verdict::Failed(e) => Outcome::Failed(e),
        Verdict::Uncertain(e) => Outcome::Uncertain(e),
    };
    let terminal = terminal_of(&outcome);
    let stored = stored_outcome(&outcome);
    let id = d.claimed.id;
    trouble
        .write(core, Unwritten::Finish(id, terminal, stored))
        .await;
    // Nothing below awaits: once the entry is taken, the event is announced exactly once.
    if !core.in_flight.take(id) {
        return;
    }
    count(core, terminal);
    tracing::debug!(id = %id, outcome = outcome.as_str(), "dub tracker: event settled");
    announce(
        core,
        EventOutcome {
            id,
            key: d.claimed.key,
            event: d.claimed.event,
            outcome,
            attempts: deliveries,
            age,
        },
    );
}

fn terminal_of(outcome: &Outcome) -> Terminal {
    match outcome {
        Outcome::Delivered(_) => Terminal::Delivered,
        Outcome::Failed(_) => Terminal::Failed,
        _ => Terminal::Uncertain,
    }
}

fn count(core: &Core, terminal: Terminal) {
    let counter = match terminal {
        Terminal::Delivered => &core.counters.delivered,
        Terminal::Failed => &core.counters.failed,
        Terminal::Uncertain => &core.counters.uncertain,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Settles the deliveries the dispatcher left unsettled when it was cut short (it overran the
/// shutdown deadline, the last handle was dropped, or its runtime shut down); no delivery starts
/// after this. What Dub answered is delivered; a request that may have reached Dub is uncertain
/// unless Dub deduplicates the event, which then goes back to the queue (the report, or the
/// spool). Called only where the dispatcher can no longer run normally, before the report.
pub(super) async fn abandon(core: &Core) {
    for attempt in core.in_flight.close() {
        let Attempt { claimed, answer } = attempt;
        let id = claimed.id;
        let deliveries = claimed.attempts.saturating_add(1);
        let outcome = match answer {
            Some(response) => Outcome::Delivered(response),
            None if claimed.event.is_deduplicated() => {
                if let Err(e) = core.store.reschedule(id, 0, deliveries, true).await {
                    tracing::error!(error = %e, "dub tracker: cannot requeue an event");
                }
                continue;
            }
            None => Outcome::Uncertain(Error::abandoned()),
        };
        let terminal = terminal_of(&outcome);
        let stored = stored_outcome(&outcome);
        if let Err(e) = core.store.finish(vec![(id, terminal, stored)]).await {
            tracing::error!(error = %e, "dub tracker: cannot record an outcome");
        }
        count(core, terminal);
        let age = Duration::from_millis(crate::clock::now_ms().saturating_sub(claimed.created_ms));
        announce(
            core,
            EventOutcome {
                id,
                key: claimed.key,
                event: claimed.event,
                outcome,
                attempts: deliveries,
                age,
            },
        );
    }
}

/// Tells the outcome callback and the event's receipts.
pub(super) fn announce(core: &Core, outcome: EventOutcome) {
    if let Some(callback) = &core.on_outcome {
        let call = std::panic::AssertUnwindSafe(|| callback(&outcome));
        if std::panic::catch_unwind(call).is_err() {
            tracing::error!(id = %outcome.id, "dub tracker: the outcome callback panicked");
        }
    }
    core.receipts.announce(outcome.id, &outcome.outcome);
}

/// What a spool keeps of an outcome: Dub's response, or the error's essentials, as JSON.
fn stored_outcome(outcome: &Outcome) -> Vec<u8> {
    let value = match outcome {
        Outcome::Delivered(Response::Lead(r)) => serde_json::to_value(r).ok(),
        Outcome::Delivered(Response::Sale(r)) => serde_json::to_value(r).ok(),
        Outcome::Delivered(Response::Raw(v)) => Some(v.clone()),
        Outcome::Failed(e) | Outcome::Uncertain(e) => Some(e.to_json()),
        Outcome::NotDelivered => None,
    };
    value
        .and_then(|v| serde_json::to_vec(&v).ok())
        .unwrap_or_default()
}

/// The report of a stopped tracker: what is left comes back (memory) or stays (spool), and
/// receipts of what is left resolve to `NotDelivered`. The dispatcher has ended or was aborted.
pub(super) async fn report(core: &Core) -> ShutdownReport {
    abandon(core).await;
    let mut report = ShutdownReport::default();
    let mut left_read = true;
    match core.store.left().await {
        Ok(left) => {
            report.undelivered = left.undelivered;
            report.left_in_spool = left.in_store;
        }
        Err(e) => {
            left_read = false;
            tracing::error!(error = %e, "dub tracker: cannot read what is left");
        }
    }
    core.receipts.resolve_rest();
    report.stats = core.stats();
    report.drained = left_read
        && report.undelivered.is_empty()
        && report.left_in_spool == 0
        && report.stats.store_error.is_none();
    report
}
