//! Cases: the bytes one connection sends, how they are delivered, and what the harness may
//! expect back. A case is a function of the random stream (and of the ids earlier answers
//! named), so a seed gives the same cases again.
//!
//! Requests start from the server's real routes ([`crate::routes`]) and are bent at every
//! level: method, target, version, header names and values (encodings, bytes above 0x7F,
//! duplicates, long and many), framing (`Content-Length`, chunked, both, lies), bodies
//! (url-encoded forms, JSON, not UTF-8, random), several pipelined on one connection, and
//! byte-level mutations of the whole. A request whose framing the harness cannot be sure the
//! server reads as written is not *sane*: for it, no answer is required (see
//! [`Case::expect`]).
//!
//! The slow lane ([`Lane::Slow`], the trickle mode) sends heads and bodies too slowly, or stops
//! half-way and holds the connection open, and watches the server close it within its
//! deadline ([`Watch`]).

use rand::rngs::StdRng;
use rand::Rng;

use crate::routes::{self, ServerFn, SERVER_FNS, SERVER_FN_PREFIX};

/// Which kind of cases a connection sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Requests sent whole or in quick pieces; the connection ends when they are answered.
    Fast,
    /// Heads and bodies trickled past the deadlines, or left unfinished on an open connection.
    Slow,
}

/// How the bytes go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One write.
    Whole,
    /// Writes of `piece` bytes with `pause_ms` between them (the parser sees every split).
    Split {
        /// Bytes per write.
        piece: usize,
        /// Pause between writes.
        pause_ms: u64,
    },
    /// The bytes before `from` in one write, then `per_tick` bytes every `tick_ms`.
    Trickle {
        /// Where the trickle starts.
        from: usize,
        /// Bytes per tick.
        per_tick: usize,
        /// Time between ticks.
        tick_ms: u64,
    },
}

/// Which of the server's deadlines a held connection is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `HTTP_HEADER_TIMEOUT_MS`: from accept, or from the end of the previous response.
    Head,
    /// `HTTP_BODY_TIMEOUT_MS`: from the end of the head.
    Body,
}

impl Phase {
    /// The name used in signatures and plans.
    pub fn name(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Body => "body",
        }
    }
}

/// A connection the harness keeps open, sending nothing more: the server must close it (or
/// answer) within the `phase` deadline, counted from the moment byte `from` was written (for
/// [`Phase::Head`]: or from the end of the last response, whichever is later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// The deadline that applies.
    pub phase: Phase,
    /// The offset whose writing starts it.
    pub from: usize,
}

/// One request in a case, as far as the response reader needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Where it starts in [`Case::bytes`].
    pub start: usize,
    /// It is a `HEAD` (its answer has no body).
    pub head: bool,
    /// Method and path, cut, for labels and signatures.
    pub route: String,
}

/// The bytes of one connection and how to send them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Everything written, in order.
    pub bytes: Vec<u8>,
    /// The requests in it (complete or not), in order.
    pub sent: Vec<Sent>,
    /// Answers that must come, in order, for the leading sane requests; `None` when a
    /// mutation or a framing oddity makes their number unknown (then the harness waits for a
    /// quiet moment, half-closes, and only requires the server to close).
    pub expect: Option<usize>,
    /// How the bytes go out.
    pub delivery: Delivery,
    /// Keep the connection open after the bytes (and the expected answers): the server must
    /// end it within a deadline. `None`: the harness ends it.
    pub hold: Option<Watch>,
}

impl Case {
    /// A one-line description: the routes and what was done to them.
    pub fn label(&self) -> String {
        let routes: Vec<&str> = self.sent.iter().map(|s| s.route.as_str()).collect();
        let mut label = routes.join(" + ");
        if self.expect.is_none() {
            label.push_str(" [framing unknown]");
        }
        match self.delivery {
            Delivery::Whole => {}
            Delivery::Split { .. } => label.push_str(" [split]"),
            Delivery::Trickle { .. } => label.push_str(" [trickled]"),
        }
        if let Some(watch) = self.hold {
            label.push_str(&format!(" [held open, {} deadline]", watch.phase.name()));
        }
        label
    }

