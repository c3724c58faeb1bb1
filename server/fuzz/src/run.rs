//! The run: connections in parallel (tasks on one runtime), each sending its own stream of
//! cases; a supervisor that watches the process and restarts it after a crash; the counters
//! and the summary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::child::{self, Launch, Server};
use crate::exchange::{self, Ending, Limits, Outcome};
use crate::findings::{Finding, Findings, Kind};
use crate::generate::{Case, Generator, Lane};

/// What the run fuzzes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A server process the harness starts, watches and restarts.
    Spawn(Launch),
    /// A server already listening there (a dead process then shows as refused connections).
    Address(SocketAddr),
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What to fuzz.
    pub target: Target,
    /// The seed of every connection's case stream.
    pub seed: u64,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many requests.
    pub requests: Option<u64>,
    /// Connections of the fast lane.
    pub connections: usize,
    /// Connections of the slow lane (trickles, held connections); 0 turns the mode off.
    pub slow_connections: usize,
    /// The deadlines.
    pub limits: Limits,
    /// Where findings go.
    pub findings: PathBuf,
    /// End the run at the first finding.
    pub stop_on_finding: bool,
    /// Print progress lines.
    pub progress: bool,
}

/// The counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests written (complete or not).
    pub requests: AtomicU64,
    /// Connections made.
    pub connections: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Final answers by status.
    pub statuses: Mutex<BTreeMap<u16, u64>>,
    /// Connections that ended in a hang.
    pub hangs: AtomicU64,
    /// Connections the server closed before every request was answered.
    pub closed_unanswered: AtomicU64,
    /// Connections the harness half-closed (framing unknown).
    pub half_closed: AtomicU64,
    /// Event streams opened.
    pub streams: AtomicU64,
    /// Held connections (slow lane) the server closed, and the longest it took.
    pub held_closed: AtomicU64,
    /// The longest a held connection stayed open past its deadline's start, in ms.
    pub held_longest_ms: AtomicU64,
    /// Connections that could not be made.
    pub unreachable: AtomicU64,
    /// Server starts.
    pub starts: AtomicU64,
}

