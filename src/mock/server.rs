//! Connections: accepting on 127.0.0.1, HTTP/1.1 through hyper, and the faults that need the
//! socket itself (resets, truncated bodies, header text hyper refuses to send).

use super::MockState;
use super::control;
use super::fault::Fault;
use super::records::ReceivedRequest;
use super::reply::Reply;
use super::rules::Incoming;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming as Body};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Larger request bodies get 413 without being read.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// The default of [`super::MockDubBuilder::idle_timeout`].
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection taken over from hyper may spend writing or draining.
const RAW_IO_LIMIT: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` turns true or its sender is dropped, then closes them.
pub(crate) async fn run(
    listener: TcpListener,
    shared: Arc<MockState>,
    shutdown: watch::Receiver<bool>,
    idle_timeout: Duration,
) {
    let mut connections = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(
                        stream,
                        shared.clone(),
                        shutdown.clone(),
                        idle_timeout,
                    ));
                }
                // Out of descriptors or similar: back off instead of spinning on the error.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Resolves once the server is told to stop or its handle is gone. The watch guard is dropped
/// here, before any await of the caller, since it cannot cross threads.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What a request's handler hands back to its connection instead of a response.
#[derive(Debug)]
enum Takeover {
    /// Close with TCP RST.
    Reset,
    /// Write these bytes as they are, then close.
    Write(Vec<u8>),
}

enum Handled {
    Respond(Reply),
    Takeover(Takeover),
}

async fn connection(
    stream: TcpStream,
    shared: Arc<MockState>,
    mut shutdown: watch::Receiver<bool>,
    idle_timeout: Duration,
) {
    // hyper serves the stream through a handle this task shares: once hyper is dropped
    // mid-request, a fault takes the stream back to reset it or write raw bytes. One
    // descriptor a connection (a second, dup'ed one halved how many clients fit under a
    // descriptor limit).
    let stream = Arc::new(Mutex::new(stream));
    let activity = Arc::new(Activity::new());
    let (takeover_tx, mut takeover_rx) = mpsc::channel(1);
    let service = {
        let shutdown = shutdown.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            respond(
                req,
                shared.clone(),
                takeover_tx.clone(),
                shutdown.clone(),
                activity.clone(),
            )
        })
    };
    let io = TokioIo::new(Tracked {
        stream: stream.clone(),
        activity: activity.clone(),
    });
    // half_close: a client may send its request and then shut its side down while it waits;
    // without it hyper takes the end of input for the end of the connection and never answers.
    let mut conn = Box::pin(
        http1::Builder::new()
            .half_close(true)
            .serve_connection(io, service),
    );
    let takeover = tokio::select! {
        _ = conn.as_mut() => None,
        Some(takeover) = takeover_rx.recv() => Some(takeover),
        _ = stopped(&mut shutdown) => None,
        () = activity.idle_for(idle_timeout) => None,
    };
    // Drops hyper and its handle on the stream; the socket stays open through `stream`.
    drop(conn);
    if let Some(takeover) = takeover
        && let Ok(socket) = Arc::try_unwrap(stream)
    {
        let socket = socket.into_inner().unwrap_or_else(PoisonError::into_inner);
        let _ = tokio::time::timeout(RAW_IO_LIMIT, take_over(takeover, socket)).await;
    }
}

async fn take_over(takeover: Takeover, mut socket: TcpStream) {
    match takeover {
        Takeover::Reset => {
            // With SO_LINGER 0, close() discards the socket with RST instead of FIN.
            // `set_zero_linger` needs tokio 1.50 while the crate allows 1.40; the deprecation
            // is about non-zero lingers blocking on drop, which zero never does.
            #[allow(deprecated)]
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
        Takeover::Write(bytes) => {
            if socket.write_all(&bytes).await.is_ok() && socket.shutdown().await.is_ok() {
                // Closing with unread input sends RST, which can destroy the bytes just written
                // before the client reads them; wait for the client to close first.
                let mut sink = [0u8; 1024];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        }
    }
}

async fn respond(
    req: Request<Body>,
    shared: Arc<MockState>,
    takeover: mpsc::Sender<Takeover>,
    shutdown: watch::Receiver<bool>,
    activity: Arc<Activity>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    if parts.uri.path().starts_with(control::PREFIX) {
        let mut reply = control::answer(parts.method.as_str(), parts.uri.path(), &shared);
        reply.finish();
        if let Some(response) = to_response(&reply) {
            return Ok(response);
        }
    }
    let body = read_body(&parts.headers, body).await;
    // From here the server, not the client, is the one taking its time (a delay fault, say).
    let _busy = activity.busy();
    let request = ReceivedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), lossy(value)))
            .collect(),
        body: body.as_ref().map(Clone::clone).unwrap_or_default(),
        fault: None,
        status: None,
        at: tokio::time::Instant::now(),
    };
    let authorization = parts
        .headers
        .get_all(AUTHORIZATION)
        .iter()
        .map(lossy)
        .collect();
    let (fault, index) = shared.arrive(request.clone());
    let faulted = fault.is_some();
    let log = shared.clone();
    // Processing runs in its own task so that a client hanging up (say, on a timeout during
    // Fault::Delay) does not cancel it: like a real server, the mock finishes the work.
    let work = tokio::spawn(async move {
        let peek = || shared.peek_rate();
        let handle = || match &body {
            Ok(bytes) => shared.handle(&Incoming {
                method: &request.method,
                path: &request.path,
                authorization,
                body: bytes,
            }),
            Err(BodyError::TooLarge) => Reply::status(413),
            Err(BodyError::Unreadable) => {
                Reply::error(400, "bad_request", "The request body could not be read.")
            }
        };
        apply(fault, handle, peek, shutdown).await
    });
    let outcome = work
        .await
        .unwrap_or_else(|_| Handled::Respond(Reply::status(500)));
    let takeover_now = match outcome {
        Handled::Respond(reply) => match to_response(&reply) {
            Some(response) => {
                log.answered(index, reply.status, faulted);
                return Ok(response);
            }
            None => Takeover::Write(raw(&reply, reply.body.len())),
        },
        Handled::Takeover(t) => t,
    };
    let _ = takeover.send(takeover_now).await;
    // The connection task drops this future together with hyper's connection.
    std::future::pending().await
}

/// Runs the fault, or the normal handling when there is none, and adds rate-limit headers
/// where Dub sends them.
async fn apply(
    fault: Option<Fault>,
    handle: impl FnOnce() -> Reply,
    peek: impl FnOnce() -> super::reply::RateLimit,
    mut shutdown: watch::Receiver<bool>,
) -> Handled {
    let mut reply = match fault {
        None => handle(),
        // A 429 is the limiter's answer: it says where the key stands.
        Some(Fault::Status(429)) => Reply {
            rate: Some(peek()),
            ..Reply::status(429)
        },
        Some(Fault::Status(status)) => Reply::status(status),
        Some(Fault::RateLimited(retry_after)) => Reply {
            rate: Some(peek()),
            ..Reply::rate_limited(&retry_after)
        },
        Some(Fault::Delay(delay)) => {
            tokio::select! {
                _ = tokio::time::sleep(delay) => handle(),
                // Shutting down: the request is dropped unprocessed.
                _ = stopped(&mut shutdown) => return Handled::Takeover(Takeover::Reset),
            }
        }
        Some(Fault::ResetBeforeRecord) => return Handled::Takeover(Takeover::Reset),
        Some(Fault::ResetAfterRecord) => {
            handle();
            return Handled::Takeover(Takeover::Reset);
        }
        Some(Fault::ErrorAfterRecord(status)) => Reply {
            rate: handle().rate,
            ..Reply::status(status)
        },
        Some(Fault::TruncatedBody) => {
            let mut reply = handle();
            reply.finish();
            // Announce the full length (at least one byte), send half of it.
            let mut bytes = reply.to_http1(reply.body.len().max(1));
            bytes.extend_from_slice(&reply.body[..reply.body.len() / 2]);
            return Handled::Takeover(Takeover::Write(bytes));
        }
        Some(Fault::NonJsonBody) => {
            // Garbles a success only: a request Dub refused (a 429 of the enforced limit, say)
            // recorded nothing, and a 200 for it would claim it had.
            let handled = handle();
            if (200..300).contains(&handled.status) {
                Reply::html(200)
            } else {
                handled
            }
        }
        Some(Fault::Html(status)) => Reply::html(status),
        Some(Fault::Reply(exact)) => {
            if !exact.delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(exact.delay) => {}
                    _ = stopped(&mut shutdown) => return Handled::Takeover(Takeover::Reset),
                }
            }
            Reply::exact(&exact)
        }
    };
    reply.finish();
    Handled::Respond(reply)
}

/// The reply as hyper sends it, or `None` for what hyper cannot send: a status outside
/// 200..=999 or header text with control characters.
fn to_response(reply: &Reply) -> Option<Response<Full<Bytes>>> {
    let status = StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| !s.is_informational())?;
    let mut builder = Response::builder().status(status);
    for (name, value) in &reply.headers {
        builder = builder.header(
            name.as_ref(),
            HeaderValue::from_bytes(value.as_bytes()).ok()?,
        );
    }
    builder
        .body(Full::new(Bytes::from(reply.body.clone())))
        .ok()
}

/// The reply as raw HTTP/1.1 bytes announcing `content_length` body bytes.
fn raw(reply: &Reply, content_length: usize) -> Vec<u8> {
    let mut bytes = reply.to_http1(content_length);
    bytes.extend_from_slice(&reply.body);
    bytes
}

enum BodyError {
    TooLarge,
    /// The client went away or sent a broken chunked body.
    Unreadable,
}

async fn read_body(headers: &hyper::HeaderMap, body: Body) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Unreadable),
    }
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// When a connection last moved a byte, and whether a request of it is being handled: what
/// the idle timeout looks at. Real time (`std::time::Instant`), not Tokio's clock, so that a
/// test on a paused clock, whose minutes pass in no time, does not see its connections closed.
struct Activity {
    origin: std::time::Instant,
    /// Milliseconds from `origin` to the last byte read or written.
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            origin: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves once nothing has moved for `timeout` while no request was being handled.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.origin.elapsed().saturating_sub(last);
            if quiet >= timeout && self.busy.load(Ordering::Relaxed) == 0 {
                return;
            }
            // A request being handled ends with bytes written, which restarts the count.
            let check_in = timeout.saturating_sub(quiet).max(Duration::from_millis(10));
            tokio::time::sleep(check_in).await;
        }
    }
}

/// A request being handled, until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket hyper serves, shared with its connection task, noting each byte that moves in
/// [`Activity`]. The lock is held only inside a poll, never across an await.
struct Tracked {
    stream: Arc<Mutex<TcpStream>>,
    activity: Arc<Activity>,
}

impl Tracked {
    fn stream(&self) -> MutexGuard<'_, TcpStream> {
        self.stream.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.stream()).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.stream()).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.stream()).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.stream()).poll_shutdown(cx)
    }
}
