//! Write access inside one group-commit transaction: collections, documents, index keys
//! and change records.

use std::cell::Cell;
use std::collections::HashMap;

use bson::{doc, Bson, Document};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::changelog::{CatalogOp, ChangeRecord, Position};
use super::read::{
    get_collection, get_document, list_collections, scan_documents, visit_documents, DocVisitor,
    Snapshot,
};
use super::schema::{
    duplicate_key, encode_document, id_index_spec, id_to_key, index_keys, storage_error,
    CollectionMeta, Counters, IndexMeta, CATALOG, CHANGES, DOCUMENTS, ID_INDEX, UNIQUE_KEYS,
};
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::keys;
use crate::namespace::Namespace;

/// When each collection was last written (catalog or documents), as the writer saw it, so
/// that a write's read phase can tell whether its snapshot still holds. A collection not
/// written since the writer started counts as written at the start position.
#[derive(Debug)]
pub(super) struct Touched {
    start: Position,
    by_ns: HashMap<String, Position>,
}

impl Touched {
    /// Nothing written after `start` yet.
    pub(super) fn since(start: Position) -> Self {
        Self {
            start,
            by_ns: HashMap::new(),
        }
    }

    fn mark(&mut self, ns: &Namespace, pos: Position) {
        let key = ns.key();
        match self.by_ns.get_mut(&key) {
            Some(last) => *last = pos,
            None => {
                self.by_ns.insert(key, pos);
            }
        }
    }

    fn last(&self, ns: &Namespace) -> Position {
        self.by_ns.get(&ns.key()).copied().unwrap_or(self.start)
    }
}

/// `keyValue` of a duplicate-key error: the index's fields with the clashing values.
fn key_value(index: &IndexMeta, values: Vec<Bson>) -> Document {
    let mut out = Document::new();
    for ((field, _), value) in index.key.iter().zip(values) {
        out.insert(field.clone(), value);
    }
    out
}

/// Write access inside one group-commit transaction.
pub(crate) struct WriteCtx<'t> {
    pub(super) txn: &'t WriteTransaction,
    pub(super) counters: Counters,
    /// The wall-clock time of this transaction (`wallTime` of its change events).
    pub(super) wall: bson::DateTime,
    /// Set when a storage call failed: the transaction will be aborted.
    pub(super) failed: Cell<bool>,
    /// Change records of this transaction, published to readers after commit.
    pub(super) written: Vec<(Position, Document)>,
    /// When each collection was last written, across transactions.
    pub(super) touched: &'t mut Touched,
}

