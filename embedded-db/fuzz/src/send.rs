//! Sending one input over a real socket and classifying what the server did with it.
//!
//! A well-framed input is followed by a marker `ping` on the same connection; reading replies
//! until the marker's answer tells, without any guessing timeout, whether the input got a reply,
//! got none (`moreToCome`), or made the server close the connection. A length lie cannot be
//! followed by anything (the server would read the marker as part of the frame), so the harness
//! half-closes the socket after it and reads until the server closes its side.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::frame::{self, OP_REPLY};

/// What happened to one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The connection is still usable; `errors` replies had `ok: 0`.
    Replied {
        /// Replies with `ok: 0` (the marker ping's own reply is not counted).
        errors: u64,
        /// Replies in total, not counting the marker's.
        replies: u64,
    },
    /// The server closed (or reset) the connection.
    Closed,
    /// No reply (marker included) within the reply timeout: a slow command or a stuck
    /// connection; the health check decides whether the server is still fine.
    TimedOut,
    /// No connection could be made: the server is gone or not accepting.
    Unreachable,
}

/// Cursor ids (non-zero `cursor.id`) seen in replies are passed to this.
pub(crate) type Harvest<'a> = &'a mut dyn FnMut(i64);

/// Sends `bytes` on `conn` (connecting to `addr` first when there is none) and waits for the
/// outcome; `conn` is cleared whenever the connection cannot be reused.
pub(crate) fn send(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
    marker: i32,
    harvest: Harvest<'_>,
) -> Outcome {
    if conn.is_none() {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(timeout));
                let _ = stream.set_write_timeout(Some(timeout));
                *conn = Some(stream);
            }
            Err(_) => return Outcome::Unreachable,
        }
    }
    let Some(stream) = conn.as_mut() else {
        return Outcome::Unreachable;
    };
    let outcome = if frame::is_well_framed(bytes) {
        send_framed(stream, bytes, marker, harvest)
    } else {
        send_unframed(stream, bytes)
    };
    if !matches!(outcome, Outcome::Replied { .. }) {
        *conn = None;
    }
    outcome
}

fn send_framed(stream: &mut TcpStream, bytes: &[u8], marker: i32, harvest: Harvest<'_>) -> Outcome {
    // The input's own request id must not be mistaken for the marker's.
    let marker = if frame::read_i32(bytes, 4) == Some(marker) {
        marker ^ 1
    } else {
        marker
    };
    if let Err(e) = stream
        .write_all(bytes)
        .and_then(|()| stream.write_all(&frame::ping(marker)))
    {
        return io_outcome(&e);
    }
    let (mut errors, mut replies) = (0, 0);
    loop {
        match read_reply(stream) {
            Ok((response_to, body_at, body)) => {
                if response_to == marker {
                    return Outcome::Replied { errors, replies };
                }
                replies += 1;
                if let Ok(doc) =
                    bson::RawDocument::from_bytes(body.get(body_at..).unwrap_or_default())
                {
                    if is_error(doc) {
                        errors += 1;
                    }
                    let id = doc
                        .get_document("cursor")
                        .ok()
                        .and_then(|c| c.get_i64("id").ok())
                        .unwrap_or(0);
                    if id != 0 {
                        harvest(id);
                    }
                }
            }
            Err(outcome) => return outcome,
        }
    }
}

fn send_unframed(stream: &mut TcpStream, bytes: &[u8]) -> Outcome {
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Outcome::Closed,
            Ok(_) => {}
            Err(e) => return io_outcome(&e),
        }
    }
}

/// `ok` is 0 (or missing) in the reply.
fn is_error(doc: &bson::RawDocument) -> bool {
    match doc.get("ok") {
        Ok(Some(v)) => v
            .as_f64()
            .map(|f| f == 0.0)
            .or_else(|| v.as_i32().map(|i| i == 0))
            .unwrap_or(false),
        _ => true,
    }
}

fn io_outcome(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::TimedOut,
        _ => Outcome::Closed,
    }
}

/// One reply: its `responseTo`, where its document starts in the body, and the body.
fn read_reply(stream: &mut TcpStream) -> Result<(i32, usize, Vec<u8>), Outcome> {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).map_err(|e| io_outcome(&e))?;
    let len = frame::read_i32(&header, 0)
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(0);
    if !(frame::HEADER_LEN + 5..=frame::MAX_MESSAGE_LEN).contains(&len) {
        // Not a reply this harness can follow: treat the stream as lost.
        return Err(Outcome::Closed);
    }
    let mut body = vec![0u8; len - frame::HEADER_LEN];
    stream.read_exact(&mut body).map_err(|e| io_outcome(&e))?;
    let response_to = frame::read_i32(&header, 8).unwrap_or(0);
    // OP_MSG: flags (4) + section kind (1); OP_REPLY: flags, cursor id, from, count (20).
    let body_at = if frame::read_i32(&header, 12) == Some(OP_REPLY) {
        20
    } else {
        5
    };
    Ok((response_to, body_at, body))
}
