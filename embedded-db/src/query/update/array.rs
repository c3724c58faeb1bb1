//! The array operators: `$push` (with `$each`, `$slice`, `$sort`, `$position`),
//! `$addToSet`, `$pull`, `$pullAll`, `$pop`.

use super::*;

pub(super) fn retain(
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
pub(super) fn with_array(
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
    pub(super) fn apply(&self, arr: &mut Vec<Bson>) -> ArrayChange {
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
    pub(super) fn compare(&self, a: &Bson, b: &Bson) -> Ordering {
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
    pub(super) fn matches(&self, e: &Bson) -> bool {
        match self {
            PullCond::Value(v) => values_equal(e, v),
            PullCond::Match(m) => m.matches_element(e),
        }
    }
}
