//! Implements `configureFailPoint`: parses a point's mode and data into the server's
//! [`FailPoints`] (their state and effects live in `crate::fail_point`).
//!
//! It exists only with `Config::enable_test_commands`; otherwise `configureFailPoint` is
//! "no such command" (59), as in a `mongod` started without `enableTestCommands`. The reply is
//! `{count: <times the point has fired since start>}`, as in `mongod`.

use std::time::Duration;

use bson::{doc, Bson, Document};

use super::args::{opt_bool, opt_document, opt_i64, Request};
use crate::command_names::canonical;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::fail_point::{FailCommand, FailPoints, Failure, Mode};

const FAIL_COMMAND: &str = "failCommand";
const MAX_TIME_ALWAYS_TIMES_OUT: &str = "maxTimeAlwaysTimeOut";
/// `failCommand` data fields accepted and ignored: every client of this server is external,
/// which is what these two distinguish in `mongod`.
const IGNORED_DATA: &[&str] = &["failInternalCommands", "failLocalClients"];

/// Implements `configureFailPoint` (admin only): sets the mode and data of one point and
/// answers `{count}`, the times it fired before this call.
pub(super) fn configure(points: &FailPoints, req: &Request<'_>) -> CommandResult<Document> {
    if req.database != "admin" {
        return Err(CommandError::new(
            ErrorCode::Unauthorized,
            "configureFailPoint may only be run against the admin database.",
        ));
    }
    let name = match req.value() {
        Bson::String(name) => name.as_str(),
        _ => "",
    };
    if name != FAIL_COMMAND && name != MAX_TIME_ALWAYS_TIMES_OUT {
        return Err(CommandError::new(
            ErrorCode::FailPointSetFailed,
            format!("{name} not found"),
        ));
    }
    let mode = parse_mode(&req.body)?;
    let data = opt_document(&req.body, "data")
        .map_err(|_| CommandError::type_mismatch("the 'data' option must be a JSON object"))?;
    let count = if name == FAIL_COMMAND {
        let data = parse_fail_command(data.unwrap_or(&Document::new()))?;
        points.set_fail_command(mode, data)
    } else {
        points.set_max_time_always_times_out(mode)
    };
    tracing::warn!(fail_point = name, mode = ?mode, "fail point set");
    Ok(doc! { "count": i64::try_from(count).unwrap_or(i64::MAX) })
}

/// `mode`, with `mongod`'s codes and messages for what it refuses.
fn parse_mode(body: &Document) -> CommandResult<Mode> {
    match body.get("mode") {
        None => Err(CommandError::new(
            ErrorCode::IllegalOperation,
            "When setting a failpoint, you must supply a 'mode'",
        )),
        Some(Bson::String(s)) if s == "off" => Ok(Mode::Off),
        Some(Bson::String(s)) if s == "alwaysOn" => Ok(Mode::AlwaysOn),
        Some(Bson::String(s)) => Err(CommandError::bad_value(format!("unknown mode: {s}"))),
        Some(Bson::Document(mode)) => {
            let count = |key: &str| -> CommandResult<u32> {
                let n = opt_i64(mode, key)?.unwrap_or(0);
                if n < 0 {
                    return Err(CommandError::bad_value(format!(
                        "'{key}' option to 'mode' must be positive"
                    )));
                }
                u32::try_from(n)
                    .ok()
                    .filter(|n| i32::try_from(*n).is_ok())
                    .ok_or_else(|| {
                        CommandError::bad_value(format!("'{key}' option to 'mode' is too large"))
                    })
            };
            if mode.contains_key("times") {
                // `{times: 0}` fires never (mongod would fire once).
                Ok(match count("times")? {
                    0 => Mode::Off,
                    n => Mode::Times(n),
                })
            } else if mode.contains_key("skip") {
                Ok(Mode::Skip(count("skip")?))
            } else if mode.contains_key("activationProbability") {
                Err(CommandError::bad_value(
                    "mode 'activationProbability' is not supported by embedded-db",
                ))
            } else {
                Err(CommandError::bad_value(
                    "'mode' must be one of 'off', 'alwaysOn', '{times:n}', '{skip:n}' or \
                     '{activationProbability:p}'",
                ))
            }
        }
        Some(_) => Err(CommandError::type_mismatch(
            "'mode' must be a string or JSON object",
        )),
    }
}

/// A list of strings (`failCommands`, `errorLabels`).
fn strings(data: &Document, key: &str) -> CommandResult<Option<Vec<String>>> {
    let wrong = || CommandError::type_mismatch(format!("'{key}' must be an array of strings"));
    match data.get(key) {
        None => Ok(None),
        Some(Bson::Array(items)) => items
            .iter()
            .map(|item| match item {
                Bson::String(s) => Ok(s.clone()),
                _ => Err(wrong()),
            })
            .collect::<CommandResult<Vec<_>>>()
            .map(Some),
        Some(_) => Err(wrong()),
    }
}

