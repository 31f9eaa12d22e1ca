//! Where a tracker keeps events: in memory, or (feature `spool`) in a SQLite spool. The
//! dispatcher speaks to both through this one interface.

use super::event::{Event, EventId};
use super::memory::MemoryQueue;

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
}

impl Store {
    /// Whether calls may block on disk (then the dispatcher runs them off the async threads).
    pub(crate) fn is_durable(&self) -> bool {
        !matches!(self, Store::Memory(_))
    }

    pub(crate) fn claim(&self, max: usize, now_ms: u64) -> Result<Vec<Claimed>, String> {
        match self {
            Store::Memory(q) => Ok(q.claim(max, now_ms)),
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
        }
    }

    /// Puts events taken for delivery back, never sent (shutdown).
    #[allow(dead_code, reason = "a spool releases its claims at shutdown")]
    pub(crate) fn release(&self, ids: &[EventId]) -> Result<(), String> {
        match self {
            Store::Memory(q) => {
                for id in ids {
                    q.reschedule(*id, 0, 0, false);
                }
                Ok(())
            }
        }
    }

    pub(crate) fn next_due(&self) -> Option<u64> {
        match self {
            Store::Memory(q) => q.next_due(),
        }
    }

    /// (queued, in flight, creation time of the oldest).
    pub(crate) fn counts(&self) -> (u64, u64, Option<u64>) {
        match self {
            Store::Memory(q) => q.counts(),
        }
    }
}
