//! Write commands: `insert`, `update`, `delete`, `findAndModify`.
//!
//! Each command runs as one job of the group-commit writer, so its reply is
//! sent only once its changes (and their change-log entries) are durable.
//! Statement-level failures become `writeErrors`; `ordered` batches stop at
//! the first one, unordered batches carry on.

use std::sync::Arc;

use bson::{doc, oid::ObjectId, Bson, Document};

use super::read::order_and_cut;
use super::{documents_arg, opt_bool, opt_document, Request};
use crate::db::Db;
use crate::error::{CommandError, CommandResult};
use crate::namespace::Namespace;
use crate::query::filter::{equality_fields, Filter};
use crate::query::projection::Projection;
use crate::query::sort::SortSpec;
use crate::query::update::{validate_for_storage, UpdateContext, UpdateSpec};
use crate::storage::{ChangeRecord, Snapshot, WriteCtx};

/// `doc` with `_id` as its first field, generating an ObjectId when it has none
/// (MongoDB stores `_id` first whatever order the client sent).
fn with_id_first(doc: Document) -> Document {
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

fn ordered(req: &Request<'_>) -> CommandResult<bool> {
    Ok(opt_bool(&req.body, "ordered")?.unwrap_or(true))
}

/// Implements the `insert` command.
pub(super) async fn insert(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let docs = documents_arg(&req.body, "documents")?;
    let ordered = ordered(req)?;
    if docs.is_empty() {
        return Err(CommandError::bad_value(
            "Write batch sizes must be between 1 and 100000. Got 0 operations.",
        ));
    }
    db.store
        .write(move |ctx| {
            let meta = ctx.ensure_collection(&ns)?;
            let mut errors = WriteErrors::default();
            let mut n = 0i64;
            for (index, doc) in docs.into_iter().enumerate() {
                let doc = with_id_first(doc);
                let result = validate_for_storage(&doc).and_then(|()| ctx.insert(&ns, &meta, doc));
                match errors.record(index, result) {
                    Some(()) => n += 1,
                    None if ordered => break,
                    None => {}
                }
            }
            Ok(errors.into_reply(doc! { "n": n }))
        })
        .await
}

/// One parsed update statement (of `update` or `findAndModify`).
struct UpdatePlan {
    filter: Filter,
    query: Document,
    spec: UpdateSpec,
    array_filters: Vec<Document>,
    upsert: bool,
    multi: bool,
    sort: Option<SortSpec>,
}

impl UpdatePlan {
    fn parse(
        query: Document,
        update: &Bson,
        array_filters: Option<&Bson>,
        upsert: bool,
        multi: bool,
        sort: Option<SortSpec>,
    ) -> CommandResult<Self> {
        let filter = Filter::parse(&query)?;
        let spec = UpdateSpec::parse(update)?;
        if multi && matches!(spec, UpdateSpec::Replacement(_)) {
            return Err(CommandError::failed_to_parse(
                "multi update is not supported for replacement-style update",
            ));
        }
        let array_filters = match array_filters {
            None | Some(Bson::Null) => Vec::new(),
            Some(Bson::Array(items)) => items
                .iter()
                .map(|f| {
                    f.as_document().cloned().ok_or_else(|| {
                        CommandError::type_mismatch("arrayFilters entries must be objects")
                    })
                })
                .collect::<CommandResult<_>>()?,
            Some(_) => return Err(CommandError::type_mismatch("arrayFilters must be an array")),
        };
        Ok(Self {
            filter,
            query,
            spec,
            array_filters,
            upsert,
            multi,
            sort,
        })
    }

    fn context(&self, ctx: &WriteCtx<'_>, is_upsert_insert: bool) -> UpdateContext<'_> {
        let now = ctx.now();
        UpdateContext {
            is_upsert_insert,
            array_filters: &self.array_filters,
            query: Some(&self.filter),
            now,
            now_ts: bson::Timestamp {
                time: u32::try_from(now.timestamp_millis() / 1000).unwrap_or(u32::MAX),
                increment: 1,
            },
        }
    }

    /// The document an upsert inserts: the query's equality fields (or the replacement), the
    /// update applied on top, and an `_id`.
    fn upsert_document(&self, ctx: &WriteCtx<'_>) -> CommandResult<Document> {
        let seed = equality_fields(&self.query)?;
        let doc = match &self.spec {
            UpdateSpec::Replacement(replacement) => {
                let mut doc = replacement.clone();
                if !doc.contains_key("_id") {
                    if let Some(id) = seed.get("_id") {
                        doc.insert("_id", id.clone());
                    }
                }
                doc
            }
            UpdateSpec::Operators(_) => {
                let mut doc = seed;
                self.spec.apply(&mut doc, &self.context(ctx, true))?;
                doc
            }
        };
        let doc = with_id_first(doc);
        validate_for_storage(&doc)?;
        Ok(doc)
    }
}

/// What one update statement did.
#[derive(Default)]
struct UpdateOutcome {
    matched: i64,
    modified: i64,
    upserted: Option<Bson>,
    /// The first matched document before and after the update (for `findAndModify`).
    before: Option<Document>,
    after: Option<Document>,
}

fn run_update(
    ctx: &mut WriteCtx<'_>,
    ns: &Namespace,
    plan: &UpdatePlan,
) -> CommandResult<UpdateOutcome> {
    let mut outcome = UpdateOutcome::default();
    let existing = ctx.collection(ns)?;
    let targets = match &existing {
        Some(meta) => {
            let matched = super::read::matching(ctx, meta, &plan.filter)?;
            let limit = (!plan.multi).then_some(1);
            order_and_cut(matched, plan.sort.as_ref(), 0, limit)
        }
        None => Vec::new(),
    };
    let Some(meta) = existing.filter(|_| !targets.is_empty()) else {
        if plan.upsert {
            let meta = ctx.ensure_collection(ns)?;
            let doc = plan.upsert_document(ctx)?;
            outcome.upserted = doc.get("_id").cloned();
            ctx.insert(ns, &meta, doc.clone())?;
            outcome.after = Some(doc);
        }
        return Ok(outcome);
    };
    for old in targets {
        let mut new = old.clone();
        let applied = plan.spec.apply(&mut new, &plan.context(ctx, false))?;
        outcome.matched += 1;
        if applied.modified {
            validate_for_storage(&new)?;
            let id = new.get("_id").cloned().unwrap_or(Bson::Null);
            let images = meta.keeps_images();
            let change = match plan.spec {
                UpdateSpec::Replacement(_) => ChangeRecord::Replace {
                    ns: ns.clone(),
                    id,
                    doc: new.clone(),
                    pre: images.then(|| old.clone()),
                },
                UpdateSpec::Operators(_) => ChangeRecord::Update {
                    ns: ns.clone(),
                    id,
                    description: doc! {
                        "updatedFields": applied.updated_fields,
                        "removedFields": applied.removed_fields,
                        "truncatedArrays": applied.truncated_arrays,
                    },
                    pre: images.then(|| old.clone()),
                    post: images.then(|| new.clone()),
                },
            };
            ctx.replace(ns, &meta, &old, &new, &change)?;
            outcome.modified += 1;
        }
        if outcome.before.is_none() {
            outcome.before = Some(old);
            outcome.after = Some(new);
        }
    }
    Ok(outcome)
}

/// Implements the `update` command.
pub(super) async fn update(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let statements = documents_arg(&req.body, "updates")?;
    let ordered = ordered(req)?;
    db.store
        .write(move |ctx| {
            let mut errors = WriteErrors::default();
            let (mut n, mut modified) = (0i64, 0i64);
            let mut upserted = Vec::new();
            for (index, statement) in statements.into_iter().enumerate() {
                let result = parse_update_statement(&statement)
                    .and_then(|plan| run_update(ctx, &ns, &plan));
                match errors.record(index, result) {
                    Some(outcome) => {
                        n += outcome.matched;
                        modified += outcome.modified;
                        if let Some(id) = outcome.upserted {
                            n += 1;
                            upserted.push(doc! { "index": i32::try_from(index).unwrap_or(i32::MAX), "_id": id });
                        }
                    }
                    None if ordered => break,
                    None => {}
                }
            }
            let mut reply = doc! { "n": n, "nModified": modified };
            if !upserted.is_empty() {
                reply.insert("upserted", upserted);
            }
            Ok(errors.into_reply(reply))
        })
        .await
}

fn parse_update_statement(statement: &Document) -> CommandResult<UpdatePlan> {
    let query = opt_document(statement, "q")?.cloned().ok_or_else(|| {
        CommandError::failed_to_parse("BSON field 'q' is missing but a required field")
    })?;
    let update = statement.get("u").ok_or_else(|| {
        CommandError::failed_to_parse("BSON field 'u' is missing but a required field")
    })?;
    UpdatePlan::parse(
        query,
        update,
        statement.get("arrayFilters"),
        opt_bool(statement, "upsert")?.unwrap_or(false),
        opt_bool(statement, "multi")?.unwrap_or(false),
        None,
    )
}

/// Implements the `delete` command (`limit` 0 deletes every match, 1 the first).
pub(super) async fn delete(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let statements = documents_arg(&req.body, "deletes")?;
    let ordered = ordered(req)?;
    db.store
        .write(move |ctx| {
            let mut errors = WriteErrors::default();
            let mut n = 0i64;
            for (index, statement) in statements.into_iter().enumerate() {
                let result = run_delete(ctx, &ns, &statement);
                match errors.record(index, result) {
                    Some(deleted) => n += deleted,
                    None if ordered => break,
                    None => {}
                }
            }
            Ok(errors.into_reply(doc! { "n": n }))
        })
        .await
}

fn run_delete(ctx: &mut WriteCtx<'_>, ns: &Namespace, statement: &Document) -> CommandResult<i64> {
    let query = opt_document(statement, "q")?.ok_or_else(|| {
        CommandError::failed_to_parse("BSON field 'q' is missing but a required field")
    })?;
    let filter = Filter::parse(query)?;
    let limit = match super::opt_i64(statement, "limit")? {
        Some(0) => None,
        Some(1) => Some(1),
        Some(other) => {
            return Err(CommandError::failed_to_parse(format!(
                "The limit field in delete objects must be 0 or 1. Got {other}"
            )))
        }
        None => {
            return Err(CommandError::failed_to_parse(
                "BSON field 'limit' is missing but a required field",
            ))
        }
    };
    let Some(meta) = ctx.collection(ns)? else {
        return Ok(0);
    };
    let targets = order_and_cut(super::read::matching(ctx, &meta, &filter)?, None, 0, limit);
    let mut n = 0;
    for doc in &targets {
        ctx.delete(ns, &meta, doc)?;
        n += 1;
    }
    Ok(n)
}

/// Implements `findAndModify` (`findOneAndUpdate`, `findOneAndReplace`, `findOneAndDelete`).
pub(super) async fn find_and_modify(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let body = &req.body;
    let query = opt_document(body, "query")?.cloned().unwrap_or_default();
    let sort = opt_document(body, "sort")?
        .map(SortSpec::parse)
        .transpose()?;
    let fields = opt_document(body, "fields")?
        .map(Projection::parse)
        .transpose()?;
    let remove = opt_bool(body, "remove")?.unwrap_or(false);
    let return_new = opt_bool(body, "new")?.unwrap_or(false);
    let upsert = opt_bool(body, "upsert")?.unwrap_or(false);
    let update = body
        .get("update")
        .filter(|u| !matches!(u, Bson::Null))
        .cloned();
    let plan = match (remove, update) {
        (true, Some(_)) => {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both an update and remove=true",
            ))
        }
        (true, None) if upsert => {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both upsert=true and remove=true",
            ))
        }
        (true, None) => None,
        (false, Some(update)) => Some(UpdatePlan::parse(
            query.clone(),
            &update,
            body.get("arrayFilters"),
            upsert,
            false,
            sort.clone(),
        )?),
        (false, None) => {
            return Err(CommandError::failed_to_parse(
                "Either an update or remove=true must be specified",
            ))
        }
    };
    let filter = Filter::parse(&query)?;
    db.store
        .write(move |ctx| {
            let (value, last_error) = match plan {
                None => {
                    let removed = match ctx.collection(&ns)? {
                        Some(meta) => {
                            let matched = super::read::matching(ctx, &meta, &filter)?;
                            let first = order_and_cut(matched, sort.as_ref(), 0, Some(1)).pop();
                            if let Some(doc) = &first {
                                ctx.delete(&ns, &meta, doc)?;
                            }
                            first
                        }
                        None => None,
                    };
                    let n = i32::from(removed.is_some());
                    (removed, doc! { "n": n })
                }
                Some(plan) => {
                    let outcome = run_update(ctx, &ns, &plan)?;
                    let mut last_error = doc! {
                        "n": i32::from(outcome.matched > 0 || outcome.upserted.is_some()),
                        "updatedExisting": outcome.matched > 0,
                    };
                    let value = if return_new {
                        outcome.after
                    } else {
                        outcome.before
                    };
                    if let Some(id) = outcome.upserted {
                        last_error.insert("upserted", id);
                    }
                    (value, last_error)
                }
            };
            let value = match (value, &fields) {
                (Some(doc), Some(p)) => Bson::Document(p.apply_with_filter(&doc, Some(&filter))?),
                (Some(doc), None) => Bson::Document(doc),
                (None, _) => Bson::Null,
            };
            Ok(doc! { "lastErrorObject": last_error, "value": value })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

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
}
