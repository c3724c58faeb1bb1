//! Server-side reads of the lists, cached per stream position.
//!
//! Every connected browser refetches after each change event. The lists are
//! therefore served from a snapshot: after one event, the first refetch reads
//! the database and every other refetch reuses that read, so N browsers cost
//! one read per event, not N.
//!
//! A snapshot is reused only while it is provably current: it was read after
//! the deployment's newest operation at the time the request arrived. That
//! time is the `operationTime` of a `ping` (which reads no data) started after
//! the request arrived; concurrent requests share one such `ping`. The feed
//! alone would not do: it lags a write by a few milliseconds, and a page
//! requested right after a write elsewhere must already show it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use mongodb::bson::{doc, Document, Timestamp};
use mongodb::Database;
use tokio::sync::{watch, Mutex};

use crate::model::{id_text, Device, Listed, Snapshot, User};

pub use crate::model::{DEVICES, USERS};

/// Where the live feed is: published by the change-stream hub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPosition {
    /// The newest event id (resume token) the feed has reached.
    pub token: Option<String>,
    /// Changes (and resyncs) seen so far.
    pub changes: u64,
    /// Whether the change stream is open.
    pub live: bool,
}

/// Cached list reads over one database.
#[derive(Debug, Clone)]
pub struct Repo {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    position: watch::Receiver<StreamPosition>,
    clock: Clock,
    users: Cache<User>,
    devices: Cache<Device>,
}

/// One list's snapshot; the mutex makes concurrent misses wait for the one read in flight.
#[derive(Debug)]
struct Cache<T> {
    current: RwLock<Option<(Freshness, Listed<T>)>>,
    loading: Mutex<()>,
    /// Requests that read the database.
    reads: AtomicU64,
    /// Requests served from the snapshot.
    hits: AtomicU64,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self {
            current: RwLock::new(None),
            loading: Mutex::new(()),
            reads: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }
}

/// How one list was served so far: database reads and snapshot hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCounts {
    /// Requests that read the database.
    pub reads: u64,
    /// Requests served from the cached snapshot.
    pub hits: u64,
}

impl<T> Cache<T> {
    /// The snapshot, when it is at least as new as `needed`.
    fn get(&self, needed: Freshness) -> Option<Listed<T>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match current.as_ref() {
            Some((read_at, snapshot)) if read_at.covers(needed) => Some(snapshot.clone()),
            _ => None,
        }
    }

    /// [`Self::get`], counted as a hit when it finds one.
    fn hit(&self, needed: Freshness) -> Option<Listed<T>> {
        let snapshot = self.get(needed)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(snapshot)
    }

    /// The snapshot, when it was read at or after stream position `after` (counted as a hit).
    fn hit_at(&self, after: &str) -> Option<Listed<T>> {
        let snapshot = {
            let current = self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (_, snapshot) = current.as_ref()?;
            let has_it = snapshot.position.as_deref().is_some_and(|at| at >= after);
            has_it.then(|| snapshot.clone())?
        };
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(snapshot)
    }

    fn counts(&self) -> ReadCounts {
        ReadCounts {
            reads: self.reads.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
        }
    }

    /// Keeps `snapshot` unless a newer one is already there.
    fn put(&self, read_at: Freshness, snapshot: &Listed<T>) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current
            .as_ref()
            .is_none_or(|(existing, _)| read_at.covers(*existing))
        {
            *current = Some((read_at, snapshot.clone()));
        }
    }
}

/// What a snapshot was read after: the deployment's operation time (where it reports one) and
/// the feed's change count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Freshness {
    operation_time: Option<Timestamp>,
    changes: u64,
}

impl Freshness {
    /// Whether data read at `self` includes everything committed by `other`.
    fn covers(self, other: Self) -> bool {
        match (self.operation_time, other.operation_time) {
            (Some(mine), Some(theirs)) => {
                (mine.time, mine.increment) >= (theirs.time, theirs.increment)
            }
            // Without operation times, only the feed tells what changed.
            _ => self.changes >= other.changes,
        }
    }
}

