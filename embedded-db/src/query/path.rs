//! Dotted field paths: reading with MongoDB's array semantics for matching,
//! and exact get/set/remove for updates.

use bson::{Bson, Document};

use crate::error::{CommandError, CommandResult, ErrorCode};

/// Most components a field path may have (`mongod`'s maximum BSON depth). Paths are walked
/// component by component, some of it recursively, and a path can build a document as deep as
/// it is long: this bound is what keeps a path like `"a.a.a…"` from exhausting a stack.
pub(crate) const MAX_PATH_COMPONENTS: usize = 200;

/// Fails with `Overflow` (15, "FieldPath is too long", as `mongod`) when `path` has more than
/// [`MAX_PATH_COMPONENTS`] components. Every parser that accepts a field path calls it.
pub(crate) fn check_length(path: &str) -> CommandResult<()> {
    if path.bytes().filter(|b| *b == b'.').count() >= MAX_PATH_COMPONENTS {
        return Err(CommandError::new(
            ErrorCode::Overflow,
            "FieldPath is too long",
        ));
    }
    Ok(())
}

/// Splits `"a.b.c"` into `("a", Some("b.c"))`; a path without dots gives `(path, None)`.
pub(crate) fn split_first(path: &str) -> (&str, Option<&str>) {
    match path.split_once('.') {
        Some((head, tail)) => (head, Some(tail)),
        None => (path, None),
    }
}

/// The array index named by a path component made only of ASCII digits.
pub(crate) fn array_index(part: &str) -> Option<usize> {
    if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

/// Calls `f` for every value the query path `path` reaches in `doc`, stopping
/// (and returning true) as soon as `f` does. Arrays met before the last
/// component are traversed: a numeric component indexes the array, and every
/// document element is also searched for the component. `None` is passed for
/// a branch where the field is missing. Leaf arrays are passed whole; the
/// caller decides whether to look at their elements.
pub(crate) fn any_value<'a, F>(doc: &'a Document, path: &str, f: &mut F) -> bool
where
    F: FnMut(Option<&'a Bson>) -> bool,
{
    let (head, rest) = split_first(path);
    match doc.get(head) {
        None => f(None),
        Some(v) => visit(v, rest, f),
    }
}

fn visit<'a, F>(value: &'a Bson, rest: Option<&str>, f: &mut F) -> bool
where
    F: FnMut(Option<&'a Bson>) -> bool,
{
    let Some(rest) = rest else {
        return f(Some(value));
    };
    match value {
        Bson::Document(d) => any_value(d, rest, f),
        Bson::Array(items) => {
            let (head, tail) = split_first(rest);
            let index = array_index(head);
            if let Some(item) = index.and_then(|i| items.get(i)) {
                if visit(item, tail, f) {
                    return true;
                }
            }
            // A numeric component only looks into element documents that have
            // such a field, so `a.0.b` is not "missing" because of them.
            items.iter().any(|item| match item {
                Bson::Document(d) if index.is_none() || d.contains_key(head) => {
                    any_value(d, rest, f)
                }
                _ => false,
            })
        }
        _ => f(None),
    }
}

/// True when one dotted path equals the other or is a prefix of it by whole
/// components (`a` and `a.b` overlap, `a` and `ab` do not).
pub(crate) fn overlaps(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long.strip_prefix(short)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The value at `path` without array expansion: numeric components index
/// arrays, anything else through a non-document yields `None`.
pub(crate) fn get<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let (head, rest) = split_first(path);
    let first = doc.get(head)?;
    match rest {
        None => Some(first),
        Some(rest) => get_in(first, rest),
    }
}

/// [`get`] starting from any value.
pub(crate) fn get_in<'a>(value: &'a Bson, path: &str) -> Option<&'a Bson> {
    path.split('.').try_fold(value, |cur, part| match cur {
        Bson::Document(d) => d.get(part),
        Bson::Array(items) => items.get(array_index(part)?),
        _ => None,
    })
}

/// The container holding the last component of a path, found by [`slot`].
#[derive(Debug)]
pub(crate) enum Slot<'a> {
    /// A field `key` of a document.
    Field(&'a mut Document, &'a str),
    /// Element `index` of an array (possibly past its end).
    Element(&'a mut Vec<Bson>, usize),
}

