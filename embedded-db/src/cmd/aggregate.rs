//! The `aggregate` command: plain pipelines over a collection, and change
//! streams (a pipeline whose first stage is `$changeStream`).

use std::sync::Arc;

use bson::{Bson, Document};

use super::args::{opt_bool, opt_count, opt_document, Request};
use super::generic_args::{deadline_of, SnapshotRead};
use super::reply::{cursor_reply, first_batch, with_cluster_time};
use crate::changes::{ChangeStream, Scope};
use crate::cursor::{Cursor, CursorKind};
use crate::db::Db;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::MemoryBudget;
use crate::namespace::{validate_db, Namespace};
use crate::query::aggregate::Pipeline;
use crate::query::filter::Filter;
use crate::scan::for_each_match;
use crate::storage::Snapshot;

mod output;

/// Implements `aggregate`.
pub(super) async fn aggregate(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let mut stages: Vec<Bson> = match req.body.get("pipeline") {
        Some(Bson::Array(stages)) => stages.clone(),
        _ => {
            return Err(CommandError::type_mismatch(
                "'pipeline' option must be specified as an array",
            ))
        }
    };
    if matches!(req.body.get("explain"), Some(Bson::Boolean(true))) {
        return super::explain::aggregate(db, req).await;
    }
    if !matches!(
        req.body.get("explain"),
        None | Some(Bson::Null | Bson::Boolean(false))
    ) {
        return Err(CommandError::type_mismatch(
            "BSON field 'explain' is the wrong type, expected type 'bool'",
        ));
    }
    let batch_size =
        match opt_document(&req.body, "cursor")? {
            Some(cursor) => opt_count(cursor, "batchSize")?,
            None => return Err(CommandError::failed_to_parse(
                "The 'cursor' option is required, except for aggregate with the explain argument",
            )),
        };
    if stages
        .iter()
        .skip(1)
        .any(|s| stage_name(s) == "$changeStream")
    {
        return Err(CommandError::new(
            ErrorCode::ChangeStreamNotFirst,
            "$changeStream is only valid as the first stage in a pipeline",
        ));
    }
    if let Some(first) = stages.first().filter(|s| stage_name(s) == "$changeStream") {
        let options = first
            .as_document()
            .and_then(|d| d.get_document("$changeStream").ok())
            .cloned()
            .ok_or_else(|| CommandError::type_mismatch("$changeStream takes an object"))?;
        let reply = change_stream(db, req, options, stages[1..].to_vec(), batch_size).await?;
        db.stage_counters.count(&stages);
        return Ok(reply);
    }
    // Counted as parsed, as mongod counts them (a pipeline that fails later still counts).
    db.stage_counters.count(&stages);
    let write_stage = output::WriteStage::take(&mut stages, &req.database)?;
    let bypass_validation = opt_bool(&req.body, "bypassDocumentValidation")?.unwrap_or(false);
    let (ns_text, docs, at) = run_pipeline(db, req, stages).await?;
    let reply = match write_stage {
        Some(stage) => {
            stage.write(db, docs, bypass_validation).await?;
            first_batch(db, &ns_text, Vec::new(), batch_size, false)?
        }
        None => first_batch(db, &ns_text, docs, batch_size, false)?,
    };
    Ok(with_cluster_time(reply, at))
}

/// The name of a pipeline stage (its first key; empty when it is not a document).
fn stage_name(stage: &Bson) -> &str {
    stage
        .as_document()
        .and_then(|d| d.keys().next())
        .map_or("", String::as_str)
}

/// Runs a read pipeline (over a collection, or from `$documents`): the cursor namespace, the
/// results, and the cluster time of a snapshot read.
async fn run_pipeline(
    db: &Arc<Db>,
    req: &Request<'_>,
    stages: Vec<Bson>,
) -> CommandResult<(String, Vec<Document>, Option<bson::Timestamp>)> {
    let deadline = deadline_of(db, &req.body)?;
    let snapshot = SnapshotRead::of(&req.body);
    let first = stages.first().filter(|s| stage_name(s) == "$documents");
    if let Some(first) = first.and_then(Bson::as_document) {
        let input = documents_stage(req, first)?;
        let rest = stages[1..].to_vec();
        let db_name = req.database.clone();
        let (docs, at) = db
            .store
            .read(move |read| {
                let at = snapshot.map(|s| s.pin(read)).transpose()?;
                let mut pipeline = Pipeline::parse(&rest)?;
                pipeline.resolve(&mut |coll| whole_collection(read, &db_name, coll, &deadline))?;
                Ok((pipeline.run(input, &deadline)?, at))
            })
            .await?;
        return Ok((format!("{}.$cmd.aggregate", req.database), docs, at));
    }
    let ns = req.namespace().map_err(|_| {
        CommandError::new(
            ErrorCode::NotImplemented,
            "database-level aggregation is only supported for $changeStream",
        )
    })?;
    let ns_text = ns.to_string();
    let (docs, at) = db
        .store
        .read(move |read| {
            let at = snapshot.map(|s| s.pin(read)).transpose()?;
            // A leading $match is applied while scanning (and uses the _id lookup when it can).
            let (input, rest) = match stages.first().and_then(|s| s.as_document()) {
                Some(stage) if stage.keys().next().map(String::as_str) == Some("$match") => {
                    let filter = Filter::parse(stage.get_document("$match").map_err(|_| {
                        CommandError::type_mismatch(
                            "the match filter must be an expression in an object",
                        )
                    })?)?;
                    (Some(filter), &stages[1..])
                }
                _ => (None, &stages[..]),
            };
            let mut pipeline = Pipeline::parse(rest)?;
            pipeline.resolve(&mut |coll| whole_collection(read, &ns.db, coll, &deadline))?;
            let Some(meta) = read.collection(&ns)? else {
                return Ok((pipeline.run(Vec::new(), &deadline)?, at));
            };
            let filter = input.unwrap_or_default();
            let docs = pipeline.run_streamed(
                |deliver| {
                    for_each_match(read, &meta, &filter, &deadline, &[], |_, _, doc| {
                        deliver(doc)
                    })
                },
                &deadline,
            )?;
            Ok((docs, at))
        })
        .await?;
    Ok((ns_text, docs, at))
}

