//! One case over one connection: write the bytes as the case says, read what comes back, and
//! decide how the connection ended — answered, closed by the server, an event stream opened,
//! or a hang.
//!
//! A hang is a connection that stays open and silent longer than a deadline plus a margin:
//!
//! - waiting for an answer (or, after a half-close, for the close): [`Limits::silence`] since
//!   the last byte either side sent;
//! - a held connection ([`Case::hold`]): its phase's deadline ([`Limits::phase`]) from the
//!   moment the watched byte went out, or from the end of the last answer, whichever is later
//!   (the server's header deadline counts from accept or from the end of the previous
//!   response). A trickle keeps sending, so only this rule catches a server that waits for it.
//!
//! A case whose framing is unknown ([`Case::expect`] is `None`) ends with a half-close after a
//! quiet moment ([`Limits::quiet`]): the server then sees the end of its input and must close.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::generate::{Case, Delivery, Phase};
use crate::response::{self, Parsed};

/// The deadlines the harness holds the server to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The server's `HTTP_HEADER_TIMEOUT_MS`.
    pub header: Duration,
    /// The server's `HTTP_BODY_TIMEOUT_MS`.
    pub body: Duration,
    /// Slack on top of a deadline before a connection counts as hung.
    pub margin: Duration,
    /// Silence after which a case of unknown framing is half-closed.
    pub quiet: Duration,
}

impl Limits {
    /// The longest a connection may stay silent while the harness waits for the server.
    pub fn silence(&self) -> Duration {
        self.header.max(self.body) + self.margin
    }

    /// The time a held connection in `phase` may stay open.
    pub fn phase(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Head => self.header,
            Phase::Body => self.body,
        }
        .saturating_add(self.margin)
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every expected answer came; the harness closed the connection.
    Answered,
    /// The server closed (or reset) the connection.
    Closed,
    /// An event stream opened; the harness closed it after its head.
    Stream,
    /// The connection stayed open and silent past a deadline.
    Hang {
        /// What the harness was waiting for.
        waiting_for: String,
        /// How long it waited.
        waited: Duration,
    },
    /// No connection could be made.
    Unreachable(String),
}

/// What one case got back.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Statuses of the final answers, in order.
    pub statuses: Vec<u16>,
    /// How it ended.
    pub ending: Ending,
    /// The harness half-closed the connection (framing unknown, then quiet).
    pub half_closed: bool,
    /// For a held connection the server closed: how long after its deadline started.
    pub cut_after: Option<Duration>,
    /// The first answer with a `5xx` status, as received (cut to 4 KiB).
    pub evidence: Vec<u8>,
    /// Ids named by `200` answers.
    pub ids: Vec<String>,
    /// Bytes written.
    pub written: usize,
}

impl Outcome {
    /// The `5xx` statuses received.
    pub fn server_errors(&self) -> impl Iterator<Item = u16> + '_ {
        self.statuses.iter().copied().filter(|s| *s >= 500)
    }

    /// A `5xx` or a hang: what fails a run.
    pub fn failed(&self) -> bool {
        self.server_errors().next().is_some() || matches!(self.ending, Ending::Hang { .. })
    }
}

/// The largest chunk read at once.
const READ_CHUNK: usize = 64 * 1024;
/// Evidence kept from a `5xx` answer.
const EVIDENCE: usize = 4096;
/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `case` on a fresh connection to `addr`.
pub async fn run(addr: SocketAddr, case: &Case, limits: &Limits) -> Outcome {
    let mut outcome = Outcome {
        statuses: Vec::new(),
        ending: Ending::Answered,
        half_closed: false,
        cut_after: None,
        evidence: Vec::new(),
        ids: Vec::new(),
        written: 0,
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            outcome.ending = Ending::Unreachable(e.to_string());
            return outcome;
        }
        Err(_) => {
            outcome.ending = Ending::Unreachable("connect timed out".to_owned());
            return outcome;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream, case, *limits);
    outcome.ending = conn.drive(&mut outcome).await;
    outcome.written = conn.written;
    outcome
}

