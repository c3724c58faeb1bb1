//! What one request may cost: time (`maxTimeMS`) and memory held by blocking stages
//! (sorts, groupings, materialised pipelines) and by open cursors.
//!
//! embedded-db never spills to disk: where mongod 7.0 would write a large sort to temporary
//! files under `allowDiskUse`, it answers `QueryExceededMemoryLimitNoDiskUseAllowed` (292)
//! whatever `allowDiskUse` says.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use bson::{Bson, Document};

use crate::error::{CommandError, CommandResult, ErrorCode};

/// Bytes a blocking sort, a grouping or one stage of a pipeline may hold (mongod's 100 MB).
pub(crate) const BLOCKING_STAGE_BYTES: usize = 100 * 1024 * 1024;

/// Stack size of every thread that handles client data: the server's runtime workers, its
/// blocking pool (storage reads) and the storage writer thread.
///
/// Decoding, matching, cloning, encoding and dropping a document recurse once per nesting
/// level, and the BSON decoder alone takes about 20 KiB a level in a debug build, so a
/// document at `wire::MAX_NESTING_DEPTH` (200) needs about 4 MiB: more than the 2 MiB threads
/// of a host runtime or a test harness have. 64 MiB leaves ample room. It is virtual memory,
/// committed only as a thread really uses it.
pub(crate) const THREAD_STACK_SIZE: usize = 64 * 1024 * 1024;
/// Byte budget of one batch of documents or events: a reply must stay under the message limit.
pub(crate) const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// How often [`Deadline::check`] reads the clock: every this many calls.
const CHECK_EVERY: u32 = 64;

/// When an operation must give up: a moment, or never.
///
/// Scans, sorts and pipelines call [`Deadline::check`] as they go, so an operation stops with
/// `MaxTimeMSExpired` (50) close to its limit instead of running to the end.
#[derive(Debug)]
pub(crate) struct Deadline {
    at: Option<Instant>,
    /// Calls since the clock was last read.
    calls: AtomicU32,
}

impl Clone for Deadline {
    fn clone(&self) -> Self {
        Self {
            at: self.at,
            calls: AtomicU32::new(0),
        }
    }
}

impl Deadline {
    /// No limit.
    pub(crate) fn none() -> Self {
        Self {
            at: None,
            calls: AtomicU32::new(0),
        }
    }

    /// Expires at `at`.
    pub(crate) fn at(at: Instant) -> Self {
        Self {
            at: Some(at),
            calls: AtomicU32::new(0),
        }
    }

    /// `MaxTimeMSExpired` once the deadline has passed. Cheap: reads the clock on the first
    /// call and then every few calls.
    pub(crate) fn check(&self) -> CommandResult<()> {
        let Some(at) = self.at else { return Ok(()) };
        let calls = self.calls.fetch_add(1, Ordering::Relaxed);
        if calls.is_multiple_of(CHECK_EVERY) && Instant::now() >= at {
            return Err(expired());
        }
        Ok(())
    }

    /// `MaxTimeMSExpired` once the deadline has passed, reading the clock now.
    pub(crate) fn check_now(&self) -> CommandResult<()> {
        match self.at {
            Some(at) if Instant::now() >= at => Err(expired()),
            _ => Ok(()),
        }
    }
}

fn expired() -> CommandError {
    CommandError::new(ErrorCode::MaxTimeMSExpired, "operation exceeded time limit")
}

/// Counts the bytes a blocking stage holds and fails once they pass
/// [`BLOCKING_STAGE_BYTES`].
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    used: usize,
    /// Names the stage in the error, e.g. `"Sort"` or `"$group"`.
    stage: &'static str,
}

impl MemoryBudget {
    /// An empty budget for `stage`.
    pub(crate) fn new(stage: &'static str) -> Self {
        Self { used: 0, stage }
    }

    /// Accounts for `doc`; `QueryExceededMemoryLimitNoDiskUseAllowed` past the limit.
    pub(crate) fn add(&mut self, doc: &Document) -> CommandResult<()> {
        self.add_bytes(approx_size(doc))
    }

