//! The rules for the options a client and a single call both take: the server URL and extra
//! headers. [`DubBuilder`](crate::DubBuilder) applies them once, `TrackCall` per call.

use reqwest::header::{HeaderName, HeaderValue};

use crate::error::{Error, Result};

/// Headers the crate sets itself; a caller's value would break the request or its
/// authentication, so `DubBuilder::default_header` and `TrackCall::header` refuse them.
const RESERVED_HEADERS: [&str; 9] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "content-type",
    "connection",
    "user-agent",
    "accept",
    "api-version",
];

/// Parses a header, naming the culprit if it cannot be sent or belongs to the crate.
pub(crate) fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue)> {
    let n = HeaderName::try_from(name)
        .map_err(|_| Error::config(format!("{name:?} is not a valid header name")))?;
    if RESERVED_HEADERS.contains(&n.as_str()) {
        return Err(Error::config(format!(
            "the header {name} is set by the crate and cannot be overridden"
        )));
    }
    let v = HeaderValue::try_from(value)
        .map_err(|_| Error::config(format!("the value of header {name} is not valid")))?;
    Ok((n, v))
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether requests to `base_url` (already checked) go in clear text to this machine.
pub(crate) fn is_plain_http_loopback(base_url: &str) -> bool {
    base_url.starts_with("http://") && url::Url::parse(base_url).is_ok_and(|u| is_loopback(&u))
}

/// A URL for messages: without user info, which may hold a password.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// Whether this build can speak TLS (feature `rustls` or `native-tls`).
const TLS: bool = cfg!(any(feature = "rustls", feature = "native-tls"));

/// Checks a server URL and returns it without a trailing slash.
pub(crate) fn check_url(url: &str, allow_insecure_http: bool) -> Result<String> {
    check_url_with(url, allow_insecure_http, TLS)
}

fn check_url_with(url: &str, allow_insecure_http: bool, tls: bool) -> Result<String> {
    let parsed = url::Url::parse(url.trim()).map_err(|e| {
        Error::config(format!(
            "server URL {:?} is not a URL: {e}",
            url.chars().take(200).collect::<String>()
        ))
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::config(format!(
            "server URL {} must not contain a user name or password; the API token is the \
             only credential sent",
            redact_url(url.trim())
        )));
    }
    let shown = parsed.as_str();
    match parsed.scheme() {
        "https" if !tls => {
            return Err(Error::config(
                "this build of dub has no TLS backend, so https cannot be used: enable the \
                 `rustls` (default) or `native-tls` feature of the dub crate",
            ));
        }
        "https" => {}
        "http" if is_loopback(&parsed) || allow_insecure_http => {}
        "http" => {
            return Err(Error::config(format!(
                "server URL {shown:?} is plain http to a host that is not loopback; the token \
                 would travel unencrypted (use https, or allow_insecure_http(true))"
            )));
        }
        other => {
            return Err(Error::config(format!(
                "server URL scheme {other:?} is not http(s)"
            )));
        }
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::config(format!(
            "server URL {shown:?} must not have a query or fragment"
        )));
    }
    Ok(shown.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_without_a_tls_backend_says_which_feature_to_enable() {
        let e = check_url_with("https://api.dub.co", false, false).unwrap_err();
        let message = e.message().unwrap();
        assert!(
            message.contains("`rustls`") && message.contains("`native-tls`"),
            "{message}"
        );
        // Plain http to this machine (a local MockDub) needs no TLS.
        assert!(check_url_with("http://127.0.0.1:1", false, false).is_ok());
    }

    #[test]
    fn urls_are_trimmed_as_urls_and_user_info_is_refused_unechoed() {
        assert_eq!(
            check_url("http://127.0.0.1:9/\n", false).unwrap(),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            check_url("http://127.0.0.1:9/api/ ", false).unwrap(),
            "http://127.0.0.1:9/api"
        );
        let e = check_url("https://ada:s3cret@api.dub.co", false).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("ada"),
            "{shown}"
        );
        assert!(shown.contains("user name or password"), "{shown}");
    }

    #[test]
    fn headers_the_crate_owns_are_refused_by_name() {
        for name in [
            "Authorization",
            "content-length",
            "Transfer-Encoding",
            "Host",
            "Content-Type",
        ] {
            let e = header(name, "x").unwrap_err();
            assert!(e.message().unwrap().contains(name), "{e}");
        }
        assert!(header("x-request-id", "abc").is_ok());
    }
}
