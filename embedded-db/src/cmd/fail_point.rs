//! Fail points: test hooks that make commands fail, stall or lose their connection on demand,
//! as `mongod`'s `configureFailPoint` does for driver test suites (retryable reads and writes,
//! change-stream resumption, connection monitoring).
//!
//! They exist only with `Config::enable_test_commands`; otherwise `configureFailPoint` is
//! "no such command" (59), as in a `mongod` started without `enableTestCommands`. Two points
//! are known:
//!
//! - `failCommand`: for the commands named in `data.failCommands` (and, with `data.appName`,
//!   only on connections whose handshake gave that application name) it delays the command
//!   (`blockConnection` + `blockTimeMS`), closes the socket without a reply
//!   (`closeConnection`), answers `ok: 0` with `errorCode` (and `errorLabels`), or adds
//!   `writeConcernError` to an otherwise successful reply. `configureFailPoint` itself is never
//!   failed.
//! - `maxTimeAlwaysTimeOut`: read through [`FailPoints::max_time_always_times_out`] by the
//!   `maxTimeMS` deadline checks.
//!
//! Modes are `mongod`'s: `"alwaysOn"`, `"off"`, `{times: n}` (the next `n` matching commands,
//! then off) and `{skip: n}` (let `n` matching commands through, then always on). The reply to
//! `configureFailPoint` is `{count: <times the point has fired since start>}`, as in `mongod`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bson::{doc, Bson, Document};

use super::{opt_bool, opt_document, opt_i64, Request};
use crate::error::{code_name, CommandError, CommandResult, ErrorCode};

const FAIL_COMMAND: &str = "failCommand";
const MAX_TIME_ALWAYS_TIMES_OUT: &str = "maxTimeAlwaysTimeOut";
/// `mongod`'s `errmsg` for a command failed by `failCommand`.
const FAIL_MESSAGE: &str = "Failing command via 'failCommand' failpoint";
/// `failCommand` data fields accepted and ignored: every client of this server is external,
/// which is what these two distinguish in `mongod`.
const IGNORED_DATA: &[&str] = &["failInternalCommands", "failLocalClients"];

/// When a fail point fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    Off,
    AlwaysOn,
    /// Fires for the next `n` (≥ 1) matching events, then turns itself off.
    Times(u32),
    /// Lets the next `n` matching events through, then fires on every one.
    Skip(u32),
}

/// One fail point: its mode, its data and how often it has fired.
#[derive(Debug, Default)]
struct Point<T> {
    mode: Mode,
    data: T,
    /// Times the point fired since the server started (`count` in `configureFailPoint`).
    entered: u64,
}

impl<T> Point<T> {
    /// Evaluates the point for one matching event: whether it fires. Consumes one of `times`
    /// or `skip` and counts the entry, as `mongod` does.
    fn fire(&mut self) -> bool {
        let fires = match self.mode {
            Mode::Off => false,
            Mode::AlwaysOn => true,
            Mode::Times(n) => {
                self.mode = if n > 1 { Mode::Times(n - 1) } else { Mode::Off };
                true
            }
            Mode::Skip(0) => true,
            Mode::Skip(n) => {
                self.mode = Mode::Skip(n - 1);
                false
            }
        };
        if fires {
            self.entered += 1;
        }
        fires
    }
}

/// The `failCommand` data: which commands, on which connections, and what happens to them.
#[derive(Debug, Default)]
struct FailCommand {
    /// Command names, canonical (aliases such as `isMaster` folded into `hello`).
    commands: Vec<String>,
    /// Only connections whose handshake carried this `client.application.name`.
    app_name: Option<String>,
    failure: Failure,
}

/// What an activated `failCommand` does to one command, in this order: block, then close the
/// connection or fail with the error code, else run the command and amend its reply.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Failure {
    block: Option<Duration>,
    close_connection: bool,
    error_code: Option<i32>,
    error_labels: Option<Vec<String>>,
    write_concern_error: Option<Document>,
}

impl Failure {
    /// Whether this failure does anything at all (`mongod` only activates `failCommand` for
    /// data that closes, blocks, fails or adds a write-concern error).
    fn has_effect(&self) -> bool {
        self.block.is_some()
            || self.close_connection
            || self.error_code.is_some()
            || self.write_concern_error.is_some()
    }

    /// How long to hold the command before anything else happens (`blockTimeMS`).
    pub(crate) fn block(&self) -> Option<Duration> {
        self.block
    }

    /// Whether the connection is to be closed instead of answering (`closeConnection`).
    pub(crate) fn closes_connection(&self) -> bool {
        self.close_connection
    }

    /// The error reply to send instead of running the command (`errorCode`): `ok: 0` with the
    /// code, `mongod`'s `codeName` for it and the configured `errorLabels`.
    pub(crate) fn error_reply(&self) -> Option<Document> {
        let code = self.error_code?;
        let mut reply = doc! {
            "ok": 0.0,
            "errmsg": FAIL_MESSAGE,
            "code": code,
            "codeName": code_name(code).as_ref(),
        };
        if let Some(labels) = &self.error_labels {
            reply.insert("errorLabels", labels.clone());
        }
        Some(reply)
    }

