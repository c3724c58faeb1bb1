//! Change streams: resume tokens, event documents and the stream cursor state.
//!
//! A resume token is a position in the durable change log
//! ([`crate::storage::Position`], the change's cluster time) plus a kind byte,
//! hex-encoded as `{ _data: "<16 hex digits><2 hex digits>" }`, so comparing
//! `_data` strings gives stream order, as with `mongod`'s tokens. Because the
//! log is persisted with the data, a token stays valid across restarts for as
//! long as its position is inside the kept history window.

use bson::{doc, Bson, Document};

use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::namespace::Namespace;
use crate::query::aggregate::Pipeline;
use crate::storage::{position_of, timestamp_of, Position, ReadCtx, RecentChanges, Snapshot};

/// Stages a change stream pipeline may contain after `$changeStream` (MongoDB's list).
const ALLOWED_STAGES: &[&str] = &[
    "$addFields",
    "$match",
    "$project",
    "$redact",
    "$replaceRoot",
    "$replaceWith",
    "$set",
    "$unset",
];

const NON_RESUMABLE: &str = "NonResumableChangeStreamError";

/// What a resume token points at. The discriminant is the token's last byte, so for one
/// position the event sorts first, then its `invalidate`, then the high-water mark: a
/// `postBatchResumeToken` never sorts below an event already returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// The event recorded at the position.
    Event = 1,
    /// The `invalidate` that follows the event at the position.
    Invalidate = 2,
    /// A high-water mark: every change up to the position has been seen; none need exist there.
    HighWater = 3,
}

/// A decoded resume token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResumeToken {
    /// Change-log position.
    pub(crate) pos: Position,
    /// What the token stands for.
    pub(crate) kind: TokenKind,
}

impl ResumeToken {
    /// The token document, `{ _data: "<hex>" }`.
    pub(crate) fn to_document(self) -> Document {
        doc! { "_data": format!("{:016X}{:02X}", self.pos, self.kind as u8) }
    }

    /// Parses a token document; anything else is `BadValue`.
    pub(crate) fn parse(value: &Bson) -> CommandResult<Self> {
        let bad = || CommandError::bad_value(format!("invalid resume token: {value}"));
        let data = value
            .as_document()
            .and_then(|d| d.get_str("_data").ok())
            .ok_or_else(bad)?;
        if data.len() != 18 || !data.is_ascii() {
            return Err(bad());
        }
        let pos = u64::from_str_radix(&data[..16], 16).map_err(|_| bad())?;
        let kind = match u8::from_str_radix(&data[16..], 16).map_err(|_| bad())? {
            1 => TokenKind::Event,
            2 => TokenKind::Invalidate,
            3 => TokenKind::HighWater,
            _ => return Err(bad()),
        };
        Ok(Self { pos, kind })
    }
}

/// Which changes a stream sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One collection (`coll.watch()`).
    Collection(Namespace),
    /// Every collection of one database (`db.watch()`).
    Database(String),
    /// The whole deployment (`client.watch()`), except the `admin`, `config` and `local` databases.
    Cluster,
}

impl Scope {
    fn sees(&self, db: &str, coll: Option<&str>) -> bool {
        match self {
            Self::Collection(ns) => ns.db == db && coll == Some(ns.coll.as_str()),
            Self::Database(name) => name == db,
            Self::Cluster => !matches!(db, "admin" | "config" | "local"),
        }
    }
}

/// `fullDocument` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FullDocument {
    Default,
    UpdateLookup,
    WhenAvailable,
    Required,
}

/// `fullDocumentBeforeChange` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BeforeChange {
    Off,
    WhenAvailable,
    Required,
}

/// Where a stream reads change records: a storage snapshot, or the in-memory tail of the log.
pub(crate) trait ChangeSource {
    /// The newest committed position this source knows.
    fn last_position(&self) -> CommandResult<Position>;
    /// Calls `visit` with each record after `after`, in order, until it returns false.
    fn for_each_after(
        &self,
        after: Position,
        visit: &mut dyn FnMut(Position, &Document) -> CommandResult<bool>,
    ) -> CommandResult<()>;
    /// The current version of a document (`fullDocument: updateLookup`).
    fn current_document(&self, ns: &Namespace, id: &Bson) -> CommandResult<Option<Document>>;
}

impl ChangeSource for ReadCtx {
    fn last_position(&self) -> CommandResult<Position> {
        ReadCtx::last_position(self)
    }

