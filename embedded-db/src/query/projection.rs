//! Projections for `find` (inclusion, exclusion, `$slice`, `$elemMatch`,
//! positional `.$`, computed fields) and for the `$project` stage.

use bson::{Bson, Document};

use super::compare::truthy;
use super::expr::Expr;
use super::filter::{is_operator_doc, ElemMatch, Filter};
use super::num::Num;
use super::path::split_first;
use crate::error::{CommandError, CommandResult, ErrorCode};

/// A parsed projection, applied to many documents.
#[derive(Debug, Clone, Default)]
pub(crate) struct Projection {
    root: Node,
    inclusion: bool,
    /// The array path of a positional `"arr.$"` projection.
    positional: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    fields: Vec<(String, Action)>,
}

#[derive(Debug, Clone)]
enum Action {
    Include,
    Exclude,
    Slice(Slice),
    ElemMatch(Box<ElemMatch>),
    Positional,
    Computed(Expr),
    Nested(Node),
}

#[derive(Debug, Clone, Copy)]
struct Slice {
    skip: Option<i64>,
    limit: i64,
}

/// Where a projection comes from: `find` allows `$slice`, `$elemMatch` and
/// `.$`; in `$project` every operator document is an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProjectionKind {
    /// A `find` / `findAndModify` projection.
    Find,
    /// A `$project` (or `$unset`) stage.
    Aggregate,
}

impl Projection {
    /// Parses a `find` projection. Mixing inclusion and exclusion (other than
    /// `_id`) is `Location31254`/`Location31253`; overlapping paths are `Location31250`.
    pub(crate) fn parse(spec: &Document) -> CommandResult<Projection> {
        Projection::parse_kind(spec, ProjectionKind::Find)
    }

    /// Parses a projection of the given kind; a `$project` needs at least one field.
    pub(crate) fn parse_kind(spec: &Document, kind: ProjectionKind) -> CommandResult<Projection> {
        if kind == ProjectionKind::Aggregate && spec.is_empty() {
            return Err(CommandError::bad_value(
                "Invalid $project :: caused by :: projection specification must have at least one field",
            ));
        }
        let mut parser = Parser {
            kind,
            root: Node::default(),
            inclusion: None,
            positional: None,
            id_given: false,
        };
        for (key, value) in spec {
            parser.entry(key, value)?;
        }
        // `{_id: 1}` alone is an inclusion projection of `_id` only.
        let id_only = matches!(parser.root.get("_id"), Some(Action::Include));
        let inclusion = parser.inclusion.unwrap_or(id_only);
        if inclusion && !parser.id_given {
            parser
                .root
                .fields
                .insert(0, ("_id".to_owned(), Action::Include));
        }
        Ok(Projection {
            root: parser.root,
            inclusion,
            positional: parser.positional,
        })
    }

    /// True when the projection returns documents unchanged (empty spec).
    pub(crate) fn is_identity(&self) -> bool {
        self.root.fields.is_empty()
    }

    /// Applies the projection. A positional projection fails (`BadValue`) here
    /// because it needs the query; use [`Projection::apply_with_filter`].
    pub(crate) fn apply(&self, doc: &Document) -> CommandResult<Document> {
        self.apply_with_filter(doc, None)
    }

    /// Applies the projection; `filter` is the query, used by `"arr.$"` to pick
    /// the first array element satisfying the query's condition on that array.
    pub(crate) fn apply_with_filter(
        &self,
        doc: &Document,
        filter: Option<&Filter>,
    ) -> CommandResult<Document> {
        if self.is_identity() {
            return Ok(doc.clone());
        }
        let position = match &self.positional {
            None => None,
            Some(p) => Some(filter.and_then(|f| f.positional_index(doc, p)).ok_or_else(|| {
                CommandError::bad_value(
                    "Executor error during find command :: caused by :: positional operator '.$' couldn't find a matching element in the array",
                )
            })?),
        };
        if self.inclusion {
            include_doc(
                doc,
                &self.root,
                &Ctx {
                    root: doc,
                    position,
                },
            )
        } else {
            Ok(exclude_doc(doc, &self.root))
        }
    }
}

struct Parser {
    kind: ProjectionKind,
    root: Node,
    inclusion: Option<bool>,
    positional: Option<String>,
    id_given: bool,
}

