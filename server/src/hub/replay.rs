//! A client's way into the feed: the recent-events ring, the catch-up from the database for
//! positions older than the ring, and the [`Feed`] an event stream reads (its backlog, then the
//! live channel without duplicates; `resync` when it cannot be resumed or falls behind).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::doc;
use mongodb::change_stream::event::ResumeToken;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
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
/// How much of a client-sent position a log line shows.
const LOGGED_POSITION: usize = 64;

/// A subscribed stream: the backlog, then live changes (skipping those already in the
/// backlog) and heartbeats. A client that fell a whole buffer behind gets `resync` (its id the
/// feed's current position, so a reconnect does not replay what the refetch already covers)
/// and the feed ends.
#[derive(Debug)]
pub struct Feed {
    hub: Hub,
    backlog: std::vec::IntoIter<Arc<LiveEvent>>,
    live: Option<broadcast::Receiver<Beat>>,
    /// The backlog's last position, until a live event passes it.
    after: Option<String>,
}

impl Feed {
    /// The next frame to send; `None` once the feed ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Frame> {
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
    /// The feed of a client that last saw `last_event_id` (or nothing): the changes it missed
    /// come first (from memory or a replay from the database), or one `resync` when its
    /// position cannot be resumed. While the change stream is down this waits for it to come
    /// back.
    pub async fn feed(&self, last_event_id: Option<&str>) -> Feed {
        let subscription = self.subscribe(last_event_id).await;
        Feed {
            hub: self.clone(),
            backlog: subscription.backlog.into_iter(),
            live: Some(subscription.live),
            after: subscription.after,
        }
    }

    /// Subscribes a client that last saw `last_event_id` (or nothing).
    ///
    /// Missed changes come from the recent ring, else from a replay from the database that
    /// fills the ring (one at a time; a client whose range another replay covered is served
    /// from memory). A position that cannot be resumed (malformed, unknown, or older than the
    /// database's history) yields one `resync`; a malformed one never reaches the database.
    /// While the change stream is down this waits for it to come back, so resuming never races
    /// an outage.
    async fn subscribe(&self, last_event_id: Option<&str>) -> Subscription {
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
        let replayed_bytes: usize = replayed.iter().map(LiveEvent::size).sum();
        if recent.events.len() + replayed.len() > MAX_CATCH_UP
            || recent.bytes + replayed_bytes > CATCH_UP_BYTES
        {
            return Err("too far behind".to_owned());
        }
        recent.bytes += replayed_bytes;
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
        let text = crate::metrics::Metrics::default().render(0, recent.bytes(), &[]);
        let line = format!("realtime_ring_bytes {}", fit * size);
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        recent.restart("ff".to_owned());
        assert_eq!((recent.events.len(), recent.bytes()), (0, 0));
    }
}
