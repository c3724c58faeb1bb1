//! `GET /api/sse`: the live event stream.
//!
//! The stream starts with a jittered `retry:`, then (when the client names a
//! last position) the changes it missed or one `resync`, then live changes and
//! heartbeats, each framed once by the hub. It never answers an error status:
//! `EventSource` gives up for good on one.
//!
//! On HTTP/1.1 the handler takes the connection over from hyper (see [`crate::net`]): the
//! stream is then written by a small task of its own straight to the socket, with a write
//! deadline. Elsewhere (HTTP/1.0, HTTP/2) hyper writes the same frames as a streamed body.

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::{Buf, Bytes};
use futures::stream::{self, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::{Beat, Frame, Hub, LiveEvent};
use crate::metrics::bump;
use crate::net::ConnInfo;
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
    let retry = Frame::new(&format!("retry: {}\n\n", rand::random_range(RETRY_MS)));
    let Some(guard) = ClientGuard::admit(&state.sse_clients, state.config.max_clients) else {
        // Over the limit: a 200 with only `retry:` makes the browser come back later, where an
        // error status would make it give up.
        bump(&state.hub.metrics().streams_refused);
        let body = stream::once(async move { Ok::<_, Infallible>(retry.text()) });
        return event_stream(Body::from_stream(body));
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
    let client = Client {
        hub: state.hub.clone(),
        last_event_id,
        retry,
        guard,
        shutdown: state.shutdown.clone(),
    };
    match connection {
        Some(Extension(ConnectInfo(connection))) if version == Version::HTTP_11 => {
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
        _ => event_stream(client.into_body()),
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

/// One admitted stream, before it is subscribed.
struct Client {
    hub: Hub,
    last_event_id: Option<String>,
    retry: Frame,
    /// Holds the stream's `SSE_MAX_CLIENTS` slot for as long as the stream lives.
    guard: ClientGuard,
    shutdown: CancellationToken,
}

impl Client {
    /// Writes the stream to a socket taken over from hyper: the response head, `retry:`, then
    /// the feed, as HTTP/1.1 chunks. Ends when the client leaves (or sends anything: it has
    /// nothing more to say on this connection), falls a buffer behind (after a `resync`), or
    /// accepts none of its pending bytes for `write_timeout`; or when the server shuts down.
    async fn write_to(self, socket: TcpStream, head: Bytes, write_timeout: Duration) {
        let Self {
            hub,
            last_event_id,
            retry,
            guard,
            shutdown,
        } = self;
        let metrics = Arc::clone(hub.metrics());
        let writer = SocketWriter {
            socket,
            timeout: write_timeout,
        };
        let written = async {
            writer.write(head).await?;
            writer.write(retry.chunk()).await?;
            // Boxed: subscribing may replay from the database, a large future that the task
            // would otherwise carry for its whole life.
            let subscribe = Box::pin(Feed::subscribe(hub, last_event_id.as_deref()));
            let mut feed = tokio::select! {
                feed = subscribe => feed,
                () = writer.peer_gone() => return Err(Cut::Gone),
            };
            while let Some(frame) = tokio::select! {
                frame = feed.next() => frame,
                () = writer.peer_gone() => return Err(Cut::Gone),
            } {
                writer.write(frame.chunk()).await?;
            }
            Ok(())
        };
        let ended = tokio::select! {
            ended = written => ended,
            () = shutdown.cancelled() => Ok(()),
        };
        match ended {
            // The server ended it (lag, shutdown): end the body cleanly, if it fits.
            Ok(()) => {
                let _ = writer.socket.try_write(CHUNKED_END);
            }
            Err(Cut::TimedOut) => bump(&metrics.cut_off_write_timeout),
            Err(Cut::Gone) => {}
        }
        drop(guard);
    }

    /// The stream as a body hyper frames (HTTP/1.0, HTTP/2).
    fn into_body(self) -> Body {
        let Self {
            hub,
            last_event_id,
            retry,
            guard,
            shutdown,
        } = self;
        let subscribed = stream::once(async move {
            let feed = Feed::subscribe(hub, last_event_id.as_deref()).await;
            stream::unfold(feed, |mut feed| async move {
                let frame = feed.next().await?;
                Some((frame, feed))
            })
        })
        .flatten();
        let frames = stream::once(async move { retry })
            .chain(subscribed)
            // The guard lives as long as the body: dropping the response frees the slot.
            .map(move |frame| {
                let _ = &guard;
                Ok::<_, Infallible>(frame.text())
            })
            .take_until(async move { shutdown.cancelled().await });
        Body::from_stream(frames)
    }
}

/// A subscribed stream: the backlog, then live changes (skipping those already in the
/// backlog) and heartbeats. A client that fell a whole buffer behind gets `resync` (its id the
/// feed's current position, so a reconnect does not replay what the refetch already covers)
/// and the feed ends.
struct Feed {
    hub: Hub,
    backlog: std::vec::IntoIter<Arc<LiveEvent>>,
    live: Option<tokio::sync::broadcast::Receiver<Beat>>,
    /// The backlog's last position, until a live event passes it.
    after: Option<String>,
}

impl Feed {
    async fn subscribe(hub: Hub, last_event_id: Option<&str>) -> Self {
        let subscription = hub.subscribe(last_event_id).await;
        Self {
            hub,
            backlog: subscription.backlog.into_iter(),
            live: Some(subscription.live),
            after: subscription.after,
        }
    }

    /// The next frame to send; `None` once the feed ended. Cancel-safe.
    async fn next(&mut self) -> Option<Frame> {
        if let Some(event) = self.backlog.next() {
            return Some(event.frame().clone());
        }
        loop {
            let received = self.live.as_mut()?.recv().await;
            match received {
                Ok(Beat::Heartbeat(frame)) => return Some(frame),
                Ok(Beat::Event(event)) => {
                    let duplicate = !event.is_resync()
                        && self
                            .after
                            .as_deref()
                            .is_some_and(|after| event.token() <= after);
                    if !duplicate {
                        // Once past the backlog's end, later events cannot repeat it: the
                        // comparison stops (it ran per event per client).
                        if self
                            .after
                            .as_deref()
                            .is_some_and(|after| event.token() > after)
                        {
                            self.after = None;
                        }
                        return Some(event.frame().clone());
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    self.live = None;
                    bump(&self.hub.metrics().cut_off_lag);
                    return Some(self.hub.resync_now().frame().clone());
                }
                Err(RecvError::Closed) => {
                    self.live = None;
                    return None;
                }
            }
        }
    }
}

/// Why a stream written to its socket was cut.
enum Cut {
    /// The client left, or the socket failed.
    Gone,
    /// Bytes were pending and the socket accepted none of them for the write timeout.
    TimedOut,
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
                        Ok(Err(_)) => return Err(Cut::Gone),
                        Ok(Ok(())) => {}
                    }
                }
                Err(_) => return Err(Cut::Gone),
            }
        }
        Ok(())
    }

    /// Completes when the peer closed the connection or sent anything.
    async fn peer_gone(&self) {
        let mut scratch = [0u8; 8];
        loop {
            if self.socket.readable().await.is_err() {
                return;
            }
            match self.socket.try_read(&mut scratch) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => return,
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

/// Counts an open event stream; releases its slot when dropped.
#[derive(Debug)]
struct ClientGuard(Arc<AtomicUsize>);

impl ClientGuard {
    fn admit(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let admitted = count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| Self(Arc::clone(count)))
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            last_event_id: None,
            retry: Frame::new("retry: 1000\n\n"),
            guard: ClientGuard::admit(&Arc::new(AtomicUsize::new(0)), 1).expect("room"),
            shutdown: shutdown.clone(),
        };
        let task = client.write_to(socket, Bytes::new(), Duration::from_secs(1));
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "the stream's future is {size} bytes");
        shutdown.cancel();
    }

    #[test]
    fn guard_counts_and_limits() {
        let count = Arc::new(AtomicUsize::new(0));
        let first = ClientGuard::admit(&count, 1).expect("room");
        assert!(ClientGuard::admit(&count, 1).is_none());
        drop(first);
        assert!(ClientGuard::admit(&count, 1).is_some());
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }
}
