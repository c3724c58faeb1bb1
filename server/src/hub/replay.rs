//! A client's way into the feed: the recent-events ring, the catch-up from the database for
//! positions older than the ring, and the [`Feed`] an event stream reads (its backlog, then the
//! live channel without duplicates; `resync` when it cannot be resumed or falls behind).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::doc;
use mongodb::change_stream::event::ResumeToken;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::event::{pipeline, to_live, token_text, Beat, Frame, LiveEvent};
use super::{Hub, RECENT, RING_BYTES};
use crate::metrics::bump;

/// Most events the ring holds after a replay from the database; beyond it, `resync`.
const MAX_CATCH_UP: usize = 100_000;
/// Most bytes the ring holds after a replay from the database: [`RING_BYTES`] scaled as
/// [`MAX_CATCH_UP`] scales [`RECENT`]; beyond it, `resync`.
const CATCH_UP_BYTES: usize = RING_BYTES * (MAX_CATCH_UP / RECENT);
/// How long replayed events stay in the ring beyond [`RECENT`], for the clients queued on them.
const CATCH_UP_HOLD: Duration = Duration::from_secs(60);
/// Longest a replay from the database may take; beyond it, `resync`.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lengths a position may have: mongod's tokens are variable-length hex, `embedded-db`'s are
/// 18 digits. Anything else is answered with `resync` without asking the database.
const POSITION_LEN: std::ops::RangeInclusive<usize> = 2..=4096;
/// Replays from the database one client address may have in flight; beyond it, `resync` at
/// once. A browser tab holds one stream, so 2 leaves room for a second tab; a reconnect whose
/// range a replay in flight covers waits for that one and is not counted. A third gets
/// `resync` rather than waiting: waiting would hold its connection, its stream slot and a live
/// buffer filling meanwhile, only to let one address read the database longer, while `resync`
/// is always correct (the page refetches what it shows, from the shared snapshot cache).
const MAX_REPLAYS_PER_PEER: usize = 2;
/// Replays reading the database at once, whatever their addresses; more wait for a turn. Twice
/// [`MAX_REPLAYS_PER_PEER`], so one address never takes every turn.
pub(super) const MAX_REPLAYS: usize = 2 * MAX_REPLAYS_PER_PEER;
/// How much of a client-sent position a log line shows.
const LOGGED_POSITION: usize = 64;

