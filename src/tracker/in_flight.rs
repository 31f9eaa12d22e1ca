//! The deliveries a dispatcher started and has not settled yet.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::event::EventId;
use super::outcome::Response;
use super::store::Claimed;

/// The deliveries started and not yet settled, with Dub's answer once it came.
///
/// A delivery is recorded here before it starts, and its answer as soon as it arrives, so that
/// whatever cuts the dispatcher short (a shutdown deadline it overran, the last handle dropped,
/// its runtime shut down) leaves an honest account: an event Dub answered for is delivered,
/// one whose request may have reached Dub and that Dub does not deduplicate is uncertain, and
/// neither comes back as "undelivered". Whoever takes an entry out settles the event: the
/// dispatcher normally, its `abandon` once the dispatcher is cut short.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<InFlightState>);

#[derive(Default)]
struct InFlightState {
    /// Abandoned: no delivery may start any more.
    closed: bool,
    started: HashMap<EventId, Attempt>,
}

pub(crate) struct Attempt {
    pub claimed: Claimed,
    pub answer: Option<Response>,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, InFlightState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a delivery about to start; `false` once abandoned (then it must not start).
    pub(crate) fn start(&self, claimed: &Claimed) -> bool {
        let mut s = self.lock();
        if s.closed {
            return false;
        }
        s.started.insert(
            claimed.id,
            Attempt {
                claimed: claimed.clone(),
                answer: None,
            },
        );
        true
    }

    pub(crate) fn answered(&self, id: EventId, response: &Response) {
        if let Some(attempt) = self.lock().started.get_mut(&id) {
            attempt.answer = Some(response.clone());
        }
    }

    pub(crate) fn contains(&self, id: EventId) -> bool {
        self.lock().started.contains_key(&id)
    }

    /// Takes the entry to settle the event; `false` if `close` took it first.
    pub(crate) fn take(&self, id: EventId) -> bool {
        self.lock().started.remove(&id).is_some()
    }

    /// No delivery starts from now on; returns those started and not settled.
    pub(crate) fn close(&self) -> Vec<Attempt> {
        let mut s = self.lock();
        s.closed = true;
        let mut left: Vec<Attempt> = s.started.drain().map(|(_, a)| a).collect();
        left.sort_by_key(|a| a.claimed.id);
        left
    }
}