/// The `failCommand` data; a field this server would not honour is refused rather than
/// silently ignored.
fn parse_fail_command(data: &Document) -> CommandResult<FailCommand> {
    const KNOWN: &[&str] = &[
        "failCommands",
        "appName",
        "blockConnection",
        "blockTimeMS",
        "closeConnection",
        "errorCode",
        "errorLabels",
        "writeConcernError",
    ];
    if let Some(unknown) = data
        .keys()
        .find(|k| !KNOWN.contains(&k.as_str()) && !IGNORED_DATA.contains(&k.as_str()))
    {
        return Err(CommandError::bad_value(format!(
            "failCommand option '{unknown}' is not supported by embedded-db"
        )));
    }
    let commands = strings(data, "failCommands")?
        .unwrap_or_default()
        .iter()
        .map(|name| canonical(name).to_owned())
        .collect();
    let app_name = match data.get("appName") {
        None => None,
        Some(Bson::String(name)) => Some(name.clone()),
        Some(_) => return Err(CommandError::type_mismatch("'appName' must be a string")),
    };
    let block = if opt_bool(data, "blockConnection")?.unwrap_or(false) {
        let ms = opt_i64(data, "blockTimeMS")?.ok_or_else(|| {
            CommandError::new(
                ErrorCode::InvalidOptions,
                "must specify 'blockTimeMS' when 'blockConnection' is true",
            )
        })?;
        let ms = u64::try_from(ms).map_err(|_| {
            CommandError::new(
                ErrorCode::InvalidOptions,
                "'blockTimeMS' must be non-negative",
            )
        })?;
        Some(Duration::from_millis(ms))
    } else {
        None
    };
    let error_code = match opt_i64(data, "errorCode")? {
        None => None,
        Some(code) => Some(i32::try_from(code).map_err(|_| {
            CommandError::bad_value(format!("errorCode {code} is not a 32-bit integer"))
        })?),
    };
    Ok(FailCommand {
        commands,
        app_name,
        failure: Failure {
            block,
            close_connection: opt_bool(data, "closeConnection")?.unwrap_or(false),
            error_code,
            error_labels: strings(data, "errorLabels")?,
            write_concern_error: opt_document(data, "writeConcernError")?.cloned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_like_mongod() {
        let mode = |m: Bson| parse_mode(&doc! { "configureFailPoint": "x", "mode": m });
        assert_eq!(mode(Bson::from("alwaysOn")), Ok(Mode::AlwaysOn));
        assert_eq!(
            mode(Bson::from(doc! { "times": 3_i64 })),
            Ok(Mode::Times(3))
        );
        assert_eq!(mode(Bson::from(doc! { "times": 0 })), Ok(Mode::Off));
        assert_eq!(mode(Bson::from(doc! { "skip": 1.0 })), Ok(Mode::Skip(1)));
        let code = |r: CommandResult<Mode>| r.map_err(|e| e.code);
        assert_eq!(
            code(mode(Bson::from("sometimes"))),
            Err(ErrorCode::BadValue)
        );
        assert_eq!(
            code(mode(Bson::from(doc! { "times": -1 }))),
            Err(ErrorCode::BadValue)
        );
        assert_eq!(code(mode(Bson::from(7))), Err(ErrorCode::TypeMismatch));
        assert_eq!(
            code(parse_mode(&doc! { "configureFailPoint": "x" })),
            Err(ErrorCode::IllegalOperation)
        );
    }

    #[test]
    fn fail_command_matches_aliases_and_app_name() {
        let points = FailPoints::default();
        let data = parse_fail_command(&doc! {
            "failCommands": ["isMaster"],
            "appName": "monitor",
            "errorCode": 10107,
        })
        .expect("valid data");
        points.set_fail_command(Mode::AlwaysOn, data);
        assert_eq!(points.fail_command("hello", Some("other")), None);
        assert_eq!(points.fail_command("hello", None), None);
        assert_eq!(points.fail_command("ping", Some("monitor")), None);
        let failure = points
            .fail_command("hello", Some("monitor"))
            .expect("fails hello for the named app");
        let reply = failure.error_reply().expect("an error reply");
        assert_eq!(reply.get_i32("code"), Ok(10107));
        assert_eq!(reply.get_str("codeName"), Ok("NotWritablePrimary"));
        assert_eq!(
            points.fail_command("configureFailPoint", Some("monitor")),
            None
        );
    }

    #[test]
    fn bad_fail_command_data_is_refused() {
        let code = |data: Document| parse_fail_command(&data).map(|_| ()).map_err(|e| e.code);
        assert_eq!(
            code(doc! { "failCommands": ["find"], "blockConnection": true }),
            Err(ErrorCode::InvalidOptions)
        );
        assert_eq!(
            code(doc! { "failCommands": "find" }),
            Err(ErrorCode::TypeMismatch)
        );
        assert_eq!(
            code(doc! { "failCommands": ["find"], "namespace": "a.b" }),
            Err(ErrorCode::BadValue)
        );
        assert_eq!(
            code(doc! { "failCommands": ["find"], "errorCode": 1_i64 << 40 }),
            Err(ErrorCode::BadValue)
        );
    }
}