/// The deployment's operation time, from `ping`s shared by concurrent callers.
#[derive(Debug, Default)]
struct Clock {
    /// Sequence number the next `ping` will get.
    next: AtomicU64,
    /// Whether a `ping` is in flight.
    running: AtomicBool,
    /// (sequence of the newest finished `ping` + 1, its operation time).
    done: watch::Sender<(u64, Option<Timestamp>)>,
}

impl Clock {
    /// An operation time at least as new as every write committed before this call.
    async fn now(&self, db: &Database) -> Result<Option<Timestamp>, mongodb::error::Error> {
        // Only a ping started from here on can see every write committed before this call.
        let wanted = self.next.load(Ordering::Acquire);
        let mut done = self.done.subscribe();
        loop {
            let (finished, time) = *done.borrow_and_update();
            if finished > wanted {
                return Ok(time);
            }
            if self.running.swap(true, Ordering::AcqRel) {
                // Someone else's ping is in flight: wait for it (or the one after it).
                let _ = done.changed().await;
                continue;
            }
            let seq = self.next.fetch_add(1, Ordering::AcqRel);
            // Cleared however this ends (error, or the request dropped mid-ping), so waiters
            // never wait on a ping nobody is running.
            let running = RunningPing(self);
            let time = db
                .run_command(doc! { "ping": 1 })
                .await?
                .get_timestamp("operationTime")
                .ok();
            self.done.send_if_modified(|latest| {
                let newer = seq + 1 > latest.0;
                if newer {
                    *latest = (seq + 1, time);
                }
                newer
            });
            drop(running);
            if seq + 1 > wanted {
                return Ok(time);
            }
        }
    }
}

/// Marks a `ping` in flight; on drop, clears the mark and wakes the waiters.
struct RunningPing<'a>(&'a Clock);

impl Drop for RunningPing<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
        self.0.done.send_modify(|_| {});
    }
}

impl Repo {
    /// Reads from `db`; `position` is the live feed's.
    pub fn new(db: Database, position: watch::Receiver<StreamPosition>) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                position,
                clock: Clock::default(),
                users: Cache::default(),
                devices: Cache::default(),
            }),
        }
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// Every user, in `_id` order, at least as new as the returned position; see
    /// [`Self::cached`] for `after`.
    pub async fn users(&self, after: Option<&str>) -> Result<Listed<User>, mongodb::error::Error> {
        let coll = self.inner.db.collection::<Document>(USERS);
        self.cached(&self.inner.users, after, || async move {
            let mut cursor = coll.find(doc! {}).sort(doc! { "_id": 1 }).await?;
            let mut users = Vec::new();
            while cursor.advance().await? {
                let doc = cursor.deserialize_current()?;
                users.push(User {
                    id: doc.get("_id").map(id_text).unwrap_or_default(),
                    fname: text(&doc, "fname"),
                    lname: text(&doc, "lname"),
                    username: text(&doc, "username"),
                });
            }
            Ok(users)
        })
        .await
    }

    /// Every device of type `"lock"`, in `_id` order, at least as new as the returned position;
    /// see [`Self::cached`] for `after`.
    pub async fn lock_devices(
        &self,
        after: Option<&str>,
    ) -> Result<Listed<Device>, mongodb::error::Error> {
        let coll = self.inner.db.collection::<Document>(DEVICES);
        self.cached(&self.inner.devices, after, || async move {
            let mut cursor = coll
                .find(doc! { "type": "lock" })
                .sort(doc! { "_id": 1 })
                .await?;
            let mut devices = Vec::new();
            while cursor.advance().await? {
                let doc = cursor.deserialize_current()?;
                devices.push(Device {
                    id: doc.get("_id").map(id_text).unwrap_or_default(),
                    name: text(&doc, "name"),
                    kind: text(&doc, "type"),
                    locked: doc.get_bool("locked").unwrap_or(false),
                });
            }
            Ok(devices)
        })
        .await
    }

    /// Database reads made so far (cache misses) of both lists.
    pub fn reads(&self) -> u64 {
        self.users_reads().reads + self.devices_reads().reads
    }

    /// How the users list was served so far.
    pub fn users_reads(&self) -> ReadCounts {
        self.inner.users.counts()
    }

    /// How the lock-devices list was served so far.
    pub fn devices_reads(&self) -> ReadCounts {
        self.inner.devices.counts()
    }

    /// The list's snapshot, read again only when the cached one may be stale.
    ///
    /// `after`: the event the caller refetches for (a browser that heard of a change). A cached
    /// snapshot read at or after that position has it, and is served without asking the
    /// database anything. Otherwise (and for page loads, which pass `None`) the snapshot must
    /// be newer than the deployment's newest operation when the request arrived, which a shared
    /// `ping` tells.
    async fn cached<T, F, Fut>(
        &self,
        cache: &Cache<T>,
        after: Option<&str>,
        load: F,
    ) -> Result<Listed<T>, mongodb::error::Error>
    where
        T: serde::Serialize,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<T>, mongodb::error::Error>>,
    {
        if let Some(snapshot) = after.and_then(|after| cache.hit_at(after)) {
            return Ok(snapshot);
        }
        let needed = Freshness {
            operation_time: self.inner.clock.now(&self.inner.db).await?,
            changes: self.inner.position.borrow().changes,
        };
        if let Some(snapshot) = cache.hit(needed) {
            return Ok(snapshot);
        }
        let _loading = cache.loading.lock().await;
        // Another request may have read while this one waited.
        if let Some(snapshot) = cache.hit(needed) {
            return Ok(snapshot);
        }
        // Taken before the read: the list read next is at least as new as this position.
        let token = self.inner.position.borrow().token.clone();
        let items = load().await?;
        cache.reads.fetch_add(1, Ordering::Relaxed);
        // Serialized here, once: every refetch of this snapshot sends these bytes.
        let snapshot = Listed::new(Snapshot {
            items,
            position: token,
        });
        cache.put(needed, &snapshot);
        Ok(snapshot)
    }
}

