//! Catalog commands: collections, databases and indexes, plus the size
//! statistics tools ask for.

use std::sync::Arc;

use bson::{doc, Bson, Document};

use super::args::{command_options, documents_arg, opt_bool, opt_count, opt_document, Request};
use super::reply::first_batch;
use crate::db::Db;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::namespace::{validate_db, Namespace};
use crate::query::filter::Filter;
use crate::storage::{
    id_index_spec, CatalogOp, ChangeRecord, CollectionMeta, IndexMeta, Snapshot, WriteCtx, ID_INDEX,
};

fn not_found(ns: &Namespace) -> CommandError {
    CommandError::new(
        ErrorCode::NamespaceNotFound,
        format!("ns does not exist: {ns}"),
    )
}

/// Implements `create`. Options embedded-db does not honour (views, time-series, capped
/// collections, storage-engine settings) are refused rather than silently dropped.
pub(super) async fn create(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let options = command_options(&req.body);
    super::validator::check_options("create", &options)?;
    db.store
        .write(move |ctx| ctx.create_collection(&ns, options).map(|_| Document::new()))
        .await
}

/// Implements `drop`; dropping a missing collection succeeds, as on MongoDB 7.
pub(super) async fn drop(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    db.store
        .write(move |ctx| {
            let mut reply = doc! { "ns": ns.to_string() };
            if let Some(meta) = ctx.drop_collection(&ns)? {
                reply.insert(
                    "nIndexesWas",
                    i32::try_from(meta.indexes.len() + 1).unwrap_or(i32::MAX),
                );
            }
            Ok(reply)
        })
        .await
}

/// Implements `dropDatabase`: a `drop` change per collection, then `dropDatabase`.
pub(super) async fn drop_database(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let name = req.database.clone();
    db.store
        .write(move |ctx| {
            let collections = ctx.collections(&name)?;
            if !collections.is_empty() {
                for (coll, _) in collections {
                    ctx.drop_collection(&Namespace::new(&name, &coll)?)?;
                }
                ctx.record(&ChangeRecord::DropDatabase { db: name.clone() }, None)?;
            }
            Ok(doc! { "dropped": name })
        })
        .await
}

/// Implements `listCollections` (cursor form; `filter`, `nameOnly`).
pub(super) async fn list_collections(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let name = req.database.clone();
    validate_db(&name)?;
    let filter = Filter::parse(opt_document(&req.body, "filter")?.unwrap_or(&Document::new()))?;
    let name_only = opt_bool(&req.body, "nameOnly")?.unwrap_or(false);
    let batch_size = match opt_document(&req.body, "cursor")? {
        Some(cursor) => opt_count(cursor, "batchSize")?,
        None => None,
    };
    let collections = {
        let name = name.clone();
        db.store.read(move |read| read.collections(&name)).await?
    };
    let mut entries = Vec::new();
    for (coll, meta) in collections {
        let entry = doc! {
            "name": coll,
            "type": "collection",
            "options": meta.options,
            "info": { "readOnly": false, "uuid": meta.uuid },
            "idIndex": id_index_spec(),
        };
        if !filter.matches(&entry)? {
            continue;
        }
        entries.push(if name_only {
            doc! { "name": entry.get("name").cloned().unwrap_or(Bson::Null), "type": "collection" }
        } else {
            entry
        });
    }
    first_batch(
        db,
        &format!("{name}.$cmd.listCollections"),
        entries,
        batch_size,
        false,
    )
}

/// Implements `listDatabases` (`filter`, `nameOnly`).
pub(super) async fn list_databases(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let filter = Filter::parse(opt_document(&req.body, "filter")?.unwrap_or(&Document::new()))?;
    let name_only = opt_bool(&req.body, "nameOnly")?.unwrap_or(false);
    let sizes = db
        .store
        .read(|read| {
            let mut out = Vec::new();
            for name in read.databases()? {
                let mut bytes = 0u64;
                for (_, meta) in read.collections(&name)? {
                    bytes += read.stats(&meta)?.0;
                }
                out.push((name, bytes));
            }
            Ok(out)
        })
        .await?;
    let mut total = 0i64;
    let mut databases = Vec::new();
    for (name, bytes) in sizes {
        let size = i64::try_from(bytes).unwrap_or(i64::MAX);
        let entry = doc! { "name": &name, "sizeOnDisk": size, "empty": false };
        if !filter.matches(&entry)? {
            continue;
        }
        total = total.saturating_add(size);
        databases.push(Bson::Document(if name_only {
            doc! { "name": name }
        } else {
            entry
        }));
    }
    let mut reply = doc! { "databases": databases };
    if !name_only {
        reply.insert("totalSize", total);
        reply.insert("totalSizeMb", total / (1024 * 1024));
    }
    Ok(reply)
}

