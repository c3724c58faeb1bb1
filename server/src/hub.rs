//! The live feed: one change stream on the database, fanned out to every
//! connected client.
//!
//! - One task owns the change stream (`users` and `devices`, insert / update /
//!   replace / delete) and publishes each change on a `broadcast` channel,
//!   framed once: every client writes the same bytes.
//!   The channel's ring is the bounded per-client buffer: a client that falls
//!   a whole ring behind is told to `resync` and cut off; the others never wait.
//! - The last [`RECENT`] events are also kept in memory, so a reconnecting
//!   browser is served from memory. Older positions are replayed from the
//!   database with a change stream opened `startAfter` that token, which fills
//!   the ring backwards: reconnects wait their turn, so after a restart a
//!   thousand browsers holding one position cost one replay, not a thousand.
//!   Reconnecting to another instance of the app works the same way.
//! - Event ids are the database's own resume tokens (`_data`). MongoDB's
//!   tokens (and `embedded-db`'s) are hex strings that compare in stream order,
//!   which is what lets a position be located in the recent ring.
//! - When the stream fails, the task reopens it from the last token with
//!   backoff; if the database no longer has that position, every client gets
//!   `resync`.
//! - While no change is published for a heartbeat interval, one heartbeat goes
//!   out on the same channel to every client.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::repo::{StreamPosition, DEVICES, USERS};
use bytes::Bytes;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::Database;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{bump, Metrics};

/// Events kept in memory for reconnecting clients.
pub const RECENT: usize = 10_000;
/// Events a client may fall behind before it is cut off (the broadcast ring).
pub const CLIENT_BUFFER: usize = 1024;
/// Most events the ring holds after a replay from the database; beyond it, `resync`.
const MAX_CATCH_UP: usize = 100_000;
/// How long replayed events stay in the ring beyond [`RECENT`], for the clients queued on them.
const CATCH_UP_HOLD: Duration = Duration::from_secs(60);
/// Longest a replay from the database may take; beyond it, `resync`.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle `getMore` waits on the database; also how often the position advances.
const AWAIT: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Lengths a position may have: mongod's tokens are variable-length hex, `embedded-db`'s are
/// 18 digits. Anything else is answered with `resync` without asking the database.
const POSITION_LEN: std::ops::RangeInclusive<usize> = 2..=4096;
/// How much of a client-sent position a log line shows.
const LOGGED_POSITION: usize = 64;

/// Bytes of one server-sent event, built once and shared by every client: the HTTP/1.1 chunk
/// (`<hex length>\r\n<event>\r\n`), of which the event text is a slice.
#[derive(Debug, Clone)]
pub struct Frame {
    chunk: Bytes,
    text: Range<usize>,
}

impl Frame {
    /// Frames the event text `text` (which ends with its blank line).
    pub fn new(text: &str) -> Self {
        let head = format!("{:x}\r\n", text.len());
        let mut chunk = Vec::with_capacity(head.len() + text.len() + 2);
        chunk.extend_from_slice(head.as_bytes());
        chunk.extend_from_slice(text.as_bytes());
        chunk.extend_from_slice(b"\r\n");
        Self {
            chunk: Bytes::from(chunk),
            text: head.len()..head.len() + text.len(),
        }
    }

    /// The `: heartbeat` comment.
    pub fn heartbeat() -> Self {
        Self::new(": heartbeat\n\n")
    }

    /// The event as an HTTP/1.1 chunk, for a connection this server frames itself.
    pub fn chunk(&self) -> Bytes {
        self.chunk.clone()
    }

    /// The event text alone, for a body that hyper frames.
    pub fn text(&self) -> Bytes {
        self.chunk.slice(self.text.clone())
    }
}

/// A message of the stream: a committed change, or `resync`.
#[derive(Debug)]
pub struct LiveEvent {
    token: String,
    resync: bool,
    frame: Frame,
}

impl LiveEvent {
    /// A committed change: `id:` is its token, `data:` the JSON summary.
    pub fn change(token: String, data: &str) -> Self {
        let frame = Frame::new(&format!("id: {token}\ndata: {data}\n\n"));
        Self {
            token,
            resync: false,
            frame,
        }
    }