/// A subscribed stream: the backlog, then live changes (skipping those already in the
/// backlog) and heartbeats. A client that fell a whole buffer behind gets `resync` (its id the
/// feed's current position, so a reconnect does not replay what the refetch already covers)
/// and the feed ends. While its catch-up is pending (a replay from the database, or the change
/// stream being down) it yields a heartbeat every heartbeat interval, as the idle feed does.
pub struct Feed {
    hub: Hub,
    /// The subscription being made, until it is ready; boxed so a stream that never waits pays
    /// only for a pointer.
    waiting: Option<Box<Waiting>>,
    backlog: Backlog,
    live: Option<broadcast::Receiver<Beat>>,
    /// The backlog's last position, until a live event passes it.
    after: Option<String>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("waiting", &self.waiting.is_some())
            .field("backlog", &self.backlog.0.len())
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// A subscription in the making and the heartbeats sent meanwhile.
struct Waiting {
    subscribing: Pin<Box<dyn Future<Output = Subscription> + Send>>,
    heartbeat: tokio::time::Interval,
}

impl Feed {
    /// The next frame to send; `None` once the feed ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Frame> {
        if let Some(waiting) = self.waiting.as_mut() {
            let subscription = tokio::select! {
                subscription = &mut waiting.subscribing => subscription,
                _ = waiting.heartbeat.tick() => return Some(Frame::heartbeat()),
            };
            self.waiting = None;
            self.backlog = Backlog(subscription.backlog.into());
            self.live = Some(subscription.live);
            self.after = subscription.after;
        }
        if let Some(event) = self.backlog.pop() {
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

/// The events a stream sends before live ones. Each is released as it is taken (so the ring
/// may evict it), and the buffer shrinks as it empties and is freed once empty: a stream does
/// not keep its catch-up's memory for its life.
#[derive(Debug, Default)]
struct Backlog(VecDeque<Arc<LiveEvent>>);

impl Backlog {
    /// Takes the next event, shrinking the buffer to half when a quarter of it is in use.
    fn pop(&mut self) -> Option<Arc<LiveEvent>> {
        let event = self.0.pop_front()?;
        if self.0.is_empty() {
            self.0 = VecDeque::new();
        } else if self.0.len() <= self.0.capacity() / 4 {
            self.0.shrink_to(self.0.capacity() / 2);
        }
        Some(event)
    }
}

/// What a subscribing client gets: events it missed, then the live channel.
#[derive(Debug)]
struct Subscription {
    /// Events to send first, in order (a `resync` when the position could not be resumed).
    backlog: Vec<Arc<LiveEvent>>,
    /// Live events; changes at or before `after` are duplicates of the backlog and skipped.
    live: broadcast::Receiver<Beat>,
    /// The position the backlog reaches.
    after: Option<String>,
}

/// The replays from the database in flight: where each starts (a reconnect whose position is
/// at or after one of them waits for it rather than reading the database again), and how many
/// each client address started.
#[derive(Debug, Default)]
pub(super) struct Replays {
    next_id: u64,
    /// Each replay's id, start, and a sender dropped when it ends (waking who waits for it).
    in_flight: Vec<(u64, String, watch::Sender<()>)>,
    per_peer: HashMap<Option<IpAddr>, usize>,
}

impl Replays {
    /// A receiver that wakes when the replay in flight covering `last` ends, if there is one.
    fn covering(&self, last: &str) -> Option<watch::Receiver<()>> {
        self.in_flight
            .iter()
            .find(|(_, from, _)| from.as_str() <= last)
            .map(|(_, _, done)| done.subscribe())
    }

    /// Registers a replay from `last` started by `peer`, unless `peer` has
    /// [`MAX_REPLAYS_PER_PEER`] in flight; the id ends it ([`Replays::end`]).
    fn start(&mut self, last: &str, peer: Option<IpAddr>) -> Option<u64> {
        let count = self.per_peer.entry(peer).or_default();
        if *count >= MAX_REPLAYS_PER_PEER {
            return None;
        }
        *count += 1;
        self.next_id += 1;
        let (done, _) = watch::channel(());
        self.in_flight.push((self.next_id, last.to_owned(), done));
        Some(self.next_id)
    }

    /// Ends replay `id` of `peer`: its waiters wake, its address may start another.
    fn end(&mut self, id: u64, peer: Option<IpAddr>) {
        self.in_flight.retain(|(each, _, _)| *each != id);
        if let Some(count) = self.per_peer.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

/// A replay registered in [`Replays`]; dropping it (done, failed or cancelled) ends it.
struct ReplayTurn<'a> {
    hub: &'a Hub,
    id: u64,
    peer: Option<IpAddr>,
}

impl Drop for ReplayTurn<'_> {
    fn drop(&mut self) {
        self.hub.replays().end(self.id, self.peer);
    }
}

/// The recent-events ring and the position just before its first entry.
///
/// It holds at most [`RECENT`] events and [`RING_BYTES`] (as [`LiveEvent::size`] counts them),
/// more only while held for a replay; the oldest go first, and the floor moves up with them, so
/// a position older than what the ring holds is replayed from the database.
#[derive(Debug, Default)]
pub(super) struct Recent {
    events: VecDeque<Arc<LiveEvent>>,
    floor: Option<String>,
    /// The sum of the events' sizes.
    bytes: usize,
    /// Until then the ring keeps replayed events beyond [`RECENT`] and [`RING_BYTES`] (up to
    /// [`MAX_CATCH_UP`] and [`CATCH_UP_BYTES`]).
    hold_until: Option<Instant>,
    /// Counts restarts: a replay started in another history is not merged.
    generation: u64,
    /// The newest position the database said is older than its change history: it and older
    /// ones are answered with `resync` without asking again (the history only loses its
    /// oldest end). Forgotten on restart.
    lost_through: Option<String>,
}

impl Recent {
    /// Appends the newest event, then evicts the oldest beyond the ring's bounds.
    pub(super) fn push(&mut self, event: Arc<LiveEvent>) {
        self.bytes += event.size();
        self.events.push_back(event);
        self.trim();
    }

    /// Empties the ring and starts a new history at `floor`.
    pub(super) fn restart(&mut self, floor: String) {
        self.events.clear();
        self.bytes = 0;
        self.floor = Some(floor);
        self.generation += 1;
        self.lost_through = None;
    }

    /// Whether the database already said `position` is older than its history.
    fn is_lost(&self, position: &str) -> bool {
        self.lost_through
            .as_deref()
            .is_some_and(|lost| position <= lost)
    }

    /// Notes that the database's history no longer holds `position` (nor anything older).
    fn mark_lost(&mut self, position: &str) {
        if !self.is_lost(position) {
            self.lost_through = Some(position.to_owned());
        }
    }

    /// Puts the changes after `last` up to `until`, replayed from the database in history
    /// `generation`, in front of the ring and moves the floor back to `last`. Another replay may
    /// have moved the floor back meanwhile: only what lies below the floor now is added. Fails
    /// (nothing changes) when the history restarted, the floor rose above `until` (a gap), or
    /// the ring would exceed [`MAX_CATCH_UP`] or [`CATCH_UP_BYTES`].
    fn merge(
        &mut self,
        last: &str,
        until: &str,
        generation: u64,
        replayed: Vec<LiveEvent>,
    ) -> Result<(), &'static str> {
        if self.generation != generation {
            return Err("the feed restarted during the replay");
        }
        let Some(floor) = self.floor.clone() else {
            return Err("the feed restarted during the replay");
        };
        if floor.as_str() > until {
            return Err("the ring moved past the replay");
        }
        if last >= floor.as_str() {
            return Ok(());
        }
        let missing: Vec<LiveEvent> = replayed
            .into_iter()
            .filter(|e| e.token() <= floor.as_str())
            .collect();
        let missing_bytes: usize = missing.iter().map(LiveEvent::size).sum();
        if self.events.len() + missing.len() > MAX_CATCH_UP
            || self.bytes + missing_bytes > CATCH_UP_BYTES
        {
            return Err("too far behind");
        }
        self.bytes += missing_bytes;
        for event in missing.into_iter().rev() {
            self.events.push_front(Arc::new(event));
        }
        self.floor = Some(last.to_owned());
        Ok(())
    }

    /// The bytes the ring's events hold (the `realtime_ring_bytes` gauge).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the oldest events beyond the ring's current bounds (events and bytes), moving the
    /// floor up.
    fn trim(&mut self) {
        let held = self.hold_until.is_some_and(|until| Instant::now() < until);
        let (count, bytes) = if held {
            (MAX_CATCH_UP, CATCH_UP_BYTES)
        } else {
            (RECENT, RING_BYTES)
        };
        while self.events.len() > count || self.bytes > bytes {
            let Some(evicted) = self.events.pop_front() else {
                break;
            };
            self.bytes -= evicted.size();
            self.floor = Some(evicted.token().to_owned());
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
    /// The feed of a client at `peer` that last saw `last_event_id` (or nothing): the changes
    /// it missed come first (from memory or a replay from the database), or one `resync` when
    /// its position cannot be resumed. While the change stream is down, or the replay runs,
    /// the feed yields heartbeats.
    pub fn feed(&self, last_event_id: Option<&str>, peer: Option<IpAddr>) -> Feed {
        let Some(last) = last_event_id.map(str::to_owned) else {
            return Feed {
                hub: self.clone(),
                waiting: None,
                backlog: Backlog::default(),
                live: Some(self.inner.events.subscribe()),
                after: None,
            };
        };
        let hub = self.clone();
        let every = self.inner.heartbeat;
        let waiting = Waiting {
            subscribing: Box::pin(async move { hub.subscribe(&last, peer).await }),
            heartbeat: tokio::time::interval_at(Instant::now() + every, every),
        };
        Feed {
            hub: self.clone(),
            waiting: Some(Box::new(waiting)),
            backlog: Backlog::default(),
            live: None,
            after: None,
        }
    }

    /// Subscribes a client at `peer` that last saw `last`.
    ///
    /// Missed changes come from the recent ring, else from a replay from the database that
    /// fills the ring (a client whose range a replay in flight covers waits for it and is
    /// served from memory). A position that cannot be resumed (malformed, unknown, or older
    /// than the database's history) yields one `resync`; a malformed one, or one the database
    /// already said is older than its history, never reaches the database, nor does a replay
    /// beyond `peer`'s [`MAX_REPLAYS_PER_PEER`]. While the change stream is down this waits for
    /// it to come back, so resuming never races an outage.
    async fn subscribe(&self, last: &str, peer: Option<IpAddr>) -> Subscription {
        // Subscribe before looking at the past, so nothing falls between the two.
        let live = self.inner.events.subscribe();
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
            self.replay(last, current.as_deref(), peer).await
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

    fn replays(&self) -> std::sync::MutexGuard<'_, Replays> {
        self.inner
            .replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serves `last` from the ring once a replay in flight that covers it ends, else replays
    /// the changes between `last` and the ring's floor from the database into the ring (which
    /// keeps them for [`CATCH_UP_HOLD`], so the clients that waited find them there), as one of
    /// `peer`'s [`MAX_REPLAYS_PER_PEER`] and one of [`MAX_REPLAYS`] turns.
    async fn replay(
        &self,
        last: &str,
        current: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<Vec<Arc<LiveEvent>>, String> {
        if current.is_some_and(|c| last > c) {
            return Err("position is ahead of the stream".to_owned());
        }
        let _turn = loop {
            if self.recent().is_lost(last) {
                return Err("position is older than the database's history".to_owned());
            }
            // The feed may have moved on, or a replay covered this position, meanwhile.
            let current = self.inner.position.borrow().token.clone();
            if let Some(backlog) = self.replay_from_memory(last, current.as_deref()) {
                return Ok(backlog);
            }
            let covering = {
                let mut replays = self.replays();
                match replays.covering(last) {
                    Some(done) => Err(done),
                    None => Ok(replays.start(last, peer)),
                }
            };
            match covering {
                Ok(Some(id)) => {
                    break ReplayTurn {
                        hub: self,
                        id,
                        peer,
                    }
                }
                Ok(None) => return Err("too many replays from this address".to_owned()),
                Err(mut done) => {
                    // Err: the replay ended (its sender dropped).
                    let _ = done.changed().await;
                }
            }
        };
        let _slot = self
            .inner
            .replay_slots
            .acquire()
            .await
            .map_err(|_| "the feed is closing".to_owned())?;
        let current = self.inner.position.borrow().token.clone();
        if let Some(backlog) = self.replay_from_memory(last, current.as_deref()) {
            return Ok(backlog);
        }
        let (floor, generation) = {
            let mut recent = self.recent();
            recent.hold_until = Some(Instant::now() + CATCH_UP_HOLD);
            (recent.floor.clone(), recent.generation)
        };
        let Some(floor) = floor.filter(|floor| last < floor.as_str()) else {
            return Err("position is not in the stream".to_owned());
        };
        bump(&self.inner.metrics.catch_ups_database);
        let replayed = self.catch_up(last, &floor).await?;
        let mut recent = self.recent();
        recent.merge(last, &floor, generation, replayed)?;
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
                .map_err(|e| {
                    if is_history_lost(&e) {
                        self.recent().mark_lost(last);
                    }
                    format!("cannot resume from the position: {e}")
                })?;
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
}

/// Whether the database said a position is older than its change history (286,
/// `ChangeStreamHistoryLost`, which mongod and `embedded-db` answer when the stream opens).
fn is_history_lost(err: &mongodb::error::Error) -> bool {
    matches!(err.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 286)
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
        let events: VecDeque<_> = tokens
            .iter()
            .map(|t| Arc::new(LiveEvent::change((*t).to_owned(), "{}")))
            .collect();
        Recent {
            bytes: events.iter().map(|e| e.size()).sum(),
            events,
            floor: Some(floor.to_owned()),
            ..Recent::default()
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

    /// Over [`RING_BYTES`] the oldest events go first, whatever the count: the floor moves up
    /// (so their positions are replayed from the database), the byte count and the
    /// `realtime_ring_bytes` gauge follow.
    #[test]
    fn the_ring_is_bounded_in_bytes() {
        // 1 KiB of data per event: the byte bound is reached long before the count bound.
        let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(1024));
        let event = |i: usize| Arc::new(LiveEvent::change(format!("{i:08x}"), &data));
        let size = event(0).size();
        let fit = RING_BYTES / size;
        assert!(fit < RECENT, "the bytes bound first");
        let mut recent = Recent {
            floor: Some(String::new()),
            ..Recent::default()
        };
        for i in 0..fit {
            recent.push(event(i));
        }
        assert_eq!(
            recent.events.len(),
            fit,
            "within the budget: nothing evicted"
        );
        assert_eq!(recent.floor.as_deref(), Some(""));
        for i in fit..fit + 3 {
            recent.push(event(i));
        }
        assert_eq!(recent.events.len(), fit, "the 3 oldest evicted");
        assert_eq!(recent.bytes(), fit * size);
        assert!(recent.bytes() <= RING_BYTES);
        assert_eq!(recent.floor.as_deref(), Some("00000002"));
        assert_eq!(
            recent.events.front().map(|e| e.token().to_owned()),
            Some("00000003".to_owned())
        );
        assert!(
            recent.after("00000001", Some("ffffffff")).is_none(),
            "an evicted position is not served from memory"
        );
        let gauges = crate::metrics::Gauges {
            streams_open: 0,
            http_open: 0,
            ring_bytes: recent.bytes(),
        };
        let text = crate::metrics::Metrics::default().render(&gauges, &[]);
        let line = format!("realtime_ring_bytes {}", fit * size);
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        recent.restart("ff".to_owned());
        assert_eq!((recent.events.len(), recent.bytes()), (0, 0));
    }

    /// A sent backlog event is released at once (the ring may evict it), the buffer shrinks as
    /// it empties and is freed when empty: a stream keeps nothing of its catch-up.
    #[test]
    fn the_backlog_is_released_as_it_is_sent() {
        let first = Arc::new(LiveEvent::change("00".to_owned(), "{}"));
        let mut events = vec![Arc::clone(&first)];
        events.extend((1..10_000).map(|i| Arc::new(LiveEvent::change(format!("{i:08x}"), "{}"))));
        let mut backlog = Backlog(events.into());
        let full = backlog.0.capacity();
        assert_eq!(Arc::strong_count(&first), 2);
        assert!(backlog.pop().is_some_and(|e| Arc::ptr_eq(&e, &first)));
        assert_eq!(Arc::strong_count(&first), 1, "released once sent");
        for _ in 0..9_000 {
            assert!(backlog.pop().is_some());
        }
        assert!(
            backlog.0.capacity() <= full / 2,
            "{} of {full} slots kept for 999 events",
            backlog.0.capacity()
        );
        while backlog.pop().is_some() {}
        assert_eq!(backlog.0.capacity(), 0, "freed once sent");
    }

    /// A replay merged after another moved the floor back adds only what lies below the new
    /// floor; a replay from another history or across a gap is not merged.
    #[test]
    fn replays_merge_below_the_floor() {
        let change = |t: &str| LiveEvent::change(t.to_owned(), "{}");
        let mut recent = ring(&["05", "06"], "04");
        let generation = recent.generation;
        assert_eq!(
            recent.merge("02", "04", generation, vec![change("03"), change("04")]),
            Ok(())
        );
        assert_eq!(recent.floor.as_deref(), Some("02"));
        // Started from 01 up to 04 before the merge above moved the floor to 02.
        let all = vec![change("02"), change("03"), change("04")];
        assert_eq!(recent.merge("01", "04", generation, all), Ok(()));
        let tokens: Vec<_> = recent.events.iter().map(|e| e.token().to_owned()).collect();
        assert_eq!(tokens, ["02", "03", "04", "05", "06"]);
        assert_eq!(recent.floor.as_deref(), Some("01"));
        assert!(
            recent.merge("00", "00", generation, Vec::new()).is_err(),
            "a gap"
        );
        recent.restart("07".to_owned());
        assert!(
            recent.merge("00", "07", generation, Vec::new()).is_err(),
            "restarted"
        );
    }

    /// Once the database said a position is older than its history, it and older ones are
    /// known lost without asking again; a restart forgets it.
    #[test]
    fn lost_positions_are_remembered() {
        let mut recent = ring(&["05"], "04");
        assert!(!recent.is_lost("02"));
        recent.mark_lost("02");
        recent.mark_lost("01");
        assert!(recent.is_lost("01") && recent.is_lost("02"));
        assert!(!recent.is_lost("03"));
        recent.restart("06".to_owned());
        assert!(!recent.is_lost("01"));
    }

    /// An address has at most [`MAX_REPLAYS_PER_PEER`] replays in flight; ending one frees a
    /// turn and wakes who waits for it; a position at or after a replay's start is covered.
    #[test]
    fn replays_are_limited_per_address() {
        let a = Some(IpAddr::from([127, 0, 0, 1]));
        let b = Some(IpAddr::from([127, 0, 0, 2]));
        let mut replays = Replays::default();
        let first = replays.start("10", a).expect("a first");
        assert!(replays.start("08", a).is_some());
        assert!(replays.start("06", a).is_none(), "a third from a");
        assert!(replays.start("06", b).is_some(), "another address");
        let done = replays.covering("11").expect("covered by 10");
        assert!(replays.covering("05").is_none());
        replays.end(first, a);
        assert!(done.has_changed().is_err(), "woken: the replay ended");
        assert!(replays.start("04", a).is_some());
    }
}
