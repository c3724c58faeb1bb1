//! Fail points: test hooks that make commands fail, stall or lose their connection on demand,
//! as `mongod`'s `configureFailPoint` does for driver test suites (retryable reads and writes,
//! change-stream resumption, connection monitoring).
//!
//! This file holds their state, which the shared [`crate::db::Db`] owns and the dispatcher and
//! `maxTimeMS` checks read; `cmd/fail_point.rs` parses `configureFailPoint` into it. Two
//! points are known:
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
//! then off) and `{skip: n}` (let `n` matching commands through, then always on).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bson::{doc, Document};

use crate::error::code_name;

/// `mongod`'s `errmsg` for a command failed by `failCommand`.
const FAIL_MESSAGE: &str = "Failing command via 'failCommand' failpoint";

/// When a fail point fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mode {
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
pub(crate) struct FailCommand {
    /// Command names, canonical (aliases such as `isMaster` folded into `hello`).
    pub(crate) commands: Vec<String>,
    /// Only connections whose handshake carried this `client.application.name`.
    pub(crate) app_name: Option<String>,
    pub(crate) failure: Failure,
}

/// What an activated `failCommand` does to one command, in this order: block, then close the
/// connection or fail with the error code, else run the command and amend its reply.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Failure {
    /// `blockTimeMS`, when `blockConnection` is set.
    pub(crate) block: Option<Duration>,
    /// `closeConnection`.
    pub(crate) close_connection: bool,
    /// `errorCode`.
    pub(crate) error_code: Option<i32>,
    /// `errorLabels`.
    pub(crate) error_labels: Option<Vec<String>>,
    /// `writeConcernError`.
    pub(crate) write_concern_error: Option<Document>,
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
        let name = crate::command_names::canonical(name);
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

    /// Sets `failCommand`'s mode and data; returns the times it fired before (`count` in the
    /// `configureFailPoint` reply).
    pub(crate) fn set_fail_command(&self, mode: Mode, data: FailCommand) -> u64 {
        self.with_points(|points| {
            let point = &mut points.fail_command;
            point.mode = mode;
            point.data = data;
            point.entered
        })
    }

    /// Sets `maxTimeAlwaysTimeOut`'s mode; returns the times it fired before.
    pub(crate) fn set_max_time_always_times_out(&self, mode: Mode) -> u64 {
        self.with_points(|points| {
            points.max_time.mode = mode;
            points.max_time.entered
        })
    }
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
}
