//! The in-memory queue: per-customer FIFO order, retry scheduling, a bound on what it holds.
//!
//! Every customer with undelivered events has its events in a FIFO; only the head of a
//! customer's FIFO can be claimed, and only when it is not in flight and its retry time has
//! come. The heads that could be claimed sit in one ordered set keyed by (due time, id), so a
//! claim takes the earliest-due, then oldest, heads across customers.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::event::{Event, EventId};
use super::outcome::{HandOver, HandOverError, HandOverErrorKind, Receipt};
use super::receipts::Receipts;
use super::store::{Claimed, Left, Store, StoreError, StoreFuture, Terminal, done};

#[derive(Debug)]
struct Entry {
    event: Event,
    key: Option<String>,
    created_ms: u64,
    attempts: u32,
    due_ms: u64,
    in_flight: bool,
    maybe_sent: bool,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    customers: HashMap<String, VecDeque<u64>>,
    /// (due, id) of every customer's head that is not in flight.
    heads: BTreeSet<(u64, u64)>,
    keys: HashMap<String, u64>,
    in_flight: u64,
    /// No more hand-overs: the tracker is stopping, or its dispatcher is gone.
    closed: bool,
}

/// The queue of a tracker without a spool.
#[derive(Debug)]
pub(crate) struct MemoryQueue {
    state: Mutex<State>,
    capacity: usize,
    receipts: Arc<Receipts>,
    /// Rung when an event is queued: the dispatcher may claim it.
    wake: Arc<Notify>,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Full,
    Closed,
}

impl MemoryQueue {
    pub(crate) fn new(capacity: usize, receipts: Arc<Receipts>, wake: Arc<Notify>) -> Self {
        Self {
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            capacity,
            receipts,
            wake,
        }
    }

    /// Refuses hand-overs from now on. Under the queue's lock, so that an event is either
    /// queued (with its receipt) before this, and then drained or delivered, or refused.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event and registers its receipt; with a key already queued, returns a receipt
    /// for that event instead. A full or closed queue hands the event back.
    #[expect(
        clippy::result_large_err,
        reason = "the event goes back to the caller by value, on the rare refused path"
    )]
    pub(crate) fn push(
        &self,
        key: Option<String>,
        event: Event,
        now_ms: u64,
    ) -> Result<Receipt, (Refused, Event)> {
        let mut s = self.lock();
        if s.closed {
            return Err((Refused::Closed, event));
        }
        if let Some(id) = key.as_ref().and_then(|k| s.keys.get(k)) {
            return Ok(self.receipts.register(EventId(*id)));
        }
        if s.entries.len() >= self.capacity {
            return Err((Refused::Full, event));
        }
        let id = s.next_id;
        s.next_id += 1;
        let customer = event.customer_external_id().to_owned();
        let fifo = s.customers.entry(customer).or_default();
        fifo.push_back(id);
        if fifo.len() == 1 {
            s.heads.insert((0, id));
        }
        if let Some(k) = &key {
            s.keys.insert(k.clone(), id);
        }
        s.entries.insert(
            id,
            Entry {
                event,
                key,
                created_ms: now_ms,
                attempts: 0,
                due_ms: 0,
                in_flight: false,
                maybe_sent: false,
            },
        );
        // Registered before the lock is released: the event cannot be claimed, delivered or
        // drained before its receipt exists.
        Ok(self.receipts.register(EventId(id)))
    }

    /// Takes up to `max` events whose turn has come, marking them in flight.
    pub(crate) fn claim(&self, max: usize, now_ms: u64) -> Vec<Claimed> {
        let mut s = self.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(due, id)) = s.heads.first() else {
                break;
            };
            if due > now_ms {
                break;
            }
            s.heads.pop_first();
            let Some(e) = s.entries.get_mut(&id) else {
                continue;
            };
            e.in_flight = true;
            out.push(Claimed {
                id: EventId(id),
                key: e.key.clone(),
                event: e.event.clone(),
                attempts: e.attempts,
                created_ms: e.created_ms,
                maybe_sent: e.maybe_sent,
            });
            s.in_flight += 1;
        }
        out
    }

    /// Removes a terminal event; its customer's next event becomes claimable.
    pub(crate) fn finish(&self, id: EventId) -> Option<Event> {
        let mut s = self.lock();
        let entry = s.entries.remove(&id.0)?;
        if entry.in_flight {
            s.in_flight -= 1;
        }
        s.heads.remove(&(entry.due_ms, id.0));
        if let Some(k) = &entry.key {
            s.keys.remove(k);
        }
        let customer = entry.event.customer_external_id();
        let next = match s.customers.get_mut(customer) {
            Some(fifo) => {
                fifo.retain(|&x| x != id.0);
                fifo.front().copied()
            }
            None => None,
        };
        match next {
            Some(next) => {
                let due = s.entries.get(&next).map_or(0, |e| e.due_ms);
                s.heads.insert((due, next));
            }
            None => {
                s.customers.remove(customer);
            }
        }
        Some(entry.event)
    }

    /// Puts an in-flight event back at the head of its customer's FIFO, due at `due_ms`.
    pub(crate) fn reschedule(&self, id: EventId, due_ms: u64, attempts: u32, maybe_sent: bool) {
        let mut s = self.lock();
        let Some(e) = s.entries.get_mut(&id.0) else {
            return;
        };
        let was_in_flight = std::mem::replace(&mut e.in_flight, false);
        e.due_ms = due_ms;
        e.attempts = attempts;
        e.maybe_sent |= maybe_sent;
        if was_in_flight {
            s.in_flight -= 1;
        }
        s.heads.insert((due_ms, id.0));
    }

    /// The earliest due time of a claimable event.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.lock().heads.first().map(|&(due, _)| due)
    }

    /// (queued, in flight, creation time of the oldest).
    /// Whether an undelivered event holds `key`.
    pub(crate) fn has_key(&self, key: &str) -> bool {
        self.lock().keys.contains_key(key)
    }

    pub(crate) fn counts(&self) -> (u64, u64, Option<u64>) {
        let s = self.lock();
        let total = s.entries.len() as u64;
        let oldest = s
            .customers
            .values()
            .filter_map(|fifo| fifo.front())
            .filter_map(|id| s.entries.get(id))
            .map(|e| e.created_ms)
            .min();
        (total - s.in_flight, s.in_flight, oldest)
    }

    /// Closes the queue and takes every remaining event, in hand-over order.
    pub(crate) fn drain(&self) -> Vec<(EventId, Event)> {
        let mut s = self.lock();
        s.closed = true;
        let mut all: Vec<_> = s
            .entries
            .drain()
            .map(|(id, e)| (EventId(id), e.event))
            .collect();
        s.customers.clear();
        s.heads.clear();
        s.keys.clear();
        s.in_flight = 0;
        all.sort_by_key(|(id, _)| *id);
        all
    }
}

