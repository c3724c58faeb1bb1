//! Update specifications: replacement documents and update operators
//! (`$set`, `$inc`, `$push`, ... with positional `$`, `$[]` and `$[id]`),
//! reporting changes the way a change stream's `updateDescription` does.

use std::cmp::Ordering;

use bson::{doc, Bson, Document};

use super::aggregate::Pipeline;
use super::compare::{compare, identical, identical_documents, type_name, values_equal};
use super::filter::{ElemMatch, Filter};
use super::num::{as_integral, Num};
use super::path::{self, array_index, split_first};
use super::sort::SortSpec;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::Deadline;

mod apply;
mod array;
mod parse;
mod positional;

use apply::{apply_op, id_of, set_value, ArrayChange, Changes};
use array::{retain, with_array};
use parse::parse_operators;
use positional::{expand, ArrayFilters};

/// A parsed update: a replacement document, a list of field updates, or a pipeline.
#[derive(Debug, Clone)]
pub(crate) enum UpdateSpec {
    /// Replace the whole document (keeping `_id`).
    Replacement(Document),
    /// Operator updates, ordered by path as MongoDB applies them.
    Operators(Vec<FieldUpdate>),
    /// A pipeline-style update: stages (`$set`/`$addFields`, `$unset`, `$project`,
    /// `$replaceRoot`/`$replaceWith`) run over the document, whose result replaces it.
    Pipeline(Pipeline),
}

/// One operator applied to one (possibly positional) path.
#[derive(Debug, Clone)]
pub(crate) struct FieldUpdate {
    path: String,
    op: UpdateOp,
}

#[derive(Debug, Clone)]
enum UpdateOp {
    Set(Bson),
    SetOnInsert(Bson),
    Unset,
    Inc(Num),
    Mul(Num),
    Min(Bson),
    Max(Bson),
    Rename(String),
    Push(Box<Push>),
    AddToSet(Vec<Bson>),
    Pull(Box<PullCond>),
    PullAll(Vec<Bson>),
    /// `true` pops the first element, `false` the last.
    Pop(bool),
    /// `true` stores a timestamp, `false` a date.
    CurrentDate(bool),
}

#[derive(Debug, Clone)]
struct Push {
    each: Vec<Bson>,
    slice: Option<i64>,
    position: Option<i64>,
    sort: Option<PushSort>,
}

#[derive(Debug, Clone)]
enum PushSort {
    Value(bool),
    Fields(SortSpec),
}

#[derive(Debug, Clone)]
enum PullCond {
    Value(Bson),
    Match(ElemMatch),
}

/// What an update needs besides the document.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpdateContext<'a> {
    /// The document is being inserted by an upsert: apply `$setOnInsert`.
    pub(crate) is_upsert_insert: bool,
    /// The `arrayFilters` of the update statement.
    pub(crate) array_filters: &'a [Document],
    /// The query that selected the document (for the positional `$`).
    pub(crate) query: Option<&'a Filter>,
    /// The time `$currentDate` stores as a date.
    pub(crate) now: bson::DateTime,
    /// The time `$currentDate` stores as a timestamp.
    pub(crate) now_ts: bson::Timestamp,
}

/// What an update changed, in change-stream `updateDescription` terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct UpdateOutcome {
    /// False when the document is byte-identical afterwards (then nothing is reported).
    pub(crate) modified: bool,
    /// Dotted paths set to new values, with the new values.
    pub(crate) updated_fields: Document,
    /// Dotted paths removed.
    pub(crate) removed_fields: Vec<String>,
    /// `{field, newSize}` for arrays shortened in place (always empty: shortened arrays are reported whole).
    pub(crate) truncated_arrays: Vec<Document>,
}

impl UpdateOutcome {
    /// mongod's `updateDescription.disambiguatedPaths`: each reported path in which a field name
    /// looks like an array index (or holds a dot), mapped to its components, array indexes as
    /// integers and field names as strings. A path whose numeric components are all array
    /// indexes is not ambiguous. Updated paths are
    /// resolved in `after`, removed ones in `before`. `whole_fields`: the reported paths are
    /// top-level field names (pipeline updates), not dotted paths.
    pub(crate) fn disambiguated_paths(
        &self,
        before: &Document,
        after: &Document,
        whole_fields: bool,
    ) -> Document {
        let mut out = Document::new();
        let updated = self.updated_fields.keys().map(|p| (p, after));
        let removed = self.removed_fields.iter().map(|p| (p, before));
        for (reported, doc) in updated.chain(removed) {
            let components = if whole_fields {
                let ambiguous = reported.contains('.') || numeric_component(reported);
                ambiguous.then(|| vec![Bson::String(reported.clone())])
            } else {
                dotted_components(reported, doc)
            };
            if let Some(components) = components {
                out.insert(reported.clone(), components);
            }
        }
        out
    }
}

