//! Read access: a snapshot's catalog, documents and change log.

use bson::{Bson, Document};
use redb::{ReadTransaction, ReadableTable};

use super::changelog::Position;
use super::schema::{storage_error, CollectionMeta, CATALOG, CHANGES, DOCUMENTS, META};
use crate::error::CommandResult;
use crate::keys;
use crate::namespace::Namespace;

/// Read access to one consistent snapshot.
pub(crate) struct ReadCtx {
    pub(super) txn: ReadTransaction,
}

/// What [`Snapshot::for_each_after`] calls with each document: its encoded `_id` key, its
/// stored size and the document; returns whether to go on.
pub(crate) type DocVisitor<'a> = dyn FnMut(&[u8], usize, Document) -> CommandResult<bool> + 'a;

/// What reads need from a snapshot, whether a read transaction or the write transaction
/// (which sees its own uncommitted changes).
pub(crate) trait Snapshot {
    /// The catalog entry of `ns`, if the collection exists.
    fn collection(&self, ns: &Namespace) -> CommandResult<Option<CollectionMeta>>;
    /// The collections of `db`, by name.
    fn collections(&self, db: &str) -> CommandResult<Vec<(String, CollectionMeta)>>;
    /// Every document of the collection, in `_id` order.
    fn scan(&self, meta: &CollectionMeta) -> CommandResult<Vec<Document>>;
    /// The document whose `_id` equals `id`.
    fn find_by_id(&self, meta: &CollectionMeta, id: &Bson) -> CommandResult<Option<Document>>;
    /// Calls `visit` with each document of the collection whose encoded `_id` sorts after
    /// `after` (every document when `after` is empty), in `_id` order, with that key and the
    /// document's stored size, until `visit` returns false. Holds one document at a time.
    fn for_each_after(
        &self,
        meta: &CollectionMeta,
        after: &[u8],
        visit: &mut DocVisitor<'_>,
    ) -> CommandResult<()>;
}

impl Snapshot for ReadCtx {
    fn for_each_after(
        &self,
        meta: &CollectionMeta,
        after: &[u8],
        visit: &mut DocVisitor<'_>,
    ) -> CommandResult<()> {
        let table = self.txn.open_table(DOCUMENTS).map_err(storage_error)?;
        visit_documents(&table, meta, after, visit)
    }

    fn collection(&self, ns: &Namespace) -> CommandResult<Option<CollectionMeta>> {
        let table = self.txn.open_table(CATALOG).map_err(storage_error)?;
        get_collection(&table, ns)
    }

    fn collections(&self, db: &str) -> CommandResult<Vec<(String, CollectionMeta)>> {
        let table = self.txn.open_table(CATALOG).map_err(storage_error)?;
        list_collections(&table, db)
    }

    fn scan(&self, meta: &CollectionMeta) -> CommandResult<Vec<Document>> {
        let table = self.txn.open_table(DOCUMENTS).map_err(storage_error)?;
        scan_documents(&table, meta)
    }

    fn find_by_id(&self, meta: &CollectionMeta, id: &Bson) -> CommandResult<Option<Document>> {
        let table = self.txn.open_table(DOCUMENTS).map_err(storage_error)?;
        get_document(&table, meta, &keys::encode(id))
    }
}

impl ReadCtx {
    /// The names of databases that hold at least one collection, sorted.
    pub(crate) fn databases(&self) -> CommandResult<Vec<String>> {
        let table = self.txn.open_table(CATALOG).map_err(storage_error)?;
        let mut names: Vec<String> = Vec::new();
        for entry in table.iter().map_err(storage_error)? {
            let (key, _) = entry.map_err(storage_error)?;
            if let Some((db, _)) = key.value().split_once('.') {
                if names.last().map(String::as_str) != Some(db) {
                    names.push(db.to_owned());
                }
            }
        }
        Ok(names)
    }

    /// Total stored bytes and documents of the collection.
    pub(crate) fn stats(&self, meta: &CollectionMeta) -> CommandResult<(u64, u64)> {
        let table = self.txn.open_table(DOCUMENTS).map_err(storage_error)?;
        let mut bytes = 0u64;
        let mut count = 0u64;
        for entry in collection_range(&table, meta)? {
            let (_, value) = entry.map_err(storage_error)?;
            bytes += value.value().len() as u64;
            count += 1;
        }
        Ok((bytes, count))
    }

    /// The newest committed position in this snapshot.
    pub(crate) fn last_position(&self) -> CommandResult<Position> {
        self.meta("last_position")
    }

