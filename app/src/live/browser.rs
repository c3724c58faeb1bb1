//! The feed in the browser: the `EventSource`, and how the tabs of one browser share it.
//!
//! Every tab joins the channel [`CHANNEL`], says [`Note::Hello`] and asks for the Web Lock
//! [`LOCK`]. The tab that gets it leads: it opens the stream from the newest event id the tabs
//! have passed around (or, with none, the position its own lists were read at), handles each
//! event as a lone tab would and posts it as [`Note::Event`], and posts its stream's state as
//! [`Note::State`] (also in answer to a `Hello`). The other tabs wait in the lock's queue and
//! handle the events the leader posts. A joining tab refetches once if the leader's newest event
//! is past the position its lists were read at. When the leader closes, the browser releases its
//! lock and the next tab in the queue leads, resuming from the last id it was told: nothing is
//! missed, and no event is delivered twice.
//!
//! `use_web_lock` comes from leptos-use; its `use_broadcast_channel` is not used because it
//! hands messages over through a signal, which keeps only the last of several posted in one
//! tick, and every event counts here.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{abortable, AbortHandle};
use futures::StreamExt;
use gloo_net::eventsource::futures::EventSource;
use gloo_net::eventsource::State;
use leptos::prelude::*;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{BroadcastChannel, MessageEvent};

use super::{missed, stream_url, Live, Note, Role, Stale, Status};

/// How often the indicator re-reads the connection state.
const STATUS_POLL: Duration = Duration::from_millis(250);

/// The channel the tabs of one origin talk on.
const CHANNEL: &str = "realtime-feed";

/// The Web Lock held by the tab that reads the stream.
const LOCK: &str = "realtime-feed-leader";

/// Subscribes the page: shares the browser's stream where Web Locks and `BroadcastChannel`
/// exist, else opens one of its own. Everything is closed when the page's owner is cleaned up.
pub(super) fn subscribe(live: Live, rendered: Option<String>) {
    let channel = can_share()
        .then(|| BroadcastChannel::new(CHANNEL).ok())
        .flatten();
    live.role.set(Some(if channel.is_some() {
        Role::Follower
    } else {
        Role::Own
    }));
    let feed = match channel {
        Some(channel) => Feed::Shared {
            _membership: Tab::join(live, rendered, channel),
        },
        None => Feed::Alone {
            _stream: open_stream(
                rendered.as_deref(),
                move |stale, id| live.changed(stale, id),
                move |status| live.status.set(status),
            ),
        },
    };
    let feed = StoredValue::new_local(Some(feed));
    on_cleanup(move || drop(feed.try_update_value(Option::take)));
}

/// What a page holds open (closed when dropped).
enum Feed {
    /// Its own stream (no tab sharing in this browser), if it could be opened.
    Alone { _stream: Option<Stream> },
    /// Its place among the browser's tabs.
    Shared { _membership: Membership },
}

/// Whether this browser has what sharing needs.
fn can_share() -> bool {
    let defined = |target: &JsValue, name: &str| {
        js_sys::Reflect::get(target, &JsValue::from_str(name)).is_ok_and(|v| !v.is_undefined())
    };
    let window = window();
    defined(&window, "BroadcastChannel") && defined(&window.navigator(), "locks")
}

/// An open `EventSource`; closed when dropped.
struct Stream {
    task: AbortHandle,
    poll: Option<IntervalHandle>,
    /// Shared with the poll, whose closure JavaScript may keep alive after it is cleared.
    source: Rc<RefCell<Option<EventSource>>>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(poll) = self.poll.take() {
            poll.clear();
        }
        if let Some(source) = self.source.borrow_mut().take() {
            source.close();
        }
    }
}

/// Opens `/api/sse` after `position`; calls `on_event` with what each event makes stale and
/// its id, and `on_status` whenever the connection state changes.
fn open_stream(
    position: Option<&str>,
    on_event: impl Fn(Stale, Option<String>) + 'static,
    on_status: impl Fn(Status) + 'static,
) -> Option<Stream> {
    let mut source = match EventSource::new(&stream_url(position)) {
        Ok(source) => source,
        Err(e) => {
            leptos::logging::error!("cannot open the event stream: {e:?}");
            return None;
        }
    };
    let (Ok(messages), Ok(resyncs)) = (source.subscribe("message"), source.subscribe("resync"))
    else {
        leptos::logging::error!("cannot subscribe to the event stream");
        return None;
    };
    let source = Rc::new(RefCell::new(Some(source)));
    let current = Rc::new(Cell::new(Status::Connecting));
    let set = Rc::new({
        let current = Rc::clone(&current);
        move |next: Status| {
            if current.replace(next) != next {
                on_status(next);
            }
        }
    });
    // A change makes the list it names stale; a resync, both.
    let mut events = futures::stream::select(messages, resyncs);
    let (task, abort) = abortable({
        let set = Rc::clone(&set);
        async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok((event_type, message)) => {
                        set(Status::Live);
                        let data = message.data().as_string().unwrap_or_default();
                        let id = Some(message.last_event_id()).filter(|id| !id.is_empty());
                        on_event(Stale::of(&event_type, &data), id);
                    }
                    Err(_) => set(Status::Reconnecting),
                }
            }
        }
    });
    leptos::task::spawn_local(async move {
        let _ = task.await;
    });
    // The browser reconnects by itself; the poll notices the state it is in meanwhile.
    let poll = set_interval_with_handle(
        {
            let source = Rc::clone(&source);
            move || {
                let open = source.borrow().as_ref().map(EventSource::state);
                let next = match (open, current.get()) {
                    (Some(State::Open), _) => Status::Live,
                    (_, Status::Connecting) => Status::Connecting,
                    _ => Status::Reconnecting,
                };
                set(next);
            }
        },
        STATUS_POLL,
    )
    .ok();
    Some(Stream {
        task: abort,
        poll,
        source,
    })
}