    /// The client must refetch everything; `token` is a current position.
    pub fn resync(token: String) -> Self {
        let frame = Frame::new(&format!("event: resync\nid: {token}\ndata: {{}}\n\n"));
        Self {
            token,
            resync: true,
            frame,
        }
    }

    /// The event id.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether this is a `resync`.
    pub fn is_resync(&self) -> bool {
        self.resync
    }

    /// The framed bytes.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }
}

/// What the broadcast channel carries to every client.
#[derive(Debug, Clone)]
pub enum Beat {
    /// A message.
    Event(Arc<LiveEvent>),
    /// Nothing was published for a heartbeat interval: the `: heartbeat` comment.
    Heartbeat(Frame),
}

/// What a subscribing client gets: events it missed, then the live channel.
#[derive(Debug)]
pub struct Subscription {
    /// Events to send first, in order (a `resync` when the position could not be resumed).
    pub backlog: Vec<Arc<LiveEvent>>,
    /// Live events; changes at or before `after` are duplicates of the backlog and skipped.
    pub live: broadcast::Receiver<Beat>,
    /// The position the backlog reaches.
    pub after: Option<String>,
}

/// Handle to the feed; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    events: broadcast::Sender<Beat>,
    position: watch::Sender<StreamPosition>,
    recent: Mutex<Recent>,
    /// Held while a replay from the database fills the ring; reconnects queue on it.
    replaying: tokio::sync::Mutex<()>,
    open: AtomicBool,
    metrics: Arc<Metrics>,
}

/// The recent-events ring and the position just before its first entry.
#[derive(Debug, Default)]
struct Recent {
    events: VecDeque<Arc<LiveEvent>>,
    floor: Option<String>,
    /// Until then the ring keeps replayed events beyond [`RECENT`] (up to [`MAX_CATCH_UP`]).
    hold_until: Option<Instant>,
}

impl Recent {
    /// Drops the oldest events beyond the ring's current capacity, moving the floor up.
    fn trim(&mut self) {
        let held = self.hold_until.is_some_and(|until| Instant::now() < until);
        let capacity = if held { MAX_CATCH_UP } else { RECENT };
        while self.events.len() > capacity {
            if let Some(evicted) = self.events.pop_front() {
                self.floor = Some(evicted.token().to_owned());
            }
        }
    }

    /// The ring's events after `last`, when `last` lies within the ring's span (at or after
    /// its floor, not after `current`).
    fn after(&self, last: &str, current: Option<&str>) -> Option<Vec<Arc<LiveEvent>>> {
        let floor = self.floor.as_deref()?;
        if last < floor || current.is_none_or(|c| last > c) {
            return None;
        }
        let start = self.events.partition_point(|e| e.token() <= last);
        Some(self.events.range(start..).cloned().collect())
    }
}

impl Hub {
    /// Starts the change-stream task and the heartbeat; both run until `shutdown` is cancelled.
    pub fn start(
        db: Database,
        metrics: Arc<Metrics>,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let (events, _) = broadcast::channel(CLIENT_BUFFER);
        let (position, _) = watch::channel(StreamPosition::default());
        let hub = Self {
            inner: Arc::new(Inner {
                db,
                events,
                position,
                recent: Mutex::new(Recent::default()),
                replaying: tokio::sync::Mutex::new(()),
                open: AtomicBool::new(false),
                metrics,
            }),
        };
        tokio::spawn(hub.clone().run(shutdown.clone()));
        tokio::spawn(hub.clone().beat(heartbeat, shutdown));
        hub
    }

