//! Server-side cursors: the rest of a query result, or an open change stream,
//! kept between `getMore`s under an Int64 id.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bson::Document;

use crate::changes::ChangeStream;

/// Cursors idle for longer than this are closed, as `mongod` does after 10 minutes.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// What a cursor yields.
#[derive(Debug)]
pub(crate) enum CursorKind {
    /// The remaining documents of a materialised result.
    Documents(VecDeque<Document>),
    /// A change stream, read on demand.
    ChangeStream(Box<ChangeStream>),
}

/// An open cursor.
#[derive(Debug)]
pub(crate) struct Cursor {
    /// The `ns` reported in every reply for this cursor.
    pub(crate) ns: String,
    /// Its source of documents.
    pub(crate) kind: CursorKind,
    /// Batch size asked for on the opening command; `getMore` may override it.
    pub(crate) batch_size: Option<usize>,
    last_used: Instant,
}

impl Cursor {
    /// A cursor reporting `ns`.
    pub(crate) fn new(ns: String, kind: CursorKind, batch_size: Option<usize>) -> Self {
        Self {
            ns,
            kind,
            batch_size,
            last_used: Instant::now(),
        }
    }
}

/// All open cursors. A cursor is taken out while a `getMore` works on it, so two concurrent
/// `getMore`s on one id cannot interleave (the second sees `CursorNotFound`).
#[derive(Debug)]
pub(crate) struct Cursors {
    open: Mutex<HashMap<i64, Cursor>>,
    /// Cursors taken out by a `getMore` in progress (still open, as `serverStatus` counts them).
    in_use: AtomicUsize,
    next_id: AtomicI64,
}

/// Held while a `getMore` works on a cursor it took out: the cursor still counts as open.
#[derive(Debug)]
pub(crate) struct InUse<'a> {
    cursors: &'a Cursors,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.cursors.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Cursors {
    fn default() -> Self {
        // Start ids at a per-process offset so that ids from before a restart are not reused.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::from(d.subsec_nanos()) << 24)
            .unwrap_or(1 << 24);
        Self {
            open: Mutex::new(HashMap::new()),
            in_use: AtomicUsize::new(0),
            next_id: AtomicI64::new(seed.max(1)),
        }
    }
}

impl Cursors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Cursor>> {
        // A panic while holding the lock cannot leave the map inconsistent: keep serving.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a cursor and returns its new, positive, never-reused id.
    pub(crate) fn insert(&self, cursor: Cursor) -> i64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, cursor);
        id
    }

    /// Takes the cursor out for a `getMore`; put it back with [`Cursors::restore`] (or not, to
    /// close it) before dropping the [`InUse`] guard.
    pub(crate) fn take(&self, id: i64) -> Option<(Cursor, InUse<'_>)> {
        let cursor = self.lock().remove(&id)?;
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Some((cursor, InUse { cursors: self }))
    }

    /// Returns a cursor after a `getMore` that did not exhaust it.
    pub(crate) fn restore(&self, id: i64, mut cursor: Cursor) {
        cursor.last_used = Instant::now();
        self.lock().insert(id, cursor);
    }

    /// Closes the given cursors; returns (killed, not found).
    pub(crate) fn kill(&self, ids: &[i64]) -> (Vec<i64>, Vec<i64>) {
        let mut open = self.lock();
        ids.iter().partition(|id| open.remove(id).is_some())
    }

    /// Closes cursors idle for longer than `timeout`; returns how many.
    pub(crate) fn reap(&self, timeout: Duration) -> usize {
        let mut open = self.lock();
        let before = open.len();
        open.retain(|_, c| c.last_used.elapsed() < timeout);
        before - open.len()
    }

    /// Number of open cursors, including those a `getMore` is working on.
    pub(crate) fn len(&self) -> usize {
        self.lock().len() + self.in_use.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> CursorKind {
        CursorKind::Documents(VecDeque::new())
    }

    #[test]
    fn ids_are_unique_and_kill_reports_unknown() {
        let cursors = Cursors::default();
        let a = cursors.insert(Cursor::new("t.c".into(), docs(), None));
        let b = cursors.insert(Cursor::new("t.c".into(), docs(), None));
        assert_ne!(a, b);
        assert!(a > 0 && b > 0);
        let (killed, missing) = cursors.kill(&[a, 42]);
        assert_eq!(killed, vec![a]);
        assert_eq!(missing, vec![42]);
        assert!(cursors.take(a).is_none());
        let (cursor, in_use) = cursors.take(b).expect("open");
        assert_eq!(cursors.len(), 1, "a cursor in a getMore is still open");
        cursors.restore(b, cursor);
        drop(in_use);
        assert_eq!(cursors.len(), 1);
        assert_eq!(cursors.reap(Duration::ZERO), 1);
        assert_eq!(cursors.len(), 0);
    }
}
