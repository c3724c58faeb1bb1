//! Server-side reads of the lists, cached per stream position.
//!
//! Every connected browser refetches after each change event. The lists are
//! therefore served from a snapshot: after one event, the first refetch reads
//! the database and every other refetch waits for it and reuses it, so N
//! browsers cost one read per event, not N.
//!
//! A snapshot is reused only while it is provably current: the live feed has
//! seen no change since it was read, and the deployment's `operationTime`
//! (asked with a `ping`, which reads no data) has not moved since either. The
//! second check matters because the feed lags a write by a few milliseconds: a
//! page requested right after a write elsewhere must already show it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Database;
use tokio::sync::{watch, Mutex};

use crate::model::{Device, Snapshot, User};

/// Collection of users.
pub const USERS: &str = "users";
/// Collection of devices.
pub const DEVICES: &str = "devices";

/// Where the live feed is: published by the change-stream hub, read by the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPosition {
    /// The newest event id (resume token) the feed has reached.
    pub token: Option<String>,
    /// Changes (and resyncs) seen so far; the cache key.
    pub changes: u64,
    /// Whether the change stream is open. While it is not, changes may go unseen, so the
    /// cache is bypassed.
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
    users: Cache<User>,
    devices: Cache<Device>,
    reads: AtomicU64,
}

#[derive(Debug)]
struct Cache<T> {
    /// The snapshot and what it was read at; the lock also makes concurrent misses wait for
    /// the one read in flight.
    slot: Mutex<Option<(ReadAt, Arc<Snapshot<T>>)>>,
}

/// When a snapshot was read: the feed's change count and the deployment's operation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadAt {
    changes: u64,
    operation_time: Option<Timestamp>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self {
            slot: Mutex::new(None),
        }
    }
}

impl Repo {
    /// Reads from `db`, caching against the positions published on `position`.
    pub fn new(db: Database, position: watch::Receiver<StreamPosition>) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                position,
                users: Cache::default(),
                devices: Cache::default(),
                reads: AtomicU64::new(0),
            }),
        }
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// Every user, in `_id` order, at least as new as the returned position.
    pub async fn users(&self) -> Result<Arc<Snapshot<User>>, mongodb::error::Error> {
        let coll = self.inner.db.collection::<Document>(USERS);
        self.cached(&self.inner.users, || async move {
            let mut cursor = coll.find(doc! {}).sort(doc! { "_id": 1 }).await?;
            let mut users = Vec::new();
            while cursor.advance().await? {
                let doc = cursor.deserialize_current()?;
                users.push(User {
                    id: id_text(doc.get("_id")),
                    fname: text(&doc, "fname"),
                    lname: text(&doc, "lname"),
                    username: text(&doc, "username"),
                });
            }
            Ok(users)
        })
        .await
    }

    /// Every device of type `"lock"`, in `_id` order, at least as new as the returned position.
    pub async fn lock_devices(&self) -> Result<Arc<Snapshot<Device>>, mongodb::error::Error> {
        let coll = self.inner.db.collection::<Document>(DEVICES);
        self.cached(&self.inner.devices, || async move {
            let mut cursor = coll
                .find(doc! { "type": "lock" })
                .sort(doc! { "_id": 1 })
                .await?;
            let mut devices = Vec::new();
            while cursor.advance().await? {
                let doc = cursor.deserialize_current()?;
                devices.push(Device {
                    id: id_text(doc.get("_id")),
                    name: text(&doc, "name"),
                    kind: text(&doc, "type"),
                    locked: doc.get_bool("locked").unwrap_or(false),
                });
            }
            Ok(devices)
        })
        .await
    }

    /// Database reads made so far (cache misses), for benchmarks.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
    }

    async fn cached<T, F, Fut>(
        &self,
        cache: &Cache<T>,
        load: F,
    ) -> Result<Arc<Snapshot<T>>, mongodb::error::Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<T>, mongodb::error::Error>>,
    {
        // Asked before the lock and before any read: whatever was committed when this request
        // began is at or before this time.
        let operation_time = self.operation_time().await?;
        let mut slot = cache.slot.lock().await;
        // Taken before the read: the list read next is at least as new as this position.
        let position = self.inner.position.borrow().clone();
        let now = ReadAt {
            changes: position.changes,
            operation_time,
        };
        if let Some((read_at, snapshot)) = slot.as_ref() {
            if position.live && *read_at == now {
                return Ok(Arc::clone(snapshot));
            }
        }
        let items = load().await?;
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        let snapshot = Arc::new(Snapshot {
            items,
            position: position.token,
        });
        *slot = Some((now, Arc::clone(&snapshot)));
        Ok(snapshot)
    }

    /// The deployment's newest operation time, from a `ping`'s `operationTime` (replica sets
    /// report it on every reply); `None` where it is not reported.
    async fn operation_time(&self) -> Result<Option<Timestamp>, mongodb::error::Error> {
        let reply = self.inner.db.run_command(doc! { "ping": 1 }).await?;
        Ok(reply.get_timestamp("operationTime").ok())
    }
}

/// `_id` as text: 24 hex digits for an ObjectId, the value itself otherwise.
fn id_text(id: Option<&Bson>) -> String {
    match id {
        Some(Bson::ObjectId(oid)) => oid.to_hex(),
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
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
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn ids_and_fields_tolerate_other_shapes() {
        let oid = ObjectId::new();
        assert_eq!(id_text(Some(&Bson::ObjectId(oid))), oid.to_hex());
        assert_eq!(id_text(Some(&Bson::Int32(7))), "7");
        assert_eq!(id_text(None), "");
        let doc = doc! { "fname": "ada", "lname": 3 };
        assert_eq!(text(&doc, "fname"), "ada");
        assert_eq!(text(&doc, "lname"), "");
        assert_eq!(text(&doc, "missing"), "");
    }
}
