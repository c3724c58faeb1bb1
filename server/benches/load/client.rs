//! One browser of the events phase: an event stream read off raw TCP, and the page's per-list
//! refetches through its server functions, coalesced as the page coalesces them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Which list an event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum List {
    Users = 0,
    Devices = 1,
}

/// State every client of phase 3 shares.
pub(crate) struct Shared {
    pub(crate) http: reqwest::Client,
    pub(crate) site: SocketAddr,
    pub(crate) refetch: bool,
    pub(crate) connected: AtomicUsize,
    pub(crate) ended_early: AtomicUsize,
    pub(crate) deliveries: AtomicU64,
    pub(crate) refetches_ok: AtomicU64,
    pub(crate) refetches_failed: AtomicU64,
    /// Refetches asked for and not yet answered.
    pub(crate) refetches_pending: AtomicU64,
}

/// When each document id's event reached one client (more than one instant: duplicates).
pub(crate) type Seen = HashMap<String, Vec<Instant>>;

/// One list's refetches in one client, coalesced like the page's: at most one in flight and
/// one queued.
#[derive(Default)]
struct ListRefetch {
    /// (a fetch is in flight, another is queued)
    state: std::sync::Mutex<(bool, bool)>,
    /// The newest event id that named the list, sent with the refetch as the page does.
    after: std::sync::Mutex<Option<String>>,
    wake: tokio::sync::Notify,
}

impl ListRefetch {
    /// The list changed at event `id`: fetch now, or once more after the fetch in flight.
    fn stale(&self, shared: &Shared, id: Option<&str>) {
        if let Some(id) = id {
            *self
                .after
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.to_owned());
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *state {
            (false, _) => {
                *state = (true, false);
                shared.refetches_pending.fetch_add(1, Ordering::Relaxed);
                self.wake.notify_one();
            }
            (true, false) => {
                state.1 = true;
                shared.refetches_pending.fetch_add(1, Ordering::Relaxed);
            }
            (true, true) => {}
        }
    }

    /// Fetches whenever the list is stale, until `stop`; returns each fetch's time (µs).
    async fn run(&self, shared: &Shared, list: List, stop: &CancellationToken) -> Vec<u64> {
        let mut times = Vec::new();
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = stop.cancelled() => return times,
            }
            loop {
                let started = Instant::now();
                let after = self
                    .after
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let ok = fetch_list(shared, list, after.as_deref()).await;
                let counter = if ok {
                    &shared.refetches_ok
                } else {
                    &shared.refetches_failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                shared.refetches_pending.fetch_sub(1, Ordering::Relaxed);
                times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                let mut state = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if state.1 {
                    state.1 = false;
                } else {
                    state.0 = false;
                    break;
                }
            }
        }
    }
}

/// One browser: an event stream read off raw TCP; each event makes the list it names stale,
/// and that list is refetched through its server function, at most one in flight and one
/// queued per list. Returns when `stop` is cancelled (or the stream ends): what it saw and its
/// refetch times (µs).
pub(crate) async fn run_client(shared: Arc<Shared>, stop: CancellationToken) -> (Seen, Vec<u64>) {
    let lists = Arc::new([ListRefetch::default(), ListRefetch::default()]);
    let refetchers = [List::Users, List::Devices].map(|list| {
        let (shared, lists, stop) = (Arc::clone(&shared), Arc::clone(&lists), stop.clone());
        tokio::spawn(async move { lists[list as usize].run(&shared, list, &stop).await })
    });
    let stale = |list: List, id: Option<&str>| {
        if shared.refetch {
            lists[list as usize].stale(&shared, id);
        }
    };
    let mut seen = Seen::new();
    tokio::select! {
        result = read_events(&shared, &mut seen, &stale) => {
            if let Err(e) = result {
                eprintln!("client stream failed: {e}");
            }
            shared.ended_early.fetch_add(1, Ordering::Relaxed);
        }
        () = stop.cancelled() => {}
    }
    let mut times = Vec::new();
    for refetcher in refetchers {
        times.extend(refetcher.await.expect("refetch task does not panic"));
    }
    (seen, times)
}

