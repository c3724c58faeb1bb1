//! The MongoDB wire protocol: bytes ↔ messages, with no I/O.
//!
//! Requests are OP_MSG (every command) or OP_QUERY (only the legacy handshake
//! that Node and older pymongo send first). Replies are OP_MSG with exactly one
//! kind-0 section, or OP_REPLY for an OP_QUERY request. All integers are
//! little-endian.

use bson::Document;

/// Largest message accepted or sent (`maxMessageSizeBytes` in `hello`).
pub const MAX_MESSAGE_LEN: usize = 48_000_000;
/// Largest document accepted (`maxBsonObjectSize` in `hello`).
pub const MAX_BSON_OBJECT_SIZE: usize = 16 * 1024 * 1024;
/// A command body may exceed a document's limit by this much (room for the command fields).
const COMMAND_OVERHEAD: usize = 16 * 1024;
/// Deepest nesting of documents and arrays accepted in a message (the command itself is the
/// first level); `mongod`'s default `maxBSONDepth` is 200 as well.
///
/// Parsing, matching, cloning, encoding and dropping recurse on nesting, so this bound is what
/// keeps a hostile document from exhausting a thread's stack. The BSON decoder alone needs
/// about 20 KiB a level in a debug build (measured), about 4 MiB at this depth: too much for a
/// host's 2 MiB threads, which is why every thread that touches client data (the server's own
/// runtime, its blocking pool and the storage writer) runs on `THREAD_STACK_SIZE` stacks
/// (64 MiB), leaving more than ten times the room a 200-level document takes. Deeper messages
/// are refused before any recursive code sees them (`check_depth` walks them iteratively).
pub const MAX_NESTING_DEPTH: usize = 200;

const HEADER_LEN: usize = 16;
const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_MSG: i32 = 2013;

const FLAG_CHECKSUM_PRESENT: u32 = 1;
const FLAG_MORE_TO_COME: u32 = 1 << 1;
/// Bits 0–15 are "required": a receiver must reject unknown ones.
const KNOWN_REQUIRED_FLAGS: u32 = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME;

/// Why bytes could not be turned into a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// More bytes are needed before the message can be parsed.
    #[error("incomplete message")]
    Incomplete,
    /// The bytes do not form a valid message; the connection must be closed.
    #[error("invalid message: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// A parsed request message (what a client sends; replies are encoded, never parsed here).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// An OP_MSG command.
    Msg(OpMsg),
    /// A legacy OP_QUERY command (the handshake of Node and older pymongo).
    Query(OpQuery),
}

impl Message {
    /// The request id the reply must name in `responseTo`.
    pub fn request_id(&self) -> i32 {
        match self {
            Self::Msg(m) => m.request_id,
            Self::Query(q) => q.request_id,
        }
    }
}

/// An OP_MSG request, with its document sequences already folded into the body.
#[derive(Debug, Clone, PartialEq)]
pub struct OpMsg {
    /// The sender's id for this message.
    pub request_id: i32,
    /// `moreToCome`: the client expects no reply.
    pub more_to_come: bool,
    /// The command: the kind-0 body with every kind-1 sequence added as an array field.
    pub body: Document,
}

/// An OP_QUERY request on `<db>.$cmd`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpQuery {
    /// The sender's id for this message.
    pub request_id: i32,
    /// `fullCollectionName`, for example `admin.$cmd`.
    pub full_collection_name: String,
    /// The command document (no `$db`: the database comes from the collection name).
    pub query: Document,
}

/// The length announced by a frame's first four bytes, once at least four bytes are there.
///
/// Fails with [`Error::Invalid`] for a length below the header size or above [`MAX_MESSAGE_LEN`],
/// so a garbage or hostile length never makes the reader buffer without limit.
pub fn frame_len(buf: &[u8]) -> Result<usize, Error> {
    let len = read_i32(buf, 0).ok_or(Error::Incomplete)?;
    let len = usize::try_from(len).map_err(|_| invalid(format!("negative length {len}")))?;
    if len < HEADER_LEN {
        return Err(invalid(format!("length {len} shorter than a header")));
    }
    if len > MAX_MESSAGE_LEN {
        return Err(invalid(format!(
            "length {len} exceeds maxMessageSizeBytes {MAX_MESSAGE_LEN}"
        )));
    }
    Ok(len)
}