    /// Follows the feed's position (token, change count, whether the stream is open).
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.inner.position.subscribe()
    }

    /// Whether the change stream is open now.
    pub fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// The counters the feed keeps.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// How many change streams this hub has opened on the database: its own (1 unless it had
    /// to reopen) and the catch-up replays.
    pub fn streams_opened(&self) -> u64 {
        self.inner
            .metrics
            .change_streams_opened
            .load(Ordering::Relaxed)
    }

    /// Waits until the change stream is open, or `timeout` passes; returns whether it is.
    pub async fn wait_open(&self, timeout: Duration) -> bool {
        let mut position = self.position();
        tokio::time::timeout(timeout, position.wait_for(|p| p.live))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A `resync` at the feed's current position, counted.
    pub fn resync_now(&self) -> Arc<LiveEvent> {
        bump(&self.inner.metrics.resyncs);
        let token = self
            .inner
            .position
            .borrow()
            .token
            .clone()
            .unwrap_or_default();
        Arc::new(LiveEvent::resync(token))
    }

    /// Subscribes a client that last saw `last_event_id` (or nothing).
    ///
    /// Missed changes come from the recent ring, else from a replay from the database that
    /// fills the ring (one at a time; a client whose range another replay covered is served
    /// from memory). A position that cannot be resumed (malformed, unknown, or older than the
    /// database's history) yields one `resync`; a malformed one never reaches the database.
    /// While the change stream is down this waits for it to come back, so resuming never races
    /// an outage.
    pub async fn subscribe(&self, last_event_id: Option<&str>) -> Subscription {
        // Subscribe before looking at the past, so nothing falls between the two.
        let live = self.inner.events.subscribe();
        let Some(last) = last_event_id else {
            return Subscription {
                backlog: Vec::new(),
                live,
                after: None,
            };
        };
        let mut position = self.position();
        let _ = position.wait_for(|p| p.live).await;
        let current = position.borrow().token.clone();
        let resumed = if current.as_deref() == Some(last) {
            Ok(Vec::new())
        } else if !is_plausible_position(last) {
            Err("malformed position".to_owned())
        } else if let Some(backlog) = self.replay_from_memory(last, current.as_deref()) {
            Ok(backlog)
        } else {
            self.replay(last, current.as_deref()).await
        };
        match resumed {
            Ok(backlog) => {
                let after = backlog
                    .last()
                    .map(|e| e.token().to_owned())
                    .or(Some(last.to_owned()));
                Subscription {
                    backlog,
                    live,
                    after,
                }
            }
            Err(reason) => {
                tracing::info!(
                    last_event_id = %shortened(last),
                    reason,
                    "client must resync"
                );
                let resync = self.resync_now();
                let after = Some(resync.token().to_owned());
                Subscription {
                    backlog: vec![resync],
                    live,
                    after,
                }
            }
        }
    }

    /// The ring's events after `last`, counted as a catch-up from memory.
    fn replay_from_memory(&self, last: &str, current: Option<&str>) -> Option<Vec<Arc<LiveEvent>>> {
        let backlog = self.recent().after(last, current)?;
        bump(&self.inner.metrics.catch_ups_memory);
        Some(backlog)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.inner
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits its turn, then serves `last` from the ring if an earlier replay covered it, else
    /// replays the changes between `last` and the ring's floor from the database into the ring
    /// (which keeps them for [`CATCH_UP_HOLD`], so the clients queued behind find them there).
    async fn replay(
        &self,
        last: &str,
        current: Option<&str>,
    ) -> Result<Vec<Arc<LiveEvent>>, String> {
        if current.is_some_and(|c| last > c) {
            return Err("position is ahead of the stream".to_owned());
        }
        let _turn = self.inner.replaying.lock().await;
        // The feed may have moved on while this waited.
        let current = self.inner.position.borrow().token.clone();
        if let Some(backlog) = self.replay_from_memory(last, current.as_deref()) {
            return Ok(backlog);
        }
        let floor = {
            let mut recent = self.recent();
            recent.hold_until = Some(Instant::now() + CATCH_UP_HOLD);
            recent.floor.clone()
        };
        let Some(floor) = floor.filter(|floor| last < floor.as_str()) else {
            return Err("position is not in the stream".to_owned());
        };
        bump(&self.inner.metrics.catch_ups_database);
        let replayed = self.catch_up(last, &floor).await?;
        let mut recent = self.recent();
        if recent.floor.as_deref() != Some(floor.as_str()) {
            return Err("the feed restarted during the replay".to_owned());
        }
        if recent.events.len() + replayed.len() > MAX_CATCH_UP {
            return Err("too far behind".to_owned());
        }
        for event in replayed.into_iter().rev() {
            recent.events.push_front(Arc::new(event));
        }
        recent.floor = Some(last.to_owned());
        recent
            .after(last, current.as_deref())
            .ok_or_else(|| "position is not in the stream".to_owned())
    }

    /// The changes after `last` up to and including `until`, replayed from the database with
    /// a change stream opened `startAfter` `last`; it reads until an event or the stream's
    /// post-batch position reaches `until` (an empty batch alone proves nothing on a busy or
    /// sharded deployment).
    async fn catch_up(&self, last: &str, until: &str) -> Result<Vec<LiveEvent>, String> {
        let token: ResumeToken = mongodb::bson::from_document(doc! { "_data": last })
            .map_err(|e| format!("malformed position: {e}"))?;
        let replay = async {
            let mut stream = self
                .inner
                .db
                .watch()
                .pipeline(pipeline())
                .start_after(token)
                .max_await_time(Duration::from_millis(10))
                .await
                .map_err(|e| format!("cannot resume from the position: {e}"))?;
            bump(&self.inner.metrics.change_streams_opened);
            let mut backlog = Vec::new();
            loop {
                match stream.next_if_any().await.map_err(|e| e.to_string())? {
                    Some(event) => {
                        let Some(event) = to_live(&event) else {
                            continue;
                        };
                        if event.token() > until {
                            break;
                        }
                        let reached = event.token() == until;
                        backlog.push(event);
                        if reached {
                            break;
                        }
                        if backlog.len() > MAX_CATCH_UP {
                            return Err("too far behind".to_owned());
                        }
                    }
                    None => {
                        let at = stream.resume_token().as_ref().and_then(token_text);
                        if at.is_some_and(|at| at.as_str() >= until) {
                            break;
                        }
                    }
                }
            }
            Ok(backlog)
        };
        tokio::time::timeout(CATCH_UP_TIMEOUT, replay)
            .await
            .map_err(|_| "the replay took too long".to_owned())?
    }

    /// Sends a heartbeat to every client each `every` in which nothing was published.
    async fn beat(self, every: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        let mut seen = self.inner.position.borrow().changes;
        let heartbeat = Frame::heartbeat();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => break,
            }
            let changes = self.inner.position.borrow().changes;
            if changes == seen {
                // No receivers is fine: nobody is connected.
                let _ = self.inner.events.send(Beat::Heartbeat(heartbeat.clone()));
            }
            seen = changes;
        }
    }
    /// The task owning the change stream.
    async fn run(self, shutdown: CancellationToken) {
        let mut resume: Option<ResumeToken> = None;
        let mut backoff = BACKOFF_START;
        while !shutdown.is_cancelled() {
            let opened = tokio::select! {
                opened = self.open_stream(resume.clone()) => opened,
                () = shutdown.cancelled() => break,
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(e) if resume.is_some() && cannot_resume(&e) => {
                    tracing::warn!(cause = %e, "change history lost; clients resync");
                    resume = None;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(cause = %e, retry_in = ?backoff, "cannot open the change stream");
                    self.set_open(false);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_START;
            if resume.is_none() {
                // A fresh stream: whatever clients hold may predate it.
                self.restart_history(stream.resume_token().as_ref());
            }
            self.set_open(true);
            loop {
                let next = tokio::select! {
                    next = stream.next_if_any() => next,
                    () = shutdown.cancelled() => break,
                };
                match next {
                    Ok(Some(event)) => {
                        if let Some(live) = to_live(&event) {
                            self.publish(live);
                        }
                    }
                    Ok(None) => self.advance(stream.resume_token().as_ref()),
                    Err(e) => {
                        tracing::warn!(cause = %e, "change stream failed; reopening");
                        break;
                    }
                }
                resume = stream.resume_token().or(resume);
                if !stream.is_alive() {
                    // The database was dropped: reopen after the invalidate (startAfter).
                    tracing::warn!("change stream was invalidated; reopening");
                    break;
                }
            }
            self.set_open(false);
        }
        self.set_open(false);
    }

    async fn open_stream(
        &self,
        resume: Option<ResumeToken>,
    ) -> mongodb::error::Result<ChangeStream<ChangeStreamEvent<Document>>> {
        let mut watch = self
            .inner
            .db
            .watch()
            .pipeline(pipeline())
            .max_await_time(AWAIT);
        if let Some(token) = resume {
            watch = watch.start_after(token);
        }
        let stream = watch.await?;
        bump(&self.inner.metrics.change_streams_opened);
        Ok(stream)
    }

    fn set_open(&self, open: bool) {
        self.inner.open.store(open, Ordering::Relaxed);
        self.inner.position.send_if_modified(|p| {
            let changed = p.live != open;
            p.live = open;
            changed
        });
    }

    /// Starts a new history at `token` and tells every client to resync.
    fn restart_history(&self, token: Option<&ResumeToken>) {
        let token = token.and_then(token_text).unwrap_or_default();
        {
            let mut recent = self.recent();
            recent.events.clear();
            recent.floor = Some(token.clone());
        }
        let had_position = self.inner.position.borrow().token.is_some();
        self.inner.position.send_modify(|p| {
            p.token = Some(token.clone());
            p.changes += 1;
        });
        if had_position {
            bump(&self.inner.metrics.resyncs);
            let resync = Arc::new(LiveEvent::resync(token));
            let _ = self.inner.events.send(Beat::Event(resync));
        }
    }

    /// Moves the position forward while idle (no change, so the cache stays valid); never
    /// backwards, whatever the database reports.
    fn advance(&self, token: Option<&ResumeToken>) {
        if let Some(token) = token.and_then(token_text) {
            self.inner.position.send_if_modified(|p| {
                let forward = p
                    .token
                    .as_deref()
                    .is_none_or(|current| token.as_str() > current);
                if forward {
                    p.token = Some(token);
                }
                forward
            });
        }
    }

    fn publish(&self, event: LiveEvent) {
        let event = Arc::new(event);
        {
            let mut recent = self.recent();
            recent.events.push_back(Arc::clone(&event));
            recent.trim();
        }
        bump(&self.inner.metrics.events_published);
        if event.is_resync() {
            bump(&self.inner.metrics.resyncs);
        }
        self.inner.position.send_modify(|p| {
            p.token = Some(event.token().to_owned());
            p.changes += 1;
        });
        // No receivers is fine: nobody is connected.
        let _ = self.inner.events.send(Beat::Event(event));
    }
}

/// The database-level stream's filter: changes to the two collections, and whole-collection
/// or whole-database events that make every list stale.
fn pipeline() -> Vec<Document> {
    vec![doc! { "$match": { "$or": [
        {
            "ns.coll": { "$in": [USERS, DEVICES] },
            "operationType": { "$in": ["insert", "update", "replace", "delete", "drop", "rename"] },
        },
        { "operationType": "dropDatabase" },
    ] } }]
}

/// Whether reopening from the last token can never work (history lost, token unknown).
fn cannot_resume(err: &mongodb::error::Error) -> bool {
    matches!(err.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if matches!(c.code, 260 | 280 | 286))
}

/// The `_data` string of a resume token.
fn token_text(token: &ResumeToken) -> Option<String> {
    let doc: Document = mongodb::bson::to_document(token).ok()?;
    doc.get_str("_data").ok().map(str::to_owned)
}

/// The client-facing form of a change: only the operation, the collection and the id. A
/// dropped or renamed collection (or database) has no per-document events, so clients resync.
fn to_live(event: &ChangeStreamEvent<Document>) -> Option<LiveEvent> {
    let operation = match event.operation_type {
        OperationType::Insert => "insert",
        OperationType::Update => "update",
        OperationType::Replace => "replace",
        OperationType::Delete => "delete",
        OperationType::Drop | OperationType::Rename | OperationType::DropDatabase => {
            return Some(LiveEvent::resync(token_text(&event.id)?))
        }
        _ => return None,
    };
    let collection = event.ns.as_ref()?.coll.clone()?;
    let id = match event.document_key.as_ref()?.get("_id")? {
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::String(s) => s.clone(),
        other => other.to_string(),
    };
    let data =
        serde_json::json!({ "operationType": operation, "collection": collection, "id": id });
    Some(LiveEvent::change(token_text(&event.id)?, &data.to_string()))
}

/// Whether a client-sent position can be a resume token at all: hex digits, of a length some
/// deployment issues. Anything else is answered without asking the database.
fn is_plausible_position(position: &str) -> bool {
    POSITION_LEN.contains(&position.len()) && position.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A client-sent position as a log line shows it: at most [`LOGGED_POSITION`] characters.
fn shortened(position: &str) -> String {
    match position.char_indices().nth(LOGGED_POSITION) {
        Some((end, _)) => format!("{}…", &position[..end]),
        None => position.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_chunks_around_the_event_text() {
        let event = LiveEvent::change("0a1b".to_owned(), r#"{"x":1}"#);
        let text = "id: 0a1b\ndata: {\"x\":1}\n\n";
        assert_eq!(&event.frame().text()[..], text.as_bytes());
        let chunk = format!("{:x}\r\n{text}\r\n", text.len());
        assert_eq!(&event.frame().chunk()[..], chunk.as_bytes());
        let resync = LiveEvent::resync("ff".to_owned());
        assert!(resync.is_resync());
        assert_eq!(
            &resync.frame().text()[..],
            b"event: resync\nid: ff\ndata: {}\n\n"
        );
    }

    #[test]
    fn positions_are_checked_before_the_database_sees_them() {
        assert!(is_plausible_position("8263a1f2c4000000012b"));
        assert!(is_plausible_position("000000000000000042"));
        for bad in [
            "",
            "7",
            "not-hex",
            "12 34",
            "\u{e9}\u{e9}",
            &"a".repeat(4097),
        ] {
            assert!(!is_plausible_position(bad), "{bad:?}");
        }
        assert!(is_plausible_position(&"a".repeat(4096)));
    }

    #[test]
    fn logged_positions_are_shortened() {
        assert_eq!(shortened("abc"), "abc");
        let long = "é".repeat(100);
        assert_eq!(shortened(&long).chars().count(), LOGGED_POSITION + 1);
    }

    fn ring(tokens: &[&str], floor: &str) -> Recent {
        Recent {
            events: tokens
                .iter()
                .map(|t| Arc::new(LiveEvent::change((*t).to_owned(), "{}")))
                .collect(),
            floor: Some(floor.to_owned()),
            hold_until: None,
        }
    }

    #[test]
    fn the_ring_serves_positions_within_its_span() {
        let recent = ring(&["02", "03", "04"], "01");
        let tokens = |events: Vec<Arc<LiveEvent>>| {
            events
                .iter()
                .map(|e| e.token().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            recent.after("01", Some("04")).map(tokens),
            Some(vec!["02".into(), "03".into(), "04".into()])
        );
        assert_eq!(
            recent.after("03", Some("04")).map(tokens),
            Some(vec!["04".into()])
        );
        assert!(
            recent.after("00", Some("04")).is_none(),
            "older than the floor"
        );
        assert!(
            recent.after("05", Some("04")).is_none(),
            "ahead of the feed"
        );
    }

    #[test]
    fn the_ring_keeps_replayed_events_while_held() {
        let tokens: Vec<String> = (0..RECENT + 5).map(|i| format!("{i:08x}")).collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut recent = ring(&refs, "");
        recent.hold_until = Some(Instant::now() + Duration::from_secs(60));
        recent.trim();
        assert_eq!(recent.events.len(), RECENT + 5, "held: nothing evicted");
        recent.hold_until = None;
        recent.trim();
        assert_eq!(recent.events.len(), RECENT);
        assert_eq!(recent.floor.as_deref(), Some(tokens[4].as_str()));
    }
}