/// Whether a path component reads as an array index (digits, no leading zero).
fn numeric_component(part: &str) -> bool {
    array_index(part).is_some() && (part.len() == 1 || !part.starts_with('0'))
}

/// The components of dotted `path` as found in `doc` (indexes of arrays as Int32), or `None`
/// when no field name among them is numeric (then the path is not ambiguous).
fn dotted_components(path: &str, doc: &Document) -> Option<Vec<Bson>> {
    if !path.split('.').any(numeric_component) {
        return None;
    }
    let mut at = Some(doc);
    let mut in_array: Option<&Vec<Bson>> = None;
    let mut components = Vec::new();
    for part in path.split('.') {
        let index = in_array.and(array_index(part));
        let value = match (index, in_array) {
            (Some(i), Some(items)) => {
                components.push(Bson::Int32(i32::try_from(i).unwrap_or(i32::MAX)));
                items.get(i)
            }
            _ => {
                components.push(Bson::String(part.to_owned()));
                at.and_then(|d| d.get(part))
            }
        };
        (at, in_array) = match value {
            Some(Bson::Document(d)) => (Some(d), None),
            Some(Bson::Array(items)) => (None, Some(items)),
            _ => (None, None),
        };
    }
    let named_like_index = components
        .iter()
        .any(|c| matches!(c, Bson::String(name) if numeric_component(name)));
    named_like_index.then_some(components)
}

/// The update operators the parser accepts as the keys of an update document; any other key
/// (`$bit` included, which mongod has) is `FailedToParse` "Unknown modifier".
/// Public only so the fuzz harness can check its own list against it.
pub const UPDATE_OPERATORS: &[&str] = &[
    "$set",
    "$setOnInsert",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$push",
    "$addToSet",
    "$pull",
    "$pullAll",
    "$pop",
    "$currentDate",
];

impl UpdateSpec {
    /// Parses the `u` of an update statement: a document of `$` operators, a
    /// replacement document (no `$` keys; `{}` replaces with an empty document),
    /// or a pipeline array (see [`Pipeline::parse_update`]). Mixed documents
    /// and unknown modifiers are `FailedToParse`; overlapping paths are
    /// `ConflictingUpdateOperators`.
    pub(crate) fn parse(u: &Bson) -> CommandResult<UpdateSpec> {
        let d = match u {
            Bson::Document(d) => d,
            Bson::Array(stages) => return Pipeline::parse_update(stages).map(UpdateSpec::Pipeline),
            _ => {
                return Err(CommandError::failed_to_parse(
                    "Update argument must be either an object or an array",
                ))
            }
        };
        match d.keys().next() {
            Some(k) if k.starts_with('$') => parse_operators(d).map(UpdateSpec::Operators),
            _ => match d.keys().find(|k| k.starts_with('$')) {
                Some(k) => Err(CommandError::failed_to_parse(format!(
                    "The dollar ($) prefixed field '{k}' in '{k}' is not allowed in the context of an update's replacement document"
                ))),
                None => Ok(UpdateSpec::Replacement(d.clone())),
            },
        }
    }

