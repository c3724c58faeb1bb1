//! The edge of the server functions (`/_server/*`), in front of Leptos:
//!
//! - a request from another site (`Origin`, `Sec-Fetch-Site`) or naming a foreign `Host` (DNS
//!   rebinding) is refused with `403` before any function runs;
//! - a body larger than [`BODY_LIMIT`] is refused with `413`, and one not whole within
//!   `HTTP_BODY_TIMEOUT_MS` of the request head with `408` (counted from then, however slowly it
//!   trickles); both close the connection, whose body was not read whole;
//! - a write ([`WRITES`]) from a client address that used up its `WRITE_RATE_PER_IP`
//!   ([`crate::rate`]) is refused with `429`, `Retry-After` and "Too many changes; try again in
//!   N s" before it runs; a form posted without WASM (`Accept: text/html`, a `Referer`) is sent
//!   back to the page with that error instead, as Leptos does for the function's own errors.
//!   The client address is [`ClientAddr`] (behind `TRUSTED_PROXIES`, from `X-Forwarded-For`).
//!   A request that did not come through the site's listener (no peer address) is not limited;
//!   the list reads never are;
//! - a body that is not UTF-8 is refused with `400` before Leptos decodes it (every server
//!   function here takes a url-encoded form, which is text; Leptos answers such a body `500`);
//! - a refused write ([`EditError`]) is answered with its own status (400, 404, 409) instead of
//!   the `500` Leptos gives every `Err`. A form posted without WASM still gets Leptos' redirect
//!   back to the page, which shows the error. The `Referer` it is sent back to loses the
//!   `__path`/`__err` of an earlier error first: Leptos appends the new pair, and a page
//!   reads the first.
//!
//! A `Host` is ours when it is an IP address, `localhost`, or listed in `SITE_HOSTS`: a DNS
//! rebinding attack reaches the server under the attacker's own host name, which is none of
//! these. Requests without `Origin` and `Sec-Fetch-Site` (curl, scripts) are not cross-site
//! requests from a browser and pass.

use std::net::IpAddr;

use app::edit::{AddUser, DeleteUser, EditError, EditUser, Problem, SetLock};
use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::header::{
    ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, REFERER, RETRY_AFTER,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use leptos::server_fn::error::ServerFnUrlError;
use leptos::server_fn::ServerFn;

use crate::client::ClientAddr;
use crate::logging;
use crate::metrics::bump;
use crate::rate;
use crate::state::AppState;

/// Where the server functions are mounted.
pub const PREFIX: &str = "/_server/";

/// The largest body a server function accepts: far above any form (four fields of at most 64
/// characters) and far below anything that could hurt.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The server functions that write, limited by `WRITE_RATE_PER_IP`; the list reads are not.
pub const WRITES: [&str; 4] = [
    AddUser::PATH,
    EditUser::PATH,
    DeleteUser::PATH,
    SetLock::PATH,
];

/// The largest error body read back to find its status.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The middleware (see the module docs); requests outside [`PREFIX`] pass untouched.
pub(crate) async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with(PREFIX) {
        return next.run(req).await;
    }
    // The whole body must be here by then, however slowly it trickles.
    let deadline = tokio::time::Instant::now() + state.config.body_timeout;
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .map(str::to_owned);
    if let Some(reason) = cross_site(req.headers(), host.as_deref(), &state.config.site_hosts) {
        tracing::warn!(
            reason,
            path = %logging::client_text(req.uri().path()),
            "cross-site request refused"
        );
        return refuse(Problem::CrossSite);
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > BODY_LIMIT as u64) {
        return closing(refuse(Problem::TooLarge));
    }
    let (mut parts, body) = req.into_parts();
    if let Some(referer) = parts.headers.get(REFERER).and_then(|r| r.to_str().ok()) {
        let cleaned = without_error_info(referer);
        if cleaned != referer {
            if let Ok(value) = HeaderValue::from_str(&cleaned) {
                parts.headers.insert(REFERER, value);
            }
        }
    }
    if let Some(refused) = over_write_rate(&state, &parts) {
        return refused;
    }
    let body = match tokio::time::timeout_at(deadline, to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(body)) => body,
        // The rest of the body is not read: the connection cannot serve another request.
        Ok(Err(_)) => return closing(refuse(Problem::TooLarge)),
        Err(_) => {
            bump(&state.hub.metrics().http_body_timeouts);
            tracing::debug!(
                path = %logging::client_text(parts.uri.path()),
                "request body too slow"
            );
            return closing(
                (
                    StatusCode::REQUEST_TIMEOUT,
                    "The request body did not arrive in time.",
                )
                    .into_response(),
            );
        }
    };
    if std::str::from_utf8(&body).is_err() {
        return refuse(Problem::BadRequest);
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    with_refusal_status(response).await
}

