//! The write stages that end a pipeline: `$out` replaces a collection with the results,
//! `$merge` merges them into one, as mongod 7.0 does.
//!
//! `$out` is all or nothing: the results go into a temporary collection (`tmp.agg_out.<uuid>`,
//! with the target's options and indexes), which then replaces the target in one `rename`
//! with `dropTarget`, or is dropped when a result is refused: change streams see what
//! mongod's oplog shows. `$merge` writes one document at a time, each an insert, update or
//! replacement of its own; a failing document fails the command and leaves the ones before
//! it written, as in mongod.

use std::sync::Arc;

use bson::{doc, Bson, Document};

use super::super::catalog::record_index_created;
use super::super::validator::Validator;
use super::super::write::{insert_document, update_document, with_id_first};
use crate::db::Db;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::namespace::Namespace;
use crate::query::aggregate::Pipeline;
use crate::query::compare::type_name;
use crate::query::update::UpdateSpec;
use crate::query::{path, variables};
use crate::storage::{CollectionMeta, IndexMeta, Snapshot, WriteCtx};

/// The write stage a pipeline ends with.
#[derive(Debug)]
pub(super) enum WriteStage {
    /// `$out`: the target collection.
    Out(Namespace),
    /// `$merge`.
    Merge(Merge),
}

/// A parsed `$merge`.
#[derive(Debug)]
pub(super) struct Merge {
    into: Namespace,
    /// The fields that identify a result's match in `into` (`_id` by default).
    on: Vec<String>,
    when_matched: WhenMatched,
    when_not_matched: WhenNotMatched,
}

#[derive(Debug)]
enum WhenMatched {
    /// The result replaces the match.
    Replace,
    /// The match stays as it is.
    KeepExisting,
    /// The result's top-level fields are set on the match (the default).
    Merge,
    /// A match is a duplicate-key error.
    Fail,
    /// An update pipeline over the match, with `let` variables (`$$new`: the result).
    Pipeline { stages: Vec<Bson>, vars: Document },
}

#[derive(Debug)]
enum WhenNotMatched {
    Insert,
    Discard,
    Fail,
}

impl WriteStage {
    /// Takes the write stage off the end of `stages`, if there is one (`db` is the command's
    /// database). One anywhere else is left for the pipeline to refuse (40601).
    pub(super) fn take(stages: &mut Vec<Bson>, db: &str) -> CommandResult<Option<WriteStage>> {
        let Some((name, arg)) = stages
            .last()
            .and_then(Bson::as_document)
            .filter(|d| d.len() == 1)
            .and_then(|d| d.iter().next())
        else {
            return Ok(None);
        };
        let stage = match name.as_str() {
            "$out" => WriteStage::Out(parse_out(arg, db)?),
            "$merge" => WriteStage::Merge(Merge::parse(arg, db)?),
            _ => return Ok(None),
        };
        stages.pop();
        Ok(Some(stage))
    }

    /// Writes `docs`, the pipeline's results. `bypass_validation`: the target's validator is
    /// not applied (`bypassDocumentValidation`).
    pub(super) async fn write(
        self,
        db: &Arc<Db>,
        docs: Vec<Document>,
        bypass_validation: bool,
    ) -> CommandResult<()> {
        match self {
            WriteStage::Out(target) => {
                db.store
                    .write(move |ctx| replace_collection(ctx, &target, docs, bypass_validation))
                    .await
            }
            WriteStage::Merge(merge) => {
                db.store
                    .write(move |ctx| merge.run(ctx, docs, bypass_validation))
                    .await
            }
        }
    }
}

/// A target collection: a valid name outside `system.` (`special` is the stage's code for that).
fn target(db: &str, coll: &str, special: ErrorCode, stage: &str) -> CommandResult<Namespace> {
    let ns = Namespace::new(db, coll)?;
    if coll.starts_with("system.") {
        return Err(CommandError::new(
            special,
            format!("Can't {stage} to special collection: {coll}"),
        ));
    }
    Ok(ns)
}