    fn for_each_after(
        &self,
        after: Position,
        visit: &mut dyn FnMut(Position, &Document) -> CommandResult<bool>,
    ) -> CommandResult<()> {
        self.changes_after(after, |pos, record| visit(pos, &record))
    }

    fn current_document(&self, ns: &Namespace, id: &Bson) -> CommandResult<Option<Document>> {
        match self.collection(ns)? {
            Some(meta) => self.find_by_id(&meta, id),
            None => Ok(None),
        }
    }
}

impl ChangeSource for RecentChanges {
    fn last_position(&self) -> CommandResult<Position> {
        Ok(RecentChanges::last_position(self))
    }

    fn for_each_after(
        &self,
        after: Position,
        visit: &mut dyn FnMut(Position, &Document) -> CommandResult<bool>,
    ) -> CommandResult<()> {
        self.changes_after(after, visit)
    }

    fn current_document(&self, _: &Namespace, _: &Bson) -> CommandResult<Option<Document>> {
        // Streams that look documents up read from storage (see `ChangeStream::can_read_from`).
        Err(CommandError::internal(
            "document lookup needs a storage snapshot",
        ))
    }
}

/// An open change stream: its options and how far it has read.
#[derive(Debug)]
pub(crate) struct ChangeStream {
    scope: Scope,
    full_document: FullDocument,
    before_change: BeforeChange,
    pipeline: Option<Pipeline>,
    /// `showExpandedEvents`: catalog events (`create`, `createIndexes`, `dropIndexes`,
    /// `modify`), `collectionUUID`, `operationDescription` and `disambiguatedPaths`.
    expanded: bool,
    /// Every change at or before this position has been examined.
    position: Position,
    /// Set once an `invalidate` was returned: the stream is over.
    invalidated: bool,
}

/// One batch of events with the token a driver should cache after it.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Events, in log order.
    pub(crate) events: Vec<Document>,
    /// `postBatchResumeToken`.
    pub(crate) post_batch_token: Document,
    /// True when the batch ends with `invalidate`: the cursor must be closed (id 0).
    pub(crate) finished: bool,
}

/// A string option that names one of `values`: `default` when absent or null, `BadValue` for
/// another string, `TypeMismatch` for another type (mongod's codes and messages for
/// `fullDocument` and `fullDocumentBeforeChange`).
fn choice<T: Copy>(
    options: &Document,
    key: &str,
    default: T,
    values: &[(&str, T)],
) -> CommandResult<T> {
    match options.get(key) {
        None | Some(Bson::Null) => Ok(default),
        Some(Bson::String(s)) => values
            .iter()
            .find(|(name, _)| name == s)
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                CommandError::bad_value(format!("'{s}' is not a valid value for {key}"))
            }),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "{key} must be a string, not {other}"
        ))),
    }
}

impl ChangeStream {
    /// Opens a stream from a `$changeStream` stage and the stages after it, resolving the start
    /// position against the change log of `read` (286 when it is older than the kept history,
    /// 280 when the token names no change, 260 for `resumeAfter` an invalidate).
    pub(crate) fn open(
        scope: Scope,
        options: &Document,
        rest: &[Bson],
        read: &ReadCtx,
    ) -> CommandResult<Self> {
        let full_document = choice(
            options,
            "fullDocument",
            FullDocument::Default,
            &[
                ("default", FullDocument::Default),
                ("updateLookup", FullDocument::UpdateLookup),
                ("whenAvailable", FullDocument::WhenAvailable),
                ("required", FullDocument::Required),
            ],
        )?;
        let before_change = choice(
            options,
            "fullDocumentBeforeChange",
            BeforeChange::Off,
            &[
                ("off", BeforeChange::Off),
                ("whenAvailable", BeforeChange::WhenAvailable),
                ("required", BeforeChange::Required),
            ],
        )?;
        let expanded = flag(options, "showExpandedEvents")?;
        // Sharding events only: a replica set has none to show.
        flag(options, "showSystemEvents")?;
        for stage in rest {
            let name = stage
                .as_document()
                .and_then(|d| d.keys().next())
                .map(String::as_str)
                .unwrap_or_default();
            if !ALLOWED_STAGES.contains(&name) {
                return Err(CommandError::new(
                    ErrorCode::UnrecognizedPipelineStage,
                    format!("Stage {name} is not permitted in a $changeStream pipeline"),
                ));
            }
        }
        let pipeline = if rest.is_empty() {
            None
        } else {
            Some(Pipeline::parse(rest)?)
        };
        let position = start_position(options, read)?;
        Ok(Self {
            scope,
            full_document,
            before_change,
            pipeline,
            expanded,
            position,
            invalidated: false,
        })
    }