    /// The delivery and expectations as `key=value` lines (saved beside the bytes of a finding,
    /// read back by [`Case::from_plan`]).
    pub fn plan(&self) -> String {
        let mut plan = String::new();
        match self.delivery {
            Delivery::Whole => plan.push_str("delivery=whole\n"),
            Delivery::Split { piece, pause_ms } => {
                plan.push_str(&format!("delivery=split {piece} {pause_ms}\n"));
            }
            Delivery::Trickle {
                from,
                per_tick,
                tick_ms,
            } => plan.push_str(&format!("delivery=trickle {from} {per_tick} {tick_ms}\n")),
        }
        if let Some(n) = self.expect {
            plan.push_str(&format!("expect={n}\n"));
        }
        if let Some(watch) = self.hold {
            plan.push_str(&format!("hold={} {}\n", watch.phase.name(), watch.from));
        }
        for sent in &self.sent {
            plan.push_str(&format!(
                "request={} {} {}\n",
                sent.start,
                u8::from(sent.head),
                sent.route
            ));
        }
        plan
    }

    /// A case from saved bytes and a [`Case::plan`]; lines it does not know are skipped.
    pub fn from_plan(bytes: Vec<u8>, plan: &str) -> Result<Self, String> {
        let mut case = Self {
            bytes,
            sent: Vec::new(),
            expect: None,
            delivery: Delivery::Whole,
            hold: None,
        };
        let number = |s: Option<&str>| -> Result<u64, String> {
            s.and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad number in the plan: {s:?}"))
        };
        let size = |s: Option<&str>| number(s).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        for line in plan.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let mut words = value.splitn(if key == "delivery" { 4 } else { 3 }, ' ');
            match key {
                "delivery" => {
                    case.delivery = match words.next() {
                        Some("split") => Delivery::Split {
                            piece: size(words.next())?.max(1),
                            pause_ms: number(words.next())?,
                        },
                        Some("trickle") => Delivery::Trickle {
                            from: size(words.next())?,
                            per_tick: size(words.next())?.max(1),
                            tick_ms: number(words.next())?,
                        },
                        _ => Delivery::Whole,
                    }
                }
                "expect" => case.expect = Some(size(words.next())?),
                "hold" => {
                    let phase = match words.next() {
                        Some("body") => Phase::Body,
                        _ => Phase::Head,
                    };
                    case.hold = Some(Watch {
                        phase,
                        from: size(words.next())?,
                    });
                }
                "request" => case.sent.push(Sent {
                    start: size(words.next())?,
                    head: words.next() == Some("1"),
                    route: words.next().unwrap_or_default().to_owned(),
                }),
                _ => {}
            }
        }
        Ok(case)
    }
}

/// Ids seen in answers (24-hex ObjectIds), for the writes to name real users and devices.
#[derive(Debug, Default, Clone)]
pub struct Ids {
    ids: Vec<String>,
    next: usize,
}

impl Ids {
    /// The most ids kept; new ones replace the oldest.
    const KEEP: usize = 64;

    /// Remembers `id`.
    pub fn remember(&mut self, id: String) {
        if self.ids.contains(&id) {
            return;
        }
        if self.ids.len() < Self::KEEP {
            self.ids.push(id);
        } else {
            self.ids[self.next] = id;
            self.next = (self.next + 1) % Self::KEEP;
        }
    }

    /// An id chosen by `pick` (always one draw, so the random stream does not depend on what
    /// the server answered); a random one while none is known.
    fn get(&self, pick: u64) -> String {
        if self.ids.is_empty() {
            return format!("{pick:024x}");
        }
        let i = usize::try_from(pick % self.ids.len() as u64).unwrap_or(0);
        self.ids[i].clone()
    }
}

/// Random choices, in the words the generator uses.
trait Choose {
    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u32) -> bool;
    /// One of `items` (not empty).
    fn pick<T: Copy>(&mut self, items: &[T]) -> T;
    /// A number in `lo..=hi`.
    fn between(&mut self, lo: usize, hi: usize) -> usize;
    /// `n` random bytes.
    fn bytes(&mut self, n: usize) -> Vec<u8>;
}

impl Choose for StdRng {
    fn chance(&mut self, percent: u32) -> bool {
        self.random_range(0..100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.random_range(0..items.len())]
    }

    fn between(&mut self, lo: usize, hi: usize) -> usize {
        self.random_range(lo..=hi.max(lo))
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; n];
        self.fill(&mut bytes[..]);
        bytes
    }
}

/// How a body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body headers (and no body).
    None,
    /// `Content-Length` with the body's length.
    Length,
    /// `Transfer-Encoding: chunked`, chunks of random sizes.
    Chunked,
}

/// One request before it is written out.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    target: Vec<u8>,
    version: &'static [u8],
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    framing: Framing,
    /// The server reads its framing as written (no lies, no odd line endings).
    sane: bool,
    /// Label: method and path.
    route: String,
}

