//! The live feed: one change stream on the database, fanned out to every
//! connected client.
//!
//! - One task owns the change stream (`users` and `devices`, insert / update /
//!   replace / delete) and publishes each change on a `broadcast` channel.
//!   The channel's ring is the bounded per-client buffer: a client that falls
//!   a whole ring behind is told to `resync` and cut off; the others never wait.
//! - The last [`RECENT`] events are also kept in memory, so a reconnecting
//!   browser is served from memory; older positions are replayed from the
//!   database with a change stream opened `startAfter` that token, so
//!   reconnecting to another instance of the app works too.
//! - Event ids are the database's own resume tokens (`_data`). MongoDB's
//!   tokens (and `embedded-db`'s) compare in stream order as strings, which
//!   is what lets a position be located in the recent ring.
//! - When the stream fails, the task reopens it from the last token with
//!   backoff; if the database no longer has that position, every client gets
//!   `resync`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::repo::{StreamPosition, DEVICES, USERS};
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::Database;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Events kept in memory for reconnecting clients.
pub const RECENT: usize = 10_000;
/// Events a client may fall behind before it is cut off (the broadcast ring).
pub const CLIENT_BUFFER: usize = 1024;
/// Most events replayed from the database for one reconnecting client; beyond it, `resync`.
const MAX_CATCH_UP: usize = 100_000;
/// How long an idle `getMore` waits on the database; also how often the position advances.
const AWAIT: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// A committed change: `id:` is its token, `data:` the JSON summary.
    Change {
        /// The resume token's `_data`.
        token: String,
        /// `{"operationType","collection","id"}`.
        data: String,
    },
    /// The client must refetch everything; `token` is a current position.
    Resync {
        /// A position to resume from afterwards.
        token: String,
    },
}

impl LiveEvent {
    /// The event id.
    pub fn token(&self) -> &str {
        match self {
            Self::Change { token, .. } | Self::Resync { token } => token,
        }
    }
}

/// What a subscribing client gets: events it missed, then the live channel.
#[derive(Debug)]
pub struct Subscription {
    /// Events to send first, in order (a `Resync` when the position could not be resumed).
    pub backlog: Vec<LiveEvent>,
    /// Live events; changes at or before `after` are duplicates of the backlog and skipped.
    pub live: broadcast::Receiver<Arc<LiveEvent>>,
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
    events: broadcast::Sender<Arc<LiveEvent>>,
    position: watch::Sender<StreamPosition>,
    recent: Mutex<Recent>,
    open: AtomicBool,
    streams_opened: AtomicU64,
}

/// The recent-events ring and the position just before its first entry.
#[derive(Debug, Default)]
struct Recent {
    events: VecDeque<Arc<LiveEvent>>,
    floor: Option<String>,
}

impl Hub {
    /// Starts the change-stream task; it runs until `shutdown` is cancelled.
    pub fn start(db: Database, shutdown: CancellationToken) -> Self {
        let (events, _) = broadcast::channel(CLIENT_BUFFER);
        let (position, _) = watch::channel(StreamPosition::default());
        let hub = Self {
            inner: Arc::new(Inner {
                db,
                events,
                position,
                recent: Mutex::new(Recent::default()),
                open: AtomicBool::new(false),
                streams_opened: AtomicU64::new(0),
            }),
        };
        tokio::spawn(hub.clone().run(shutdown));
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

    /// How many change streams this hub has opened on the database (1 unless it had to reopen).
    pub fn streams_opened(&self) -> u64 {
        self.inner.streams_opened.load(Ordering::Relaxed)
    }

    /// Waits until the change stream is open, or `timeout` passes; returns whether it is.
    pub async fn wait_open(&self, timeout: Duration) -> bool {
        let mut position = self.position();
        tokio::time::timeout(timeout, position.wait_for(|p| p.live))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Subscribes a client that last saw `last_event_id` (or nothing).
    ///
    /// Missed changes come from the recent ring, else from the database; a position that
    /// cannot be resumed (malformed, unknown, or older than the database's history) yields one
    /// `Resync`. While the change stream is down this waits for it to come back, so resuming
    /// never races an outage.
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
        if current.as_deref() == Some(last) {
            return Subscription {
                backlog: Vec::new(),
                live,
                after: Some(last.to_owned()),
            };
        }
        if let Some(backlog) = self.replay_recent(last, current.as_deref()) {
            let after = backlog
                .last()
                .map(|e| e.token().to_owned())
                .or(Some(last.to_owned()));
            return Subscription {
                backlog,
                live,
                after,
            };
        }
        match self.catch_up(last, current.as_deref()).await {
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
                tracing::info!(last_event_id = last, reason, "client must resync");
                let token = self
                    .inner
                    .position
                    .borrow()
                    .token
                    .clone()
                    .unwrap_or_default();
                Subscription {
                    backlog: vec![LiveEvent::Resync {
                        token: token.clone(),
                    }],
                    live,
                    after: Some(token),
                }
            }
        }
    }

