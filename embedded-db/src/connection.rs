//! One client connection: framed reads and writes over a socket (the TCP port's or the
//! private Unix socket's).
//!
//! The read buffer grows with the bytes that actually arrive, never with the length a header
//! announces, and shrinks back after a large message, so neither a lying header nor an idle
//! connection that once carried a big batch holds megabytes. A message must arrive within the
//! frame timeout of its first byte; the time between messages is not limited (drivers keep
//! pooled connections idle for minutes). A reply must be taken by the peer whole within the
//! write timeout, so a client that sends requests and never reads cannot hold its connection
//! and the reply's memory forever.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::wire::{self, Message};

/// Capacity of a fresh read buffer: room for the handshake and typical commands.
const INITIAL_CAPACITY: usize = 16 * 1024;
/// At most this much room is made in the buffer for one read beyond what is already there, so
/// the buffer grows with received bytes (at most about twice what a message really sent).
const READ_CHUNK: usize = 64 * 1024;
/// A buffer that grew beyond this for one message is replaced by a fresh small one after it.
const KEEP_CAPACITY: usize = 4 * READ_CHUNK;

/// Why a connection stops.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not a valid message.
    #[error(transparent)]
    Wire(#[from] wire::Error),
    /// The peer closed the socket in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// A message did not arrive whole within the frame timeout of its first byte.
    #[error("message incomplete {0:?} after its first byte")]
    FrameTimeout(Duration),
    /// A reply was not taken whole by the peer within the write timeout.
    #[error("reply not read by the client within {0:?}")]
    WriteTimeout(Duration),
}