impl Request {
    fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_owned(),
            target: target.as_bytes().to_vec(),
            version: b"HTTP/1.1",
            headers: Vec::new(),
            body: Vec::new(),
            framing: Framing::None,
            sane: true,
            route: format!("{method} {}", cut(target, 60)),
        }
    }

    fn header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.headers
            .push((name.as_bytes().to_vec(), value.as_ref().to_vec()));
    }

    /// The bytes, and where the body starts in them.
    fn write(&self, rng: &mut StdRng) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        if !self.version.is_empty() {
            out.push(b' ');
            out.extend_from_slice(self.version);
        }
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        match self.framing {
            Framing::None => {}
            Framing::Length => {
                out.extend_from_slice(
                    format!("Content-Length: {}\r\n", self.body.len()).as_bytes(),
                );
            }
            Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        let body_at = out.len();
        if self.framing == Framing::Chunked {
            let mut rest = &self.body[..];
            while !rest.is_empty() {
                let n = rng.between(1, rest.len().min(4096));
                let extension: &[u8] = if rng.chance(10) { b";ext=1" } else { b"" };
                out.extend_from_slice(format!("{n:x}").as_bytes());
                out.extend_from_slice(extension);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(if rng.chance(10) {
                b"0\r\nX-Trailer: 1\r\n\r\n"
            } else {
                b"0\r\n\r\n"
            });
        } else {
            out.extend_from_slice(&self.body);
        }
        (out, body_at)
    }
}

/// `text`, cut to `max` characters.
fn cut(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Builds cases for one connection's stream.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    /// Ids from earlier answers.
    pub ids: Ids,
}

impl Generator {
    /// A generator over `rng`.
    pub fn new(rng: StdRng) -> Self {
        Self {
            rng,
            ids: Ids::default(),
        }
    }

    /// The next case of `lane`.
    pub fn case(&mut self, lane: Lane) -> Case {
        match lane {
            Lane::Fast => self.fast_case(),
            Lane::Slow => self.slow_case(),
        }
    }

    /// One to eight requests, sometimes a stream last, sometimes mutated, sent whole or split.
    fn fast_case(&mut self) -> Case {
        let rng = &mut self.rng;
        let count = match rng.random_range(0..100) {
            0..50 => 1,
            50..85 => rng.between(2, 4),
            _ => rng.between(5, 8),
        };
        let mut requests: Vec<Request> = (0..count).map(|_| self.request()).collect();
        if self.rng.chance(2) {
            let stream = self.event_stream();
            requests.push(stream);
        }
        let mut case = self.assemble(&requests);
        if self.rng.chance(20) {
            mutate(&mut self.rng, &mut case.bytes);
            case.expect = None;
        }
        if self.rng.chance(15) {
            let piece = self.rng.between(1, 64).max(case.bytes.len() / 200);
            let pause_ms = if self.rng.chance(20) {
                self.rng.between(1, 3) as u64
            } else {
                0
            };
            case.delivery = Delivery::Split { piece, pause_ms };
        }
        case
    }

    /// Sane requests first (their answers expected), then one that trickles or stops.
    fn slow_case(&mut self) -> Case {
        let before = if self.rng.chance(30) {
            self.rng.between(1, 2)
        } else {
            0
        };
        let mut requests: Vec<Request> = Vec::new();
        while requests.len() < before {
            let r = self.request();
            if r.sane {
                requests.push(r);
            }
        }
        let kind = self.rng.random_range(0..6);
        if kind == 0 {
            // Idle keep-alive: everything answered, then silence.
            if requests.is_empty() {
                requests.push(self.plain_get());
            }
            let mut case = self.assemble(&requests);
            case.hold = Some(Watch {
                phase: Phase::Head,
                from: case.bytes.len(),
            });
            return case;
        }
        let mut last = if kind <= 2 {
            self.plain_get()
        } else {
            self.server_fn_request()
        };
        last.sane = true;
        if kind == 2 {
            // A long head, so a trickle of a few bytes a tick outlasts the deadline.
            let pad = "p".repeat(self.rng.between(2000, 6000));
            last.header("X-Pad", pad);
        }
        if kind >= 3 && last.body.is_empty() {
            last.body = b"fname=Ada&lname=Lovelace&username=fz0".to_vec();
        }
        if kind >= 3 {
            last.framing = if self.rng.chance(30) {
                Framing::Chunked
            } else {
                Framing::Length
            };
        }
        let first = self.assemble(&requests);
        let (bytes, body_at) = last.write(&mut self.rng);
        let start = first.bytes.len();
        let mut case = first;
        case.sent.push(Sent {
            start,
            head: false,
            route: last.route.clone(),
        });
        case.bytes.extend_from_slice(&bytes);
        let body_at = start + body_at;
        match kind {
            1 => {
                // A head cut short (possibly before its first byte), held open.
                let cut_at = start + self.rng.random_range(0..body_at - start - 2);
                case.bytes.truncate(cut_at);
                case.hold = Some(Watch {
                    phase: Phase::Head,
                    from: start,
                });
            }
            2 => {
                case.delivery = self.trickle(start, case.bytes.len() - start);
                case.hold = Some(Watch {
                    phase: Phase::Head,
                    from: start,
                });
            }
            3 => {
                // A body cut short, held open.
                let cut_at = body_at + self.rng.random_range(0..case.bytes.len() - body_at);
                case.bytes.truncate(cut_at);
                case.hold = Some(Watch {
                    phase: Phase::Body,
                    from: body_at,
                });
            }
            _ => {
                case.delivery = self.trickle(body_at, case.bytes.len() - body_at);
                case.hold = Some(Watch {
                    phase: Phase::Body,
                    from: body_at,
                });
            }
        }
        case
    }

