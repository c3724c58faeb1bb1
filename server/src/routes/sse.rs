//! `GET /api/sse`: the live event stream.
//!
//! The stream starts with a jittered `retry:`, then (when the client names a
//! last position) the changes it missed or one `resync`, then live changes and
//! heartbeats, each framed once by the hub. It never answers an error status:
//! `EventSource` gives up for good on one. What a stream carries (backlog, duplicates,
//! `resync` on lag) is the hub's [`Feed`](crate::hub::Feed); this file speaks only HTTP.
//!
//! On HTTP/1.1 the handler takes the connection over from hyper (see [`crate::net`]): the
//! stream is then written by a small task of its own straight to the socket, with a write
//! deadline. Elsewhere (HTTP/1.0, HTTP/2) hyper writes the same frames as a streamed body.
//!
//! `HEAD /api/sse` gets the stream's status and headers and no body, at once.

use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::{Buf, Bytes};
use futures::stream::{self, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::ClientAddr;
use crate::hub::{Feed, Frame, Hub};
use crate::metrics::bump;
use crate::net::{self, ConnInfo};
use crate::shares::Slot;
use crate::state::AppState;

/// The browser's reconnect delay is drawn from this range (ms), so that a restart does not bring
/// every browser back in the same instant.
const RETRY_MS: std::ops::Range<u64> = 1000..3000;
/// Ends a chunked body: written when the server ends a stream it frames itself.
const CHUNKED_END: &[u8] = b"0\r\n\r\n";

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/sse", get(sse))
}

async fn sse(
    State(state): State<AppState>,
    connection: Option<Extension<ConnectInfo<ConnInfo>>>,
    ClientAddr(client): ClientAddr,
    method: Method,
    version: Version,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if !accepts_event_stream(&headers) {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "this endpoint only serves text/event-stream",
        )
            .into_response();
    }
    if method == Method::HEAD {
        // The stream's headers and no body, answered by hyper like any other response: no
        // stream slot is taken and the connection is not taken over (a take-over waits for a
        // body's end that a HEAD answer never writes, so the client would get nothing).
        return event_stream(Body::empty());
    }
    let retry = Frame::new(&format!("retry: {}\n\n", rand::random_range(RETRY_MS)));
    let Some(slot) = state.stream_slots.admit(client) else {
        // Over the total or this address's share: a 200 with only `retry:` makes the browser come back later, where an
        // error status would make it give up.
        bump(&state.hub.metrics().streams_refused);
        let body = stream::once(async move { Ok::<_, Infallible>(retry.text()) });
        // Closed after it, so the connection does not go on holding an HTTP slot.
        let mut response = event_stream(Body::from_stream(body));
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    };
    // The header wins: a browser that subscribed with `?lastEventId=` sends its newer
    // Last-Event-ID on every reconnect. Of repeated query parameters the first counts.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            let Query(pairs) = query.ok()?;
            pairs
                .into_iter()
                .find(|(k, _)| k == "lastEventId")
                .map(|(_, v)| v)
        })
        .filter(|id| !id.is_empty());
    match connection {
        Some(Extension(ConnectInfo(connection))) if version == Version::HTTP_11 => {
            let client = Client {
                hub: state.hub.clone(),
                client,
                last_event_id,
                retry,
                slot,
                shutdown: state.shutdown.clone(),
            };
            let write_timeout = state.config.write_timeout;
            let streams = state.streams;
            connection.take_over(Box::new(move |socket, head| {
                // Moved to the streams' runtime: registered again with its reactor there.
                let Ok(socket) = socket.into_std() else {
                    return;
                };
                streams.spawn(async move {
                    if let Ok(socket) = TcpStream::from_std(socket) {
                        client.write_to(socket, head, write_timeout).await;
                    }
                });
            }));
            let mut response = event_stream(Body::from_stream(stream::empty::<
                Result<Bytes, Infallible>,
            >()));
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        _ => {
            let feed = state.hub.feed(last_event_id.as_deref(), client);
            event_stream(body(feed, retry, slot, state.shutdown))
        }
    }
}

