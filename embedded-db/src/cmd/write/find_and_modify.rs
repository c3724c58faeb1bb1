//! Implements `findAndModify`: one update or delete statement whose reply carries the
//! document before or after it.

use std::sync::Arc;

use bson::{doc, Bson, Document};

use crate::cmd::args::{opt_bool, opt_document, Request};
use crate::cmd::generic_args::deadline_of;
use crate::db::Db;
use crate::error::{CommandError, CommandResult};
use crate::query::filter::Filter;
use crate::query::projection::Projection;
use crate::query::sort::SortSpec;

use super::delete::delete_one_with_retries;
use super::update::{run_update_one, StatementOutcome, UpdatePlan};
use super::WriteOptions;

/// Implements `findAndModify` (`findOneAndUpdate`, `findOneAndReplace`, `findOneAndDelete`).
pub(in crate::cmd) async fn find_and_modify(
    db: &Arc<Db>,
    req: &Request<'_>,
) -> CommandResult<Document> {
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
            let reply = move |outcome: StatementOutcome| {
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