    /// A trickle of `len` bytes from `from` that lasts well past any deadline the harness sets
    /// (up to a minute), unless the server ends it.
    fn trickle(&mut self, from: usize, len: usize) -> Delivery {
        let tick_ms = self.rng.between(50, 400) as u64;
        // At least 60 s worth of ticks, so the connection outlasts the deadline.
        let ticks = (60_000 / tick_ms).max(1);
        let per_tick = (len / usize::try_from(ticks).unwrap_or(1)).clamp(1, 8);
        Delivery::Trickle {
            from,
            per_tick,
            tick_ms,
        }
    }

    /// Writes `requests` one after another; the leading sane ones are expected to be answered
    /// (all of them when all are sane).
    fn assemble(&mut self, requests: &[Request]) -> Case {
        let mut bytes = Vec::new();
        let mut sent = Vec::new();
        let mut sane = 0;
        let mut all_sane = true;
        for request in requests {
            let (written, _) = request.write(&mut self.rng);
            sent.push(Sent {
                start: bytes.len(),
                head: request.method == "HEAD",
                route: request.route.clone(),
            });
            bytes.extend_from_slice(&written);
            all_sane &= request.sane;
            if all_sane {
                sane += 1;
            }
        }
        Case {
            bytes,
            sent,
            expect: all_sane.then_some(sane),
            delivery: Delivery::Whole,
            hold: None,
        }
    }

    /// A GET of a route that answers at once.
    fn plain_get(&mut self) -> Request {
        let path = self.rng.pick(routes::GET_ROUTES);
        let mut r = Request::new("GET", path);
        r.header("Host", "127.0.0.1");
        r
    }

    /// `GET /api/sse` (sometimes `HEAD`), resuming from an id or not.
    fn event_stream(&mut self) -> Request {
        let rng = &mut self.rng;
        let method = if rng.chance(10) { "HEAD" } else { "GET" };
        let target = if rng.chance(20) {
            format!("{}?lastEventId={}", routes::SSE, token(rng))
        } else {
            routes::SSE.to_owned()
        };
        let mut r = Request::new(method, &target);
        r.header("Host", "127.0.0.1");
        if rng.chance(90) {
            r.header("Accept", rng.pick(&["text/event-stream", "*/*", "text/*"]));
        }
        if rng.chance(30) {
            let id = if rng.chance(20) {
                let mut raw = token(rng).into_bytes();
                raw.push(0xFF);
                raw
            } else {
                token(rng).into_bytes()
            };
            r.header("Last-Event-ID", id);
        }
        r
    }

    /// One request of the fast lane.
    fn request(&mut self) -> Request {
        let mut r = match self.rng.random_range(0..100) {
            0..30 => self.plain_get(),
            30..60 => self.server_fn_request(),
            60..72 => {
                let path = self.rng.pick(routes::STATIC_PATHS);
                let mut r = Request::new("GET", path);
                r.header("Host", "localhost");
                if self.rng.chance(40) {
                    r.header(
                        "Range",
                        self.rng.pick(&[
                            "bytes=0-3",
                            "bytes=5-1",
                            "bytes=0-0,2-3",
                            "bytes=-1",
                            "items=1-2",
                            "bytes=99999999999999999999-",
                        ]),
                    );
                }
                r
            }
            72..80 => {
                let path = self.rng.pick(routes::MISSING);
                let mut r = Request::new("GET", path);
                r.header("Host", "127.0.0.1");
                r
            }
            80..90 => self.odd_target(),
            _ => {
                let path = self.rng.pick(routes::GET_ROUTES);
                let query = query(&mut self.rng);
                let mut r = Request::new("GET", &format!("{path}?{query}"));
                r.header("Host", "127.0.0.1");
                r
            }
        };
        if self.rng.chance(15) {
            let method = self.rng.pick(routes::METHODS);
            r.route = r.route.replacen(&r.method, method, 1);
            r.method = method.to_owned();
            // CONNECT asks for a tunnel; the harness cannot know how much the server reads.
            r.sane &= method != "CONNECT";
        }
        self.common_headers(&mut r);
        if self.rng.chance(8) {
            self.body_without_function(&mut r);
        }
        if self.rng.chance(12) {
            self.bend(&mut r);
        }
        r
    }