/// `{db, coll}` of a stage's target document (`{ db, coll }`, both strings; `db` optional).
fn target_document(
    spec: &Document,
    stage: &str,
    default_db: &str,
) -> CommandResult<(String, String)> {
    for key in spec.keys() {
        if !matches!(key.as_str(), "db" | "coll") {
            return Err(CommandError::new(
                ErrorCode::UnknownField,
                format!("BSON field '{stage}.{key}' is an unknown field."),
            ));
        }
    }
    let text = |key: &str| match spec.get(key) {
        None => Ok(None),
        Some(Bson::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "BSON field '{stage}.{key}' is the wrong type '{}', expected type 'string'",
            type_name(other)
        ))),
    };
    let coll = text("coll")?.ok_or_else(|| {
        CommandError::new(
            ErrorCode::MissingField,
            format!("BSON field '{stage}.coll' is missing but a required field"),
        )
    })?;
    Ok((text("db")?.unwrap_or_else(|| default_db.to_owned()), coll))
}

fn parse_out(arg: &Bson, db: &str) -> CommandResult<Namespace> {
    let (db, coll) = match arg {
        Bson::String(coll) => (db.to_owned(), coll.clone()),
        Bson::Document(spec) if spec.contains_key("timeseries") => {
            return Err(CommandError::new(
                ErrorCode::NotImplemented,
                "$out to a time-series collection is not supported by embedded-db",
            ))
        }
        Bson::Document(spec) => target_document(spec, "$out", db)?,
        other => {
            return Err(CommandError::new(
                ErrorCode::OutBadArgument,
                format!(
                    "$out only supports a string or object argument, but found {}",
                    type_name(other)
                ),
            ))
        }
    };
    target(&db, &coll, ErrorCode::OutSpecialCollection, "$out")
}

/// `$out`: the target holds `docs` and nothing else, keeping its options and indexes; on any
/// error (a duplicate key, an invalid document) it is left as it was.
fn replace_collection(
    ctx: &mut WriteCtx<'_>,
    target: &Namespace,
    docs: Vec<Document>,
    bypass_validation: bool,
) -> CommandResult<()> {
    let existing = ctx.collection(target)?;
    let temp = Namespace::new(&target.db, &format!("tmp.agg_out.{}", bson::Uuid::new()))?;
    let options = existing
        .as_ref()
        .map(|m| m.options.clone())
        .unwrap_or_default();
    // Refused before anything is written; the copied indexes are announced as mongod does.
    let validator = Validator::for_write(&options, bypass_validation)?;
    let mut meta = ctx.create_collection(&temp, options)?;
    for index in existing.iter().flat_map(|m| &m.indexes) {
        let copy = IndexMeta {
            id: ctx.new_index_id(),
            ..index.clone()
        };
        record_index_created(ctx, &temp, &meta, &copy)?;
        meta.indexes.push(copy);
    }
    ctx.save_collection(&temp, &meta)?;
    let filled = docs
        .into_iter()
        .try_for_each(|doc| insert_document(ctx, &temp, &meta, validator.as_ref(), doc));
    if let Err(refused) = filled {
        ctx.drop_collection(&temp)?;
        return Err(refused);
    }
    ctx.rename_collection(&temp, target, &meta, true)
}

