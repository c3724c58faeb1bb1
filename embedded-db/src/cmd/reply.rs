//! Cursor replies: the first batch of a result, the batches after it, and the
//! `{ cursor: { firstBatch | nextBatch, id, ns } }` shape drivers read.

use std::collections::VecDeque;

use bson::{doc, Bson, Document};

use crate::cursor::Cursor;
use crate::db::Db;
use crate::error::CommandResult;
use crate::limits::BATCH_BYTES;

/// Default number of documents in a first batch, as `mongod`.
pub(super) const DEFAULT_BATCH: usize = 101;

/// Splits off the first batch of `docs` and registers the rest as a cursor.
///
/// The batch holds at most `batch_size` documents (default 101) and 16 MiB; with
/// `single_batch` or when nothing remains, the cursor id is 0. The rest counts against the
/// cursors' memory budget (`ExceededMemoryLimit` when it does not fit).
pub(super) fn first_batch(
    db: &Db,
    ns: &str,
    docs: Vec<Document>,
    batch_size: Option<usize>,
    single_batch: bool,
) -> CommandResult<Document> {
    let mut remaining: VecDeque<Document> = docs.into();
    let batch = take_batch(&mut remaining, batch_size.unwrap_or(DEFAULT_BATCH));
    let id = if single_batch || remaining.is_empty() {
        0
    } else {
        db.cursors
            .insert(Cursor::documents(ns.to_owned(), remaining))?
    };
    Ok(cursor_reply(ns, id, "firstBatch", batch, None))
}

/// Takes up to `limit` documents and at most [`BATCH_BYTES`] from the front of `queue`
/// (always at least one, so a large document still makes progress).
pub(super) fn take_batch(queue: &mut VecDeque<Document>, limit: usize) -> Vec<Bson> {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    while batch.len() < limit {
        let Some(next) = queue.front() else { break };
        let size = bson::to_vec(next).map_or(0, |v| v.len());
        if !batch.is_empty() && bytes + size > BATCH_BYTES {
            break;
        }
        bytes += size;
        if let Some(doc) = queue.pop_front() {
            batch.push(Bson::Document(doc));
        }
    }
    batch
}

/// `{ cursor: { <which>: batch, id: Int64, ns, postBatchResumeToken? } }`.
pub(super) fn cursor_reply(
    ns: &str,
    id: i64,
    which: &str,
    batch: Vec<Bson>,
    post_batch_token: Option<Document>,
) -> Document {
    let mut cursor = doc! { which: batch, "id": id, "ns": ns };
    if let Some(token) = post_batch_token {
        cursor.insert("postBatchResumeToken", token);
    }
    doc! { "cursor": cursor }
}

/// A cursor reply with the cluster time of a snapshot read (`cursor.atClusterTime`), as
/// mongod reports it and drivers' snapshot sessions read it.
pub(super) fn with_cluster_time(mut reply: Document, at: Option<bson::Timestamp>) -> Document {
    if let (Some(at), Ok(cursor)) = (at, reply.get_document_mut("cursor")) {
        cursor.insert("atClusterTime", at);
    }
    reply
}
