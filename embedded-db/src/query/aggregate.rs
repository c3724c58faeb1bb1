//! The pipeline layer of aggregation: parsing stages and running them over in-memory
//! documents: `$match`, `$project`, `$addFields`/`$set`, `$unset`, `$sort`, `$limit`, `$skip`,
//! `$group`, `$count`, `$unwind`, `$replaceRoot`/`$replaceWith`, `$facet`, and `$lookup` /
//! `$unionWith` over the documents of another collection, loaded before the run
//! ([`Pipeline::resolve`]).
//!
//! The command layer is `cmd/aggregate.rs` (the `aggregate` command): it reads the collection,
//! handles `$changeStream`, `$documents` and the write stages `$out`/`$merge`, and hands the
//! rest of the pipeline to [`Pipeline`] here.

use bson::{Bson, Document};

use super::compare::type_name;
use super::expr::Expr;
use super::filter::Filter;
use super::num::as_integral;
use super::path::{self, split_first};
use super::projection::{Projection, ProjectionKind};
use super::sort::SortSpec;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::{Deadline, MemoryBudget};

mod facet;
mod group;
mod lookup;
mod union_with;
mod unwind;

use group::{Group, Groups};
use lookup::Lookup;
use union_with::UnionWith;
use unwind::Unwind;

/// Most stages a pipeline may have (mongod's `internalPipelineLengthLimit`).
const MAX_STAGES: usize = 1000;

/// A parsed pipeline; stages run in order over the whole input.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pipeline {
    stages: Vec<(String, Stage)>,
}

#[derive(Debug, Clone)]
enum Stage {
    Match(Filter),
    Project(Projection),
    AddFields(Vec<(String, Expr)>),
    Sort(SortSpec),
    Limit(usize),
    Skip(usize),
    Group(Box<Group>),
    Count(String),
    Unwind(Unwind),
    ReplaceRoot(Expr),
    Lookup(Box<Lookup>),
    UnionWith(Box<UnionWith>),
    /// `$facet`: each named pipeline over all the input, into one document of arrays.
    Facet(Vec<(String, Pipeline)>),
}

/// Every stage the server runs, sorted by name: those [`Pipeline::parse`] builds, and the ones
/// the `aggregate` command (`cmd/aggregate.rs`) takes off the pipeline before parsing it:
/// `$changeStream` and `$documents` as the first stage, `$out` and `$merge` as the last. The
/// unit tests hold `parse_stage` to this list, and `serverStatus`'s `aggStageCounters` reports
/// exactly these names.
pub(crate) const STAGE_NAMES: [&str; 20] = [
    "$addFields",
    "$changeStream",
    "$count",
    "$documents",
    "$facet",
    "$group",
    "$limit",
    "$lookup",
    "$match",
    "$merge",
    "$out",
    "$project",
    "$replaceRoot",
    "$replaceWith",
    "$set",
    "$skip",
    "$sort",
    "$unionWith",
    "$unset",
    "$unwind",
];

/// MongoDB stages this server knows of but does not run.
const UNSUPPORTED: [&str; 9] = [
    "$graphLookup",
    "$bucket",
    "$bucketAuto",
    "$sample",
    "$geoNear",
    "$sortByCount",
    "$setWindowFields",
    "$densify",
    "$fill",
];

impl Pipeline {
    /// Parses the stages. An unknown stage is `Location40324` ("Unrecognized
    /// pipeline stage name: '$foo'"); known but unsupported stages (and
    /// `$changeStream`, which the server handles itself) are `NotImplemented`.
    pub(crate) fn parse(stages: &[Bson]) -> CommandResult<Pipeline> {
        if stages.len() > MAX_STAGES {
            return Err(CommandError::new(
                ErrorCode::PipelineTooLong,
                format!("Pipeline length must be no longer than {MAX_STAGES} stages"),
            ));
        }
        let stages = stages
            .iter()
            .map(|s| {
                let Bson::Document(d) = s else {
                    return Err(CommandError::type_mismatch(
                        "Each element of the 'pipeline' array must be an object",
                    ));
                };
                let (name, arg) =
                    match d.iter().next() {
                        Some(entry) if d.len() == 1 => entry,
                        _ => return Err(CommandError::bad_value(
                            "A pipeline stage specification object must contain exactly one field.",
                        )),
                    };
                Ok((name.clone(), parse_stage(name, arg)?))
            })
            .collect::<CommandResult<_>>()?;
        Ok(Pipeline { stages })
    }

