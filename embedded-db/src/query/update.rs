//! Update specifications: replacement documents and update operators
//! (`$set`, `$inc`, `$push`, ... with positional `$`, `$[]` and `$[id]`),
//! reporting changes the way a change stream's `updateDescription` does.

use std::cmp::Ordering;

use bson::{doc, Bson, Document};

use super::compare::{compare, identical, identical_documents, type_name, values_equal};
use super::filter::{ElemMatch, Filter};
use super::num::{as_integral, Num};
use super::path::{self, array_index, split_first};
use super::sort::SortSpec;
use crate::error::{CommandError, CommandResult, ErrorCode};

/// A parsed update: a replacement document or a list of field updates.
#[derive(Debug, Clone)]
pub(crate) enum UpdateSpec {
    /// Replace the whole document (keeping `_id`).
    Replacement(Document),
    /// Operator updates, ordered by path as MongoDB applies them.
    Operators(Vec<FieldUpdate>),
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

const MODIFIERS: [&str; 15] = [
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
    "$bit",
];

impl UpdateSpec {
    /// Parses the `u` of an update statement: a document of `$` operators, a
    /// replacement document (no `$` keys; `{}` replaces with an empty document),
    /// or (not supported) a pipeline array (`NotImplemented`). Mixed documents
    /// and unknown modifiers are `FailedToParse`; overlapping paths are
    /// `ConflictingUpdateOperators`.
    pub(crate) fn parse(u: &Bson) -> CommandResult<UpdateSpec> {
        let d =
            match u {
                Bson::Document(d) => d,
                Bson::Array(_) => return Err(CommandError::new(
                    ErrorCode::NotImplemented,
                    "pipeline-style updates (an array of stages) are not supported by this server",
                )),
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

/// Rejects documents that cannot be stored: top-level field names starting
/// with `$` (`DollarPrefixedFieldName`), and an `_id` that is an array, regex
/// or undefined (`InvalidIdField`) or a document with `$`-prefixed fields.
pub(crate) fn validate_for_storage(doc: &Document) -> CommandResult<()> {
    if let Some(k) = doc.keys().find(|k| k.starts_with('$')) {
        return Err(CommandError::new(
            ErrorCode::DollarPrefixedFieldName,
            format!("The dollar ($) prefixed field '{k}' in '{k}' is not valid for storage."),
        ));
    }
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

fn parse_operators(d: &Document) -> CommandResult<Vec<FieldUpdate>> {
    let mut ups = Vec::new();
    for (name, arg) in d {
        if !MODIFIERS.contains(&name.as_str()) || name == "$bit" {
            let hint = if name.starts_with('$') {
                String::new()
            } else {
                ". Expected a valid update modifier or pipeline-style update specified as an array"
                    .to_owned()
            };
            return Err(CommandError::failed_to_parse(format!(
                "Unknown modifier: {name}{hint}"
            )));
        }
        let Bson::Document(fields) = arg else {
            return Err(CommandError::failed_to_parse(format!(
                "Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{name}: {arg}}}",
                type_name(arg)
            )));
        };
        for (p, v) in fields {
            validate_update_path(p)?;
            ups.push(FieldUpdate {
                path: p.clone(),
                op: parse_op(name, p, v)?,
            });
        }
    }
    check_conflicts(&ups)?;
    ups.sort_by(|a, b| path_order(&a.path, &b.path));
    Ok(ups)
}

fn validate_update_path(p: &str) -> CommandResult<()> {
    if p.is_empty() {
        return Err(CommandError::failed_to_parse(
            "An empty update path is not valid.",
        ));
    }
    let mut positional = 0;
    for c in p.split('.') {
        if c.is_empty() {
            return Err(CommandError::failed_to_parse(format!(
                "The update path '{p}' contains an empty field name, which is not allowed."
            )));
        }
        positional += usize::from(c == "$");
        let array_op = c == "$" || (c.starts_with("$[") && c.ends_with(']'));
        if c.starts_with('$') && !array_op {
            return Err(CommandError::new(
                ErrorCode::DollarPrefixedFieldName,
                format!("The dollar ($) prefixed field '{c}' in '{p}' is not valid for storage."),
            ));
        }
    }
    if positional > 1 {
        return Err(CommandError::bad_value(format!(
            "Too many positional (i.e. '$') elements found in path '{p}'"
        )));
    }
    Ok(())
}

fn parse_op(name: &str, p: &str, v: &Bson) -> CommandResult<UpdateOp> {
    let dynamic = |s: &str| s.split('.').any(|c| c.starts_with('$'));
    Ok(match name {
        "$set" => UpdateOp::Set(v.clone()),
        "$setOnInsert" => UpdateOp::SetOnInsert(v.clone()),
        "$unset" => UpdateOp::Unset,
        "$inc" | "$mul" => {
            let verb = if name == "$inc" { "increment" } else { "multiply" };
            let n = Num::from_bson(v).ok_or_else(|| {
                CommandError::type_mismatch(format!("Cannot {verb} with non-numeric argument: {{{p}: {v}}}"))
            })?;
            if name == "$inc" {
                UpdateOp::Inc(n)
            } else {
                UpdateOp::Mul(n)
            }
        }
        "$min" => UpdateOp::Min(v.clone()),
        "$max" => UpdateOp::Max(v.clone()),
        "$rename" => {
            let Bson::String(to) = v else {
                return Err(CommandError::bad_value(format!(
                    "The 'to' field for $rename must be a string: {p}: {v}"
                )));
            };
            validate_update_path(to)?;
            if dynamic(p) || dynamic(to) {
                return Err(CommandError::bad_value(format!(
                    "The source and target field for $rename may not be dynamic: {p}: {to}"
                )));
            }
            if path::overlaps(p, to) {
                return Err(CommandError::bad_value(format!(
                    "The source and target field for $rename must differ and not be on the same path: {p}: {to}"
                )));
            }
            UpdateOp::Rename(to.clone())
        }
        "$push" => UpdateOp::Push(Box::new(parse_push(v)?)),
        "$addToSet" => UpdateOp::AddToSet(match v {
            Bson::Document(d) if d.contains_key("$each") => {
                if d.len() != 1 {
                    return Err(CommandError::bad_value(format!(
                        "Found unexpected fields after $each in $addToSet: {v}"
                    )));
                }
                each_array(d.get("$each"), "$addToSet")?
            }
            other => vec![other.clone()],
        }),
        "$pull" => UpdateOp::Pull(Box::new(match v {
            Bson::Document(d) => PullCond::Match(ElemMatch::parse(d)?),
            Bson::RegularExpression(r) => {
                PullCond::Match(ElemMatch::parse(&doc! { "$regex": &r.pattern, "$options": &r.options })?)
            }
            other => PullCond::Value(other.clone()),
        })),
        "$pullAll" => match v {
            Bson::Array(items) => UpdateOp::PullAll(items.clone()),
            other => {
                return Err(CommandError::bad_value(format!(
                    "$pullAll requires an array argument but was given a {}",
                    type_name(other)
                )))
            }
        },
        "$pop" => match as_integral(v) {
            Some(1) => UpdateOp::Pop(false),
            Some(-1) => UpdateOp::Pop(true),
            _ => return Err(CommandError::failed_to_parse(format!("$pop expects 1 or -1, found: {v}"))),
        },
        "$currentDate" => UpdateOp::CurrentDate(match v {
            Bson::Boolean(_) => false,
            Bson::Document(d) if d.len() == 1 && d.get_str("$type") == Ok("date") => false,
            Bson::Document(d) if d.len() == 1 && d.get_str("$type") == Ok("timestamp") => true,
            Bson::Document(_) => {
                return Err(CommandError::bad_value(
                    "The '$type' string field is required to be 'date' or 'timestamp': {$currentDate: {field : {$type: 'date'}}}",
                ))
            }
            other => {
                return Err(CommandError::bad_value(format!(
                    "{other} is not valid type for $currentDate. Please use a boolean ('true') or a $type expression ({{$type: 'timestamp/date'}})."
                )))
            }
        }),
        other => return Err(CommandError::failed_to_parse(format!("Unknown modifier: {other}"))),
    })
}

fn each_array(v: Option<&Bson>, op: &str) -> CommandResult<Vec<Bson>> {
    match v {
        Some(Bson::Array(items)) => Ok(items.clone()),
        other => Err(CommandError::bad_value(format!(
            "The argument to $each in {op} must be an array but it was of type: {}",
            other.map_or("missing", type_name)
        ))),
    }
}

fn parse_push(v: &Bson) -> CommandResult<Push> {
    let mut push = Push {
        each: vec![v.clone()],
        slice: None,
        position: None,
        sort: None,
    };
    let Bson::Document(d) = v else {
        return Ok(push);
    };
    if !d.contains_key("$each") {
        return Ok(push);
    }
    let int = |x: &Bson, clause: &str| {
        as_integral(x).ok_or_else(|| {
            CommandError::bad_value(format!(
                "The value for {clause} must be an integer value but was given type: {}",
                type_name(x)
            ))
        })
    };
    for (k, x) in d {
        match k.as_str() {
            "$each" => push.each = each_array(Some(x), "$push")?,
            "$slice" => push.slice = Some(int(x, k)?),
            "$position" => push.position = Some(int(x, k)?),
            "$sort" => {
                push.sort = Some(match (as_integral(x), x) {
                    (Some(1), _) => PushSort::Value(true),
                    (Some(-1), _) => PushSort::Value(false),
                    (_, Bson::Document(spec)) if !spec.is_empty() => PushSort::Fields(SortSpec::parse(spec)?),
                    _ => {
                        return Err(CommandError::bad_value(
                            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields",
                        ))
                    }
                });
            }
            other => {
                return Err(CommandError::bad_value(format!(
                    "Unrecognized clause in $push: {other}"
                )))
            }
        }
    }
    Ok(push)
}

fn check_conflicts(ups: &[FieldUpdate]) -> CommandResult<()> {
    let mut seen: Vec<&str> = Vec::new();
    for u in ups {
        let extra = match &u.op {
            UpdateOp::Rename(to) => Some(to.as_str()),
            _ => None,
        };
        for p in std::iter::once(u.path.as_str()).chain(extra) {
            if let Some(prev) = seen.iter().find(|q| path::overlaps(q, p)) {
                let at = if prev.len() <= p.len() { *prev } else { p };
                return Err(CommandError::new(
                    ErrorCode::ConflictingUpdateOperators,
                    format!("Updating the path '{p}' would create a conflict at '{at}'"),
                ));
            }
            seen.push(p);
        }
    }
    Ok(())
}

/// MongoDB applies updates in field-name order, numeric components numerically.
fn path_order(a: &str, b: &str) -> Ordering {
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        match (xs.next(), ys.next()) {
            (Some(x), Some(y)) => {
                let o = match (array_index(x), array_index(y)) {
                    (Some(i), Some(j)) => i.cmp(&j),
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            (x, y) => return x.is_some().cmp(&y.is_some()),
        }
    }
}

struct ArrayFilters<'a> {
    filters: Vec<(&'a str, Filter)>,
}

impl<'a> ArrayFilters<'a> {
    fn parse(raw: &'a [Document], ups: &[FieldUpdate]) -> CommandResult<Self> {
        let prefix = "Error parsing array filter :: caused by :: ";
        let mut filters: Vec<(&'a str, Filter)> = Vec::with_capacity(raw.len());
        for d in raw {
            let mut ident: Option<&'a str> = None;
            for k in d.keys().filter(|k| !k.starts_with('$')) {
                let head = split_first(k).0;
                match ident {
                    Some(i) if i != head => {
                        return Err(CommandError::failed_to_parse(format!(
                        "{prefix}Expected a single top-level field name, found '{i}' and '{head}'"
                    )))
                    }
                    _ => ident = Some(head),
                }
            }
            let Some(ident) = ident else {
                return Err(CommandError::failed_to_parse(format!(
                    "{prefix}Cannot use an expression without a top-level field name in arrayFilters"
                )));
            };
            let mut chars = ident.chars();
            if !chars.next().is_some_and(|c| c.is_ascii_lowercase())
                || !chars.all(|c| c.is_ascii_alphanumeric())
            {
                return Err(CommandError::bad_value(format!(
                    "{prefix}The top-level field name must be an alphanumeric string beginning with a lowercase letter, found '{ident}'"
                )));
            }
            if filters.iter().any(|(i, _)| *i == ident) {
                return Err(CommandError::failed_to_parse(format!(
                    "Found multiple array filters with the same top-level field name {ident}"
                )));
            }
            filters.push((ident, Filter::parse(d)?));
        }
        for (ident, _) in &filters {
            let token = format!("$[{ident}]");
            if !ups.iter().any(|u| u.path.split('.').any(|c| c == token)) {
                return Err(CommandError::failed_to_parse(format!(
                    "The array filter for identifier '{ident}' was not used in the update"
                )));
            }
        }
        Ok(ArrayFilters { filters })
    }

    fn get(&self, ident: &str, p: &str) -> CommandResult<&Filter> {
        self.filters
            .iter()
            .find(|(i, _)| *i == ident)
            .map(|(_, f)| f)
            .ok_or_else(|| {
                CommandError::bad_value(format!(
                    "No array filter found for identifier '{ident}' in path '{p}'"
                ))
            })
    }
}

/// Turns a path with `$`, `$[]` and `$[id]` components into concrete paths.
fn expand(
    p: &str,
    original: &Document,
    work: &Document,
    ctx: &UpdateContext<'_>,
    filters: &ArrayFilters<'_>,
) -> CommandResult<Vec<String>> {
    if !p.contains('$') {
        return Ok(vec![p.to_owned()]);
    }
    let mut prefixes = vec![String::new()];
    for part in p.split('.') {
        let mut next = Vec::with_capacity(prefixes.len());
        for pre in &prefixes {
            let join = |c: &str| {
                if pre.is_empty() {
                    c.to_owned()
                } else {
                    format!("{pre}.{c}")
                }
            };
            if part == "$" {
                let i = ctx
                    .query
                    .and_then(|q| q.positional_index(original, pre))
                    .ok_or_else(|| {
                        CommandError::bad_value(
                            "The positional operator did not find the match needed from the query.",
                        )
                    })?;
                next.push(join(&i.to_string()));
                continue;
            }
            let ident = part.strip_prefix("$[").and_then(|s| s.strip_suffix(']'));
            let Some(ident) = ident else {
                next.push(join(part));
                continue;
            };
            let Some(Bson::Array(items)) = path::get(work, pre) else {
                return Err(CommandError::bad_value(format!(
                    "The path '{pre}' must exist in the document in order to apply array updates."
                )));
            };
            let filter = if ident.is_empty() {
                None
            } else {
                Some(filters.get(ident, p)?)
            };
            for (i, e) in items.iter().enumerate() {
                if filter.is_none_or(|f| f.matches(&doc! { ident: e.clone() })) {
                    next.push(join(&i.to_string()));
                }
            }
        }
        prefixes = next;
    }
    Ok(prefixes)
}

#[derive(Default)]
struct Changes {
    updated: Vec<String>,
    removed: Vec<String>,
}

impl Changes {
    fn outcome(self, before: &Document, after: &Document) -> UpdateOutcome {
        if identical_documents(before, after) {
            return UpdateOutcome::default();
        }
        let under = |p: &str, q: &str| {
            p.len() > q.len() && p.starts_with(q) && p.as_bytes().get(q.len()) == Some(&b'.')
        };
        let covered = |p: &str| self.updated.iter().any(|q| under(p, q));
        let mut updated_fields = Document::new();
        for p in &self.updated {
            if let (false, Some(v)) = (covered(p), path::get(after, p)) {
                updated_fields.insert(p.clone(), v.clone());
            }
        }
        let removed_fields = self
            .removed
            .iter()
            .filter(|p| !covered(p) && path::get(after, p).is_none())
            .cloned()
            .collect();
        UpdateOutcome {
            modified: true,
            updated_fields,
            removed_fields,
            truncated_arrays: Vec::new(),
        }
    }
}

/// The path a change at `p` is reported under: the first component that did
/// not exist before (a new subtree is reported whole), or the whole array
/// when setting past its end pads it with nulls.
fn report_path(work: &Document, p: &str) -> String {
    let ends = p
        .match_indices('.')
        .map(|(i, _)| i)
        .chain(std::iter::once(p.len()));
    let mut parent: Option<&str> = None;
    for end in ends {
        let Some(prefix) = p.get(..end) else { break };
        if path::get(work, prefix).is_none() {
            if let Some(par) = parent {
                if let (Some(Bson::Array(items)), Some(i)) = (
                    path::get(work, par),
                    array_index(p.get(par.len() + 1..end).unwrap_or("")),
                ) {
                    if i > items.len() {
                        return par.to_owned();
                    }
                }
            }
            return prefix.to_owned();
        }
        parent = Some(prefix);
    }
    p.to_owned()
}

fn set_value(work: &mut Document, p: &str, v: Bson, changes: &mut Changes) -> CommandResult<()> {
    if path::get(work, p).is_some_and(|old| identical(old, &v)) {
        return Ok(());
    }
    let report = report_path(work, p);
    path::set(work, p, v)?;
    changes.updated.push(report);
    Ok(())
}

/// How an array operator changed its array.
enum ArrayChange {
    Unchanged,
    /// Elements were appended after the given old length.
    Appended(usize),
    Rewritten,
}

fn apply_op(
    work: &mut Document,
    p: &str,
    op: &UpdateOp,
    ctx: &UpdateContext<'_>,
    changes: &mut Changes,
) -> CommandResult<()> {
    let field = || p.rsplit('.').next().unwrap_or(p).to_owned();
    match op {
        UpdateOp::Set(v) | UpdateOp::SetOnInsert(v) => set_value(work, p, v.clone(), changes),
        UpdateOp::CurrentDate(ts) => {
            let v = if *ts {
                Bson::Timestamp(ctx.now_ts)
            } else {
                Bson::DateTime(ctx.now)
            };
            set_value(work, p, v, changes)
        }
        UpdateOp::Unset => {
            if let Some(mut slot) = path::slot(work, p, false)? {
                if slot.get().is_some() {
                    let element = matches!(slot, path::Slot::Element(..));
                    slot.remove();
                    if element {
                        changes.updated.push(p.to_owned());
                    } else {
                        changes.removed.push(p.to_owned());
                    }
                }
            }
            Ok(())
        }
        UpdateOp::Inc(n) | UpdateOp::Mul(n) => {
            let inc = matches!(op, UpdateOp::Inc(_));
            let new = match path::get(work, p) {
                None if inc => *n,
                None => n.zero_like(),
                Some(cur) => {
                    let c = Num::from_bson(cur).ok_or_else(|| {
                        CommandError::type_mismatch(format!(
                            "Cannot apply {} to a value of non-numeric type. {{_id: {}}} has the field '{}' of non-numeric type {}",
                            if inc { "$inc" } else { "$mul" },
                            id_of(work),
                            field(),
                            type_name(cur)
                        ))
                    })?;
                    if inc {
                        c.add(*n)
                    } else {
                        c.mul(*n)
                    }
                }
            };
            set_value(work, p, new.to_bson(), changes)
        }
        UpdateOp::Min(v) | UpdateOp::Max(v) => {
            let replace_when = if matches!(op, UpdateOp::Min(_)) {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            match path::get(work, p) {
                Some(cur) if compare(v, cur) != replace_when => Ok(()),
                _ => set_value(work, p, v.clone(), changes),
            }
        }
        UpdateOp::Rename(to) => {
            for (which, q) in [("source", p), ("destination", to.as_str())] {
                if through_array(work, q) {
                    return Err(CommandError::bad_value(format!(
                        "The {which} field cannot be an array element, '{q}' in doc with {{_id: {}}} has an array field along the path",
                        id_of(work)
                    )));
                }
            }
            let Some(v) = path::remove(work, p) else {
                return Ok(());
            };
            changes.removed.push(p.to_owned());
            set_value(work, to, v, changes)
        }
        UpdateOp::Push(push) => {
            with_array(
                work,
                p,
                true,
                changes,
                |arr| push.apply(arr),
                |t, id| {
                    format!("The field '{p}' must be an array but is of type {t} in document {{_id: {id}}}")
                },
            )
        }
        UpdateOp::AddToSet(values) => with_array(
            work,
            p,
            true,
            changes,
            |arr| {
                let old = arr.len();
                for v in values {
                    if !arr.iter().any(|e| values_equal(e, v)) {
                        arr.push(v.clone());
                    }
                }
                if arr.len() == old {
                    ArrayChange::Unchanged
                } else {
                    ArrayChange::Appended(old)
                }
            },
            |t, _| {
                format!("Cannot apply $addToSet to non-array field. Field named '{}' has non-array type {t}", field())
            },
        ),
        UpdateOp::Pull(cond) => retain(work, p, changes, |e| !cond.matches(e)),
        UpdateOp::PullAll(values) => retain(work, p, changes, |e| {
            !values.iter().any(|v| values_equal(e, v))
        }),
        UpdateOp::Pop(first) => with_array(
            work,
            p,
            false,
            changes,
            |arr| {
                let popped = if *first && !arr.is_empty() {
                    Some(arr.remove(0))
                } else if *first {
                    None
                } else {
                    arr.pop()
                };
                if popped.is_some() {
                    ArrayChange::Rewritten
                } else {
                    ArrayChange::Unchanged
                }
            },
            |t, _| format!("Path '{p}' contains an element of non-array type '{t}'"),
        )
        .map_err(|e| CommandError {
            code: ErrorCode::TypeMismatch,
            ..e
        }),
    }
}

fn id_of(doc: &Document) -> String {
    doc.get("_id")
        .map_or_else(|| "null".to_owned(), ToString::to_string)
}

fn through_array(doc: &Document, p: &str) -> bool {
    p.match_indices('.').any(|(i, _)| {
        matches!(
            p.get(..i).and_then(|pre| path::get(doc, pre)),
            Some(Bson::Array(_))
        )
    })
}

fn retain(
    work: &mut Document,
    p: &str,
    changes: &mut Changes,
    keep: impl Fn(&Bson) -> bool,
) -> CommandResult<()> {
    with_array(
        work,
        p,
        false,
        changes,
        |arr| {
            let old = arr.len();
            arr.retain(|e| keep(e));
            if arr.len() == old {
                ArrayChange::Unchanged
            } else {
                ArrayChange::Rewritten
            }
        },
        |_, _| "Cannot apply $pull to a non-array value".to_owned(),
    )
}

/// Runs `f` on the array at `p` (a missing array is created when `create`,
/// else left alone); a non-array is `BadValue` with `not_array(type, _id)`.
fn with_array(
    work: &mut Document,
    p: &str,
    create: bool,
    changes: &mut Changes,
    f: impl FnOnce(&mut Vec<Bson>) -> ArrayChange,
    not_array: impl FnOnce(&str, &str) -> String,
) -> CommandResult<()> {
    match path::get(work, p) {
        None if create => {
            let mut arr = Vec::new();
            f(&mut arr);
            return set_value(work, p, Bson::Array(arr), changes);
        }
        None => return Ok(()),
        Some(Bson::Array(_)) => {}
        Some(other) => {
            return Err(CommandError::bad_value(not_array(
                type_name(other),
                &id_of(work),
            )))
        }
    }
    let mut slot = path::slot(work, p, false)?;
    let Some(Bson::Array(arr)) = slot.as_mut().and_then(path::Slot::get_mut) else {
        return Ok(());
    };
    match f(arr) {
        ArrayChange::Unchanged => {}
        ArrayChange::Appended(old) => changes
            .updated
            .extend((old..arr.len()).map(|i| format!("{p}.{i}"))),
        ArrayChange::Rewritten => changes.updated.push(p.to_owned()),
    }
    Ok(())
}

impl Push {
    fn apply(&self, arr: &mut Vec<Bson>) -> ArrayChange {
        let old = arr.len();
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let at = match self.position {
            None => old,
            Some(p) if p < 0 => old.saturating_sub(to_usize(p.unsigned_abs())),
            Some(p) => old.min(to_usize(p.unsigned_abs())),
        };
        let reshapes = self.sort.is_some() || self.slice.is_some();
        if at == old && !reshapes {
            arr.extend(self.each.iter().cloned());
            return if arr.len() == old {
                ArrayChange::Unchanged
            } else {
                ArrayChange::Appended(old)
            };
        }
        let before = arr.clone();
        arr.splice(at..at, self.each.iter().cloned());
        if let Some(sort) = &self.sort {
            arr.sort_by(|a, b| sort.compare(a, b));
        }
        match self.slice {
            Some(n) if n >= 0 => arr.truncate(to_usize(n.unsigned_abs())),
            Some(n) => {
                let drop = arr.len().saturating_sub(to_usize(n.unsigned_abs()));
                arr.drain(..drop);
            }
            None => {}
        }
        if before.len() == arr.len() && before.iter().zip(arr.iter()).all(|(a, b)| identical(a, b))
        {
            ArrayChange::Unchanged
        } else {
            ArrayChange::Rewritten
        }
    }
}

impl PushSort {
    fn compare(&self, a: &Bson, b: &Bson) -> Ordering {
        match self {
            PushSort::Value(true) => compare(a, b),
            PushSort::Value(false) => compare(b, a),
            PushSort::Fields(spec) => match (a, b) {
                (Bson::Document(x), Bson::Document(y)) => spec.compare_docs(x, y),
                (Bson::Document(_), _) => Ordering::Greater,
                (_, Bson::Document(_)) => Ordering::Less,
                _ => compare(a, b),
            },
        }
    }
}

impl PullCond {
    fn matches(&self, e: &Bson) -> bool {
        match self {
            PullCond::Value(v) => values_equal(e, v),
            PullCond::Match(m) => m.matches_element(e),
        }
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
    fn parse_kinds_and_errors() {
        let empty = UpdateSpec::parse(&Bson::Document(doc! {})).unwrap();
        assert!(matches!(empty, UpdateSpec::Replacement(d) if d.is_empty()));
        assert!(matches!(
            UpdateSpec::parse(&Bson::Document(doc! { "a": 1 })).unwrap(),
            UpdateSpec::Replacement(_)
        ));
        let p = |u: Bson| UpdateSpec::parse(&u).unwrap_err();
        assert_eq!(
            p(bson::bson!([{ "$set": { "a": 1 } }])).code,
            ErrorCode::NotImplemented
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
        assert_eq!(
            validate_for_storage(&doc! { "$a": 1 }).unwrap_err().code,
            ErrorCode::DollarPrefixedFieldName
        );
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
