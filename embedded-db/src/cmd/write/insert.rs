//! Implements the `insert` command.

use std::sync::Arc;

use bson::{doc, Document};

use crate::cmd::args::{documents_arg, Request};
use crate::db::Db;
use crate::error::{CommandError, CommandResult};
use crate::query::update::validate_for_storage;

use super::{check_valid, reply_count, with_id_first, write_once, WriteErrors, WriteOptions};

/// Implements the `insert` command.
pub(in crate::cmd) async fn insert(db: &Arc<Db>, req: &Request<'_>) -> CommandResult<Document> {
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
