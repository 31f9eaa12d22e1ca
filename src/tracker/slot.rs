//! A one-value channel that can be awaited from async code or waited on from a plain thread,
//! without a runtime and without tokio's "blocking in async context" panics.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

struct State<T> {
    value: Option<T>,
    /// The sender is gone without sending.
    closed: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending half; dropping it unsent closes the slot.
pub(crate) struct Sender<T>(Option<Arc<Shared<T>>>);

/// The receiving half.
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

pub(crate) fn slot<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            value: None,
            closed: false,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (Sender(Some(shared.clone())), Receiver(shared))
}

impl<T> Sender<T> {
    pub(crate) fn send(mut self, value: T) {
        if let Some(shared) = self.0.take() {
            let waker = {
                let mut s = shared.lock();
                s.value = Some(value);
                s.waker.take()
            };
            shared.ready.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            let waker = {
                let mut s = shared.lock();
                s.closed = true;
                s.waker.take()
            };
            shared.ready.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> Receiver<T> {
    /// Blocks this thread until the value arrives (`None`: the sender went away).
    pub(crate) fn wait(&self) -> Option<T> {
        let mut s = self.0.lock();
        loop {
            if let Some(v) = s.value.take() {
                return Some(v);
            }
            if s.closed {
                return None;
            }
            s = self.0.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = self.0.lock();
        if let Some(v) = s.value.take() {
            return Poll::Ready(Some(v));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_across_threads() {
        let (tx, rx) = slot();
        std::thread::spawn(move || tx.send(7));
        assert_eq!(rx.wait(), Some(7));
        let (tx, rx) = slot::<u8>();
        drop(tx);
        assert_eq!(rx.wait(), None);
    }

    #[tokio::test]
    async fn awaits() {
        let (tx, rx) = slot();
        tokio::spawn(async move { tx.send("done") });
        assert_eq!(rx.await, Some("done"));
    }
}