impl Merge {
    fn parse(arg: &Bson, db: &str) -> CommandResult<Merge> {
        let spec = match arg {
            Bson::String(coll) => doc! { "into": coll.clone() },
            Bson::Document(spec) => spec.clone(),
            other => {
                return Err(CommandError::new(
                    ErrorCode::TypeMismatch,
                    format!(
                        "$merge requires a string or object argument, but found {}",
                        type_name(other)
                    ),
                ))
            }
        };
        for key in spec.keys() {
            if !matches!(
                key.as_str(),
                "into" | "on" | "let" | "whenMatched" | "whenNotMatched"
            ) {
                return Err(CommandError::new(
                    ErrorCode::UnknownField,
                    format!("BSON field '$merge.{key}' is an unknown field."),
                ));
            }
        }
        let (into_db, into_coll) = match spec.get("into") {
            Some(Bson::String(coll)) => (db.to_owned(), coll.clone()),
            Some(Bson::Document(into)) => target_document(into, "$merge.into", db)?,
            None => {
                return Err(CommandError::new(
                    ErrorCode::MissingField,
                    "BSON field '$merge.into' is missing but a required field",
                ))
            }
            Some(other) => {
                return Err(CommandError::new(
                    ErrorCode::MergeBadInto,
                    format!(
                        "$merge 'into' field must be either a string or an object, but found {}",
                        type_name(other)
                    ),
                ))
            }
        };
        let into = target(
            &into_db,
            &into_coll,
            ErrorCode::MergeSpecialCollection,
            "$merge",
        )?;
        let on = parse_on(spec.get("on"))?;
        let vars = match spec.get("let") {
            None | Some(Bson::Null) => None,
            Some(Bson::Document(vars)) => Some(vars.clone()),
            Some(other) => {
                return Err(CommandError::type_mismatch(format!(
                    "BSON field '$merge.let' is the wrong type '{}', expected type 'object'",
                    type_name(other)
                )))
            }
        };
        let when_matched = match spec.get("whenMatched") {
            None => WhenMatched::Merge,
            Some(Bson::String(mode)) => match mode.as_str() {
                "replace" => WhenMatched::Replace,
                "keepExisting" => WhenMatched::KeepExisting,
                "merge" => WhenMatched::Merge,
                "fail" => WhenMatched::Fail,
                other => {
                    return Err(CommandError::bad_value(format!(
                        "Enumeration value '{other}' for field '$merge.whenMatched' is not a valid value."
                    )))
                }
            },
            Some(Bson::Array(stages)) => {
                let mut vars = vars.clone().unwrap_or_default();
                vars.entry("new".to_owned())
                    .or_insert_with(|| Bson::String("$$ROOT".to_owned()));
                // Checked now, every variable bound to null: a bad stage fails the command.
                let mut probe = stages.clone();
                let nulls: Document = vars.keys().map(|k| (k.clone(), Bson::Null)).collect();
                variables::in_pipeline(&mut probe, &nulls);
                Pipeline::parse_update(&probe)?;
                WhenMatched::Pipeline {
                    stages: stages.clone(),
                    vars,
                }
            }
            Some(other) => {
                return Err(CommandError::new(
                    ErrorCode::MergeBadWhenMatched,
                    format!(
                        "$merge 'whenMatched' field must be either a string or an array, but found {}",
                        type_name(other)
                    ),
                ))
            }
        };
        if vars.is_some() && !matches!(when_matched, WhenMatched::Pipeline { .. }) {
            return Err(CommandError::new(
                ErrorCode::MergeLetWithoutPipeline,
                "Cannot use 'let' variables with 'whenMatched' mode other than a pipeline",
            ));
        }
        let when_not_matched = match spec.get("whenNotMatched") {
            None => WhenNotMatched::Insert,
            Some(Bson::String(mode)) => match mode.as_str() {
                "insert" => WhenNotMatched::Insert,
                "discard" => WhenNotMatched::Discard,
                "fail" => WhenNotMatched::Fail,
                other => {
                    return Err(CommandError::bad_value(format!(
                        "Enumeration value '{other}' for field '$merge.whenNotMatched' is not a valid value."
                    )))
                }
            },
            Some(other) => {
                return Err(CommandError::type_mismatch(format!(
                    "BSON field '$merge.whenNotMatched' is the wrong type '{}', expected type 'string'",
                    type_name(other)
                )))
            }
        };
        Ok(Merge {
            into,
            on,
            when_matched,
            when_not_matched,
        })
    }

    /// Writes each result in turn; the first failure ends the run (what was written stays: the
    /// writer keeps a job's effects before its error).
    fn run(
        &self,
        ctx: &mut WriteCtx<'_>,
        docs: Vec<Document>,
        bypass_validation: bool,
    ) -> CommandResult<()> {
        let existing = ctx.collection(&self.into)?;
        let index = self.unique_index(existing.as_ref())?.cloned();
        let meta = match existing {
            Some(meta) => meta,
            None => ctx.ensure_collection(&self.into)?,
        };
        let validator = Validator::for_write(&meta.options, bypass_validation)?;
        for doc in docs {
            self.merge_one(ctx, &meta, index.as_ref(), validator.as_ref(), doc)?;
        }
        Ok(())
    }

