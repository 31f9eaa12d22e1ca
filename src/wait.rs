//! The one way sync code waits for a value the async side produces: the blocking client,
//! `Receipt::wait`, `HandOver::wait` and `Tracker::shutdown_blocking` all park their thread here
//! until the future is ready.
//!
//! The future is polled on the waiting thread itself with a waker that unparks it, so this needs
//! no runtime and never trips tokio's "blocking inside async code" panics. It deadlocks if the
//! value can only be produced by the very thread that waits: the thread of a current-thread
//! runtime (its `block_on`, or a task on it) waiting for something that runtime must do. Wait
//! from a plain thread, `spawn_blocking`, or a runtime whose workers are other threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Blocks this thread until `future` is ready.
pub(crate) fn block_on<F: Future + Unpin>(future: F) -> F::Output {
    match block_until(future, None) {
        Ok(value) => value,
        Err(_) => unreachable!("no deadline"),
    }
}

/// Blocks this thread until `future` is ready or `deadline` passes (the future comes back).
pub(crate) fn block_until<F: Future + Unpin>(
    mut future: F,
    deadline: Option<Instant>,
) -> Result<F::Output, F> {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(value) = Pin::new(&mut future).poll(&mut cx) {
            return Ok(value);
        }
        match deadline {
            None => std::thread::park(),
            Some(at) => {
                let now = Instant::now();
                if now >= at {
                    return Err(future);
                }
                std::thread::park_timeout(at - now);
            }
        }
    }
}

/// The value, if `future` is ready now; polled once, without waiting.
pub(crate) fn now_or_never<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(future).poll(&mut cx) {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}