/// A `200` event-stream response with the contract's headers and `body`.
fn event_stream(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache, no-transform"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}

/// One admitted stream on a connection taken over from hyper, before it is subscribed.
struct Client {
    hub: Hub,
    /// The client's address: the hub limits replays per address.
    client: Option<IpAddr>,
    last_event_id: Option<String>,
    retry: Frame,
    /// Holds the stream's slot (`SSE_MAX_CLIENTS`, `SSE_MAX_CLIENTS_PER_IP`) for as long as
    /// the stream lives.
    slot: Slot,
    shutdown: CancellationToken,
}

impl Client {
    /// Writes the stream to a socket taken over from hyper: the response head, `retry:`, then
    /// the feed, as HTTP/1.1 chunks. Ends when the client leaves (or sends anything: it has
    /// nothing more to say on this connection), falls a buffer behind (after a `resync`), or
    /// accepts none of its pending bytes for `write_timeout`; or when the server shuts down.
    async fn write_to(self, socket: TcpStream, head: Bytes, write_timeout: Duration) {
        if let Err(e) = net::bound_stream_socket(&socket, write_timeout) {
            tracing::warn!("event stream socket options not set: {e}");
        }
        let writer = SocketWriter {
            socket,
            timeout: write_timeout,
        };
        let written = async {
            writer.write(head).await?;
            writer.write(self.retry.chunk()).await?;
            let mut feed = self.hub.feed(self.last_event_id.as_deref(), self.client);
            while let Some(frame) = tokio::select! {
                frame = feed.next() => frame,
                cut = writer.peer_gone() => return Err(cut),
            } {
                writer.write(frame.chunk()).await?;
            }
            Ok(())
        };
        let ended = tokio::select! {
            ended = written => ended,
            () = self.shutdown.cancelled() => Ok(()),
        };
        match ended {
            // The server ended it (lag, shutdown): end the body cleanly, if it fits.
            Ok(()) => {
                let _ = writer.socket.try_write(CHUNKED_END);
            }
            Err(Cut::TimedOut) => {
                bump(&self.hub.metrics().cut_off_write_timeout);
                // Reset rather than closed: the unread bytes are dropped with the socket
                // instead of being retried to a peer that does not read them.
                let _ = writer.socket.set_zero_linger();
            }
            Err(Cut::Gone) => {}
        }
        // Frees the stream's slot.
        drop(self.slot);
    }
}

/// The stream as a body hyper frames (HTTP/1.0, HTTP/2): `retry:`, then `feed`, until the
/// server shuts down. `slot` lives as long as the body: dropping the response frees it.
fn body(feed: Feed, retry: Frame, slot: Slot, shutdown: CancellationToken) -> Body {
    let subscribed = stream::unfold(feed, |mut feed| async move {
        let frame = feed.next().await?;
        Some((frame, feed))
    });
    let frames = stream::once(async move { retry })
        .chain(subscribed)
        .map(move |frame| {
            let _ = &slot;
            Ok::<_, Infallible>(frame.text())
        })
        .take_until(async move { shutdown.cancelled().await });
    Body::from_stream(frames)
}

/// Why a stream written to its socket was cut.
enum Cut {
    /// The client left, or the socket failed.
    Gone,
    /// Bytes were pending and the socket accepted none of them for the write timeout, or the
    /// kernel gave up on sent data the peer left unacknowledged for as long.
    TimedOut,
}

impl From<&io::Error> for Cut {
    /// A socket error: the kernel's user timeout (sent data unacknowledged for the write
    /// timeout) is [`Cut::TimedOut`], anything else [`Cut::Gone`].
    fn from(error: &io::Error) -> Self {
        if error.kind() == io::ErrorKind::TimedOut {
            Self::TimedOut
        } else {
            Self::Gone
        }
    }
}

/// A taken-over socket: writes with a deadline, and tells when the peer is gone.
struct SocketWriter {
    socket: TcpStream,
    timeout: Duration,
}

impl SocketWriter {
    /// Writes all of `bytes`; fails once the socket accepted none of them for the timeout.
    async fn write(&self, mut bytes: Bytes) -> Result<(), Cut> {
        let mut stalled_since: Option<Instant> = None;
        while !bytes.is_empty() {
            match self.socket.try_write(&bytes) {
                Ok(0) => return Err(Cut::Gone),
                Ok(n) => {
                    bytes.advance(n);
                    stalled_since = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let deadline = *stalled_since.get_or_insert_with(Instant::now) + self.timeout;
                    // Boxed: only a stalled stream pays for a timer.
                    let writable =
                        Box::pin(tokio::time::timeout_at(deadline, self.socket.writable()));
                    match writable.await {
                        Err(_) => return Err(Cut::TimedOut),
                        Ok(Err(e)) => return Err(Cut::from(&e)),
                        Ok(Ok(())) => {}
                    }
                }
                Err(e) => return Err(Cut::from(&e)),
            }
        }
        Ok(())
    }

    /// Completes when the peer closed the connection or sent anything, or the socket failed
    /// (the kernel's user timeout is [`Cut::TimedOut`]).
    async fn peer_gone(&self) -> Cut {
        let mut scratch = [0u8; 8];
        loop {
            if let Err(e) = self.socket.readable().await {
                return Cut::from(&e);
            }
            match self.socket.try_read(&mut scratch) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Cut::from(&e),
                Ok(_) => return Cut::Gone,
            }
        }
    }
}

/// Whether `Accept` admits `text/event-stream` (a missing header admits everything).
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return true;
    };
    let Ok(accept) = accept.to_str() else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
        });
        !refused && matches!(media.as_str(), "text/event-stream" | "text/*" | "*/*")
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::shares::Shares;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn accept_header_is_negotiated() {
        assert!(accepts_event_stream(&HeaderMap::new()));
        assert!(accepts_event_stream(&accept("text/event-stream")));
        assert!(accepts_event_stream(&accept("text/html, */*;q=0.8")));
        assert!(accepts_event_stream(&accept("text/*")));
        assert!(!accepts_event_stream(&accept("application/json")));
        assert!(!accepts_event_stream(&accept("text/event-stream;q=0")));
    }

    /// Every open stream holds its writer task for its whole life: the task must stay small
    /// (subscribing, which may replay from the database, is boxed).
    #[tokio::test]
    async fn a_stream_task_is_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let socket = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let db = mongodb::Client::with_uri_str("mongodb://127.0.0.1:9/")
            .await
            .expect("a client connects lazily")
            .database("realtime");
        let shutdown = CancellationToken::new();
        let hub = Hub::start(db, Arc::default(), Duration::from_secs(5), shutdown.clone());
        let client = Client {
            hub,
            client: None,
            last_event_id: None,
            retry: Frame::new("retry: 1000\n\n"),
            slot: Shares::new(1, 1).admit(None).expect("room"),
            shutdown: shutdown.clone(),
        };
        let task = client.write_to(socket, Bytes::new(), Duration::from_secs(1));
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "the stream's future is {size} bytes");
        shutdown.cancel();
    }
}