    /// The token for the current position (what a driver resumes from when nothing was returned).
    pub(crate) fn high_water_token(&self) -> Document {
        ResumeToken {
            pos: self.position,
            kind: TokenKind::HighWater,
        }
        .to_document()
    }

    /// Whether this stream can read its next batch from `recent` (the in-memory tail covers its
    /// position, and it does not look documents up).
    pub(crate) fn can_read_from(&self, recent: &RecentChanges) -> bool {
        self.full_document != FullDocument::UpdateLookup && recent.covers(self.position)
    }

    /// Reads up to `limit` events committed after the current position, without waiting.
    pub(crate) fn next_batch(
        &mut self,
        read: &impl ChangeSource,
        limit: usize,
    ) -> CommandResult<Batch> {
        if self.invalidated {
            return Ok(Batch {
                events: Vec::new(),
                post_batch_token: self.high_water_token(),
                finished: true,
            });
        }
        let snapshot_end = read.last_position()?;
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut full = false;
        let mut examined = self.position;
        read.for_each_after(self.position, &mut |pos, record| {
            if events.len() >= limit || bytes >= crate::limits::BATCH_BYTES {
                full = true;
                return Ok(false);
            }
            examined = pos;
            for event in self.events_for(pos, record, read)? {
                bytes += event_size(&event);
                events.push(event);
            }
            Ok(!self.invalidated)
        })?;
        self.position = examined;
        let post_batch_token = match events.last() {
            Some(last) if full || self.invalidated => last
                .get_document("_id")
                .cloned()
                .unwrap_or_else(|_| self.high_water_token()),
            _ => {
                // Nothing more is committed in this snapshot: everything up to its end is seen,
                // including changes the pipeline filtered out.
                self.position = self.position.max(snapshot_end);
                self.high_water_token()
            }
        };
        Ok(Batch {
            events,
            post_batch_token,
            finished: self.invalidated,
        })
    }

