//! Read commands: `find`, `getMore`, `killCursors`, `count`, `distinct`.
//!
//! Scans (in [`crate::scan`]) stream documents from storage one at a time, checking the command's `maxTimeMS` as
//! they go. A `find` without a sort reads only its first batch and leaves a cursor that
//! resumes the scan; a blocking sort holds at most 100 MB (292 beyond, whatever
//! `allowDiskUse` says: embedded-db does not spill to disk).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};

use super::args::{opt_bool, opt_count, opt_document, opt_i64, Request};
use super::generic_args::{deadline_of, SnapshotRead};
use super::reply::{cursor_reply, first_batch, take_batch, with_cluster_time, DEFAULT_BATCH};
use crate::cursor::{Cursor, CursorKind, ScanCursor};
use crate::db::Db;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::keys;
use crate::limits::{Deadline, BATCH_BYTES};
use crate::query::filter::Filter;
use crate::query::projection::Projection;
use crate::query::sort::SortSpec;
use crate::scan::{for_each_match, matching, order_and_cut, sorted_matches};
use crate::storage::{CollectionMeta, Snapshot};

/// How long a change-stream `getMore` waits for events when the driver sets no `maxTimeMS`.
const DEFAULT_AWAIT: Duration = Duration::from_secs(1);

/// `find` options embedded-db does not honour; refused unless falsy.
const FIND_REFUSED: &[&str] = &[
    "tailable",
    "awaitData",
    "returnKey",
    "showRecordId",
    "min",
    "max",
    "noCursorTimeout",
];

/// Implements the `find` command.
pub(super) async fn find(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let body = &req.body;
    for option in FIND_REFUSED {
        if !matches!(
            body.get(*option),
            None | Some(Bson::Null | Bson::Boolean(false))
        ) {
            return Err(CommandError::new(
                ErrorCode::NotImplemented,
                format!("the '{option}' option of find is not supported by embedded-db"),
            ));
        }
    }
    let deadline = deadline_of(db, body)?;
    let filter = Filter::parse(opt_document(body, "filter")?.unwrap_or(&Document::new()))?;
    // `{_id: 1}` is the order of a scan: such a find reads lazily like an unsorted one.
    let sort = opt_document(body, "sort")?
        .map(SortSpec::parse)
        .transpose()?
        .filter(|s| !s.is_empty() && !s.is_id_ascending());
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
    let snapshot = SnapshotRead::of(body);
    // A sorted find reads every match at once; so does a snapshot read (its later batches
    // must come from the same snapshot).
    if sort.is_some() || snapshot.is_some() {
        let (docs, at) = db
            .store
            .read(move |read| {
                let at = snapshot.map(|s| s.pin(read)).transpose()?;
                let Some(meta) = read.collection(&ns)? else {
                    return Ok((Vec::new(), at));
                };
                let docs = match &sort {
                    Some(sort) => {
                        sorted_matches(read, &meta, &filter, sort, skip, limit, &deadline)?
                    }
                    None => {
                        let wanted = limit.map(|l| l.saturating_add(skip));
                        let found = matching(read, &meta, &filter, &deadline, wanted)?;
                        order_and_cut(found, None, skip, limit)
                    }
                };
                let docs = match &projection {
                    Some(p) => docs
                        .iter()
                        .map(|d| p.apply_with_filter(d, Some(&filter)))
                        .collect::<CommandResult<_>>()?,
                    None => docs,
                };
                Ok((docs, at))
            })
            .await?;
        let reply = first_batch(db, &ns_text, docs, batch_size, single_batch)?;
        return Ok(with_cluster_time(reply, at));
    }
    // Without a sort, read only the first batch; the cursor resumes the scan.
    let batch_limit = batch_size.unwrap_or(DEFAULT_BATCH);
    let (batch, scan) = db
        .store
        .read(move |read| {
            let Some(meta) = read.collection(&ns)? else {
                return Ok((Vec::new(), None));
            };
            let mut scan = ScanCursor {
                ns,
                collection_id: meta.id,
                filter,
                projection,
                after: Vec::new(),
                remaining: limit,
            };
            let (batch, more) = scan_batch(read, &meta, &mut scan, skip, batch_limit, &deadline)?;
            Ok((batch, more.then_some(scan)))
        })
        .await?;
    let id = match scan {
        Some(scan) if !single_batch => db.cursors.insert(Cursor::new(
            ns_text.clone(),
            CursorKind::Scan(Box::new(scan)),
        ))?,
        _ => 0,
    };
    Ok(cursor_reply(&ns_text, id, "firstBatch", batch, None))
}