impl Slot<'_> {
    /// The current value, if present.
    pub(crate) fn get(&self) -> Option<&Bson> {
        match self {
            Slot::Field(d, k) => d.get(*k),
            Slot::Element(a, i) => a.get(*i),
        }
    }

    /// The current value for in-place change, if present.
    pub(crate) fn get_mut(&mut self) -> Option<&mut Bson> {
        match self {
            Slot::Field(d, k) => d.get_mut(*k),
            Slot::Element(a, i) => a.get_mut(*i),
        }
    }

    /// Stores `value`: an existing field keeps its position, a new one is
    /// appended; an array is padded with nulls up to the index (at most
    /// 1,500,000 of them, else `BadValue`).
    pub(crate) fn set(&mut self, value: Bson) -> CommandResult<()> {
        match self {
            Slot::Field(d, k) => {
                d.insert(*k, value);
            }
            Slot::Element(a, i) => {
                if let Some(e) = a.get_mut(*i) {
                    *e = value;
                } else {
                    check_backfill(a.len(), *i)?;
                    a.resize(*i, Bson::Null);
                    a.push(value);
                }
            }
        }
        Ok(())
    }

    /// Removes a document field; an array element is replaced by null (as `$unset` does).
    pub(crate) fn remove(&mut self) -> Option<Bson> {
        match self {
            Slot::Field(d, k) => d.remove(*k),
            Slot::Element(a, i) => a.get_mut(*i).map(|e| std::mem::replace(e, Bson::Null)),
        }
    }
}

fn not_viable(part: &str, key: &str, value: &Bson) -> CommandError {
    CommandError::new(
        ErrorCode::PathNotViable,
        format!("Cannot create field '{part}' in element {{{key}: {value}}}"),
    )
}

/// How many nulls a write past the end of an array may add (MongoDB's limit).
const MAX_BACKFILL: usize = 1_500_000;

fn check_backfill(len: usize, index: usize) -> CommandResult<()> {
    if index.saturating_sub(len) > MAX_BACKFILL {
        return Err(CommandError::bad_value(format!(
            "can't backfill more than {MAX_BACKFILL} elements"
        )));
    }
    Ok(())
}

enum Container<'a> {
    Doc(&'a mut Document),
    Arr(&'a mut Vec<Bson>),
}

/// Walks to the container of the last component of `path`. With `create`,
/// missing intermediate fields become empty documents and arrays are padded
/// with nulls; a scalar (or a non-numeric component on an array) in the way is
/// `PathNotViable`. Without `create`, such paths give `Ok(None)`.
pub(crate) fn slot<'a>(
    doc: &'a mut Document,
    path: &'a str,
    create: bool,
) -> CommandResult<Option<Slot<'a>>> {
    let (parents, last) = match path.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let blocked = |part: &str, key: &str, value: &Bson| {
        if create {
            Err(not_viable(part, key, value))
        } else {
            Ok(None)
        }
    };
    let mut cur = Container::Doc(doc);
    let mut parts = parents.into_iter().flat_map(|p| p.split('.')).peekable();
    let mut prev = "";
    while let Some(part) = parts.next() {
        let next = parts.peek().copied().unwrap_or(last);
        let child = match cur {
            Container::Doc(d) => {
                if !d.contains_key(part) {
                    if !create {
                        return Ok(None);
                    }
                    d.insert(part, Document::new());
                }
                d.get_mut(part)
            }
            Container::Arr(a) => {
                let Some(i) = array_index(part) else {
                    return blocked(part, prev, &Bson::Array(a.clone()));
                };
                if i >= a.len() {
                    if !create {
                        return Ok(None);
                    }
                    check_backfill(a.len(), i)?;
                    a.resize(i, Bson::Null);
                    a.push(Bson::Document(Document::new()));
                }
                a.get_mut(i)
            }
        };
        cur = match child {
            Some(Bson::Document(d)) => Container::Doc(d),
            Some(Bson::Array(a)) => Container::Arr(a),
            Some(other) => return blocked(next, part, other),
            None => return Ok(None),
        };
        prev = part;
    }
    match cur {
        Container::Doc(d) => Ok(Some(Slot::Field(d, last))),
        Container::Arr(a) => match array_index(last) {
            Some(i) if create => {
                check_backfill(a.len(), i)?;
                Ok(Some(Slot::Element(a, i)))
            }
            Some(i) => Ok(Some(Slot::Element(a, i))),
            None => blocked(last, prev, &Bson::Array(a.clone())),
        },
    }
}