    /// Adds the configured `writeConcernError` (and `errorLabels`) to the reply of a command
    /// that succeeded.
    pub(crate) fn amend(&self, reply: &mut Document) {
        if let Some(error) = &self.write_concern_error {
            reply.insert("writeConcernError", error.clone());
            if let Some(labels) = &self.error_labels {
                reply.insert("errorLabels", labels.clone());
            }
        }
    }
}

#[derive(Debug, Default)]
struct Points {
    fail_command: Point<FailCommand>,
    max_time: Point<()>,
}

impl Points {
    fn armed(&self) -> bool {
        self.fail_command.mode != Mode::Off || self.max_time.mode != Mode::Off
    }
}

/// The server's fail points. All off until `configureFailPoint` turns one on; while all are
/// off, checking them costs one atomic load per command.
#[derive(Debug, Default)]
pub(crate) struct FailPoints {
    /// Whether any point is on: the only thing the hot path reads while none is.
    armed: AtomicBool,
    points: Mutex<Points>,
}

impl FailPoints {
    fn with_points<T>(&self, f: impl FnOnce(&mut Points) -> T) -> T {
        let mut points = self.points.lock().unwrap_or_else(PoisonError::into_inner);
        let result = f(&mut points);
        self.armed.store(points.armed(), Ordering::Release);
        result
    }

    /// The failure `failCommand` imposes on command `name` from a connection whose handshake
    /// gave `app_name`, if the point is on, matches and fires now (which consumes one of its
    /// `times`). `configureFailPoint` is never failed.
    pub(crate) fn fail_command(&self, name: &str, app_name: Option<&str>) -> Option<Failure> {
        if !self.armed.load(Ordering::Acquire) || name == "configureFailPoint" {
            return None;
        }
        let name = canonical(name);
        self.with_points(|points| {
            let point = &mut points.fail_command;
            let data = &point.data;
            let matches = data.commands.iter().any(|c| c == name)
                && data
                    .app_name
                    .as_deref()
                    .is_none_or(|wanted| app_name == Some(wanted))
                && data.failure.has_effect();
            if matches && point.fire() {
                Some(point.data.failure.clone())
            } else {
                None
            }
        })
    }

    /// Whether `maxTimeAlwaysTimeOut` is on: a command with `maxTimeMS` must then fail with
    /// `MaxTimeMSExpired` as if its time had run out. Each `true` consumes one of the point's
    /// `times`; while no fail point is on this is one atomic load.
    pub(crate) fn max_time_always_times_out(&self) -> bool {
        self.armed.load(Ordering::Acquire) && self.with_points(|points| points.max_time.fire())
    }

    /// Implements `configureFailPoint` (admin only): sets the mode and data of one point and
    /// answers `{count}`, the times it fired before this call.
    pub(super) fn configure(&self, req: &Request<'_>) -> CommandResult<Document> {
        if req.db != "admin" {
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
            self.with_points(|points| {
                let point = &mut points.fail_command;
                point.mode = mode;
                point.data = data;
                point.entered
            })
        } else {
            self.with_points(|points| {
                points.max_time.mode = mode;
                points.max_time.entered
            })
        };
        tracing::warn!(fail_point = name, mode = ?mode, "fail point set");
        Ok(doc! { "count": i64::try_from(count).unwrap_or(i64::MAX) })
    }
}

/// The one name a command goes by, so that `failCommands: ["isMaster"]` also fails `hello`,
/// as `mongod` matches a command by any of its aliases.
fn canonical(name: &str) -> &str {
    match name {
        "isMaster" | "ismaster" => "hello",
        "buildinfo" => "buildInfo",
        "findandmodify" => "findAndModify",
        "deleteIndexes" => "dropIndexes",
        other => other,
    }
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

    fn point(mode: Mode) -> Point<()> {
        Point {
            mode,
            data: (),
            entered: 0,
        }
    }

    #[test]
    fn times_fires_n_times_then_turns_off() {
        let mut p = point(Mode::Times(2));
        assert_eq!([p.fire(), p.fire(), p.fire()], [true, true, false]);
        assert_eq!(p.mode, Mode::Off);
        assert_eq!(p.entered, 2);
    }

    #[test]
    fn skip_lets_n_through_then_always_fires() {
        let mut p = point(Mode::Skip(1));
        assert_eq!([p.fire(), p.fire(), p.fire()], [false, true, true]);
        assert_eq!(p.entered, 2);
    }

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
    fn max_time_point_consumes_its_times() {
        let points = FailPoints::default();
        assert!(!points.max_time_always_times_out(), "off by default");
        points.with_points(|p| p.max_time.mode = Mode::Times(2));
        let fired: Vec<bool> = (0..3).map(|_| points.max_time_always_times_out()).collect();
        assert_eq!(fired, [true, true, false]);
        assert!(
            !points.armed.load(Ordering::Acquire),
            "disarmed once used up"
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
        points.with_points(|p| {
            p.fail_command.mode = Mode::AlwaysOn;
            p.fail_command.data = data;
        });
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
