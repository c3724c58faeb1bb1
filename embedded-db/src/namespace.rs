//! Database and collection names.

use std::fmt;

use crate::error::{CommandError, CommandResult, ErrorCode};

/// A validated `<db>.<collection>` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Namespace {
    /// Database name: non-empty, without `/\. "$` and NUL.
    pub(crate) db: String,
    /// Collection name: non-empty, no `$` or NUL, not starting with `.`.
    pub(crate) coll: String,
}

impl Namespace {
    /// Builds a namespace, refusing names MongoDB refuses (code 73 InvalidNamespace).
    pub(crate) fn new(db: &str, coll: &str) -> CommandResult<Self> {
        validate_db(db)?;
        if coll.is_empty() || coll.contains(['$', '\0']) || coll.starts_with('.') {
            return Err(CommandError::new(
                ErrorCode::InvalidNamespace,
                format!("Invalid collection name: {coll}"),
            ));
        }
        Ok(Self {
            db: db.to_owned(),
            coll: coll.to_owned(),
        })
    }

    /// Parses `db.collection` (the collection part may contain dots).
    pub(crate) fn parse(full: &str) -> CommandResult<Self> {
        let (db, coll) = full.split_once('.').ok_or_else(|| {
            CommandError::new(
                ErrorCode::InvalidNamespace,
                format!("Invalid namespace specified '{full}'"),
            )
        })?;
        Self::new(db, coll)
    }

    /// The catalog key, `db.collection`.
    pub(crate) fn key(&self) -> String {
        format!("{}.{}", self.db, self.coll)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

/// Checks a database name (code 73 InvalidNamespace when MongoDB would refuse it).
pub(crate) fn validate_db(db: &str) -> CommandResult<()> {
    if db.is_empty() || db.len() > 63 || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(CommandError::new(
            ErrorCode::InvalidNamespace,
            format!("Invalid database name: '{db}'"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let ns = Namespace::parse("app.users.archive").expect("valid");
        assert_eq!(ns.db, "app");
        assert_eq!(ns.coll, "users.archive");
        assert_eq!(ns.to_string(), "app.users.archive");
        for bad in ["nodot", "a b.c", ".c", "db.", "db.$x", "d$b.c"] {
            let err = Namespace::parse(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::InvalidNamespace);
        }
    }
}