    /// Applies the update to `doc`. On error `doc` is left unchanged. `_id`
    /// may not change (`ImmutableField`); see [`UpdateOutcome`] for what is reported.
    pub(crate) fn apply(
        &self,
        doc: &mut Document,
        ctx: &UpdateContext<'_>,
    ) -> CommandResult<UpdateOutcome> {
        let ups = match self {
            UpdateSpec::Replacement(r) => return replace(doc, r),
            UpdateSpec::Pipeline(pipeline) => return run_pipeline(doc, pipeline),
            UpdateSpec::Operators(ups) => ups,
        };
        let filters = ArrayFilters::parse(ctx.array_filters, ups)?;
        let mut work = doc.clone();
        let mut changes = Changes::default();
        for u in ups {
            if matches!(u.op, UpdateOp::SetOnInsert(_)) && !ctx.is_upsert_insert {
                continue;
            }
            for p in expand(&u.path, doc, &work, ctx, &filters)? {
                apply_op(&mut work, &p, &u.op, ctx, &mut changes)?;
                // A numeric component may pad an array with up to 1,500,000 nulls: stop as
                // soon as the document outgrows what could be stored, not after every path
                // of the update has padded its own array.
                if p.split('.').any(|c| array_index(c).is_some())
                    && crate::limits::approx_size(&work) > crate::wire::MAX_BSON_OBJECT_SIZE
                {
                    return Err(CommandError::new(
                        ErrorCode::BsonObjectTooLarge,
                        format!(
                            "Resulting document after update is larger than {}",
                            crate::wire::MAX_BSON_OBJECT_SIZE
                        ),
                    ));
                }
            }
        }
        if let Some(old) = doc.get("_id") {
            if !work.get("_id").is_some_and(|new| identical(old, new)) {
                return Err(CommandError::new(
                    ErrorCode::ImmutableField,
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                ));
            }
        }
        let outcome = changes.outcome(doc, &work);
        *doc = work;
        Ok(outcome)
    }
}