impl Parser {
    fn entry(&mut self, path: &str, value: &Bson) -> CommandResult<()> {
        let find = self.kind == ProjectionKind::Find;
        let action = match value {
            Bson::Boolean(_)
            | Bson::Int32(_)
            | Bson::Int64(_)
            | Bson::Double(_)
            | Bson::Decimal128(_) => {
                if truthy(value) {
                    Action::Include
                } else {
                    Action::Exclude
                }
            }
            Bson::Document(d) if is_operator_doc(value) => {
                match d.keys().next().map(String::as_str) {
                    Some("$slice") if find => {
                        Action::Slice(parse_slice(d.get("$slice").unwrap_or(&Bson::Null))?)
                    }
                    Some("$elemMatch") if find => match d.get("$elemMatch") {
                        _ if path.contains('.') => {
                            return Err(CommandError::bad_value(
                                "Cannot use $elemMatch projection on a nested field.",
                            ))
                        }
                        Some(Bson::Document(em)) => {
                            Action::ElemMatch(Box::new(ElemMatch::parse(em)?))
                        }
                        _ => {
                            return Err(CommandError::bad_value(
                                "elemMatch: Invalid argument, object required.",
                            ))
                        }
                    },
                    Some("$meta") => {
                        return Err(CommandError::new(
                            ErrorCode::NotImplemented,
                            "$meta projections are not supported",
                        ))
                    }
                    _ => Action::Computed(Expr::parse(value)?),
                }
            }
            Bson::Document(d) if d.is_empty() => {
                return Err(CommandError::bad_value(format!(
                "An empty sub-projection is not a valid value. Found empty object at path {path}"
            )))
            }
            Bson::Document(d) => {
                for (k, v) in d {
                    self.entry(&format!("{path}.{k}"), v)?;
                }
                return Ok(());
            }
            other => Action::Computed(Expr::parse(other)?),
        };
        let (path, action) = match path.strip_suffix(".$") {
            Some(array) if find => {
                if !matches!(action, Action::Include) || self.positional.is_some() {
                    return Err(CommandError::bad_value(
                        "Cannot specify more than one positional projection per query, nor exclude with one.",
                    ));
                }
                self.positional = Some(array.to_owned());
                (array, Action::Positional)
            }
            _ => (path, action),
        };
        super::path::check_length(path)?;
        if path.is_empty() || path.split('.').any(|p| p.is_empty() || p.starts_with('$')) {
            return Err(CommandError::bad_value(format!(
                "Invalid projection field name '{path}'"
            )));
        }
        let is_id = path == "_id";
        self.id_given |= is_id;
        let wants = match action {
            Action::Include | Action::Exclude if is_id => None,
            Action::Exclude => Some(false),
            Action::Slice(_) | Action::Nested(_) => None,
            Action::Include | Action::ElemMatch(_) | Action::Positional | Action::Computed(_) => {
                Some(true)
            }
        };
        match (self.inclusion, wants) {
            (Some(true), Some(false)) => {
                return Err(CommandError::new(
                    ErrorCode::ProjectionExclusionInInclusion,
                    format!("Cannot do exclusion on field {path} in inclusion projection"),
                ))
            }
            (Some(false), Some(true)) => {
                return Err(CommandError::new(
                    ErrorCode::ProjectionInclusionInExclusion,
                    format!("Cannot do inclusion on field {path} in exclusion projection"),
                ))
            }
            (None, w @ Some(_)) => self.inclusion = w,
            _ => {}
        }
        self.root.insert(path, path, action)
    }
}

fn parse_slice(v: &Bson) -> CommandResult<Slice> {
    let int = |b: &Bson| Num::from_bson(b).map(Num::trunc_i64);
    match v {
        Bson::Array(items) => match items.as_slice() {
            [skip, limit] => match (int(skip), int(limit)) {
                (Some(_), Some(l)) if l <= 0 => {
                    Err(CommandError::bad_value("$slice limit must be positive"))
                }
                (Some(s), Some(l)) => Ok(Slice {
                    skip: Some(s),
                    limit: l,
                }),
                _ => Err(CommandError::bad_value("$slice arguments must be numbers")),
            },
            _ => Err(CommandError::bad_value(
                "$slice array argument must be of form [skip, limit]",
            )),
        },
        other => int(other)
            .map(|limit| Slice { skip: None, limit })
            .ok_or_else(|| {
                CommandError::bad_value("$slice only supports numbers and [skip, limit] arrays")
            }),
    }
}

impl Slice {
    fn apply(self, v: &Bson) -> Bson {
        let Bson::Array(items) = v else {
            return v.clone();
        };
        let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
        let from_end = |n: i64| len.saturating_add(n).max(0);
        let (start, count) = match self.skip {
            None if self.limit >= 0 => (0, self.limit),
            None => (from_end(self.limit), len),
            Some(s) if s < 0 => (from_end(s), self.limit),
            Some(s) => (s, self.limit),
        };
        let to_usize = |n: i64| usize::try_from(n).unwrap_or(usize::MAX);
        Bson::Array(
            items
                .iter()
                .skip(to_usize(start))
                .take(to_usize(count))
                .cloned()
                .collect(),
        )
    }
}