    /// The events one change record produces for this stream (none, one, or one plus `invalidate`).
    fn events_for(
        &mut self,
        pos: Position,
        record: &Document,
        read: &impl ChangeSource,
    ) -> CommandResult<Vec<Document>> {
        let op = record.get_str("op").unwrap_or_default();
        if !self.expanded && matches!(op, "create" | "createIndexes" | "dropIndexes" | "modify") {
            return Ok(Vec::new());
        }
        // A rename is seen by streams on either side of it (the target's is invalidated too).
        let seen = ["ns", "to"].iter().any(|side| {
            let ns = record.get_document(side).ok();
            let db = ns.and_then(|n| n.get_str("db").ok());
            let coll = ns.and_then(|n| n.get_str("coll").ok());
            db.is_some_and(|db| self.scope.sees(db, coll))
        });
        if !seen {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(2);
        if let Some(event) = self.apply_pipeline(self.event(pos, op, record, read)?)? {
            out.push(event);
        }
        let invalidates = match &self.scope {
            Scope::Collection(_) => matches!(op, "drop" | "rename"),
            Scope::Database(_) => op == "dropDatabase",
            Scope::Cluster => false,
        };
        if invalidates {
            let token = ResumeToken {
                pos,
                kind: TokenKind::Invalidate,
            };
            out.push(doc! {
                "_id": token.to_document(),
                "operationType": "invalidate",
                "clusterTime": timestamp_of(pos),
                "wallTime": record.get("wall").cloned().unwrap_or(Bson::Null),
            });
            self.invalidated = true;
        }
        Ok(out)
    }

    fn event(
        &self,
        pos: Position,
        op: &str,
        record: &Document,
        read: &impl ChangeSource,
    ) -> CommandResult<Document> {
        let token = ResumeToken {
            pos,
            kind: TokenKind::Event,
        };
        let mut event = doc! {
            "_id": token.to_document(),
            "operationType": op,
            "clusterTime": timestamp_of(pos),
            "wallTime": record.get("wall").cloned().unwrap_or(Bson::Null),
        };
        if self.expanded {
            if let Some(uuid) = record.get("uuid") {
                event.insert("collectionUUID", uuid.clone());
            }
        }
        let id = record.get("id").cloned();
        match op {
            "insert" | "replace" => {
                event.insert(
                    "fullDocument",
                    record.get("doc").cloned().unwrap_or(Bson::Null),
                );
            }
            "update" => {
                if let Some(doc) = self.updated_document(record, read)? {
                    event.insert("fullDocument", doc);
                }
            }
            _ => {}
        }
        if let Some(ns) = record.get("ns") {
            event.insert("ns", ns.clone());
        }
        if let Some(to) = record.get("to") {
            event.insert("to", to.clone());
        }
        if let Some(id) = id {
            event.insert("documentKey", doc! { "_id": id });
        }
        if let Ok(description) = record.get_document("upd") {
            let mut description = description.clone();
            // Stored only when an update had ambiguous paths; shown to expanded streams only.
            let paths = description.remove("disambiguatedPaths");
            if self.expanded {
                let paths = paths.unwrap_or_else(|| Bson::Document(Document::new()));
                description.insert("disambiguatedPaths", paths);
            }
            event.insert("updateDescription", description);
        }
        if self.expanded {
            match (op, record.get("desc")) {
                ("rename", _) => {
                    let mut description =
                        doc! { "to": record.get("to").cloned().unwrap_or(Bson::Null) };
                    if let Some(dropped) = record.get("dropped") {
                        description.insert("dropTarget", dropped.clone());
                    }
                    event.insert("operationDescription", description);
                }
                (_, Some(description)) => {
                    event.insert("operationDescription", description.clone());
                }
                _ => {}
            }
            if let Some(before) = record.get("before") {
                event.insert("stateBeforeChange", before.clone());
            }
        }
        if matches!(op, "update" | "replace" | "delete") {
            match (self.before_change, record.get("pre")) {
                (BeforeChange::Off, _) => {}
                (_, Some(pre)) => {
                    event.insert("fullDocumentBeforeChange", pre.clone());
                }
                (BeforeChange::WhenAvailable, None) => {
                    event.insert("fullDocumentBeforeChange", Bson::Null);
                }
                (BeforeChange::Required, None) => {
                    return Err(image_missing("pre-image", pos));
                }
            }
        }
        Ok(event)
    }

    /// `fullDocument` of an update event under the stream's option.
    fn updated_document(
        &self,
        record: &Document,
        read: &impl ChangeSource,
    ) -> CommandResult<Option<Bson>> {
        match self.full_document {
            FullDocument::Default => Ok(None),
            FullDocument::UpdateLookup => {
                let current = match (record_namespace(record), record.get("id")) {
                    (Some(ns), Some(id)) => read.current_document(&ns, id)?,
                    _ => None,
                };
                Ok(Some(current.map_or(Bson::Null, Bson::Document)))
            }
            FullDocument::WhenAvailable => {
                Ok(Some(record.get("post").cloned().unwrap_or(Bson::Null)))
            }
            FullDocument::Required => match record.get("post") {
                Some(post) => Ok(Some(post.clone())),
                None => Err(image_missing("post-image", 0)),
            },
        }
    }

    fn apply_pipeline(&self, event: Document) -> CommandResult<Option<Document>> {
        let Some(pipeline) = &self.pipeline else {
            return Ok(Some(event));
        };
        let token = event.get("_id").cloned();
        let Some(out) = pipeline
            .run(vec![event], &crate::limits::Deadline::none())?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        if out.get("_id").cloned() != token {
            return Err(CommandError::new(
                ErrorCode::ChangeStreamFatalError,
                "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that point. Only transformations that retain the unmodified _id field are allowed.",
            )
            .with_label(NON_RESUMABLE));
        }
        Ok(Some(out))
    }
}

/// A boolean `$changeStream` option (absent or null: false).
fn flag(options: &Document, name: &str) -> CommandResult<bool> {
    match options.get(name) {
        None | Some(Bson::Null) => Ok(false),
        Some(Bson::Boolean(b)) => Ok(*b),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "BSON field '$changeStream.{name}' is the wrong type '{}', expected type 'bool'",
            crate::query::compare::type_name(other)
        ))),
    }
}

fn record_namespace(record: &Document) -> Option<Namespace> {
    let ns = record.get_document("ns").ok()?;
    Namespace::new(ns.get_str("db").ok()?, ns.get_str("coll").ok()?).ok()
}

fn image_missing(what: &str, pos: Position) -> CommandError {
    CommandError::new(
        ErrorCode::ChangeStreamFatalError,
        format!(
            "Change stream was configured to require a {what} for all events, but the {what} was not available for the event at {}",
            timestamp_of(pos)
        ),
    )
    .with_label(NON_RESUMABLE)
}