/// The documents of a database-level `aggregate` (`aggregate: 1`) whose first stage is
/// `$documents`: an expression (usually a literal array) that evaluates to an array of
/// documents. On a collection it is refused, as mongod refuses it.
fn documents_stage(req: &Request<'_>, stage: &Document) -> CommandResult<Vec<Document>> {
    if !matches!(
        req.body.iter().next(),
        Some((_, Bson::Int32(1) | Bson::Int64(1)))
    ) {
        return Err(CommandError::new(
            ErrorCode::InvalidNamespace,
            "$documents can only be run with {aggregate: 1}",
        ));
    }
    let spec = stage.get("$documents").cloned().unwrap_or(Bson::Null);
    let value = crate::query::expr::Expr::parse(&spec)?.eval(&Document::new())?;
    let Some(Bson::Array(items)) = value else {
        return Err(CommandError::type_mismatch(
            "$documents must evaluate to an array of objects",
        ));
    };
    items
        .into_iter()
        .map(|item| match item {
            Bson::Document(d) => Ok(d),
            _ => Err(CommandError::type_mismatch(
                "$documents must evaluate to an array of objects",
            )),
        })
        .collect()
}

/// Every document of collection `coll` of database `db`, in `_id` order (none when it does
/// not exist), held to the stage memory limit: what `$lookup` and `$unionWith` read, in the
/// snapshot of the pipeline's own reads.
fn whole_collection(
    read: &crate::storage::ReadCtx,
    db: &str,
    coll: &str,
    deadline: &crate::limits::Deadline,
) -> CommandResult<Vec<Document>> {
    let ns = Namespace::new(db, coll)?;
    let Some(meta) = read.collection(&ns)? else {
        return Ok(Vec::new());
    };
    let mut docs = Vec::new();
    let mut budget = MemoryBudget::new("$lookup");
    for_each_match(
        read,
        &meta,
        &Filter::default(),
        deadline,
        &[],
        |_, _, doc| {
            budget.add(&doc)?;
            docs.push(doc);
            Ok(true)
        },
    )?;
    Ok(docs)
}

/// Opens a change stream: answers at once with the events already available (usually none)
/// and a cursor that `getMore` reads, waiting for commits.
async fn change_stream(
    db: &Arc<Db>,
    req: &Request<'_>,
    options: Document,
    rest: Vec<Bson>,
    batch_size: Option<usize>,
) -> CommandResult<Document> {
    let whole_cluster = options.get_bool("allChangesForCluster").unwrap_or(false);
    let (scope, ns) = match req.value() {
        Bson::String(_) => {
            let ns: Namespace = req.namespace()?;
            let text = ns.to_string();
            (Scope::Collection(ns), text)
        }
        _ if whole_cluster => {
            if req.database != "admin" {
                return Err(CommandError::bad_value(
                    "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' database",
                ));
            }
            (Scope::Cluster, "admin.$cmd.aggregate".to_owned())
        }
        Bson::Int32(1) | Bson::Int64(1) | Bson::Double(_) => {
            validate_db(&req.database)?;
            if req.database == "admin" {
                return Err(CommandError::bad_value(
                    "$changeStream on the admin database requires 'allChangesForCluster:true'",
                ));
            }
            (
                Scope::Database(req.database.clone()),
                format!("{}.$cmd.aggregate", req.database),
            )
        }
        _ => {
            return Err(CommandError::failed_to_parse(
                "aggregate takes a collection name or 1",
            ))
        }
    };
    let limit = batch_size.unwrap_or(super::reply::DEFAULT_BATCH);
    let (stream, batch) = db
        .store
        .read(move |read| {
            let mut stream = ChangeStream::open(scope, &options, &rest, read)?;
            let batch = stream.next_batch(read, limit)?;
            Ok((stream, batch))
        })
        .await?;
    let id = if batch.finished {
        0
    } else {
        db.cursors.insert(Cursor::new(
            ns.clone(),
            CursorKind::ChangeStream(Box::new(stream)),
        ))?
    };
    let events = batch.events.into_iter().map(Bson::Document).collect();
    Ok(cursor_reply(
        &ns,
        id,
        "firstBatch",
        events,
        Some(batch.post_batch_token),
    ))
}
