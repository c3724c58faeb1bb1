//! The read phase every command shares: the documents of a collection that match a filter,
//! streamed from one storage snapshot with the command's deadline checked per document.
//!
//! `find`, `count`, `distinct` and `aggregate` read through it, and so does a write
//! statement's optimistic read phase ([`search`]). It knows no command: arguments arrive
//! parsed.

use std::sync::Arc;

use bson::{doc, Document};

use crate::db::Db;
use crate::error::CommandResult;
use crate::keys;
use crate::limits::{Deadline, MemoryBudget};
use crate::namespace::Namespace;
use crate::query::filter::Filter;
use crate::query::sort::SortSpec;
use crate::storage::{CollectionMeta, Position, Snapshot};

/// Calls `visit` with each document of `meta` matching `filter` whose `_id` key sorts after
/// `after` (empty: from the start), in `_id` order, with its key and stored size, until
/// `visit` returns false. An `_id` equality is a point lookup. Checks `deadline` per document.
pub(crate) fn for_each_match(
    read: &impl Snapshot,
    meta: &CollectionMeta,
    filter: &Filter,
    deadline: &Deadline,
    after: &[u8],
    mut visit: impl FnMut(&[u8], usize, Document) -> CommandResult<bool>,
) -> CommandResult<()> {
    deadline.check()?;
    if let Some(id) = filter.id_equality() {
        let key = keys::encode(id);
        if after.is_empty() || key.as_slice() > after {
            if let Some(doc) = read.find_by_id(meta, id)? {
                if filter.matches(&doc)? {
                    let size = crate::limits::approx_size(&doc);
                    visit(&key, size, doc)?;
                }
            }
        }
        return Ok(());
    }
    read.for_each_after(meta, after, &mut |key, size, doc| {
        deadline.check()?;
        if filter.matches(&doc)? {
            visit(key, size, doc)
        } else {
            Ok(true)
        }
    })
}

/// The documents of `meta` matching `filter`, in `_id` order, at most `limit` of them.
pub(crate) fn matching(
    read: &impl Snapshot,
    meta: &CollectionMeta,
    filter: &Filter,
    deadline: &Deadline,
    limit: Option<usize>,
) -> CommandResult<Vec<Document>> {
    let mut out = Vec::new();
    if limit == Some(0) {
        return Ok(out);
    }
    for_each_match(read, meta, filter, deadline, &[], |_, _, doc| {
        out.push(doc);
        Ok(limit.is_none_or(|l| out.len() < l))
    })?;
    Ok(out)
}

/// The documents matching `filter` in `sort` order, after skipping `skip`, at most `limit`
/// of them. Only the documents that can still make the cut are held (a top-k with a
/// limit), and they are held to the sort's memory budget.
pub(crate) fn sorted_matches(
    read: &impl Snapshot,
    meta: &CollectionMeta,
    filter: &Filter,
    sort: &SortSpec,
    skip: usize,
    limit: Option<usize>,
    deadline: &Deadline,
) -> CommandResult<Vec<Document>> {
    let keep = limit.map(|l| l.saturating_add(skip));
    let mut budget = MemoryBudget::new("Sort");
    let mut held: Vec<(Document, usize)> = Vec::new();
    for_each_match(read, meta, filter, deadline, &[], |_, size, doc| {
        budget.add_bytes(size)?;
        held.push((doc, size));
        // With a limit, cut back to the best `keep` whenever twice as many are held.
        if let Some(keep) = keep.filter(|k| held.len() > k.saturating_mul(2).max(64)) {
            held.sort_by(|a, b| sort.compare_docs(&a.0, &b.0));
            for (_, size) in held.drain(keep..) {
                budget.release(size);
            }
        }
        Ok(true)
    })?;
    held.sort_by(|a, b| sort.compare_docs(&a.0, &b.0));
    let docs = held.into_iter().map(|(d, _)| d).skip(skip);
    Ok(match limit {
        Some(limit) => docs.take(limit).collect(),
        None => docs.collect(),
    })
}

/// Applies sort, skip and limit to a matched set (the sort is stable).
pub(crate) fn order_and_cut(
    mut docs: Vec<Document>,
    sort: Option<&SortSpec>,
    skip: usize,
    limit: Option<usize>,
) -> Vec<Document> {
    if let Some(sort) = sort {
        docs.sort_by(|a, b| sort.compare_docs(a, b));
    }
    let iter = docs.into_iter().skip(skip);
    match limit {
        Some(limit) => iter.take(limit).collect(),
        None => iter.collect(),
    }
}

/// What a write statement's read phase found on one snapshot.
#[derive(Debug)]
pub(crate) struct Found {
    /// The snapshot's position: the writer trusts `docs` if the collection was not written
    /// after it.
    pub(crate) at: Position,
    /// The matching documents in `sort` (else `_id`) order, at most `limit` of them; for an
    /// unlimited search, only their `_id`s.
    pub(crate) docs: Vec<Document>,
}

/// The read phase of a write statement: the documents of `ns` matching `filter` on a fresh
/// snapshot (with a `limit`, the first ones in `sort` order; without, every match reduced
/// to its `_id`).
pub(crate) async fn search(
    db: &Db,
    ns: &Namespace,
    filter: &Arc<Filter>,
    sort: Option<&SortSpec>,
    limit: Option<usize>,
    deadline: &Deadline,
) -> CommandResult<Found> {
    let (ns, filter, sort, deadline) = (
        ns.clone(),
        Arc::clone(filter),
        sort.cloned(),
        deadline.clone(),
    );
    db.store
        .read(move |read| {
            let at = read.last_position()?;
            let Some(meta) = read.collection(&ns)? else {
                return Ok(Found {
                    at,
                    docs: Vec::new(),
                });
            };
            let docs = match (&sort, limit) {
                (Some(sort), _) => sorted_matches(read, &meta, &filter, sort, 0, limit, &deadline)?,
                (None, Some(_)) => matching(read, &meta, &filter, &deadline, limit)?,
                (None, None) => {
                    let mut ids = Vec::new();
                    for_each_match(read, &meta, &filter, &deadline, &[], |_, _, mut doc| {
                        if let Some(id) = doc.remove("_id") {
                            ids.push(doc! { "_id": id });
                        }
                        Ok(true)
                    })?;
                    ids
                }
            };
            Ok(Found { at, docs })
        })
        .await
}
