//! The writer thread: group commit of queued write jobs, the persisted counters, and the
//! `Store` handle that reads and writes go through.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{mpsc, Arc, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{oneshot, watch};

use super::changelog::{unix_seconds, Position, RecentChanges};
use super::read::ReadCtx;
use super::schema::{storage_error, Counters, CATALOG, CHANGES, DOCUMENTS, META, UNIQUE_KEYS};
use super::sessions::SESSIONS;
use super::write::Touched;
use super::write::WriteCtx;
use crate::error::{CommandError, CommandResult, ErrorCode};

/// Most jobs folded into one transaction; bounds the latency one commit adds.
const MAX_GROUP: usize = 512;

/// Storage failures while opening; once running, they surface as [`ErrorCode::InternalError`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The data directory could not be created or used.
    #[error("cannot use data directory {path}: {source}")]
    Directory {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The database file could not be opened or initialised.
    #[error("cannot open database file: {0}")]
    Database(String),
}

type Completion = Box<dyn FnOnce(CommandResult<()>) + Send>;
type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Completion + Send>;

enum WriterMsg {
    Job(Job),
    Stop(oneshot::Sender<()>),
}

/// The database files and the writer thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    jobs: mpsc::Sender<WriterMsg>,
    committed: watch::Receiver<Position>,
    recent: Arc<RwLock<RecentChanges>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("last_position", &*self.inner.committed.borrow())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the database in `dir` and starts the writer thread.
    ///
    /// `history_limit` is how many change-log entries are kept; older ones are trimmed and a
    /// resume from before them fails with `ChangeStreamHistoryLost`.
    pub(crate) fn open(dir: &Path, history_limit: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
        let db = Database::create(dir.join("embedded-db.redb"))
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let counters = init_counters(&db).map_err(|e| StoreError::Database(e.to_string()))?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let (committed_tx, committed) = watch::channel(counters.last_position);
        let recent = Arc::new(RwLock::new(RecentChanges::starting_at(
            counters.last_position,
        )));
        let writer_recent = Arc::clone(&recent);
        let writer_db = Arc::clone(&db);
        std::thread::Builder::new()
            .name("embedded-db-writer".into())
            .stack_size(crate::limits::THREAD_STACK_SIZE)
            .spawn(move || {
                let stop = writer_loop(
                    &writer_db,
                    &rx,
                    &Published {
                        committed: committed_tx,
                        recent: writer_recent,
                    },
                    counters,
                    history_limit,
                );
                // Close the file before saying so, so that a reopen right after `close` succeeds.
                drop(writer_db);
                if let Some(done) = stop {
                    let _ = done.send(());
                }
            })
            .map_err(|e| StoreError::Database(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                jobs: tx,
                committed,
                recent,
            }),
        })
    }

    /// Runs `f` on a consistent snapshot of committed data, off the async runtime.
    pub(crate) async fn read<T, F>(&self, f: F) -> CommandResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadCtx) -> CommandResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.inner.db);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(storage_error)?;
            f(&ReadCtx { txn })
        })
        .await
        .map_err(|e| CommandError::internal(format!("read task failed: {e}")))?
    }

    /// Runs `f` in the next group-commit transaction; returns once that transaction is durable.
    ///
    /// Effects of `f` before a returned error are kept (MongoDB writes are not atomic across
    /// documents); a storage failure aborts the whole group and every job in it fails.
    pub(crate) async fn write<T, F>(&self, f: F) -> CommandResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> CommandResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            let result = f(ctx);
            Box::new(move |commit: CommandResult<()>| {
                let _ = tx.send(commit.and(result));
            })
        });
        self.inner
            .jobs
            .send(WriterMsg::Job(job))
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }

    /// Watches the last committed change-log position; changes after every commit.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Position> {
        self.inner.committed.clone()
    }

    /// The last committed position (the cluster time of the newest write).
    pub(crate) fn last_position(&self) -> Position {
        *self.inner.committed.borrow()
    }

    /// Runs `f` on the in-memory tail of the change log.
    pub(crate) fn with_recent<T>(&self, f: impl FnOnce(&RecentChanges) -> T) -> T {
        let recent = self
            .inner
            .recent
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&recent)
    }

    /// Stops the writer thread after the jobs already queued; later writes fail with
    /// `ShutdownInProgress`.
    pub(crate) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.jobs.send(WriterMsg::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn shutting_down() -> CommandError {
    CommandError::new(ErrorCode::ShutdownInProgress, "The server is shutting down")
}

fn init_counters(db: &Database) -> Result<Counters, redb::Error> {
    let txn = db.begin_write()?;
    let counters = {
        let mut meta = txn.open_table(META)?;
        // Create every table so that readers never meet a missing one.
        txn.open_table(CATALOG)?;
        txn.open_table(DOCUMENTS)?;
        txn.open_table(UNIQUE_KEYS)?;
        txn.open_table(CHANGES)?;
        txn.open_table(SESSIONS)?;
        let get = |name: &str| -> Result<Option<u64>, redb::Error> {
            Ok(meta.get(name)?.map(|v| v.value()))
        };
        let counters = match get("last_position")? {
            Some(last_position) => Counters {
                last_position,
                history_floor: get("history_floor")?.unwrap_or(0),
                next_id: get("next_id")?.unwrap_or(1),
                change_count: get("change_count")?.unwrap_or(0),
            },
            None => {
                // A new data directory: nothing before this moment can be resumed from.
                let start = unix_seconds() << 32;
                Counters {
                    last_position: start,
                    history_floor: start,
                    next_id: 1,
                    change_count: 0,
                }
            }
        };
        save_counters(&mut meta, &counters)?;
        counters
    };
    txn.commit()?;
    Ok(counters)
}

fn save_counters(
    meta: &mut redb::Table<'_, &str, u64>,
    c: &Counters,
) -> Result<(), redb::StorageError> {
    meta.insert("last_position", c.last_position)?;
    meta.insert("history_floor", c.history_floor)?;
    meta.insert("next_id", c.next_id)?;
    meta.insert("change_count", c.change_count)?;
    Ok(())
}

/// Where the writer announces commits: the change-log tail first, then the position.
struct Published {
    committed: watch::Sender<Position>,
    recent: Arc<RwLock<RecentChanges>>,
}

fn writer_loop(
    db: &Database,
    rx: &mpsc::Receiver<WriterMsg>,
    published: &Published,
    mut counters: Counters,
    history_limit: u64,
) -> Option<oneshot::Sender<()>> {
    let mut touched = Touched::since(counters.last_position);
    while let Ok(first) = rx.recv() {
        let mut jobs = Vec::new();
        let mut stop = None;
        match first {
            WriterMsg::Job(job) => jobs.push(job),
            WriterMsg::Stop(done) => stop = Some(done),
        }
        while stop.is_none() && jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(WriterMsg::Job(job)) => jobs.push(job),
                Ok(WriterMsg::Stop(done)) => stop = Some(done),
                Err(_) => break,
            }
        }
        if !jobs.is_empty() {
            counters = commit_group(db, jobs, counters, history_limit, published, &mut touched);
        }
        if stop.is_some() {
            return stop;
        }
    }
    None
}