/// The state of one connection.
struct Conn<'a> {
    stream: TcpStream,
    case: &'a Case,
    limits: Limits,
    written: usize,
    /// When the next piece may go out.
    next_write: Instant,
    /// The server can no longer take bytes, or the case stopped sending.
    writes_over: bool,
    /// When the watched byte of a held case went out.
    watch_start: Option<Instant>,
    last_activity: Instant,
    last_answer_end: Option<Instant>,
    received: Vec<u8>,
    /// Final answers parsed.
    answers: usize,
    /// The bytes stopped parsing as responses (or a body runs until close).
    parse_over: bool,
}

impl<'a> Conn<'a> {
    fn new(stream: TcpStream, case: &'a Case, limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            stream,
            case,
            limits,
            written: 0,
            next_write: now,
            writes_over: case.bytes.is_empty(),
            watch_start: case.hold.filter(|w| w.from == 0).map(|_| now),
            last_activity: now,
            last_answer_end: None,
            received: Vec::new(),
            answers: 0,
            parse_over: false,
        }
    }

    /// The end of the next piece to write, if one is due now.
    fn due_piece(&self, now: Instant) -> Option<usize> {
        if self.writes_over || self.written >= self.case.bytes.len() || now < self.next_write {
            return None;
        }
        let len = self.case.bytes.len();
        let end = match self.case.delivery {
            Delivery::Whole => len,
            Delivery::Split { piece, .. } => self.written + piece.max(1),
            Delivery::Trickle { from, .. } if self.written < from => from,
            Delivery::Trickle { per_tick, .. } => self.written + per_tick.max(1),
        };
        Some(end.min(len))
    }

    /// The pause after a piece.
    fn pause(&self) -> Duration {
        match self.case.delivery {
            Delivery::Whole => Duration::ZERO,
            Delivery::Split { pause_ms, .. } => Duration::from_millis(pause_ms),
            Delivery::Trickle { tick_ms, .. } => Duration::from_millis(tick_ms),
        }
    }

    /// The leading sane requests whose answers are owed; `None` when unknown.
    fn owed(&self) -> Option<usize> {
        if self.parse_over {
            None
        } else {
            self.case.expect
        }
    }

    /// The held connection's deadline, once it runs: the phase (the held request's, or the
    /// header deadline once that request got its answer) from the later of the watched byte
    /// and the last answer's end; armed only when the answers owed before it came. Returns
    /// when that phase started and which it is.
    fn hold_phase(&self) -> Option<(Instant, Phase)> {
        let watch = self.case.hold?;
        let start = self.watch_start?;
        let before = self.case.expect.unwrap_or(0);
        if self.answers < before {
            return None;
        }
        let phase = if self.answers > before {
            Phase::Head
        } else {
            watch.phase
        };
        let start = self.last_answer_end.map_or(start, |end| end.max(start));
        Some((start, phase))
    }

    async fn drive(&mut self, outcome: &mut Outcome) -> Ending {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let now = Instant::now();
            let all_written = self.written >= self.case.bytes.len() || self.writes_over;
            if self.case.hold.is_none() && all_written {
                if let Some(owed) = self.owed() {
                    if self.answers >= owed {
                        return Ending::Answered;
                    }
                }
            }
            // The earliest of: the next piece, the hang deadlines, the quiet half-close.
            let mut hang_at = self.last_activity + self.limits.silence();
            let mut hang_start = self.last_activity;
            let mut waiting_for = if all_written {
                "an answer or a close".to_owned()
            } else {
                "the server to read or answer".to_owned()
            };
            if let Some((start, phase)) = self.hold_phase() {
                let at = start + self.limits.phase(phase);
                if at <= hang_at {
                    hang_at = at;
                    hang_start = start;
                    waiting_for =
                        format!("a close within the {} deadline (held open)", phase.name());
                }
            }
            if now >= hang_at {
                return Ending::Hang {
                    waiting_for,
                    waited: now - hang_start,
                };
            }
            let quiet_at = (self.case.hold.is_none()
                && self.owed().is_none()
                && all_written
                && !outcome.half_closed)
                .then(|| self.last_activity + self.limits.quiet);
            let piece = self.due_piece(now);
            let mut wake = hang_at;
            if let Some(q) = quiet_at {
                wake = wake.min(q);
            }
            if !all_written && piece.is_none() {
                wake = wake.min(self.next_write);
            }
            let case = self.case;
            let from = self.written;
            let (mut reader, mut writer) = self.stream.split();
            tokio::select! {
                read = reader.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => {
                        outcome.cut_after = self
                            .hold_phase()
                            .map(|(start, _)| Instant::now().saturating_duration_since(start));
                        return Ending::Closed;
                    }
                    Ok(n) => {
                        self.last_activity = Instant::now();
                        self.received.extend_from_slice(&chunk[..n]);
                        if let Some(ending) = self.parse(outcome) {
                            return ending;
                        }
                    }
                },
                wrote = async {
                    match piece {
                        Some(end) => writer.write(&case.bytes[from..end]).await,
                        None => std::future::pending().await,
                    }
                } => match wrote {
                    Ok(n) if n > 0 => {
                        let now = Instant::now();
                        self.written += n;
                        self.last_activity = now;
                        if let Some(watch) = self.case.hold {
                            if self.watch_start.is_none() && self.written >= watch.from {
                                self.watch_start = Some(now);
                            }
                        }
                        if piece.is_some_and(|end| self.written >= end) {
                            self.next_write = now + self.pause();
                        }
                    }
                    _ => self.writes_over = true,
                },
                () = tokio::time::sleep_until(wake) => {
                    if quiet_at.is_some_and(|q| Instant::now() >= q) {
                        let _ = writer.shutdown().await;
                        outcome.half_closed = true;
                        self.writes_over = true;
                        self.last_activity = Instant::now();
                    }
                }
            }
        }
    }

    /// Parses the answers received so far; an ending when one says the connection is done.
    fn parse(&mut self, outcome: &mut Outcome) -> Option<Ending> {
        while !self.parse_over && !self.received.is_empty() {
            let head = self
                .case
                .sent
                .get(self.answers)
                .is_some_and(|sent| sent.head);
            match response::parse(&self.received, head) {
                Parsed::Incomplete => break,
                Parsed::Whole {
                    status,
                    len,
                    interim,
                    ..
                } => {
                    let answer: Vec<u8> = self.received.drain(..len).collect();
                    if interim {
                        continue;
                    }
                    self.answer(status, &answer, outcome);
                    if status == 200 {
                        outcome.ids.extend(response::object_ids(&answer));
                    }
                }
                Parsed::Open {
                    status,
                    event_stream,
                } => {
                    let answer = self.received.clone();
                    self.answer(status, &answer, outcome);
                    self.parse_over = true;
                    if event_stream {
                        return Some(Ending::Stream);
                    }
                }
                Parsed::Garbage => self.parse_over = true,
            }
        }
        if self.parse_over {
            // What follows is not counted; keep nothing.
            self.received.clear();
        }
        None
    }

    /// Counts a final answer.
    fn answer(&mut self, status: u16, bytes: &[u8], outcome: &mut Outcome) {
        self.answers += 1;
        // The answer ended when its last bytes arrived.
        self.last_answer_end = Some(self.last_activity);
        outcome.statuses.push(status);
        if status >= 500 && outcome.evidence.is_empty() {
            outcome.evidence = bytes[..bytes.len().min(EVIDENCE)].to_vec();
        }
        // A held case whose unfinished request got its answer sends no more of it.
        if self.case.hold.is_some() && self.answers > self.case.expect.unwrap_or(0) {
            self.writes_over = true;
        }
    }
}
