//! Ctrl-C and SIGTERM as one request to stop: systemd, Docker and Kubernetes stop a process
//! with SIGTERM, and it must leave the records as Ctrl-C does (none sent half-way, none made
//! uncertain that was never sent).

/// Requests to stop, SIGINT or SIGTERM, from the moment [`Stop::listen`] is called: a signal
/// that arrives before anyone waits is kept for the next [`Stop::next`].
pub struct Stop {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Stop {
    /// Installs the handlers (replacing the default action, which ends the process at once).
    /// Must be called inside the Tokio runtime.
    pub fn listen() -> Stop {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = signal(SignalKind::interrupt())
                .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                .ok();
            Stop { signals }
        }
        #[cfg(not(unix))]
        Stop {}
    }

    /// The next SIGINT or SIGTERM. Never resolves if the handlers could not be installed.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            match &mut self.signals {
                Some((int, term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                None => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
