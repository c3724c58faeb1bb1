//! `explain` (and `aggregate` with `explain: true`): how a `find`, `aggregate`, `count`,
//! `distinct`, `update`, `delete` or `findAndModify` runs, in the shape mongosh and the drivers
//! read: `queryPlanner.winningPlan` and, at `executionStats` or `allPlansExecution`,
//! `executionStats`.
//!
//! There are no plans to choose between: a read scans the collection in `_id` order
//! (`COLLSCAN`), except an equality on `_id`, which reads one document by key (`IDHACK`); a
//! sort, skip, limit or projection wraps it as mongod's stages do. The statistics come from
//! running the statement's filter as a `count` — a write is never applied.

use std::sync::Arc;
use std::time::Instant;

use bson::{doc, Bson, Document};

use super::args::{command_name, Request};
use super::read;
use crate::db::Db;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::namespace::Namespace;

/// The verbosities mongod accepts; `allPlansExecution` is its default.
const VERBOSITIES: [&str; 3] = ["queryPlanner", "executionStats", "allPlansExecution"];

/// What one explained statement reads, and how.
struct Statement {
    ns: Namespace,
    filter: Document,
    sort: Option<Document>,
    skip: u64,
    limit: Option<u64>,
    projection: Option<Document>,
    /// The stage a write or a count puts on top (`UPDATE`, `DELETE`, `COUNT`), if any.
    top: Option<&'static str>,
    /// Whether a write statement touches more than one document.
    multi: bool,
}

/// `explain: { <command> }, verbosity`.
pub(super) async fn explain(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let Some(Bson::Document(inner)) = req.body.get("explain") else {
        return Err(CommandError::type_mismatch(
            "explain command requires a nested object",
        ));
    };
    let verbosity = match req.body.get("verbosity") {
        None => VERBOSITIES[2],
        Some(Bson::String(v)) if VERBOSITIES.contains(&v.as_str()) => v.as_str(),
        Some(_) => {
            return Err(CommandError::bad_value(
                "verbosity string must be one of {'queryPlanner', 'executionStats', 'allPlansExecution'}",
            ))
        }
    };
    let inner = Request {
        body: inner.clone(),
        database: req.database.clone(),
        conn: req.conn,
    };
    describe(db, &inner, verbosity).await
}

/// `aggregate` with `explain: true`: its plan, as `explain` at `queryPlanner` gives it.
pub(super) async fn aggregate(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
    let mut body = req.body.clone();
    body.remove("explain");
    let inner = Request {
        body,
        database: req.database.clone(),
        conn: req.conn,
    };
    describe(db, &inner, VERBOSITIES[0]).await
}

/// The explain reply for the command in `req`.
async fn describe(db: &Arc<Db>, req: &Request<'_>, verbosity: &str) -> CommandResult<Document> {
    let name = command_name(&req.body);
    let statement = statement(req, &name)?;
    let plan = winning_plan(&statement);
    let mut reply = doc! {
        "explainVersion": "1",
        "queryPlanner": {
            "namespace": statement.ns.to_string(),
            "indexFilterSet": false,
            "parsedQuery": statement.filter.clone(),
            "maxIndexedOrSolutionsReached": false,
            "maxIndexedAndSolutionsReached": false,
            "maxScansToExplodeReached": false,
            "winningPlan": plan.clone(),
            "rejectedPlans": [],
        },
    };
    if verbosity != VERBOSITIES[0] {
        let stats = execution_stats(db, req, &statement, plan).await?;
        reply.insert("executionStats", stats);
    }
    let mut command = req.body.clone();
    command.insert("$db", req.database.clone());
    reply.insert("command", command);
    reply.insert(
        "serverInfo",
        doc! { "host": "embedded-db", "version": super::admin::VERSION, "gitVersion": "embedded-db" },
    );
    Ok(reply)
}

/// What the command `name` in `req` would read.
fn statement(req: &Request<'_>, name: &str) -> CommandResult<Statement> {
    let body = &req.body;
    let document = |key: &str| -> CommandResult<Option<Document>> {
        Ok(super::args::opt_document(body, key)?.cloned())
    };
    let count = |key: &str| -> CommandResult<u64> {
        Ok(super::args::opt_i64(body, key)?.map_or(0, i64::unsigned_abs))
    };
    let mut statement = Statement {
        ns: req.namespace()?,
        filter: Document::new(),
        sort: None,
        skip: 0,
        limit: None,
        projection: None,
        top: None,
        multi: false,
    };
    match crate::command_names::canonical(name) {
        "find" => {
            statement.filter = document("filter")?.unwrap_or_default();
            statement.sort = document("sort")?.filter(|s| !s.is_empty());
            statement.skip = count("skip")?;
            statement.limit = Some(count("limit")?).filter(|l| *l != 0);
            statement.projection = document("projection")?.filter(|p| !p.is_empty());
        }
        "count" => {
            statement.filter = document("query")?.unwrap_or_default();
            statement.skip = count("skip")?;
            statement.limit = Some(count("limit")?).filter(|l| *l != 0);
            statement.top = Some("COUNT");
        }
        "distinct" => statement.filter = document("query")?.unwrap_or_default(),
        "aggregate" => {
            // A leading `$match` is the part a scan filters by.
            if let Some(Bson::Array(stages)) = body.get("pipeline") {
                if let Some(Bson::Document(first)) = stages.first() {
                    if let Ok(filter) = first.get_document("$match") {
                        statement.filter = filter.clone();
                    }
                }
            }
        }
        "update" | "delete" => {
            let key = if name == "update" {
                "updates"
            } else {
                "deletes"
            };
            let first = match body.get(key) {
                Some(Bson::Array(items)) => items.first().and_then(Bson::as_document),
                _ => None,
            };
            let Some(first) = first else {
                return Err(CommandError::failed_to_parse(format!(
                    "explain of {name} needs at least one statement in '{key}'"
                )));
            };
            statement.filter = first.get_document("q").cloned().unwrap_or_default();
            statement.multi = if name == "update" {
                first.get_bool("multi").unwrap_or(false)
            } else {
                first.get_i32("limit") == Ok(0) || first.get_i64("limit") == Ok(0)
            };
            statement.top = Some(if name == "update" { "UPDATE" } else { "DELETE" });
        }
        "findAndModify" => {
            statement.filter = document("query")?.unwrap_or_default();
            statement.sort = document("sort")?.filter(|s| !s.is_empty());
            let removes = body.get_bool("remove").unwrap_or(false);
            statement.top = Some(if removes { "DELETE" } else { "UPDATE" });
        }
        _ => {
            return Err(CommandError::new(
                ErrorCode::CommandNotFound,
                format!("Explain failed due to unknown command: {name}"),
            ))
        }
    }
    Ok(statement)
}

