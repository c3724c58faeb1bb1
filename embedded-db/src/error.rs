//! Command-level errors: every failure a client can cause ends up as a MongoDB
//! error document `{ ok: 0, errmsg, code, codeName }`, never as a dropped
//! connection or a panic.

use bson::{doc, Document};

/// Declares [`ErrorCode`] from one table: each variant's doc, code and `codeName`, so the enum,
/// [`ErrorCode::name`] and [`ErrorCode::ALL`] cannot drift apart.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $code:literal => $name:literal,)*) => {
        /// MongoDB server error codes this server answers with.
        ///
        /// Values and names are MongoDB's own (`src/mongo/base/error_codes.yml`), so
        /// drivers and applications that match on codes behave as against `mongod`.
        /// Sorted by code (a unit test checks it).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant = $code,)*
        }

        impl ErrorCode {
            /// Every code this server has, in ascending order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The `codeName` MongoDB uses for this code.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

error_codes! {
    /// An unexpected condition inside the server (storage failure and the like).
    InternalError = 1 => "InternalError",
    /// A value in the command is not acceptable.
    BadValue = 2 => "BadValue",
    /// The command or one of its parts could not be parsed.
    FailedToParse = 9 => "FailedToParse",
    /// The command may not run here (an admin-only command on another database).
    Unauthorized = 13 => "Unauthorized",
    /// A value has the wrong BSON type.
    TypeMismatch = 14 => "TypeMismatch",
    /// A number, a document or a path is larger or deeper than allowed.
    Overflow = 15 => "Overflow",
    /// An operation this deployment does not allow (transactions).
    IllegalOperation = 20 => "IllegalOperation",
    /// The collection or database does not exist.
    NamespaceNotFound = 26 => "NamespaceNotFound",
    /// The named index does not exist.
    IndexNotFound = 27 => "IndexNotFound",
    /// A path needed by an update does not exist or cannot be created.
    PathNotViable = 28 => "PathNotViable",
    /// Two update operators touch the same path.
    ConflictingUpdateOperators = 40 => "ConflictingUpdateOperators",
    /// The cursor id is not (or no longer) known.
    CursorNotFound = 43 => "CursorNotFound",
    /// The collection already exists.
    NamespaceExists = 48 => "NamespaceExists",
    /// The operation ran longer than its `maxTimeMS`.
    MaxTimeMSExpired = 50 => "MaxTimeMSExpired",
    /// A field name starts with `$` where that is not allowed.
    DollarPrefixedFieldName = 52 => "DollarPrefixedFieldName",
    /// A field name is empty or otherwise invalid.
    InvalidIdField = 53 => "InvalidIdField",
    /// An update cannot be applied to a value of this type.
    NotSingleValueField = 54 => "NotSingleValueField",
    /// The command name is not known.
    CommandNotFound = 59 => "CommandNotFound",
    /// An update would change `_id`.
    ImmutableField = 66 => "ImmutableField",
    /// An option is not valid (unknown parameter, dropping `_id_`, …).
    InvalidOptions = 72 => "InvalidOptions",
    /// The namespace name is not valid.
    InvalidNamespace = 73 => "InvalidNamespace",
    /// A write concern names a tag the replica set does not have.
    UnknownReplWriteConcern = 79 => "UnknownReplWriteConcern",
    /// An index with this key already exists under another name or options.
    IndexOptionsConflict = 85 => "IndexOptionsConflict",
    /// An index with this name already exists with another key.
    IndexKeySpecsConflict = 86 => "IndexKeySpecsConflict",
    /// The server is shutting down.
    ShutdownInProgress = 91 => "ShutdownInProgress",
    /// A write concern asks for more members than the replica set has.
    UnsatisfiableWriteConcern = 100 => "UnsatisfiableWriteConcern",
    /// A document failed the collection's validator.
    DocumentValidationFailure = 121 => "DocumentValidationFailure",
    /// Open cursors hold as much memory as they may.
    ExceededMemoryLimit = 146 => "ExceededMemoryLimit",
    /// An expression operator is not known.
    InvalidPipelineOperator = 168 => "InvalidPipelineOperator",
    /// An array field indexed together with another array field.
    CannotIndexParallelArrays = 171 => "CannotIndexParallelArrays",
    /// A cursor's collection was dropped while it was open.
    QueryPlanKilled = 175 => "QueryPlanKilled",
    /// An index specification carries a field mongod does not define.
    InvalidIndexSpecificationOption = 197 => "InvalidIndexSpecificationOption",
    /// A retry names a transaction number older than the session's newest.
    TransactionTooOld = 225 => "TransactionTooOld",
    /// The operation is not implemented by this server.
    NotImplemented = 238 => "NotImplemented",
    /// A read at a snapshot older than the history kept.
    SnapshotTooOld = 239 => "SnapshotTooOld",
    /// The resume token cannot be used in this way (invalidate with `resumeAfter`).
    InvalidResumeToken = 260 => "InvalidResumeToken",
    /// `configureFailPoint` names a fail point this server does not have.
    FailPointSetFailed = 266 => "FailPointSetFailed",
    /// The change stream cannot continue from the given position.
    ChangeStreamFatalError = 280 => "ChangeStreamFatalError",
    /// The resume point is older than the kept change history.
    ChangeStreamHistoryLost = 286 => "ChangeStreamHistoryLost",
    /// A blocking sort or a grouping needed more memory than allowed.
    QueryExceededMemoryLimitNoDiskUseAllowed = 292 => "QueryExceededMemoryLimitNoDiskUseAllowed",
    /// An OP_QUERY command other than the handshake.
    UnsupportedOpQueryCommand = 352 => "UnsupportedOpQueryCommand",
    /// The message or document exceeds the size limits.
    BsonObjectTooLarge = 10334 => "BSONObjectTooLarge",
    /// A unique index would hold the same key twice.
    DuplicateKey = 11000 => "DuplicateKey",
    /// `$merge` with `whenNotMatched: "fail"` met a document with no match.
    MergeNoMatchingDocument = 13113 => "MergeStageNoMatchingDocument",
    /// A `$group` specification is invalid.
    GroupSpecification = 15947 => "Location15947",
    /// A `$group` accumulator is not known.
    UnknownGroupOperator = 15952 => "Location15952",
    /// An expression operator got the wrong number of arguments.
    ExpressionArity = 16020 => "Location16020",
    /// `$size` takes a non-negative whole number.
    BadSizeArgument = 16810 => "Location16810",
    /// A `let` variable has an empty name.
    VariableNameEmpty = 16866 => "Location16866",
    /// A `let` variable name starts with something other than a lowercase letter.
    VariableNameStart = 16867 => "Location16867",
    /// A `let` variable name holds something other than letters, digits and `_`.
    VariableNameChar = 16868 => "Location16868",
    /// `$out` takes a collection name or `{db, coll}`.
    OutBadArgument = 16990 => "Location16990",
    /// The expression operator `$size` was given something other than an array.
    SizeArgumentNotArray = 17124 => "Location17124",
    /// `$out` cannot write to a `system.` collection.
    OutSpecialCollection = 17385 => "Location17385",
    /// A projection names a path and a path inside it.
    ProjectionPathCollision = 31250 => "Location31250",
    /// An inclusion (or computed field) in an exclusion projection.
    ProjectionInclusionInExclusion = 31253 => "Location31253",
    /// An exclusion in an inclusion projection.
    ProjectionExclusionInInclusion = 31254 => "Location31254",
    /// `$merge` cannot write to a `system.` collection.
    MergeSpecialCollection = 31319 => "Location31319",
    /// `$out`/`$merge` inside a `$unionWith` pipeline.
    WriteStageInUnionWith = 31441 => "Location31441",
    /// A pipeline stage is not known or not allowed here.
    UnrecognizedPipelineStage = 40324 => "Location40324",
    /// `$mergeObjects` met an input that is not a document.
    MergeObjectsNotObject = 40400 => "Location40400",
    /// A required field of a stage or command is missing.
    MissingField = 40414 => "Location40414",
    /// A command or statement carries a field the command does not define.
    UnknownField = 40415 => "Location40415",
    /// A stage that cannot run inside `$facet`.
    FacetStageNotAllowed = 40600 => "Location40600",
    /// `$out`/`$merge` must be the last stage of the pipeline.
    WriteStageNotLast = 40601 => "Location40601",
    /// `$changeStream` must be the first stage.
    ChangeStreamNotFirst = 40602 => "Location40602",
    /// A resume token could not be parsed.
    ChangeStreamBadResumeToken = 40647 => "Location40647",
    /// `$out`/`$merge` inside a `$lookup` pipeline.
    WriteStageInLookup = 51047 => "Location51047",
    /// A `$merge` result lacks an `on` field (or holds null or an array there).
    MergeOnFieldInvalid = 51132 => "Location51132",
    /// `$merge`'s `into` is not a string or a document.
    MergeBadInto = 51178 => "Location51178",
    /// `$merge`'s `on` fields are not covered by a unique index.
    MergeOnNotUnique = 51183 => "Location51183",
    /// `$merge`'s `on` is not a string or an array of strings.
    MergeBadOn = 51186 => "Location51186",
    /// `$merge`'s `whenMatched` is not a string or a pipeline.
    MergeBadWhenMatched = 51191 => "Location51191",
    /// `$merge`'s `let` needs a pipeline `whenMatched`.
    MergeLetWithoutPipeline = 51199 => "Location51199",
    /// A pipeline has more stages than allowed.
    PipelineTooLong = 7749501 => "Location7749501",
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The variant whose numeric code is `code`, if this server has one.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL
            .binary_search_by_key(&code, |c| c.code())
            .ok()
            .map(|i| Self::ALL[i])
    }
}