/// Parses one complete frame (exactly `frame_len` bytes).
pub fn parse(frame: &[u8]) -> Result<Message, Error> {
    let len = frame_len(frame)?;
    if frame.len() != len {
        return Err(Error::Incomplete);
    }
    let request_id = read_i32(frame, 4).ok_or(Error::Incomplete)?;
    let op_code = read_i32(frame, 12).ok_or(Error::Incomplete)?;
    let body = &frame[HEADER_LEN..];
    match op_code {
        OP_MSG => parse_op_msg(request_id, body).map(Message::Msg),
        OP_QUERY => parse_op_query(request_id, body).map(Message::Query),
        other => Err(invalid(format!("unsupported opCode {other}"))),
    }
}

fn parse_op_msg(request_id: i32, mut body: &[u8]) -> Result<OpMsg, Error> {
    let flags = read_u32(body, 0).ok_or_else(|| invalid("OP_MSG without flags"))?;
    if flags & 0xFFFF & !KNOWN_REQUIRED_FLAGS != 0 {
        return Err(invalid(format!("unknown required OP_MSG flags {flags:#x}")));
    }
    body = &body[4..];
    if flags & FLAG_CHECKSUM_PRESENT != 0 {
        // The CRC-32C trails the sections; drivers never send it and verifying it is optional.
        let end = body
            .len()
            .checked_sub(4)
            .ok_or_else(|| invalid("checksum flag without checksum"))?;
        body = &body[..end];
    }
    let mut command: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<bson::Bson>)> = Vec::new();
    while let Some((&kind, rest)) = body.split_first() {
        match kind {
            0 => {
                let (doc, used) = read_document(rest, MAX_BSON_OBJECT_SIZE + COMMAND_OVERHEAD)?;
                if command.replace(doc).is_some() {
                    return Err(invalid("more than one kind-0 section"));
                }
                body = &rest[used..];
            }
            1 => {
                let size = read_i32(rest, 0).ok_or_else(|| invalid("truncated sequence"))?;
                let size = usize::try_from(size)
                    .ok()
                    .filter(|s| *s >= 4 && *s <= rest.len())
                    .ok_or_else(|| invalid("bad document sequence size"))?;
                let mut section = &rest[4..size];
                let nul = section
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or_else(|| invalid("unterminated sequence identifier"))?;
                let identifier = std::str::from_utf8(&section[..nul])
                    .map_err(|_| invalid("sequence identifier is not UTF-8"))?
                    .to_owned();
                section = &section[nul + 1..];
                let mut docs = Vec::new();
                while !section.is_empty() {
                    // Oversized documents are parsed here and refused by the command with a
                    // proper error reply; the message limit already bounds the allocation.
                    let (doc, used) = read_document(section, MAX_MESSAGE_LEN)?;
                    docs.push(bson::Bson::Document(doc));
                    section = &section[used..];
                }
                sequences.push((identifier, docs));
                body = &rest[size..];
            }
            other => return Err(invalid(format!("unknown OP_MSG section kind {other}"))),
        }
    }
    let mut body = command.ok_or_else(|| invalid("OP_MSG without a kind-0 section"))?;
    for (identifier, docs) in sequences {
        body.insert(identifier, docs);
    }
    Ok(OpMsg {
        request_id,
        more_to_come: flags & FLAG_MORE_TO_COME != 0,
        body,
    })
}

fn parse_op_query(request_id: i32, body: &[u8]) -> Result<OpQuery, Error> {
    // flags (4) | fullCollectionName cstring | numberToSkip (4) | numberToReturn (4) | query | [fields]
    let rest = body.get(4..).ok_or_else(|| invalid("truncated OP_QUERY"))?;
    let nul = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| invalid("unterminated collection name"))?;
    let full_collection_name = std::str::from_utf8(&rest[..nul])
        .map_err(|_| invalid("collection name is not UTF-8"))?
        .to_owned();
    let rest = rest
        .get(nul + 1 + 8..)
        .ok_or_else(|| invalid("truncated OP_QUERY"))?;
    let (query, _) = read_document(rest, MAX_BSON_OBJECT_SIZE)?;
    Ok(OpQuery {
        request_id,
        full_collection_name,
        query,
    })
}

/// Reads one BSON document from the start of `buf`, returning it and its length.
fn read_document(buf: &[u8], max_len: usize) -> Result<(Document, usize), Error> {
    let len = read_i32(buf, 0).ok_or_else(|| invalid("truncated document"))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l >= 5 && *l <= buf.len())
        .ok_or_else(|| invalid(format!("bad document length {len}")))?;
    if len > max_len {
        return Err(invalid(format!(
            "document of {len} bytes exceeds {max_len}"
        )));
    }
    check_depth(&buf[..len])?;
    let doc =
        Document::from_reader(&buf[..len]).map_err(|e| invalid(format!("malformed BSON: {e}")))?;
    Ok((doc, len))
}