/// A string field, or empty when it is missing or not a string (documents written by other
/// tools need not follow the schema).
fn text(doc: &Document, key: &str) -> String {
    doc.get_str(key).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(time: u32, increment: u32, changes: u64) -> Freshness {
        Freshness {
            operation_time: Some(Timestamp { time, increment }),
            changes,
        }
    }

    #[test]
    fn freshness_compares_operation_times_then_changes() {
        assert!(at(10, 2, 0).covers(at(10, 1, 5)));
        assert!(at(10, 1, 0).covers(at(10, 1, 0)));
        assert!(!at(10, 1, 9).covers(at(11, 0, 0)));
        let blind = |changes| Freshness {
            operation_time: None,
            changes,
        };
        assert!(blind(3).covers(blind(3)));
        assert!(!blind(3).covers(blind(4)));
    }

    #[test]
    fn cache_keeps_the_newest_snapshot() {
        let cache: Cache<u8> = Cache::default();
        let snapshot = |n| {
            Listed::new(Snapshot {
                items: vec![n],
                position: None,
            })
        };
        cache.put(at(10, 5, 0), &snapshot(1));
        cache.put(at(10, 4, 0), &snapshot(2));
        assert_eq!(
            cache.get(at(10, 5, 0)).map(|s| s.items.clone()),
            Some(vec![1])
        );
        assert!(cache.get(at(10, 6, 0)).is_none(), "a newer request misses");
    }

    #[test]
    fn a_snapshot_at_or_after_the_event_is_served_without_asking() {
        let cache: Cache<u8> = Cache::default();
        assert!(cache.hit_at("0a").is_none(), "nothing cached yet");
        cache.put(
            at(10, 5, 0),
            &Listed::new(Snapshot {
                items: vec![1],
                position: Some("0b".into()),
            }),
        );
        assert!(cache.hit_at("0a").is_some(), "read after the event");
        assert!(cache.hit_at("0b").is_some(), "read at the event");
        assert!(cache.hit_at("0c").is_none(), "read before the event");
        assert_eq!(cache.counts().hits, 2);
    }

    #[test]
    fn fields_tolerate_other_shapes() {
        let doc = doc! { "fname": "ada", "lname": 3 };
        assert_eq!(text(&doc, "fname"), "ada");
        assert_eq!(text(&doc, "lname"), "");
        assert_eq!(text(&doc, "missing"), "");
    }
}