fn event_size(event: &Document) -> usize {
    bson::to_vec(event).map_or(0, |v| v.len())
}

/// The position a new stream reads after, from `resumeAfter`, `startAfter` or
/// `startAtOperationTime` (at most one), else the newest committed change.
fn start_position(options: &Document, read: &ReadCtx) -> CommandResult<Position> {
    let resume_after = options
        .get("resumeAfter")
        .filter(|b| !matches!(b, Bson::Null));
    let start_after = options
        .get("startAfter")
        .filter(|b| !matches!(b, Bson::Null));
    let at_time = options
        .get("startAtOperationTime")
        .filter(|b| !matches!(b, Bson::Null));
    if [resume_after, start_after, at_time]
        .iter()
        .flatten()
        .count()
        > 1
    {
        return Err(CommandError::bad_value(
            "Only one type of resume option is allowed, but multiple were found",
        ));
    }
    let floor = read.history_floor()?;
    let last = read.last_position()?;
    let lost = || {
        CommandError::new(
            ErrorCode::ChangeStreamHistoryLost,
            "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
        )
        .with_label(NON_RESUMABLE)
    };
    if let Some(time) = at_time {
        let Bson::Timestamp(ts) = time else {
            return Err(CommandError::type_mismatch(
                "startAtOperationTime must be a timestamp",
            ));
        };
        let pos = position_of(*ts).saturating_sub(1);
        if pos < floor {
            return Err(lost());
        }
        return Ok(pos);
    }
    let (token, is_start_after) = match (resume_after, start_after) {
        (Some(t), _) => (ResumeToken::parse(t)?, false),
        (None, Some(t)) => (ResumeToken::parse(t)?, true),
        (None, None) => return Ok(last),
    };
    if token.kind == TokenKind::Invalidate && !is_start_after {
        return Err(CommandError::new(
            ErrorCode::InvalidResumeToken,
            "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.",
        ));
    }
    if token.pos < floor {
        return Err(lost());
    }
    let known = match token.kind {
        TokenKind::HighWater => token.pos <= last,
        TokenKind::Event | TokenKind::Invalidate => {
            token.pos == floor || read.has_change(token.pos)?
        }
    };
    if !known {
        return Err(CommandError::new(
            ErrorCode::ChangeStreamFatalError,
            format!(
                "cannot resume stream; the resume token was not found. {}",
                token.to_document()
            ),
        )
        .with_label(NON_RESUMABLE));
    }
    Ok(token.pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_sort_in_stream_order() {
        let a = ResumeToken {
            pos: 0x6000_0000_0000_0001,
            kind: TokenKind::Event,
        };
        let b = ResumeToken {
            pos: 0x6000_0000_0000_0001,
            kind: TokenKind::Invalidate,
        };
        let c = ResumeToken {
            pos: 0x6000_0000_0000_0002,
            kind: TokenKind::HighWater,
        };
        for t in [a, b, c] {
            assert_eq!(ResumeToken::parse(&Bson::Document(t.to_document())), Ok(t));
        }
        let data = |t: ResumeToken| t.to_document().get_str("_data").map(str::to_owned);
        assert!(data(a).ok() < data(b).ok());
        assert!(data(b).ok() < data(c).ok());
        let mark = ResumeToken {
            kind: TokenKind::HighWater,
            ..a
        };
        assert!(
            data(b).ok() < data(mark).ok(),
            "a mark sorts after the events at its position"
        );
    }

    #[test]
    fn malformed_tokens_are_bad_values() {
        for bad in [
            Bson::Int32(1),
            Bson::Document(doc! { "_data": "xyz" }),
            Bson::Document(doc! { "_data": "60000000000000010G" }),
            Bson::Document(doc! { "_data": "600000000000000109" }),
            Bson::Document(doc! { "_data": "600000000000000100" }),
        ] {
            let err = ResumeToken::parse(&bad).expect_err("malformed");
            assert_eq!(err.code, ErrorCode::BadValue);
        }
    }

    #[test]
    fn scopes_filter_namespaces() {
        let coll = Scope::Collection(Namespace::new("a", "b").expect("valid"));
        assert!(coll.sees("a", Some("b")));
        assert!(!coll.sees("a", Some("c")));
        assert!(!coll.sees("a", None));
        assert!(Scope::Database("a".into()).sees("a", Some("z")));
        assert!(!Scope::Cluster.sees("admin", Some("x")));
        assert!(Scope::Cluster.sees("app", Some("x")));
    }
}