/// Implements `renameCollection` (on `admin`; `dropTarget` replaces an existing target).
pub(super) async fn rename_collection(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    if req.database != "admin" {
        return Err(CommandError::new(
            ErrorCode::IllegalOperation,
            "renameCollection may only be run against the admin database.",
        ));
    }
    let from = match req.value() {
        Bson::String(s) => Namespace::parse(s)?,
        _ => {
            return Err(CommandError::type_mismatch(
                "renameCollection must be a string",
            ))
        }
    };
    let to = match req.body.get("to") {
        Some(Bson::String(s)) => Namespace::parse(s)?,
        _ => return Err(CommandError::type_mismatch("'to' must be a string")),
    };
    let drop_target = opt_bool(&req.body, "dropTarget")?.unwrap_or(false);
    db.store
        .write(move |ctx| {
            let meta = ctx.collection(&from)?.ok_or_else(|| {
                CommandError::new(
                    ErrorCode::NamespaceNotFound,
                    "source namespace does not exist",
                )
            })?;
            if from == to {
                return Err(CommandError::new(
                    ErrorCode::IllegalOperation,
                    "Can't rename a collection to itself",
                ));
            }
            if ctx.collection(&to)?.is_some() && !drop_target {
                return Err(CommandError::new(
                    ErrorCode::NamespaceExists,
                    "target namespace exists",
                ));
            }
            ctx.rename_collection(&from, &to, &meta, drop_target)?;
            Ok(Document::new())
        })
        .await
}

/// Implements `collMod`: merges the given options (`changeStreamPreAndPostImages`, the
/// validator settings); any other option is refused.
pub(super) async fn coll_mod(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let options = command_options(&req.body);
    super::validator::check_options("collMod", &options)?;
    db.store
        .write(move |ctx| {
            let mut meta = ctx.collection(&ns)?.ok_or_else(|| not_found(&ns))?;
            let mut before = doc! { "uuid": meta.uuid };
            before.extend(meta.options.clone());
            for (key, value) in &options {
                meta.options.insert(key.clone(), value.clone());
            }
            ctx.save_collection(&ns, &meta)?;
            record_catalog(
                ctx,
                CatalogOp::Modify,
                &ns,
                &meta,
                options,
                Some(doc! { "collectionOptions": before }),
            )?;
            Ok(Document::new())
        })
        .await
}

/// Records a catalog change of `meta`'s collection (an event for `showExpandedEvents` streams).
fn record_catalog(
    ctx: &mut WriteCtx<'_>,
    op: CatalogOp,
    ns: &Namespace,
    meta: &CollectionMeta,
    description: Document,
    before: Option<Document>,
) -> CommandResult<()> {
    let change = ChangeRecord::Catalog {
        op,
        ns: ns.clone(),
        description,
        before,
    };
    ctx.record(&change, Some(meta.uuid))
}

/// Records the `createIndexes` event of `index`, built on `meta`'s collection.
pub(super) fn record_index_created(
    ctx: &mut WriteCtx<'_>,
    ns: &Namespace,
    meta: &CollectionMeta,
    index: &IndexMeta,
) -> CommandResult<()> {
    let description = doc! { "indexes": [index.spec.clone()] };
    record_catalog(ctx, CatalogOp::CreateIndexes, ns, meta, description, None)
}