    /// A POST to a server function with a body of some kind.
    fn server_fn_request(&mut self) -> Request {
        let function = self.rng.pick(SERVER_FNS);
        let target = if self.rng.chance(5) {
            format!("{SERVER_FN_PREFIX}{}?x=1", function.name)
        } else {
            format!("{SERVER_FN_PREFIX}{}", function.name)
        };
        let mut r = Request::new("POST", &target);
        r.header(
            "Host",
            self.rng.pick(&["127.0.0.1", "localhost:3000", "[::1]"]),
        );
        let (content_type, body) = self.function_body(function);
        if let Some(content_type) = content_type {
            r.header("Content-Type", content_type);
        }
        r.body = body;
        r.framing = if self.rng.chance(20) {
            Framing::Chunked
        } else {
            Framing::Length
        };
        r
    }

    /// A body for `function`: mostly its form, sometimes JSON, bytes that are not UTF-8,
    /// random bytes, nothing, or too much.
    fn function_body(&mut self, function: ServerFn) -> (Option<&'static str>, Vec<u8>) {
        const FORM: &str = "application/x-www-form-urlencoded";
        let rng = &mut self.rng;
        match rng.random_range(0..100) {
            0..60 => {
                let mut fields: Vec<&str> = function.fields.to_vec();
                if rng.chance(15) && !fields.is_empty() {
                    fields.remove(rng.random_range(0..fields.len()));
                }
                if rng.chance(15) {
                    fields.push(rng.pick(&["extra", "id", "fname", "", "a[b]", "__proto__"]));
                }
                let mut body = Vec::new();
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        body.push(b'&');
                    }
                    body.extend_from_slice(field.as_bytes());
                    body.push(b'=');
                    let value = field_value(rng, &self.ids, field);
                    body.extend_from_slice(&encode(rng, &value));
                }
                let content_type = if rng.chance(90) {
                    Some(FORM)
                } else {
                    Some(rng.pick(&[
                        "text/plain",
                        "application/x-www-form-urlencoded; charset=latin1",
                        "",
                    ]))
                };
                (content_type, body)
            }
            60..70 => {
                let fields: Vec<String> = function
                    .fields
                    .iter()
                    .map(|f| format!("\"{f}\":{}", json_value(rng, &self.ids, f)))
                    .collect();
                let body = format!("{{{}}}", fields.join(",")).into_bytes();
                (Some(rng.pick(&["application/json", FORM])), body)
            }
            70..80 => {
                // Not UTF-8: must be a 400.
                let mut body = b"fname=".to_vec();
                body.push(rng.pick(&[0xFF, 0xC3, 0x80, 0xFE]));
                body.extend_from_slice(b"&lname=x&username=y");
                (Some(FORM), body)
            }
            80..88 => {
                let n = rng.between(0, 2048);
                (Some(FORM), rng.bytes(n))
            }
            88..94 => (Some(FORM), Vec::new()),
            94..97 => {
                // Just under and just over the 64 KiB limit.
                let n = rng.pick(&[64 * 1024 - 10, 64 * 1024, 64 * 1024 + 1, 70_000]);
                let mut body = b"fname=".to_vec();
                body.resize(n, b'a');
                (Some(FORM), body)
            }
            _ => (
                Some("multipart/form-data; boundary=x"),
                b"--x\r\nContent-Disposition: form-data; name=\"fname\"\r\n\r\nAda\r\n--x--\r\n"
                    .to_vec(),
            ),
        }
    }

    /// A body on a request that is not a server function (GET with a body, POST to a page).
    fn body_without_function(&mut self, r: &mut Request) {
        let n = self.rng.between(0, 512);
        r.body = self.rng.bytes(n);
        r.framing = if self.rng.chance(30) {
            Framing::Chunked
        } else {
            Framing::Length
        };
        r.header(
            "Content-Type",
            self.rng.pick(&["application/json", "text/plain"]),
        );
    }

    /// A target that is strange but has no white space: absolute form, encodings, long.
    fn odd_target(&mut self) -> Request {
        let rng = &mut self.rng;
        let base = rng.pick(routes::GET_ROUTES);
        let target: Vec<u8> = match rng.random_range(0..9) {
            0 => format!("http://127.0.0.1:3000{base}").into_bytes(),
            // Asterisk and authority forms: targets without a path.
            1 => rng
                .pick(&[&b"*"[..], b"127.0.0.1:3000", b"localhost"])
                .to_vec(),
            2 => format!("{base}{}", "/x".repeat(rng.between(1, 4000))).into_bytes(),
            3 => format!("{base}?{}", "a=1&".repeat(rng.between(1, 3000))).into_bytes(),
            4 => b"/%ff%fe%00%2F%2e%2e%c0%af".to_vec(),
            5 => "/caf\u{e9}/\u{1f600}".as_bytes().to_vec(),
            6 => {
                let mut t = b"/x".to_vec();
                t.extend((0..rng.between(1, 20)).map(|_| rng.random_range(0x80..=0xFF_u8)));
                t
            }
            7 => format!("/{}", "%".repeat(rng.between(1, 5))).into_bytes(),
            _ => format!("{base}#frag").into_bytes(),
        };
        let route = format!("GET {}", cut(&String::from_utf8_lossy(&target), 60));
        let mut r = Request::new("GET", "/");
        r.target = target;
        r.route = route;
        r.header("Host", "127.0.0.1");
        r
    }

    /// Headers a client may add: accept lists, encodings, cross-site markers, caching, ranges,
    /// cookies, forwarding, long and many.
    fn common_headers(&mut self, r: &mut Request) {
        let rng = &mut self.rng;
        let extra = rng.pick(&[0, 0, 0, 1, 1, 2, 3, 6]);
        for _ in 0..extra {
            let (name, value): (&str, Vec<u8>) = match rng.random_range(0..18) {
                0 => (
                    "Accept",
                    rng.pick(&[
                        "*/*",
                        "text/html",
                        "application/json",
                        "text/event-stream",
                        "",
                        "text/*;q=0",
                        "\u{1}",
                    ])
                    .into(),
                ),
                1 => (
                    "Accept-Encoding",
                    rng.pick(&[
                        "gzip",
                        "br",
                        "gzip, deflate, br, zstd",
                        "identity;q=0",
                        "*",
                        "",
                        "gzip;q=abc",
                    ])
                    .into(),
                ),
                2 => (
                    "Origin",
                    rng.pick(&["http://127.0.0.1", "http://evil.example", "null", ""])
                        .into(),
                ),
                3 => (
                    "Sec-Fetch-Site",
                    rng.pick(&["same-origin", "cross-site", "none", "same-site", "x"])
                        .into(),
                ),
                4 => (
                    "Referer",
                    rng.pick(&[
                        "http://127.0.0.1/",
                        "http://127.0.0.1/?__path=/_server/add_user&__err=x",
                        "not a url",
                        "http://evil.example/",
                    ])
                    .into(),
                ),
                5 => (
                    "Cookie",
                    rng.pick(&["a=b", "session=\u{7f}", "=;;=="]).into(),
                ),
                6 => (
                    "X-Forwarded-For",
                    rng.pick(&["1.2.3.4", "1.2.3.4, 5.6.7.8", "::1", "garbage", ""])
                        .into(),
                ),
                7 => (
                    "If-None-Match",
                    rng.pick(&["\"abc\"", "*", "W/\"x\"", "\""]).into(),
                ),
                8 => (
                    "If-Modified-Since",
                    rng.pick(&[
                        "Thu, 01 Jan 1970 00:00:00 GMT",
                        "garbage",
                        "Sun, 06 Nov 2094 08:49:37 GMT",
                    ])
                    .into(),
                ),
                9 => (
                    "Connection",
                    rng.pick(&["keep-alive", "close", "TE, close", "x"]).into(),
                ),
                10 => ("Expect", rng.pick(&["100-continue", "200-ok"]).into()),
                11 => ("Last-Event-ID", token(rng).into_bytes()),
                12 => (
                    "Cache-Control",
                    rng.pick(&["no-cache", "max-age=-1"]).into(),
                ),
                13 => ("X-Long", vec![b'x'; rng.between(1000, 16_000)]),
                14 => {
                    // Bytes above 0x7F (obs-text), and control characters.
                    let mut v = b"v".to_vec();
                    v.extend((0..rng.between(1, 16)).map(|_| rng.random_range(0x80..=0xFF_u8)));
                    (
                        rng.pick(&["X-Bytes", "Last-Event-ID", "Host", "Referer", "Accept"]),
                        v,
                    )
                }
                15 => (
                    "User-Agent",
                    rng.pick(&["curl/8", "Mozilla/5.0", ""]).into(),
                ),
                16 => (
                    "Host",
                    rng.pick(&["evil.example", "127.0.0.1", "", "a b"]).into(),
                ),
                _ => {
                    let n = rng.between(20, 150);
                    for i in 0..n {
                        r.header(&format!("X-Many-{i}"), "1");
                    }
                    continue;
                }
            };
            let name = match rng.random_range(0..10) {
                0 => name.to_ascii_lowercase(),
                1 => name.to_ascii_uppercase(),
                _ => name.to_owned(),
            };
            r.header(&name, value);
        }
    }

    /// Changes that leave the framing uncertain: length lies, both framings, odd versions and
    /// line endings, folded or broken header lines, broken chunks.
    fn bend(&mut self, r: &mut Request) {
        let rng = &mut self.rng;
        r.sane = false;
        match rng.random_range(0..14) {
            0 => {
                let lie = rng.pick(&[
                    "0",
                    "5",
                    "-1",
                    "+5",
                    "0x10",
                    "99999999999999999999",
                    "1, 2",
                    " 3 ",
                    "",
                ]);
                r.header("Content-Length", lie);
            }
            1 => {
                r.framing = Framing::Length;
                r.header("Transfer-Encoding", "chunked");
            }
            2 => r.header(
                "Transfer-Encoding",
                rng.pick(&[
                    "gzip",
                    "chunked, identity",
                    "xchunked",
                    " chunked",
                    "identity",
                    "chunked, chunked",
                ]),
            ),
            3 => {
                r.version = rng.pick(&[
                    &b"HTTP/1.0"[..],
                    b"HTTP/2.0",
                    b"HTTP/0.9",
                    b"HTTP/1.2",
                    b"HTTP/1",
                    b"http/1.1",
                    b"",
                ])
            }
            4 => r.header("X-Folded", "a\r\n b"),
            5 => r.headers.push((b"No-Colon".to_vec(), Vec::new())),
            6 => r.header("Bad Name", "x"),
            7 => r.header("X-Nul", b"a\0b"),
            8 => r.method = rng.pick(&["GE T", "", "G\u{e9}T", "\u{0}"]).to_owned(),
            9 => r.target = b"/a b".to_vec(),
            10 => {
                // A chunked body with a broken size, extension or terminator.
                r.framing = Framing::None;
                r.header("Transfer-Encoding", "chunked");
                let broken: &[u8] = rng.pick(&[
                    &b"zz\r\nab\r\n0\r\n\r\n"[..],
                    b"5\r\nab\r\n0\r\n\r\n",
                    b"2\r\nabXX0\r\n\r\n",
                    b"ffffffffffffffffff\r\nab\r\n",
                    b"-1\r\n\r\n",
                    b"2\r\nab\r\n",
                    b"0\r\n",
                    b"2;" as &[u8],
                ]);
                r.body = broken.to_vec();
            }
            11 => r.header("Content-Length", "3"),
            12 => r
                .headers
                .insert(0, (b" Leading".to_vec(), b"space".to_vec())),
            _ => r.version = b"HTTP/1.1\n",
        }
    }
}

