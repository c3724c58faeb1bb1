//! Durable storage: redb tables for the catalog, documents, unique-index keys
//! and the change log, written by one writer thread with group commit.
//!
//! # Why redb, and why one writer thread
//!
//! redb gives ACID transactions, crash safety (copy-on-write B-trees with a
//! checksummed commit slot, so a `kill -9` mid-commit leaves the previous
//! commit intact) and MVCC readers that never block the writer. Its cost is
//! one `fsync` per durable commit, so this module funnels every write through
//! one thread that drains all queued write jobs into a single transaction and
//! commits them with one `fsync` ("group commit"): under load, many clients
//! share each sync. A job's reply is released only after its commit returns,
//! so an acknowledged write is on disk. The change-log entries of a write are
//! inserted in the same transaction as the data they describe, so the log and
//! the data can never disagree, and a resume token is simply a log position.
//!
//! # Measurements behind the choice
//!
//! A durable write costs an `fsync`, so one sync per write would cap a single
//! client at what the disk's sync latency allows; group commit lets many
//! clients share each sync, and a batched insert puts many documents in one
//! transaction. The figures (`make bench`) are in `docs/benchmarks.md`, "The
//! measurements behind redb and group commit". An own append-only log would
//! sync as often and would still need a crash-safe index for `_id` and unique
//! keys and compaction of old history; redb's B-trees give both, and its
//! `kill -9` safety is exercised by `tests/durability.rs`.

mod changelog;
mod read;
mod schema;
mod sessions;
mod write;
mod writer;

pub(crate) use changelog::{
    position_of, timestamp_of, CatalogOp, ChangeRecord, Position, RecentChanges,
};
pub(crate) use read::{ReadCtx, Snapshot};
pub(crate) use schema::{id_index_spec, CollectionMeta, IndexMeta, ID_INDEX};
pub(crate) use sessions::RetryId;
pub(crate) use write::WriteCtx;
pub(crate) use writer::{Store, StoreError};
