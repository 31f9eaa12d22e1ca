//! Typed errors from real HTTP responses, validation before sending, and token redaction.

use crate::support;

use crate::support::{TOKEN, client, lead, lead_builder, refused_url};
use dub::models::{LeadMode, TrackLeadRequest, TrackSaleRequest};
use dub::{Dub, ErrorKind};
use serde_json::json;

#[tokio::test]
async fn every_documented_status_maps_to_its_kind() {
    let cases = [
        (400, "bad_request", ErrorKind::BadRequest),
        (401, "unauthorized", ErrorKind::Unauthorized),
        (403, "forbidden", ErrorKind::Forbidden),
        (404, "not_found", ErrorKind::NotFound),
        (409, "conflict", ErrorKind::Conflict),
        (410, "invite_expired", ErrorKind::InviteExpired),
        (422, "unprocessable_entity", ErrorKind::UnprocessableEntity),
        (429, "rate_limit_exceeded", ErrorKind::RateLimitExceeded),
        (500, "internal_server_error", ErrorKind::InternalServerError),
    ];
    for (status, code, kind) in cases {
        let server = support::mock_with([
            support::error(status, code, "It went wrong.").header("x-ratelimit-remaining", "7")
        ])
        .await;
        let err = no_retries(&server).track().lead(lead()).await.unwrap_err();
        assert_eq!(err.kind(), kind);
        // The kind's JSON name is Dub's error code for the status.
        assert_eq!(kind.as_str(), code);
        assert_eq!(ErrorKind::from_name(code), Some(kind));
        assert_eq!(err.status().unwrap().as_u16(), status);
        assert_eq!(err.code(), Some(code));
        assert_eq!(err.message(), Some("It went wrong."));
        assert_eq!(
            err.doc_url(),
            Some(format!("https://dub.co/docs/api-reference/errors#{code}").as_str())
        );
        assert_eq!(err.headers().unwrap()["x-ratelimit-remaining"], "7");
        assert_eq!(err.attempts(), 1);
        assert!(err.raw_body().unwrap().starts_with(b"{\"error\""));
        assert_eq!(err.operation(), Some("track.lead"));
        // 4xx: Dub refused it; 5xx: unknown.
        assert_eq!(err.may_have_been_recorded(), status >= 500, "{status}");
        let line = err.to_string();
        assert!(!line.contains('\n'));
        assert!(
            line.contains(&status.to_string())
                && line.contains(code)
                && line.contains("It went wrong."),
            "{line}"
        );
    }
}

