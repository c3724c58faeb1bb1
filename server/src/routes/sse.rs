//! `GET /api/sse`: the live event stream.
//!
//! The stream starts with a jittered `retry:`, then (when the client names a
//! last position) the changes it missed or one `resync`, then live changes.
//! It never answers an error status: `EventSource` gives up for good on one.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use app::repo::StreamPosition;
use tokio::sync::watch;

use crate::hub::{LiveEvent, Subscription};
use crate::state::AppState;

/// The browser's reconnect delay is drawn from this range (ms), so that a restart does not bring
/// every browser back in the same instant.
const RETRY_MS: std::ops::Range<u64> = 1000..3000;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/sse", get(sse))
}

/// `?lastEventId=` for clients that cannot set headers (the page's first subscription).
#[derive(Debug, Deserialize)]
struct ResumeQuery {
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

type EventResult = Result<Event, Infallible>;

async fn sse(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ResumeQuery>,
) -> Response {
    if !accepts_event_stream(&headers) {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "this endpoint only serves text/event-stream",
        )
            .into_response();
    }
    let retry = Duration::from_millis(rand::random_range(RETRY_MS));
    let retry_first = stream::once(async move { Ok(Event::default().retry(retry)) });
    let Some(guard) = ClientGuard::admit(&state.sse_clients, state.config.max_clients) else {
        // Over the limit: a 200 with only `retry:` makes the browser come back later, where an
        // error status would make it give up.
        return event_stream(retry_first.boxed(), &state);
    };
    // The header wins: a browser that subscribed with `?lastEventId=` sends its newer
    // Last-Event-ID on every reconnect.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id)
        .filter(|id| !id.is_empty());
    let hub = state.hub.clone();
    let position = state.hub.position();
    let events = stream::once(async move { hub.subscribe(last_event_id.as_deref()).await })
        .flat_map(move |subscription| client_events(subscription, position.clone()))
        // The guard lives as long as the stream: dropping the response frees the slot.
        .map(move |event| {
            let _ = &guard;
            event
        });
    let shutdown = state.shutdown.clone();
    let body = retry_first
        .chain(events)
        .take_until(async move { shutdown.cancelled().await });
    event_stream(body.boxed(), &state)
}

fn event_stream(body: stream::BoxStream<'static, EventResult>, state: &AppState) -> Response {
    let keep_alive = KeepAlive::new()
        .interval(state.config.heartbeat)
        .text("heartbeat");
    (
        [
            (header::CACHE_CONTROL, "no-cache, no-transform"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Sse::new(body).keep_alive(keep_alive),
    )
        .into_response()
}

/// The backlog, then live changes (skipping those already in the backlog); a client that fell
/// a whole buffer behind gets `resync` (its id the feed's current position, so a reconnect does
/// not replay what the refetch already covers) and the stream ends.
fn client_events(
    subscription: Subscription,
    position: watch::Receiver<StreamPosition>,
) -> impl Stream<Item = EventResult> {
    let Subscription {
        backlog,
        live,
        after,
    } = subscription;
    let backlog = stream::iter(backlog.into_iter().map(|e| Ok(to_sse(&e))));
    let live = BroadcastStream::new(live)
        .scan(false, |lagged, item| {
            let out = if *lagged {
                None
            } else {
                match item {
                    Ok(event) => Some(Some(event)),
                    Err(BroadcastStreamRecvError::Lagged(_)) => {
                        *lagged = true;
                        Some(None)
                    }
                }
            };
            futures::future::ready(out)
        })
        .filter_map(move |item| {
            let out = match item {
                Some(event) => match (&*event, after.as_deref()) {
                    (LiveEvent::Change { token, .. }, Some(after)) if token.as_str() <= after => {
                        None
                    }
                    (event, _) => Some(Ok(to_sse(event))),
                },
                // Cut off: tell it to refetch everything.
                None => {
                    let token = position.borrow().token.clone().unwrap_or_default();
                    Some(Ok(to_sse(&LiveEvent::Resync { token })))
                }
            };
            futures::future::ready(out)
        });
    backlog.chain(live)
}

fn to_sse(event: &LiveEvent) -> Event {
    match event {
        LiveEvent::Change { token, data } => {
            Event::default().id(token.as_str()).data(data.as_str())
        }
        LiveEvent::Resync { token } => Event::default()
            .event("resync")
            .id(token.as_str())
            .data("{}"),
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
