//! Arguments any command may carry and that embedded-db either honours or refuses, never
//! ignores: `maxTimeMS`, `writeConcern`, `readConcern`, `collation`.

use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};

use crate::db::Db;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::Deadline;
use crate::query::compare::type_name;

/// The deadline of a command: `maxTimeMS` (a non-negative integer; 0 or absent means no
/// limit) from now. With the `maxTimeAlwaysTimeOut` fail point on, a command that sets a
/// limit has already run out of time.
pub(crate) fn deadline_of(db: &Db, body: &Document) -> CommandResult<Deadline> {
    let Some(ms) = max_time_ms(body)? else {
        return Ok(Deadline::none());
    };
    if db.max_time_always_times_out() {
        return Ok(Deadline::at(Instant::now()));
    }
    Ok(Deadline::at(Instant::now() + Duration::from_millis(ms)))
}

/// `maxTimeMS` as mongod reads it: a whole non-negative number of milliseconds below 2³¹;
/// 0 means none.
fn max_time_ms(body: &Document) -> CommandResult<Option<u64>> {
    let ms = match body.get("maxTimeMS") {
        None | Some(Bson::Null) => return Ok(None),
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        #[allow(clippy::cast_possible_truncation)]
        Some(Bson::Double(v)) if v.fract() == 0.0 && v.abs() < 9.0e15 => *v as i64,
        Some(other) => {
            return Err(CommandError::bad_value(format!(
                "maxTimeMS must be a number, not {}",
                type_name(other)
            )))
        }
    };
    match u64::try_from(ms) {
        Ok(0) => Ok(None),
        Ok(ms) if ms <= i32::MAX as u64 => Ok(Some(ms)),
        _ => Err(CommandError::bad_value(format!(
            "{ms} value for maxTimeMS is out of range [0, 2147483647]"
        ))),
    }
}

/// Commands that read at `readConcern` level `snapshot` outside a transaction (mongod 5.0+).
const SNAPSHOT_READS: &[&str] = &["find", "aggregate", "distinct"];

/// Checks a command's `readConcern`. Every level is served by one member whose commits are
/// durable (`local`, `available`, `majority`, `linearizable`; `afterClusterTime` is always
/// reached). `snapshot` is for find, aggregate and distinct (72 elsewhere), which then read
/// through [`SnapshotRead`].
pub(crate) fn check_read_concern(command: &str, body: &Document) -> CommandResult<()> {
    let rc = match body.get("readConcern") {
        None | Some(Bson::Null) => return Ok(()),
        Some(Bson::Document(d)) => d,
        Some(other) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'readConcern' is the wrong type '{}', expected type 'object'",
                type_name(other)
            )))
        }
    };
    let level = match rc.get("level") {
        None | Some(Bson::Null) => "local",
        Some(Bson::String(level)) => level.as_str(),
        Some(other) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'readConcern.level' is the wrong type '{}', expected type 'string'",
                type_name(other)
            )))
        }
    };
    if !matches!(
        level,
        "local" | "available" | "majority" | "linearizable" | "snapshot"
    ) {
        return Err(CommandError::bad_value(format!(
            "Enumeration value '{level}' for field 'readConcern.level' is not a valid value."
        )));
    }
    if level == "snapshot" && !SNAPSHOT_READS.contains(&command) {
        return Err(CommandError::new(
            ErrorCode::InvalidOptions,
            format!("Command {command} does not support readConcern level snapshot outside a transaction"),
        ));
    }
    for (key, value) in rc {
        match (key.as_str(), value) {
            ("level" | "provenance", _) => {}
            ("afterClusterTime" | "atClusterTime", Bson::Timestamp(_)) => {}
            ("afterClusterTime" | "atClusterTime", other) => {
                return Err(CommandError::type_mismatch(format!(
                    "BSON field 'readConcern.{key}' is the wrong type '{}', expected type 'timestamp'",
                    type_name(other)
                )))
            }
            _ => {
                return Err(CommandError::new(
                    ErrorCode::UnknownField,
                    format!("BSON field 'readConcern.{key}' is an unknown field."),
                ))
            }
        }
    }
    if rc.contains_key("atClusterTime") && level != "snapshot" {
        return Err(CommandError::new(
            ErrorCode::InvalidOptions,
            "readConcern atClusterTime is only allowed with level snapshot",
        ));
    }
    Ok(())
}

/// A read at `readConcern` level `snapshot` (checked by [`check_read_concern`]): the whole
/// result is read from one storage snapshot, whose cluster time the reply reports as
/// `atClusterTime` (drivers pin a snapshot session's later reads to it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnapshotRead {
    /// The cluster time the client asked to read at.
    at: Option<bson::Timestamp>,
}

impl SnapshotRead {
    /// The snapshot read `body` asks for, if it does.
    pub(crate) fn of(body: &Document) -> Option<SnapshotRead> {
        let rc = body.get_document("readConcern").ok()?;
        (rc.get_str("level").ok()? == "snapshot").then(|| SnapshotRead {
            at: match rc.get("atClusterTime") {
                Some(Bson::Timestamp(at)) => Some(*at),
                _ => None,
            },
        })
    }

