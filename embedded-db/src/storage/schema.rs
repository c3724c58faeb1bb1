//! The tables, catalog entries and unique-index keys.

use bson::{doc, Bson, Document};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::changelog::{unix_seconds, Position};
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::keys;
use crate::namespace::Namespace;
use crate::wire::MAX_BSON_OBJECT_SIZE;

/// The writer's counters, persisted in [`META`] with every transaction.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counters {
    pub(super) last_position: Position,
    pub(super) history_floor: Position,
    pub(super) next_id: u64,
    pub(super) change_count: u64,
}

impl Counters {
    /// The next cluster time: wall-clock seconds, never going backwards.
    pub(super) fn next_position(&mut self) -> Position {
        let secs = unix_seconds().max(self.last_position >> 32);
        self.last_position = if secs == self.last_position >> 32 {
            self.last_position + 1
        } else {
            (secs << 32) | 1
        };
        self.last_position
    }
}

/// Logs a storage failure and turns it into a generic client error.
pub(super) fn storage_error(e: impl std::fmt::Display) -> CommandError {
    tracing::error!(cause = %e, "storage operation failed");
    CommandError::internal("storage operation failed")
}

/// Counters and positions: `last_position`, `history_floor`, `next_id`, `change_count`.
pub(super) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// `db.collection` → BSON of [`CollectionMeta`].
pub(super) const CATALOG: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("catalog");
/// (collection id, encoded `_id`) → BSON document.
pub(super) const DOCUMENTS: TableDefinition<'_, (u64, &[u8]), &[u8]> =
    TableDefinition::new("documents");
/// (index id, encoded key) → encoded `_id` of the one document holding that key.
pub(super) const UNIQUE_KEYS: TableDefinition<'_, (u64, &[u8]), &[u8]> =
    TableDefinition::new("unique_keys");
/// Change-log position → BSON change record (see [`ChangeRecord`]).
pub(super) const CHANGES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("changes");

/// A collection's catalog entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct CollectionMeta {
    /// Key prefix of its documents; never reused.
    pub(crate) id: i64,
    /// The collection UUID reported by `listCollections`.
    pub(crate) uuid: bson::Uuid,
    /// Options given to `create` (echoed by `listCollections`).
    pub(crate) options: Document,
    /// Secondary indexes; the `_id` index is implicit.
    pub(crate) indexes: Vec<IndexMeta>,
}

impl CollectionMeta {
    /// Whether `changeStreamPreAndPostImages` is enabled, so change records keep images.
    pub(crate) fn keeps_images(&self) -> bool {
        self.options
            .get_document("changeStreamPreAndPostImages")
            .ok()
            .and_then(|o| o.get_bool("enabled").ok())
            .unwrap_or(false)
    }

    pub(super) fn key_prefix(&self) -> u64 {
        id_to_key(self.id)
    }
}

/// A secondary index. Unique indexes are enforced; others are recorded and listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct IndexMeta {
    /// Key prefix of its entries in the unique-key table.
    pub(crate) id: i64,
    /// Index name.
    pub(crate) name: String,
    /// Key pattern, e.g. `{ email: 1 }`.
    pub(crate) key: Document,
    /// Whether the index rejects a second document with the same key.
    pub(crate) unique: bool,
    /// The full specification as given (echoed by `listIndexes`).
    pub(crate) spec: Document,
}

/// The specification of the implicit `_id` index, as `listIndexes` and `create` events show it.
pub(crate) fn id_index_spec() -> Document {
    doc! { "v": 2, "key": { "_id": 1 }, "name": ID_INDEX }
}

/// The name of the implicit `_id` index.
pub(crate) const ID_INDEX: &str = "_id_";

pub(super) fn id_to_key(id: i64) -> u64 {
    u64::try_from(id).unwrap_or(0)
}

/// The encoded keys (with the values they were built from) a document puts into `index`.
pub(super) fn index_keys(
    index: &IndexMeta,
    doc: &Document,
) -> CommandResult<Vec<(Vec<u8>, Vec<Bson>)>> {
    let mut combos: Vec<Vec<Bson>> = vec![Vec::new()];
    let mut array_fields = 0;
    for (path, _) in &index.key {
        let values = keys::index_values(doc, path);
        if values.len() > 1 {
            array_fields += 1;
            if array_fields > 1 {
                return Err(CommandError::new(
                    ErrorCode::CannotIndexParallelArrays,
                    format!("cannot index parallel arrays in index {}", index.name),
                ));
            }
        }
        combos = combos
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push(v.clone());
                    next
                })
            })
            .collect();
    }
    let mut out: Vec<(Vec<u8>, Vec<Bson>)> = combos
        .into_iter()
        .map(|values| (keys::encode_compound(&values), values))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

pub(super) fn encode_document(doc: &Document) -> CommandResult<Vec<u8>> {
    let bytes = bson::to_vec(doc).map_err(|e| CommandError::bad_value(e.to_string()))?;
    if bytes.len() > MAX_BSON_OBJECT_SIZE {
        return Err(CommandError::new(
            ErrorCode::BsonObjectTooLarge,
            format!(
                "object to insert too large. size in bytes: {}, max size: {MAX_BSON_OBJECT_SIZE}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// The 11000 error MongoDB gives, with `keyPattern` and `keyValue`.
pub(super) fn duplicate_key(
    ns: &Namespace,
    index: &str,
    pattern: &Document,
    value: &Document,
) -> CommandError {
    let shown: Vec<String> = value.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    CommandError::new(
        ErrorCode::DuplicateKey,
        format!(
            "E11000 duplicate key error collection: {ns} index: {index} dup key: {{ {} }}",
            shown.join(", ")
        ),
    )
    .with_extra(doc! { "keyPattern": pattern.clone(), "keyValue": value.clone() })
}
