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
use super::{Hub, RECENT};
use crate::metrics::bump;

/// Most events the ring holds after a replay from the database; beyond it, `resync`.
const MAX_CATCH_UP: usize = 100_000;
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
#[derive(Debug, Default)]
pub(super) struct Recent {
    pub(super) events: VecDeque<Arc<LiveEvent>>,
    pub(super) floor: Option<String>,
    /// Until then the ring keeps replayed events beyond [`RECENT`] (up to [`MAX_CATCH_UP`]).
    hold_until: Option<Instant>,
}

impl Recent {
    /// Drops the oldest events beyond the ring's current capacity, moving the floor up.
    pub(super) fn trim(&mut self) {
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
