//! The live feed in the browser: one `EventSource` on `/api/sse` per browser. Each
//! change names its collection, and only that list refetches (`resync`: both); a
//! list's refetches are coalesced, at most one in flight and one queued, so a burst
//! of changes costs two requests, not one per change. It never looks at document
//! data.
//!
//! The tabs of one browser share the stream: the tab holding a Web Lock reads it and
//! passes every event to the others over a `BroadcastChannel` ([`Note`]); when it
//! closes, another tab takes the lock and resumes from the last event id the tabs
//! saw. Without Web Locks or `BroadcastChannel` every tab reads its own stream.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::{DEVICES, USERS};

/// Connection state shown by the indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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

/// How a tab gets its events (shown as the indicator's `data-role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It reads its own stream: the browser cannot share one.
    Own,
    /// It reads the stream for every tab of the browser.
    Leader,
    /// Another tab reads the stream and passes the events on.
    Follower,
}

impl Role {
    /// The `data-role` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Own => "own",
            Self::Leader => "leader",
            Self::Follower => "follower",
        }
    }
}

/// Which lists an event makes stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stale {
    /// A change to `users`.
    Users,
    /// A change to `devices`.
    Devices,
    /// `resync`, or an event that names neither list: refetch both.
    Both,
}

impl Stale {
    /// What an event of type `event_type` (`message`, `resync`) with `data` makes stale: the
    /// list its `"collection"` names.
    pub fn of(event_type: &str, data: &str) -> Self {
        if event_type != "message" {
            return Self::Both;
        }
        let collection = data
            .split_once(r#""collection":""#)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(name, _)| name);
        match collection {
            Some(USERS) => Self::Users,
            Some(DEVICES) => Self::Devices,
            _ => Self::Both,
        }
    }
}

/// When one list refetches: a key its resource follows, moved by the changes that name the
/// list and coalesced, so that at most one refetch is in flight and one more is queued.
#[derive(Debug, Clone, Copy)]
pub struct Refetch {
    key: RwSignal<u64>,
    /// (a refetch is in flight, another is queued)
    state: StoredValue<(bool, bool)>,
    /// The newest event id that named the list.
    after: StoredValue<Option<String>>,
}

impl Refetch {
    fn new() -> Self {
        Self {
            key: RwSignal::new(0),
            state: StoredValue::new((false, false)),
            after: StoredValue::new(None),
        }
    }

    /// The resource's source (tracked): it changes when the list must be fetched again.
    pub fn key(&self) -> u64 {
        self.key.get()
    }

    /// The newest event id that made the list stale, for the refetch to name (the server then
    /// serves a snapshot at or after it without asking the database); `None` before any.
    pub fn after(&self) -> Option<String> {
        self.after.try_get_value().flatten()
    }

    /// The list changed at event `id`: fetch it now, or once the fetch in flight is done.
    pub fn stale(&self, id: Option<String>) {
        if id.is_some() {
            self.after.set_value(id);
        }
        let start = self.state.try_update_value(|(in_flight, queued)| {
            if *in_flight {
                *queued = true;
                false
            } else {
                *in_flight = true;
                true
            }
        });
        if start == Some(true) {
            self.key.update(|k| *k += 1);
        }
    }

    /// A fetch of the list finished (called by its fetcher): start the queued one, if any.
    pub fn done(&self) {
        let again = self.state.try_update_value(|(in_flight, queued)| {
            let again = *queued;
            *queued = false;
            *in_flight = again;
            again
        });
        if again == Some(true) {
            self.key.update(|k| *k += 1);
        }
    }
}

/// The feed an ancestor provided with [`Live::provide`]; panics without one (a component
/// placed outside the page that owns the feed).
pub fn use_live() -> Live {
    expect_context::<Live>()
}

/// The live feed's signals, shared through context.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    users: Refetch,
    devices: Refetch,
    status: RwSignal<Status>,
    role: RwSignal<Option<Role>>,
    started: StoredValue<bool>,
}

impl Live {
    /// Creates the feed's signals and provides them as context.
    pub fn provide() -> Self {
        let live = Self {
            users: Refetch::new(),
            devices: Refetch::new(),
            status: RwSignal::new(Status::Connecting),
            role: RwSignal::new(None),
            started: StoredValue::new(false),
        };
        provide_context(live);
        live
    }

    /// When the users list refetches.
    pub fn users(&self) -> Refetch {
        self.users
    }

    /// When the devices list refetches.
    pub fn devices(&self) -> Refetch {
        self.devices
    }

    /// Event `id` arrived: the lists it names are stale.
    #[cfg(feature = "hydrate")]
    fn changed(&self, stale: Stale, id: Option<String>) {
        if stale != Stale::Devices {
            self.users.stale(id.clone());
        }
        if stale != Stale::Users {
            self.devices.stale(id);
        }
    }

    /// The connection state (tracked).
    pub fn status(&self) -> Status {
        self.status.get()
    }

    /// How this tab gets its events, once subscribed (tracked).
    pub fn role(&self) -> Option<Role> {
        self.role.get()
    }