/// Sets `path` to `value`, creating intermediate documents (see [`slot`]).
pub(crate) fn set(doc: &mut Document, path: &str, value: Bson) -> CommandResult<()> {
    match slot(doc, path, true)? {
        Some(mut s) => s.set(value),
        None => Ok(()),
    }
}

/// Removes the field at `path` (an array element becomes null); `None` when absent.
pub(crate) fn remove(doc: &mut Document, path: &str) -> Option<Bson> {
    slot(doc, path, false).ok().flatten()?.remove()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn reached(doc: &Document, path: &str) -> Vec<Option<Bson>> {
        let mut out = Vec::new();
        any_value(doc, path, &mut |v| {
            out.push(v.cloned());
            false
        });
        out
    }

    #[test]
    fn query_paths_traverse_arrays() {
        let d = doc! { "a": [ { "b": 1 }, { "c": 2 }, { "b": [3, 4] }, 7 ] };
        assert_eq!(
            reached(&d, "a.b"),
            vec![
                Some(Bson::Int32(1)),
                None,
                Some(Bson::Array(vec![3.into(), 4.into()]))
            ]
        );
        assert_eq!(reached(&d, "a.0.b"), vec![Some(Bson::Int32(1))]);
        assert_eq!(reached(&d, "x.y"), vec![None]);
        assert_eq!(reached(&doc! { "a": 5 }, "a.b"), vec![None]);
    }

    #[test]
    fn overlapping_paths() {
        assert!(overlaps("a", "a.b"));
        assert!(overlaps("a.b", "a.b"));
        assert!(!overlaps("a", "ab"));
        assert!(!overlaps("a.b", "a.c"));
    }

    #[test]
    fn exact_get_indexes_arrays() {
        let d = doc! { "a": { "b": [ { "c": 1 }, 2 ] } };
        assert_eq!(get(&d, "a.b.0.c"), Some(&Bson::Int32(1)));
        assert_eq!(get(&d, "a.b.1"), Some(&Bson::Int32(2)));
        assert_eq!(get(&d, "a.b.c"), None);
        assert_eq!(get(&d, "a.b.5"), None);
    }

    #[test]
    fn set_creates_and_pads() {
        let mut d = doc! { "a": { "x": 1 }, "arr": [1] };
        set(&mut d, "a.b.c", 5.into()).unwrap();
        set(&mut d, "arr.3", 9.into()).unwrap();
        set(&mut d, "arr.5.z", true.into()).unwrap();
        assert_eq!(
            d,
            doc! { "a": { "x": 1, "b": { "c": 5 } }, "arr": [1, null, null, 9, null, { "z": true }] }
        );
    }

    #[test]
    fn set_through_scalar_is_not_viable() {
        let mut d = doc! { "a": 5, "arr": [1] };
        let e = set(&mut d, "a.b", 1.into()).unwrap_err();
        assert_eq!(e.code, ErrorCode::PathNotViable);
        assert_eq!(e.msg, "Cannot create field 'b' in element {a: 5}");
        assert_eq!(
            set(&mut d, "arr.x", 1.into()).unwrap_err().code,
            ErrorCode::PathNotViable
        );
        assert_eq!(
            set(&mut d, "arr.0.x", 1.into()).unwrap_err().code,
            ErrorCode::PathNotViable
        );
    }

    #[test]
    fn remove_fields_and_elements() {
        let mut d = doc! { "a": { "b": 1, "c": 2 }, "arr": [1, 2] };
        assert_eq!(remove(&mut d, "a.b"), Some(Bson::Int32(1)));
        assert_eq!(remove(&mut d, "arr.0"), Some(Bson::Int32(1)));
        assert_eq!(remove(&mut d, "a.zz.y"), None);
        assert_eq!(d, doc! { "a": { "c": 2 }, "arr": [null, 2] });
    }
}
