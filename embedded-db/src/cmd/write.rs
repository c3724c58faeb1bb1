//! Write commands: `insert`, `update`, `delete`, `findAndModify`, one file each under
//! `write/`; this file holds what they share (and what `$out`/`$merge` reuse).
//!
//! # How a statement runs
//!
//! Parsing, and the search for the documents a statement targets, happen outside the
//! group-commit writer, on a read snapshot (the *read phase*), so a slow filter never holds
//! up other writes. The writer then applies the statement in a short job:
//!
//! - a single-document statement (`updateOne`, `deleteOne`, `findAndModify`, an upsert)
//!   trusts what the read phase found when the collection was not written since that
//!   snapshot, or, without a sort, when the found document still matches; otherwise it
//!   searches again (after [`OPTIMISTIC_TRIES`] it searches inside the writer, which always
//!   ends);
//! - a multi-document statement (`updateMany`, `deleteMany`) applies to the documents the
//!   read phase found, [`CHUNK`] per job, re-reading each and skipping those that no longer
//!   match. Like mongod's, it is not atomic as a whole, but every document is.
//!
//! Each storage primitive checks everything before it changes anything, so a statement that
//! fails leaves documents and indexes as they were. A reply is sent only once its changes
//! (and their change-log entries) are durable. A retryable write (`lsid` + `txnNumber`)
//! records its reply in the same transaction as its changes, and a retry gets that reply
//! back instead of a second application.

mod delete;
mod find_and_modify;
mod insert;
mod update;

pub(super) use delete::delete;
pub(super) use find_and_modify::find_and_modify;
pub(super) use insert::insert;
pub(super) use update::{update, update_document};

use bson::{oid::ObjectId, Bson, Document};

use super::args::{opt_bool, Request};
use super::validator::Validator;
use crate::db::Db;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::Deadline;
use crate::namespace::Namespace;
use crate::query::filter::Filter;
use crate::query::sort::SortSpec;
use crate::query::update::validate_for_storage;
use crate::scan::{self, Found};
use crate::storage::{CollectionMeta, RetryId, Snapshot, WriteCtx};

/// Documents one writer job updates or deletes for a multi-document statement.
const CHUNK: usize = 256;
/// Read phases a single-document statement tries before it searches inside the writer.
const OPTIMISTIC_TRIES: usize = 3;

/// `doc` with `_id` as its first field, generating an ObjectId when it has none
/// (MongoDB stores `_id` first whatever order the client sent).
pub(super) fn with_id_first(doc: Document) -> Document {
    if doc.keys().next().map(String::as_str) == Some("_id") {
        return doc;
    }
    let mut doc = doc;
    let id = doc
        .remove("_id")
        .unwrap_or_else(|| Bson::ObjectId(ObjectId::new()));
    let mut out = Document::new();
    out.insert("_id", id);
    out.extend(doc);
    out
}

/// A count in a write reply: a 32-bit integer, as mongod sends `n` and `nModified`.
fn reply_count(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Collects the per-statement results of a batch.
#[derive(Default)]
struct WriteErrors(Vec<Bson>);

impl WriteErrors {
    /// Records the result of statement `index`: the value on success, `None` after noting the
    /// error.
    fn record<T>(&mut self, index: usize, result: CommandResult<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.0.push(Bson::Document(e.to_write_error(index)));
                None
            }
        }
    }

    fn into_reply(self, mut reply: Document) -> Document {
        if !self.0.is_empty() {
            reply.insert("writeErrors", self.0);
        }
        reply
    }
}

/// The command-wide settings of a write command.
#[derive(Clone)]
struct WriteOptions {
    ordered: bool,
    /// `bypassDocumentValidation`: the collection's validator is not applied.
    bypass_validation: bool,
    /// `(lsid, txnNumber)` of a retryable write.
    retry: Option<RetryId>,
}

impl WriteOptions {
    fn parse(req: &Request<'_>) -> CommandResult<Self> {
        Ok(Self {
            ordered: opt_bool(&req.body, "ordered")?.unwrap_or(true),
            bypass_validation: opt_bool(&req.body, "bypassDocumentValidation")?.unwrap_or(false),
            retry: retry_id(&req.body)?,
        })
    }

    /// The validator to apply to documents stored in `meta`'s collection.
    fn validator(&self, meta: &CollectionMeta) -> CommandResult<Option<Validator>> {
        Validator::for_write(&meta.options, self.bypass_validation)
    }
}

/// The `(lsid, txnNumber)` of a retryable write, when the command carries both.
fn retry_id(body: &Document) -> CommandResult<Option<RetryId>> {
    let txn = match body.get("txnNumber") {
        None => return Ok(None),
        Some(Bson::Int64(n)) if *n >= 0 => *n,
        Some(other) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'txnNumber' must be a non-negative long, not {other}"
            )))
        }
    };
    match body.get("lsid") {
        Some(Bson::Document(lsid)) => Ok(Some(RetryId::new(lsid.clone(), txn))),
        _ => Err(CommandError::new(
            ErrorCode::InvalidOptions,
            "Transaction number requires a session ID to also be specified",
        )),
    }
}