/// Fails when documents and arrays nest deeper than [`MAX_NESTING_DEPTH`]; walks the raw
/// bytes with an explicit stack, so the check itself cannot overflow.
fn check_depth(bytes: &[u8]) -> Result<(), Error> {
    let malformed = |e: bson::raw::Error| invalid(format!("malformed BSON: {e}"));
    let mut stack = vec![(
        bson::RawDocument::from_bytes(bytes).map_err(malformed)?,
        1usize,
    )];
    while let Some((doc, depth)) = stack.pop() {
        if depth > MAX_NESTING_DEPTH {
            return Err(invalid(format!(
                "document nesting exceeds {MAX_NESTING_DEPTH} levels"
            )));
        }
        for element in doc {
            let (_, value) = element.map_err(malformed)?;
            let child = match value {
                bson::RawBsonRef::Document(d) => d,
                bson::RawBsonRef::Array(a) => {
                    bson::RawDocument::from_bytes(a.as_bytes()).map_err(malformed)?
                }
                _ => continue,
            };
            stack.push((child, depth + 1));
        }
    }
    Ok(())
}

/// Encodes an OP_MSG reply with one kind-0 section and no flags.
pub fn encode_msg(request_id: i32, response_to: i32, doc: &Document) -> Result<Vec<u8>, Error> {
    let mut out = header(request_id, response_to, OP_MSG);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    append_document(&mut out, doc)?;
    finish(out)
}

/// Encodes an OP_REPLY carrying one document, the answer to an OP_QUERY.
pub fn encode_reply(request_id: i32, response_to: i32, doc: &Document) -> Result<Vec<u8>, Error> {
    let mut out = header(request_id, response_to, OP_REPLY);
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    append_document(&mut out, doc)?;
    finish(out)
}

/// Encodes an OP_MSG request; used by tests and tools that talk to the server directly.
pub fn encode_request(request_id: i32, body: &Document) -> Result<Vec<u8>, Error> {
    encode_msg(request_id, 0, body)
}

fn header(request_id: i32, response_to: i32, op_code: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&0i32.to_le_bytes()); // length, patched by finish()
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
    out
}

fn append_document(out: &mut Vec<u8>, doc: &Document) -> Result<(), Error> {
    doc.to_writer(out)
        .map_err(|e| invalid(format!("cannot encode reply: {e}")))
}

