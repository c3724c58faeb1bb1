//! The live feed in the browser: one `EventSource` on `/api/sse` that bumps a
//! version signal on every change (and on `resync`); resources keyed on that
//! version refetch. It never looks at document data.

use leptos::prelude::*;

/// Connection state shown by the indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not connected yet (also during SSR).
    Connecting,
    /// The event stream is open.
    Live,
    /// The connection dropped; the browser is reconnecting by itself.
    Reconnecting,
}

impl Status {
    /// The text shown and the `data-state` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Live => "live",
            Self::Reconnecting => "reconnecting",
        }
    }
}

/// The live feed's signals, shared through context.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    version: RwSignal<u64>,
    status: RwSignal<Status>,
    started: StoredValue<bool>,
}

impl Live {
    /// Creates the feed's signals and provides them as context.
    pub fn provide() -> Self {
        let live = Self {
            version: RwSignal::new(0),
            status: RwSignal::new(Status::Connecting),
            started: StoredValue::new(false),
        };
        provide_context(live);
        live
    }

    /// The feed provided by an ancestor.
    pub fn expect() -> Self {
        expect_context::<Self>()
    }

    /// Changes seen so far (tracked): key resources on it to refetch on every change.
    pub fn version(&self) -> u64 {
        self.version.get()
    }

    /// The connection state (tracked).
    pub fn status(&self) -> Status {
        self.status.get()
    }

    /// Subscribes to `/api/sse` from `position` (the stream position of the rendered lists);
    /// only the first call does anything, and nothing happens outside the browser.
    pub fn start(&self, position: Option<&str>) {
        if self.started.get_value() {
            return;
        }
        self.started.set_value(true);
        #[cfg(feature = "hydrate")]
        browser::subscribe(*self, position);
        #[cfg(not(feature = "hydrate"))]
        let _ = position;
    }
}

/// The `/api/sse` URL resuming after `position`.
#[cfg(any(feature = "hydrate", test))]
fn stream_url(position: Option<&str>) -> String {
    match position {
        Some(position) => {
            let mut url = String::from("/api/sse?lastEventId=");
            for byte in position.bytes() {
                if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                    url.push(char::from(byte));
                } else {
                    url.push_str(&format!("%{byte:02X}"));
                }
            }
            url
        }
        None => "/api/sse".to_owned(),
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    use std::time::Duration;

    use futures::future::{abortable, AbortHandle};
    use futures::StreamExt;
    use gloo_net::eventsource::futures::EventSource;
    use gloo_net::eventsource::State;
    use leptos::prelude::*;

    use super::{stream_url, Live, Status};

    /// How often the indicator re-reads the connection state.
    const STATUS_POLL: Duration = Duration::from_millis(250);

    pub(super) fn subscribe(live: Live, position: Option<&str>) {
        let url = stream_url(position);
        let mut source = match EventSource::new(&url) {
            Ok(source) => source,
            Err(e) => {
                leptos::logging::error!("cannot open the event stream: {e:?}");
                return;
            }
        };
        let (Ok(messages), Ok(resyncs)) = (source.subscribe("message"), source.subscribe("resync"))
        else {
            leptos::logging::error!("cannot subscribe to the event stream");
            return;
        };
        // Every change and every resync means "the lists may have changed": refetch.
        let mut events = futures::stream::select(messages, resyncs);
        let (task, abort): (_, AbortHandle) = abortable(async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok(_) => {
                        live.status.set(Status::Live);
                        live.version.update(|v| *v += 1);
                    }
                    Err(_) => live.status.set(Status::Reconnecting),
                }
            }
        });
        leptos::task::spawn_local(async move {
            let _ = task.await;
        });
        // The browser-only EventSource lives in local storage of the reactive arena, so the
        // poller can read its state and cleanup can close it.
        let source = StoredValue::new_local(Some(source));
        let poll = set_interval_with_handle(
            move || {
                let open = source.with_value(|s| s.as_ref().map(EventSource::state));
                let next = match open {
                    Some(State::Open) => Status::Live,
                    _ => match live.status.get_untracked() {
                        Status::Connecting => Status::Connecting,
                        Status::Live | Status::Reconnecting => Status::Reconnecting,
                    },
                };
                if live.status.get_untracked() != next {
                    live.status.set(next);
                }
            },
            STATUS_POLL,
        );
        on_cleanup(move || {
            abort.abort();
            if let Ok(poll) = poll {
                poll.clear();
            }
            if let Some(source) = source.try_update_value(Option::take).flatten() {
                source.close();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_carries_the_position_encoded() {
        assert_eq!(stream_url(None), "/api/sse");
        assert_eq!(
            stream_url(Some("8263AB01")),
            "/api/sse?lastEventId=8263AB01"
        );
        assert_eq!(stream_url(Some("a b&c")), "/api/sse?lastEventId=a%20b%26c");
    }

    #[test]
    fn status_names() {
        assert_eq!(Status::Live.as_str(), "live");
        assert_eq!(Status::Reconnecting.as_str(), "reconnecting");
    }
}
