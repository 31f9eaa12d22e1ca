//! Retries are visible in `tracing` output, and the token never is.
//!
//! Alone in its own test binary: tracing caches per-callsite interest process-wide, so a
//! callsite first hit by a test without a subscriber would stay silent here.

use std::time::Duration;

use dub::mock::{Fault, MockDub};
use dub::models::TrackLeadRequest;
use dub::{Dub, Jitter, RetryConfig};

#[tokio::test(start_paused = true)]
async fn each_retry_is_traced_without_the_token() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = MockDub::start().await.unwrap();
    server.push_fault(Fault::Status(503));
    Dub::builder()
        .token(server.token())
        .server_url(server.url())
        .attempt_timeout(Duration::from_secs(60))
        .retry_config(RetryConfig::default().with_jitter(Jitter::None))
        .build()
        .unwrap()
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("clk_1")
                .event_name("Sign up")
                .customer_external_id("user_42")
                .build(),
        )
        .await
        .unwrap();
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let retry_line = log.lines().find(|l| l.contains("retrying")).expect(&log);
    assert!(
        retry_line.contains("attempt=1")
            && retry_line.contains("delay_ms=500")
            && retry_line.contains("HTTP 503"),
        "{retry_line}"
    );
    assert!(
        log.contains("dub.call") && log.contains("operation=\"track.lead\""),
        "{log}"
    );
    assert!(!log.contains(server.token()), "token in logs");
}