/// A client of `server` that makes one attempt a call, so each scripted reply is the answer.
fn no_retries(server: &dub::mock::MockDub) -> Dub {
    client(&server.url())
        .retry_config(dub::RetryConfig::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn undocumented_502_with_html_keeps_status_and_excerpt() {
    let html = "<html><body><h1>502 Bad Gateway</h1></body></html>";
    let server =
        support::mock_with([support::raw(502, html).header("content-type", "text/html")]).await;
    let err = no_retries(&server)
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(5)
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnexpectedStatus);
    assert_eq!(err.status().unwrap().as_u16(), 502);
    assert_eq!(err.code(), None);
    assert_eq!(err.raw_body(), Some(html.as_bytes()));
    assert!(err.message().unwrap().contains("502 Bad Gateway"));
    assert!(err.is_retryable());
    assert!(err.may_have_been_recorded());
}

#[tokio::test]
async fn html_on_a_documented_status_keeps_the_status() {
    let server = support::mock_with([support::raw(500, "<h1>oops</h1>")]).await;
    let err = no_retries(&server).track().lead(lead()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InternalServerError);
    assert_eq!(err.status().unwrap().as_u16(), 500);
    assert_eq!(err.raw_body(), Some(&b"<h1>oops</h1>"[..]));
}

#[tokio::test]
async fn empty_500() {
    let server = support::mock_with([support::raw(500, "")]).await;
    let err = no_retries(&server).track().lead(lead()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InternalServerError);
    assert_eq!(err.raw_body(), Some(&b""[..]));
    assert!(err.to_string().contains("500"), "{err}");
}

#[tokio::test]
async fn malformed_200_is_a_decode_error_that_says_it_was_recorded() {
    let server = support::mock_with([support::raw(200, "{\"click\": ")]).await;
    let err = no_retries(&server).track().lead(lead()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert_eq!(err.status().unwrap().as_u16(), 200);
    assert_eq!(err.raw_body(), Some(&b"{\"click\": "[..]));
    assert!(err.may_have_been_recorded());
    assert!(err.to_string().contains("200"), "{err}");
}

#[tokio::test]
async fn success_with_unknown_fields() {
    let mut body = support::lead_body();
    body["surprise"] = json!(true);
    let server = support::mock_with([support::json(200, body)]).await;
    let res = no_retries(&server).track().lead(lead()).await.unwrap();
    assert_eq!(res.customer.external_id.as_deref(), Some("user_42"));
}

#[tokio::test]
async fn validation_fails_before_sending() {
    let server = support::mock_with([]).await;
    let dub = no_retries(&server);
    let long = |n| "x".repeat(n);
    let leads = [
        (
            lead_builder().customer_email("not-an-email").build(),
            "customerEmail",
        ),
        (
            lead_builder()
                .customer_email(format!("{}@example.com", long(95)))
                .build(),
            "customerEmail",
        ),
        (
            lead_builder().customer_name(long(101)).build(),
            "customerName",
        ),
        (lead_builder().event_quantity(0).build(), "eventQuantity"),
        (lead_builder().event_quantity(101).build(), "eventQuantity"),
        (
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name("")
                .customer_external_id("u")
                .build(),
            "eventName",
        ),
        (
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name(long(256))
                .customer_external_id("u")
                .build(),
            "eventName",
        ),
        (
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name("e")
                .customer_external_id("")
                .build(),
            "customerExternalId",
        ),
        (
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name("e")
                .customer_external_id(long(101))
                .build(),
            "customerExternalId",
        ),
        (
            lead_builder().metadata_entry("blob", long(10_000)).build(),
            "metadata",
        ),
    ];
    for (req, field) in leads {
        let err = dub.track().lead(req).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert_eq!(err.field(), Some(field));
        assert!(err.to_string().contains(field), "{err}");
        assert!(!err.may_have_been_recorded());
        assert_eq!(err.attempts(), 0);
    }
    let sales = [
        (
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(1 << 53)
                .build(),
            "amount",
        ),
        (
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(u64::MAX)
                .build(),
            "amount",
        ),
        (
            TrackSaleRequest::builder()
                .customer_external_id("")
                .amount(1)
                .build(),
            "customerExternalId",
        ),
        (
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(1)
                .event_name(long(256))
                .build(),
            "eventName",
        ),
        (
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(1)
                .customer_email("a@b")
                .build(),
            "customerEmail",
        ),
    ];
    for (req, field) in sales {
        let err = dub.track().sale(req).await.unwrap_err();
        assert_eq!(
            (err.kind(), err.field()),
            (ErrorKind::Validation, Some(field))
        );
    }
    // Limits themselves are accepted; lengths count UTF-16 units like the server.
    dub.track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name(long(255))
                .customer_external_id(long(100))
                .event_quantity(100)
                .build(),
        )
        .await
        .unwrap();
    dub.track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount((1 << 53) - 1)
                .build(),
        )
        .await
        .unwrap();
    let err = dub
        .track()
        .lead(
            TrackLeadRequest::builder()
                .click_id("c")
                .event_name("e")
                .customer_external_id("😀".repeat(51))
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("customerExternalId"));
    assert_eq!(
        server.request_count(),
        2,
        "only the two valid calls reached the server"
    );
}

#[tokio::test]
async fn config_errors_send_nothing() {
    let server = support::mock_with([]).await;
    let empty = Dub::new("");
    let err = empty.track().lead(lead()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().unwrap().contains("token"));
    assert!(Dub::builder().token("  ").build().is_err());
    assert_eq!(
        Dub::builder().build().unwrap_err().kind(),
        ErrorKind::Config
    );
    let dub = no_retries(&server);
    let err = dub
        .track()
        .lead(lead())
        .header("bad header", "v")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = dub
        .track()
        .lead(lead())
        .server_url("http://example.com")
        .await
        .unwrap_err();
    assert!(err.message().unwrap().contains("http"), "{err}");
    let err = dub
        .track()
        .lead(lead())
        .server_url("ftp://127.0.0.1")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(server.request_count(), 0);
    // Plain http to another host only when explicitly allowed.
    assert!(
        Dub::builder()
            .token(TOKEN)
            .server_url("http://dub.internal")
            .build()
            .is_err()
    );
    assert!(
        Dub::builder()
            .token(TOKEN)
            .server_url("http://dub.internal")
            .allow_insecure_http(true)
            .build()
            .is_ok()
    );
}

#[tokio::test]
async fn per_call_server_url_and_timeout() {
    let slow = support::mock_with([
        support::json(200, support::lead_body()).delay(std::time::Duration::from_secs(5))
    ])
    .await;
    let other = support::mock_with([]).await;
    let dub = no_retries(&slow);
    dub.track()
        .lead(lead())
        .server_url(other.url())
        .await
        .unwrap();
    assert_eq!((slow.request_count(), other.request_count()), (0, 1));
    let err = dub
        .track()
        .lead(lead())
        .attempt_timeout(std::time::Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_timeout());
    assert!(err.may_have_been_recorded());
}