/// A socket with a read buffer; reads whole messages.
#[derive(Debug)]
pub(crate) struct Connection<S> {
    stream: S,
    buffer: BytesMut,
    frame_timeout: Duration,
    write_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps an accepted socket; a message must arrive whole within `frame_timeout` of its
    /// first byte, and a reply must be written whole within `write_timeout`.
    pub(crate) fn new(stream: S, frame_timeout: Duration, write_timeout: Duration) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(INITIAL_CAPACITY),
            frame_timeout,
            write_timeout,
        }
    }

    /// The next request, or `None` when the peer closed the connection between messages.
    ///
    /// Waits without limit for a message to start. A malformed or oversized frame, or one
    /// still incomplete `frame_timeout` after its first byte, is an error: the caller closes
    /// this connection only.
    pub(crate) async fn read_message(&mut self) -> Result<Option<Message>, ConnError> {
        let mut deadline = None;
        loop {
            if deadline.is_none() && !self.buffer.is_empty() {
                deadline = Some(Instant::now() + self.frame_timeout);
            }
            // Before the length is known, the spare room already there is enough (the buffer
            // never drops below its initial capacity).
            let mut room = 1;
            if self.buffer.len() >= 4 {
                let len = wire::frame_len(&self.buffer)?;
                if self.buffer.len() >= len {
                    return self.take_frame(len).map(Some);
                }
                room = (len - self.buffer.len()).min(READ_CHUNK);
            }
            self.buffer.reserve(room);
            let read = self.stream.read_buf(&mut self.buffer);
            let n = match deadline {
                None => read.await?,
                Some(at) => tokio::time::timeout_at(at, read)
                    .await
                    .map_err(|_| ConnError::FrameTimeout(self.frame_timeout))??,
            };
            if n == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Truncated)
                };
            }
        }
    }

    /// Parses the frame of `len` bytes at the front of the buffer and removes it; a buffer
    /// that grew for it is given back.
    fn take_frame(&mut self, len: usize) -> Result<Message, ConnError> {
        let grown = self.buffer.capacity() > KEEP_CAPACITY;
        let request = wire::parse(&self.buffer[..len]);
        self.buffer.advance(len);
        if grown {
            // `advance` keeps the allocation; copy what follows (the start of a pipelined
            // message, if any) into a small one and free the large one.
            let rest = self.buffer.split();
            self.buffer = BytesMut::with_capacity(INITIAL_CAPACITY.max(rest.len()));
            self.buffer.extend_from_slice(&rest);
        }
        Ok(request?)
    }

    /// Writes one encoded reply, whole, within the write timeout.
    ///
    /// The deadline covers the whole reply, not each chunk: a peer that reads a few bytes now
    /// and then cannot stretch it. Past the deadline the reply is abandoned part-way and
    /// [`ConnError::WriteTimeout`] returned; the caller must close the connection (the stream
    /// is no longer at a message boundary).
    pub(crate) async fn write_reply(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        tokio::time::timeout(self.write_timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| ConnError::WriteTimeout(self.write_timeout))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;
    use tokio::io::DuplexStream;

    const TIMEOUT: Duration = Duration::from_millis(200);

    fn pair() -> (Connection<DuplexStream>, DuplexStream) {
        // A pipe large enough that the test never blocks writing into it.
        let (server, client) = tokio::io::duplex(4 * 1024 * 1024);
        (Connection::new(server, TIMEOUT, TIMEOUT), client)
    }

    fn header(len: i32) -> Vec<u8> {
        [len, 1, 0, 2013]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// A header announcing 48 MB followed by a few bytes makes the buffer grow by what arrived,
    /// not by what was announced; the frame then times out.
    #[tokio::test]
    async fn announced_length_is_not_reserved() {
        let (mut conn, mut client) = pair();
        let mut bytes = header(48_000_000);
        bytes.extend_from_slice(&[0; 10]);
        client.write_all(&bytes).await.expect("write");
        let result = conn.read_message().await;
        assert!(
            matches!(result, Err(ConnError::FrameTimeout(_))),
            "{result:?}"
        );
        assert_eq!(conn.buffer.len(), 26);
        assert!(
            conn.buffer.capacity() <= 2 * READ_CHUNK,
            "capacity {}",
            conn.buffer.capacity()
        );
    }

    /// After a 2 MB message the buffer is back to its initial size, and a request that
    /// follows in the same write is still read.
    #[tokio::test]
    async fn large_message_gives_memory_back() {
        let (mut conn, mut client) = pair();
        let big = doc! { "ping": 1, "$db": "admin", "pad": "x".repeat(2_000_000) };
        let mut bytes = wire::encode_request(1, &big).expect("encode");
        bytes.extend(wire::encode_request(2, &doc! { "ping": 1, "$db": "admin" }).expect("encode"));
        client.write_all(&bytes).await.expect("write");
        let first = conn.read_message().await.expect("read").expect("a request");
        assert_eq!(first.request_id(), 1);
        assert!(
            conn.buffer.capacity() <= KEEP_CAPACITY,
            "capacity {} after a large message",
            conn.buffer.capacity()
        );
        let second = conn.read_message().await.expect("read").expect("a request");
        assert_eq!(second.request_id(), 2);
    }

    /// Idle time before a message is not limited; only a started message has a deadline.
    #[tokio::test]
    async fn idle_time_is_not_limited() {
        let (mut idle, mut idle_client) = pair();
        let started = Instant::now();
        let read = tokio::spawn(async move { idle.read_message().await.map(|r| r.is_some()) });
        // A second connection whose message never completes: once it has timed out, the idle
        // one has been waiting longer than the frame timeout.
        let (mut partial, mut partial_client) = pair();
        partial_client
            .write_all(&header(1000))
            .await
            .expect("write");
        let result = partial.read_message().await;
        assert!(
            matches!(result, Err(ConnError::FrameTimeout(_))),
            "{result:?}"
        );
        assert!(started.elapsed() >= TIMEOUT);
        assert!(!read.is_finished(), "an idle connection is not timed out");
        let ping = wire::encode_request(1, &doc! { "ping": 1, "$db": "admin" }).expect("encode");
        idle_client.write_all(&ping).await.expect("write");
        assert!(read.await.expect("join").expect("read"), "the ping is read");
    }
}