    /// The unique index whose key fields are the `on` fields (any order), through which each
    /// result finds its match; `None` for `on: "_id"`. Without one: 51183, as mongod (a result
    /// must match at most one document).
    fn unique_index<'m>(
        &self,
        meta: Option<&'m CollectionMeta>,
    ) -> CommandResult<Option<&'m IndexMeta>> {
        if self.on == ["_id"] {
            return Ok(None);
        }
        let mut wanted: Vec<&str> = self.on.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        let index = meta.into_iter().flat_map(|m| &m.indexes).find(|index| {
            let mut fields: Vec<&str> = index.key.keys().map(String::as_str).collect();
            fields.sort_unstable();
            index.unique && fields == wanted
        });
        match index {
            Some(index) => Ok(Some(index)),
            None => Err(CommandError::new(
                ErrorCode::MergeOnNotUnique,
                "Cannot find index to verify that join fields will be unique",
            )),
        }
    }

    /// Writes one result; `index` is the unique index of the `on` fields (`None`: `_id`).
    fn merge_one(
        &self,
        ctx: &mut WriteCtx<'_>,
        meta: &CollectionMeta,
        index: Option<&IndexMeta>,
        validator: Option<&Validator>,
        doc: Document,
    ) -> CommandResult<()> {
        // Matching on `_id`, a result without one gets one first (and so matches nothing);
        // otherwise a match keeps its `_id` and an insert gets a new one.
        let doc = if self.on.iter().any(|f| f == "_id") {
            with_id_first(doc)
        } else {
            doc
        };
        for field in &self.on {
            if matches!(
                path::get(&doc, field),
                None | Some(Bson::Null | Bson::Undefined | Bson::Array(_))
            ) {
                return Err(CommandError::new(
                    ErrorCode::MergeOnFieldInvalid,
                    format!("$merge write error: 'on' field '{field}' cannot be missing, null, undefined or an array"),
                ));
            }
        }
        let matched = match index {
            Some(index) => ctx.find_by_unique_key(meta, index, &doc)?,
            None => ctx.find_by_id(meta, doc.get("_id").unwrap_or(&Bson::Null))?,
        };
        let ns = &self.into;
        let Some(old) = matched else {
            return match self.when_not_matched {
                WhenNotMatched::Insert => insert_document(ctx, ns, meta, validator, doc),
                WhenNotMatched::Discard => Ok(()),
                WhenNotMatched::Fail => Err(CommandError::new(
                    ErrorCode::MergeNoMatchingDocument,
                    "$merge could not find a matching document in the target collection for at least one document in the source collection",
                )),
            };
        };
        let spec = match &self.when_matched {
            WhenMatched::KeepExisting => return Ok(()),
            // Inserting the result again gives mongod's duplicate-key error.
            WhenMatched::Fail => return insert_document(ctx, ns, meta, validator, doc),
            WhenMatched::Replace => UpdateSpec::Replacement(doc),
            WhenMatched::Merge => {
                let stage =
                    doc! { "$replaceWith": { "$mergeObjects": ["$$ROOT", { "$literal": doc }] } };
                UpdateSpec::Pipeline(Pipeline::parse_update(&[Bson::Document(stage)])?)
            }
            WhenMatched::Pipeline { stages, vars } => {
                let values = variables::values(vars, &doc)?;
                let mut stages = stages.clone();
                variables::in_pipeline(&mut stages, &values);
                UpdateSpec::Pipeline(Pipeline::parse_update(&stages)?)
            }
        };
        update_document(ctx, ns, meta, validator, &old, spec)
    }
}

/// `on`: a field name or a non-empty array of distinct names (default `_id`).
fn parse_on(on: Option<&Bson>) -> CommandResult<Vec<String>> {
    let bad = || {
        CommandError::new(
            ErrorCode::MergeBadOn,
            "$merge 'on' field must be either a string or an array of strings",
        )
    };
    let fields = match on {
        None => return Ok(vec!["_id".to_owned()]),
        Some(Bson::String(field)) => vec![field.clone()],
        Some(Bson::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<CommandResult<Vec<_>>>()?,
        Some(_) => return Err(bad()),
    };
    for (i, field) in fields.iter().enumerate() {
        path::check_length(field)?;
        if fields[..i].contains(field) {
            return Err(CommandError::bad_value(format!(
                "Found a duplicate field '{field}' in the $merge 'on' field"
            )));
        }
    }
    Ok(fields)
}
