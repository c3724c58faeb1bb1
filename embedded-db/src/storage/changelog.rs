//! The change log: records, positions (cluster times) and the in-memory tail of recent
//! records that waiting change streams read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bson::{doc, Bson, Document};

use crate::error::CommandResult;
use crate::namespace::Namespace;

/// What a change-log record says about one change; the stored form of a change event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChangeRecord {
    /// A document was inserted (`doc` is the full document).
    Insert {
        ns: Namespace,
        id: Bson,
        doc: Document,
    },
    /// A document was updated with operators.
    Update {
        ns: Namespace,
        id: Bson,
        description: Document,
        pre: Option<Document>,
        post: Option<Document>,
    },
    /// A document was replaced.
    Replace {
        ns: Namespace,
        id: Bson,
        doc: Document,
        pre: Option<Document>,
    },
    /// A document was deleted.
    Delete {
        ns: Namespace,
        id: Bson,
        pre: Option<Document>,
    },
    /// A collection was dropped.
    Drop { ns: Namespace },
    /// A collection was renamed; `dropped` is the UUID of the target it replaced (`dropTarget`).
    Rename {
        from: Namespace,
        to: Namespace,
        dropped: Option<bson::Uuid>,
    },
    /// A database was dropped (after a `Drop` for each of its collections).
    DropDatabase { db: String },
    /// A catalog change that only streams opened with `showExpandedEvents` see.
    Catalog {
        op: CatalogOp,
        ns: Namespace,
        /// The event's `operationDescription`.
        description: Document,
        /// The event's `stateBeforeChange` (`modify` only).
        before: Option<Document>,
    },
}

/// The catalog changes reported to `showExpandedEvents` streams, named as their events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CatalogOp {
    /// A collection was created (explicitly or by its first write).
    Create,
    /// One index was built.
    CreateIndexes,
    /// One index was dropped.
    DropIndexes,
    /// `collMod` changed the collection's options.
    Modify,
}

impl CatalogOp {
    /// The event's `operationType`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::CreateIndexes => "createIndexes",
            Self::DropIndexes => "dropIndexes",
            Self::Modify => "modify",
        }
    }
}

impl ChangeRecord {
    /// The namespaces whose snapshots this change makes stale.
    pub(super) fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        let (first, second) = match self {
            Self::Insert { ns, .. }
            | Self::Update { ns, .. }
            | Self::Replace { ns, .. }
            | Self::Delete { ns, .. }
            | Self::Drop { ns }
            | Self::Catalog { ns, .. } => (Some(ns), None),
            Self::Rename { from, to, .. } => (Some(from), Some(to)),
            Self::DropDatabase { .. } => (None, None),
        };
        first.into_iter().chain(second)
    }

    /// The stored record; `collection` is the UUID of the collection changed (the events'
    /// `collectionUUID`).
    pub(super) fn to_document(
        &self,
        wall: bson::DateTime,
        collection: Option<bson::Uuid>,
    ) -> Document {
        fn ns_doc(ns: &Namespace) -> Document {
            doc! { "db": &ns.db, "coll": &ns.coll }
        }
        let mut d = match self {
            Self::Insert { ns, id, doc } => {
                doc! { "op": "insert", "ns": ns_doc(ns), "id": id.clone(), "doc": doc.clone() }
            }
            Self::Update {
                ns,
                id,
                description,
                pre,
                post,
            } => {
                let mut d = doc! { "op": "update", "ns": ns_doc(ns), "id": id.clone(), "upd": description.clone() };
                if let Some(pre) = pre {
                    d.insert("pre", pre.clone());
                }
                if let Some(post) = post {
                    d.insert("post", post.clone());
                }
                d
            }
            Self::Replace { ns, id, doc, pre } => {
                let mut d = doc! { "op": "replace", "ns": ns_doc(ns), "id": id.clone(), "doc": doc.clone() };
                if let Some(pre) = pre {
                    d.insert("pre", pre.clone());
                }
                d
            }
            Self::Delete { ns, id, pre } => {
                let mut d = doc! { "op": "delete", "ns": ns_doc(ns), "id": id.clone() };
                if let Some(pre) = pre {
                    d.insert("pre", pre.clone());
                }
                d
            }
            Self::Drop { ns } => doc! { "op": "drop", "ns": ns_doc(ns) },
            Self::Rename { from, to, dropped } => {
                let mut d = doc! { "op": "rename", "ns": ns_doc(from), "to": ns_doc(to) };
                if let Some(dropped) = dropped {
                    d.insert("dropped", *dropped);
                }
                d
            }
            Self::DropDatabase { db } => doc! { "op": "dropDatabase", "ns": { "db": db } },
            Self::Catalog {
                op,
                ns,
                description,
                before,
            } => {
                let mut d = doc! { "op": op.name(), "ns": ns_doc(ns), "desc": description.clone() };
                if let Some(before) = before {
                    d.insert("before", before.clone());
                }
                d
            }
        };
        if let Some(uuid) = collection {
            d.insert("uuid", uuid);
        }
        d.insert("wall", wall);
        d
    }
}

