//! Reading HTTP/1 responses off the bytes a connection received, as far as they parse.
//!
//! The reader only needs the status of each final response and where it ends, so it knows the
//! body framing (`Content-Length`, chunked, until close, none for `HEAD`, `1xx`, `204`, `304`)
//! and nothing else. Bytes that are not a response (what a mutated request may provoke) end the
//! reading: the connection's statuses so far stand, the rest is not counted.

/// One parse step over the unread bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole response yet.
    Incomplete,
    /// A whole response of `len` bytes; `interim` for `1xx` (not the request's answer).
    Whole {
        /// The status code.
        status: u16,
        /// Bytes the response took.
        len: usize,
        /// A `1xx` other than `101`: more comes for the same request.
        interim: bool,
        /// The server said `Connection: close`.
        close: bool,
    },
    /// The head of a response whose body runs until the server closes, or of an event stream
    /// (`text/event-stream`, long-lived): nothing more is read from this connection.
    Open {
        /// The status code.
        status: u16,
        /// It is an event stream.
        event_stream: bool,
    },
    /// Not an HTTP/1 response.
    Garbage,
}

/// The largest response head the reader waits for.
const MAX_HEAD: usize = 64 * 1024;

/// Parses one response at the start of `buf`; `head_request` says it answers a `HEAD`.
pub fn parse(buf: &[u8], head_request: bool) -> Parsed {
    let prefix = b"HTTP/1.";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Parsed::Garbage;
    }
    let Some(head_len) = find(buf, b"\r\n\r\n").map(|at| at + 4) else {
        return if buf.len() > MAX_HEAD {
            Parsed::Garbage
        } else {
            Parsed::Incomplete
        };
    };
    let head = String::from_utf8_lossy(&buf[..head_len]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (100..=999).contains(code));
    let Some(status) = status else {
        return Parsed::Garbage;
    };
    let (mut length, mut chunked, mut close, mut event_stream) = (None, false, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.ends_with("chunked"),
            "connection" => close = value.contains("close"),
            "content-type" => event_stream = value.starts_with("text/event-stream"),
            _ => {}
        }
    }
    let interim = (100..200).contains(&status) && status != 101;
    let bodiless = head_request || interim || status == 204 || status == 304;
    if status == 101 || (event_stream && !bodiless) {
        return Parsed::Open {
            status,
            event_stream,
        };
    }
    let body_len = if bodiless {
        Some(0)
    } else if chunked {
        match chunked_len(&buf[head_len..]) {
            Chunked::Len(len) => Some(len),
            Chunked::Incomplete => return Parsed::Incomplete,
            Chunked::Bad => return Parsed::Garbage,
        }
    } else {
        length
    };
    match body_len {
        None => Parsed::Open {
            status,
            event_stream,
        },
        Some(len) if buf.len() >= head_len + len => Parsed::Whole {
            status,
            len: head_len + len,
            interim,
            close,
        },
        Some(_) => Parsed::Incomplete,
    }
}

enum Chunked {
    Len(usize),
    Incomplete,
    Bad,
}

/// The length of a chunked body (chunks, the last chunk and trailers) at the start of `buf`.
fn chunked_len(buf: &[u8]) -> Chunked {
    let mut at = 0;
    loop {
        let Some(line_end) = find(&buf[at..], b"\r\n") else {
            return Chunked::Incomplete;
        };
        let line = String::from_utf8_lossy(&buf[at..at + line_end]);
        let size = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return Chunked::Bad;
        };
        at += line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(end) = find(&buf[at..], b"\r\n") else {
                    return Chunked::Incomplete;
                };
                at += end + 2;
                if end == 0 {
                    return Chunked::Len(at);
                }
            }
        }
        at = at.saturating_add(size).saturating_add(2);
        if at > buf.len() {
            return Chunked::Incomplete;
        }
    }
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The 24-hex-digit ids (ObjectIds) a response body names, for later requests to use.
pub fn object_ids(body: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut run = 0;
    for (i, b) in body.iter().enumerate() {
        if b.is_ascii_hexdigit() {
            run += 1;
            continue;
        }
        if run == 24 {
            ids.push(String::from_utf8_lossy(&body[i - 24..i]).into_owned());
        }
        run = 0;
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_chunks_and_streams() {
        let fixed = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1";
        assert_eq!(
            parse(fixed, false),
            Parsed::Whole {
                status: 200,
                len: fixed.len() - 8,
                interim: false,
                close: false
            }
        );
        // A HEAD's answer has no body, whatever its Content-Length says.
        assert!(matches!(parse(fixed, true), Parsed::Whole { len, .. } if len == fixed.len() - 10));
        let chunked =
            b"HTTP/1.1 500 X\r\ntransfer-encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\n\r\n";
        assert!(
            matches!(parse(chunked, false), Parsed::Whole { status: 500, len, .. } if len == chunked.len())
        );
        assert_eq!(
            parse(&chunked[..chunked.len() - 1], false),
            Parsed::Incomplete
        );
        let sse = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\nretry: 1";
        assert_eq!(
            parse(sse, false),
            Parsed::Open {
                status: 200,
                event_stream: true
            }
        );
        assert_eq!(
            parse(b"HTTP/1.1 100 Continue\r\n\r\n", false),
            Parsed::Whole {
                status: 100,
                len: 25,
                interim: true,
                close: false
            }
        );
        assert_eq!(parse(b"HTTP/1.", false), Parsed::Incomplete);
        assert_eq!(parse(b"SSH-2.0", false), Parsed::Garbage);
    }

    #[test]
    fn ids_are_found_in_json() {
        let body = br#"[{"id":"65f0a1b2c3d4e5f601234567","x":"0123456789abcdef0123456789"}]"#;
        assert_eq!(
            object_ids(body),
            vec!["65f0a1b2c3d4e5f601234567".to_owned()]
        );
    }
}
