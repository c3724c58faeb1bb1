//! Collection options: which `create` and `collMod` accept, and document validation
//! (`validator`, `validationLevel`, `validationAction`) as mongod applies it.
//!
//! An option embedded-db does not honour is refused with `NotImplemented` (238), an unknown
//! one with `Location40415` as mongod 7.0's command parser does: nothing is accepted and
//! then ignored.

use bson::{doc, Bson, Document};

use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::query::filter::Filter;

/// Options `create` honours.
const CREATE_SUPPORTED: &[&str] = &[
    "changeStreamPreAndPostImages",
    "validator",
    "validationLevel",
    "validationAction",
    // Checked by the generic collation rule: only `{locale: "simple"}` passes.
    "collation",
];

/// Options of mongod's `create` that embedded-db does not honour.
const CREATE_REFUSED: &[&str] = &[
    "capped",
    "size",
    "max",
    "autoIndexId",
    "idIndex",
    "storageEngine",
    "indexOptionDefaults",
    "viewOn",
    "pipeline",
    "timeseries",
    "clusteredIndex",
    "expireAfterSeconds",
    "encryptedFields",
    "recordIdsReplicated",
    "temp",
    "flags",
];

/// Options `collMod` honours.
const COLL_MOD_SUPPORTED: &[&str] = &[
    "changeStreamPreAndPostImages",
    "validator",
    "validationLevel",
    "validationAction",
];

/// Options of mongod's `collMod` that embedded-db does not honour.
const COLL_MOD_REFUSED: &[&str] = &[
    "index",
    "expireAfterSeconds",
    "viewOn",
    "pipeline",
    "timeseries",
    "cappedSize",
    "cappedMax",
    "recordIdsReplicated",
    "clusteredIndex",
    "prepareUnique",
    "dryRun",
];

/// Checks the options of `command` (`create` or `collMod`): every one is honoured, or the
/// command fails before doing anything. Falsy values of refused options (`capped: false`)
/// ask for nothing and pass.
pub(crate) fn check_options(command: &str, options: &Document) -> CommandResult<()> {
    let (supported, refused) = match command {
        "create" => (CREATE_SUPPORTED, CREATE_REFUSED),
        _ => (COLL_MOD_SUPPORTED, COLL_MOD_REFUSED),
    };
    for (key, value) in options {
        if supported.contains(&key.as_str()) {
            continue;
        }
        if refused.contains(&key.as_str()) {
            if matches!(value, Bson::Null | Bson::Boolean(false)) {
                continue;
            }
            return Err(CommandError::new(
                ErrorCode::NotImplemented,
                format!("the '{key}' option of {command} is not supported by embedded-db"),
            ));
        }
        return Err(CommandError::new(
            ErrorCode::UnknownField,
            format!("BSON field '{command}.{key}' is an unknown field."),
        ));
    }
    Validator::from_options(options).map(|_| ())
}

/// Whether a validator applies to every write or only to documents that were valid before.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    Off,
    Strict,
    Moderate,
}

/// A collection's validator: a query filter every stored document must match.
#[derive(Debug)]
pub(crate) struct Validator {
    filter: Filter,
    level: Level,
    /// `validationAction: "warn"`: log instead of refusing.
    warn: bool,
}

impl Validator {
    /// The validator a write applies to a collection with `options`: none with
    /// `bypassDocumentValidation`.
    pub(crate) fn for_write(options: &Document, bypass: bool) -> CommandResult<Option<Self>> {
        if bypass {
            return Ok(None);
        }
        Self::from_options(options)
    }