/// `mongod`'s `codeName` for any numeric code: the [`ErrorCode`] name when this server has
/// the code, else the name from MongoDB's `error_codes.yml` for the codes drivers retry or
/// resume on (what fail points are mostly set to), else `Location<code>`, which is what
/// `mongod` itself reports for a code it has no name for.
pub fn code_name(code: i32) -> std::borrow::Cow<'static, str> {
    if let Some(known) = ErrorCode::from_code(code) {
        return known.name().into();
    }
    let name = match code {
        6 => "HostUnreachable",
        7 => "HostNotFound",
        89 => "NetworkTimeout",
        112 => "WriteConflict",
        133 => "FailedToSatisfyReadPreference",
        134 => "ReadConcernMajorityNotAvailableYet",
        150 => "StaleEpoch",
        189 => "PrimarySteppedDown",
        216 => "ElectionInProgress",
        234 => "RetryChangeStream",
        251 => "NoSuchTransaction",
        262 => "ExceededTimeLimit",
        9001 => "SocketException",
        10058 => "LegacyNotPrimary",
        10107 => "NotWritablePrimary",
        11600 => "InterruptedAtShutdown",
        11601 => "Interrupted",
        11602 => "InterruptedDueToReplStateChange",
        13388 => "StaleConfig",
        13435 => "NotPrimaryNoSecondaryOk",
        13436 => "NotPrimaryOrSecondary",
        _ => return format!("Location{code}").into(),
    };
    name.into()
}

