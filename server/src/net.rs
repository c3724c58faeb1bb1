//! The site's connections as hyper sees them ([`Conn`], made by [`crate::accept`]): a write
//! deadline on every connection, and the hand-over of an HTTP/1.1 connection to the
//! event-stream writer.
//!
//! hyper keeps about 16 KiB of buffers per HTTP/1.1 connection for as long as it serves it, and
//! stops polling a response body whose socket is full. An event stream is long-lived, so on
//! HTTP/1.1 the stream's handler *takes the connection over*: it answers with headers
//! (`Connection: close`, chunked) and an empty body, the connection wrapper keeps back what
//! hyper writes after that (the head, then the chunked terminator, which it drops), and when
//! hyper lets go of the connection the wrapper hands the bare socket and the head to the
//! event-stream writer. hyper's buffers and task are gone; the stream costs only its own small
//! task. This works on a kept-alive connection that already served pages, since it happens at
//! the stream's request, whichever request of the connection that is.
//!
//! An event-stream socket gets a fixed, small kernel send buffer and a TCP user timeout (see
//! [`bound_stream_socket`]), so a peer that stops reading, or vanished, is found out by the
//! stream's write deadline or by the kernel.
//!
//! At the end of a shutdown's grace period, [`Closing::close`] ends every connection hyper still
//! serves: its next read or write fails, whatever the peer does.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::metrics::{bump, Metrics};
use crate::shares::Slot;

/// The chunked-encoding terminator hyper writes when the (empty) body of a handed-over
/// response ends; dropped, since the stream goes on.
const CHUNKED_END: &[u8] = b"0\r\n\r\n";
/// Most bytes hyper may write after a hand-over is requested (the response head); beyond it
/// the hand-over is abandoned and the connection closed.
const MAX_HEAD: usize = 8 * 1024;

/// The kernel send buffer of an event-stream socket, as asked for (`SO_SNDBUF`; Linux doubles
/// it, so 128 KiB are held at most).
pub const STREAM_SEND_BUFFER: usize = 64 * 1024;

/// Bounds how much an event stream's peer can leave unread, and how long sent data may go
/// unacknowledged: the kernel send buffer of `socket` is fixed at [`STREAM_SEND_BUFFER`]
/// (which also stops the kernel growing it up to `tcp_wmem`), so once the peer stops reading,
/// the writer's bytes are pending after that much unread data plus the peer's receive window,
/// and its write deadline runs. On Linux the kernel also aborts the connection (a read or write
/// then fails with [`io::ErrorKind::TimedOut`]) once sent data stayed unacknowledged for
/// `write_timeout`, which finds a peer that vanished. A healthy idle stream has nothing
/// unacknowledged and is never cut.
pub fn bound_stream_socket(socket: &TcpStream, write_timeout: Duration) -> io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    socket.set_send_buffer_size(STREAM_SEND_BUFFER)?;
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    socket.set_tcp_user_timeout(Some(write_timeout))?;
    #[cfg(not(any(target_os = "android", target_os = "fuchsia", target_os = "linux")))]
    let _ = write_timeout;
    Ok(())
}

/// What a handed-over connection is given to: the socket and the response head hyper wrote.
pub type Takeover = Box<dyn FnOnce(TcpStream, Bytes) + Send>;

/// Closes every [`Conn`] made with it at once (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Closing(CancellationToken);

impl Closing {
    /// From now on every read and write of the listener's connections fails (a pending one is
    /// woken to fail), so hyper drops them and their sockets close.
    pub fn close(&self) {
        self.0.cancel();
    }
}

/// What a request knows of its connection (`ConnectInfo<ConnInfo>`): the peer, and the way to
/// take the connection over.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    shared: Arc<Shared>,
}

impl ConnInfo {
    /// Asks for the connection once hyper has written the current response (which must say
    /// `Connection: close` and have an empty chunked body): `takeover` then gets the socket and
    /// the response head. Only for HTTP/1.1 requests.
    pub fn take_over(&self, takeover: Takeover) {
        let mut slot = self
            .shared
            .takeover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Some(takeover);
        self.shared.takeover_armed.store(true, Ordering::Release);
    }
}

struct Shared {
    /// Set once a take-over was asked for: from then on hyper's writes are kept back.
    takeover_armed: AtomicBool,
    takeover: Mutex<Option<Takeover>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("takeover_armed", &self.takeover_armed)
            .finish_non_exhaustive()
    }
}

