//! Who waits for which event: the receipts of the events this process handed over.
//!
//! Each undelivered event has one slot, however many callers hold a receipt for it: handing a
//! pending key over again gives the caller a clone of the same shared result, so the memory the
//! tracker keeps per event stays the same whatever callers do. A slot is resolved once, when
//! the event's outcome is announced, or at shutdown (`NotDelivered`) for what is left.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use std::future::IntoFuture;

use futures_util::FutureExt;

use super::event::EventId;
use super::outcome::{Outcome, Receipt, SharedOutcome};

struct Slot {
    tx: oneshot::Sender<Outcome>,
    rx: SharedOutcome,
}

fn slot() -> Slot {
    let (tx, rx) = oneshot::channel();
    Slot {
        tx,
        rx: rx.into_future().shared(),
    }
}

/// The receipts of undelivered events.
#[derive(Default)]
pub(crate) struct Receipts {
    slots: Mutex<HashMap<EventId, Slot>>,
}

impl std::fmt::Debug for Receipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipts")
            .field("waiting", &self.lock().len())
            .finish()
    }
}

impl Receipts {
    fn lock(&self) -> MutexGuard<'_, HashMap<EventId, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receipt for an undelivered event: the event's slot, made on first use.
    pub(crate) fn register(&self, id: EventId) -> Receipt {
        let rx = self.lock().entry(id).or_insert_with(slot).rx.clone();
        Receipt { id, rx: Some(rx) }
    }

    /// A receipt whose outcome is already known.
    #[cfg(feature = "spool")]
    pub(crate) fn ready(id: EventId, outcome: Outcome) -> Receipt {
        let Slot { tx, rx } = slot();
        let _ = tx.send(outcome);
        Receipt { id, rx: Some(rx) }
    }

    /// Drops an event's slot unresolved: the event was never stored (its commit failed), and
    /// nobody was given a receipt for it.
    #[cfg(feature = "spool")]
    pub(crate) fn forget(&self, id: EventId) {
        self.lock().remove(&id);
    }

    /// Resolves the event's receipts, if anyone holds one.
    pub(crate) fn announce(&self, id: EventId, outcome: &Outcome) {
        let slot = self.lock().remove(&id);
        if let Some(slot) = slot {
            let _ = slot.tx.send(outcome.clone());
        }
    }

    /// The events someone waits for.
    #[cfg_attr(not(feature = "spool"), allow(dead_code))]
    pub(crate) fn waiting(&self) -> Vec<EventId> {
        self.lock().keys().copied().collect()
    }

    /// Resolves every receipt left to `NotDelivered`: the tracker stopped.
    pub(crate) fn resolve_rest(&self) {
        let left: Vec<Slot> = self.lock().drain().map(|(_, slot)| slot).collect();
        for slot in left {
            let _ = slot.tx.send(Outcome::NotDelivered);
        }
    }

    /// Slots held (one per undelivered event someone has a receipt for).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