impl Node {
    fn get(&self, key: &str) -> Option<&Action> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, a)| a)
    }

    fn has_computed(&self) -> bool {
        self.fields.iter().any(|(_, a)| match a {
            Action::Computed(_) => true,
            Action::Nested(n) => n.has_computed(),
            _ => false,
        })
    }

    fn insert(&mut self, full: &str, path: &str, action: Action) -> CommandResult<()> {
        let (head, rest) = split_first(path);
        let existing = self.fields.iter_mut().find(|(k, _)| k == head);
        match (existing, rest) {
            (Some((_, Action::Nested(child))), Some(rest)) => child.insert(full, rest, action),
            (Some(_), _) => Err(CommandError::new(
                ErrorCode::ProjectionPathCollision,
                format!("Path collision at {full}"),
            )),
            (None, None) => {
                self.fields.push((head.to_owned(), action));
                Ok(())
            }
            (None, Some(rest)) => {
                let mut child = Node::default();
                child.insert(full, rest, action)?;
                self.fields.push((head.to_owned(), Action::Nested(child)));
                Ok(())
            }
        }
    }
}

struct Ctx<'a> {
    root: &'a Document,
    position: Option<usize>,
}

fn include_doc(d: &Document, node: &Node, ctx: &Ctx<'_>) -> CommandResult<Document> {
    let mut out = Document::new();
    for (k, v) in d {
        let value = match node.get(k) {
            None | Some(Action::Exclude | Action::Computed(_)) => None,
            Some(Action::Include) => Some(v.clone()),
            Some(Action::Nested(child)) => include_value(v, child, ctx)?,
            Some(Action::Slice(s)) => Some(s.apply(v)),
            Some(Action::ElemMatch(em)) => match v {
                Bson::Array(items) => items
                    .iter()
                    .find(|e| em.matches_element(e))
                    .map(|e| Bson::Array(vec![e.clone()])),
                _ => None,
            },
            Some(Action::Positional) => match (v, ctx.position) {
                (Bson::Array(items), Some(i)) => items.get(i).map(|e| Bson::Array(vec![e.clone()])),
                _ => Some(v.clone()),
            },
        };
        if let Some(value) = value {
            out.insert(k.clone(), value);
        }
    }
    for (k, action) in &node.fields {
        match action {
            Action::Computed(e) => {
                if let Some(v) = e.eval(ctx.root)? {
                    out.insert(k.clone(), v);
                }
            }
            Action::Nested(child) if !out.contains_key(k) && child.has_computed() => {
                out.insert(k.clone(), include_doc(&Document::new(), child, ctx)?);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Inclusion below a field: documents are projected, arrays element-wise
/// (scalars inside them dropped), other scalars disappear.
fn include_value(v: &Bson, child: &Node, ctx: &Ctx<'_>) -> CommandResult<Option<Bson>> {
    Ok(match v {
        Bson::Document(d) => Some(Bson::Document(include_doc(d, child, ctx)?)),
        Bson::Array(items) => Some(Bson::Array(
            items
                .iter()
                .filter_map(|e| include_value(e, child, ctx).transpose())
                .collect::<CommandResult<_>>()?,
        )),
        _ => None,
    })
}

fn exclude_doc(d: &Document, node: &Node) -> Document {
    let mut out = Document::new();
    for (k, v) in d {
        let value = match node.get(k) {
            Some(Action::Exclude) => continue,
            Some(Action::Nested(child)) => exclude_value(v, child),
            Some(Action::Slice(s)) => s.apply(v),
            _ => v.clone(),
        };
        out.insert(k.clone(), value);
    }
    out
}

fn exclude_value(v: &Bson, child: &Node) -> Bson {
    match v {
        Bson::Document(d) => Bson::Document(exclude_doc(d, child)),
        Bson::Array(items) => Bson::Array(items.iter().map(|e| exclude_value(e, child)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn p(spec: &Document, d: &Document) -> Document {
        Projection::parse(spec).unwrap().apply(d).unwrap()
    }

    fn sample() -> Document {
        doc! { "_id": 1, "a": 1, "b": { "c": 2, "d": 3 }, "arr": [{ "x": 1, "y": 2 }, 5, { "y": 3 }], "n": [1, 2, 3, 4, 5] }
    }

    #[test]
    fn inclusion_keeps_id_and_document_order() {
        let d = sample();
        assert_eq!(
            p(&doc! { "b.c": 1, "a": true }, &d),
            doc! { "_id": 1, "a": 1, "b": { "c": 2 } }
        );
        assert_eq!(p(&doc! { "a": 1, "_id": 0 }, &d), doc! { "a": 1 });
        assert_eq!(
            p(&doc! { "arr.y": 1, "_id": 0 }, &d),
            doc! { "arr": [{ "y": 2 }, { "y": 3 }] }
        );
        assert_eq!(
            p(&doc! { "b": { "d": 1 }, "_id": 0 }, &d),
            doc! { "b": { "d": 3 } }
        );
        assert_eq!(p(&doc! {}, &d), d);
        assert_eq!(p(&doc! { "_id": 1 }, &d), doc! { "_id": 1 });
        assert_eq!(
            p(&doc! { "_id": 0, "n": { "$slice": 1 } }, &d).get("_id"),
            None
        );
    }

    #[test]
    fn exclusion() {
        let d = sample();
        assert_eq!(
            p(&doc! { "b": 0, "arr": 0, "n": 0 }, &d),
            doc! { "_id": 1, "a": 1 }
        );
        assert_eq!(
            p(&doc! { "_id": 0, "arr.x": 0, "b.c": false, "n": 0 }, &d),
            doc! { "a": 1, "b": { "d": 3 }, "arr": [{ "y": 2 }, 5, { "y": 3 }] }
        );
    }

    #[test]
    fn mixing_is_rejected_with_mongod_codes() {
        let e = Projection::parse(&doc! { "a": 1, "b": 0 }).unwrap_err();
        assert_eq!(e.code, ErrorCode::ProjectionExclusionInInclusion);
        assert_eq!(e.code.code(), 31254);
        let e = Projection::parse(&doc! { "a": 0, "b": 1 }).unwrap_err();
        assert_eq!(e.code.code(), 31253);
        let e = Projection::parse(&doc! { "a": 1, "a.b": 1 }).unwrap_err();
        assert_eq!(e.code.code(), 31250);
        assert!(Projection::parse(&doc! { "a": 1, "_id": 0 }).is_ok());
        assert!(Projection::parse(&doc! { "a": 0, "_id": 1 }).is_ok());
    }

    #[test]
    fn slices() {
        let d = sample();
        let n = |spec: Bson| {
            p(
                &doc! { "n": { "$slice": spec }, "_id": 0, "a": 0, "b": 0, "arr": 0 },
                &d,
            )
        };
        assert_eq!(n(2.into()), doc! { "n": [1, 2] });
        assert_eq!(n((-2).into()), doc! { "n": [4, 5] });
        assert_eq!(n(bson::bson!([1, 2])), doc! { "n": [2, 3] });
        assert_eq!(n(bson::bson!([-2, 5])), doc! { "n": [4, 5] });
        assert_eq!(n(bson::bson!([10, 5])), doc! { "n": [] });
        assert_eq!(
            p(&doc! { "a": 1, "n": { "$slice": 1 } }, &d),
            doc! { "_id": 1, "a": 1, "n": [1] }
        );
        assert!(Projection::parse(&doc! { "n": { "$slice": [1, 0] } }).is_err());
    }

    #[test]
    fn elem_match_and_positional() {
        let d = doc! { "_id": 1, "g": [{ "s": 1, "v": 80 }, { "s": 2, "v": 90 }, { "s": 2, "v": 95 }], "k": 7 };
        assert_eq!(
            p(&doc! { "g": { "$elemMatch": { "s": 2 } } }, &d),
            doc! { "_id": 1, "g": [{ "s": 2, "v": 90 }] }
        );
        let f = Filter::parse(&doc! { "g.v": { "$gt": 85 } }).unwrap();
        let proj = Projection::parse(&doc! { "g.$": 1 }).unwrap();
        assert_eq!(
            proj.apply_with_filter(&d, Some(&f)).unwrap(),
            doc! { "_id": 1, "g": [{ "s": 2, "v": 90 }] }
        );
        assert_eq!(proj.apply(&d).unwrap_err().code, ErrorCode::BadValue);
    }

    #[test]
    fn computed_fields() {
        let d = sample();
        assert_eq!(
            p(
                &doc! { "_id": 0, "x": "$b.c", "lit": { "$literal": 1 }, "a": 1 },
                &d
            ),
            doc! { "a": 1, "x": 2, "lit": 1 }
        );
        assert_eq!(
            p(&doc! { "_id": 0, "q.r": "$a" }, &d),
            doc! { "q": { "r": 1 } }
        );
        let agg =
            Projection::parse_kind(&doc! { "s": { "$size": "$n" } }, ProjectionKind::Aggregate)
                .unwrap();
        assert_eq!(agg.apply(&d).unwrap(), doc! { "_id": 1, "s": 5 });
        assert!(Projection::parse_kind(&doc! {}, ProjectionKind::Aggregate).is_err());
    }
}
