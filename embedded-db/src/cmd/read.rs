//! Read commands: `find`, `getMore`, `killCursors`, `count`, `distinct`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};

use super::{
    cursor_reply, first_batch, opt_bool, opt_count, opt_document, opt_i64, take_batch, Request,
};
use crate::cursor::{Cursor, CursorKind};
use crate::db::Db;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::keys;
use crate::query::filter::Filter;
use crate::query::projection::Projection;
use crate::query::sort::SortSpec;
use crate::storage::{CollectionMeta, Snapshot};

/// How long a change-stream `getMore` waits for events when the driver sets no `maxTimeMS`.
const DEFAULT_AWAIT: Duration = Duration::from_secs(1);

/// The documents of `meta` matching `filter`: a point lookup for `_id` equality, else a scan.
pub(super) fn matching(
    read: &impl Snapshot,
    meta: &CollectionMeta,
    filter: &Filter,
) -> CommandResult<Vec<Document>> {
    let candidates = match filter.id_equality() {
        Some(id) => read.find_by_id(meta, id)?.into_iter().collect(),
        None => read.scan(meta)?,
    };
    Ok(candidates
        .into_iter()
        .filter(|d| filter.matches(d))
        .collect())
}

/// Applies sort, skip and limit to a matched set (the sort is stable).
pub(super) fn order_and_cut(
    mut docs: Vec<Document>,
    sort: Option<&SortSpec>,
    skip: usize,
    limit: Option<usize>,
) -> Vec<Document> {
    if let Some(sort) = sort {
        docs.sort_by(|a, b| sort.compare_docs(a, b));
    }
    let iter = docs.into_iter().skip(skip);
    match limit {
        Some(limit) => iter.take(limit).collect(),
        None => iter.collect(),
    }
}

/// Implements the `find` command.
pub(super) async fn find(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let body = &req.body;
    let filter = Filter::parse(opt_document(body, "filter")?.unwrap_or(&Document::new()))?;
    let sort = opt_document(body, "sort")?
        .map(SortSpec::parse)
        .transpose()?;
    let projection = opt_document(body, "projection")?
        .map(Projection::parse)
        .transpose()?;
    let skip = opt_count(body, "skip")?.unwrap_or(0);
    // A negative limit is the legacy spelling of "limit, single batch".
    let limit = opt_i64(body, "limit")?;
    let single_batch =
        opt_bool(body, "singleBatch")?.unwrap_or(false) || limit.is_some_and(|l| l < 0);
    let limit = limit
        .filter(|l| *l != 0)
        .map(|l| usize::try_from(l.unsigned_abs()).unwrap_or(usize::MAX));
    let batch_size = opt_count(body, "batchSize")?;
    let ns_text = ns.to_string();
    let docs = db
        .store
        .read(move |read| {
            let Some(meta) = read.collection(&ns)? else {
                return Ok(Vec::new());
            };
            let docs = order_and_cut(matching(read, &meta, &filter)?, sort.as_ref(), skip, limit);
            match &projection {
                Some(p) => docs
                    .iter()
                    .map(|d| p.apply_with_filter(d, Some(&filter)))
                    .collect(),
                None => Ok(docs),
            }
        })
        .await?;
    Ok(first_batch(db, &ns_text, docs, batch_size, single_batch))
}

/// Implements `getMore`, for query cursors and change streams.
///
/// A change-stream `getMore` answers at once when events are waiting; otherwise it waits for
/// the next commit, up to `maxTimeMS` (default 1 s), and then answers an empty batch with a
/// fresh `postBatchResumeToken`.
pub(super) async fn get_more(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let id = match req.value() {
        Bson::Int64(id) => *id,
        other => {
            return Err(CommandError::type_mismatch(format!(
                "getMore cursor id must be a long, not {other}"
            )))
        }
    };
    let batch_size = opt_count(&req.body, "batchSize")?.filter(|n| *n > 0);
    let max_time = opt_count(&req.body, "maxTimeMS")?.map(|ms| Duration::from_millis(ms as u64));
    let Some((mut cursor, _in_use)) = db.cursors.take(id) else {
        return Err(CommandError::new(
            ErrorCode::CursorNotFound,
            format!("cursor id {id} not found"),
        ));
    };
    let limit = batch_size.or(cursor.batch_size);
    match cursor.kind {
        CursorKind::Documents(ref mut queue) => {
            let batch = take_batch(queue, limit.unwrap_or(usize::MAX));
            let open = !queue.is_empty();
            let ns = cursor.ns.clone();
            let reply_id = if open {
                db.cursors.restore(id, cursor);
                id
            } else {
                0
            };
            Ok(cursor_reply(&ns, reply_id, "nextBatch", batch, None))
        }
        CursorKind::ChangeStream(stream) => {
            let deadline = Instant::now() + max_time.unwrap_or(DEFAULT_AWAIT);
            let ns = cursor.ns.clone();
            let (stream, batch) =
                await_events(db, stream, limit.unwrap_or(usize::MAX), deadline).await?;
            let reply_id = if batch.finished {
                0
            } else {
                db.cursors.restore(
                    id,
                    Cursor::new(
                        ns.clone(),
                        CursorKind::ChangeStream(stream),
                        cursor.batch_size,
                    ),
                );
                id
            };
            let events = batch.events.into_iter().map(Bson::Document).collect();
            Ok(cursor_reply(
                &ns,
                reply_id,
                "nextBatch",
                events,
                Some(batch.post_batch_token),
            ))
        }
    }
}