fn finish(mut out: Vec<u8>) -> Result<Vec<u8>, Error> {
    if out.len() > MAX_MESSAGE_LEN {
        return Err(invalid(format!(
            "reply of {} bytes is too large",
            out.len()
        )));
    }
    let len = i32::try_from(out.len()).map_err(|_| invalid("reply too large"))?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    let bytes = buf.get(at..at + 4)?;
    Some(i32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn op_msg(flags: u32, sections: &[u8], trailer: &[u8]) -> Vec<u8> {
        let mut out = header(7, 0, OP_MSG);
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(sections);
        out.extend_from_slice(trailer);
        finish(out).expect("small message")
    }

    fn kind0(doc: &Document) -> Vec<u8> {
        let mut out = vec![0u8];
        doc.to_writer(&mut out).expect("encodes");
        out
    }

    #[test]
    fn op_msg_body_round_trips() {
        let body = doc! { "ping": 1, "$db": "admin" };
        let frame = op_msg(0, &kind0(&body), &[]);
        assert_eq!(frame_len(&frame), Ok(frame.len()));
        let Message::Msg(msg) = parse(&frame).expect("parses") else {
            panic!("expected OP_MSG")
        };
        assert_eq!(msg.request_id, 7);
        assert!(!msg.more_to_come);
        assert_eq!(msg.body, body);
    }

    #[test]
    fn document_sequence_becomes_array_field() {
        let mut seq = Vec::new();
        for i in 0..3 {
            doc! { "_id": i }.to_writer(&mut seq).expect("encodes");
        }
        let mut section = vec![1u8];
        let size = 4 + "documents".len() + 1 + seq.len();
        section.extend_from_slice(&i32::try_from(size).expect("small").to_le_bytes());
        section.extend_from_slice(b"documents\0");
        section.extend_from_slice(&seq);
        let mut sections = kind0(&doc! { "insert": "c", "$db": "t" });
        sections.extend_from_slice(&section);
        let frame = op_msg(FLAG_MORE_TO_COME, &sections, &[]);
        let Message::Msg(msg) = parse(&frame).expect("parses") else {
            panic!("expected OP_MSG")
        };
        assert!(msg.more_to_come);
        assert_eq!(msg.body.get_array("documents").map(Vec::len).ok(), Some(3));
    }

    #[test]
    fn checksum_is_stripped() {
        let frame = op_msg(
            FLAG_CHECKSUM_PRESENT,
            &kind0(&doc! { "ping": 1 }),
            &[1, 2, 3, 4],
        );
        assert!(matches!(parse(&frame), Ok(Message::Msg(_))));
    }

    #[test]
    fn unknown_required_flag_is_invalid() {
        let frame = op_msg(1 << 5, &kind0(&doc! { "ping": 1 }), &[]);
        assert!(matches!(parse(&frame), Err(Error::Invalid(_))));
    }

    #[test]
    fn lengths_out_of_range_are_invalid() {
        assert!(matches!(
            frame_len(&8i32.to_le_bytes()),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            frame_len(&(-1i32).to_le_bytes()),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            frame_len(&i32::MAX.to_le_bytes()),
            Err(Error::Invalid(_))
        ));
        assert_eq!(frame_len(&[1, 2]), Err(Error::Incomplete));
    }

    #[test]
    fn garbage_sections_are_invalid() {
        let frame = op_msg(0, &[9, 9, 9, 9, 9], &[]);
        assert!(matches!(parse(&frame), Err(Error::Invalid(_))));
        let frame = op_msg(0, &[0, 200, 0, 0, 0, 1], &[]);
        assert!(matches!(parse(&frame), Err(Error::Invalid(_))));
        let mut bad_op = op_msg(0, &kind0(&doc! { "ping": 1 }), &[]);
        bad_op[12..16].copy_from_slice(&2010i32.to_le_bytes());
        assert!(matches!(parse(&bad_op), Err(Error::Invalid(_))));
    }

    /// `{a: {a: … {leaf: 1}}}` nested `depth` levels deep, built without recursion.
    fn nested_bytes(depth: usize) -> Vec<u8> {
        let mut doc = Vec::new();
        doc! { "leaf": 1 }.to_writer(&mut doc).expect("encodes");
        for _ in 1..depth {
            let len = i32::try_from(4 + 3 + doc.len() + 1).expect("small");
            let mut outer = len.to_le_bytes().to_vec();
            outer.extend_from_slice(&[0x03, b'a', 0]);
            outer.extend_from_slice(&doc);
            outer.push(0);
            doc = outer;
        }
        doc
    }

    #[test]
    fn deep_nesting_is_invalid() {
        let deep = nested_bytes(MAX_NESTING_DEPTH + 1);
        assert!(matches!(
            read_document(&deep, MAX_MESSAGE_LEN),
            Err(Error::Invalid(_))
        ));
        let hostile = nested_bytes(10_000);
        assert!(matches!(
            read_document(&hostile, MAX_MESSAGE_LEN),
            Err(Error::Invalid(_))
        ));
        // A document at the limit is decoded (recursively) and dropped on a thread with the
        // stack the server gives its own threads; the test harness's 2 MiB would not do in a
        // debug build.
        let limit = nested_bytes(MAX_NESTING_DEPTH);
        let decoded = std::thread::Builder::new()
            .stack_size(crate::limits::THREAD_STACK_SIZE)
            .spawn(move || read_document(&limit, MAX_MESSAGE_LEN).map(|(_, len)| len))
            .expect("spawn a thread")
            .join()
            .expect("decoding does not overflow the stack");
        assert!(decoded.is_ok(), "{decoded:?}");
    }

    #[test]
    fn op_query_handshake_parses() {
        let mut out = header(3, 0, OP_QUERY);
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(b"admin.$cmd\0");
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(&(-1i32).to_le_bytes());
        doc! { "ismaster": 1, "helloOk": true }
            .to_writer(&mut out)
            .expect("encodes");
        let frame = finish(out).expect("small");
        let Message::Query(q) = parse(&frame).expect("parses") else {
            panic!("expected OP_QUERY")
        };
        assert_eq!(q.full_collection_name, "admin.$cmd");
        assert_eq!(q.query.get_i32("ismaster").ok(), Some(1));
    }

    #[test]
    fn replies_have_one_section_and_response_to() {
        let reply = encode_msg(9, 7, &doc! { "ok": 1.0 }).expect("encodes");
        assert_eq!(read_i32(&reply, 8), Some(7));
        assert_eq!(read_u32(&reply, 16), Some(0));
        assert_eq!(reply[20], 0);
        let reply = encode_reply(9, 3, &doc! { "ok": 1.0 }).expect("encodes");
        assert_eq!(read_i32(&reply, 12), Some(OP_REPLY));
        assert_eq!(read_i32(&reply, 32), Some(1));
    }
}