/// One tab among the browser's tabs (see the module docs).
struct Tab {
    live: Live,
    /// The stream position the page's lists were read at.
    rendered: Option<String>,
    /// The newest event id this tab has seen, from its own stream or a note.
    last: Option<String>,
    /// The leader's stream state, as last heard (this tab's own while it leads).
    status: Status,
    /// Whether the tab has compared its lists' position with the leader's yet.
    checked: bool,
    /// Whether this tab holds the lock and reads the stream.
    leading: bool,
    /// Its stream, while it leads.
    stream: Option<Stream>,
    channel: BroadcastChannel,
}

/// What a tab holds while it is a member; leaving (drop) closes the channel, stops leading and
/// releases the lock.
struct Membership {
    tab: Rc<RefCell<Tab>>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _release: oneshot::Sender<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut tab = self.tab.borrow_mut();
        tab.channel.set_onmessage(None);
        tab.channel.close();
        tab.stream = None;
    }
}

impl Tab {
    /// Joins the browser's tabs: listens on the channel, asks who leads, queues for the lock.
    fn join(live: Live, rendered: Option<String>, channel: BroadcastChannel) -> Membership {
        let tab = Rc::new(RefCell::new(Self {
            live,
            rendered,
            last: None,
            status: Status::Connecting,
            checked: false,
            leading: false,
            stream: None,
            channel,
        }));
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new({
            let tab = Rc::clone(&tab);
            move |message: MessageEvent| {
                let note = message
                    .data()
                    .as_string()
                    .and_then(|text| serde_json::from_str::<Note>(&text).ok());
                if let Some(note) = note {
                    Self::receive(&tab, note);
                }
            }
        });
        {
            let tab = tab.borrow();
            tab.channel
                .set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            tab.post(&Note::Hello);
        }
        let (release, released) = oneshot::channel::<()>();
        let (leader, refused) = (Rc::clone(&tab), Rc::clone(&tab));
        leptos::task::spawn_local(async move {
            let led = leptos_use::use_web_lock(LOCK, move |_lock| async move {
                Self::lead(&leader);
                // Hold the lock until the page leaves (the sender is dropped).
                let _ = released.await;
            })
            .await;
            if let Err(e) = led {
                // Without the lock nobody may ever lead for this tab: read the stream itself.
                leptos::logging::error!(
                    "cannot take the feed lock ({e}); reading the stream alone"
                );
                if !refused.borrow().leading {
                    Self::lead(&refused);
                }
            }
        });
        Membership {
            tab,
            _on_message: on_message,
            _release: release,
        }
    }

    /// Posts `note` to the other tabs.
    fn post(&self, note: &Note) {
        if let Ok(text) = serde_json::to_string(note) {
            if let Err(e) = self.channel.post_message(&JsValue::from_str(&text)) {
                leptos::logging::error!("cannot post to the other tabs: {e:?}");
            }
        }
    }

    /// Records event `id` as the newest seen (ids grow; an older one is ignored).
    fn saw(&mut self, id: Option<&str>) {
        if let Some(id) = id {
            if self.last.as_deref().is_none_or(|last| id > last) {
                self.last = Some(id.to_owned());
            }
        }
    }

    /// Handles a note from another tab.
    fn receive(tab: &Rc<RefCell<Self>>, note: Note) {
        let mut this = tab.borrow_mut();
        let leading = this.leading;
        let live = this.live;
        match note {
            Note::Hello if leading => {
                let state = Note::State {
                    status: this.status,
                    last: this.last.clone(),
                };
                this.post(&state);
            }
            Note::Event { stale, id } if !leading => {
                this.saw(id.as_deref());
                drop(this);
                live.changed(stale, id);
            }
            Note::State { status, last } if !leading => {
                this.status = status;
                let refetch = !this.checked && missed(this.rendered.as_deref(), last.as_deref());
                this.checked = true;
                this.saw(last.as_deref());
                drop(this);
                live.status.set(status);
                if refetch {
                    live.changed(Stale::Both, last);
                }
            }
            _ => {}
        }
    }

    /// Takes the lead: opens the stream after the newest id the tabs saw (else the position the
    /// lists were read at), and passes on what it delivers.
    fn lead(tab: &Rc<RefCell<Self>>) {
        let from = {
            let this = tab.borrow();
            this.last.clone().or_else(|| this.rendered.clone())
        };
        let on_event = {
            let tab = Rc::clone(tab);
            move |stale: Stale, id: Option<String>| {
                let live = {
                    let mut this = tab.borrow_mut();
                    this.saw(id.as_deref());
                    this.post(&Note::Event {
                        stale,
                        id: id.clone(),
                    });
                    this.live
                };
                live.changed(stale, id);
            }
        };
        let on_status = {
            let tab = Rc::clone(tab);
            move |status: Status| {
                let live = {
                    let mut this = tab.borrow_mut();
                    this.status = status;
                    this.post(&Note::State {
                        status,
                        last: this.last.clone(),
                    });
                    this.live
                };
                live.status.set(status);
            }
        };
        let stream = open_stream(from.as_deref(), on_event, on_status);
        let mut this = tab.borrow_mut();
        this.live.role.set(Some(Role::Leader));
        this.checked = true;
        this.leading = true;
        this.stream = stream;
        this.status = Status::Connecting;
        let state = Note::State {
            status: Status::Connecting,
            last: this.last.clone(),
        };
        this.post(&state);
    }
}