/// `Overflow` when `doc` nests documents and arrays deeper than [`MAX_STORED_DEPTH`];
/// walks with an explicit stack, so any depth is safe to check.
fn check_depth(doc: &Document) -> CommandResult<()> {
    let mut stack: Vec<(&Bson, usize)> = doc.values().map(|v| (v, 1)).collect();
    while let Some((value, parent_depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Bson>> = match value {
            Bson::Document(d) => Box::new(d.values()),
            Bson::Array(items) => Box::new(items.iter()),
            _ => continue,
        };
        let depth = parent_depth + 1;
        if depth > MAX_STORED_DEPTH {
            return Err(CommandError::new(
                ErrorCode::Overflow,
                format!("Document exceeds maximum nesting depth of {MAX_STORED_DEPTH}"),
            ));
        }
        stack.extend(children.map(|c| (c, depth)));
    }
    Ok(())
}

/// Runs a pipeline-style update over `doc`: the one document the stages produce replaces it,
/// `_id` kept (`ImmutableField` when a stage changed or removed it). What changed is reported
/// field by field, as mongod reports such an update in its change events.
fn run_pipeline(doc: &mut Document, pipeline: &Pipeline) -> CommandResult<UpdateOutcome> {
    let mut produced = pipeline.run(vec![doc.clone()], &Deadline::none())?;
    let (Some(new), true) = (produced.pop(), produced.is_empty()) else {
        return Err(CommandError::bad_value(
            "An update pipeline must produce exactly one document",
        ));
    };
    if let Some(old) = doc.get("_id") {
        if !new.get("_id").is_some_and(|id| identical(old, id)) {
            return Err(CommandError::new(
                ErrorCode::ImmutableField,
                "Performing an update on the path '_id' would modify the immutable field '_id'",
            ));
        }
    }
    // The `_id` stays first, as stored.
    let mut next = Document::new();
    if let Some(id) = new.get("_id") {
        next.insert("_id", id.clone());
    }
    for (key, value) in new {
        if key != "_id" {
            next.insert(key, value);
        }
    }
    let mut outcome = UpdateOutcome {
        modified: !identical_documents(doc, &next),
        ..UpdateOutcome::default()
    };
    if outcome.modified {
        for (key, value) in &next {
            if !doc.get(key).is_some_and(|old| identical(old, value)) {
                outcome.updated_fields.insert(key.clone(), value.clone());
            }
        }
        outcome.removed_fields = doc
            .keys()
            .filter(|key| !next.contains_key(key.as_str()))
            .cloned()
            .collect();
    }
    *doc = next;
    Ok(outcome)
}

fn replace(doc: &mut Document, r: &Document) -> CommandResult<UpdateOutcome> {
    let mut new = Document::new();
    match (doc.get("_id"), r.get("_id")) {
        (Some(old), Some(given)) if !values_equal(old, given) => {
            return Err(CommandError::new(
                ErrorCode::ImmutableField,
                format!("After applying the update, the (immutable) field '_id' was found to have been altered to _id: {given}"),
            ))
        }
        (Some(id), _) | (None, Some(id)) => {
            new.insert("_id", id.clone());
        }
        (None, None) => {}
    }
    for (k, v) in r {
        if k != "_id" {
            new.insert(k.clone(), v.clone());
        }
    }
    let modified = !identical_documents(doc, &new);
    *doc = new;
    Ok(UpdateOutcome {
        modified,
        ..UpdateOutcome::default()
    })
}

/// Most levels of documents and arrays a stored document may nest (the document itself
/// is the first), as mongod documents it.
pub(crate) const MAX_STORED_DEPTH: usize = 100;

/// Rejects documents that cannot be stored: nesting deeper than [`MAX_STORED_DEPTH`]
/// (`Overflow`), and an `_id` that is an array, regex or undefined (`InvalidIdField`) or a
/// document with `$`-prefixed fields (`DollarPrefixedFieldName`). Other field names may start
/// with `$` or hold dots, as since MongoDB 5.0 (read back with `$getField`); where mongod
/// refuses them — update operator paths, a replacement's top level — the update parser does.
pub(crate) fn validate_for_storage(doc: &Document) -> CommandResult<()> {
    check_depth(doc)?;
    match doc.get("_id") {
        Some(id @ (Bson::Array(_) | Bson::RegularExpression(_) | Bson::Undefined)) => {
            Err(CommandError::new(
                ErrorCode::InvalidIdField,
                format!("The '_id' value cannot be of type {}", type_name(id)),
            ))
        }
        Some(Bson::Document(d)) => match d.keys().find(|k| k.starts_with('$')) {
            Some(k) => Err(CommandError::new(
                ErrorCode::DollarPrefixedFieldName,
                format!(
                    "_id fields may not contain '$'-prefixed fields: {k} is not valid for storage."
                ),
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(filters: &'a [Document], query: Option<&'a Filter>) -> UpdateContext<'a> {
        UpdateContext {
            is_upsert_insert: false,
            array_filters: filters,
            query,
            now: bson::DateTime::from_millis(42),
            now_ts: bson::Timestamp {
                time: 7,
                increment: 1,
            },
        }
    }

    fn upd(d: &mut Document, u: Document) -> CommandResult<UpdateOutcome> {
        UpdateSpec::parse(&Bson::Document(u))?.apply(d, &ctx(&[], None))
    }

    fn after(mut d: Document, u: Document) -> Document {
        upd(&mut d, u).unwrap();
        d
    }

    fn code(mut d: Document, u: Document) -> ErrorCode {
        upd(&mut d, u).unwrap_err().code
    }

    #[test]
    fn ambiguous_paths_are_spelled_out() {
        let disambiguated = |before: Document, u: Document| {
            let mut d = before.clone();
            let out = upd(&mut d, u).expect("applies");
            out.disambiguated_paths(&before, &d, false)
        };
        assert_eq!(
            disambiguated(doc! { "a": { "1": 1 } }, doc! { "$set": { "a.1": 2 } }),
            doc! { "a.1": ["a", "1"] }
        );
        assert_eq!(
            disambiguated(doc! { "a": [{ "1": 1 }] }, doc! { "$set": { "a.0.1": 2 } }),
            doc! { "a.0.1": ["a", 0, "1"] }
        );
        assert_eq!(
            disambiguated(
                doc! { "a": [1, 2], "b": { "c": [[0]] } },
                doc! { "$unset": { "a.1": "" }, "$set": { "b.c.0.0": 1 } }
            ),
            Document::new(),
            "array indexes alone are not ambiguous"
        );
        assert_eq!(
            disambiguated(
                doc! { "a": { "1": [5, 6] } },
                doc! { "$unset": { "a.1.0": "" } }
            ),
            doc! { "a.1.0": ["a", "1", 0] },
            "a removed path is resolved in the document before"
        );
        assert_eq!(
            disambiguated(
                doc! { "a": { "b": 1 }, "c": 1 },
                doc! { "$set": { "a.b": 2, "a.01": 3 }, "$unset": { "c": "" } }
            ),
            Document::new(),
            "no numeric component (a leading zero is a name), nothing to say"
        );
        let pipeline = UpdateOutcome {
            modified: true,
            updated_fields: doc! { "a.b": 1, "7": 2, "plain": 3 },
            ..UpdateOutcome::default()
        };
        assert_eq!(
            pipeline.disambiguated_paths(&Document::new(), &Document::new(), true),
            doc! { "a.b": ["a.b"], "7": ["7"] },
            "a pipeline reports whole field names"
        );
    }

    #[test]
    fn stored_depth_is_bounded() {
        let mut deep = doc! { "leaf": 1 };
        for _ in 1..MAX_STORED_DEPTH {
            deep = doc! { "a": deep };
        }
        assert!(
            validate_for_storage(&deep).is_ok(),
            "the limit itself is fine"
        );
        let deeper = doc! { "a": [deep] };
        assert_eq!(
            validate_for_storage(&deeper).unwrap_err().code,
            ErrorCode::Overflow
        );
    }

    #[test]
    fn padding_many_arrays_stops_at_the_document_limit() {
        let mut set = Document::new();
        for field in ["a", "b", "c", "d", "e"] {
            set.insert(format!("{field}.1400000"), 1);
        }
        let arrays = doc! { "a": [], "b": [], "c": [], "d": [], "e": [] };
        assert_eq!(
            code(arrays.clone(), doc! { "$set": set }),
            ErrorCode::BsonObjectTooLarge
        );
        assert_eq!(
            code(arrays, doc! { "$set": { "x": 1, "a.1600000": 1 } }),
            ErrorCode::BadValue,
            "one path past the backfill limit"
        );
    }

    #[test]
    fn parse_kinds_and_errors() {
        let empty = UpdateSpec::parse(&Bson::Document(doc! {})).unwrap();
        assert!(matches!(empty, UpdateSpec::Replacement(d) if d.is_empty()));
        assert!(matches!(
            UpdateSpec::parse(&Bson::Document(doc! { "a": 1 })).unwrap(),
            UpdateSpec::Replacement(_)
        ));
        assert!(matches!(
            UpdateSpec::parse(&bson::bson!([{ "$set": { "a": 1 } }])).unwrap(),
            UpdateSpec::Pipeline(_)
        ));
        let p = |u: Bson| UpdateSpec::parse(&u).unwrap_err();
        assert_eq!(
            p(bson::bson!([{ "$match": { "a": 1 } }])).code,
            ErrorCode::InvalidOptions
        );
        assert_eq!(
            p(bson::bson!({ "$set": { "a": 1 }, "b": 1 })).code,
            ErrorCode::FailedToParse
        );
        assert_eq!(
            p(bson::bson!({ "b": 1, "$set": { "a": 1 } })).code,
            ErrorCode::FailedToParse
        );
        let e = p(bson::bson!({ "$foo": { "a": 1 } }));
        assert_eq!(
            (e.code, e.msg.as_str()),
            (ErrorCode::FailedToParse, "Unknown modifier: $foo")
        );
        assert_eq!(
            p(bson::bson!({ "$set": { "a": 1 }, "$inc": { "a": 1 } })).code,
            ErrorCode::ConflictingUpdateOperators
        );
        assert_eq!(
            p(bson::bson!({ "$set": { "a.b": 1 }, "$unset": { "a": 1 } })).code,
            ErrorCode::ConflictingUpdateOperators
        );
        assert_eq!(
            p(bson::bson!({ "$rename": { "a": "b" }, "$set": { "b": 1 } })).code,
            ErrorCode::ConflictingUpdateOperators
        );
        assert!(UpdateSpec::parse(&bson::bson!({ "$set": { "a.b": 1, "a.c": 1 } })).is_ok());
        assert_eq!(
            p(bson::bson!({ "$inc": { "a": "x" } })).code,
            ErrorCode::TypeMismatch
        );
        assert_eq!(p(bson::bson!({ "$set": 5 })).code, ErrorCode::FailedToParse);
        assert_eq!(
            p(bson::bson!({ "$set": { "$x": 5 } })).code,
            ErrorCode::DollarPrefixedFieldName
        );
        assert_eq!(
            p(bson::bson!({ "$pop": { "a": 2 } })).code,
            ErrorCode::FailedToParse
        );
    }

    /// Every name in `UPDATE_OPERATORS` parses and names outside it are refused, so the list the
    /// fuzz harness checks its own against is the parser's.
    #[test]
    fn parse_accepts_exactly_the_listed_operators() {
        for &op in UPDATE_OPERATORS {
            let arg = match op {
                "$unset" => Bson::String(String::new()),
                "$rename" => Bson::String("b".to_owned()),
                "$pullAll" => bson::bson!([1]),
                "$currentDate" => Bson::Boolean(true),
                _ => Bson::Int32(1),
            };
            if let Err(e) = UpdateSpec::parse(&Bson::Document(doc! { op: { "a": arg } })) {
                panic!("{op} is listed but refused: {}", e.msg);
            }
        }
        for op in ["$bit", "$foo", "$Set"] {
            let e =
                UpdateSpec::parse(&Bson::Document(doc! { op: { "a": { "and": 1 } } })).unwrap_err();
            assert_eq!(
                (e.code, e.msg),
                (ErrorCode::FailedToParse, format!("Unknown modifier: {op}"))
            );
        }
    }

    #[test]
    fn set_unset_and_change_description() {
        let mut d = doc! { "_id": 1, "a": 1, "b": { "c": 1 }, "z": 0 };
        let out = upd(
            &mut d,
            doc! { "$set": { "b.c": 2, "n.m": 3, "a": 1 }, "$unset": { "z": "", "nope": 1 } },
        )
        .unwrap();
        assert_eq!(
            d,
            doc! { "_id": 1, "a": 1, "b": { "c": 2 }, "n": { "m": 3 } }
        );
        assert!(out.modified);
        assert_eq!(out.updated_fields, doc! { "b.c": 2, "n": { "m": 3 } });
        assert_eq!(out.removed_fields, vec!["z".to_owned()]);
        let out = upd(&mut d, doc! { "$set": { "a": 1 } }).unwrap();
        assert_eq!(out, UpdateOutcome::default());
        let out = upd(&mut d, doc! { "$set": { "a": 1.0 } }).unwrap();
        assert!(out.modified);
        assert_eq!(
            code(doc! { "a": 5 }, doc! { "$set": { "a.b": 1 } }),
            ErrorCode::PathNotViable
        );
    }

    #[test]
    fn new_fields_are_added_in_lexicographic_order() {
        assert_eq!(
            after(
                doc! { "_id": 1 },
                doc! { "$set": { "b": 1, "a": 1, "arr.10": 1 } }
            ),
            doc! { "_id": 1, "a": 1, "arr": { "10": 1 }, "b": 1 }
        );
    }

    #[test]
    fn arithmetic_and_min_max() {
        let d = doc! { "_id": 1, "i": 1, "f": 1.5, "s": "x" };
        assert_eq!(
            after(d.clone(), doc! { "$inc": { "i": 2, "f": 1, "new": 5i64 } }),
            doc! { "_id": 1, "i": 3, "f": 2.5, "s": "x", "new": 5i64 }
        );
        assert_eq!(
            after(d.clone(), doc! { "$mul": { "i": 2.0, "m": 3 } }),
            doc! { "_id": 1, "i": 2.0, "f": 1.5, "s": "x", "m": 0 }
        );
        assert_eq!(
            after(doc! { "i": i32::MAX }, doc! { "$inc": { "i": 1 } }),
            doc! { "i": i64::from(i32::MAX) + 1 }
        );
        assert_eq!(
            code(d.clone(), doc! { "$inc": { "s": 1 } }),
            ErrorCode::TypeMismatch
        );
        assert_eq!(
            after(d.clone(), doc! { "$min": { "i": 0, "f": 9 } }),
            doc! { "_id": 1, "i": 0, "f": 1.5, "s": "x" }
        );
        assert_eq!(
            after(d, doc! { "$max": { "i": 0, "f": 9, "q": 1 } }),
            doc! { "_id": 1, "i": 1, "f": 9, "s": "x", "q": 1 }
        );
    }

    #[test]
    fn rename() {
        let d = doc! { "_id": 1, "a": { "b": 1 }, "c": 2 };
        let mut x = d.clone();
        let out = upd(&mut x, doc! { "$rename": { "a.b": "z", "c": "y.w" } }).unwrap();
        assert_eq!(x, doc! { "_id": 1, "a": {}, "z": 1, "y": { "w": 2 } });
        assert_eq!(out.removed_fields, vec!["a.b".to_owned(), "c".to_owned()]);
        assert_eq!(after(d.clone(), doc! { "$rename": { "nope": "q" } }), d);
        assert_eq!(
            code(
                doc! { "a": [{ "b": 1 }] },
                doc! { "$rename": { "a.0.b": "c" } }
            ),
            ErrorCode::BadValue
        );
    }

    #[test]
    fn push_variants() {
        let d = doc! { "_id": 1, "a": [3, 1] };
        let mut x = d.clone();
        let out = upd(&mut x, doc! { "$push": { "a": 2, "n": 1 } }).unwrap();
        assert_eq!(x, doc! { "_id": 1, "a": [3, 1, 2], "n": [1] });
        assert_eq!(out.updated_fields, doc! { "a.2": 2, "n": [1] });
        assert_eq!(
            after(
                d.clone(),
                doc! { "$push": { "a": { "$each": [5, 4], "$sort": 1, "$slice": -3 } } }
            ),
            doc! { "_id": 1, "a": [3, 4, 5] }
        );
        assert_eq!(
            after(
                d.clone(),
                doc! { "$push": { "a": { "$each": [9], "$position": 0 } } }
            ),
            doc! { "_id": 1, "a": [9, 3, 1] }
        );
        assert_eq!(
            after(
                d,
                doc! { "$push": { "a": { "$each": [9], "$position": -1 } } }
            ),
            doc! { "_id": 1, "a": [3, 9, 1] }
        );
        assert_eq!(
            after(
                doc! { "a": [{ "s": 2 }, { "s": 1 }] },
                doc! { "$push": { "a": { "$each": [{ "s": 3 }], "$sort": { "s": -1 } } } }
            ),
            doc! { "a": [{ "s": 3 }, { "s": 2 }, { "s": 1 }] }
        );
        assert_eq!(
            code(doc! { "a": 1 }, doc! { "$push": { "a": 2 } }),
            ErrorCode::BadValue
        );
        assert_eq!(
            after(doc! {}, doc! { "$push": { "a": { "k": 1 } } }),
            doc! { "a": [{ "k": 1 }] }
        );
    }

    #[test]
    fn add_to_set_pull_pop() {
        let d = doc! { "a": [1, 2, 3, { "x": 1, "y": 2 }] };
        assert_eq!(after(d.clone(), doc! { "$addToSet": { "a": 2.0 } }), d);
        assert_eq!(
            after(
                d.clone(),
                doc! { "$addToSet": { "a": { "$each": [4, 4, 1] } } }
            ),
            doc! { "a": [1, 2, 3, { "x": 1, "y": 2 }, 4] }
        );
        assert_eq!(
            after(d.clone(), doc! { "$pull": { "a": 2 } }),
            doc! { "a": [1, 3, { "x": 1, "y": 2 }] }
        );
        assert_eq!(
            after(d.clone(), doc! { "$pull": { "a": { "$gte": 2 } } }),
            doc! { "a": [1, { "x": 1, "y": 2 }] }
        );
        assert_eq!(
            after(d.clone(), doc! { "$pull": { "a": { "x": 1 } } }),
            doc! { "a": [1, 2, 3] }
        );
        assert_eq!(
            after(d.clone(), doc! { "$pullAll": { "a": [1, 3] } }),
            doc! { "a": [2, { "x": 1, "y": 2 }] }
        );
        let mut x = d.clone();
        let out = upd(&mut x, doc! { "$pop": { "a": -1 } }).unwrap();
        assert_eq!(x, doc! { "a": [2, 3, { "x": 1, "y": 2 }] });
        assert_eq!(out.updated_fields, doc! { "a": [2, 3, { "x": 1, "y": 2 }] });
        assert_eq!(
            after(d, doc! { "$pop": { "a": 1 } }),
            doc! { "a": [1, 2, 3] }
        );
        assert_eq!(
            code(doc! { "a": 1 }, doc! { "$pop": { "a": 1 } }),
            ErrorCode::TypeMismatch
        );
        assert_eq!(
            code(doc! { "a": 1 }, doc! { "$addToSet": { "a": 1 } }),
            ErrorCode::BadValue
        );
    }

    #[test]
    fn current_date_and_set_on_insert() {
        let u = UpdateSpec::parse(&bson::bson!({
            "$currentDate": { "d": true, "t": { "$type": "timestamp" } },
            "$setOnInsert": { "s": 1 }
        }))
        .unwrap();
        let mut d = doc! { "_id": 1 };
        u.apply(&mut d, &ctx(&[], None)).unwrap();
        assert_eq!(
            d,
            doc! { "_id": 1, "d": bson::DateTime::from_millis(42), "t": bson::Timestamp { time: 7, increment: 1 } }
        );
        let mut d = doc! {};
        u.apply(
            &mut d,
            &UpdateContext {
                is_upsert_insert: true,
                ..ctx(&[], None)
            },
        )
        .unwrap();
        assert_eq!(d.get_i32("s"), Ok(1));
    }

    #[test]
    fn id_is_immutable() {
        assert_eq!(
            code(doc! { "_id": 1 }, doc! { "$set": { "_id": 2 } }),
            ErrorCode::ImmutableField
        );
        assert_eq!(
            code(doc! { "_id": 1 }, doc! { "$unset": { "_id": 1 } }),
            ErrorCode::ImmutableField
        );
        assert_eq!(
            after(doc! { "_id": 1 }, doc! { "$set": { "_id": 1 } }),
            doc! { "_id": 1 }
        );
        let mut d = doc! { "_id": 1, "a": 1 };
        assert!(upd(&mut d, doc! { "$set": { "a": 2 }, "$inc": { "_id": 1 } }).is_err());
        assert_eq!(d, doc! { "_id": 1, "a": 1 });
    }

    #[test]
    fn replacement_keeps_id_first() {
        let mut d = doc! { "_id": 1, "a": 1 };
        let out = upd(&mut d, doc! { "b": 2, "_id": 1 }).unwrap();
        assert_eq!(d, doc! { "_id": 1, "b": 2 });
        assert!(out.modified);
        assert!(!upd(&mut d, doc! { "b": 2 }).unwrap().modified);
        assert_eq!(code(d, doc! { "_id": 2 }), ErrorCode::ImmutableField);
    }

    #[test]
    fn positional_operators() {
        let d =
            doc! { "_id": 1, "g": [{ "v": 80, "n": 0 }, { "v": 90, "n": 0 }, { "v": 95, "n": 0 }] };
        let q = Filter::parse(&doc! { "g.v": { "$gte": 90 } }).unwrap();
        let run = |u: Document, filters: &[Document], q: Option<&Filter>| {
            let mut x = d.clone();
            UpdateSpec::parse(&Bson::Document(u))?
                .apply(&mut x, &ctx(filters, q))
                .map(|o| (x, o))
        };
        let (x, out) = run(doc! { "$set": { "g.$.n": 1 } }, &[], Some(&q)).unwrap();
        assert_eq!(
            x.get_array("g").unwrap()[1],
            bson::bson!({ "v": 90, "n": 1 })
        );
        assert_eq!(out.updated_fields, doc! { "g.1.n": 1 });
        assert_eq!(
            run(doc! { "$set": { "g.$.n": 1 } }, &[], None)
                .unwrap_err()
                .code,
            ErrorCode::BadValue
        );
        let (x, _) = run(doc! { "$inc": { "g.$[].n": 2 } }, &[], None).unwrap();
        assert!(x
            .get_array("g")
            .unwrap()
            .iter()
            .all(|e| e.as_document().unwrap().get_i32("n") == Ok(2)));
        let (x, out) = run(
            doc! { "$set": { "g.$[e].n": 7 } },
            &[doc! { "e.v": { "$gt": 85 } }],
            None,
        )
        .unwrap();
        assert_eq!(
            x.get_array("g").unwrap()[0],
            bson::bson!({ "v": 80, "n": 0 })
        );
        assert_eq!(out.updated_fields, doc! { "g.1.n": 7, "g.2.n": 7 });
        assert_eq!(
            run(doc! { "$set": { "g.$[e].n": 7 } }, &[], None)
                .unwrap_err()
                .code,
            ErrorCode::BadValue
        );
        assert_eq!(
            run(doc! { "$set": { "a": 1 } }, &[doc! { "e": 1 }], None)
                .unwrap_err()
                .code,
            ErrorCode::FailedToParse
        );
        assert_eq!(
            run(doc! { "$set": { "x.$[].n": 1 } }, &[], None)
                .unwrap_err()
                .code,
            ErrorCode::BadValue
        );
    }

    #[test]
    fn storage_validation() {
        assert!(validate_for_storage(&doc! { "_id": 1, "a": { "$b": 1 } }).is_ok());
        assert!(validate_for_storage(&doc! { "$a": 1, "b.c": 2 }).is_ok());
        assert_eq!(
            validate_for_storage(&doc! { "_id": [1] }).unwrap_err().code,
            ErrorCode::InvalidIdField
        );
        let re = bson::Regex {
            pattern: "a".into(),
            options: String::new(),
        };
        assert_eq!(
            validate_for_storage(&doc! { "_id": re }).unwrap_err().code,
            ErrorCode::InvalidIdField
        );
        assert_eq!(
            validate_for_storage(&doc! { "_id": { "$gt": 1 } })
                .unwrap_err()
                .code,
            ErrorCode::DollarPrefixedFieldName
        );
    }
}
