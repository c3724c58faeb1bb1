//! Wire frames: building OP_MSG / OP_QUERY requests from parts, and reading what a frame
//! declares about itself (length, request id, command name) without trusting it.

/// The size of the standard message header.
pub(crate) const HEADER_LEN: usize = 16;
/// OP_REPLY, the answer to an OP_QUERY.
pub(crate) const OP_REPLY: i32 = 1;
/// OP_QUERY (legacy handshake).
pub(crate) const OP_QUERY: i32 = 2004;
/// OP_MSG (every command).
pub(crate) const OP_MSG: i32 = 2013;
/// The server's `maxMessageSizeBytes`.
pub(crate) const MAX_MESSAGE_LEN: usize = embedded_db::wire::MAX_MESSAGE_LEN;

/// OP_MSG flag bits.
pub(crate) const FLAG_CHECKSUM: u32 = 1;
/// The client expects no reply.
pub(crate) const FLAG_MORE_TO_COME: u32 = 1 << 1;
/// The client accepts exhaust replies (an optional bit: servers ignore it when unsupported).
pub(crate) const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;

/// A header plus `body`, with the length field set to the real length.
pub(crate) fn frame(request_id: i32, op_code: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
    out.extend_from_slice(body);
    fix_len(&mut out);
    out
}

/// Sets the length field to the frame's real length (saturating at `i32::MAX`).
pub(crate) fn fix_len(frame: &mut [u8]) {
    if frame.len() >= 4 {
        let len = i32::try_from(frame.len()).unwrap_or(i32::MAX);
        frame[..4].copy_from_slice(&len.to_le_bytes());
    }
}

/// A kind-1 section: size, identifier, then the documents back to back.
pub(crate) fn sequence_section(identifier: &[u8], docs: &[Vec<u8>]) -> Vec<u8> {
    let payload: usize = docs.iter().map(Vec::len).sum();
    let size = 4 + identifier.len() + 1 + payload;
    let mut out = vec![1u8];
    out.extend_from_slice(&i32::try_from(size).unwrap_or(i32::MAX).to_le_bytes());
    out.extend_from_slice(identifier);
    out.push(0);
    for doc in docs {
        out.extend_from_slice(doc);
    }
    out
}

/// An OP_MSG: flags, the kind-0 `body`, then the given kind-1 sections (already encoded), then
/// a (not verified by the server) checksum when the flag is set.
pub(crate) fn op_msg(request_id: i32, flags: u32, body: &[u8], sequences: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = flags.to_le_bytes().to_vec();
    payload.push(0);
    payload.extend_from_slice(body);
    for section in sequences {
        payload.extend_from_slice(section);
    }
    if flags & FLAG_CHECKSUM != 0 {
        payload.extend_from_slice(&[0xC5, 0x3A, 0x11, 0x7E]);
    }
    frame(request_id, OP_MSG, &payload)
}

/// An OP_QUERY on `collection` with `query` and an optional field selector.
pub(crate) fn op_query(
    request_id: i32,
    flags: i32,
    collection: &[u8],
    skip_return: (i32, i32),
    query: &[u8],
    selector: Option<&[u8]>,
) -> Vec<u8> {
    let mut body = flags.to_le_bytes().to_vec();
    body.extend_from_slice(collection);
    body.push(0);
    body.extend_from_slice(&skip_return.0.to_le_bytes());
    body.extend_from_slice(&skip_return.1.to_le_bytes());
    body.extend_from_slice(query);
    if let Some(selector) = selector {
        body.extend_from_slice(selector);
    }
    frame(request_id, OP_QUERY, &body)
}

/// The little-endian i32 at `at`, if the bytes are there.
pub(crate) fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(i32::from_le_bytes(bytes.try_into().ok()?))
}

/// True when the frame's length field is exactly its length and acceptable to the server, so
/// the server reads it as one message and then waits for the next (the harness can pipeline a
/// `ping` after it). Anything else is a length lie: the harness half-closes after it instead.
pub(crate) fn is_well_framed(frame: &[u8]) -> bool {
    read_i32(frame, 0)
        .and_then(|len| usize::try_from(len).ok())
        .is_some_and(|len| len == frame.len() && (HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len))
}

/// The command a frame carries, for notes and finding signatures: the first key of an OP_MSG
/// kind-0 body or of an OP_QUERY query (`$query` unwrapped), else `raw`. Read from the raw bytes,
/// so it works on damaged frames too; only `[A-Za-z0-9_$]` is kept, at most 32 characters.
pub(crate) fn command_name(frame: &[u8]) -> String {
    let first_key = |doc_at: usize| -> Option<String> {
        // i32 length, element type, then the key as a C string.
        let key = frame.get(doc_at + 5..)?;
        let end = key.iter().position(|b| *b == 0)?;
        let name: String = String::from_utf8_lossy(&key[..end])
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '$')
            .take(32)
            .collect();
        (!name.is_empty()).then_some(name)
    };
    let name = match read_i32(frame, 12) {
        Some(OP_MSG) if frame.get(20) == Some(&0) => first_key(21),
        Some(OP_QUERY) => frame
            .get(20..)
            .and_then(|rest| rest.iter().position(|b| *b == 0))
            .and_then(|nul| first_key(20 + nul + 1 + 8)),
        _ => None,
    };
    name.unwrap_or_else(|| "raw".to_owned())
}

/// An OP_MSG `{ ping: 1, $db: "admin" }` with the given request id.
pub(crate) fn ping(request_id: i32) -> Vec<u8> {
    let body = bson::to_vec(&bson::doc! { "ping": 1, "$db": "admin" }).unwrap_or_default();
    op_msg(request_id, 0, &body, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_from_bytes() {
        assert_eq!(command_name(&ping(1)), "ping");
        let q = bson::to_vec(&bson::doc! { "isMaster": 1 }).expect("encodes");
        assert_eq!(
            command_name(&op_query(1, 0, b"admin.$cmd", (0, -1), &q, None)),
            "isMaster"
        );
        assert_eq!(command_name(&[1, 2, 3]), "raw");
        assert!(is_well_framed(&ping(1)));
    }
}