impl WriteCtx<'_> {
    /// Maps a storage failure to a client error and marks the transaction for abort.
    pub(super) fn fail(&self, e: impl std::fmt::Display) -> CommandError {
        self.failed.set(true);
        storage_error(e)
    }

    /// The wall-clock time of this transaction.
    pub(crate) fn now(&self) -> bson::DateTime {
        self.wall
    }

    fn next_id(&mut self) -> i64 {
        let id = self.counters.next_id;
        self.counters.next_id += 1;
        i64::try_from(id).unwrap_or(i64::MAX)
    }

    /// Creates the collection, recording a `create` change; `NamespaceExists` (48) if it
    /// already exists.
    pub(crate) fn create_collection(
        &mut self,
        ns: &Namespace,
        options: Document,
    ) -> CommandResult<CollectionMeta> {
        if self.collection(ns)?.is_some() {
            return Err(CommandError::new(
                ErrorCode::NamespaceExists,
                format!("Collection {ns} already exists."),
            ));
        }
        let mut description = doc! { "idIndex": id_index_spec() };
        description.extend(options.clone());
        let meta = CollectionMeta {
            id: self.next_id(),
            uuid: bson::Uuid::new(),
            options,
            indexes: Vec::new(),
        };
        self.save_collection(ns, &meta)?;
        self.record(
            &ChangeRecord::Catalog {
                op: CatalogOp::Create,
                ns: ns.clone(),
                description,
                before: None,
            },
            Some(meta.uuid),
        )?;
        Ok(meta)
    }

    /// The collection, created with default options when missing (implicit creation on write).
    pub(crate) fn ensure_collection(&mut self, ns: &Namespace) -> CommandResult<CollectionMeta> {
        match self.collection(ns)? {
            Some(meta) => Ok(meta),
            None => self.create_collection(ns, Document::new()),
        }
    }

    /// Stores a changed catalog entry (indexes, options).
    pub(crate) fn save_collection(
        &mut self,
        ns: &Namespace,
        meta: &CollectionMeta,
    ) -> CommandResult<()> {
        let bytes = bson::to_vec(meta).map_err(|e| self.fail(e))?;
        {
            let mut table = self.txn.open_table(CATALOG).map_err(|e| self.fail(e))?;
            table
                .insert(ns.key().as_str(), bytes.as_slice())
                .map_err(|e| self.fail(e))?;
        }
        // A catalog change takes a position of its own (no change record), so that snapshots
        // taken after it are newer than it.
        let pos = self.counters.next_position();
        self.touched.mark(ns, pos);
        Ok(())
    }

    /// Whether the collection `ns` was written (documents or catalog) after position `pos`,
    /// in this transaction or a committed one.
    pub(crate) fn touched_since(&self, ns: &Namespace, pos: Position) -> bool {
        self.touched.last(ns) > pos
    }

    /// Drops the collection with its documents and index keys, recording a `drop` change.
    /// Returns the dropped entry, or `None` when there was no such collection.
    pub(crate) fn drop_collection(
        &mut self,
        ns: &Namespace,
    ) -> CommandResult<Option<CollectionMeta>> {
        let dropped = self.remove_collection(ns)?;
        if let Some(meta) = &dropped {
            self.record(&ChangeRecord::Drop { ns: ns.clone() }, Some(meta.uuid))?;
        }
        Ok(dropped)
    }

    /// Removes the collection with its documents and index keys, without a change record.
    fn remove_collection(&mut self, ns: &Namespace) -> CommandResult<Option<CollectionMeta>> {
        let Some(meta) = self.collection(ns)? else {
            return Ok(None);
        };
        {
            let mut catalog = self.txn.open_table(CATALOG).map_err(|e| self.fail(e))?;
            catalog
                .remove(ns.key().as_str())
                .map_err(|e| self.fail(e))?;
        }
        self.clear_range(DOCUMENTS, meta.key_prefix())?;
        for index in &meta.indexes {
            self.clear_range(UNIQUE_KEYS, id_to_key(index.id))?;
        }
        Ok(Some(meta))
    }

    fn clear_range(
        &self,
        def: TableDefinition<'_, (u64, &[u8]), &[u8]>,
        prefix: u64,
    ) -> CommandResult<()> {
        let mut table = self.txn.open_table(def).map_err(|e| self.fail(e))?;
        let empty: &[u8] = &[];
        table
            .retain_in((prefix, empty)..(prefix + 1, empty), |_, _| false)
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Renames a collection (documents keep their key prefix), recording one `rename` change;
    /// with `drop_target` an existing target is removed first (named in the record, not
    /// recorded as a `drop` of its own, as mongod's one oplog entry does).
    pub(crate) fn rename_collection(
        &mut self,
        from: &Namespace,
        to: &Namespace,
        meta: &CollectionMeta,
        drop_target: bool,
    ) -> CommandResult<()> {
        let dropped = if drop_target {
            self.remove_collection(to)?.map(|target| target.uuid)
        } else {
            None
        };
        {
            let mut catalog = self.txn.open_table(CATALOG).map_err(|e| self.fail(e))?;
            catalog
                .remove(from.key().as_str())
                .map_err(|e| self.fail(e))?;
        }
        self.save_collection(to, meta)?;
        self.record(
            &ChangeRecord::Rename {
                from: from.clone(),
                to: to.clone(),
                dropped,
            },
            Some(meta.uuid),
        )
    }

    /// Inserts a new document (its `_id` must be set), enforcing the `_id` and unique indexes,
    /// and records an `insert` change. Everything is checked before anything is written:
    /// on an error the collection and its indexes are as before.
    pub(crate) fn insert(
        &mut self,
        ns: &Namespace,
        meta: &CollectionMeta,
        doc: Document,
    ) -> CommandResult<()> {
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        let id_key = keys::encode(&id);
        let bytes = encode_document(&doc)?;
        {
            let mut table = self.txn.open_table(DOCUMENTS).map_err(|e| self.fail(e))?;
            if table
                .get((meta.key_prefix(), id_key.as_slice()))
                .map_err(|e| self.fail(e))?
                .is_some()
            {
                return Err(duplicate_key(
                    ns,
                    ID_INDEX,
                    &doc! { "_id": 1 },
                    &doc! { "_id": id },
                ));
            }
            let index_entries = self.check_index_keys(ns, meta, &doc, &id_key)?;
            self.put_index_keys(&index_entries, &id_key)?;
            table
                .insert((meta.key_prefix(), id_key.as_slice()), bytes.as_slice())
                .map_err(|e| self.fail(e))?;
        }
        self.record(
            &ChangeRecord::Insert {
                ns: ns.clone(),
                id,
                doc,
            },
            Some(meta.uuid),
        )
    }

    /// Replaces `old` by `new` (same `_id`), keeping unique indexes right, and records `change`.
    /// Everything is checked before anything is written: on an error the document and the
    /// indexes are as before.
    pub(crate) fn replace(
        &mut self,
        ns: &Namespace,
        meta: &CollectionMeta,
        old: &Document,
        new: &Document,
        change: &ChangeRecord,
    ) -> CommandResult<()> {
        let id = new.get("_id").cloned().unwrap_or(Bson::Null);
        let id_key = keys::encode(&id);
        let bytes = encode_document(new)?;
        // Keys the document itself holds pass the check: they are its own.
        let index_entries = self.check_index_keys(ns, meta, new, &id_key)?;
        self.remove_index_keys(meta, old)?;
        self.put_index_keys(&index_entries, &id_key)?;
        {
            let mut table = self.txn.open_table(DOCUMENTS).map_err(|e| self.fail(e))?;
            table
                .insert((meta.key_prefix(), id_key.as_slice()), bytes.as_slice())
                .map_err(|e| self.fail(e))?;
        }
        self.record(change, Some(meta.uuid))
    }

    /// Deletes `doc` and records a `delete` change.
    pub(crate) fn delete(
        &mut self,
        ns: &Namespace,
        meta: &CollectionMeta,
        doc: &Document,
    ) -> CommandResult<()> {
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        let id_key = keys::encode(&id);
        self.remove_index_keys(meta, doc)?;
        {
            let mut table = self.txn.open_table(DOCUMENTS).map_err(|e| self.fail(e))?;
            table
                .remove((meta.key_prefix(), id_key.as_slice()))
                .map_err(|e| self.fail(e))?;
        }
        let pre = meta.keeps_images().then(|| doc.clone());
        self.record(
            &ChangeRecord::Delete {
                ns: ns.clone(),
                id,
                pre,
            },
            Some(meta.uuid),
        )
    }

    /// Adds the entries of a new unique index for every existing document; 11000 on a clash,
    /// found before any entry is written (a failed build leaves nothing behind).
    pub(crate) fn build_index(
        &mut self,
        ns: &Namespace,
        meta: &CollectionMeta,
        index: &IndexMeta,
    ) -> CommandResult<()> {
        if !index.unique {
            return Ok(());
        }
        let mut entries: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
            std::collections::BTreeMap::new();
        for doc in self.scan(meta)? {
            let id_key = keys::encode(doc.get("_id").unwrap_or(&Bson::Null));
            for (key, values) in index_keys(index, &doc)? {
                match entries.get(&key) {
                    Some(owner) if *owner != id_key => {
                        return Err(duplicate_key(
                            ns,
                            &index.name,
                            &index.key,
                            &key_value(index, values),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        entries.insert(key, id_key.clone());
                    }
                }
            }
        }
        let mut table = self.txn.open_table(UNIQUE_KEYS).map_err(|e| self.fail(e))?;
        for (key, owner) in &entries {
            table
                .insert((id_to_key(index.id), key.as_slice()), owner.as_slice())
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Removes every entry of an index.
    pub(crate) fn drop_index_entries(&mut self, index: &IndexMeta) -> CommandResult<()> {
        self.clear_range(UNIQUE_KEYS, id_to_key(index.id))
    }

    /// A fresh id for a new index.
    pub(crate) fn new_index_id(&mut self) -> i64 {
        self.next_id()
    }

    /// The unique-index entries `doc` (whose `_id` encodes to `id_key`) needs, as (index key
    /// prefix, key); 11000 when another document holds one of them. Writes nothing.
    fn check_index_keys(
        &self,
        ns: &Namespace,
        meta: &CollectionMeta,
        doc: &Document,
        id_key: &[u8],
    ) -> CommandResult<Vec<(u64, Vec<u8>)>> {
        if !meta.indexes.iter().any(|i| i.unique) {
            return Ok(Vec::new());
        }
        let table = self.txn.open_table(UNIQUE_KEYS).map_err(|e| self.fail(e))?;
        let mut entries = Vec::new();
        for index in meta.indexes.iter().filter(|i| i.unique) {
            for (key, values) in index_keys(index, doc)? {
                let owner = table
                    .get((id_to_key(index.id), key.as_slice()))
                    .map_err(|e| self.fail(e))?;
                if owner.is_some_and(|o| o.value() != id_key) {
                    return Err(duplicate_key(
                        ns,
                        &index.name,
                        &index.key,
                        &key_value(index, values),
                    ));
                }
                entries.push((id_to_key(index.id), key));
            }
        }
        Ok(entries)
    }

    /// Writes unique-index entries checked by [`WriteCtx::check_index_keys`].
    fn put_index_keys(&self, entries: &[(u64, Vec<u8>)], id_key: &[u8]) -> CommandResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut table = self.txn.open_table(UNIQUE_KEYS).map_err(|e| self.fail(e))?;
        for (prefix, key) in entries {
            table
                .insert((*prefix, key.as_slice()), id_key)
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    fn remove_index_keys(&self, meta: &CollectionMeta, doc: &Document) -> CommandResult<()> {
        let mut table = self.txn.open_table(UNIQUE_KEYS).map_err(|e| self.fail(e))?;
        for index in meta.indexes.iter().filter(|i| i.unique) {
            for (key, _) in index_keys(index, doc)? {
                table
                    .remove((id_to_key(index.id), key.as_slice()))
                    .map_err(|e| self.fail(e))?;
            }
        }
        Ok(())
    }

    /// Appends a change record at the next cluster time, in this transaction; `collection` is
    /// the UUID of the collection it changes (none for a database-wide change).
    pub(crate) fn record(
        &mut self,
        change: &ChangeRecord,
        collection: Option<bson::Uuid>,
    ) -> CommandResult<()> {
        let pos = self.counters.next_position();
        let record = change.to_document(self.wall, collection);
        let bytes = bson::to_vec(&record).map_err(|e| self.fail(e))?;
        {
            let mut table = self.txn.open_table(CHANGES).map_err(|e| self.fail(e))?;
            table
                .insert(pos, bytes.as_slice())
                .map_err(|e| self.fail(e))?;
        }
        self.counters.change_count += 1;
        self.written.push((pos, record));
        for ns in change.namespaces() {
            self.touched.mark(ns, pos);
        }
        Ok(())
    }

    /// Drops the oldest change records beyond `limit`, moving the history floor up.
    pub(super) fn trim_history(&mut self, limit: u64) -> Result<(), redb::Error> {
        let excess = self.counters.change_count.saturating_sub(limit);
        if excess == 0 {
            return Ok(());
        }
        let mut table = self.txn.open_table(CHANGES)?;
        let mut last_removed = None;
        for _ in 0..excess {
            match table.pop_first()? {
                Some((pos, _)) => last_removed = Some(pos.value()),
                None => break,
            }
        }
        if let Some(pos) = last_removed {
            self.counters.history_floor = pos;
        }
        self.counters.change_count = table.len()?;
        Ok(())
    }
}

impl Snapshot for WriteCtx<'_> {
    fn for_each_after(
        &self,
        meta: &CollectionMeta,
        after: &[u8],
        visit: &mut DocVisitor<'_>,
    ) -> CommandResult<()> {
        let table = self.txn.open_table(DOCUMENTS).map_err(|e| self.fail(e))?;
        visit_documents(&table, meta, after, visit)
    }

    fn collection(&self, ns: &Namespace) -> CommandResult<Option<CollectionMeta>> {
        let table = self.txn.open_table(CATALOG).map_err(|e| self.fail(e))?;
        get_collection(&table, ns)
    }

    fn collections(&self, db: &str) -> CommandResult<Vec<(String, CollectionMeta)>> {
        let table = self.txn.open_table(CATALOG).map_err(|e| self.fail(e))?;
        list_collections(&table, db)
    }

    fn scan(&self, meta: &CollectionMeta) -> CommandResult<Vec<Document>> {
        let table = self.txn.open_table(DOCUMENTS).map_err(|e| self.fail(e))?;
        scan_documents(&table, meta)
    }

    fn find_by_id(&self, meta: &CollectionMeta, id: &Bson) -> CommandResult<Option<Document>> {
        let table = self.txn.open_table(DOCUMENTS).map_err(|e| self.fail(e))?;
        get_document(&table, meta, &keys::encode(id))
    }
}

impl WriteCtx<'_> {
    /// The document of `meta`'s collection holding the key `probe` gives in the unique index
    /// `index` (a probe whose key fields hold no arrays gives one key), found through the
    /// index, not by a scan: how `$merge` finds a result's match on its `on` fields.
    pub(crate) fn find_by_unique_key(
        &self,
        meta: &CollectionMeta,
        index: &IndexMeta,
        probe: &Document,
    ) -> CommandResult<Option<Document>> {
        let keys = index_keys(index, probe)?;
        let [(key, _)] = keys.as_slice() else {
            return Ok(None);
        };
        let owner = {
            let table = self.txn.open_table(UNIQUE_KEYS).map_err(|e| self.fail(e))?;
            let owner = table
                .get((id_to_key(index.id), key.as_slice()))
                .map_err(|e| self.fail(e))?;
            owner.map(|o| o.value().to_vec())
        };
        let Some(id_key) = owner else {
            return Ok(None);
        };
        let table = self.txn.open_table(DOCUMENTS).map_err(|e| self.fail(e))?;
        get_document(&table, meta, &id_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;

    #[tokio::test]
    async fn duplicate_id_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 100).expect("opens");
        let ns = Namespace::new("t", "c").expect("valid");
        let err = store
            .write(move |ctx| {
                let meta = ctx.ensure_collection(&ns)?;
                ctx.insert(&ns, &meta, doc! { "_id": 1 })?;
                ctx.insert(&ns, &meta, doc! { "_id": 1.0 })
            })
            .await
            .expect_err("duplicate");
        assert_eq!(err.code, ErrorCode::DuplicateKey);
        assert!(err.msg.contains("index: _id_"));
    }
}