/// Bytes changed at random: flips, inserts, deletions, CRLF to LF, cut short, a slice repeated.
pub fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.between(1, 4) {
        if bytes.is_empty() {
            bytes.push(b'G');
        }
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..8) {
            0 => bytes[at] ^= 1 << rng.random_range(0..8),
            1 => bytes.insert(
                at,
                rng.pick(&[0, 0xFF, b'\r', b'\n', b' ', b':', b'%', 0x80]),
            ),
            2 => {
                bytes.remove(at);
            }
            3 => {
                if let Some(crlf) = crate::response::find(&bytes[at..], b"\r\n") {
                    bytes.remove(at + crlf);
                }
            }
            4 => bytes.truncate(at),
            5 => {
                let end = (at + rng.between(1, 64)).min(bytes.len());
                let slice = bytes[at..end].to_vec();
                for _ in 0..rng.between(1, 50) {
                    bytes.splice(at..at, slice.iter().copied());
                }
            }
            6 => bytes[at] = rng.random(),
            _ => {
                let end = (at + rng.between(1, 8)).min(bytes.len());
                bytes[at..end].make_ascii_uppercase();
            }
        }
    }
}

/// A query string: real parameters (`after`, `limit`, `lastEventId`) with odd values.
fn query(rng: &mut StdRng) -> String {
    let key = rng.pick(&["after", "limit", "lastEventId", "x", "", "after[]"]);
    let value = rng.pick(&[
        "",
        "0",
        "-1",
        "99999999999999999999",
        "%zz",
        "%00",
        "a+b",
        "65f0a1b2c3d4e5f601234567",
    ]);
    format!("{key}={value}")
}