impl Store for MemoryQueue {
    fn hand_over(&self, key: Option<String>, event: Event, created_ms: u64) -> HandOver {
        match self.push(key, event, created_ms) {
            Ok(receipt) => {
                self.wake.notify_one();
                HandOver::done(Ok(receipt))
            }
            Err((Refused::Full, event)) => HandOver::done(Err(HandOverError::new(
                HandOverErrorKind::Full,
                Some(event),
            )
            .with_detail(format!("{} undelivered events already", self.capacity)))),
            Err((Refused::Closed, event)) => HandOver::done(Err(HandOverError::new(
                HandOverErrorKind::Stopped,
                Some(event),
            ))),
        }
    }

    fn close_hand_overs(&self) -> StoreFuture<()> {
        self.close();
        done(())
    }

    fn claim(&self, max: usize, now_ms: u64) -> StoreFuture<Vec<Claimed>> {
        done(MemoryQueue::claim(self, max, now_ms))
    }

    fn finish(&self, finished: Vec<(EventId, Terminal, Vec<u8>)>) -> StoreFuture<()> {
        for (id, _, _) in finished {
            MemoryQueue::finish(self, id);
        }
        done(())
    }

    fn reschedule(
        &self,
        id: EventId,
        due_ms: u64,
        attempts: u32,
        maybe_sent: bool,
    ) -> StoreFuture<()> {
        MemoryQueue::reschedule(self, id, due_ms, attempts, maybe_sent);
        done(())
    }

    fn has_key(&self, key: &str) -> Result<bool, StoreError> {
        Ok(MemoryQueue::has_key(self, key))
    }

    fn left(&self) -> StoreFuture<Left> {
        done(Left {
            undelivered: self.drain(),
            in_store: 0,
        })
    }

    fn next_due(&self) -> Option<u64> {
        MemoryQueue::next_due(self)
    }

    fn counts(&self) -> Result<(u64, u64, Option<u64>), StoreError> {
        Ok(MemoryQueue::counts(self))
    }

    fn is_durable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{TrackLeadRequest, TrackSaleRequest};

    fn lead(customer: &str) -> Event {
        TrackLeadRequest::builder()
            .click_id("c")
            .event_name("Sign up")
            .customer_external_id(customer)
            .build()
            .into()
    }

    fn sale(customer: &str) -> Event {
        TrackSaleRequest::builder()
            .customer_external_id(customer)
            .amount(1)
            .build()
            .into()
    }

    fn queue(capacity: usize) -> MemoryQueue {
        MemoryQueue::new(capacity, Arc::default(), Arc::default())
    }

    #[test]
    fn a_customers_events_go_one_at_a_time_in_order() {
        let q = queue(10);
        let a1 = q.push(None, lead("a"), 0).ok().unwrap().id();
        let a2 = q.push(None, sale("a"), 0).ok().unwrap().id();
        let b1 = q.push(None, sale("b"), 0).ok().unwrap().id();
        let ids: Vec<_> = q.claim(10, 0).iter().map(|c| c.id).collect();
        assert_eq!(ids, [a1, b1]);
        assert!(q.claim(10, 0).is_empty());
        // A retry keeps the customer's order: a2 waits behind a1.
        q.reschedule(a1, 100, 1, false);
        assert!(q.claim(10, 50).is_empty());
        assert_eq!(q.claim(10, 100)[0].id, a1);
        q.finish(a1);
        assert_eq!(q.claim(10, 100)[0].id, a2);
        assert_eq!(q.counts().1, 2);
    }

    #[test]
    fn the_bound_is_enforced_and_keys_dedup_while_queued() {
        let q = queue(2);
        let id = q.push(Some("k".into()), lead("a"), 0).ok().unwrap().id();
        assert_eq!(
            q.push(Some("k".into()), lead("a"), 0).ok().unwrap().id(),
            id
        );
        assert_eq!(q.receipts.len(), 1, "one slot per event");
        let _ = q.push(None, lead("b"), 0).ok().unwrap();
        assert!(matches!(
            q.push(None, lead("c"), 0),
            Err((Refused::Full, _))
        ));
        assert_eq!(q.drain().len(), 2);
        assert_eq!(q.counts(), (0, 0, None));
        assert!(matches!(
            q.push(None, lead("c"), 0),
            Err((Refused::Closed, _))
        ));
    }
}
