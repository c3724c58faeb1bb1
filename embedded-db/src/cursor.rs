//! Server-side cursors: the rest of a query result, a scan to resume, or an open change
//! stream, kept between `getMore`s under an Int64 id.
//!
//! What cursors may hold is bounded: a plain `find` keeps only where its scan stopped and
//! reads the next batch from storage on `getMore`; a materialised result (a sort, a
//! pipeline) counts against [`MATERIALISED_BYTES`] across all cursors, and a new one that
//! would pass it is refused with `ExceededMemoryLimit` (146).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bson::Document;

use crate::changes::ChangeStream;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::approx_size;
use crate::namespace::Namespace;
use crate::query::filter::Filter;
use crate::query::projection::Projection;

/// Cursors idle for longer than this are closed, as `mongod` does after 10 minutes.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Bytes all materialised cursors together may hold.
pub(crate) const MATERIALISED_BYTES: usize = 1024 * 1024 * 1024;

/// What a cursor yields.
#[derive(Debug)]
pub(crate) enum CursorKind {
    /// The remaining documents of a materialised result, and their approximate size.
    Documents(VecDeque<Document>, usize),
    /// A `find` without a sort: the scan resumes after the last `_id` it returned.
    Scan(Box<ScanCursor>),
    /// A change stream, read on demand.
    ChangeStream(Box<ChangeStream>),
}

/// Where a `find` scan stopped, and what it still has to do.
#[derive(Debug)]
pub(crate) struct ScanCursor {
    /// The collection scanned.
    pub(crate) ns: Namespace,
    /// Its catalog id when the scan started: a collection dropped (or dropped and created
    /// again) meanwhile ends the cursor with `QueryPlanKilled`.
    pub(crate) collection_id: i64,
    /// The query filter.
    pub(crate) filter: Filter,
    /// The projection, applied to each returned document.
    pub(crate) projection: Option<Projection>,
    /// Key of the last `_id` returned; the scan resumes after it.
    pub(crate) after: Vec<u8>,
    /// Documents still to return under the query's `limit`.
    pub(crate) remaining: Option<usize>,
}

/// An open cursor.
#[derive(Debug)]
pub(crate) struct Cursor {
    /// The `ns` reported in every reply for this cursor.
    pub(crate) ns: String,
    /// Its source of documents.
    pub(crate) kind: CursorKind,
    last_used: Instant,
}

impl Cursor {
    /// A cursor reporting `ns`.
    pub(crate) fn new(ns: String, kind: CursorKind) -> Self {
        Self {
            ns,
            kind,
            last_used: Instant::now(),
        }
    }

    /// A cursor over the rest of a materialised result.
    pub(crate) fn documents(ns: String, docs: VecDeque<Document>) -> Self {
        let bytes = docs.iter().map(approx_size).sum();
        Self::new(ns, CursorKind::Documents(docs, bytes))
    }

    fn held_bytes(&self) -> usize {
        match &self.kind {
            CursorKind::Documents(_, bytes) => *bytes,
            _ => 0,
        }
    }
}

/// All open cursors. A cursor is taken out while a `getMore` works on it, so two concurrent
/// `getMore`s on one id cannot interleave (the second sees `CursorNotFound`).
#[derive(Debug)]
pub(crate) struct Cursors {
    open: Mutex<HashMap<i64, Cursor>>,
    /// Bytes held by materialised cursors (open or taken out by a `getMore`).
    held: AtomicUsize,
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
            held: AtomicUsize::new(0),
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

    /// Registers a cursor and returns its new, positive, never-reused id; refuses a
    /// materialised one that would take the cursors past [`MATERIALISED_BYTES`].
    pub(crate) fn insert(&self, cursor: Cursor) -> CommandResult<i64> {
        let bytes = cursor.held_bytes();
        let held = self.held.fetch_add(bytes, Ordering::Relaxed);
        if held.saturating_add(bytes) > MATERIALISED_BYTES {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            return Err(CommandError::new(
                ErrorCode::ExceededMemoryLimit,
                format!(
                    "open cursors already hold {held} bytes of results (limit {MATERIALISED_BYTES}); read them to the end or kill them"
                ),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, cursor);
        Ok(id)
    }

    /// Records that a materialised cursor now holds `now` bytes instead of `before`.
    pub(crate) fn resize(&self, before: usize, now: usize) {
        if now <= before {
            self.held.fetch_sub(before - now, Ordering::Relaxed);
        } else {
            self.held.fetch_add(now - before, Ordering::Relaxed);
        }
    }

    /// Releases what a cursor that is closed holds.
    fn forget(&self, cursor: &Cursor) {
        self.held.fetch_sub(cursor.held_bytes(), Ordering::Relaxed);
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
        ids.iter().partition(|id| match open.remove(id) {
            Some(cursor) => {
                self.forget(&cursor);
                true
            }
            None => false,
        })
    }

    /// Closes cursors idle for longer than `timeout`; returns how many.
    pub(crate) fn reap(&self, timeout: Duration) -> usize {
        let mut open = self.lock();
        let before = open.len();
        open.retain(|_, c| {
            let keep = c.last_used.elapsed() < timeout;
            if !keep {
                self.forget(c);
            }
            keep
        });
        before - open.len()
    }

    /// Bytes materialised cursors hold now.
    pub(crate) fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
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
        CursorKind::Documents(VecDeque::new(), 0)
    }

    #[test]
    fn ids_are_unique_and_kill_reports_unknown() {
        let cursors = Cursors::default();
        let a = cursors
            .insert(Cursor::new("t.c".into(), docs()))
            .expect("fits");
        let b = cursors
            .insert(Cursor::new("t.c".into(), docs()))
            .expect("fits");
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

    #[test]
    fn materialised_cursors_share_one_budget() {
        let cursors = Cursors::default();
        let big = |bytes| Cursor::new("t.c".into(), CursorKind::Documents(VecDeque::new(), bytes));
        let a = cursors.insert(big(MATERIALISED_BYTES - 10)).expect("fits");
        let err = cursors.insert(big(11)).expect_err("over budget");
        assert_eq!(err.code, ErrorCode::ExceededMemoryLimit);
        assert!(cursors.insert(big(10)).is_ok());
        cursors.kill(&[a]);
        assert_eq!(cursors.held_bytes(), 10);
    }
}
