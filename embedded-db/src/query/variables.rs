//! Binding variables (`$$name`) to values in what reads expressions: `$expr` in filters, the
//! stages of pipelines and pipeline-style updates. A bound reference becomes
//! `{ $literal: <value> }`; elsewhere (a plain equality, an update operator's value) a string
//! starting with `$$` is data, as in mongod. Used for `let` on commands, in `$lookup` and in
//! `$merge`.
//!
//! This is the pure layer (names, values, the rewrite of filters and pipelines). The command
//! layer is `cmd/variables.rs`: it takes a command's `let` off its body and says which of the
//! command's fields are rewritten.

use bson::{doc, Bson, Document};

use super::expr::{field_value, Expr};
use crate::error::{CommandError, CommandResult, ErrorCode};

/// The values of the variables `spec` defines, each checked for a valid name (16866–16868,
/// as mongod) and evaluated against `doc` (a missing value is null).
pub(crate) fn values(spec: &Document, doc: &Document) -> CommandResult<Document> {
    let mut vars = Document::new();
    for (name, value) in spec {
        check_name(name)?;
        let value = Expr::parse(value)?.eval(doc)?;
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
pub(crate) fn in_filter(filter: &mut Document, vars: &Document) {
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
pub(crate) fn in_pipeline(stages: &mut [Bson], vars: &Document) {
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

/// The document in `value`, if it is one.
pub(crate) fn as_document_mut(value: &mut Bson) -> Option<&mut Document> {
    match value {
        Bson::Document(d) => Some(d),
        _ => None,
    }
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
}