impl Stats {
    /// The number of `5xx` answers.
    pub fn server_errors(&self) -> u64 {
        lock(&self.statuses)
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the connections and the supervisor.
#[derive(Debug)]
pub struct Shared {
    settings: Settings,
    /// The counters.
    pub stats: Stats,
    /// The findings.
    pub findings: Mutex<Findings>,
    server: Mutex<Option<Server>>,
    addr: Mutex<SocketAddr>,
    /// Each connection's case in flight (a crash is pinned on all of them).
    in_flight: Mutex<Vec<Option<Case>>>,
    stop: AtomicBool,
    started: Instant,
    /// When the last connection finished (the rate is measured up to here).
    ended: Mutex<Option<Instant>>,
    /// Why the run could not go on, if it could not.
    pub fatal: Mutex<Option<String>>,
}

impl Shared {
    /// Starts the server (for [`Target::Spawn`]).
    pub fn new(settings: Settings) -> Result<Self, String> {
        let (server, addr) = match &settings.target {
            Target::Spawn(launch) => {
                let server = Server::start(launch)?;
                let addr = server.addr;
                (Some(server), addr)
            }
            Target::Address(addr) => (None, *addr),
        };
        let lanes = settings.connections + settings.slow_connections;
        let shared = Self {
            settings,
            stats: Stats::default(),
            findings: Mutex::new(Findings::default()),
            server: Mutex::new(server),
            addr: Mutex::new(addr),
            in_flight: Mutex::new(vec![None; lanes]),
            stop: AtomicBool::new(false),
            started: Instant::now(),
            ended: Mutex::new(None),
            fatal: Mutex::new(None),
        };
        shared.stats.starts.fetch_add(1, Ordering::Relaxed);
        Ok(shared)
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Time since the run started, up to the end of the last connection once it ended.
    pub fn elapsed(&self) -> Duration {
        lock(&self.ended).map_or_else(|| self.started.elapsed(), |end| end - self.started)
    }

    fn done(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
            || self
                .settings
                .duration
                .is_some_and(|d| self.started.elapsed() >= d)
            || self
                .settings
                .requests
                .is_some_and(|n| self.stats.requests.load(Ordering::Relaxed) >= n)
    }

    fn output(&self) -> Vec<String> {
        lock(&self.server)
            .as_ref()
            .map(Server::output)
            .unwrap_or_default()
    }

    /// Records a finding, prints it, and stops the run if asked to.
    fn report(&self, finding: &Finding) {
        let (signature, saved) = lock(&self.findings).record(&self.settings.findings, finding);
        if let Some(path) = saved {
            eprintln!(
                "fuzz-http: FINDING {signature}\n           saved in {}",
                path.display()
            );
        }
        if self.settings.stop_on_finding {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    /// One connection's loop: cases of `lane` until the run is done.
    async fn connection(self: Arc<Self>, index: usize, lane: Lane) {
        let seed = self.settings.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut generator = Generator::new(StdRng::seed_from_u64(seed));
        let mut number = 0u64;
        while !self.done() {
            let case = generator.case(lane);
            number += 1;
            lock(&self.in_flight)[index] = Some(case.clone());
            let addr = *lock(&self.addr);
            let outcome = exchange::run(addr, &case, &self.settings.limits).await;
            lock(&self.in_flight)[index] = None;
            if let Ending::Unreachable(_) = outcome.ending {
                self.stats.unreachable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            for id in &outcome.ids {
                generator.ids.remember(id.clone());
            }
            self.count(&case, &outcome);
            if outcome.failed() {
                let context = format!(
                    "seed {}, connection {index} ({lane:?} lane), case {number}, {:.1} s into the run",
                    self.settings.seed,
                    self.elapsed().as_secs_f64()
                );
                self.report(&self.finding(case, &outcome, &context));
            }
        }
    }

    fn count(&self, case: &Case, outcome: &Outcome) {
        let s = &self.stats;
        s.connections.fetch_add(1, Ordering::Relaxed);
        s.requests
            .fetch_add(case.sent.len() as u64, Ordering::Relaxed);
        s.bytes.fetch_add(outcome.written as u64, Ordering::Relaxed);
        {
            let mut statuses = lock(&s.statuses);
            for status in &outcome.statuses {
                *statuses.entry(*status).or_default() += 1;
            }
        }
        if outcome.half_closed {
            s.half_closed.fetch_add(1, Ordering::Relaxed);
        }
        match &outcome.ending {
            Ending::Hang { .. } => {
                s.hangs.fetch_add(1, Ordering::Relaxed);
            }
            Ending::Stream => {
                s.streams.fetch_add(1, Ordering::Relaxed);
            }
            Ending::Closed if outcome.statuses.len() < case.sent.len() => {
                s.closed_unanswered.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if let Some(cut) = outcome.cut_after {
            s.held_closed.fetch_add(1, Ordering::Relaxed);
            s.held_longest_ms
                .fetch_max(cut.as_millis() as u64, Ordering::Relaxed);
        }
    }

    fn finding(&self, case: Case, outcome: &Outcome, context: &str) -> Finding {
        let (kind, detail) = match (&outcome.ending, outcome.server_errors().next()) {
            (_, Some(status)) => (Kind::ServerError(status), format!("answered {status}")),
            (
                Ending::Hang {
                    waiting_for,
                    waited,
                },
                None,
            ) => (
                Kind::Hang,
                format!("waited {:.1} s for {waiting_for}", waited.as_secs_f64()),
            ),
            _ => (Kind::Hang, "unknown".to_owned()),
        };
        // The request the first 5xx answered, or for a hang the first one not answered (as
        // far as the framing was as written).
        let at = outcome
            .statuses
            .iter()
            .position(|s| *s >= 500)
            .unwrap_or(outcome.statuses.len())
            .min(case.sent.len().saturating_sub(1));
        let route = case
            .sent
            .get(at)
            .map_or_else(String::new, |s| s.route.clone());
        let statuses: Vec<String> = outcome.statuses.iter().map(u16::to_string).collect();
        let detail = if kind == Kind::Hang {
            // The signature keeps what was waited for, not for how long.
            detail
                .split_once(" for ")
                .map_or(detail.clone(), |(_, what)| what.to_owned())
        } else {
            detail
        };
        Finding {
            kind,
            detail,
            route,
            cases: vec![case],
            context: format!("{context}; statuses [{}]", statuses.join(", ")),
            evidence: outcome.evidence.clone(),
            output: self.output(),
        }
    }

    /// Watches the process: a crash or a panic message is a finding (with every case in
    /// flight); after a crash the server is started again.
    async fn supervise(self: Arc<Self>) {
        let mut panics = 0;
        while !self.done() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (exited, now_panics, output) = {
                let mut server = lock(&self.server);
                let Some(server) = server.as_mut() else {
                    return;
                };
                (server.exited(), server.panics(), server.output())
            };
            let in_flight: Vec<Case> = lock(&self.in_flight).iter().flatten().cloned().collect();
            let context = format!(
                "seed {}, {:.1} s into the run; the cases in flight on every connection",
                self.settings.seed,
                self.elapsed().as_secs_f64()
            );
            if now_panics > panics {
                panics = now_panics;
                let line = output
                    .iter()
                    .find(|l| l.contains("panicked at"))
                    .cloned()
                    .unwrap_or_default();
                let place = line.split("panicked at ").nth(1).unwrap_or("?");
                // `…/leptos_axum-0.8.10/src/lib.rs:919:55:` → `leptos_axum-0.8.10/src/lib.rs:919`.
                let place: Vec<&str> = place.split(':').take(2).collect();
                let file: Vec<&str> = place[0].rsplit('/').take(3).collect();
                let file: Vec<&str> = file.into_iter().rev().collect();
                let detail = format!(
                    "panic at {}:{}",
                    file.join("/"),
                    place.get(1).unwrap_or(&"?")
                );
                let known = lock(&self.findings)
                    .by_signature
                    .contains_key(&format!("panic: {detail}"));
                let (cases, context) = if known {
                    (in_flight.clone(), context.clone())
                } else {
                    self.triage(in_flight.clone(), context.clone()).await
                };
                panics = lock(&self.server).as_ref().map_or(panics, Server::panics);
                self.report(&Finding {
                    kind: Kind::Panic,
                    detail,
                    route: String::new(),
                    cases,
                    context,
                    evidence: Vec::new(),
                    output: output.clone(),
                });
            }
            if let Some(status) = exited {
                if !self.restart().await {
                    return;
                }
                let (cases, context) = self.triage(in_flight, context).await;
                self.report(&Finding {
                    kind: Kind::Crash,
                    detail: child::describe_status(status),
                    route: String::new(),
                    cases,
                    context,
                    evidence: Vec::new(),
                    output,
                });
                if lock(&self.server)
                    .as_mut()
                    .and_then(Server::exited)
                    .is_some()
                    && !self.restart().await
                {
                    return;
                }
                panics = lock(&self.server).as_ref().map_or(0, Server::panics);
            }
        }
    }

    /// Sends the cases in flight at a crash or a panic again, one at a time, to the server now
    /// running, and puts first the one after which it panics again or dies (the others keep
    /// sending meanwhile, so this names a likely cause, not a proven one).
    async fn triage(&self, mut cases: Vec<Case>, context: String) -> (Vec<Case>, String) {
        let state = |shared: &Self| {
            let mut server = lock(&shared.server);
            server
                .as_mut()
                .map(|s| (s.panics(), s.exited().is_some(), s.addr))
        };
        let Some((before, _, addr)) = state(self) else {
            return (cases, context);
        };
        for i in 0..cases.len() {
            if self.done() {
                break;
            }
            let _ = exchange::run(addr, &cases[i], &self.settings.limits).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some((panics, dead, _)) = state(self) else {
                break;
            };
            if panics > before || dead {
                let culprit = cases.remove(i);
                cases.insert(0, culprit);
                let context = format!(
                    "{context}; sent again one by one, case-1 (in flight on some connection) failed the server again"
                );
                return (cases, context);
            }
        }
        let context = format!("{context}; sent again one by one, none failed the server again");
        (cases, context)
    }

    /// Starts a fresh server in place of the dead one; false when it cannot.
    async fn restart(&self) -> bool {
        let Target::Spawn(launch) = self.settings.target.clone() else {
            return false;
        };
        match tokio::task::spawn_blocking(move || Server::start(&launch)).await {
            Ok(Ok(server)) => {
                *lock(&self.addr) = server.addr;
                *lock(&self.server) = Some(server);
                self.stats.starts.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(Err(e)) => {
                *lock(&self.fatal) = Some(format!("cannot restart the server: {e}"));
                self.stop.store(true, Ordering::SeqCst);
                false
            }
            Err(e) => {
                *lock(&self.fatal) = Some(format!("cannot restart the server: {e}"));
                self.stop.store(true, Ordering::SeqCst);
                false
            }
        }
    }

    /// After the run: the process alive and `/healthz` answering, else a finding.
    async fn final_check(&self) {
        let addr = *lock(&self.addr);
        let exited = lock(&self.server).as_mut().and_then(Server::exited);
        let health = tokio::task::spawn_blocking(move || {
            child::get_status(addr, "/healthz", Duration::from_secs(5))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let detail = match (exited, health) {
            (Some(status), _) => child::describe_status(status),
            (None, Ok(200)) => return,
            (None, Ok(status)) => format!("/healthz answered {status} after the run"),
            (None, Err(e)) => format!("/healthz did not answer after the run: {e}"),
        };
        self.report(&Finding {
            kind: Kind::Crash,
            detail,
            route: String::new(),
            cases: Vec::new(),
            context: format!("seed {}, after the run", self.settings.seed),
            evidence: Vec::new(),
            output: self.output(),
        });
    }

    /// Stops the server (if the harness started it).
    pub fn stop_server(&self) {
        if let Some(mut server) = lock(&self.server).take() {
            server.kill();
        }
    }
}

/// Runs the whole thing on the current runtime; returns once every connection is done.
pub async fn fuzz(shared: Arc<Shared>) {
    let settings = shared.settings.clone();
    let mut tasks = Vec::new();
    for index in 0..settings.connections + settings.slow_connections {
        let lane = if index < settings.connections {
            Lane::Fast
        } else {
            Lane::Slow
        };
        tasks.push(tokio::spawn(Arc::clone(&shared).connection(index, lane)));
    }
    let supervisor = tokio::spawn(Arc::clone(&shared).supervise());
    let progress = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                if shared.settings.progress {
                    eprintln!("{}", progress_line(&shared));
                }
            }
        })
    };
    for task in tasks {
        let _ = task.await;
    }
    *lock(&shared.ended) = Some(Instant::now());
    progress.abort();
    let _ = supervisor.await;
    if lock(&shared.fatal).is_none() {
        shared.final_check().await;
    }
}

fn progress_line(shared: &Shared) -> String {
    let s = &shared.stats;
    let secs = shared.elapsed().as_secs_f64().max(0.001);
    let requests = s.requests.load(Ordering::Relaxed);
    format!(
        "fuzz-http: {secs:>4.0} s  {requests} requests ({:.0}/s), {} x 5xx, {} hangs, {} findings",
        requests as f64 / secs,
        s.server_errors(),
        s.hangs.load(Ordering::Relaxed),
        lock(&shared.findings).total
    )
}

/// The summary lines.
pub fn summary(shared: &Shared) -> String {
    use std::fmt::Write as _;
    let s = &shared.stats;
    let settings = &shared.settings;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let secs = shared.elapsed().as_secs_f64().max(0.001);
    let requests = n(&s.requests);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nfuzz-http summary: seed {}, {} connections + {} slow (trickle mode {}), {secs:.1} s",
        settings.seed,
        settings.connections,
        settings.slow_connections,
        if settings.slow_connections > 0 {
            "on"
        } else {
            "off"
        },
    );
    let _ = writeln!(
        out,
        "  requests sent              {requests} ({:.0}/s) on {} connections, {:.1} MB",
        requests as f64 / secs,
        n(&s.connections),
        n(&s.bytes) as f64 / 1e6
    );
    let statuses: Vec<String> = lock(&s.statuses)
        .iter()
        .map(|(status, count)| format!("{status}: {count}"))
        .collect();
    let _ = writeln!(out, "  statuses                   {}", statuses.join(", "));
    let _ = writeln!(out, "  5xx                        {}", s.server_errors());
    let _ = writeln!(out, "  hangs                      {}", n(&s.hangs));
    let _ = writeln!(
        out,
        "  closed before every answer {}   half-closed by the harness {}   event streams {}",
        n(&s.closed_unanswered),
        n(&s.half_closed),
        n(&s.streams)
    );
    if settings.slow_connections > 0 {
        let _ = writeln!(
            out,
            "  held connections closed    {} (the latest {:.1} s after its deadline started; limit head {:.1} s, body {:.1} s + margin {:.1} s)",
            n(&s.held_closed),
            n(&s.held_longest_ms) as f64 / 1000.0,
            settings.limits.header.as_secs_f64(),
            settings.limits.body.as_secs_f64(),
            settings.limits.margin.as_secs_f64(),
        );
    }
    let alive = lock(&shared.server)
        .as_mut()
        .is_none_or(|server| server.exited().is_none());
    let _ = writeln!(
        out,
        "  server                     {} (started {} times), {} connects refused",
        if alive { "alive" } else { "dead" },
        n(&s.starts),
        n(&s.unreachable)
    );
    let findings = lock(&shared.findings);
    let _ = writeln!(
        out,
        "  findings                   {} ({} distinct)",
        findings.total,
        findings.by_signature.len()
    );
    for (signature, (count, saved)) in &findings.by_signature {
        let _ = writeln!(out, "    {count:>5} x {signature}");
        if let Some(dir) = saved {
            let _ = writeln!(out, "            {}", dir.display());
        }
    }
    out
}