    /// Subscribes to `/api/sse` from `position` (a stream position that covers every rendered
    /// list, see [`covering`]); only the first call does anything, and nothing happens outside
    /// the browser.
    pub fn start(&self, position: Option<&str>) {
        if self.started.get_value() {
            return;
        }
        self.started.set_value(true);
        #[cfg(feature = "hydrate")]
        browser::subscribe(*self, position.map(str::to_owned));
        #[cfg(not(feature = "hydrate"))]
        let _ = position;
    }
}

/// The position to subscribe from when lists were read at `positions`: the oldest, so that a
/// change committed after any of the reads reaches the page (one committed between two reads
/// costs a refetch that finds nothing new). Lists read while the feed had no position are left
/// out.
pub fn covering<'a>(positions: impl IntoIterator<Item = Option<&'a str>>) -> Option<&'a str> {
    positions.into_iter().flatten().min()
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

/// What the tabs of one browser tell each other over their `BroadcastChannel` (one tab reads
/// the stream and leads; see `live/browser.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Note {
    /// The leader's stream delivered event `id`, which makes `stale` stale.
    Event {
        /// The lists it makes stale.
        stale: Stale,
        /// Its id, if it had one.
        id: Option<String>,
    },
    /// The leader's stream state and the newest event id it has seen; sent when the state
    /// changes and in answer to [`Note::Hello`].
    State {
        /// The stream's state.
        status: Status,
        /// The newest event id the leader has seen.
        last: Option<String>,
    },
    /// A tab joined; the leader answers with [`Note::State`].
    Hello,
}

/// Whether a tab whose lists were read at stream position `rendered` must refetch them when it
/// learns that the leader has seen event `last`: a change reached the leader before the tab
/// listened to it.
pub fn missed(rendered: Option<&str>, last: Option<&str>) -> bool {
    match (rendered, last) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(rendered), Some(last)) => rendered < last,
    }
}

#[cfg(feature = "hydrate")]
mod browser;

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
    fn events_name_the_stale_list() {
        let change = |collection: &str| {
            format!(r#"{{"operationType":"insert","collection":"{collection}","id":"ab"}}"#)
        };
        assert_eq!(Stale::of("message", &change("users")), Stale::Users);
        assert_eq!(Stale::of("message", &change("devices")), Stale::Devices);
        assert_eq!(Stale::of("message", &change("other")), Stale::Both);
        // The server leaves out an `_id` whose text is over 1 KiB: the list still refetches.
        let without_id = r#"{"operationType":"insert","collection":"users"}"#;
        assert_eq!(Stale::of("message", without_id), Stale::Users);
        assert_eq!(Stale::of("message", "not json"), Stale::Both);
        assert_eq!(Stale::of("resync", "{}"), Stale::Both);
    }

    #[test]
    fn the_oldest_position_covers_every_list() {
        assert_eq!(covering([Some("0b"), Some("0a")]), Some("0a"));
        assert_eq!(covering([None, Some("0a")]), Some("0a"));
        assert_eq!(covering([None, None]), None);
    }

    #[test]
    fn refetches_are_coalesced() {
        let owner = Owner::new();
        owner.with(|| {
            let refetch = Refetch::new();
            let key = || refetch.key.get_untracked();
            assert_eq!(refetch.after(), None);
            refetch.stale(Some("01".into()));
            assert_eq!(key(), 1, "the first change fetches at once");
            refetch.stale(Some("02".into()));
            refetch.stale(Some("03".into()));
            assert_eq!(key(), 1, "later ones wait for it");
            assert_eq!(
                refetch.after().as_deref(),
                Some("03"),
                "the queued fetch names the newest"
            );
            refetch.done();
            assert_eq!(key(), 2, "one queued fetch follows");
            refetch.done();
            assert_eq!(key(), 2, "nothing more was asked for");
            refetch.stale(None);
            assert_eq!(key(), 3);
            assert_eq!(refetch.after().as_deref(), Some("03"));
        });
    }

    #[test]
    fn a_joining_tab_refetches_only_when_the_leader_is_ahead() {
        assert!(missed(Some("0a"), Some("0b")));
        assert!(missed(None, Some("0b")));
        assert!(!missed(Some("0b"), Some("0b")));
        assert!(!missed(Some("0c"), Some("0b")));
        assert!(!missed(Some("0a"), None));
    }

    #[cfg(any(feature = "ssr", feature = "hydrate"))]
    #[test]
    fn notes_round_trip() {
        for note in [
            Note::Event {
                stale: Stale::Users,
                id: Some("0a".into()),
            },
            Note::State {
                status: Status::Live,
                last: None,
            },
            Note::Hello,
        ] {
            let text = serde_json::to_string(&note).expect("encode");
            assert_eq!(serde_json::from_str::<Note>(&text).expect("decode"), note);
        }
    }

    #[test]
    fn status_names() {
        assert_eq!(Status::Live.as_str(), "live");
        assert_eq!(Status::Reconnecting.as_str(), "reconnecting");
    }
}
