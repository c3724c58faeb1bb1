//! The `delete` command, and the single-document delete loop `findAndModify` shares
//! with it.

use std::sync::Arc;

use bson::{doc, Bson, Document};

use crate::cmd::args::{documents_arg, opt_document, Request};
use crate::cmd::generic_args::deadline_of;
use crate::db::Db;
use crate::error::{CommandError, CommandResult};
use crate::limits::Deadline;
use crate::namespace::Namespace;
use crate::query::filter::Filter;
use crate::query::sort::SortSpec;
use crate::scan::{self, search, Found};
use crate::storage::{Snapshot, WriteCtx};

use super::{
    check_statement_fields, fails_the_command, reply_count, single_target, write_once, WriteErrors,
    WriteOptions, CHUNK, OPTIMISTIC_TRIES,
};

/// Fields a delete statement may carry (mongod 7.0).
const DELETE_STATEMENT_FIELDS: &[&str] = &["q", "limit", "hint", "collation"];

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
    let one = match crate::cmd::args::opt_i64(statement, "limit")? {
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
pub(super) async fn delete_one_with_retries<R>(
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
pub(in crate::cmd) async fn delete(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
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
    let targets = scan::matching(ctx, &meta, &plan.filter, &Deadline::none(), limit)?;
    for doc in &targets {
        ctx.delete(ns, &meta, doc)?;
    }
    Ok(i64::try_from(targets.len()).unwrap_or(i64::MAX))
}