/// One accepted connection as hyper sees it.
#[derive(Debug)]
pub struct Conn {
    /// `None` only while being dropped.
    socket: Option<TcpStream>,
    write_timeout: Duration,
    /// Armed when a write found the socket full; cleared by any progress.
    stall: Option<Pin<Box<Sleep>>>,
    /// What hyper wrote after a take-over was requested.
    head: Vec<u8>,
    shared: Arc<Shared>,
    /// Completes when the listener's [`Closing`] is closed.
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The connection's place in the HTTP share, given back when hyper lets go of it (an
    /// event stream that takes the connection over holds a stream slot instead).
    _slot: Slot,
}

impl Conn {
    /// Wraps an accepted `socket` from `remote` holding `slot`: a write that finds the socket
    /// full fails once it accepted nothing for `write_timeout`, and every read and write fails
    /// once `closing` is closed. Returns the connection and what its requests know of it.
    pub fn new(
        socket: TcpStream,
        remote: SocketAddr,
        slot: Slot,
        write_timeout: Duration,
        metrics: Arc<Metrics>,
        closing: &Closing,
    ) -> (Self, ConnInfo) {
        // Events are small and latency matters more than packet count.
        let _ = socket.set_nodelay(true);
        let shared = Arc::new(Shared {
            takeover_armed: AtomicBool::new(false),
            takeover: Mutex::new(None),
            metrics,
        });
        let conn = Self {
            socket: Some(socket),
            write_timeout,
            stall: None,
            head: Vec::new(),
            shared: Arc::clone(&shared),
            closed: Box::pin(closing.0.clone().cancelled_owned()),
            _slot: slot,
        };
        (conn, ConnInfo { remote, shared })
    }

    /// Fails once the listener's connections are closed; else registers for that moment.
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed its connections at the end of the shutdown grace period",
            )),
            Poll::Pending => Ok(()),
        }
    }

    fn taking_over(&self) -> bool {
        self.shared.takeover_armed.load(Ordering::Acquire)
    }

    /// Keeps `buf` for the new owner instead of writing it.
    fn keep(&mut self, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.head.len() + buf.len() > MAX_HEAD {
            return Poll::Ready(Err(io::Error::other(
                "response head too large to hand over",
            )));
        }
        self.head.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Maps a write's outcome, closing the connection once its socket accepted nothing for
    /// the write timeout.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.stall = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.write_timeout;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stall.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        bump(&self.shared.metrics.http_write_timeouts);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the peer accepted no bytes within the write timeout",
                        )))
                    }
                }
            }
        }
    }

    fn socket(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.socket
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check_open(cx) {
            return Poll::Ready(Err(e));
        }
        match this.socket() {
            Ok(socket) => socket.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.taking_over() {
            return this.keep(buf);
        }
        if let Err(e) = this.check_open(cx) {
            return Poll::Ready(Err(e));
        }
        let polled = match this.socket() {
            Ok(socket) => socket.poll_write(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.deadline(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.taking_over() {
            let mut kept = 0;
            for buf in bufs {
                match this.keep(buf) {
                    Poll::Ready(Ok(n)) => kept += n,
                    other => return other,
                }
            }
            return Poll::Ready(Ok(kept));
        }
        if let Err(e) = this.check_open(cx) {
            return Poll::Ready(Err(e));
        }
        let polled = match this.socket() {
            Ok(socket) => socket.poll_write_vectored(cx, bufs),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.deadline(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taking_over() {
            return Poll::Ready(Ok(()));
        }
        let polled = match this.socket() {
            Ok(socket) => socket.poll_flush(cx),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.deadline(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taking_over() {
            // The socket lives on with its new owner.
            return Poll::Ready(Ok(()));
        }
        match this.socket() {
            Ok(socket) => socket.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.taking_over() {
            return;
        }
        let takeover = self
            .shared
            .takeover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let (Some(takeover), Some(socket)) = (takeover, self.socket.take()) else {
            return;
        };
        // hyper wrote the head and then ended the empty chunked body; a connection that did
        // not get that far (the peer left, an error) is simply closed.
        if let Some(head_len) = self.head.len().checked_sub(CHUNKED_END.len()) {
            if self.head.ends_with(CHUNKED_END) {
                self.head.truncate(head_len);
                takeover(socket, Bytes::from(std::mem::take(&mut self.head)));
            }
        }
    }
}
