//! One client connection: framed reads and writes over a TCP stream.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{self, Request};

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
}

/// A socket with a read buffer; reads whole messages.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
}

impl Connection {
    /// Wraps an accepted socket.
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// The next request, or `None` when the peer closed the connection between messages.
    ///
    /// A malformed or oversized frame is an error: the caller closes this connection only.
    pub(crate) async fn read_request(&mut self) -> Result<Option<Request>, ConnError> {
        loop {
            if self.buffer.len() >= 4 {
                let len = wire::frame_len(&self.buffer)?;
                if self.buffer.len() >= len {
                    let request = wire::parse(&self.buffer[..len]);
                    self.buffer.advance(len);
                    return Ok(Some(request?));
                }
                self.buffer.reserve(len - self.buffer.len());
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Truncated)
                };
            }
        }
    }

    /// Writes one encoded reply.
    pub(crate) async fn write_reply(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }
}