    /// The validator described by collection options, or `None` when there is none (or
    /// its level is `off`). Query operators and `$expr` are supported; `$jsonSchema` is
    /// refused with `NotImplemented`, as the filter parser refuses it.
    pub(crate) fn from_options(options: &Document) -> CommandResult<Option<Self>> {
        let level = match options.get("validationLevel") {
            None | Some(Bson::Null) => Level::Strict,
            Some(Bson::String(s)) if s == "strict" => Level::Strict,
            Some(Bson::String(s)) if s == "moderate" => Level::Moderate,
            Some(Bson::String(s)) if s == "off" => Level::Off,
            Some(other) => {
                return Err(CommandError::bad_value(format!(
                    "Enumeration value '{other}' for field 'validationLevel' is not a valid value."
                )))
            }
        };
        let warn = match options.get("validationAction") {
            None | Some(Bson::Null) => false,
            Some(Bson::String(s)) if s == "error" => false,
            Some(Bson::String(s)) if s == "warn" => true,
            Some(other) => {
                return Err(CommandError::bad_value(format!(
                    "Enumeration value '{other}' for field 'validationAction' is not a valid value."
                )))
            }
        };
        let filter = match options.get("validator") {
            None | Some(Bson::Null) => return Ok(None),
            Some(Bson::Document(d)) if d.is_empty() => return Ok(None),
            Some(Bson::Document(d)) => Filter::parse(d)?,
            Some(_) => {
                return Err(CommandError::type_mismatch(
                    "BSON field 'validator' is the wrong type, expected type 'object'",
                ))
            }
        };
        Ok((level != Level::Off).then_some(Self {
            filter,
            level,
            warn,
        }))
    }

    /// Checks a document about to be stored; `old` is the document it replaces (`None` for an
    /// insert). With `moderate`, a document that was already invalid may stay invalid.
    pub(crate) fn check(&self, new: &Document, old: Option<&Document>) -> CommandResult<()> {
        if self.filter.matches(new)? {
            return Ok(());
        }
        if self.level == Level::Moderate {
            if let Some(old) = old {
                if !self.filter.matches(old)? {
                    return Ok(());
                }
            }
        }
        let id = new.get("_id").cloned().unwrap_or(Bson::Null);
        if self.warn {
            tracing::warn!(document_id = %id, "document failed validation; stored because validationAction is warn");
            return Ok(());
        }
        Err(
            CommandError::new(ErrorCode::DocumentValidationFailure, "Document failed validation")
                .with_extra(doc! {
                    "errInfo": {
                        "failingDocumentId": id,
                        "details": { "operatorName": "$and", "reason": "the document does not match the collection's validator" },
                    }
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_unsupported_options_are_refused() {
        let code = |cmd: &str, o: Document| check_options(cmd, &o).map_err(|e| e.code);
        assert_eq!(
            code("create", doc! { "capped": true, "size": 100 }),
            Err(ErrorCode::NotImplemented)
        );
        assert_eq!(code("create", doc! { "capped": false }), Ok(()));
        assert_eq!(
            code("create", doc! { "bogus": 1 }),
            Err(ErrorCode::UnknownField)
        );
        assert_eq!(
            code(
                "collMod",
                doc! { "index": { "name": "a_1", "hidden": true } }
            ),
            Err(ErrorCode::NotImplemented)
        );
        assert_eq!(
            code("collMod", doc! { "validationLevel": "sideways" }),
            Err(ErrorCode::BadValue)
        );
        assert_eq!(
            code("create", doc! { "validator": { "$jsonSchema": {} } }),
            Err(ErrorCode::NotImplemented)
        );
    }

    #[test]
    fn validator_levels_and_actions() {
        let strict = Validator::from_options(&doc! { "validator": { "n": { "$gte": 0 } } })
            .expect("parses")
            .expect("present");
        assert!(strict.check(&doc! { "_id": 1, "n": 1 }, None).is_ok());
        let err = strict
            .check(&doc! { "_id": 1, "n": -1 }, None)
            .expect_err("invalid");
        assert_eq!(err.code, ErrorCode::DocumentValidationFailure);
        let moderate = Validator::from_options(
            &doc! { "validator": { "n": { "$gte": 0 } }, "validationLevel": "moderate" },
        )
        .expect("parses")
        .expect("present");
        let invalid_before = doc! { "_id": 1, "n": -5 };
        assert!(moderate
            .check(&doc! { "_id": 1, "n": -1 }, Some(&invalid_before))
            .is_ok());
        assert!(moderate
            .check(&doc! { "_id": 1, "n": -1 }, Some(&doc! { "n": 1 }))
            .is_err());
        let off =
            Validator::from_options(&doc! { "validator": { "n": 1 }, "validationLevel": "off" });
        assert!(matches!(off, Ok(None)));
        let warn =
            Validator::from_options(&doc! { "validator": { "n": 1 }, "validationAction": "warn" })
                .expect("parses")
                .expect("present");
        assert!(warn.check(&doc! { "n": 2 }, None).is_ok());
    }
}