/// A failed command: becomes `{ ok: 0, errmsg, code, codeName }` (plus
/// `errorLabels` when set) in the reply. Never closes the connection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{msg} ({})", code.name())]
pub struct CommandError {
    /// The MongoDB error code.
    pub code: ErrorCode,
    /// Human-readable message (`errmsg`).
    pub msg: String,
    /// Error labels such as `NonResumableChangeStreamError`.
    pub labels: Vec<&'static str>,
    /// Extra fields merged into the error reply (for example `keyValue` on duplicate keys);
    /// boxed so that `Result<_, CommandError>` stays small on the hot path.
    pub extra: Option<Box<Document>>,
}

impl CommandError {
    /// An error with `code` and message `msg`.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            labels: Vec::new(),
            extra: None,
        }
    }

    /// Shorthand for [`ErrorCode::BadValue`].
    pub fn bad_value(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadValue, msg)
    }

    /// Shorthand for [`ErrorCode::TypeMismatch`].
    pub fn type_mismatch(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::TypeMismatch, msg)
    }

    /// Shorthand for [`ErrorCode::FailedToParse`].
    pub fn failed_to_parse(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedToParse, msg)
    }

    /// Shorthand for [`ErrorCode::InternalError`]; the message goes to the client, so keep it generic.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, msg)
    }

    /// Adds an error label (for example `NonResumableChangeStreamError`).
    pub fn with_label(mut self, label: &'static str) -> Self {
        self.labels.push(label);
        self
    }

    /// Adds fields to the error document.
    pub fn with_extra(mut self, extra: Document) -> Self {
        self.extra = Some(Box::new(extra));
        self
    }

    /// The error reply document `{ ok: 0, errmsg, code, codeName, errorLabels? }`.
    pub fn to_reply(&self) -> Document {
        let mut reply = doc! {
            "ok": 0.0,
            "errmsg": self.msg.as_str(),
            "code": self.code.code(),
            "codeName": self.code.name(),
        };
        if !self.labels.is_empty() {
            reply.insert("errorLabels", self.labels.clone());
        }
        if let Some(extra) = &self.extra {
            for (k, v) in extra.iter() {
                reply.insert(k.clone(), v.clone());
            }
        }
        reply
    }

    /// The entry for a `writeErrors` array: `{ index, code, codeName, errmsg, ... }`.
    pub fn to_write_error(&self, index: usize) -> Document {
        let mut entry = doc! {
            "index": i32::try_from(index).unwrap_or(i32::MAX),
            "code": self.code.code(),
            "codeName": self.code.name(),
            "errmsg": self.msg.as_str(),
        };
        if let Some(extra) = &self.extra {
            for (k, v) in extra.iter() {
                entry.insert(k.clone(), v.clone());
            }
        }
        entry
    }
}

