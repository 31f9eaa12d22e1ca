//! A web server's sign-up handler that records the lead with Dub without waiting for Dub.
//!
//! `cargo run --example signup_handler` serves `POST /signup` on 127.0.0.1 with plain hyper,
//! posts a few sign-ups to itself, and shuts down; the handler hands each lead to a background
//! [`dub::Tracker`] and answers at once, however slow or unavailable Dub is. Without
//! `DUB_API_KEY` it talks to a local `MockDub` that is down for the first second, to show the
//! tracker carrying leads through an outage.
//!
//! `cargo run --example signup_handler -- --serve` keeps serving until Ctrl-C or SIGTERM (what
//! systemd, Docker and Kubernetes send to stop a service), then shuts the tracker down: what it
//! cannot deliver by the deadline comes back in the report instead of being lost with the
//! process.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dub::mock::{Fault, MockDub, RandomFaults};
use dub::models::TrackLeadRequest;
use dub::{Dub, Tracker};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// The handler: read the sign-up, hand the lead over, answer. The only await on the tracker is
/// the hand-over, which in memory is immediate.
async fn signup(
    tracker: Tracker,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, text: &str| {
        let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
        *response.status_mut() = status;
        Ok(response)
    };
    let Ok(body) = request.into_body().collect().await else {
        return reply(StatusCode::BAD_REQUEST, "unreadable body");
    };
    let Ok(form) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return reply(StatusCode::BAD_REQUEST, "not JSON");
    };
    let (Some(user), Some(click)) = (form["user_id"].as_str(), form["dub_id"].as_str()) else {
        return reply(StatusCode::BAD_REQUEST, "user_id and dub_id are required");
    };
    // ... create the account here ...
    let lead = TrackLeadRequest::builder()
        .click_id(click)
        .event_name("Sign up")
        .customer_external_id(user)
        .build();
    match tracker.lead(lead).await {
        Ok(receipt) => reply(
            StatusCode::CREATED,
            &format!("welcome, lead {}", receipt.id()),
        ),
        // The queue is full or the event is invalid: the account exists either way; log the
        // conversion (the error carries the event) rather than failing the sign-up.
        Err(e) => {
            eprintln!("lead not queued: {e}");
            reply(StatusCode::CREATED, "welcome")
        }
    }
}

/// Resolves at Ctrl-C (SIGINT) or SIGTERM. A service stopped by SIGTERM without a handler dies
/// at once, and with it whatever its tracker had not delivered yet.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Posts a few sign-ups to the server, as browsers would.
async fn sign_ups(address: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let http = reqwest::Client::new();
    for n in 1..=5 {
        let started = Instant::now();
        let response = http
            .post(format!("http://{address}/signup"))
            .body(format!(r#"{{"user_id":"user_{n}","dub_id":"clk_{n}"}}"#))
            .send()
            .await?;
        println!(
            "sign-up {n}: HTTP {} in {:?} (Dub not awaited)",
            response.status(),
            started.elapsed()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Dub, or a local Dub that refuses connections' worth of requests for a while.
    let (dub, mock) = match Dub::from_env() {
        Ok(dub) => (dub, None),
        Err(_) => {
            let mock = MockDub::start().await?;
            mock.random_faults(RandomFaults::new(7, 1.0).kinds([Fault::Status(503)]));
            let dub = Dub::builder()
                .token(mock.token())
                .server_url(mock.url())
                .build()?;
            (dub, Some(mock))
        }
    };
    let tracker = dub
        .tracker()
        .backoff(Duration::from_millis(200), Duration::from_secs(2))
        .on_outcome(|o| {
            println!(
                "  tracker: {} for {} after {:?}: {}",
                o.event.kind(),
                o.event.customer_external_id(),
                o.age,
                o.outcome.as_str()
            )
        })
        .start()?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = {
        let tracker = tracker.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tracker = tracker.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| signup(tracker.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    };

    if let Some(mock) = mock.clone() {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            mock.clear_faults();
            println!("Dub is back");
        });
    }
    if std::env::args().any(|a| a == "--serve") {
        println!("serving POST http://{address}/signup until Ctrl-C or SIGTERM");
        stop_requested().await;
        println!("stopping");
    } else {
        println!("serving POST http://{address}/signup; Dub is down for the first second");
        tokio::select! {
            done = sign_ups(address) => done?,
            () = stop_requested() => println!("stopping"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    server.abort();
    // Handlers still running hold clones; shutting one down stops them all. The deadline stays
    // inside the time the service manager waits after SIGTERM (30 s in Kubernetes and Docker,
    // 90 s in systemd) before it sends SIGKILL.
    let report = tracker.shutdown(Duration::from_secs(20)).await;
    println!(
        "shut down: {} delivered, {} left undelivered",
        report.stats.delivered,
        report.undelivered.len()
    );
    if let Some(mock) = mock {
        println!("Dub recorded {} leads", mock.leads().len());
    }
    Ok(())
}