/// A resume-token-like value: hex of random length, or junk.
fn token(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => String::new(),
        1 => "x".repeat(rng.between(1, 5000)),
        2 => "%0a%0dforged: line".to_owned(),
        _ => (0..rng.between(1, 200))
            .map(|_| char::from(rng.pick(b"0123456789abcdef")))
            .collect(),
    }
}

/// A value for form field `field`. Valid-looking names come from small pools, so the users the
/// run adds stay few (usernames are unique).
fn field_value(rng: &mut StdRng, ids: &Ids, field: &str) -> String {
    const NAMES: &[&str] = &["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken"];
    const ODD: &[&str] = &[
        "",
        " ",
        "<script>alert(1)</script>",
        "\u{dc}n\u{ef}c\u{f8}d\u{e9}",
        "\u{1f600}",
        "$gt",
        "{\"$ne\":1}",
        "a.b",
        "\u{0}",
        "\u{202e}x",
        "\r\n",
    ];
    let pick = rng.random::<u64>();
    match field {
        "id" => match rng.random_range(0..6) {
            0..3 => ids.get(pick),
            3 => format!("{pick:024x}"),
            4 => rng
                .pick(&[
                    "",
                    "nope",
                    "000000000000000000000000",
                    "0123456789abcdef0123456",
                ])
                .to_owned(),
            _ => format!("{pick:x}{}", "f".repeat(rng.between(0, 40))),
        },
        "locked" => rng
            .pick(&["true", "false", "TRUE", "1", "", "yes"])
            .to_owned(),
        "after" => match rng.random_range(0..4) {
            0 => String::new(),
            1 => ids.get(pick),
            _ => token(rng),
        },
        _ => match rng.random_range(0..10) {
            0 => rng.pick(ODD).to_owned(),
            1 => "n".repeat(rng.between(60, 70)),
            2 if field == "username" => format!("u{}", pick % 1000),
            _ if field == "username" => format!("fz{}", pick % 40),
            _ => rng.pick(NAMES).to_owned(),
        },
    }
}