/// Runs `jobs` in one transaction and commits it; returns the counters now in force.
fn commit_group(
    db: &Database,
    jobs: Vec<Job>,
    counters: Counters,
    history_limit: u64,
    published: &Published,
    touched: &mut Touched,
) -> Counters {
    let fail_all = |jobs: Vec<Completion>, why: &str| {
        for done in jobs {
            done(Err(storage_error(why)));
        }
    };
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            let why = e.to_string();
            // Jobs own their reply channels: dropping them unanswered would hang nobody,
            // but answering says why.
            let completions = jobs.into_iter().map(|_| -> Completion { Box::new(|_| {}) });
            fail_all(completions.collect(), &why);
            return counters;
        }
    };
    let mut ctx = WriteCtx {
        txn: &txn,
        counters,
        wall: bson::DateTime::now(),
        failed: Cell::new(false),
        written: Vec::new(),
        touched,
    };
    let mut completions = Vec::with_capacity(jobs.len());
    for job in jobs {
        match std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut ctx))) {
            Ok(done) => completions.push(done),
            Err(_) => {
                tracing::error!("write job panicked; aborting its group");
                ctx.failed.set(true);
            }
        }
    }
    if !ctx.failed.get() {
        if let Err(e) = ctx.trim_history(history_limit) {
            tracing::error!(cause = %e, "cannot trim change history");
            ctx.failed.set(true);
        }
    }
    let new_counters = ctx.counters;
    let written = std::mem::take(&mut ctx.written);
    let saved = txn
        .open_table(META)
        .and_then(|mut meta| save_counters(&mut meta, &new_counters).map_err(Into::into));
    if ctx.failed.get() || saved.is_err() {
        let _ = txn.abort();
        fail_all(completions, "write transaction aborted");
        return counters;
    }
    match txn.commit() {
        Ok(()) => {
            // The tail first: a stream woken by the position must find the records.
            published
                .recent
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(written, new_counters.last_position);
            published.committed.send_replace(new_counters.last_position);
            for done in completions {
                done(Ok(()));
            }
            new_counters
        }
        Err(e) => {
            fail_all(completions, &e.to_string());
            counters
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::Namespace;
    use crate::storage::Snapshot;
    use bson::doc;

    #[test]
    fn clock_never_goes_backwards() {
        let future = (unix_seconds() + 100) << 32 | 5;
        let mut c = Counters {
            last_position: future,
            history_floor: 0,
            next_id: 1,
            change_count: 0,
        };
        assert_eq!(c.next_position(), future + 1);
        let mut c = Counters {
            last_position: 0,
            ..c
        };
        let p = c.next_position();
        assert_eq!(p & 0xFFFF_FFFF, 1);
        assert!(c.next_position() > p);
    }

    #[tokio::test]
    async fn writes_survive_reopen_and_history_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = Namespace::new("t", "c").expect("valid");
        {
            let store = Store::open(dir.path(), 3).expect("opens");
            for i in 0..5 {
                let ns = ns.clone();
                store
                    .write(move |ctx| {
                        let meta = ctx.ensure_collection(&ns)?;
                        ctx.insert(&ns, &meta, doc! { "_id": i })
                    })
                    .await
                    .expect("insert");
            }
            store.close().await;
        }
        let store = Store::open(dir.path(), 3).expect("reopens");
        let (docs, floor, changes) = store
            .read(move |r| {
                let meta = r.collection(&ns)?.expect("exists");
                let mut changes = 0;
                r.changes_after(0, |_, _| {
                    changes += 1;
                    Ok(true)
                })?;
                Ok((r.scan(&meta)?.len(), r.history_floor()?, changes))
            })
            .await
            .expect("reads");
        assert_eq!(docs, 5);
        assert_eq!(changes, 3);
        assert!(floor > 0);
    }
}