    /// The collections `$lookup` and `$unionWith` stages read, each loaded once through `load`
    /// (a collection of the same database; a missing one is empty) before the pipeline runs.
    pub(crate) fn resolve(
        &mut self,
        load: &mut dyn FnMut(&str) -> CommandResult<Vec<Document>>,
    ) -> CommandResult<()> {
        for (_, stage) in &mut self.stages {
            match stage {
                Stage::Lookup(lookup) => lookup.foreign = load(&lookup.from)?,
                Stage::UnionWith(union) => union.foreign = load(&union.coll)?,
                Stage::Facet(facets) => {
                    for (_, pipeline) in facets {
                        pipeline.resolve(load)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether a stage reads another collection (`$lookup`, `$unionWith`).
    fn reads_other_collections(&self) -> bool {
        self.stages.iter().any(|(_, s)| match s {
            Stage::Lookup(_) | Stage::UnionWith(_) => true,
            Stage::Facet(facets) => facets.iter().any(|(_, p)| p.reads_other_collections()),
            _ => false,
        })
    }

    /// Parses the stages of a pipeline-style update: only `$addFields`/`$set`, `$project`,
    /// `$unset` and `$replaceRoot`/`$replaceWith` may appear (any other is `InvalidOptions`,
    /// "… is not allowed to be used within an update", as mongod says).
    pub(crate) fn parse_update(stages: &[Bson]) -> CommandResult<Pipeline> {
        const ALLOWED: [&str; 6] = [
            "$addFields",
            "$set",
            "$project",
            "$unset",
            "$replaceRoot",
            "$replaceWith",
        ];
        for stage in stages {
            let Some(name) = stage.as_document().and_then(|d| d.keys().next()) else {
                continue; // `parse` below names what is wrong with it
            };
            if !ALLOWED.contains(&name.as_str()) {
                // An unknown stage is unknown here too (40324); a known one is not allowed.
                if let Err(e) = Self::parse(std::slice::from_ref(stage)) {
                    if e.code == ErrorCode::UnrecognizedPipelineStage {
                        return Err(e);
                    }
                }
                return Err(CommandError::new(
                    ErrorCode::InvalidOptions,
                    format!("{name} is not allowed to be used within an update"),
                ));
            }
        }
        Self::parse(stages)
    }

    /// Runs the pipeline over documents produced by `feed`, one at a time: the stages before
    /// the first blocking one (`$sort`, `$group`, `$count`, `$unionWith`) handle each document as it comes,
    /// and the blocking stage accumulates only what it needs (a `$group` its groups, a
    /// `$count` a number), so a `countDocuments` over a large collection holds no documents.
    /// The rest of the pipeline then runs as [`Pipeline::run`] does. `feed` stops early when
    /// its callback returns false (a `$limit` has been reached).
    pub(crate) fn run_streamed(
        &self,
        feed: impl FnOnce(&mut dyn FnMut(Document) -> CommandResult<bool>) -> CommandResult<()>,
        deadline: &Deadline,
    ) -> CommandResult<Vec<Document>> {
        let split = self
            .stages
            .iter()
            .position(|(_, s)| {
                // `$unionWith` appends once, after all the input, and `$facet` runs over all of
                // it: they wait like a sort.
                matches!(
                    s,
                    Stage::Sort(_)
                        | Stage::Group(_)
                        | Stage::Count(_)
                        | Stage::UnionWith(_)
                        | Stage::Facet(_)
                )
            })
            .unwrap_or(self.stages.len());
        let (front, rest) = self.stages.split_at(split);
        let mut skipped = vec![0usize; front.len()];
        let mut passed = vec![0usize; front.len()];
        let mut sink = Sink::new(rest.first().map(|(_, s)| s));
        {
            let mut on_doc = |doc: Document| -> CommandResult<bool> {
                deadline.check()?;
                let mut current = vec![doc];
                for (i, (name, stage)) in front.iter().enumerate() {
                    let mut next = Vec::with_capacity(current.len());
                    for d in current {
                        match stage {
                            Stage::Skip(n) if skipped[i] < *n => skipped[i] += 1,
                            Stage::Limit(n) if passed[i] >= *n => {}
                            Stage::Skip(_) => next.push(d),
                            Stage::Limit(_) => {
                                passed[i] += 1;
                                next.push(d);
                            }
                            other => next.extend(other.run(vec![d], name, deadline)?),
                        }
                    }
                    current = next;
                }
                for d in current {
                    sink.add(d)?;
                }
                // Once a `$limit` is full nothing more gets through it: stop reading.
                let limited = front
                    .iter()
                    .zip(&passed)
                    .any(|((_, s), passed)| matches!(s, Stage::Limit(n) if passed >= n));
                Ok(!limited)
            };
            feed(&mut on_doc)?;
        }
        let (docs, consumed) = sink.finish();
        let rest = if consumed { &rest[1..] } else { rest };
        rest.iter()
            .try_fold(docs, |docs, (name, stage)| stage.run(docs, name, deadline))
    }

    /// Runs the pipeline; expression errors (e.g. `$divide` by zero) fail the whole run.
    ///
    /// Stages run over the whole working set in memory, so what a stage builds (documents,
    /// groups, unwound copies) is held to [`crate::limits::BLOCKING_STAGE_BYTES`]
    /// (`QueryExceededMemoryLimitNoDiskUseAllowed` past it), and `deadline` is checked as
    /// documents go through.
    pub(crate) fn run(
        &self,
        input: Vec<Document>,
        deadline: &Deadline,
    ) -> CommandResult<Vec<Document>> {
        self.stages
            .iter()
            .try_fold(input, |docs, (name, stage)| stage.run(docs, name, deadline))
    }
}

fn parse_stage(name: &str, arg: &Bson) -> CommandResult<Stage> {
    let object = |what: &str| match arg {
        Bson::Document(d) => Ok(d),
        _ => Err(CommandError::bad_value(format!(
            "{what} specification must be an object"
        ))),
    };
    Ok(match name {
        "$match" => Stage::Match(Filter::parse(object("$match")?)?),
        "$project" => Stage::Project(Projection::parse_kind(object("$project")?, ProjectionKind::Aggregate)?),
        "$addFields" | "$set" => {
            let mut fields = Vec::new();
            flatten_fields(object(name)?, "", &mut fields)?;
            Stage::AddFields(fields)
        }
        "$unset" => {
            let names = match arg {
                Bson::String(s) => vec![s.clone()],
                Bson::Array(items) if !items.is_empty() => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            if names.is_empty() {
                return Err(CommandError::bad_value("$unset specification must be a string or an array of strings"));
            }
            let spec: Document = names.into_iter().map(|n| (n, Bson::Int32(0))).collect();
            Stage::Project(Projection::parse_kind(&spec, ProjectionKind::Aggregate)?)
        }
        "$sort" => {
            let spec = SortSpec::parse(object("$sort")?)?;
            if spec.is_empty() {
                return Err(CommandError::bad_value("$sort stage must have at least one sort key"));
            }
            Stage::Sort(spec)
        }
        "$limit" => match as_integral(arg) {
            Some(n) if n > 0 => Stage::Limit(usize::try_from(n).unwrap_or(usize::MAX)),
            Some(_) => return Err(CommandError::bad_value("the limit must be positive")),
            None => return Err(CommandError::bad_value("the limit must be specified as a number")),
        },
        "$skip" => match as_integral(arg) {
            Some(n) if n >= 0 => Stage::Skip(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => {
                return Err(CommandError::bad_value(format!(
                    "invalid argument to $skip stage: Expected a non-negative number in: $skip: {arg}"
                )))
            }
        },
        "$group" => Stage::Group(Box::new(Group::parse(arg)?)),
        "$count" => match arg {
            Bson::String(s) if !s.is_empty() && !s.starts_with('$') && !s.contains('.') => Stage::Count(s.clone()),
            _ => {
                return Err(CommandError::bad_value(
                    "the count field must be a non-empty string that does not start with '$' or contain '.'",
                ))
            }
        },
        "$unwind" => Stage::Unwind(Unwind::parse(arg)?),
        "$lookup" => Stage::Lookup(Box::new(Lookup::parse(object("$lookup")?)?)),
        "$unionWith" => Stage::UnionWith(Box::new(UnionWith::parse(arg)?)),
        "$facet" => Stage::Facet(facet::parse(object("$facet")?)?),
        "$replaceRoot" => match object("$replaceRoot")?.get("newRoot") {
            Some(root) => Stage::ReplaceRoot(Expr::parse(root)?),
            None => return Err(CommandError::bad_value("no newRoot specified for the $replaceRoot stage")),
        },
        "$replaceWith" => Stage::ReplaceRoot(Expr::parse(arg)?),
        // The `aggregate` command takes a final one off before parsing (`cmd::aggregate`).
        "$out" | "$merge" => {
            return Err(CommandError::new(
                ErrorCode::WriteStageNotLast,
                format!("{name} can only be the final stage in the pipeline"),
            ))
        }
        _ if UNSUPPORTED.contains(&name) || name == "$changeStream" => {
            return Err(CommandError::new(
                ErrorCode::NotImplemented,
                format!("the {name} stage is not supported here"),
            ))
        }
        _ => {
            return Err(CommandError::new(
                ErrorCode::UnrecognizedPipelineStage,
                format!("Unrecognized pipeline stage name: '{name}'"),
            ))
        }
    })
}

/// `$addFields` entries; sub-documents without operators merge into
/// embedded documents, so they are flattened into dotted paths.
fn flatten_fields(
    spec: &Document,
    prefix: &str,
    out: &mut Vec<(String, Expr)>,
) -> CommandResult<()> {
    for (k, v) in spec {
        if k.is_empty() || k.starts_with('$') || k.split('.').any(str::is_empty) {
            return Err(CommandError::bad_value(format!(
                "Invalid $addFields field name '{k}'"
            )));
        }
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        path::check_length(&full)?;
        match v {
            Bson::Document(d) if !d.is_empty() && !super::filter::is_operator_doc(v) => {
                flatten_fields(d, &full, out)?
            }
            _ => out.push((full, Expr::parse(v)?)),
        }
    }
    Ok(())
}

/// Sets (or with `None`, removes) `p` as `$addFields` does: through arrays
/// every element gets the field, and non-documents on the way become documents.
fn add_field(doc: &mut Document, p: &str, v: Option<&Bson>) {
    let (head, rest) = split_first(p);
    let Some(rest) = rest else {
        match v {
            Some(v) => doc.insert(head, v.clone()),
            None => doc.remove(head),
        };
        return;
    };
    match doc.get_mut(head) {
        Some(Bson::Document(sub)) => add_field(sub, rest, v),
        Some(Bson::Array(items)) => items
            .iter_mut()
            .for_each(|item| add_to_value(item, rest, v)),
        _ if v.is_none() => {}
        _ => {
            let mut sub = Document::new();
            add_field(&mut sub, rest, v);
            doc.insert(head, sub);
        }
    }
}

fn add_to_value(item: &mut Bson, p: &str, v: Option<&Bson>) {
    match item {
        Bson::Document(sub) => add_field(sub, p, v),
        Bson::Array(items) => items.iter_mut().for_each(|i| add_to_value(i, p, v)),
        other => {
            let mut sub = Document::new();
            add_field(&mut sub, p, v);
            *other = Bson::Document(sub);
        }
    }
}

/// Where the streaming front of a pipeline delivers: the first blocking stage's accumulator,
/// or (with no blocking stage) the result.
enum Sink<'p> {
    Group(Groups<'p>),
    Count(&'p str, usize),
    Docs(Output),
}

impl<'p> Sink<'p> {
    fn new(first_blocking: Option<&'p Stage>) -> Self {
        match first_blocking {
            Some(Stage::Group(g)) => Sink::Group(Groups::new(g)),
            Some(Stage::Count(name)) => Sink::Count(name, 0),
            Some(Stage::Sort(_)) => Sink::Docs(Output::new("$sort", 0)),
            _ => Sink::Docs(Output::new("aggregate", 0)),
        }
    }

    fn add(&mut self, doc: Document) -> CommandResult<()> {
        match self {
            Sink::Group(g) => g.add(&doc),
            Sink::Count(_, n) => {
                *n += 1;
                Ok(())
            }
            Sink::Docs(out) => out.push(doc),
        }
    }

    /// The documents delivered, and whether the blocking stage has already been applied.
    fn finish(self) -> (Vec<Document>, bool) {
        match self {
            Sink::Group(g) => (g.finish(), true),
            Sink::Count(_, 0) => (Vec::new(), true),
            Sink::Count(name, n) => {
                let n = i32::try_from(n).map_or_else(
                    |_| Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX)),
                    Bson::Int32,
                );
                let mut out = Document::new();
                out.insert(name, n);
                (vec![out], true)
            }
            Sink::Docs(out) => (out.docs, false),
        }
    }
}

/// Collects a stage's output documents within the stage's memory budget.
struct Output {
    docs: Vec<Document>,
    budget: MemoryBudget,
}

impl Output {
    fn new(stage: &'static str, capacity: usize) -> Self {
        Self {
            docs: Vec::with_capacity(capacity),
            budget: MemoryBudget::new(stage),
        }
    }

    fn push(&mut self, doc: Document) -> CommandResult<()> {
        self.budget.add(&doc)?;
        self.docs.push(doc);
        Ok(())
    }
}

/// The stage name as a `'static` label for memory errors.
fn label(name: &str) -> &'static str {
    match name {
        "$project" => "$project",
        "$unset" => "$unset",
        "$addFields" => "$addFields",
        "$set" => "$set",
        "$group" => "$group",
        "$unwind" => "$unwind",
        "$replaceRoot" => "$replaceRoot",
        "$replaceWith" => "$replaceWith",
        _ => "pipeline stage",
    }
}

/// Refuses `$out` and `$merge` in the sub-pipeline of stage `within` with mongod's `code`.
fn refuse_write_stages(stages: &[Bson], code: ErrorCode, within: &str) -> CommandResult<()> {
    let names = stages
        .iter()
        .filter_map(|s| s.as_document().and_then(|d| d.keys().next()));
    match names
        .into_iter()
        .find(|n| matches!(n.as_str(), "$out" | "$merge"))
    {
        Some(name) => Err(CommandError::new(
            code,
            format!("{name} is not allowed within a {within}'s sub-pipeline"),
        )),
        None => Ok(()),
    }
}

impl Stage {
    fn run(
        &self,
        mut docs: Vec<Document>,
        name: &str,
        deadline: &Deadline,
    ) -> CommandResult<Vec<Document>> {
        match self {
            Stage::Match(f) => {
                let mut kept = Vec::with_capacity(docs.len());
                for d in docs {
                    deadline.check()?;
                    if f.matches(&d)? {
                        kept.push(d);
                    }
                }
                return Ok(kept);
            }
            Stage::Project(p) => {
                let mut out = Output::new(label(name), docs.len());
                for d in &docs {
                    deadline.check()?;
                    out.push(p.apply(d)?)?;
                }
                return Ok(out.docs);
            }
            Stage::AddFields(fields) => {
                let mut budget = MemoryBudget::new(label(name));
                for d in &mut docs {
                    deadline.check()?;
                    let values = fields
                        .iter()
                        .map(|(_, e)| e.eval(d))
                        .collect::<CommandResult<Vec<_>>>()?;
                    for ((p, _), v) in fields.iter().zip(values) {
                        add_field(d, p, v.as_ref());
                    }
                    budget.add(d)?;
                }
            }
            Stage::Sort(spec) => {
                let mut budget = MemoryBudget::new("$sort");
                for d in &docs {
                    deadline.check()?;
                    budget.add(d)?;
                }
                spec.sort(&mut docs);
            }
            Stage::Limit(n) => docs.truncate(*n),
            Stage::Skip(n) => {
                docs.drain(..docs.len().min(*n));
            }
            Stage::Group(g) => return g.run(&docs, deadline),
            Stage::Count(name) => {
                if docs.is_empty() {
                    return Ok(docs);
                }
                let n = i32::try_from(docs.len()).map_or_else(
                    |_| Bson::Int64(i64::try_from(docs.len()).unwrap_or(i64::MAX)),
                    Bson::Int32,
                );
                let mut out = Document::new();
                out.insert(name.clone(), n);
                return Ok(vec![out]);
            }
            Stage::Unwind(u) => {
                let mut out = Output::new("$unwind", docs.len());
                for d in docs {
                    deadline.check()?;
                    u.run(d, &mut out, deadline)?;
                }
                return Ok(out.docs);
            }
            Stage::Lookup(lookup) => return lookup.run(docs, deadline),
            Stage::Facet(facets) => return facet::run(facets, &docs, deadline),
            Stage::UnionWith(union) => return union.run(docs, deadline),
            Stage::ReplaceRoot(e) => {
                let mut out = Output::new(label(name), docs.len());
                for d in &docs {
                    deadline.check()?;
                    let root = match e.eval(d)? {
                        Some(Bson::Document(root)) => root,
                        v => return Err(CommandError::bad_value(format!(
                            "'newRoot' expression must evaluate to an object, but resulting value was: {}. Type of resulting value: '{}'.",
                            v.as_ref().map_or_else(|| "MISSING".to_owned(), ToString::to_string),
                            v.as_ref().map_or("missing", type_name)
                        ))),
                    };
                    out.push(root)?;
                }
                return Ok(out.docs);
            }
        }
        Ok(docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{bson, doc};

    /// Runs the pipeline `stages` (an array) over `input`.
    pub(super) fn run(stages: Bson, input: Vec<Document>) -> CommandResult<Vec<Document>> {
        let Bson::Array(stages) = stages else {
            panic!("stages must be an array")
        };
        Pipeline::parse(&stages)?.run(input, &Deadline::none())
    }

    /// Four sales documents: `tags` is an array, an empty array, missing and null.
    pub(super) fn sales() -> Vec<Document> {
        vec![
            doc! { "_id": 1, "item": "a", "qty": 2, "price": 10, "tags": ["x", "y"] },
            doc! { "_id": 2, "item": "b", "qty": 1, "price": 20, "tags": [] },
            doc! { "_id": 3, "item": "a", "qty": 5, "price": 10.5 },
            doc! { "_id": 4, "item": "c", "qty": 1, "price": 5, "tags": null },
        ]
    }

    #[test]
    fn count_documents_pipeline_of_the_drivers() {
        let p = bson!([{ "$match": { "qty": { "$gte": 1 } } }, { "$skip": 1 }, { "$limit": 2 }, { "$group": { "_id": 1, "n": { "$sum": 1 } } }]);
        assert_eq!(run(p, sales()).unwrap(), vec![doc! { "_id": 1, "n": 2 }]);
        let p =
            bson!([{ "$match": { "qty": 99 } }, { "$group": { "_id": 1, "n": { "$sum": 1 } } }]);
        assert!(run(p, sales()).unwrap().is_empty());
    }

    #[test]
    fn project_add_fields_unset_replace() {
        let d = vec![
            doc! { "_id": 1, "a": { "b": 1, "c": 2 }, "x": 3, "arr": [{ "k": 1 }, { "k": 2 }] },
        ];
        let p = bson!([{ "$project": { "a.b": 1, "sum": { "$add": ["$x", 1] } } }]);
        assert_eq!(
            run(p, d.clone()).unwrap(),
            vec![doc! { "_id": 1, "a": { "b": 1 }, "sum": 4 }]
        );
        let p = bson!([{ "$addFields": { "a": { "d": "$x" }, "y": "$$REMOVE", "x": { "$literal": 0 } } }, { "$set": { "arr.z": 9 } }]);
        assert_eq!(
            run(p, d.clone()).unwrap(),
            vec![
                doc! { "_id": 1, "a": { "b": 1, "c": 2, "d": 3 }, "x": 0, "arr": [{ "k": 1, "z": 9 }, { "k": 2, "z": 9 }] }
            ]
        );
        let p = bson!([{ "$unset": ["a", "arr"] }]);
        assert_eq!(run(p, d.clone()).unwrap(), vec![doc! { "_id": 1, "x": 3 }]);
        let p = bson!([{ "$replaceRoot": { "newRoot": "$a" } }]);
        assert_eq!(run(p, d.clone()).unwrap(), vec![doc! { "b": 1, "c": 2 }]);
        let p = bson!([{ "$replaceWith": "$x" }]);
        assert_eq!(run(p, d).unwrap_err().code, ErrorCode::BadValue);
    }

    #[test]
    fn count_sort_skip_limit() {
        let p = bson!([{ "$sort": { "qty": -1, "_id": 1 } }, { "$skip": 1 }, { "$limit": 2 }, { "$project": { "_id": 1 } }]);
        assert_eq!(
            run(p, sales()).unwrap(),
            vec![doc! { "_id": 1 }, doc! { "_id": 2 }]
        );
        assert_eq!(
            run(bson!([{ "$count": "n" }]), sales()).unwrap(),
            vec![doc! { "n": 4 }]
        );
        assert!(run(bson!([{ "$count": "n" }]), vec![]).unwrap().is_empty());
    }

    #[test]
    fn stage_errors_and_names() {
        let e = run(bson!([{ "$foo": {} }]), vec![]).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnrecognizedPipelineStage);
        assert_eq!(e.msg, "Unrecognized pipeline stage name: '$foo'");
        assert_eq!(
            run(bson!([{ "$out": "x" }, { "$match": {} }]), vec![])
                .unwrap_err()
                .code,
            ErrorCode::WriteStageNotLast
        );
        assert_eq!(
            run(bson!([{ "$sample": { "size": 1 } }]), vec![])
                .unwrap_err()
                .code,
            ErrorCode::NotImplemented
        );
        assert_eq!(
            run(bson!([{ "$lookup": {} }]), vec![]).unwrap_err().code,
            ErrorCode::FailedToParse
        );
        assert_eq!(
            run(bson!([{ "$limit": 0 }]), vec![]).unwrap_err().code,
            ErrorCode::BadValue
        );
        assert_eq!(
            run(bson!([{ "$skip": -1 }]), vec![]).unwrap_err().code,
            ErrorCode::BadValue
        );
        assert_eq!(
            run(bson!([{ "$unwind": "tags" }]), vec![])
                .unwrap_err()
                .code,
            ErrorCode::BadValue
        );
        assert_eq!(
            run(bson!([{ "$match": {}, "$limit": 1 }]), vec![])
                .unwrap_err()
                .code,
            ErrorCode::BadValue
        );
        assert_eq!(
            run(bson!([{ "$project": { "a": { "$bogus": 1 } } }]), vec![])
                .unwrap_err()
                .code,
            ErrorCode::InvalidPipelineOperator
        );
    }

    /// The stages of [`STAGE_NAMES`] that the `aggregate` command takes off before parsing.
    const TAKEN_BEFORE_PARSE: [&str; 4] = ["$changeStream", "$documents", "$merge", "$out"];

    /// A minimal valid argument for each stage `parse_stage` builds.
    fn minimal_argument(name: &str) -> Option<Bson> {
        Some(match name {
            "$addFields" | "$set" | "$project" => bson!({ "a": 1 }),
            "$count" => bson!("n"),
            "$facet" => bson!({ "f": [] }),
            "$group" => bson!({ "_id": null }),
            "$limit" => bson!(1),
            "$lookup" => {
                bson!({ "from": "c", "localField": "a", "foreignField": "b", "as": "j" })
            }
            "$match" => bson!({}),
            "$replaceRoot" => bson!({ "newRoot": "$a" }),
            "$replaceWith" | "$unwind" => bson!("$a"),
            "$skip" => bson!(0),
            "$sort" => bson!({ "a": 1 }),
            "$unionWith" => bson!("c"),
            "$unset" => bson!("a"),
            _ => return None,
        })
    }

    /// `STAGE_NAMES` is sorted without repeats, `parse_stage` builds each of its stages but the
    /// ones the `aggregate` command takes off first, and refuses those.
    #[test]
    fn stage_names_are_the_stages_parse_stage_builds() {
        assert!(STAGE_NAMES.windows(2).all(|w| w[0] < w[1]));
        for name in STAGE_NAMES {
            if TAKEN_BEFORE_PARSE.contains(&name) {
                assert!(parse_stage(name, &bson!({})).is_err(), "{name}");
                continue;
            }
            let arg = minimal_argument(name).unwrap_or_else(|| panic!("{name}: no argument"));
            if let Err(e) = parse_stage(name, &arg) {
                panic!("{name}: {}", e.msg);
            }
        }
    }

    /// A stage name outside `STAGE_NAMES` is refused, known to mongod or not.
    #[test]
    fn names_outside_stage_names_are_refused() {
        for name in UNSUPPORTED
            .iter()
            .chain(&["$foo", "$search", "$indexStats"])
        {
            assert!(!STAGE_NAMES.contains(name), "{name}");
            assert!(parse_stage(name, &bson!({})).is_err(), "{name}");
        }
    }
}
