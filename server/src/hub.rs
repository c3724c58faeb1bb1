//! The live feed: one change stream on the database, fanned out to every
//! connected client.
//!
//! - One task owns the change stream (`users` and `devices`, insert / update /
//!   replace / delete) and publishes each change on a `broadcast` channel,
//!   framed once: every client writes the same bytes.
//!   The channel's ring is the bounded per-client buffer: a client that falls
//!   a whole ring behind is told to `resync` and cut off; the others never wait.
//! - The last [`RECENT`] events (at most [`RING_BYTES`]) are also kept in memory, so a reconnecting
//!   browser is served from memory. Older positions are replayed from the
//!   database with a change stream opened `startAfter` that token, which fills
//!   the ring backwards: a reconnect whose range a replay in flight covers waits
//!   for it, so after a restart a thousand browsers holding one position cost one
//!   replay, not a thousand. Replays are limited per client address and in all,
//!   and a stream waiting for one gets heartbeats.
//!   Reconnecting to another instance of the app works the same way.
//! - Event ids are the database's own resume tokens (`_data`). MongoDB's
//!   tokens (and `embedded-db`'s) are hex strings that compare in stream order,
//!   which is what lets a position be located in the recent ring.
//! - When the stream fails, the task reopens it from the last token with
//!   backoff; if the database no longer has that position, every client gets
//!   `resync`.
//! - While no change is published for a heartbeat interval, one heartbeat goes
//!   out on the same channel to every client.
//!
//! `hub/event.rs` says what a change becomes (the filter, the client-facing form, the framed
//! bytes); `hub/replay.rs` is a client's way in (the ring, catch-ups, the [`Feed`] an event
//! stream reads, which holds every subscription rule: routes only write its frames).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::repo::StreamPosition;
use mongodb::bson::Document;
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::Database;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::{bump, Metrics};

mod event;
mod replay;

pub use event::Frame;
pub use replay::Feed;

use event::{pipeline, to_live, token_text, Beat, LiveEvent};
use replay::{Recent, Replays};

/// Events kept in memory for reconnecting clients.
pub const RECENT: usize = 10_000;
/// Bytes the recent-events ring may hold (as well as [`RECENT`] events), oldest evicted first.
///
/// An event is its token, its `data` line and framing: about 250 bytes with a typical token and
/// a 24-hex id, so 10,000 of them take about 2.5 MiB and the count bound is the one that acts.
/// The budget matters when ids or tokens are large (an `_id` text of up to 1 KiB is sent; a
/// MongoDB resume token embeds the document key): 10,000 such events could take tens of MiB
/// for one process serving nothing else. 8 MiB still keeps thousands of such events (about
/// 6,000 with a 1 KiB id and a short token), and a position older than the ring is replayed
/// from the database, as when the count bound evicts it.
pub const RING_BYTES: usize = 8 * 1024 * 1024;
/// Events a client may fall behind before it is cut off (the broadcast ring).
pub const CLIENT_BUFFER: usize = 1024;
/// How long an idle `getMore` waits on the database; also how often the position advances.
const AWAIT: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
    /// The replays from the database in flight, by start and by client address.
    replays: Mutex<Replays>,
    /// One per replay reading the database at once ([`replay::MAX_REPLAYS`]).
    replay_slots: tokio::sync::Semaphore,
    /// How often a stream waiting for its catch-up gets a heartbeat (as the idle feed does).
    heartbeat: Duration,
    open: AtomicBool,
    metrics: Arc<Metrics>,
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
                replays: Mutex::new(Replays::default()),
                replay_slots: tokio::sync::Semaphore::new(replay::MAX_REPLAYS),
                heartbeat,
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

    /// The bytes the recent-events ring holds now (the `realtime_ring_bytes` gauge).
    pub fn ring_bytes(&self) -> usize {
        self.recent().bytes()
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
    fn resync_now(&self) -> Arc<LiveEvent> {
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

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.inner
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
            self.recent().restart(token.clone());
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
            self.recent().push(Arc::clone(&event));
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

/// Whether reopening from the last token can never work (history lost, token unknown).
fn cannot_resume(err: &mongodb::error::Error) -> bool {
    matches!(err.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if matches!(c.code, 260 | 280 | 286))
}