    /// Accounts for `bytes`; `QueryExceededMemoryLimitNoDiskUseAllowed` past the limit.
    pub(crate) fn add_bytes(&mut self, bytes: usize) -> CommandResult<()> {
        self.used = self.used.saturating_add(bytes);
        if self.used > BLOCKING_STAGE_BYTES {
            return Err(CommandError::new(
                ErrorCode::QueryExceededMemoryLimitNoDiskUseAllowed,
                format!(
                    "{} exceeded memory limit of {BLOCKING_STAGE_BYTES} bytes (embedded-db does not spill to disk, whatever allowDiskUse says)",
                    self.stage
                ),
            ));
        }
        Ok(())
    }

    /// Releases `bytes` (documents dropped from the stage).
    pub(crate) fn release(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
    }
}

/// About the BSON size of `doc` (exact for scalars, close for the rest), computed without
/// recursion or allocation beyond a small stack.
pub(crate) fn approx_size(doc: &Document) -> usize {
    let mut size = 5;
    for (k, v) in doc {
        size += k.len() + 2 + approx_value_size(v);
    }
    size
}

/// About the BSON size of one value, as [`approx_size`] counts it.
pub(crate) fn approx_value_size(value: &Bson) -> usize {
    let mut size = 0;
    let mut stack: Vec<&Bson> = vec![value];
    while let Some(v) = stack.pop() {
        size += match v {
            Bson::Document(d) => {
                for (k, v) in d {
                    size += k.len() + 2;
                    stack.push(v);
                }
                5
            }
            Bson::Array(items) => {
                // Array keys are the decimal indexes, each with a type byte and a NUL.
                size += index_keys_len(items.len()) + 2 * items.len();
                stack.extend(items.iter());
                5
            }
            Bson::String(s) | Bson::JavaScriptCode(s) | Bson::Symbol(s) => s.len() + 5,
            Bson::Binary(b) => b.bytes.len() + 5,
            Bson::RegularExpression(r) => r.pattern.len() + r.options.len() + 2,
            Bson::JavaScriptCodeWithScope(c) => c.code.len() + 64,
            Bson::DbPointer(_) => 28,
            Bson::Decimal128(_) => 16,
            Bson::ObjectId(_) => 12,
            Bson::Int32(_) => 4,
            Bson::Boolean(_) => 1,
            Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => 0,
            Bson::Int64(_) | Bson::Double(_) | Bson::DateTime(_) | Bson::Timestamp(_) => 8,
        };
    }
    size
}

/// Total length of the decimal keys `"0"`, `"1"`, … of an array of `n` elements.
fn index_keys_len(n: usize) -> usize {
    let mut total = 0;
    let (mut digits, mut start) = (1, 0usize);
    while start < n {
        let end = start.saturating_mul(10).max(10).min(n);
        total += (end - start) * digits;
        start = end;
        digits += 1;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn expired_deadline_fails_on_first_check() {
        let past = Deadline::at(Instant::now());
        assert_eq!(
            past.check().map_err(|e| e.code),
            Err(ErrorCode::MaxTimeMSExpired)
        );
        assert!(Deadline::none().check().is_ok());
        assert!(Deadline::none().check_now().is_ok());
    }

    #[test]
    fn size_estimate_is_close_to_bson() {
        let d = doc! { "a": 1, "s": "hello", "n": { "x": [1, 2, 3], "y": 2.5 }, "t": true };
        let exact = bson::to_vec(&d).map(|v| v.len()).unwrap_or(0);
        let approx = approx_size(&d);
        assert!(approx.abs_diff(exact) <= exact / 4, "{approx} vs {exact}");
    }

    #[test]
    fn array_sizes_count_their_keys() {
        assert_eq!(index_keys_len(0), 0);
        assert_eq!(index_keys_len(10), 10);
        assert_eq!(index_keys_len(11), 12);
        assert_eq!(index_keys_len(101), 10 + 180 + 3);
        let d = doc! { "a": (0..1000).map(Bson::Int32).collect::<Vec<_>>() };
        let exact = bson::to_vec(&d).map(|v| v.len()).unwrap_or(0);
        assert_eq!(approx_size(&d), exact);
    }

    #[test]
    fn budget_refuses_past_the_limit() {
        let mut budget = MemoryBudget::new("Sort");
        assert!(budget.add_bytes(BLOCKING_STAGE_BYTES).is_ok());
        let err = budget.add_bytes(1).expect_err("over");
        assert_eq!(
            err.code,
            ErrorCode::QueryExceededMemoryLimitNoDiskUseAllowed
        );
        budget.release(10);
        assert!(
            budget.add_bytes(9).is_ok(),
            "released bytes can be used again"
        );
    }
}
