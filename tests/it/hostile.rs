//! Servers that misbehave, on real loopback sockets: responses that never end, bodies of
//! 100 MB, bodies that trickle in a byte a second, redirects to another host, and plain-http
//! base URLs. Timeouts are short and real (at most 1.5 s); nothing here asserts how long
//! anything took.
//!
//! (`tests/errors.rs` covers a slow reply within a timeout, the per-call timeout, and that
//! plain http to a non-loopback host is refused at build time.)

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::support::{self, TOKEN, lead, lead_body};
use dub::mock::MockDub;
use dub::models::TrackSaleRequest;
use dub::{Dub, ErrorKind, RetryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MB: u64 = 1024 * 1024;
const KIB64: usize = 64 * 1024;

/// A loopback server that runs `behave` on each connection after reading its request, and
/// counts the response bytes it managed to write.
struct RawServer {
    url: String,
    written: Arc<AtomicU64>,
    done: tokio::sync::mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawServer {
    async fn start<F, Fut>(behave: F) -> RawServer
    where
        F: Fn(TcpStream, Arc<AtomicU64>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let socket = TcpSocket::new_v4().unwrap();
        // A small send buffer, so the count of written bytes is close to what the client took.
        socket.set_send_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let written = Arc::new(AtomicU64::new(0));
        let (tx, done) = tokio::sync::mpsc::unbounded_channel();
        let counter = written.clone();
        let behave = Arc::new(behave);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (behave, counter, tx) = (behave.clone(), counter.clone(), tx.clone());
                tokio::spawn(async move {
                    read_request(&mut stream).await;
                    behave(stream, counter).await;
                    let _ = tx.send(());
                });
            }
        });
        RawServer {
            url,
            written,
            done,
            task,
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until a connection's behaviour has finished (the client hung up), with a bound so
    /// a broken test fails instead of hanging.
    async fn finished(&mut self) {
        tokio::time::timeout(Duration::from_secs(30), self.done.recv())
            .await
            .expect("the server was still writing 30 s after the client gave up");
    }
}

/// Reads one request: headers, then `content-length` bytes of body.
async fn read_request(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes `bytes`, counting them; false once the client has hung up.
async fn write(stream: &mut TcpStream, bytes: &[u8], counter: &AtomicU64) -> bool {
    match stream.write_all(bytes).await {
        Ok(()) => {
            counter.fetch_add(bytes.len() as u64, Ordering::SeqCst);
            true
        }
        Err(_) => false,
    }
}

fn client(url: &str, timeout: Duration) -> Dub {
    support::client(url)
        .attempt_timeout(timeout)
        .retry_config(RetryConfig::none())
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Responses that never end

#[tokio::test]
async fn a_response_that_never_starts_times_out() {
    let server = RawServer::start(|stream, _| async move {
        // Holds the connection open, answering nothing (bounded so the test cannot leak it).
        let _open = stream;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let err = client(&server.url, Duration::from_millis(500))
        .track()
        .lead(lead())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.status().is_none());
    assert!(err.may_have_been_recorded(), "the request was sent");
}

#[tokio::test]
async fn a_body_that_never_ends_times_out() {
    let server = RawServer::start(|mut stream, n| async move {
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n";
        write(&mut stream, head.as_bytes(), &n).await;
        write(&mut stream, b"{\"click\": {\"id\": \"c", &n).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let err = client(&server.url, Duration::from_millis(500))
        .track()
        .lead(lead())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(200));
    assert!(err.may_have_been_recorded(), "a 200 began: Dub recorded it");
}

#[tokio::test]
async fn a_chunked_error_body_that_never_ends_times_out() {
    let server = RawServer::start(|mut stream, n| async move {
        let head = "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n";
        write(&mut stream, head.as_bytes(), &n).await;
        write(&mut stream, b"5\r\n{\"err\r\n", &n).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let err = client(&server.url, Duration::from_millis(500))
        .track()
        .lead(lead())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Bodies of 100 MB

/// Serves `head` and then up to 100 MB of `fill`, in 64 KiB writes, as long as the client reads.
async fn flood(head: String, chunked: bool) -> RawServer {
    RawServer::start(move |mut stream, n| {
        let head = head.clone();
        async move {
            if !write(&mut stream, head.as_bytes(), &n).await {
                return;
            }
            let block = vec![b'x'; KIB64];
            let framed = format!("{:x}\r\n", KIB64).into_bytes();
            let mut sent = 0u64;
            while sent < 100 * MB {
                if chunked && !write(&mut stream, &framed, &n).await {
                    return;
                }
                if !write(&mut stream, &block, &n).await {
                    return;
                }
                if chunked && !write(&mut stream, b"\r\n", &n).await {
                    return;
                }
                sent += KIB64 as u64;
            }
            if chunked {
                write(&mut stream, b"0\r\n\r\n", &n).await;
            }
        }
    })
    .await
}

/// Far less than the 100 MB on offer: what the client reads (64 KiB of an error body, 1 MiB of a
/// success body) plus socket buffers, which grow only as fast as the client reads. Measured
/// here: about 0.2 MB after an error body, 1.5 MB after a success body.
const FAR_LESS: u64 = 16 * MB;

#[tokio::test]
async fn a_100_mb_error_body_is_cut_at_64_kib() {
    for chunked in [false, true] {
        let framing = if chunked {
            "transfer-encoding: chunked".to_owned()
        } else {
            format!("content-length: {}", 100 * MB)
        };
        let mut server = flood(
            format!("HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n{framing}\r\n\r\n"),
            chunked,
        )
        .await;
        let err = client(&server.url, Duration::from_secs(2))
            .track()
            .lead(lead())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InternalServerError, "{err:?}");
        assert_eq!(err.status().unwrap().as_u16(), 500);
        let raw = err.raw_body().expect("the start of the body is kept");
        assert!(raw.len() <= KIB64, "kept {} bytes", raw.len());
        assert!(raw.len() > 1024 && raw.iter().all(|&b| b == b'x'));
        assert!(err.is_body_truncated());
        server.finished().await;
        let written = server.written();
        eprintln!(
            "chunked={chunked}: the server wrote {written} bytes of 100 MB before the client hung up"
        );
        assert!(written < FAR_LESS, "the server wrote {written} bytes");
    }
}

#[tokio::test]
async fn a_100_mb_success_body_is_cut_and_reported_as_recorded() {
    let mut server = flood(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            100 * MB
        ),
        false,
    )
    .await;
    let err = client(&server.url, Duration::from_secs(2))
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(5)
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err:?}");
    assert_eq!(err.status().unwrap().as_u16(), 200);
    assert!(err.is_body_truncated());
    assert!(err.raw_body().unwrap().len() <= KIB64);
    assert!(err.may_have_been_recorded());
    server.finished().await;
    let written = server.written();
    eprintln!("200: the server wrote {written} bytes of 100 MB before the client hung up");
    assert!(written < FAR_LESS, "the server wrote {written} bytes");
}

// ---------------------------------------------------------------------------------------------
// A byte a second

// Each byte comes sooner than the 1.5 s timeout, so only a timeout on the whole attempt (not
// one on idle reads) can end these calls.

#[tokio::test]
async fn a_200_body_trickling_a_byte_a_second_times_out() {
    let body = lead_body().to_string();
    let total = body.len();
    let mut server = RawServer::start(move |mut stream, n| {
        let body = body.clone();
        async move {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            if !write(&mut stream, head.as_bytes(), &n).await {
                return;
            }
            let started = n.load(Ordering::SeqCst);
            for byte in body.as_bytes() {
                if !write(&mut stream, &[*byte], &n).await {
                    return;
                }
                // Also stop once the client hung up, which a write may not notice at once.
                if n.load(Ordering::SeqCst) - started > 10 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    })
    .await;
    let err = client(&server.url, Duration::from_millis(1500))
        .track()
        .lead(lead())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.may_have_been_recorded());
    server.finished().await;
    assert!(
        (server.written() as usize) < total + 200,
        "the whole body arrived"
    );
}

#[tokio::test]
async fn a_status_line_trickling_a_byte_a_second_times_out() {
    let server = RawServer::start(|mut stream, n| async move {
        for byte in b"HTTP/1.1 200 OK\r\n".iter().take(10) {
            if !write(&mut stream, &[*byte], &n).await {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let err = client(&server.url, Duration::from_millis(1500))
        .track()
        .lead(lead())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.status().is_none());
}

// ---------------------------------------------------------------------------------------------
// Redirects to another host

/// A server that redirects every request to `target` (named `localhost`, not `127.0.0.1`, so it
/// is another host to the client).
async fn redirector(status: u16, target: &MockDub) -> MockDub {
    let port = target.url().rsplit(':').next().unwrap().to_owned();
    let location = format!("http://localhost:{port}/track/lead");
    support::mock_with([support::raw(status, "").header("location", location)]).await
}

#[tokio::test]
async fn the_default_client_follows_no_redirect() {
    for status in [301, 302, 303, 307, 308] {
        let other = support::mock_with([]).await;
        let server = redirector(status, &other).await;
        let err = client(&server.url(), Duration::from_secs(2))
            .track()
            .lead(lead())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedStatus, "{err:?}");
        assert_eq!(err.status().unwrap().as_u16(), status);
        assert!(!err.may_have_been_recorded());
        assert_eq!(server.request_count(), 1);
        assert_eq!(other.request_count(), 0, "HTTP {status} was followed");
    }
}

#[tokio::test]
async fn a_redirect_following_client_never_takes_the_token_to_another_host() {
    for status in [301, 302, 303, 307, 308] {
        // 301 to 303 turn the POST into a GET, which Dub's routes refuse; the answer does not
        // matter here, only where the token goes.
        let other = support::mock_with([support::json(200, lead_body())]).await;
        let server = redirector(status, &other).await;
        let dub = Dub::builder()
            .token(TOKEN)
            .server_url(server.url())
            .retry_config(RetryConfig::none())
            // reqwest's default policy follows up to 10 redirects.
            .http_client(reqwest::Client::new())
            .build()
            .unwrap();
        dub.track().lead(lead()).await.unwrap();
        let first = &server.requests()[0];
        assert_eq!(
            first.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str()),
            "the API host gets the token"
        );
        let got = other.requests();
        assert_eq!(got.len(), 1, "HTTP {status} was not followed");
        assert_eq!(
            got[0].header("host").map(|h| h.starts_with("localhost:")),
            Some(true)
        );
        assert_eq!(
            got[0].header("authorization"),
            None,
            "HTTP {status}: token leaked"
        );
        assert!(
            got.iter()
                .all(|r| r.headers.iter().all(|(_, v)| !v.contains(TOKEN))),
            "HTTP {status}: token leaked in another header"
        );
        if status >= 307 {
            // 307 and 308 keep the method and body.
            assert_eq!(got[0].method, "POST");
            assert_eq!(got[0].body, first.body);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plain http

/// A client whose HTTP goes through `proxy` (a loopback server that answers every request), so
/// a call to a non-loopback host can be observed without leaving the machine.
fn via_proxy(proxy: &MockDub) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(proxy.url()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn plain_http_to_another_host_is_sent_only_when_allowed() {
    let proxy = support::mock_with([]).await;
    let build = |allow: bool| {
        Dub::builder()
            .token(TOKEN)
            .server_url("http://dub.internal")
            .http_client(via_proxy(&proxy))
            .retry_config(RetryConfig::none())
            .allow_insecure_http(allow)
            .build()
    };
    assert_eq!(build(false).unwrap_err().kind(), ErrorKind::Config);
    // An https client cannot be pointed at it per call either.
    let https = Dub::builder()
        .token(TOKEN)
        .http_client(via_proxy(&proxy))
        .build()
        .unwrap();
    let err = https
        .track()
        .lead(lead())
        .server_url("http://dub.internal")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(proxy.request_count(), 0, "nothing was sent");

    // Allowed: the request really goes out in clear text, token included.
    build(true).unwrap().track().lead(lead()).await.unwrap();
    let got = proxy.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("host"), Some("dub.internal"));
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

#[test]
fn only_real_loopback_counts_as_loopback() {
    let build = |url: &str| {
        Dub::builder()
            .token(TOKEN)
            .server_url(url)
            .build()
            .map(drop)
            .map_err(|e| e.kind())
    };
    for url in [
        "http://127.0.0.1:4010",
        "http://127.8.9.10",
        "http://localhost:4010",
        "http://LOCALHOST",
        "http://[::1]:4010",
        "https://dub.internal",
    ] {
        assert_eq!(build(url), Ok(()), "{url}");
    }
    for url in [
        "http://localhost.example.com",
        "http://127.0.0.1.example.com",
        "http://example.com/127.0.0.1",
        "http://10.0.0.1",
        "http://192.168.1.1",
        "http://169.254.169.254",
        "http://[fe80::1]",
        "http://0.0.0.0",
    ] {
        assert_eq!(build(url), Err(ErrorKind::Config), "{url}");
    }
}