/// Result of a command or of any step that can fail with a [`CommandError`].
pub type CommandResult<T> = Result<T, CommandError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_carries_code_and_name() {
        let reply =
            CommandError::new(ErrorCode::CommandNotFound, "no such command: 'foo'").to_reply();
        assert_eq!(reply.get_f64("ok").ok(), Some(0.0));
        assert_eq!(reply.get_i32("code").ok(), Some(59));
        assert_eq!(reply.get_str("codeName").ok(), Some("CommandNotFound"));
        assert_eq!(reply.get_str("errmsg").ok(), Some("no such command: 'foo'"));
        assert!(reply.get("errorLabels").is_none());
    }

    #[test]
    fn codes_are_listed_in_ascending_order_once() {
        for pair in ErrorCode::ALL.windows(2) {
            assert!(
                pair[0].code() < pair[1].code(),
                "{:?} ({}) is listed before {:?} ({})",
                pair[0],
                pair[0].code(),
                pair[1],
                pair[1].code()
            );
        }
    }

    #[test]
    fn every_code_round_trips() {
        for &known in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(known.code()), Some(known));
            assert_eq!(code_name(known.code()), known.name());
        }
    }

    #[test]
    fn codes_round_trip_and_unknown_codes_get_a_generic_name() {
        for code in [1, 2, 13, 59, 91, 266, 11000, 40647] {
            let known = ErrorCode::from_code(code).expect("listed");
            assert_eq!(known.code(), code);
            assert_eq!(code_name(code), known.name());
        }
        assert_eq!(ErrorCode::from_code(10107), None);
        assert_eq!(code_name(10107), "NotWritablePrimary");
        assert_eq!(code_name(4_242_424), "Location4242424");
    }

    #[test]
    fn labels_and_extra_fields_are_merged() {
        let reply = CommandError::new(ErrorCode::ChangeStreamHistoryLost, "lost")
            .with_label("NonResumableChangeStreamError")
            .with_extra(doc! { "keyValue": { "a": 1 } })
            .to_reply();
        assert_eq!(reply.get_array("errorLabels").map(Vec::len).ok(), Some(1));
        assert!(reply.get_document("keyValue").is_ok());
    }
}
