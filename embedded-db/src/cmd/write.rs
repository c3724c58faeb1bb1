//! Write commands: `insert`, `update`, `delete`, `findAndModify`.
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

use std::sync::Arc;

use bson::{doc, oid::ObjectId, Bson, Document};

use super::generic::deadline_of;
use super::read::{search, Found};
use super::validator::Validator;
use super::{documents_arg, opt_bool, opt_document, Request};
use crate::db::Db;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::Deadline;
use crate::namespace::Namespace;
use crate::query::filter::{equality_fields, Filter};
use crate::query::projection::Projection;
use crate::query::sort::SortSpec;
use crate::query::update::{validate_for_storage, UpdateContext, UpdateSpec};
use crate::storage::{ChangeRecord, CollectionMeta, RetryId, Snapshot, WriteCtx};

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

/// Implements the `insert` command.
pub(super) async fn insert(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let docs = documents_arg(&req.body, "documents")?;
    let options = WriteOptions::parse(req)?;
    if docs.is_empty() {
        return Err(CommandError::bad_value(
            "Write batch sizes must be between 1 and 100000. Got 0 operations.",
        ));
    }
    // What needs no collection is checked here, off the single writer thread.
    let docs: Vec<(Document, CommandResult<()>)> = docs
        .into_iter()
        .map(|doc| {
            let doc = with_id_first(doc);
            let valid = validate_for_storage(&doc);
            (doc, valid)
        })
        .collect();
    let retry = options.retry.clone();
    let reply = write_once(db, retry, move |ctx| {
        let meta = ctx.ensure_collection(&ns)?;
        let validator = options.validator(&meta)?;
        let mut errors = WriteErrors::default();
        let mut n = 0i64;
        for (index, (doc, valid)) in docs.into_iter().enumerate() {
            let result = valid
                .and_then(|()| check_valid(validator.as_ref(), &doc, None))
                .and_then(|()| ctx.insert(&ns, &meta, doc));
            match errors.record(index, result) {
                Some(()) => n += 1,
                None if options.ordered => break,
                None => {}
            }
        }
        Ok(Some(errors.into_reply(doc! { "n": reply_count(n) })))
    })
    .await?;
    reply.ok_or_else(|| CommandError::internal("insert produced no reply"))
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

/// Applies `spec` to `old`, a document of `meta`'s collection, as an update statement would
/// (storage rules, the validator, unique indexes), recording the change when there is one.
pub(super) fn update_document(
    ctx: &mut WriteCtx<'_>,
    ns: &Namespace,
    meta: &CollectionMeta,
    validator: Option<&Validator>,
    old: &Document,
    spec: UpdateSpec,
) -> CommandResult<()> {
    let plan = UpdatePlan {
        filter: Arc::new(Filter::default()),
        query: Document::new(),
        spec,
        array_filters: Vec::new(),
        upsert: false,
        multi: false,
        sort: None,
    };
    plan.apply(ctx, ns, meta, validator, old).map(|_| ())
}

fn check_valid(
    validator: Option<&Validator>,
    new: &Document,
    old: Option<&Document>,
) -> CommandResult<()> {
    validator.map_or(Ok(()), |v| v.check(new, old))
}

/// One parsed update statement (of `update` or `findAndModify`).
struct UpdatePlan {
    filter: Arc<Filter>,
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
        let filter = Arc::new(Filter::parse(&query)?);
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
            UpdateSpec::Operators(_) | UpdateSpec::Pipeline(_) => {
                let mut doc = seed;
                self.spec.apply(&mut doc, &self.context(ctx, true))?;
                doc
            }
        };
        let doc = with_id_first(doc);
        validate_for_storage(&doc)?;
        Ok(doc)
    }

    /// Applies the update to `old` (a document of `meta`'s collection): stores the new version
    /// with its change record when anything changed. Returns the new version and whether it
    /// differs.
    fn apply(
        &self,
        ctx: &mut WriteCtx<'_>,
        ns: &Namespace,
        meta: &CollectionMeta,
        validator: Option<&Validator>,
        old: &Document,
    ) -> CommandResult<(Document, bool)> {
        let mut new = old.clone();
        let applied = self.spec.apply(&mut new, &self.context(ctx, false))?;
        if !applied.modified {
            return Ok((new, false));
        }
        validate_for_storage(&new)?;
        check_valid(validator, &new, Some(old))?;
        let id = new.get("_id").cloned().unwrap_or(Bson::Null);
        let images = meta.keeps_images();
        let change = match self.spec {
            UpdateSpec::Replacement(_) => ChangeRecord::Replace {
                ns: ns.clone(),
                id,
                doc: new.clone(),
                pre: images.then(|| old.clone()),
            },
            UpdateSpec::Operators(_) | UpdateSpec::Pipeline(_) => {
                let whole_fields = matches!(self.spec, UpdateSpec::Pipeline(_));
                let paths = applied.disambiguated_paths(old, &new, whole_fields);
                let mut description = doc! {
                    "updatedFields": applied.updated_fields,
                    "removedFields": applied.removed_fields,
                    "truncatedArrays": applied.truncated_arrays,
                };
                // Kept only when there is something to say (as mongod's update diff).
                if !paths.is_empty() {
                    description.insert("disambiguatedPaths", paths);
                }
                ChangeRecord::Update {
                    ns: ns.clone(),
                    id,
                    description,
                    pre: images.then(|| old.clone()),
                    post: images.then(|| new.clone()),
                }
            }
        };
        ctx.replace(ns, meta, old, &new, &change)?;
        Ok((new, true))
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
        let matched = super::read::matching(
            ctx,
            meta,
            filter,
            &Deadline::none(),
            sort.is_none().then_some(1),
        )?;
        return Ok(Some(
            super::read::order_and_cut(matched, sort, 0, Some(1)).pop(),
        ));
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

/// Runs a single-document update statement in the writer; `None` when `found` is stale.
fn update_one(
    ctx: &mut WriteCtx<'_>,
    ns: &Namespace,
    plan: &UpdatePlan,
    options: &WriteOptions,
    found: Option<&Found>,
) -> CommandResult<Option<UpdateOutcome>> {
    let existing = ctx.collection(ns)?;
    let Some(target) = single_target(
        ctx,
        ns,
        existing.as_ref(),
        &plan.filter,
        plan.sort.as_ref(),
        found,
    )?
    else {
        return Ok(None);
    };
    let mut outcome = UpdateOutcome::default();
    match (target, existing) {
        (Some(old), Some(meta)) => {
            let validator = options.validator(&meta)?;
            let (new, modified) = plan.apply(ctx, ns, &meta, validator.as_ref(), &old)?;
            outcome.matched = 1;
            outcome.modified = i64::from(modified);
            outcome.before = Some(old);
            outcome.after = Some(new);
        }
        _ if plan.upsert => {
            let meta = ctx.ensure_collection(ns)?;
            let doc = plan.upsert_document(ctx)?;
            check_valid(options.validator(&meta)?.as_ref(), &doc, None)?;
            outcome.upserted = doc.get("_id").cloned();
            ctx.insert(ns, &meta, doc.clone())?;
            outcome.after = Some(doc);
        }
        _ => {}
    }
    Ok(Some(outcome))
}

/// Runs a single-document update: read phase, then the writer, searching again while the
/// read phase turns out stale. `reply` turns the outcome into the command's reply (recorded
/// for a retryable write).
async fn run_update_one<R>(
    db: &Db,
    ns: &Namespace,
    plan: Arc<UpdatePlan>,
    options: &WriteOptions,
    deadline: &Deadline,
    reply: R,
) -> CommandResult<Document>
where
    R: Fn(UpdateOutcome) -> CommandResult<Document> + Clone + Send + 'static,
{
    for attempt in 0..=OPTIMISTIC_TRIES {
        let found = if attempt < OPTIMISTIC_TRIES {
            let limit = plan.sort.is_none().then_some(1);
            Some(search(db, ns, &plan.filter, plan.sort.as_ref(), limit, deadline).await?)
        } else {
            None
        };
        deadline.check_now()?;
        let (ns, plan, options, reply) = (
            ns.clone(),
            Arc::clone(&plan),
            options.clone(),
            reply.clone(),
        );
        let retry = options.retry.clone();
        let done = write_once(db, retry, move |ctx| {
            update_one(ctx, &ns, &plan, &options, found.as_ref())?
                .map(reply)
                .transpose()
        })
        .await?;
        if let Some(done) = done {
            return Ok(done);
        }
    }
    Err(CommandError::internal("update found no stable target"))
}

/// Runs a multi-document update: the read phase finds every match, the writer applies
/// [`CHUNK`] documents per job.
async fn run_update_many(
    db: &Db,
    ns: &Namespace,
    plan: Arc<UpdatePlan>,
    options: &WriteOptions,
    deadline: &Deadline,
) -> CommandResult<UpdateOutcome> {
    let found = search(db, ns, &plan.filter, None, None, deadline).await?;
    if found.docs.is_empty() && plan.upsert {
        let reply = |outcome: UpdateOutcome| Ok(outcome_document(&outcome));
        let done = run_update_one(db, ns, plan, options, deadline, reply).await?;
        return Ok(outcome_from_document(&done));
    }
    let mut total = UpdateOutcome::default();
    let ids: Vec<Bson> = found
        .docs
        .into_iter()
        .filter_map(|mut d| d.remove("_id"))
        .collect();
    for chunk in ids.chunks(CHUNK) {
        deadline.check_now()?;
        let (ns, plan, options, chunk) = (
            ns.clone(),
            Arc::clone(&plan),
            options.clone(),
            chunk.to_vec(),
        );
        let (matched, modified) = db
            .store
            .write(move |ctx| {
                let Some(meta) = ctx.collection(&ns)? else {
                    return Ok((0, 0));
                };
                let validator = options.validator(&meta)?;
                let (mut matched, mut modified) = (0i64, 0i64);
                for id in &chunk {
                    let Some(old) = ctx.find_by_id(&meta, id)? else {
                        continue;
                    };
                    if !plan.filter.matches(&old)? {
                        continue;
                    }
                    matched += 1;
                    let (_, changed) = plan.apply(ctx, &ns, &meta, validator.as_ref(), &old)?;
                    modified += i64::from(changed);
                }
                Ok((matched, modified))
            })
            .await?;
        total.matched += matched;
        total.modified += modified;
    }
    Ok(total)
}

/// The reply of an `update` command, built statement by statement.
#[derive(Default)]
struct UpdateTally {
    n: i64,
    modified: i64,
    upserted: Vec<Document>,
    errors: WriteErrors,
}

impl UpdateTally {
    /// Adds statement `index`'s result; false when it failed.
    fn add(&mut self, index: usize, result: CommandResult<UpdateOutcome>) -> bool {
        let Some(outcome) = self.errors.record(index, result) else {
            return false;
        };
        self.n += outcome.matched;
        self.modified += outcome.modified;
        if let Some(id) = outcome.upserted {
            self.n += 1;
            let index = i32::try_from(index).unwrap_or(i32::MAX);
            self.upserted.push(doc! { "index": index, "_id": id });
        }
        true
    }

    fn into_reply(self) -> Document {
        let mut reply = doc! { "n": reply_count(self.n), "nModified": reply_count(self.modified) };
        if !self.upserted.is_empty() {
            reply.insert("upserted", self.upserted);
        }
        self.errors.into_reply(reply)
    }
}

/// The `update` reply fields of one statement's outcome, as recorded for a retry.
fn outcome_document(outcome: &UpdateOutcome) -> Document {
    let mut d = doc! { "n": outcome.matched, "nModified": outcome.modified };
    if let Some(id) = &outcome.upserted {
        d.insert("upsertedId", id.clone());
    }
    d
}

fn outcome_from_document(d: &Document) -> UpdateOutcome {
    UpdateOutcome {
        matched: d.get_i64("n").unwrap_or(0),
        modified: d.get_i64("nModified").unwrap_or(0),
        upserted: d.get("upsertedId").cloned(),
        ..UpdateOutcome::default()
    }
}

/// Fields an update statement may carry (mongod 7.0); anything else is refused, as mongod
/// refuses it, rather than ignored (`sort` arrived only in 8.0).
const UPDATE_STATEMENT_FIELDS: &[&str] = &[
    "q",
    "u",
    "upsert",
    "multi",
    "arrayFilters",
    "hint",
    "collation",
    "upsertSupplied",
];

/// Fields a delete statement may carry (mongod 7.0).
const DELETE_STATEMENT_FIELDS: &[&str] = &["q", "limit", "hint", "collation"];

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

/// Implements the `update` command.
pub(super) async fn update(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let statements = documents_arg(&req.body, "updates")?;
    check_statement_fields("update", "updates", &statements, UPDATE_STATEMENT_FIELDS)?;
    let options = WriteOptions::parse(req)?;
    let deadline = deadline_of(db, &req.body)?;
    let plans: Vec<CommandResult<Arc<UpdatePlan>>> = statements
        .iter()
        .map(|s| parse_update_statement(s).map(Arc::new))
        .collect();
    // A retryable command that is more than one single-document statement runs whole in
    // one writer job, so that the reply it records covers exactly what was applied.
    let many = plans.len() > 1 || plans.iter().any(|p| p.as_ref().is_ok_and(|p| p.multi));
    if options.retry.is_some() && many {
        return update_batch_in_writer(db, ns, plans, options).await;
    }
    let mut tally = UpdateTally::default();
    for (index, plan) in plans.into_iter().enumerate() {
        let result = match plan {
            Ok(plan) if plan.multi => run_update_many(db, &ns, plan, &options, &deadline).await,
            Ok(plan) => {
                let reply = |outcome: UpdateOutcome| Ok(outcome_document(&outcome));
                run_update_one(db, &ns, plan, &options, &deadline, reply)
                    .await
                    .map(|d| outcome_from_document(&d))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            if fails_the_command(e) {
                return Err(e.clone());
            }
        }
        if !tally.add(index, result) && options.ordered {
            break;
        }
    }
    Ok(tally.into_reply())
}

/// A retryable `update` of several statements: all of them in one writer job, searching in
/// the writer, so the recorded reply covers exactly what was applied.
async fn update_batch_in_writer(
    db: &Db,
    ns: Namespace,
    plans: Vec<CommandResult<Arc<UpdatePlan>>>,
    options: WriteOptions,
) -> CommandResult<Document> {
    let retry = options.retry.clone();
    let reply = write_once(db, retry, move |ctx| {
        let mut tally = UpdateTally::default();
        for (index, plan) in plans.into_iter().enumerate() {
            let result = plan.and_then(|plan| {
                if plan.multi {
                    update_many_in_writer(ctx, &ns, &plan, &options)
                } else {
                    update_one(ctx, &ns, &plan, &options, None).map(Option::unwrap_or_default)
                }
            });
            if !tally.add(index, result) && options.ordered {
                break;
            }
        }
        Ok(Some(tally.into_reply()))
    })
    .await?;
    reply.ok_or_else(|| CommandError::internal("update produced no reply"))
}

fn update_many_in_writer(
    ctx: &mut WriteCtx<'_>,
    ns: &Namespace,
    plan: &UpdatePlan,
    options: &WriteOptions,
) -> CommandResult<UpdateOutcome> {
    let Some(meta) = ctx.collection(ns)? else {
        return update_one(ctx, ns, plan, options, None).map(Option::unwrap_or_default);
    };
    let targets = super::read::matching(ctx, &meta, &plan.filter, &Deadline::none(), None)?;
    if targets.is_empty() {
        return update_one(ctx, ns, plan, options, None).map(Option::unwrap_or_default);
    }
    let validator = options.validator(&meta)?;
    let mut outcome = UpdateOutcome::default();
    for old in &targets {
        let (_, changed) = plan.apply(ctx, ns, &meta, validator.as_ref(), old)?;
        outcome.matched += 1;
        outcome.modified += i64::from(changed);
    }
    Ok(outcome)
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

/// A parsed delete statement.
struct DeletePlan {
    filter: Arc<Filter>,
    /// `limit: 1`: only the first match.
    one: bool,
}

fn parse_delete_statement(statement: &Document) -> CommandResult<DeletePlan> {
    let query = opt_document(statement, "q")?.ok_or_else(|| {
        CommandError::failed_to_parse("BSON field 'q' is missing but a required field")
    })?;
    let filter = Arc::new(Filter::parse(query)?);
    let one = match super::opt_i64(statement, "limit")? {
        Some(0) => false,
        Some(1) => true,
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
    Ok(DeletePlan { filter, one })
}

/// Deletes the target of a single-document delete; `None` when `found` is stale.
fn delete_one(
    ctx: &mut WriteCtx<'_>,
    ns: &Namespace,
    filter: &Filter,
    sort: Option<&SortSpec>,
    found: Option<&Found>,
) -> CommandResult<Option<Option<Document>>> {
    let meta = ctx.collection(ns)?;
    let Some(target) = single_target(ctx, ns, meta.as_ref(), filter, sort, found)? else {
        return Ok(None);
    };
    if let (Some(doc), Some(meta)) = (&target, &meta) {
        ctx.delete(ns, meta, doc)?;
    }
    Ok(Some(target))
}

/// Runs a delete statement; returns how many documents it deleted.
async fn run_delete(
    db: &Db,
    ns: &Namespace,
    plan: &DeletePlan,
    options: &WriteOptions,
    deadline: &Deadline,
) -> CommandResult<i64> {
    if plan.one {
        let reply = |deleted: Option<Document>| Ok(doc! { "n": i64::from(deleted.is_some()) });
        let done =
            delete_one_with_retries(db, ns, &plan.filter, None, options, deadline, reply).await?;
        return Ok(done.get_i64("n").unwrap_or(0));
    }
    let found = search(db, ns, &plan.filter, None, None, deadline).await?;
    let ids: Vec<Bson> = found
        .docs
        .into_iter()
        .filter_map(|mut d| d.remove("_id"))
        .collect();
    let mut n = 0;
    for chunk in ids.chunks(CHUNK) {
        deadline.check_now()?;
        let (ns, filter, chunk) = (ns.clone(), Arc::clone(&plan.filter), chunk.to_vec());
        n += db
            .store
            .write(move |ctx| {
                let Some(meta) = ctx.collection(&ns)? else {
                    return Ok(0);
                };
                let mut n = 0i64;
                for id in &chunk {
                    let Some(doc) = ctx.find_by_id(&meta, id)? else {
                        continue;
                    };
                    if filter.matches(&doc)? {
                        ctx.delete(&ns, &meta, &doc)?;
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await?;
    }
    Ok(n)
}

/// The single-document delete loop shared by `delete` (limit 1) and `findAndModify`
/// (remove): read phase, then the writer, searching again while the read phase is stale.
async fn delete_one_with_retries<R>(
    db: &Db,
    ns: &Namespace,
    filter: &Arc<Filter>,
    sort: Option<&SortSpec>,
    options: &WriteOptions,
    deadline: &Deadline,
    reply: R,
) -> CommandResult<Document>
where
    R: Fn(Option<Document>) -> CommandResult<Document> + Clone + Send + 'static,
{
    for attempt in 0..=OPTIMISTIC_TRIES {
        let found = if attempt < OPTIMISTIC_TRIES {
            let limit = sort.is_none().then_some(1);
            Some(search(db, ns, filter, sort, limit, deadline).await?)
        } else {
            None
        };
        deadline.check_now()?;
        let (ns, filter, sort, reply) =
            (ns.clone(), Arc::clone(filter), sort.cloned(), reply.clone());
        let done = write_once(db, options.retry.clone(), move |ctx| {
            delete_one(ctx, &ns, &filter, sort.as_ref(), found.as_ref())?
                .map(reply)
                .transpose()
        })
        .await?;
        if let Some(done) = done {
            return Ok(done);
        }
    }
    Err(CommandError::internal("delete found no stable target"))
}

/// Implements the `delete` command (`limit` 0 deletes every match, 1 the first).
pub(super) async fn delete(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let statements = documents_arg(&req.body, "deletes")?;
    check_statement_fields("delete", "deletes", &statements, DELETE_STATEMENT_FIELDS)?;
    let options = WriteOptions::parse(req)?;
    let deadline = deadline_of(db, &req.body)?;
    let plans: Vec<CommandResult<DeletePlan>> =
        statements.iter().map(parse_delete_statement).collect();
    let many = plans.len() > 1 || plans.iter().any(|p| p.as_ref().is_ok_and(|p| !p.one));
    if options.retry.is_some() && many {
        let retry = options.retry.clone();
        let reply = write_once(db, retry, move |ctx| {
            let mut errors = WriteErrors::default();
            let mut n = 0i64;
            for (index, plan) in plans.into_iter().enumerate() {
                let result = plan.and_then(|plan| delete_in_writer(ctx, &ns, &plan));
                match errors.record(index, result) {
                    Some(deleted) => n += deleted,
                    None if options.ordered => break,
                    None => {}
                }
            }
            Ok(Some(errors.into_reply(doc! { "n": reply_count(n) })))
        })
        .await?;
        return reply.ok_or_else(|| CommandError::internal("delete produced no reply"));
    }
    let mut errors = WriteErrors::default();
    let mut n = 0i64;
    for (index, plan) in plans.into_iter().enumerate() {
        let result = match plan {
            Ok(plan) => run_delete(db, &ns, &plan, &options, &deadline).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            if fails_the_command(e) {
                return Err(e.clone());
            }
        }
        match errors.record(index, result) {
            Some(deleted) => n += deleted,
            None if options.ordered => break,
            None => {}
        }
    }
    Ok(errors.into_reply(doc! { "n": reply_count(n) }))
}

fn delete_in_writer(
    ctx: &mut WriteCtx<'_>,
    ns: &Namespace,
    plan: &DeletePlan,
) -> CommandResult<i64> {
    let Some(meta) = ctx.collection(ns)? else {
        return Ok(0);
    };
    let limit = plan.one.then_some(1);
    let targets = super::read::matching(ctx, &meta, &plan.filter, &Deadline::none(), limit)?;
    for doc in &targets {
        ctx.delete(ns, &meta, doc)?;
    }
    Ok(i64::try_from(targets.len()).unwrap_or(i64::MAX))
}

/// Implements `findAndModify` (`findOneAndUpdate`, `findOneAndReplace`, `findOneAndDelete`).
pub(super) async fn find_and_modify(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let ns = req.namespace()?;
    let body = &req.body;
    let options = WriteOptions::parse(req)?;
    let deadline = deadline_of(db, body)?;
    let query = opt_document(body, "query")?.cloned().unwrap_or_default();
    let sort = opt_document(body, "sort")?
        .map(SortSpec::parse)
        .transpose()?
        .filter(|s| !s.is_empty());
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
    let filter = Arc::new(Filter::parse(&query)?);
    // The reply is built inside the writer job, so that a retry gets exactly this document.
    let project = {
        let filter = Arc::clone(&filter);
        move |value: Option<Document>| -> CommandResult<Bson> {
            Ok(match (value, &fields) {
                (Some(doc), Some(p)) => Bson::Document(p.apply_with_filter(&doc, Some(&filter))?),
                (Some(doc), None) => Bson::Document(doc),
                (None, _) => Bson::Null,
            })
        }
    };
    match plan {
        None => {
            let reply = move |removed: Option<Document>| {
                let n = i32::from(removed.is_some());
                Ok(doc! { "lastErrorObject": { "n": n }, "value": project(removed)? })
            };
            delete_one_with_retries(db, &ns, &filter, sort.as_ref(), &options, &deadline, reply)
                .await
        }
        Some(plan) => {
            let reply = move |outcome: UpdateOutcome| {
                let mut last_error = doc! {
                    "n": i32::from(outcome.matched > 0 || outcome.upserted.is_some()),
                    "updatedExisting": outcome.matched > 0,
                };
                if let Some(id) = &outcome.upserted {
                    last_error.insert("upserted", id.clone());
                }
                let value = if return_new {
                    outcome.after
                } else {
                    outcome.before
                };
                Ok(doc! { "lastErrorObject": last_error, "value": project(value)? })
            };
            run_update_one(db, &ns, Arc::new(plan), &options, &deadline, reply).await
        }
    }
}

#[cfg(test)]
mod tests {
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
