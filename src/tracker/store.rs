//! Where a tracker keeps events: in memory, or (feature `spool`) in a SQLite spool. The
//! dispatcher speaks to both through this one interface.

use super::event::{Event, EventId};
use super::memory::MemoryQueue;
#[cfg(feature = "spool")]
use super::spool::Spool;

/// An event taken for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub id: EventId,
    pub key: Option<String>,
    pub event: Event,
    /// HTTP attempts made so far, over earlier deliveries.
    pub attempts: u32,
    /// Hand-over time, Unix milliseconds.
    pub created_ms: u64,
    /// An earlier delivery may have reached Dub.
    pub maybe_sent: bool,
}

/// A terminal state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Terminal {
    Delivered,
    Failed,
    Uncertain,
}

#[derive(Debug)]
pub(crate) enum Store {
    Memory(MemoryQueue),
    #[cfg(feature = "spool")]
    Spool(Spool),
}

impl Store {
    /// Whether calls may block on disk (then the dispatcher runs them off the async threads).
    pub(crate) fn is_durable(&self) -> bool {
        !matches!(self, Store::Memory(_))
    }

    /// Refuses hand-overs from now on; a spool's writer first commits what it holds (this
    /// waits for it).
    pub(crate) fn close_hand_overs(&self) {
        match self {
            Store::Memory(q) => q.close(),
            #[cfg(feature = "spool")]
            Store::Spool(s) => s.close(),
        }
    }

    pub(crate) fn claim(&self, max: usize, now_ms: u64) -> Result<Vec<Claimed>, String> {
        match self {
            Store::Memory(q) => Ok(q.claim(max, now_ms)),
            #[cfg(feature = "spool")]
            Store::Spool(s) => s.claim(max, now_ms),
        }
    }

    /// Records terminal outcomes, each with what to keep of it (a response or an error, as
    /// JSON).
    pub(crate) fn finish(&self, done: Vec<(EventId, Terminal, Vec<u8>)>) -> Result<(), String> {
        match self {
            Store::Memory(q) => {
                for (id, _, _) in done {
                    q.finish(id);
                }
                Ok(())
            }
            #[cfg(feature = "spool")]
            Store::Spool(s) => s.finish(done),
        }
    }

    pub(crate) fn reschedule(
        &self,
        id: EventId,
        due_ms: u64,
        attempts: u32,
        maybe_sent: bool,
    ) -> Result<(), String> {
        match self {
            Store::Memory(q) => {
                q.reschedule(id, due_ms, attempts, maybe_sent);
                Ok(())
            }
            #[cfg(feature = "spool")]
            Store::Spool(s) => s.reschedule(id, due_ms, attempts, maybe_sent),
        }
    }

    pub(crate) fn next_due(&self) -> Option<u64> {
        match self {
            Store::Memory(q) => q.next_due(),
            #[cfg(feature = "spool")]
            Store::Spool(s) => s.next_due(),
        }
    }

    /// (queued, in flight, creation time of the oldest), or why they cannot be known.
    pub(crate) fn counts(&self) -> Result<(u64, u64, Option<u64>), String> {
        match self {
            Store::Memory(q) => Ok(q.counts()),
            #[cfg(feature = "spool")]
            Store::Spool(s) => s.counts(),
        }
    }

    /// Takes back what processes that died had in flight; returns the events that end
    /// uncertain (see the spool's docs).
    pub(crate) fn recover(&self) -> Result<Vec<Claimed>, String> {
        match self {
            Store::Memory(_) => Ok(Vec::new()),
            #[cfg(feature = "spool")]
            Store::Spool(s) => s.recover(),
        }
    }
}
