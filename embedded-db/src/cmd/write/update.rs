//! The `update` command, and the update statement `findAndModify` shares with it:
//! parsing a statement, then running it on one document or on many.

use std::sync::Arc;

use bson::{doc, Bson, Document};

use crate::cmd::args::{documents_arg, opt_bool, opt_document, Request};
use crate::cmd::generic_args::deadline_of;
use crate::cmd::validator::Validator;
use crate::db::Db;
use crate::error::{CommandError, CommandResult};
use crate::limits::Deadline;
use crate::namespace::Namespace;
use crate::query::filter::{equality_fields, Filter};
use crate::query::sort::SortSpec;
use crate::query::update::{validate_for_storage, UpdateContext, UpdateSpec};
use crate::scan::{self, search, Found};
use crate::storage::{ChangeRecord, CollectionMeta, Snapshot, WriteCtx};

use super::{
    check_statement_fields, check_valid, fails_the_command, reply_count, single_target,
    with_id_first, write_once, WriteErrors, WriteOptions, CHUNK, OPTIMISTIC_TRIES,
};

/// Applies `spec` to `old`, a document of `meta`'s collection, as an update statement would
/// (storage rules, the validator, unique indexes), recording the change when there is one.
pub(in crate::cmd) fn update_document(
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

/// One parsed update statement (of `update` or `findAndModify`).
pub(super) struct UpdatePlan {
    filter: Arc<Filter>,
    query: Document,
    spec: UpdateSpec,
    array_filters: Vec<Document>,
    upsert: bool,
    multi: bool,
    sort: Option<SortSpec>,
}

impl UpdatePlan {
    pub(super) fn parse(
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
pub(super) struct StatementOutcome {
    pub(super) matched: i64,
    pub(super) modified: i64,
    pub(super) upserted: Option<Bson>,
    /// The first matched document before and after the update (for `findAndModify`).
    pub(super) before: Option<Document>,
    pub(super) after: Option<Document>,
}

/// Runs a single-document update statement in the writer; `None` when `found` is stale.
fn update_one(
    ctx: &mut WriteCtx<'_>,
    ns: &Namespace,
    plan: &UpdatePlan,
    options: &WriteOptions,
    found: Option<&Found>,
) -> CommandResult<Option<StatementOutcome>> {
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
    let mut outcome = StatementOutcome::default();
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
pub(super) async fn run_update_one<R>(
    db: &Db,
    ns: &Namespace,
    plan: Arc<UpdatePlan>,
    options: &WriteOptions,
    deadline: &Deadline,
    reply: R,
) -> CommandResult<Document>
where
    R: Fn(StatementOutcome) -> CommandResult<Document> + Clone + Send + 'static,
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
) -> CommandResult<StatementOutcome> {
    let found = search(db, ns, &plan.filter, None, None, deadline).await?;
    if found.docs.is_empty() && plan.upsert {
        let reply = |outcome: StatementOutcome| Ok(outcome_document(&outcome));
        let done = run_update_one(db, ns, plan, options, deadline, reply).await?;
        return Ok(outcome_from_document(&done));
    }
    let mut total = StatementOutcome::default();
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
    fn add(&mut self, index: usize, result: CommandResult<StatementOutcome>) -> bool {
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
fn outcome_document(outcome: &StatementOutcome) -> Document {
    let mut d = doc! { "n": outcome.matched, "nModified": outcome.modified };
    if let Some(id) = &outcome.upserted {
        d.insert("upsertedId", id.clone());
    }
    d
}

fn outcome_from_document(d: &Document) -> StatementOutcome {
    StatementOutcome {
        matched: d.get_i64("n").unwrap_or(0),
        modified: d.get_i64("nModified").unwrap_or(0),
        upserted: d.get("upsertedId").cloned(),
        ..StatementOutcome::default()
    }
}

/// Fields an update statement may carry (mongod 7.0); anything else is refused, as mongod
/// refuses it, rather than ignored (`sort` arrived only in 8.0).
pub(super) const UPDATE_STATEMENT_FIELDS: &[&str] = &[
    "q",
    "u",
    "upsert",
    "multi",
    "arrayFilters",
    "hint",
    "collation",
    "upsertSupplied",
];

/// Implements the `update` command.
pub(in crate::cmd) async fn update(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
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
                let reply = |outcome: StatementOutcome| Ok(outcome_document(&outcome));
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
) -> CommandResult<StatementOutcome> {
    let Some(meta) = ctx.collection(ns)? else {
        return update_one(ctx, ns, plan, options, None).map(Option::unwrap_or_default);
    };
    let targets = scan::matching(ctx, &meta, &plan.filter, &Deadline::none(), None)?;
    if targets.is_empty() {
        return update_one(ctx, ns, plan, options, None).map(Option::unwrap_or_default);
    }
    let validator = options.validator(&meta)?;
    let mut outcome = StatementOutcome::default();
    for old in &targets {
        let (_, changed) = plan.apply(ctx, ns, &meta, validator.as_ref(), old)?;
        outcome.matched += 1;
        outcome.modified += i64::from(changed);
    }
    Ok(outcome)
}

pub(super) fn parse_update_statement(statement: &Document) -> CommandResult<UpdatePlan> {
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