/// The refusal of a write from an address that used up its allowance, if this is one (it
/// takes one write from the allowance otherwise).
fn over_write_rate(state: &AppState, parts: &axum::http::request::Parts) -> Option<Response> {
    let path = parts.uri.path();
    let function = WRITES.into_iter().find(|write| *write == path)?;
    let ClientAddr(peer) = ClientAddr::of(parts, &state.config.trusted_proxies);
    let peer = peer?;
    let wait = state.writes.check(peer).err()?;
    let retry_after = rate::retry_after_secs(wait);
    tracing::debug!(%peer, function, retry_after, "write refused: too fast");
    let error = EditError::new(None, Problem::TooFast { retry_after });
    let accepts_html = parts
        .headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let back = parts
        .headers
        .get(REFERER)
        .and_then(|r| r.to_str().ok())
        .filter(|_| accepts_html)
        .and_then(|referer| {
            ServerFnUrlError::new(function, error.clone())
                .to_url(referer)
                .ok()
        })
        .and_then(|url| HeaderValue::from_str(url.as_str()).ok());
    let mut response = match back {
        // A plain form post: back to the page, which shows the error by the form.
        Some(location) => (StatusCode::FOUND, [(LOCATION, location)]).into_response(),
        None => refuse(error.problem),
    };
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    Some(response)
}

/// Why a request is cross-site, if it is: a `Host` that is not ours, a `Sec-Fetch-Site` other
/// than `same-origin`/`none`, or an `Origin` whose authority differs from `Host`.
pub(crate) fn cross_site(
    headers: &HeaderMap,
    host: Option<&str>,
    site_hosts: &[String],
) -> Option<&'static str> {
    let Some(host) = host.map(str::to_ascii_lowercase) else {
        return Some("no Host");
    };
    if !is_our_host(&host, site_hosts) {
        return Some("foreign Host");
    }
    let text = |value: &HeaderValue| value.to_str().map(str::to_ascii_lowercase).ok();
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(text(site).as_deref(), Some("same-origin" | "none")) {
            return Some("Sec-Fetch-Site");
        }
    }
    if let Some(origin) = headers.get("origin") {
        let authority = text(origin).and_then(|origin| {
            let (_, rest) = origin.split_once("://")?;
            Some(rest.trim_end_matches('/').to_owned())
        });
        if authority.as_deref() != Some(host.as_str()) {
            return Some("Origin");
        }
    }
    None
}

/// Whether `host` (lowercase `name` or `name:port`) names this site: an IP address,
/// `localhost`, or an entry of `site_hosts` (an entry without a port matches any port).
pub(crate) fn is_our_host(host: &str, site_hosts: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<IpAddr>().is_ok(),
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || site_hosts
            .iter()
            .any(|allowed| allowed == host || allowed == name)
}

/// `url` without the query parameters `__path` and `__err` (a form error Leptos put there).
pub(crate) fn without_error_info(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
            !matches!(key, "__path" | "__err")
        })
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// `response`, and the connection closed after it: the request's body was not read whole.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A refusal made here, before Leptos: the status and the JSON body the page decodes.
fn refuse(problem: Problem) -> Response {
    let error = EditError::new(None, problem);
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(error)).into_response()
}

