//! `let` variables (`$$name`) on `find`, `aggregate`, `update`, `delete` and `findAndModify`.
//!
//! A `let` value is an expression evaluated once per command (it cannot read the documents),
//! so binding is a rewrite of the command before it runs: every `"$$name"` / `"$$name.path"`
//! where an expression is read — inside `$expr` in a filter, in the stages of a pipeline or a
//! pipeline-style update — becomes `{ $literal: <value> }`, and `let` is removed. Elsewhere
//! (a plain equality in a filter, an update operator's value) a string starting with `$$` is
//! data, as in mongod.

use bson::{doc, Bson, Document};

use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::query::expr::{field_value, Expr};

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
    let vars = values(&spec)?;
    match name {
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
        "findAndModify" | "findandmodify" => {
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

fn as_document_mut(value: &mut Bson) -> Option<&mut Document> {
    match value {
        Bson::Document(d) => Some(d),
        _ => None,
    }
}

/// The variables' values: each checked for a valid name (16866–16868, as mongod) and
/// evaluated once (a missing value is null).
fn values(spec: &Document) -> CommandResult<Document> {
    let mut vars = Document::new();
    for (name, value) in spec {
        check_name(name)?;
        let value = Expr::parse(value)?.eval(&Document::new())?;
        vars.insert(name.clone(), value.unwrap_or(Bson::Null));
    }
    Ok(vars)
}

/// A user variable: a lowercase ASCII letter or a non-ASCII character first, then letters,
/// digits, `_` or non-ASCII characters.
fn check_name(name: &str) -> CommandResult<()> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(CommandError::new(
            ErrorCode::VariableNameEmpty,
            "empty variable names are not allowed",
        ));
    };
    if first.is_ascii() && !first.is_ascii_lowercase() {
        return Err(CommandError::new(
            ErrorCode::VariableNameStart,
            format!("'{name}' starts with an invalid character for a user variable name"),
        ));
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || !c.is_ascii())) {
        return Err(CommandError::new(
            ErrorCode::VariableNameChar,
            format!("'{name}' contains an invalid character for a variable name: '{bad}'"),
        ));
    }
    Ok(())
}

/// Binds inside the `$expr` clauses of `filter` (and of its `$and`/`$or`/`$nor`).
fn in_filter(filter: &mut Document, vars: &Document) {
    for (key, value) in filter.iter_mut() {
        match key.as_str() {
            "$expr" => in_expression(value, vars),
            "$and" | "$or" | "$nor" => {
                if let Bson::Array(clauses) = value {
                    for clause in clauses.iter_mut().filter_map(as_document_mut) {
                        in_filter(clause, vars);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Binds in every stage: a `$match` as a filter, any other stage as expressions.
fn in_pipeline(stages: &mut [Bson], vars: &Document) {
    for stage in stages.iter_mut().filter_map(as_document_mut) {
        for (name, arg) in stage.iter_mut() {
            match (name.as_str(), arg) {
                ("$match", Bson::Document(filter)) => in_filter(filter, vars),
                (_, arg) => in_expression(arg, vars),
            }
        }
    }
}

/// Replaces the variable references in an expression (not inside `$literal`). The depth is
/// that of the command, which the wire limits.
fn in_expression(value: &mut Bson, vars: &Document) {
    match value {
        Bson::String(text) => {
            if let Some(bound) = text.strip_prefix("$$").and_then(|r| lookup(r, vars)) {
                *value = bound;
            }
        }
        Bson::Document(d) if !d.contains_key("$literal") => {
            for (_, v) in d.iter_mut() {
                in_expression(v, vars);
            }
        }
        Bson::Array(items) => {
            for item in items {
                in_expression(item, vars);
            }
        }
        _ => {}
    }
}

/// `{ $literal: <value> }` for `name` or `name.path` when `name` is a bound variable (a path
/// that leads nowhere is `$$REMOVE`, a missing value).
fn lookup(reference: &str, vars: &Document) -> Option<Bson> {
    let (name, path) = match reference.split_once('.') {
        Some((name, path)) => (name, Some(path)),
        None => (reference, None),
    };
    let value = vars.get(name)?;
    let value = match (path, value) {
        (None, value) => Some(value.clone()),
        (Some(path), Bson::Document(d)) => field_value(d, path),
        (Some(_), _) => None,
    };
    Some(value.map_or_else(
        || Bson::String("$$REMOVE".to_owned()),
        |v| Bson::Document(doc! { "$literal": v }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_mongods_rules() {
        assert!(check_name("limit").is_ok());
        assert!(check_name("x_1").is_ok());
        assert!(check_name("émile").is_ok());
        let code = |name: &str| check_name(name).map_err(|e| e.code).err();
        assert_eq!(code(""), Some(ErrorCode::VariableNameEmpty));
        assert_eq!(code("Limit"), Some(ErrorCode::VariableNameStart));
        assert_eq!(code("_x"), Some(ErrorCode::VariableNameStart));
        assert_eq!(code("a-b"), Some(ErrorCode::VariableNameChar));
    }

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