    /// Positions at or below this one may have been trimmed from the change log.
    pub(crate) fn history_floor(&self) -> CommandResult<Position> {
        self.meta("history_floor")
    }

    fn meta(&self, name: &str) -> CommandResult<Position> {
        let table = self.txn.open_table(META).map_err(storage_error)?;
        Ok(table
            .get(name)
            .map_err(storage_error)?
            .map_or(0, |v| v.value()))
    }

    /// Whether the change log holds a record at exactly `pos`.
    pub(crate) fn has_change(&self, pos: Position) -> CommandResult<bool> {
        let table = self.txn.open_table(CHANGES).map_err(storage_error)?;
        Ok(table.get(pos).map_err(storage_error)?.is_some())
    }

    /// Calls `visit` with each change record after `after`, in order, until it returns false.
    pub(crate) fn changes_after(
        &self,
        after: Position,
        mut visit: impl FnMut(Position, Document) -> CommandResult<bool>,
    ) -> CommandResult<()> {
        let table = self.txn.open_table(CHANGES).map_err(storage_error)?;
        let Some(start) = after.checked_add(1) else {
            return Ok(());
        };
        for entry in table.range(start..).map_err(storage_error)? {
            let (pos, record) = entry.map_err(storage_error)?;
            let record = Document::from_reader(record.value()).map_err(storage_error)?;
            if !visit(pos.value(), record)? {
                break;
            }
        }
        Ok(())
    }
}

pub(super) fn get_collection(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    ns: &Namespace,
) -> CommandResult<Option<CollectionMeta>> {
    match table.get(ns.key().as_str()).map_err(storage_error)? {
        Some(bytes) => Ok(Some(
            bson::from_slice(bytes.value()).map_err(storage_error)?,
        )),
        None => Ok(None),
    }
}

pub(super) fn list_collections(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    db: &str,
) -> CommandResult<Vec<(String, CollectionMeta)>> {
    // Keys are "db.coll": every key of `db` sorts between "db." and "db/" ('/' follows '.').
    let start = format!("{db}.");
    let end = format!("{db}/");
    let mut out = Vec::new();
    for entry in table
        .range(start.as_str()..end.as_str())
        .map_err(storage_error)?
    {
        let (key, value) = entry.map_err(storage_error)?;
        let name = key.value()[start.len()..].to_owned();
        out.push((
            name,
            bson::from_slice(value.value()).map_err(storage_error)?,
        ));
    }
    Ok(out)
}

type DocRange<'a> = redb::Range<'a, (u64, &'static [u8]), &'static [u8]>;

fn collection_range<'a>(
    table: &'a impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    meta: &CollectionMeta,
) -> CommandResult<DocRange<'a>> {
    let prefix = meta.key_prefix();
    let empty: &[u8] = &[];
    table
        .range((prefix, empty)..(prefix + 1, empty))
        .map_err(storage_error)
}

pub(super) fn scan_documents(
    table: &impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    meta: &CollectionMeta,
) -> CommandResult<Vec<Document>> {
    let mut out = Vec::new();
    for entry in collection_range(table, meta)? {
        let (_, value) = entry.map_err(storage_error)?;
        out.push(Document::from_reader(value.value()).map_err(storage_error)?);
    }
    Ok(out)
}

pub(super) fn visit_documents(
    table: &impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    meta: &CollectionMeta,
    after: &[u8],
    visit: &mut DocVisitor<'_>,
) -> CommandResult<()> {
    use std::ops::Bound;
    let prefix = meta.key_prefix();
    let empty: &[u8] = &[];
    // No `_id` encodes to the empty key, so "after the empty key" is "from the start".
    let range = table
        .range::<(u64, &[u8])>((
            Bound::Excluded((prefix, after)),
            Bound::Excluded((prefix + 1, empty)),
        ))
        .map_err(storage_error)?;
    for entry in range {
        let (key, value) = entry.map_err(storage_error)?;
        let bytes = value.value();
        let doc = Document::from_reader(bytes).map_err(storage_error)?;
        if !visit(key.value().1, bytes.len(), doc)? {
            break;
        }
    }
    Ok(())
}

pub(super) fn get_document(
    table: &impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    meta: &CollectionMeta,
    id_key: &[u8],
) -> CommandResult<Option<Document>> {
    match table
        .get((meta.key_prefix(), id_key))
        .map_err(storage_error)?
    {
        Some(bytes) => Ok(Some(
            Document::from_reader(bytes.value()).map_err(storage_error)?,
        )),
        None => Ok(None),
    }
}