#[tokio::test]
async fn connection_refused_is_connect_and_not_recorded() {
    let dub = Dub::builder()
        .token(TOKEN)
        .server_url(refused_url().await)
        .retry_config(dub::RetryConfig::none())
        .build()
        .unwrap();
    let err = dub
        .track()
        .sale(
            TrackSaleRequest::builder()
                .customer_external_id("u")
                .amount(1)
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert!(!err.may_have_been_recorded());
    assert!(err.status().is_none());
}

#[tokio::test]
async fn the_token_never_shows() {
    let server =
        support::mock_with([support::error(401, "unauthorized", "Invalid API key.")]).await;
    let dub = no_retries(&server);
    let builder = Dub::builder().token(TOKEN);
    let mut shown = vec![
        format!("{dub:?}"),
        format!("{:?}", dub.track()),
        format!("{builder:?}"),
    ];
    shown.push(format!("{:?}", dub.track().lead(lead())));
    let errors = [
        dub.track().lead(lead()).await.unwrap_err(),
        dub.track()
            .lead(
                lead_builder()
                    .mode(LeadMode::Wait)
                    .customer_email("bad")
                    .build(),
            )
            .await
            .unwrap_err(),
        Dub::builder()
            .token(format!("{TOKEN}\n{TOKEN}"))
            .build()
            .unwrap_err(),
        Dub::builder()
            .token(TOKEN)
            .server_url("http://example.com")
            .build()
            .unwrap_err(),
        Dub::new(format!("{TOKEN}\u{7f}"))
            .track()
            .lead(lead())
            .await
            .unwrap_err(),
        Dub::builder()
            .token(TOKEN)
            .server_url(refused_url().await)
            .build()
            .unwrap()
            .track()
            .lead(lead())
            .retry_config(dub::RetryConfig::none())
            .await
            .unwrap_err(),
    ];
    for e in &errors {
        shown.push(format!("{e}"));
        shown.push(format!("{e:?}"));
        shown.push(format!("{e:#?}"));
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            shown.push(format!("{s} {s:?}"));
            source = s.source();
        }
    }
    for text in shown {
        assert!(
            !text.contains(TOKEN) && !text.contains("mock_token"),
            "token leaked: {text}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_sales_lead_not_found_is_the_lead_race_and_no_other_404_is() {
    use dub::RetryConfig;
    use dub::mock::{Fault, MockDub};
    use std::time::Duration;
    let mock = MockDub::builder()
        .lead_race(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let dub = Dub::builder()
        .token(mock.token())
        .server_url(mock.url())
        .retry_config(RetryConfig::none())
        .build()
        .unwrap();
    dub.track()
        .lead(support::lead_for("u1").build())
        .await
        .unwrap();
    let sale = support::sale_for("u1", Some("in_1"));
    let e = dub.track().sale(sale.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.is_lead_race(), "{e}");
    assert!(!e.may_have_been_recorded());
    // Any other 404 is not the race.
    mock.push_fault(Fault::Status(404));
    let e = dub.track().sale(sale).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(!e.is_lead_race(), "{e}");
    mock.push_fault(Fault::Status(404));
    let e = dub
        .track()
        .lead(support::lead_for("u2").build())
        .await
        .unwrap_err();
    assert!(!e.is_lead_race(), "{e}");
}

#[tokio::test]
async fn an_error_as_json_has_one_shape() {
    let server =
        support::mock_with([support::error(400, "bad_request", "clickId is wrong.")]).await;
    let err = no_retries(&server).track().lead(lead()).await.unwrap_err();
    assert_eq!(
        err.to_json(),
        json!({"kind": "bad_request", "operation": "track.lead", "status": 400,
               "code": "bad_request", "message": "clickId is wrong.", "attempts": 1,
               "mayHaveBeenRecorded": false})
    );
    let invalid = TrackSaleRequest::builder()
        .customer_external_id("")
        .amount(1)
        .build()
        .validate()
        .unwrap_err();
    let json = invalid.to_json();
    assert_eq!(json["kind"], "validation");
    assert_eq!(json["field"], "customerExternalId");
    assert!(json.get("status").is_none(), "{json}");
    // The spools written before this encoding named kinds by their Rust names.
    assert_eq!(
        ErrorKind::from_name("RateLimitExceeded"),
        Some(ErrorKind::RateLimitExceeded)
    );
    assert_eq!(ErrorKind::from_name("nonsense"), None);
}
