//! `$unwind`: one output document per element of an array field.

use bson::{Bson, Document};

use super::Output;
use crate::error::{CommandError, CommandResult};
use crate::limits::Deadline;
use crate::query::path;

/// `$unwind`: the path of the array to unwind (without `$`), `includeArrayIndex` and
/// `preserveNullAndEmptyArrays`.
#[derive(Debug, Clone)]
pub(super) struct Unwind {
    path: String,
    index: Option<String>,
    preserve: bool,
}

impl Unwind {
    /// Parses `$unwind: "$path"` or its document form (`BadValue` for a malformed one).
    pub(super) fn parse(arg: &Bson) -> CommandResult<Unwind> {
        let (path, index, preserve) = match arg {
            Bson::String(p) => (p.as_str(), None, false),
            Bson::Document(d) => {
                if let Some(k) = d.keys().find(|k| {
                    !matches!(
                        k.as_str(),
                        "path" | "includeArrayIndex" | "preserveNullAndEmptyArrays"
                    )
                }) {
                    return Err(CommandError::bad_value(format!(
                        "unrecognized option to $unwind stage: {k}"
                    )));
                }
                let Ok(p) = d.get_str("path") else {
                    return Err(CommandError::bad_value(
                        "no path specified to $unwind stage",
                    ));
                };
                let index = match d.get("includeArrayIndex") {
                    None => None,
                    Some(Bson::String(i)) if !i.is_empty() && !i.starts_with('$') => Some(i.clone()),
                    Some(_) => {
                        return Err(CommandError::bad_value(
                            "includeArrayIndex option to $unwind stage must be a non-empty string not starting with '$'",
                        ))
                    }
                };
                let preserve = match d.get("preserveNullAndEmptyArrays") {
                    None => false,
                    Some(Bson::Boolean(b)) => *b,
                    Some(_) => {
                        return Err(CommandError::bad_value(
                            "expected a boolean for the preserveNullAndEmptyArrays option to $unwind stage",
                        ))
                    }
                };
                (p, index, preserve)
            }
            _ => {
                return Err(CommandError::bad_value(
                    "expected either a string or an object as specification for $unwind stage",
                ))
            }
        };
        path::check_length(path)?;
        match path.strip_prefix('$') {
            Some(p)
                if !p.is_empty() && !p.split('.').any(|c| c.is_empty() || c.starts_with('$')) =>
            {
                Ok(Unwind {
                    path: p.to_owned(),
                    index,
                    preserve,
                })
            }
            _ => Err(CommandError::bad_value(format!(
                "path option to $unwind stage should be prefixed with a '$': {path}"
            ))),
        }
    }

    /// Pushes into `out` one copy of `doc` per element of the array at the path; a non-array
    /// value passes as it is, and a missing, null or empty one only with
    /// `preserveNullAndEmptyArrays`.
    pub(super) fn run(
        &self,
        doc: Document,
        out: &mut Output,
        deadline: &Deadline,
    ) -> CommandResult<()> {
        let with_index = |mut d: Document, i: Bson| -> CommandResult<Document> {
            if let Some(name) = &self.index {
                path::set(&mut d, name, i)?;
            }
            Ok(d)
        };
        match path::get(&doc, &self.path) {
            Some(Bson::Array(items)) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    deadline.check()?;
                    let mut d = doc.clone();
                    path::set(&mut d, &self.path, item.clone())?;
                    out.push(with_index(
                        d,
                        Bson::Int64(i64::try_from(i).unwrap_or(i64::MAX)),
                    )?)?;
                }
            }
            Some(Bson::Array(_)) if self.preserve => {
                let mut d = doc;
                path::remove(&mut d, &self.path);
                out.push(with_index(d, Bson::Null)?)?;
            }
            None | Some(Bson::Null | Bson::Undefined) if self.preserve => {
                out.push(with_index(doc, Bson::Null)?)?
            }
            None | Some(Bson::Array(_) | Bson::Null | Bson::Undefined) => {}
            Some(_) => out.push(with_index(doc, Bson::Null)?)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bson::{bson, doc, Bson};

    use crate::query::aggregate::tests::{run, sales};

    #[test]
    fn unwind_paths_index_and_preserve() {
        let p = bson!([{ "$unwind": "$tags" }]);
        let out = run(p, sales()).unwrap();
        assert_eq!(
            out.iter()
                .map(|d| d.get_str("tags").unwrap())
                .collect::<Vec<_>>(),
            vec!["x", "y"]
        );
        let p = bson!([{ "$unwind": { "path": "$tags", "includeArrayIndex": "i", "preserveNullAndEmptyArrays": true } }]);
        let out = run(p, sales()).unwrap();
        assert_eq!(out.len(), 5);
        assert_eq!(
            out[1],
            doc! { "_id": 1, "item": "a", "qty": 2, "price": 10, "tags": "y", "i": 1i64 }
        );
        assert_eq!(
            out[2],
            doc! { "_id": 2, "item": "b", "qty": 1, "price": 20, "i": null }
        );
        assert_eq!(out[4].get("tags"), Some(&Bson::Null));
    }
}
