//! The site's accept loop: every connection gets a slot of the HTTP share or is closed at once,
//! and is served by hyper's HTTP/1 connection with a deadline for each request head.
//!
//! - **Shares.** A connection is admitted only while `HTTP_MAX_CONNECTIONS` are not all taken
//!   and its peer address holds fewer than `HTTP_MAX_CONNECTIONS_PER_IP` (a peer in
//!   `TRUSTED_PROXIES` is exempt from the per-address cap). Otherwise it is accepted and closed
//!   at once without an answer: never left in the kernel's backlog, and, at accept, the server
//!   cannot know whether its request is an event stream (a `503` would make an `EventSource`
//!   give up for good). The file budget ([`crate::budget`]) sized the share so that `accept`
//!   does not run out of descriptors.
//! - **Head deadline.** hyper's HTTP/1 connection, given a timer, closes a connection whose
//!   request head is not whole `HTTP_HEADER_TIMEOUT_MS` after the connection was accepted or
//!   the previous response was written, however slowly its bytes trickle (it is also a
//!   kept-alive connection's idle limit). The body deadline is the server functions' edge's
//!   ([`crate::server_fns`]), the only place a body is read; a route that reads none does not
//!   wait for it: hyper closes the connection after the response instead.
//! - **HTTP/1 only.** `axum::serve` cannot be given a timer, and the HTTP/2 preface sniffing of
//!   hyper-util's `auto` builder has no deadline of its own; browsers reach an HTTP/2 site
//!   through TLS, which a reverse proxy in front of this server ends.
//! - **Shutdown.** [`serve`] stops accepting when `shutdown` is cancelled, lets each connection
//!   finish its request in flight and closes it, and returns once every connection is gone
//!   (the caller bounds that wait with `SHUTDOWN_GRACE_MS` and [`Closing`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::client::TrustedProxies;
use crate::metrics::{bump, Metrics};
use crate::net::{Closing, Conn};
use crate::shares::Shares;

/// The most bytes of a request head hyper buffers (its default is about 400 KiB): far above
/// any browser's head, and it bounds what a half-sent head costs.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long the loop pauses after `accept` failed (out of descriptors despite the budget, say),
/// instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`, 4,096 on current
/// Linux): a burst of connections waits in it for the loop to accept or refuse them, instead
/// of their handshakes being dropped and retried a second later (tokio's default is 1,024).
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds the site's listener at `addr` with [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart can bind while old connections linger.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What the accept loop needs.
#[derive(Debug)]
pub struct Site {
    /// The bound listener.
    pub listener: TcpListener,
    /// The application.
    pub router: Router,
    /// `HTTP_MAX_CONNECTIONS`, `HTTP_MAX_CONNECTIONS_PER_IP`.
    pub shares: Shares,
    /// `TRUSTED_PROXIES`: exempt from the per-address cap.
    pub trusted: TrustedProxies,
    /// `HTTP_HEADER_TIMEOUT_MS`.
    pub header_timeout: Duration,
    /// `SSE_WRITE_TIMEOUT_MS`: a connection whose socket accepts none of its pending bytes for
    /// this long is closed.
    pub write_timeout: Duration,
    /// The connection counters.
    pub metrics: Arc<Metrics>,
    /// Closes every connection at once, at the end of a shutdown's grace period.
    pub closing: Closing,
}

/// Accepts and serves connections until `shutdown` is cancelled, then waits for the ones open
/// to finish their request in flight (see the module docs).
pub async fn serve(site: Site, shutdown: CancellationToken) {
    let Site {
        listener,
        router,
        shares,
        trusted,
        header_timeout,
        write_timeout,
        metrics,
        closing,
    } = site;
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (socket, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(cause = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let client = (!trusted.contains(remote.ip())).then_some(remote.ip());
        let Some(slot) = shares.admit(client) else {
            // Closed without an answer; the client tries again later.
            bump(&metrics.http_connections_refused);
            drop(socket);
            continue;
        };
        let (conn, info) = Conn::new(
            socket,
            remote,
            slot,
            write_timeout,
            Arc::clone(&metrics),
            &closing,
        );
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(info.clone()));
            router.clone().oneshot(request)
        });
        let connection = builder.serve_connection(TokioIo::new(conn), service);
        let shutdown = shutdown.clone();
        let metrics = Arc::clone(&metrics);
        connections.spawn(async move {
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                if e.is_timeout() {
                    bump(&metrics.http_header_timeouts);
                }
                tracing::debug!(peer = %remote, cause = %e, "connection closed");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
