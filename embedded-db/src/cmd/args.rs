//! Reading a command's arguments: the [`Request`] every handler gets, and the typed accessors
//! that turn a wrong type into mongod's error (`TypeMismatch`, `FailedToParse`, `BadValue`).
//!
//! Handlers import from here and from [`super::reply`], never from `cmd.rs` (the dispatcher).

use bson::{Bson, Document};

use crate::db::ConnInfo;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::namespace::Namespace;

/// A command with its target database.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// The command document.
    pub(crate) body: Document,
    /// The database the command runs in: its `$db` argument.
    pub(crate) database: String,
    /// The connection it came on.
    pub(crate) conn: &'a ConnInfo,
}

impl Request<'_> {
    /// The command's value: `{ find: "users" }` → `"users"`.
    pub(crate) fn value(&self) -> &Bson {
        self.body.iter().next().map_or(&Bson::Null, |(_, v)| v)
    }

    /// The collection named by the command's value, in the request's database.
    pub(crate) fn namespace(&self) -> CommandResult<Namespace> {
        match self.value() {
            Bson::String(coll) => Namespace::new(&self.database, coll),
            other => Err(CommandError::new(
                ErrorCode::InvalidNamespace,
                format!(
                    "collection name has invalid type {}",
                    crate::query::compare::type_name(other)
                ),
            )),
        }
    }
}

/// The command name: the first key of the body.
pub(super) fn command_name(body: &Document) -> String {
    body.keys().next().cloned().unwrap_or_default()
}

/// An optional sub-document argument; `TypeMismatch` when present with another type.
pub(super) fn opt_document<'a>(
    body: &'a Document,
    key: &str,
) -> CommandResult<Option<&'a Document>> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d)),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{}', expected type 'object'",
            crate::query::compare::type_name(other)
        ))),
    }
}

/// An optional boolean argument (numbers count as booleans, as `mongod` accepts).
pub(super) fn opt_bool(body: &Document, key: &str) -> CommandResult<Option<bool>> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Boolean(b)) => Ok(Some(*b)),
        Some(Bson::Int32(i)) => Ok(Some(*i != 0)),
        Some(Bson::Int64(i)) => Ok(Some(*i != 0)),
        Some(Bson::Double(f)) => Ok(Some(*f != 0.0)),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{}', expected type 'bool'",
            crate::query::compare::type_name(other)
        ))),
    }
}

/// An optional integral argument (any numeric type holding a whole number).
pub(super) fn opt_i64(body: &Document, key: &str) -> CommandResult<Option<i64>> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Int32(i)) => Ok(Some(i64::from(*i))),
        Some(Bson::Int64(i)) => Ok(Some(*i)),
        #[allow(clippy::cast_possible_truncation)]
        Some(Bson::Double(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Some(*f as i64)),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{}', expected a number",
            crate::query::compare::type_name(other)
        ))),
    }
}

/// An optional non-negative count argument.
pub(super) fn opt_count(body: &Document, key: &str) -> CommandResult<Option<usize>> {
    match opt_i64(body, key)? {
        None => Ok(None),
        Some(n) => usize::try_from(n).map(Some).map_err(|_| {
            CommandError::bad_value(format!(
                "{key} value must be non-negative, but received: {n}"
            ))
        }),
    }
}

/// A required array of documents (`documents`, `updates`, `deletes`, `indexes`).
pub(super) fn documents_arg(body: &Document, key: &str) -> CommandResult<Vec<Document>> {
    let array = match body.get(key) {
        Some(Bson::Array(a)) => a,
        Some(other) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field '{key}' is the wrong type '{}', expected type 'array'",
                crate::query::compare::type_name(other)
            )))
        }
        None => {
            return Err(CommandError::new(
                ErrorCode::FailedToParse,
                format!("BSON field '{key}' is missing but a required field"),
            ))
        }
    };
    array
        .iter()
        .map(|item| match item {
            Bson::Document(d) => Ok(d.clone()),
            other => Err(CommandError::type_mismatch(format!(
                "BSON field '{key}' element is the wrong type '{}', expected type 'object'",
                crate::query::compare::type_name(other)
            ))),
        })
        .collect()
}

/// Keys every command may carry that are not options of the command itself.
pub(super) const GENERIC_ARGUMENTS: &[&str] = &[
    "$db",
    "$clusterTime",
    "$readPreference",
    "lsid",
    "txnNumber",
    "writeConcern",
    "readConcern",
    "comment",
    "maxTimeMS",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
];

/// The command's own options: everything but its name and the generic arguments.
pub(super) fn command_options(body: &Document) -> Document {
    body.iter()
        .skip(1)
        .filter(|(k, _)| !GENERIC_ARGUMENTS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