/// `POST /_server/<list>` as the page's server-function call sends it (naming the event it
/// refetches for, if any); whether it answered a snapshot.
pub(crate) async fn fetch_list(shared: &Shared, list: List, after: Option<&str>) -> bool {
    let endpoint = match list {
        List::Users => "users",
        List::Devices => "lock_devices",
    };
    let response = shared
        .http
        .post(format!("http://{}/_server/{endpoint}", shared.site))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(after.map(|id| format!("after={id}")).unwrap_or_default())
        .send()
        .await;
    match response {
        Ok(response) if response.status().is_success() => response
            .bytes()
            .await
            .is_ok_and(|body| body.starts_with(b"{\"items\":")),
        _ => false,
    }
}

/// Opens `GET /api/sse` and records events until the stream ends.
async fn read_events(
    shared: &Shared,
    seen: &mut Seen,
    stale: &impl Fn(List, Option<&str>),
) -> std::io::Result<()> {
    let mut socket = TcpStream::connect(shared.site).await?;
    let request = format!(
        "GET /api/sse HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        shared.site
    );
    socket.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(socket);
    read_head(&mut reader).await?;
    let (mut pending, mut data, mut body) = (Vec::new(), String::new(), Vec::new());
    let mut id = String::new();
    while next_chunk(&mut reader, &mut body).await? {
        let arrived = Instant::now();
        pending.extend_from_slice(&body);
        // Every complete line; a partial one waits for the next part.
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&raw);
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                if !data.is_empty() {
                    dispatch(shared, seen, stale, &data, &id, arrived);
                    data.clear();
                }
            } else if text.starts_with("retry:") {
                shared.connected.fetch_add(1, Ordering::Relaxed);
            } else if let Some(value) = text.strip_prefix("data:") {
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            } else if let Some(value) = text.strip_prefix("id:") {
                // Kept like EventSource's last event id.
                value.strip_prefix(' ').unwrap_or(value).clone_into(&mut id);
            }
            // `event:` and `: heartbeat` lines carry nothing measured here.
        }
    }
    Ok(())
}

/// Reads a response head; fails unless it is a `200` with a chunked body.
pub(crate) async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<()> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status line {line:?}")));
    }
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        chunked |= line.eq_ignore_ascii_case("transfer-encoding: chunked\r\n");
    }
    if chunked {
        Ok(())
    } else {
        Err(std::io::Error::other("the body is not chunked"))
    }
}

/// Reads the next chunk of a chunked body into `out`; `false` at its end.
pub(crate) async fn next_chunk<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    out: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let mut size = String::new();
    if reader.read_line(&mut size).await? == 0 {
        return Ok(false);
    }
    let hex = size.trim().split(';').next().unwrap_or_default();
    let size = usize::from_str_radix(hex, 16)
        .map_err(|e| std::io::Error::other(format!("chunk size {hex:?}: {e}")))?;
    out.resize(size + 2, 0); // the chunk and its CRLF
    reader.read_exact(out).await?;
    out.truncate(size);
    Ok(size > 0)
}

/// A complete message (with the stream's last event id): note which document it was about,
/// then mark its list stale.
fn dispatch(
    shared: &Shared,
    seen: &mut Seen,
    stale: &impl Fn(List, Option<&str>),
    data: &str,
    id: &str,
    arrived: Instant,
) {
    let message: serde_json::Value = serde_json::from_str(data).expect("event data is JSON");
    let id = Some(id).filter(|id| !id.is_empty());
    if let Some(id) = message.get("id").and_then(serde_json::Value::as_str) {
        seen.entry(id.to_owned()).or_default().push(arrived);
        shared.deliveries.fetch_add(1, Ordering::Relaxed);
    }
    match message
        .get("collection")
        .and_then(serde_json::Value::as_str)
    {
        Some("users") => stale(List::Users, id),
        Some("devices") => stale(List::Devices, id),
        _ => {
            stale(List::Users, id);
            stale(List::Devices, id);
        }
    }
}