    /// Inside the read, on its storage snapshot: the cluster time to report. A requested time
    /// older than the snapshot's newest write is 239 `SnapshotTooOld`, since no history is
    /// kept; a later one is read at the snapshot (nothing was committed in between).
    pub(crate) fn pin(&self, read: &crate::storage::ReadCtx) -> CommandResult<bson::Timestamp> {
        let newest = read.last_position()?;
        match self.at {
            Some(at) if crate::storage::position_of(at) < newest => Err(CommandError::new(
                ErrorCode::SnapshotTooOld,
                format!(
                    "Read timestamp {at} is older than the oldest available timestamp: embedded-db keeps no history"
                ),
            )),
            Some(at) => Ok(at),
            None => Ok(crate::storage::timestamp_of(newest)),
        }
    }
}

/// What a command's `writeConcern` asks for, as far as a one-member replica set can tell.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WriteConcern {
    /// Satisfied by this member alone (`w` 0 or 1, `"majority"`, or no `w`).
    Satisfiable,
    /// `w` above the number of members: the write is applied, the reply carries a
    /// `writeConcernError` 100 (what mongod answers on a one-node replica set).
    TooManyMembers(i64),
    /// A `w` tag the replica set does not define: the write is applied, the reply carries a
    /// `writeConcernError` 79.
    UnknownTag(String),
}

impl WriteConcern {
    /// Parses `writeConcern`; malformed ones fail the command before it does anything.
    pub(crate) fn parse(body: &Document) -> CommandResult<Self> {
        let wc = match body.get("writeConcern") {
            None | Some(Bson::Null) => return Ok(Self::Satisfiable),
            Some(Bson::Document(d)) => d,
            Some(other) => {
                return Err(CommandError::type_mismatch(format!(
                    "BSON field 'writeConcern' is the wrong type '{}', expected type 'object'",
                    type_name(other)
                )))
            }
        };
        for (key, value) in wc {
            let valid = match key.as_str() {
                "w" => matches!(
                    value,
                    Bson::Int32(_)
                        | Bson::Int64(_)
                        | Bson::Double(_)
                        | Bson::String(_)
                        | Bson::Document(_)
                ),
                "j" | "fsync" => matches!(
                    value,
                    Bson::Boolean(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_)
                ),
                "wtimeout" | "wtimeoutMS" => {
                    matches!(value, Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_))
                }
                // Set by mongos and by drivers echoing a server's default.
                "provenance" | "getLastError" => true,
                _ => {
                    return Err(CommandError::new(
                        ErrorCode::FailedToParse,
                        format!("unrecognized write concern field: {key}"),
                    ))
                }
            };
            if !valid {
                return Err(CommandError::new(
                    ErrorCode::FailedToParse,
                    format!(
                        "writeConcern.{key} has an invalid type {}",
                        type_name(value)
                    ),
                ));
            }
        }
        Ok(match wc.get("w") {
            Some(Bson::String(tag)) if tag == "majority" => Self::Satisfiable,
            Some(Bson::String(tag)) => Self::UnknownTag(tag.clone()),
            Some(Bson::Document(_)) => Self::UnknownTag("{...}".to_owned()),
            Some(w) => match crate::query::num::Num::from_bson(w).map(|n| n.trunc_i64()) {
                Some(n) if n < 0 => {
                    return Err(CommandError::new(
                        ErrorCode::FailedToParse,
                        "w has to be a non-negative number and not greater than 50",
                    ))
                }
                Some(n) if n > 50 => {
                    return Err(CommandError::new(
                        ErrorCode::FailedToParse,
                        "w has to be a non-negative number and not greater than 50",
                    ))
                }
                Some(n) if n > 1 => Self::TooManyMembers(n),
                _ => Self::Satisfiable,
            },
            None => Self::Satisfiable,
        })
    }

    /// The `writeConcernError` to add to a reply of a write that was applied.
    pub(crate) fn error(&self) -> Option<Document> {
        let (code, msg) = match self {
            Self::Satisfiable => return None,
            Self::TooManyMembers(_) => (
                ErrorCode::UnsatisfiableWriteConcern,
                "Not enough data-bearing nodes".to_owned(),
            ),
            Self::UnknownTag(tag) => (
                ErrorCode::UnknownReplWriteConcern,
                format!("No write concern mode named '{tag}' found in replica set configuration"),
            ),
        };
        Some(doc! { "code": code.code(), "codeName": code.name(), "errmsg": msg })
    }
}

/// Refuses a `collation` other than `{locale: "simple"}` on the command and on each of its
/// statements or index specifications: embedded-db compares strings by code point only.
pub(crate) fn check_collation(body: &Document) -> CommandResult<()> {
    check_one_collation(body)?;
    for key in ["updates", "deletes", "indexes"] {
        if let Ok(items) = body.get_array(key) {
            for item in items {
                if let Bson::Document(d) = item {
                    check_one_collation(d)?;
                }
            }
        }
    }
    Ok(())
}

