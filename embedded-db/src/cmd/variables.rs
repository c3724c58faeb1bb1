//! `let` variables (`$$name`) on `find`, `aggregate`, `update`, `delete` and `findAndModify`.
//!
//! A `let` value is an expression evaluated once per command (it cannot read the documents),
//! so binding is a rewrite of the command before it runs: every `"$$name"` / `"$$name.path"`
//! where an expression is read — inside `$expr` in a filter, in the stages of a pipeline or a
//! pipeline-style update — becomes `{ $literal: <value> }`, and `let` is removed. Elsewhere
//! (a plain equality in a filter, an update operator's value) a string starting with `$$` is
//! data, as in mongod.

use bson::{Bson, Document};

use crate::error::{CommandError, CommandResult};
use crate::query::variables::{as_document_mut, in_filter, in_pipeline, values};

/// `body` with its `let` variables bound (see the module docs); `body` itself when it has
/// none.
pub(super) fn bind(name: &str, mut body: Document) -> CommandResult<Document> {
    let Some(spec) = body.remove("let") else {
        return Ok(body);
    };
    if matches!(spec, Bson::Null) {
        return Ok(body);
    }
    let Bson::Document(spec) = spec else {
        return Err(CommandError::type_mismatch(
            "BSON field 'let' is the wrong type, expected type 'object'",
        ));
    };
    let vars = values(&spec, &Document::new())?;
    match crate::command_names::canonical(name) {
        "find" => {
            if let Some(Bson::Document(filter)) = body.get_mut("filter") {
                in_filter(filter, &vars);
            }
        }
        "aggregate" => {
            if let Some(Bson::Array(stages)) = body.get_mut("pipeline") {
                in_pipeline(stages, &vars);
            }
        }
        "update" | "delete" => {
            let key = if name == "update" {
                "updates"
            } else {
                "deletes"
            };
            if let Some(Bson::Array(statements)) = body.get_mut(key) {
                for statement in statements.iter_mut().filter_map(as_document_mut) {
                    if let Some(Bson::Document(q)) = statement.get_mut("q") {
                        in_filter(q, &vars);
                    }
                    if let Some(Bson::Array(stages)) = statement.get_mut("u") {
                        in_pipeline(stages, &vars);
                    }
                }
            }
        }
        "findAndModify" => {
            if let Some(Bson::Document(query)) = body.get_mut("query") {
                in_filter(query, &vars);
            }
            if let Some(Bson::Array(stages)) = body.get_mut("update") {
                in_pipeline(stages, &vars);
            }
        }
        _ => {}
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    #[test]
    fn only_expressions_are_bound() {
        let body = doc! {
            "find": "c",
            "filter": { "s": "$$x", "$expr": { "$eq": ["$s", "$$x"] }, "$or": [{ "$expr": "$$y.a" }] },
            "let": { "x": "v", "y": { "a": true } },
        };
        let bound = bind("find", body).expect("bound");
        assert!(!bound.contains_key("let"));
        assert_eq!(
            bound.get_document("filter").expect("filter"),
            &doc! {
                "s": "$$x",
                "$expr": { "$eq": ["$s", { "$literal": "v" }] },
                "$or": [{ "$expr": { "$literal": true } }],
            }
        );
        let pipeline = doc! {
            "aggregate": "c",
            "pipeline": [{ "$set": { "k": "$$x", "kept": { "$literal": "$$x" } } }],
            "let": { "x": { "$add": [1, 2] } },
        };
        let bound = bind("aggregate", pipeline).expect("bound");
        assert_eq!(
            bound.get_array("pipeline").expect("pipeline")[0],
            Bson::Document(
                doc! { "$set": { "k": { "$literal": 3 }, "kept": { "$literal": "$$x" } } }
            )
        );
    }
}