/// A position in the change log: `(seconds << 32) | increment`, the cluster time of a change.
pub(crate) type Position = u64;

/// Change records kept in memory after commit, so that change streams waiting at the head of
/// the log are served without a storage read.
const RECENT_CHANGES: usize = 4096;

/// The newest committed change records, in log order.
#[derive(Debug, Default)]
pub(crate) struct RecentChanges {
    /// (position, record), oldest first.
    records: VecDeque<(Position, Arc<Document>)>,
    /// Every record after this position is in `records`.
    floor: Position,
    /// The newest committed position (records may stop before it: not every commit logs).
    last: Position,
}

impl RecentChanges {
    /// An empty tail: every record after `pos` (the newest committed position) is here.
    pub(super) fn starting_at(pos: Position) -> Self {
        Self {
            floor: pos,
            last: pos,
            records: VecDeque::new(),
        }
    }

    /// Whether every committed record after `pos` is here.
    pub(crate) fn covers(&self, pos: Position) -> bool {
        pos >= self.floor
    }

    /// The newest committed position.
    pub(crate) fn last_position(&self) -> Position {
        self.last
    }

    /// Calls `visit` with each record after `after`, in order, until it returns false.
    pub(crate) fn changes_after(
        &self,
        after: Position,
        mut visit: impl FnMut(Position, &Document) -> CommandResult<bool>,
    ) -> CommandResult<()> {
        let start = self.records.partition_point(|(pos, _)| *pos <= after);
        for (pos, record) in self.records.iter().skip(start) {
            if !visit(*pos, record)? {
                break;
            }
        }
        Ok(())
    }

    pub(super) fn push(&mut self, written: Vec<(Position, Document)>, last: Position) {
        for (pos, record) in written {
            self.records.push_back((pos, Arc::new(record)));
        }
        while self.records.len() > RECENT_CHANGES {
            if let Some((pos, _)) = self.records.pop_front() {
                self.floor = pos;
            }
        }
        self.last = last;
    }
}

/// The cluster time a position stands for.
pub(crate) fn timestamp_of(pos: Position) -> bson::Timestamp {
    bson::Timestamp {
        time: u32::try_from(pos >> 32).unwrap_or(u32::MAX),
        increment: u32::try_from(pos & 0xFFFF_FFFF).unwrap_or(u32::MAX),
    }
}

/// The position of a cluster time.
pub(crate) fn position_of(ts: bson::Timestamp) -> Position {
    (u64::from(ts.time) << 32) | u64::from(ts.increment)
}

pub(super) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_timestamps() {
        let ts = bson::Timestamp {
            time: 1_700_000_000,
            increment: 7,
        };
        assert_eq!(timestamp_of(position_of(ts)), ts);
    }

    #[test]
    fn recent_changes_cover_only_what_they_hold() {
        let mut recent = RecentChanges {
            floor: 10,
            last: 10,
            ..RecentChanges::default()
        };
        let written = (11..11 + RECENT_CHANGES as u64 + 5)
            .map(|pos| (pos, doc! { "pos": i64::try_from(pos).unwrap_or(0) }))
            .collect();
        recent.push(written, 20_000);
        assert_eq!(recent.records.len(), RECENT_CHANGES);
        assert_eq!(recent.last_position(), 20_000);
        assert!(!recent.covers(12), "evicted records are not covered");
        assert!(recent.covers(15));
        let mut seen = Vec::new();
        recent
            .changes_after(4000, |pos, _| {
                seen.push(pos);
                Ok(seen.len() < 3)
            })
            .expect("visit");
        assert_eq!(seen, vec![4001, 4002, 4003]);
    }
}