fn check_one_collation(d: &Document) -> CommandResult<()> {
    match d.get("collation") {
        None | Some(Bson::Null) => Ok(()),
        Some(Bson::Document(c)) if c.is_empty() || is_simple(c) => Ok(()),
        Some(Bson::Document(_)) => Err(CommandError::new(
            ErrorCode::NotImplemented,
            "collation other than {locale: \"simple\"} is not supported by embedded-db",
        )),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "BSON field 'collation' is the wrong type '{}', expected type 'object'",
            type_name(other)
        ))),
    }
}

fn is_simple(c: &Document) -> bool {
    c.get_str("locale") == Ok("simple") && c.len() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_time_ms_is_validated() {
        assert_eq!(max_time_ms(&doc! {}).ok(), Some(None));
        assert_eq!(max_time_ms(&doc! { "maxTimeMS": 0 }).ok(), Some(None));
        assert_eq!(
            max_time_ms(&doc! { "maxTimeMS": 5_i64 }).ok(),
            Some(Some(5))
        );
        assert_eq!(max_time_ms(&doc! { "maxTimeMS": 7.0 }).ok(), Some(Some(7)));
        for bad in [
            doc! { "maxTimeMS": -1 },
            doc! { "maxTimeMS": "x" },
            doc! { "maxTimeMS": 3_000_000_000_i64 },
        ] {
            assert_eq!(
                max_time_ms(&bad).map_err(|e| e.code),
                Err(ErrorCode::BadValue)
            );
        }
    }

    #[test]
    fn read_concerns_are_served_or_refused() {
        let check = |command: &str, rc: Document| {
            check_read_concern(command, &doc! { "readConcern": rc }).map_err(|e| e.code)
        };
        let at = |time, increment| Bson::Timestamp(bson::Timestamp { time, increment });
        for level in ["local", "available", "majority", "linearizable"] {
            assert_eq!(check("count", doc! { "level": level }), Ok(()));
        }
        assert_eq!(check("find", doc! {}), Ok(()));
        assert_eq!(check("find", doc! { "afterClusterTime": at(1, 1) }), Ok(()));
        assert_eq!(check("find", doc! { "level": "snapshot" }), Ok(()));
        assert_eq!(
            check(
                "aggregate",
                doc! { "level": "snapshot", "atClusterTime": at(100, 5) }
            ),
            Ok(()),
            "checked against the read's own snapshot (SnapshotRead::pin)"
        );
        assert_eq!(
            check("count", doc! { "level": "snapshot" }),
            Err(ErrorCode::InvalidOptions)
        );
        assert_eq!(
            check("find", doc! { "atClusterTime": at(100, 5) }),
            Err(ErrorCode::InvalidOptions)
        );
        assert_eq!(
            check("find", doc! { "level": "sometimes" }),
            Err(ErrorCode::BadValue)
        );
        assert_eq!(
            check("find", doc! { "level": "snapshot", "atClusterTime": 5 }),
            Err(ErrorCode::TypeMismatch)
        );
        assert_eq!(check("find", doc! { "x": 1 }), Err(ErrorCode::UnknownField));
        assert_eq!(
            check_read_concern("find", &doc! { "readConcern": "local" }).map_err(|e| e.code),
            Err(ErrorCode::TypeMismatch)
        );
    }

    #[test]
    fn write_concerns_a_single_member_cannot_meet_are_reported() {
        let parse = |wc: Document| WriteConcern::parse(&doc! { "writeConcern": wc });
        assert_eq!(parse(doc! { "w": 1 }).ok(), Some(WriteConcern::Satisfiable));
        assert_eq!(
            parse(doc! { "w": "majority", "j": true }).ok(),
            Some(WriteConcern::Satisfiable)
        );
        assert_eq!(
            parse(doc! { "w": 2 }).ok(),
            Some(WriteConcern::TooManyMembers(2))
        );
        let tag = parse(doc! { "w": "dc1" }).expect("parses");
        assert_eq!(tag.error().and_then(|e| e.get_i32("code").ok()), Some(79));
        assert_eq!(
            WriteConcern::TooManyMembers(2)
                .error()
                .and_then(|e| e.get_i32("code").ok()),
            Some(100)
        );
        assert!(parse(doc! { "w": -1 }).is_err());
        assert!(parse(doc! { "x": 1 }).is_err());
    }

    #[test]
    fn only_simple_collation_passes() {
        assert!(
            check_collation(&doc! { "find": "c", "collation": { "locale": "simple" } }).is_ok()
        );
        let fr = doc! { "update": "c", "updates": [{ "q": {}, "u": {}, "collation": { "locale": "fr" } }] };
        assert_eq!(
            check_collation(&fr).map_err(|e| e.code),
            Err(ErrorCode::NotImplemented)
        );
    }
}