/// Whether `filter` selects one document by an equality on `_id`.
fn is_id_equality(filter: &Document) -> bool {
    filter.len() == 1
        && match filter.get("_id") {
            Some(Bson::Document(d)) => d.keys().all(|k| !k.starts_with('$')),
            Some(Bson::RegularExpression(_)) | None => false,
            Some(_) => true,
        }
}

/// The stages, innermost first wrapped outwards, as mongod names them.
fn winning_plan(s: &Statement) -> Document {
    let mut plan = if is_id_equality(&s.filter) {
        doc! { "stage": "IDHACK" }
    } else {
        doc! { "stage": "COLLSCAN", "filter": s.filter.clone(), "direction": "forward" }
    };
    let wrap = |stage: &str, fields: Document, input: Document| {
        let mut outer = doc! { "stage": stage };
        outer.extend(fields);
        outer.insert("inputStage", input);
        outer
    };
    if let Some(sort) = &s.sort {
        plan = wrap(
            "SORT",
            doc! { "sortPattern": sort.clone(), "memLimit": 104_857_600_i64, "type": "simple" },
            plan,
        );
    }
    if s.skip > 0 {
        plan = wrap(
            "SKIP",
            doc! { "skipAmount": i64::try_from(s.skip).unwrap_or(i64::MAX) },
            plan,
        );
    }
    if let Some(limit) = s.limit {
        plan = wrap(
            "LIMIT",
            doc! { "limitAmount": i64::try_from(limit).unwrap_or(i64::MAX) },
            plan,
        );
    }
    if let Some(projection) = &s.projection {
        plan = wrap(
            "PROJECTION_DEFAULT",
            doc! { "transformBy": projection.clone() },
            plan,
        );
    }
    if let Some(top) = s.top {
        plan = wrap(top, Document::new(), plan);
    }
    plan
}

/// `executionStats`: what the statement's read returns and examines, counted by running its
/// filter (never the write).
async fn execution_stats(
    db: &Arc<Db>,
    req: &Request<'_>,
    s: &Statement,
    plan: Document,
) -> CommandResult<Document> {
    let started = Instant::now();
    let counted = |query: Document, skip: u64, limit: Option<u64>| {
        let mut body = doc! { "count": s.ns.coll.clone(), "query": query };
        if skip > 0 {
            body.insert("skip", i64::try_from(skip).unwrap_or(i64::MAX));
        }
        if let Some(limit) = limit {
            body.insert("limit", i64::try_from(limit).unwrap_or(i64::MAX));
        }
        Request {
            body,
            database: req.database.clone(),
            conn: req.conn,
        }
    };
    let single = matches!(s.top, Some("UPDATE" | "DELETE")) && !s.multi;
    let limit = if single { Some(1) } else { s.limit };
    let returned = read::count(db, &counted(s.filter.clone(), s.skip, limit)).await?;
    let returned = returned.get_i64("n").unwrap_or(0);
    let id_lookup = is_id_equality(&s.filter);
    let examined = if id_lookup {
        returned
    } else {
        let all = read::count(db, &counted(Document::new(), 0, None)).await?;
        all.get_i64("n").unwrap_or(0)
    };
    let millis = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let mut stages = plan;
    stages.insert("nReturned", returned);
    stages.insert("executionTimeMillisEstimate", millis);
    stages.insert("docsExamined", examined);
    match s.top {
        Some("UPDATE") => {
            stages.insert("nMatched", returned);
            stages.insert("nWouldModify", returned);
        }
        Some("DELETE") => {
            stages.insert("nWouldDelete", returned);
        }
        _ => {}
    }
    Ok(doc! {
        "executionSuccess": true,
        "nReturned": returned,
        "executionTimeMillis": millis,
        "totalKeysExamined": if id_lookup { returned } else { 0 },
        "totalDocsExamined": examined,
        "executionStages": stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_equality_reads_one_document_by_key() {
        assert!(is_id_equality(&doc! { "_id": 5 }));
        assert!(is_id_equality(&doc! { "_id": { "a": 1 } }));
        assert!(!is_id_equality(&doc! { "_id": { "$gt": 5 } }));
        assert!(!is_id_equality(&doc! { "_id": 5, "x": 1 }));
        assert!(!is_id_equality(&doc! {}));
    }
}