/// A JSON value for `field`: a string mostly, sometimes another type.
fn json_value(rng: &mut StdRng, ids: &Ids, field: &str) -> String {
    match rng.random_range(0..6) {
        0 => rng
            .pick(&["null", "1", "true", "[]", "{\"$gt\":\"\"}"])
            .to_owned(),
        _ => format!("\"{}\"", field_value(rng, ids, field).escape_default()),
    }
}

/// `value` url-encoded, mostly right, sometimes raw or with broken escapes.
fn encode(rng: &mut StdRng, value: &str) -> Vec<u8> {
    match rng.random_range(0..10) {
        0 => value.as_bytes().to_vec(),
        1 => format!("{value}%zz%").into_bytes(),
        2 => format!("{}+%2B", value.replace(' ', "+")).into_bytes(),
        _ => {
            let mut out = Vec::new();
            for b in value.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b);
                } else {
                    out.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// The same seed gives the same cases.
    #[test]
    fn cases_are_a_function_of_the_seed() {
        let cases = |seed| {
            let mut g = Generator::new(StdRng::seed_from_u64(seed));
            (0..200)
                .map(|i| g.case(if i % 5 == 0 { Lane::Slow } else { Lane::Fast }))
                .collect::<Vec<_>>()
        };
        assert_eq!(cases(7), cases(7));
        assert_ne!(cases(7), cases(8));
    }

    /// A plan read back gives the same case.
    #[test]
    fn plans_round_trip() {
        let mut g = Generator::new(StdRng::seed_from_u64(1));
        for i in 0..300 {
            let case = g.case(if i % 3 == 0 { Lane::Slow } else { Lane::Fast });
            let back = Case::from_plan(case.bytes.clone(), &case.plan()).expect("plan parses");
            assert_eq!(back.delivery, case.delivery);
            assert_eq!(back.expect, case.expect);
            assert_eq!(back.hold, case.hold);
            assert_eq!(back.sent.len(), case.sent.len());
        }
    }

    /// Slow cases hold the connection; fast ones never do.
    #[test]
    fn only_slow_cases_hold() {
        let mut g = Generator::new(StdRng::seed_from_u64(3));
        for _ in 0..200 {
            assert!(g.case(Lane::Fast).hold.is_none());
            assert!(g.case(Lane::Slow).hold.is_some());
        }
    }
}