/// Runs `f` as one writer job of a retryable write: a retry gets the recorded reply, an
/// older `txnNumber` fails with `TransactionTooOld`, and a new one records the reply `f`
/// returns in the same transaction as its changes. `f` returns `None` when its read phase
/// is stale (nothing was written); the caller searches again.
async fn write_once<F>(db: &Db, retry: Option<RetryId>, f: F) -> CommandResult<Option<Document>>
where
    F: FnOnce(&mut WriteCtx<'_>) -> CommandResult<Option<Document>> + Send + 'static,
{
    db.store
        .write(move |ctx| {
            if let Some(id) = &retry {
                if let Some(reply) = ctx.retried_reply(id)? {
                    return Ok(Some(reply));
                }
            }
            let reply = f(ctx)?;
            if let (Some(id), Some(reply)) = (&retry, &reply) {
                ctx.record_reply(id, reply)?;
            }
            Ok(reply)
        })
        .await
}

/// Errors that fail a whole write command rather than one statement (as in mongod: an
/// interrupted batch, a session that has moved on).
fn fails_the_command(e: &CommandError) -> bool {
    matches!(
        e.code,
        ErrorCode::MaxTimeMSExpired | ErrorCode::TransactionTooOld
    )
}

/// Inserts `doc` into `meta`'s collection as the `insert` command would (an `_id` first,
/// storage rules, the validator, unique indexes), recording the change.
pub(super) fn insert_document(
    ctx: &mut WriteCtx<'_>,
    ns: &Namespace,
    meta: &CollectionMeta,
    validator: Option<&Validator>,
    doc: Document,
) -> CommandResult<()> {
    let doc = with_id_first(doc);
    validate_for_storage(&doc)?;
    check_valid(validator, &doc, None)?;
    ctx.insert(ns, meta, doc)
}

fn check_valid(
    validator: Option<&Validator>,
    new: &Document,
    old: Option<&Document>,
) -> CommandResult<()> {
    validator.map_or(Ok(()), |v| v.check(new, old))
}

/// The document a single-document statement targets, from the read phase when it still
/// holds (`Ok(Some(target))`, where the target may be "none"), or `Ok(None)` when the read
/// phase is stale. Without a read phase (`found` is `None`), searches in the writer.
fn single_target(
    ctx: &WriteCtx<'_>,
    ns: &Namespace,
    meta: Option<&CollectionMeta>,
    filter: &Filter,
    sort: Option<&SortSpec>,
    found: Option<&Found>,
) -> CommandResult<Option<Option<Document>>> {
    let Some(meta) = meta else {
        // No collection now: stale only if the read phase saw one.
        return Ok(match found {
            Some(f) if !f.docs.is_empty() => None,
            _ => Some(None),
        });
    };
    let Some(found) = found else {
        let matched = scan::matching(
            ctx,
            meta,
            filter,
            &Deadline::none(),
            sort.is_none().then_some(1),
        )?;
        return Ok(Some(scan::order_and_cut(matched, sort, 0, Some(1)).pop()));
    };
    if !ctx.touched_since(ns, found.at) {
        return Ok(Some(found.docs.first().cloned()));
    }
    // Without a sort any matching document is a valid target: keep the one found if it
    // still matches.
    match (sort, found.docs.first()) {
        (None, Some(doc)) => {
            let id = doc.get("_id").unwrap_or(&Bson::Null);
            match ctx.find_by_id(meta, id)? {
                Some(current) if filter.matches(&current)? => Ok(Some(Some(current))),
                _ => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// Refuses a statement field the command does not define (`Location40415`).
fn check_statement_fields(
    command: &str,
    list: &str,
    statements: &[Document],
    allowed: &[&str],
) -> CommandResult<()> {
    for statement in statements {
        if let Some(key) = statement.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(CommandError::new(
                ErrorCode::UnknownField,
                format!("BSON field '{command}.{list}.{key}' is an unknown field."),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::update::UPDATE_STATEMENT_FIELDS;
    use super::*;

    #[test]
    fn id_moves_first_or_is_generated() {
        let doc = with_id_first(doc! { "a": 1, "_id": 5 });
        assert_eq!(doc.keys().next().map(String::as_str), Some("_id"));
        assert_eq!(doc.get_i32("_id").ok(), Some(5));
        let doc = with_id_first(doc! { "a": 1 });
        assert!(doc.get_object_id("_id").is_ok());
        assert_eq!(doc.len(), 2);
    }

    #[test]
    fn write_errors_carry_statement_index() {
        let mut errors = WriteErrors::default();
        let failed: CommandResult<()> = Err(CommandError::new(ErrorCode::DuplicateKey, "dup"));
        assert!(errors.record(3, failed).is_none());
        let reply = errors.into_reply(doc! { "n": 0 });
        let first = reply
            .get_array("writeErrors")
            .ok()
            .and_then(|a| a.first())
            .cloned();
        let first = first
            .and_then(|b| b.as_document().cloned())
            .unwrap_or_default();
        assert_eq!(first.get_i32("index").ok(), Some(3));
        assert_eq!(first.get_i32("code").ok(), Some(11000));
    }

    #[test]
    fn unknown_statement_fields_are_refused() {
        let statements = [doc! { "q": {}, "u": { "$set": { "a": 1 } }, "sort": { "a": 1 } }];
        let err = check_statement_fields("update", "updates", &statements, UPDATE_STATEMENT_FIELDS)
            .expect_err("sort is not a 7.0 field");
        assert_eq!(err.code, ErrorCode::UnknownField);
        assert!(err.msg.contains("'update.updates.sort'"));
    }

    #[test]
    fn txn_number_needs_a_session() {
        assert!(matches!(retry_id(&doc! {}), Ok(None)));
        let err = retry_id(&doc! { "txnNumber": 1_i64 }).expect_err("no lsid");
        assert_eq!(err.code, ErrorCode::InvalidOptions);
        let id = retry_id(&doc! { "txnNumber": 4_i64, "lsid": { "id": 1 } }).expect("valid");
        assert_eq!(id.map(|i| i.txn), Some(4));
    }
}