/// Reads the next batch of a change stream, waiting for a commit until `deadline` while none
/// is available.
async fn await_events(
    db: &Arc<Db>,
    mut stream: Box<crate::changes::ChangeStream>,
    limit: usize,
    deadline: Instant,
) -> CommandResult<(Box<crate::changes::ChangeStream>, crate::changes::Batch)> {
    let mut commits = db.store.subscribe();
    loop {
        // Mark the current commit as seen *before* reading, so a commit that lands after the
        // read is never missed.
        commits.borrow_and_update();
        // At the head of the log (the common case for a waiting stream) the in-memory tail
        // serves the batch on this task; otherwise read a storage snapshot.
        let from_memory = db.store.with_recent(|recent| {
            stream
                .can_read_from(recent)
                .then(|| stream.next_batch(recent, limit))
        });
        let batch = match from_memory {
            Some(batch) => batch?,
            None => {
                let (returned, batch) = db
                    .store
                    .read(move |read| {
                        let batch = stream.next_batch(read, limit)?;
                        Ok((stream, batch))
                    })
                    .await?;
                stream = returned;
                batch
            }
        };
        if !batch.events.is_empty() || batch.finished || Instant::now() >= deadline {
            return Ok((stream, batch));
        }
        let woke = tokio::time::timeout_at(deadline.into(), commits.changed()).await;
        if matches!(woke, Ok(Err(_))) {
            // The store is closing: answer what we have.
            return Ok((stream, batch));
        }
    }
}

/// Implements `killCursors`; unknown ids are reported, not an error.
pub(super) fn kill_cursors(db: &Db, req: &Request<'_>) -> CommandResult<Document> {
    let ids = match req.body.get("cursors") {
        Some(Bson::Array(items)) => items
            .iter()
            .map(|item| match item {
                Bson::Int64(id) => Ok(*id),
                Bson::Int32(id) => Ok(i64::from(*id)),
                other => Err(CommandError::type_mismatch(format!(
                    "cursor ids must be longs, not {other}"
                ))),
            })
            .collect::<CommandResult<Vec<i64>>>()?,
        _ => {
            return Err(CommandError::failed_to_parse(
                "BSON field 'cursors' is missing but a required field",
            ))
        }
    };
    let (killed, not_found) = db.cursors.kill(&ids);
    Ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
    })
}

/// Implements `count` (used by `estimatedDocumentCount`).
pub(super) async fn count(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let filter = Filter::parse(opt_document(&req.body, "query")?.unwrap_or(&Document::new()))?;
    let skip = opt_count(&req.body, "skip")?.unwrap_or(0);
    let limit = opt_i64(&req.body, "limit")?
        .filter(|l| *l != 0)
        .map(|l| usize::try_from(l.unsigned_abs()).unwrap_or(usize::MAX));
    let n = db
        .store
        .read(move |read| {
            let Some(meta) = read.collection(&ns)? else {
                return Ok(0);
            };
            let matched = matching(read, &meta, &filter)?.len().saturating_sub(skip);
            Ok(limit.map_or(matched, |l| matched.min(l)))
        })
        .await?;
    Ok(doc! { "n": i64::try_from(n).unwrap_or(i64::MAX) })
}

/// Implements `distinct`: the distinct values at `key`, array elements counted one by one.
pub(super) async fn distinct(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let key = match req.body.get("key") {
        Some(Bson::String(k)) if !k.is_empty() => k.clone(),
        _ => {
            return Err(CommandError::failed_to_parse(
                "BSON field 'key' must be a non-empty string",
            ))
        }
    };
    let filter = Filter::parse(opt_document(&req.body, "query")?.unwrap_or(&Document::new()))?;
    let values = db
        .store
        .read(move |read| {
            let Some(meta) = read.collection(&ns)? else {
                return Ok(Vec::new());
            };
            let mut seen = std::collections::BTreeMap::new();
            for doc in matching(read, &meta, &filter)? {
                for value in keys::path_values(&doc, &key) {
                    seen.entry(keys::encode(&value)).or_insert(value);
                }
            }
            Ok(seen.into_values().collect::<Vec<Bson>>())
        })
        .await?;
    Ok(doc! { "values": values })
}