/// Gives a `500` whose body is an [`EditError`] that error's status, and a `500` whose body is
/// a [`ServerFnError`](leptos::server_fn::error::ServerFnError) about the request's arguments
/// (a list read sent a form it cannot decode) `400`: bad input is the client's error.
async fn with_refusal_status(response: Response) -> Response {
    if response.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return response;
    }
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, ERROR_BODY_LIMIT).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if is_json {
        if let Ok(error) = serde_json::from_slice::<EditError>(&bytes) {
            if let Ok(status) = StatusCode::from_u16(error.status()) {
                parts.status = status;
            }
        }
    } else if BAD_ARGUMENTS.iter().any(|kind| bytes.starts_with(kind)) {
        parts.status = StatusCode::BAD_REQUEST;
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// How Leptos encodes a server function's error about its arguments (`Args|…`,
/// `Deserialization|…`).
const BAD_ARGUMENTS: [&[u8]; 2] = [b"Args|", b"Deserialization|"];

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn ip_addresses_localhost_and_listed_names_are_ours() {
        let listed = ["example.com".to_owned(), "app.test:8443".to_owned()];
        for host in [
            "127.0.0.1:3000",
            "10.1.2.3",
            "[::1]:3000",
            "[::1]",
            "localhost:3000",
            "example.com",
            "example.com:80",
            "app.test:8443",
        ] {
            assert!(is_our_host(host, &listed), "{host}");
        }
        for host in [
            "evil.test:3000",
            "app.test:9000",
            "127.0.0.1.evil.test",
            "[evil]",
            "[::1",
            "",
        ] {
            assert!(!is_our_host(host, &listed), "{host}");
        }
    }

    #[test]
    fn earlier_form_errors_are_cut_from_the_referer() {
        assert_eq!(
            without_error_info("http://h/?__path=%2Fx&__err=abc"),
            "http://h/"
        );
        assert_eq!(
            without_error_info("http://h/p?a=1&__err=abc&b=2&__path=x"),
            "http://h/p?a=1&b=2"
        );
        assert_eq!(without_error_info("http://h/p?a=1"), "http://h/p?a=1");
        assert_eq!(without_error_info("http://h/"), "http://h/");
    }

    #[test]
    fn same_origin_requests_pass() {
        let same = headers(&[
            ("origin", "http://127.0.0.1:3000"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(cross_site(&same, Some("127.0.0.1:3000"), &[]), None);
        // Scripts send neither header; a TLS proxy keeps the Host of the https origin.
        assert_eq!(
            cross_site(&HeaderMap::new(), Some("127.0.0.1:3000"), &[]),
            None
        );
        let proxied = headers(&[("origin", "https://example.com")]);
        let listed = ["example.com".to_owned()];
        assert_eq!(cross_site(&proxied, Some("Example.com"), &listed), None);
    }

    #[test]
    fn cross_site_requests_are_named() {
        let host = Some("127.0.0.1:3000");
        let other_origin = headers(&[("origin", "http://evil.test")]);
        assert_eq!(cross_site(&other_origin, host, &[]), Some("Origin"));
        let other_port = headers(&[("origin", "http://127.0.0.1:4000")]);
        assert_eq!(cross_site(&other_port, host, &[]), Some("Origin"));
        let null = headers(&[("origin", "null")]);
        assert_eq!(cross_site(&null, host, &[]), Some("Origin"));
        let fetch = headers(&[("sec-fetch-site", "cross-site")]);
        assert_eq!(cross_site(&fetch, host, &[]), Some("Sec-Fetch-Site"));
        let same_site = headers(&[("sec-fetch-site", "same-site")]);
        assert_eq!(cross_site(&same_site, host, &[]), Some("Sec-Fetch-Site"));
        let rebound = headers(&[("origin", "http://evil.test:3000")]);
        assert_eq!(
            cross_site(&rebound, Some("evil.test:3000"), &[]),
            Some("foreign Host")
        );
        assert_eq!(cross_site(&HeaderMap::new(), None, &[]), Some("no Host"));
    }
}
