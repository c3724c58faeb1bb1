//! Sort specifications (`{a: 1, "b.c": -1}`) and MongoDB's document sort order.

use std::cmp::Ordering;

use bson::{Bson, Document};

use super::compare::compare;
use super::num::as_integral;
use super::path;
use crate::error::{CommandError, CommandResult};

/// A parsed sort specification: keys with their direction, in priority order.
#[derive(Debug, Clone, Default)]
pub(crate) struct SortSpec {
    keys: Vec<(String, bool)>,
}

/// The value a document sorts by for one key.
#[derive(Clone, Copy)]
enum Key<'a> {
    /// An empty array: below null, above MinKey.
    EmptyArray,
    Value(&'a Bson),
}

static NULL: Bson = Bson::Null;

fn key_cmp(a: Key<'_>, b: Key<'_>) -> Ordering {
    match (a, b) {
        (Key::EmptyArray, Key::EmptyArray) => Ordering::Equal,
        (Key::EmptyArray, Key::Value(Bson::MinKey)) => Ordering::Greater,
        (Key::EmptyArray, Key::Value(_)) => Ordering::Less,
        (Key::Value(_), Key::EmptyArray) => key_cmp(b, a).reverse(),
        (Key::Value(x), Key::Value(y)) => compare(x, y),
    }
}

impl SortSpec {
    /// Parses `{field: 1 | -1, ...}` (any numeric type). `{$meta: ...}` and any
    /// other value are `BadValue`. An empty document sorts nothing.
    pub(crate) fn parse(spec: &Document) -> CommandResult<SortSpec> {
        let mut keys = Vec::with_capacity(spec.len());
        for (field, v) in spec {
            super::path::check_length(field)?;
            keys.push(match as_integral(v) {
                Some(1) => (field.clone(), true),
                Some(-1) => (field.clone(), false),
                _ if matches!(v, Bson::Document(d) if d.contains_key("$meta")) => {
                    return Err(CommandError::bad_value(format!(
                        "$meta sort by {field} is not supported by this server"
                    )))
                }
                _ => {
                    return Err(CommandError::bad_value(format!(
                        "bad sort specification: {field} must be 1 or -1, got {v}"
                    )))
                }
            });
        }
        Ok(SortSpec { keys })
    }

    /// True when the specification is exactly `{_id: 1}`: the order storage already returns
    /// documents in (their `_id` keys are encoded in MongoDB's value order).
    pub(crate) fn is_id_ascending(&self) -> bool {
        matches!(self.keys.as_slice(), [(field, true)] if field == "_id")
    }

    /// True when the specification has no keys.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// MongoDB's order of two documents: a missing field sorts as null; an
    /// array sorts by its smallest element ascending and its largest
    /// descending; an empty array sorts before null.
    pub(crate) fn compare_docs(&self, a: &Document, b: &Document) -> Ordering {
        for (field, asc) in &self.keys {
            let o = key_cmp(sort_key(a, field, *asc), sort_key(b, field, *asc));
            if o != Ordering::Equal {
                return if *asc { o } else { o.reverse() };
            }
        }
        Ordering::Equal
    }

    /// Sorts `docs` in place (stable: equal documents keep their order).
    pub(crate) fn sort(&self, docs: &mut [Document]) {
        if !self.is_empty() {
            docs.sort_by(|a, b| self.compare_docs(a, b));
        }
    }
}

fn sort_key<'a>(doc: &'a Document, field: &str, asc: bool) -> Key<'a> {
    let mut best: Option<Key<'a>> = None;
    let mut consider = |k: Key<'a>| {
        let better = best.is_none_or(|cur| {
            let o = key_cmp(k, cur);
            if asc {
                o == Ordering::Less
            } else {
                o == Ordering::Greater
            }
        });
        if better {
            best = Some(k);
        }
    };
    path::any_value(doc, field, &mut |v| {
        match v {
            None => consider(Key::Value(&NULL)),
            Some(Bson::Array(items)) if items.is_empty() => consider(Key::EmptyArray),
            Some(Bson::Array(items)) => items.iter().for_each(|e| consider(Key::Value(e))),
            Some(other) => consider(Key::Value(other)),
        }
        false
    });
    best.unwrap_or(Key::Value(&NULL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use bson::doc;

    fn sorted(spec: &Document, mut docs: Vec<Document>) -> Vec<i32> {
        SortSpec::parse(spec).unwrap().sort(&mut docs);
        docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
    }

    #[test]
    fn parses_directions() {
        assert!(SortSpec::parse(&doc! { "a": 1.0, "b": -1i64 }).is_ok());
        assert!(SortSpec::parse(&doc! { "_id": 1 })
            .unwrap()
            .is_id_ascending());
        assert!(!SortSpec::parse(&doc! { "_id": -1 })
            .unwrap()
            .is_id_ascending());
        assert!(!SortSpec::parse(&doc! { "_id": 1, "a": 1 })
            .unwrap()
            .is_id_ascending());
        for bad in [
            doc! { "a": 0 },
            doc! { "a": 2 },
            doc! { "a": "asc" },
            doc! { "a": { "$meta": "textScore" } },
        ] {
            assert_eq!(SortSpec::parse(&bad).unwrap_err().code, ErrorCode::BadValue);
        }
    }

    #[test]
    fn mixed_types_missing_and_arrays() {
        let docs = vec![
            doc! { "_id": 1, "a": "x" },
            doc! { "_id": 2, "a": 5 },
            doc! { "_id": 3 },
            doc! { "_id": 4, "a": [] },
            doc! { "_id": 5, "a": [7, 1] },
            doc! { "_id": 6, "a": null },
        ];
        assert_eq!(
            sorted(&doc! { "a": 1 }, docs.clone()),
            vec![4, 3, 6, 5, 2, 1]
        );
        assert_eq!(sorted(&doc! { "a": -1 }, docs), vec![1, 5, 2, 3, 6, 4]);
    }

    #[test]
    fn compound_and_dotted_keys() {
        let docs = vec![
            doc! { "_id": 1, "a": 1, "b": { "c": 2 } },
            doc! { "_id": 2, "a": 1, "b": { "c": 3 } },
            doc! { "_id": 3, "a": 0, "b": [{ "c": 9 }, { "c": 1 }] },
        ];
        assert_eq!(
            sorted(&doc! { "a": 1, "b.c": -1 }, docs.clone()),
            vec![3, 2, 1]
        );
        assert_eq!(sorted(&doc! { "b.c": 1 }, docs), vec![3, 1, 2]);
    }
}