/// Reads the next batch of a `find` scan: skips `skip` matches, then returns up to `limit`
/// documents and [`BATCH_BYTES`], and whether the scan may have more.
fn scan_batch(
    read: &impl Snapshot,
    meta: &CollectionMeta,
    scan: &mut ScanCursor,
    mut skip: usize,
    limit: usize,
    deadline: &Deadline,
) -> CommandResult<(Vec<Bson>, bool)> {
    let limit = scan.remaining.map_or(limit, |r| r.min(limit));
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    let mut full = false;
    let mut last = None;
    if limit > 0 {
        let after = std::mem::take(&mut scan.after);
        for_each_match(
            read,
            meta,
            &scan.filter,
            deadline,
            &after,
            |key, size, doc| {
                if skip > 0 {
                    skip -= 1;
                    last = Some(key.to_vec());
                    return Ok(true);
                }
                let doc = match &scan.projection {
                    Some(p) => p.apply_with_filter(&doc, Some(&scan.filter))?,
                    None => doc,
                };
                bytes += size;
                batch.push(Bson::Document(doc));
                last = Some(key.to_vec());
                full = batch.len() >= limit || bytes >= BATCH_BYTES;
                Ok(!full)
            },
        )?;
        scan.after = last.unwrap_or(after);
    }
    if let Some(remaining) = &mut scan.remaining {
        *remaining -= batch.len().min(*remaining);
    }
    // A batch of 0 (`batchSize: 0`) has read nothing yet: the cursor stays open.
    let more = (full || limit == 0) && scan.remaining != Some(0);
    Ok((batch, more))
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
    // A getMore without a batchSize fills its batch up to 16 MiB, whatever the opening
    // command asked for (as mongod).
    let batch_size = opt_count(&req.body, "batchSize")?.filter(|n| *n > 0);
    let max_time = opt_count(&req.body, "maxTimeMS")?.map(|ms| Duration::from_millis(ms as u64));
    let Some((mut cursor, _in_use)) = db.cursors.take(id) else {
        return Err(CommandError::new(
            ErrorCode::CursorNotFound,
            format!("cursor id {id} not found"),
        ));
    };
    let limit = batch_size;
    match cursor.kind {
        CursorKind::Documents(ref mut queue, ref mut bytes) => {
            let batch = take_batch(queue, limit.unwrap_or(usize::MAX));
            let before = *bytes;
            // Count down by what this batch took, rather than re-measuring the whole rest.
            let taken: usize = batch
                .iter()
                .filter_map(Bson::as_document)
                .map(crate::limits::approx_size)
                .sum();
            *bytes = before.saturating_sub(taken);
            let open = !queue.is_empty();
            db.cursors.resize(before, if open { *bytes } else { 0 });
            let ns = cursor.ns.clone();
            let reply_id = if open {
                db.cursors.restore(id, cursor);
                id
            } else {
                0
            };
            Ok(cursor_reply(&ns, reply_id, "nextBatch", batch, None))
        }
        CursorKind::Scan(mut scan) => {
            let ns = cursor.ns.clone();
            let deadline = deadline_of(db, &req.body)?;
            let (scan, batch, more) = db
                .store
                .read(move |read| {
                    let meta = read
                        .collection(&scan.ns)?
                        .filter(|m| m.id == scan.collection_id)
                        .ok_or_else(|| {
                            CommandError::new(
                                ErrorCode::QueryPlanKilled,
                                format!("collection dropped while cursor {id} was open"),
                            )
                        })?;
                    let (batch, more) = scan_batch(
                        read,
                        &meta,
                        &mut scan,
                        0,
                        limit.unwrap_or(usize::MAX),
                        &deadline,
                    )?;
                    Ok((scan, batch, more))
                })
                .await?;
            let reply_id = if more {
                db.cursors
                    .restore(id, Cursor::new(ns.clone(), CursorKind::Scan(scan)));
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
                    Cursor::new(ns.clone(), CursorKind::ChangeStream(stream)),
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

/// Implements `count` (used by `estimatedDocumentCount`): counts while scanning, holding no
/// documents.
pub(super) async fn count(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let deadline = deadline_of(db, &req.body)?;
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
            let wanted = limit.map(|l| l.saturating_add(skip));
            let mut matched = 0usize;
            for_each_match(read, &meta, &filter, &deadline, &[], |_, _, _| {
                matched += 1;
                Ok(wanted.is_none_or(|w| matched < w))
            })?;
            let matched = matched.saturating_sub(skip);
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
    crate::query::path::check_length(&key)?;
    let deadline = deadline_of(db, &req.body)?;
    let filter = Filter::parse(opt_document(&req.body, "query")?.unwrap_or(&Document::new()))?;
    let snapshot = SnapshotRead::of(&req.body);
    let (values, at) = db
        .store
        .read(move |read| {
            let at = snapshot.map(|s| s.pin(read)).transpose()?;
            let Some(meta) = read.collection(&ns)? else {
                return Ok((Vec::new(), at));
            };
            let mut seen = std::collections::BTreeMap::new();
            let mut bytes = 0usize;
            for_each_match(read, &meta, &filter, &deadline, &[], |_, _, doc| {
                for value in keys::path_values(&doc, &key) {
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        seen.entry(keys::encode(&value))
                    {
                        bytes += crate::limits::approx_value_size(&value);
                        if bytes > crate::wire::MAX_BSON_OBJECT_SIZE {
                            return Err(CommandError::new(
                                ErrorCode::BsonObjectTooLarge,
                                "distinct too big, 16mb cap",
                            ));
                        }
                        slot.insert(value);
                    }
                }
                Ok(true)
            })?;
            Ok((seen.into_values().collect::<Vec<Bson>>(), at))
        })
        .await?;
    let mut reply = doc! { "values": values };
    if let Some(at) = at {
        reply.insert("atClusterTime", at);
    }
    Ok(reply)
}