    /// The ring's events after `last`, when `last` lies within the ring's span.
    fn replay_recent(&self, last: &str, current: Option<&str>) -> Option<Vec<LiveEvent>> {
        let recent = self
            .inner
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let floor = recent.floor.as_deref()?;
        if last < floor || current.is_none_or(|c| last > c) {
            return None;
        }
        Some(
            recent
                .events
                .iter()
                .filter(|e| e.token() > last)
                .map(|e| (**e).clone())
                .collect(),
        )
    }

    /// Replays changes after `last` from the database, up to `until`.
    async fn catch_up(&self, last: &str, until: Option<&str>) -> Result<Vec<LiveEvent>, String> {
        if until.is_some_and(|current| last > current) {
            return Err("position is ahead of the stream".to_owned());
        }
        let token: ResumeToken = mongodb::bson::from_document(doc! { "_data": last })
            .map_err(|e| format!("malformed position: {e}"))?;
        let mut stream = self
            .inner
            .db
            .watch()
            .pipeline(pipeline())
            .start_after(token)
            .max_await_time(Duration::from_millis(10))
            .await
            .map_err(|e| format!("cannot resume from the position: {e}"))?;
        let mut backlog = Vec::new();
        while let Some(event) = stream.next_if_any().await.map_err(|e| e.to_string())? {
            let Some(event) = to_live(&event) else {
                continue;
            };
            let reached = until.is_some_and(|u| event.token() >= u);
            backlog.push(event);
            if reached {
                break;
            }
            if backlog.len() > MAX_CATCH_UP {
                return Err("too far behind".to_owned());
            }
        }
        Ok(backlog)
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
        self.inner.streams_opened.fetch_add(1, Ordering::Relaxed);
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
            let mut recent = self
                .inner
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            recent.events.clear();
            recent.floor = Some(token.clone());
        }
        let had_position = self.inner.position.borrow().token.is_some();
        self.inner.position.send_modify(|p| {
            p.token = Some(token.clone());
            p.changes += 1;
        });
        if had_position {
            let _ = self
                .inner
                .events
                .send(Arc::new(LiveEvent::Resync { token }));
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
            let mut recent = self
                .inner
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            recent.events.push_back(Arc::clone(&event));
            while recent.events.len() > RECENT {
                if let Some(evicted) = recent.events.pop_front() {
                    recent.floor = Some(evicted.token().to_owned());
                }
            }
        }
        self.inner.position.send_modify(|p| {
            p.token = Some(event.token().to_owned());
            p.changes += 1;
        });
        // No receivers is fine: nobody is connected.
        let _ = self.inner.events.send(event);
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
            return Some(LiveEvent::Resync {
                token: token_text(&event.id)?,
            })
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
    Some(LiveEvent::Change {
        token: token_text(&event.id)?,
        data: data.to_string(),
    })
}