/// A validated index specification.
fn parse_index(spec: &Document) -> CommandResult<(String, Document, bool, Document)> {
    let key = opt_document(spec, "key")?
        .filter(|k| !k.is_empty())
        .cloned()
        .ok_or_else(|| {
            CommandError::failed_to_parse("index specification must have a non-empty 'key'")
        })?;
    for (field, direction) in &key {
        crate::query::path::check_length(field)?;
        let valid = match direction {
            Bson::Int32(v) => *v != 0,
            Bson::Int64(v) => *v != 0,
            Bson::Double(v) => *v != 0.0,
            Bson::String(s) => matches!(s.as_str(), "text" | "2d" | "2dsphere" | "hashed"),
            _ => false,
        };
        if !valid || field.is_empty() {
            return Err(CommandError::new(
                ErrorCode::BadValue,
                format!("Values in the index key pattern must be 1, -1 or an index type; got {field}: {direction}"),
            ));
        }
    }
    let name = match spec.get("name") {
        Some(Bson::String(n)) if !n.is_empty() => n.clone(),
        None => key
            .iter()
            .map(|(k, v)| format!("{k}_{v}"))
            .collect::<Vec<_>>()
            .join("_"),
        _ => {
            return Err(CommandError::type_mismatch(
                "index name must be a non-empty string",
            ))
        }
    };
    let unique = opt_bool(spec, "unique")?.unwrap_or(false);
    for (option, value) in spec {
        match option.as_str() {
            "v"
            | "key"
            | "name"
            | "ns"
            | "background"
            | "unique"
            | "hidden"
            | "collation"
            | "weights"
            | "default_language"
            | "language_override"
            | "textIndexVersion"
            | "2dsphereIndexVersion"
            | "bits"
            | "min"
            | "max"
            | "storageEngine"
            | "wildcardProjection"
            | "prepareUnique" => {}
            // A sparse or partial unique index admits duplicates a plain one refuses, and a TTL
            // index deletes documents: embedded-db enforces neither, so it refuses them.
            "sparse" | "partialFilterExpression" if !unique => {}
            "sparse" | "partialFilterExpression" | "expireAfterSeconds" => {
                if matches!(value, Bson::Boolean(false)) {
                    continue;
                }
                return Err(CommandError::new(
                    ErrorCode::NotImplemented,
                    format!("index option '{option}' is not supported by embedded-db"),
                ));
            }
            _ => {
                return Err(CommandError::new(
                    ErrorCode::InvalidIndexSpecificationOption,
                    format!("The field '{option}' is not valid for an index specification."),
                ))
            }
        }
    }
    // Store the options as given (echoed by listIndexes), minus legacy fields MongoDB ignores.
    let mut stored = doc! { "v": 2, "key": key.clone(), "name": name.clone() };
    for (k, v) in spec {
        if !matches!(k.as_str(), "v" | "key" | "name" | "ns" | "background") {
            stored.insert(k.clone(), v.clone());
        }
    }
    Ok((name, key, unique, stored))
}

/// Implements `createIndexes`; unique indexes are enforced from then on (11000 when existing
/// documents already clash), other indexes are recorded and listed.
pub(super) async fn create_indexes(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let specs = documents_arg(&req.body, "indexes")?;
    if specs.is_empty() {
        return Err(CommandError::bad_value(
            "Must specify at least one index to create",
        ));
    }
    let parsed = specs
        .iter()
        .map(parse_index)
        .collect::<CommandResult<Vec<_>>>()?;
    db.store
        .write(move |ctx| {
            let created_collection = ctx.collection(&ns)?.is_none();
            let mut meta = ctx.ensure_collection(&ns)?;
            let existing = meta.indexes.len();
            // Every conflict is found before anything is built.
            for (name, key, unique, spec) in parsed {
                if key == doc! { "_id": 1 } && (name == ID_INDEX || !unique) {
                    continue;
                }
                if let Some(existing) = meta.indexes.iter().find(|i| i.name == name) {
                    if existing.key != key {
                        return Err(CommandError::new(
                            ErrorCode::IndexKeySpecsConflict,
                            format!("An existing index has the same name as the requested index but a different key: {name}"),
                        ));
                    }
                    if existing.unique != unique {
                        return Err(CommandError::new(
                            ErrorCode::IndexOptionsConflict,
                            format!("An existing index has the same name as the requested index but different options: {name}"),
                        ));
                    }
                    continue;
                }
                if let Some(existing) = meta.indexes.iter().find(|i| i.key == key) {
                    return Err(CommandError::new(
                        ErrorCode::IndexOptionsConflict,
                        format!("Index already exists with a different name: {}", existing.name),
                    ));
                }
                meta.indexes.push(IndexMeta { id: ctx.new_index_id(), name, key, unique, spec });
            }
            // A unique build that fails (11000) leaves nothing, nor do the builds before it.
            for (built, index) in meta.indexes.iter().enumerate().skip(existing) {
                if let Err(clash) = ctx.build_index(&ns, &meta, index) {
                    for earlier in &meta.indexes[existing..built] {
                        ctx.drop_index_entries(earlier)?;
                    }
                    return Err(clash);
                }
            }
            ctx.save_collection(&ns, &meta)?;
            for index in &meta.indexes[existing..] {
                record_index_created(ctx, &ns, &meta, index)?;
            }
            let before = existing + 1;
            let after = meta.indexes.len() + 1;
            let mut reply = doc! {
                "createdCollectionAutomatically": created_collection,
                "numIndexesBefore": i32::try_from(before).unwrap_or(i32::MAX),
                "numIndexesAfter": i32::try_from(after).unwrap_or(i32::MAX),
            };
            if before == after {
                reply.insert("note", "all indexes already exist");
            }
            Ok(reply)
        })
        .await
}

/// Implements `listIndexes` (`NamespaceNotFound` for a missing collection).
pub(super) async fn list_indexes(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let ns_text = ns.to_string();
    let meta = {
        let ns = ns.clone();
        db.store.read(move |read| read.collection(&ns)).await?
    }
    .ok_or_else(|| not_found(&ns))?;
    let mut specs = vec![id_index_spec()];
    specs.extend(meta.indexes.into_iter().map(|i| i.spec));
    first_batch(db, &ns_text, specs, None, false)
}

