//! What a change becomes: which changes the feed follows, the client-facing form of one
//! (operation, collection, id), and its bytes, framed once for every client.

use std::ops::Range;
use std::sync::Arc;

use app::model::{id_text, DEVICES, USERS};
use bytes::Bytes;
use mongodb::bson::{doc, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};

/// Longest `_id` text (in bytes) an event carries: a longer one is left out, and the page, which
/// refetches the list an event names, does not need it. Keeps every event small whatever `_id`
/// another tool wrote (any BSON type, up to a 16 MiB document).
pub(super) const MAX_ID_TEXT: usize = 1024;

/// Bytes of one server-sent event, built once and shared by every client: the HTTP/1.1 chunk
/// (`<hex length>\r\n<event>\r\n`), of which the event text is a slice.
#[derive(Debug, Clone)]
pub struct Frame {
    chunk: Bytes,
    text: Range<usize>,
}

impl Frame {
    /// Frames the event text `text` (which ends with its blank line).
    pub fn new(text: &str) -> Self {
        let head = format!("{:x}\r\n", text.len());
        let mut chunk = Vec::with_capacity(head.len() + text.len() + 2);
        chunk.extend_from_slice(head.as_bytes());
        chunk.extend_from_slice(text.as_bytes());
        chunk.extend_from_slice(b"\r\n");
        Self {
            chunk: Bytes::from(chunk),
            text: head.len()..head.len() + text.len(),
        }
    }

    /// The `: heartbeat` comment.
    pub fn heartbeat() -> Self {
        Self::new(": heartbeat\n\n")
    }

    /// The event as an HTTP/1.1 chunk, for a connection this server frames itself.
    pub fn chunk(&self) -> Bytes {
        self.chunk.clone()
    }

    /// The event text alone, for a body that hyper frames.
    pub fn text(&self) -> Bytes {
        self.chunk.slice(self.text.clone())
    }
}

/// A message of the stream: a committed change, or `resync`.
#[derive(Debug)]
pub(super) struct LiveEvent {
    token: String,
    resync: bool,
    frame: Frame,
}

impl LiveEvent {
    /// A committed change: `id:` is its token, `data:` the JSON summary.
    pub(super) fn change(token: String, data: &str) -> Self {
        let frame = Frame::new(&format!("id: {token}\ndata: {data}\n\n"));
        Self {
            token,
            resync: false,
            frame,
        }
    }

    /// The client must refetch everything; `token` is a current position.
    pub(super) fn resync(token: String) -> Self {
        let frame = Frame::new(&format!("event: resync\nid: {token}\ndata: {{}}\n\n"));
        Self {
            token,
            resync: true,
            frame,
        }
    }

    /// The event id.
    pub(super) fn token(&self) -> &str {
        &self.token
    }

    /// Whether this is a `resync`.
    pub(super) fn is_resync(&self) -> bool {
        self.resync
    }

    /// The framed bytes.
    pub(super) fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The memory this event holds, as the recent-events ring counts it: the struct and its
    /// two buffers (the token, the framed chunk).
    pub(super) fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.token.len() + self.frame.chunk.len()
    }
}

/// What the broadcast channel carries to every client.
#[derive(Debug, Clone)]
pub(super) enum Beat {
    /// A message.
    Event(Arc<LiveEvent>),
    /// Nothing was published for a heartbeat interval: the `: heartbeat` comment.
    Heartbeat(Frame),
}

/// The database-level stream's filter: changes to the two collections, and whole-collection
/// or whole-database events that make every list stale.
pub(super) fn pipeline() -> Vec<Document> {
    vec![doc! { "$match": { "$or": [
        {
            "ns.coll": { "$in": [USERS, DEVICES] },
            "operationType": { "$in": ["insert", "update", "replace", "delete", "drop", "rename"] },
        },
        { "operationType": "dropDatabase" },
    ] } }]
}

/// The `_data` string of a resume token.
pub(super) fn token_text(token: &ResumeToken) -> Option<String> {
    let doc: Document = mongodb::bson::to_document(token).ok()?;
    doc.get_str("_data").ok().map(str::to_owned)
}

/// The client-facing form of a change: only the operation, the collection and the id (left
/// out when its text is longer than [`MAX_ID_TEXT`]; the page refetches the list). A dropped
/// or renamed collection (or database) has no per-document events, so clients resync.
pub(super) fn to_live(event: &ChangeStreamEvent<Document>) -> Option<LiveEvent> {
    let operation = match event.operation_type {
        OperationType::Insert => "insert",
        OperationType::Update => "update",
        OperationType::Replace => "replace",
        OperationType::Delete => "delete",
        OperationType::Drop | OperationType::Rename | OperationType::DropDatabase => {
            return Some(LiveEvent::resync(token_text(&event.id)?))
        }
        _ => return None,
    };
    let collection = event.ns.as_ref()?.coll.clone()?;
    let id = id_text(event.document_key.as_ref()?.get("_id")?);
    let data = if id.len() > MAX_ID_TEXT {
        serde_json::json!({ "operationType": operation, "collection": collection })
    } else {
        serde_json::json!({ "operationType": operation, "collection": collection, "id": id })
    };
    Some(LiveEvent::change(token_text(&event.id)?, &data.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_chunks_around_the_event_text() {
        let event = LiveEvent::change("0a1b".to_owned(), r#"{"x":1}"#);
        let text = "id: 0a1b\ndata: {\"x\":1}\n\n";
        assert_eq!(&event.frame().text()[..], text.as_bytes());
        let chunk = format!("{:x}\r\n{text}\r\n", text.len());
        assert_eq!(&event.frame().chunk()[..], chunk.as_bytes());
        let resync = LiveEvent::resync("ff".to_owned());
        assert!(resync.is_resync());
        assert_eq!(
            &resync.frame().text()[..],
            b"event: resync\nid: ff\ndata: {}\n\n"
        );
    }

    /// An `_id` whose text is longer than 1 KiB is left out of the event; one of exactly 1 KiB
    /// is kept.
    #[test]
    fn long_ids_are_left_out() {
        let data = |id: String| {
            let event: ChangeStreamEvent<Document> = mongodb::bson::from_document(doc! {
                "_id": { "_data": "0a" },
                "operationType": "insert",
                "ns": { "db": "realtime", "coll": "users" },
                "documentKey": { "_id": id },
            })
            .expect("a change event");
            let live = to_live(&event).expect("a live event");
            let text = String::from_utf8(live.frame().text().to_vec()).expect("utf-8");
            let json = text
                .strip_prefix("id: 0a\ndata: ")
                .and_then(|rest| rest.strip_suffix("\n\n"))
                .expect("one id and one data line");
            serde_json::from_str::<serde_json::Value>(json).expect("json")
        };
        let kept = "k".repeat(MAX_ID_TEXT);
        assert_eq!(
            data(kept.clone()),
            serde_json::json!({ "operationType": "insert", "collection": "users", "id": kept })
        );
        assert_eq!(
            data("x".repeat(MAX_ID_TEXT + 1)),
            serde_json::json!({ "operationType": "insert", "collection": "users" })
        );
    }
}
