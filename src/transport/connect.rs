//! The per-attempt deadline, applied to opening a connection as well.
//!
//! An attempt has one timeout, from sending to the end of the response body. reqwest applies it
//! to the whole request, and when it fires while the connection is still being opened the error
//! cannot tell that nothing was sent. This connector layer makes a connection that is not open
//! by the attempt's deadline fail as a *connection* error, which reqwest reports with
//! `is_connect()`: the attempt is then known not to have reached Dub, however the timeouts are
//! set. The deadline travels in a task-local, set around each attempt; reqwest's own timeout for
//! the request is set a little later (`CONNECT_FIRST`) so that the connector's fires first.
//!
//! The layer is only on the clients used by attempts with a timeout other than the client's
//! (`ClientCore::client`): the crate's usual clients get the same effect from their connect timeout,
//! capped at the attempt timeout, without the layer's cost on every request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// How much later than the connector's deadline reqwest's request timeout fires. reqwest checks
/// its timeout before polling the connection, so when the task is first polled after both
/// deadlines (a busy machine delays a poll by milliseconds) reqwest's wins and a connect that
/// never completed reads as "may have been recorded". 5 ms lost that race on a loaded two-core
/// machine about one time in three; the margin only lets a request already sent run that much
/// past the attempt timeout.
pub(crate) const CONNECT_FIRST: Duration = Duration::from_millis(50);

tokio::task_local! {
    static ATTEMPT_DEADLINE: Instant;
}

/// Runs `attempt` with `deadline` visible to the connector.
pub(crate) async fn with_deadline<F: Future>(deadline: Instant, attempt: F) -> F::Output {
    ATTEMPT_DEADLINE.scope(deadline, attempt).await
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Installed with `reqwest::ClientBuilder::connector_layer` on the clients the crate builds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AttemptDeadlineLayer;

impl<S> tower_layer::Layer<S> for AttemptDeadlineLayer {
    type Service = AttemptDeadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AttemptDeadline { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AttemptDeadline<S> {
    inner: S,
}

impl<S, R> tower_service::Service<R> for AttemptDeadline<S>
where
    S: tower_service::Service<R, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // Read here, in the attempt's task: the connection may later finish in the background.
        let deadline = ATTEMPT_DEADLINE.try_with(|d| *d).ok();
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let Some(deadline) = deadline else {
                return connecting.await;
            };
            match tokio::time::timeout_at(deadline, connecting).await {
                Ok(result) => result,
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the attempt's timeout passed before a connection was open",
                ))),
            }
        })
    }
}