/// Implements `dropIndexes` (a name, a key pattern, a list of names, or `"*"`).
pub(super) async fn drop_indexes(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let target = req.body.get("index").cloned().ok_or_else(|| {
        CommandError::failed_to_parse("BSON field 'index' is missing but a required field")
    })?;
    db.store
        .write(move |ctx| {
            let mut meta = ctx.collection(&ns)?.ok_or_else(|| not_found(&ns))?;
            let was = i32::try_from(meta.indexes.len() + 1).unwrap_or(i32::MAX);
            let doomed = select_indexes(&meta, &target)?;
            for name in doomed {
                if let Some(pos) = meta.indexes.iter().position(|i| i.name == name) {
                    let index = meta.indexes.remove(pos);
                    ctx.drop_index_entries(&index)?;
                    let description = doc! { "indexes": [index.spec] };
                    record_catalog(ctx, CatalogOp::DropIndexes, &ns, &meta, description, None)?;
                }
            }
            ctx.save_collection(&ns, &meta)?;
            Ok(doc! { "nIndexesWas": was })
        })
        .await
}

fn select_indexes(meta: &CollectionMeta, target: &Bson) -> CommandResult<Vec<String>> {
    let id_refused = || CommandError::new(ErrorCode::InvalidOptions, "cannot drop _id index");
    let by_name = |name: &str| -> CommandResult<String> {
        if name == ID_INDEX {
            return Err(id_refused());
        }
        meta.indexes
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.name.clone())
            .ok_or_else(|| {
                CommandError::new(
                    ErrorCode::IndexNotFound,
                    format!("index not found with name [{name}]"),
                )
            })
    };
    match target {
        Bson::String(s) if s == "*" => Ok(meta.indexes.iter().map(|i| i.name.clone()).collect()),
        Bson::String(name) => Ok(vec![by_name(name)?]),
        Bson::Array(names) => names
            .iter()
            .map(|n| match n {
                Bson::String(name) => by_name(name),
                _ => Err(CommandError::type_mismatch("index names must be strings")),
            })
            .collect(),
        Bson::Document(key) => {
            if *key == doc! { "_id": 1 } {
                return Err(id_refused());
            }
            meta.indexes
                .iter()
                .find(|i| &i.key == key)
                .map(|i| vec![i.name.clone()])
                .ok_or_else(|| {
                    CommandError::new(
                        ErrorCode::IndexNotFound,
                        format!("can't find index with key: {key}"),
                    )
                })
        }
        _ => Err(CommandError::type_mismatch(
            "'index' must be a string, array or object",
        )),
    }
}

/// Implements `dbStats`.
pub(super) async fn db_stats(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let name = req.database.clone();
    let (collections, objects, bytes, indexes) = {
        let name = name.clone();
        db.store
            .read(move |read| {
                let mut totals = (0i64, 0i64, 0i64, 0i64);
                for (_, meta) in read.collections(&name)? {
                    let (bytes, count) = read.stats(&meta)?;
                    totals.0 += 1;
                    totals.1 += i64::try_from(count).unwrap_or(i64::MAX);
                    totals.2 += i64::try_from(bytes).unwrap_or(i64::MAX);
                    totals.3 += i64::try_from(meta.indexes.len() + 1).unwrap_or(i64::MAX);
                }
                Ok(totals)
            })
            .await?
    };
    #[allow(clippy::cast_precision_loss)]
    let avg = if objects > 0 {
        bytes as f64 / objects as f64
    } else {
        0.0
    };
    Ok(doc! {
        "db": name,
        "collections": collections,
        "views": 0,
        "objects": objects,
        "avgObjSize": avg,
        "dataSize": bytes,
        "storageSize": bytes,
        "indexes": indexes,
        "indexSize": 0,
        "totalSize": bytes,
        "scaleFactor": 1,
    })
}

/// Implements `collStats`.
pub(super) async fn coll_stats(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let ns_text = ns.to_string();
    let (bytes, count, indexes) = {
        let ns = ns.clone();
        db.store
            .read(move |read| {
                let meta = read.collection(&ns)?.ok_or_else(|| not_found(&ns))?;
                let (bytes, count) = read.stats(&meta)?;
                Ok((bytes, count, meta.indexes.len() + 1))
            })
            .await?
    };
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    Ok(doc! {
        "ns": ns_text,
        "count": count,
        "size": bytes,
        "avgObjSize": if count > 0 { bytes / count } else { 0 },
        "storageSize": bytes,
        "nindexes": i32::try_from(indexes).unwrap_or(i32::MAX),
        "totalIndexSize": 0,
        "indexSizes": {},
    })
}
