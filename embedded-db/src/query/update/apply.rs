//! Applying field updates to a document, recording what changed the way a change
//! stream's `updateDescription` reports it.

use super::*;

#[derive(Default)]
pub(super) struct Changes {
    pub(super) updated: Vec<String>,
    pub(super) removed: Vec<String>,
}

impl Changes {
    pub(super) fn outcome(self, before: &Document, after: &Document) -> UpdateOutcome {
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
pub(super) fn report_path(work: &Document, p: &str) -> String {
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

pub(super) fn set_value(
    work: &mut Document,
    p: &str,
    v: Bson,
    changes: &mut Changes,
) -> CommandResult<()> {
    if path::get(work, p).is_some_and(|old| identical(old, &v)) {
        return Ok(());
    }
    let report = report_path(work, p);
    path::set(work, p, v)?;
    changes.updated.push(report);
    Ok(())
}

/// How an array operator changed its array.
pub(super) enum ArrayChange {
    Unchanged,
    /// Elements were appended after the given old length.
    Appended(usize),
    Rewritten,
}

pub(super) fn apply_op(
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

pub(super) fn id_of(doc: &Document) -> String {
    doc.get("_id")
        .map_or_else(|| "null".to_owned(), ToString::to_string)
}

pub(super) fn through_array(doc: &Document, p: &str) -> bool {
    p.match_indices('.').any(|(i, _)| {
        matches!(
            p.get(..i).and_then(|pre| path::get(doc, pre)),
            Some(Bson::Array(_))
        )
    })
}
