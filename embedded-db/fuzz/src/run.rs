//! The fuzzing loop: worker threads send groups of inputs over their own connections, check
//! the server after each group, and hand failures to one supervisor that saves the evidence,
//! restarts the server and narrows the failure down to the input(s) that reproduce it.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::child::{self, Server};
use crate::findings::{FailKind, Failure, Finding, Findings, Reproduced};
use crate::input::{self, Corpus, CursorIds, Input, Kind};
use crate::rng::{splitmix64, Rng};
use crate::send::{self, Outcome};

/// Groups per worker kept after they passed the health check: a failure the check noticed late
/// (a panic message still in the pipe) is then still attributable.
const HISTORY_GROUPS: usize = 2;
/// How long a replay waits for a panic message to come through the stderr pipe.
pub(crate) const PANIC_SETTLE: Duration = Duration::from_millis(50);

/// Settings of a run (from the command line).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The `embedded-db` binary.
    pub(crate) bin: PathBuf,
    /// Where findings are saved.
    pub(crate) findings: PathBuf,
    /// The run's seed.
    pub(crate) seed: u64,
    /// Stop after this long (`None`: no time bound).
    pub(crate) duration: Option<Duration>,
    /// Stop after this many inputs (`None`: no count bound).
    pub(crate) inputs: Option<u64>,
    /// Parallel connections.
    pub(crate) workers: usize,
    /// Inputs per group (per health check) at most.
    pub(crate) group: usize,
    /// How long one input may take to be answered.
    pub(crate) reply_timeout: Duration,
    /// How long the health `ping` may take.
    pub(crate) ping_timeout: Duration,
    /// Time triage may spend narrowing one failure down.
    pub(crate) triage_budget: Duration,
    /// Stop at the first finding instead of restarting the server.
    pub(crate) stop_on_finding: bool,
}

/// Counters for the summary; updated by every worker.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Inputs sent (triage replays not included).
    pub(crate) inputs: AtomicU64,
    /// Inputs sent by generator: raw, bson, grammar.
    pub(crate) by_kind: [AtomicU64; 3],
    /// Bytes sent.
    pub(crate) bytes: AtomicU64,
    /// Replies received (marker pings not included).
    pub(crate) replies: AtomicU64,
    /// Replies with `ok: 0`.
    pub(crate) error_replies: AtomicU64,
    /// Connections the server closed or reset after an input.
    pub(crate) closed: AtomicU64,
    /// Inputs that got no answer within the reply timeout.
    pub(crate) timeouts: AtomicU64,
    /// Times the server was (re)started.
    pub(crate) starts: AtomicU64,
    /// Inputs replayed during triage.
    pub(crate) replays: AtomicU64,
}

/// One worker's group of inputs on the current server generation.
#[derive(Debug, Clone)]
struct Group {
    generation: u64,
    worker: usize,
    inputs: Vec<Input>,
    /// What happened to each input sent so far (`inputs[..outcomes.len()]` went out).
    outcomes: Vec<Outcome>,
    /// The health check after the group passed.
    passed: bool,
}

impl Group {
    /// The inputs that were actually sent, most recent first, those that lost their
    /// connection or timed out (what a crash or a hang does to the input that caused it) first.
    fn suspects(&self) -> Vec<&Input> {
        let sent = || self.inputs.iter().zip(&self.outcomes).rev();
        let lost = |o: &Outcome| matches!(o, Outcome::Closed | Outcome::TimedOut);
        sent()
            .filter(|(_, o)| lost(o))
            .chain(sent().filter(|(_, o)| !lost(o)))
            .map(|(i, _)| i)
            .collect()
    }
}

/// The running server and its generation (bumped on every restart).
#[derive(Debug)]
struct Supervisor {
    server: Option<Server>,
    generation: u64,
    data_root: PathBuf,
    /// Triage replayed inputs on the server without failing it: it is no longer fresh.
    dirty: bool,
}

/// State shared by the workers.
#[derive(Debug)]
pub(crate) struct Shared {
    settings: Settings,
    corpus: Corpus,
    supervisor: Mutex<Supervisor>,
    /// Per worker: the group in flight and the last few that passed.
    groups: Mutex<Vec<VecDeque<Group>>>,
    /// The counters.
    pub(crate) stats: Stats,
    /// The findings.
    pub(crate) findings: Mutex<Findings>,
    stop: AtomicBool,
    claimed: AtomicU64,
    active: AtomicUsize,
    started: Instant,
    /// Set when the server could not be (re)started: the run ends with an error.
    pub(crate) fatal: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The result of a health check.
enum Health {
    Ok,
    /// The server was restarted since the group began; the group was already handled.
    Stale,
    Failed(Failure),
}

impl Shared {
    /// Starts the first server; fails when the binary cannot run.
    pub(crate) fn new(
        settings: Settings,
        corpus: Corpus,
        data_root: PathBuf,
    ) -> Result<Self, String> {
        let server = Server::start(&settings.bin, data_root.join("gen-1"))?;
        let workers = settings.workers;
        let shared = Self {
            settings,
            corpus,
            supervisor: Mutex::new(Supervisor {
                server: Some(server),
                generation: 1,
                data_root,
                dirty: false,
            }),
            groups: Mutex::new(vec![VecDeque::new(); workers]),
            stats: Stats::default(),
            findings: Mutex::new(Findings::default()),
            stop: AtomicBool::new(false),
            claimed: AtomicU64::new(0),
            active: AtomicUsize::new(workers),
            started: Instant::now(),
            fatal: Mutex::new(None),
        };
        shared.stats.starts.fetch_add(1, Ordering::Relaxed);
        Ok(shared)
    }

    /// Asks every worker to stop after its current group.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// True once the run should end: asked to stop, or out of time.
    pub(crate) fn done(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
            || self
                .settings
                .duration
                .is_some_and(|d| self.started.elapsed() >= d)
    }

    /// Time since the run started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Claims up to `n` inputs of the `--inputs` budget; 0 when it is spent.
    fn claim(&self, n: usize) -> usize {
        let n = u64::try_from(n).unwrap_or(1);
        let Some(limit) = self.settings.inputs else {
            return usize::try_from(n).unwrap_or(1);
        };
        let before = self.claimed.fetch_add(n, Ordering::SeqCst);
        usize::try_from(limit.saturating_sub(before).min(n)).unwrap_or(0)
    }

    /// The current server's generation, address and panic count; `None` when there is none.
    fn current(&self) -> Option<(u64, SocketAddr, u64)> {
        let sup = lock(&self.supervisor);
        let server = sup.server.as_ref()?;
        Some((sup.generation, server.addr, server.panics()))
    }

    /// Workers still running.
    pub(crate) fn active_workers(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Runs the worker loop until the run is done, then counts itself out.
    pub(crate) fn worker(&self, worker: usize) {
        /// Counts the worker out even if it panics, so the main loop ends.
        #[derive(Debug)]
        struct CountOut<'a>(&'a AtomicUsize);
        impl Drop for CountOut<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _count_out = CountOut(&self.active);
        self.worker_loop(worker);
    }

    /// The worker loop; `worker` also selects its random stream.
    fn worker_loop(&self, worker: usize) {
        let mut seed = self.settings.seed
            ^ u64::try_from(worker)
                .unwrap_or(0)
                .wrapping_mul(0xA076_1D64_78BD_642F);
        let mut rng = Rng::new(splitmix64(&mut seed));
        let mut cursor_ids = CursorIds::default();
        let mut request_id: i32 = 1;
        // Marker ids live in their own range so they rarely equal a generated request id.
        let mut marker: i32 = 0x4D00_0000;
        while !self.done() {
            let n = self.claim(rng.range(1, self.settings.group));
            if n == 0 {
                break;
            }
            let inputs: Vec<Input> = (0..n)
                .map(|_| {
                    request_id = request_id.wrapping_add(1);
                    input::generate(&mut rng, &self.corpus, request_id)
                })
                .collect();
            let Some((generation, addr, panics)) = self.current() else {
                break;
            };
            {
                let mut groups = lock(&self.groups);
                groups[worker].push_front(Group {
                    generation,
                    worker,
                    inputs: inputs.clone(),
                    outcomes: Vec::new(),
                    passed: false,
                });
                groups[worker].truncate(HISTORY_GROUPS + 1);
            }
            let mut conn: Option<TcpStream> = None;
            for input in &inputs {
                marker = marker.wrapping_add(1);
                // Recorded as lost before it goes out, so a failure handled while this send is
                // still under way counts this input among the suspects.
                if let Some(group) = lock(&self.groups)[worker].front_mut() {
                    group.outcomes.push(Outcome::Closed);
                }
                let bytes = cursor_ids.fill(&input.bytes);
                let outcome = send::send(
                    &mut conn,
                    addr,
                    &bytes,
                    self.settings.reply_timeout,
                    marker,
                    &mut |id| cursor_ids.remember(id),
                );
                self.count(input, outcome);
                if let Some(slot) = lock(&self.groups)[worker]
                    .front_mut()
                    .and_then(|g| g.outcomes.last_mut())
                {
                    *slot = outcome;
                }
                if outcome == Outcome::Unreachable {
                    break;
                }
            }
            drop(conn);
            match self.health(generation, panics) {
                Health::Ok => {
                    if let Some(group) = lock(&self.groups)[worker].front_mut() {
                        group.passed = true;
                    }
                }
                Health::Stale => {}
                Health::Failed(failure) => self.handle_failure(generation, worker, failure),
            }
        }
    }

    fn count(&self, input: &Input, outcome: Outcome) {
        if outcome == Outcome::Unreachable {
            // Never reached a server (it was being restarted): not an input sent.
            return;
        }
        let s = &self.stats;
        s.inputs.fetch_add(1, Ordering::Relaxed);
        let kind = match input.kind {
            Kind::Raw => 0,
            Kind::Bson => 1,
            Kind::Grammar => 2,
        };
        s.by_kind[kind].fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(
            u64::try_from(input.bytes.len()).unwrap_or(0),
            Ordering::Relaxed,
        );
        match outcome {
            Outcome::Replied { errors, replies } => {
                s.replies.fetch_add(replies, Ordering::Relaxed);
                s.error_replies.fetch_add(errors, Ordering::Relaxed);
            }
            Outcome::Closed => {
                s.closed.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::TimedOut => {
                s.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Unreachable => {}
        }
    }

    /// Is the server of `generation` alive (`try_wait`), answering `ping` on a fresh
    /// connection, and free of new panic messages?
    fn health(&self, generation: u64, panics_before: u64) -> Health {
        let addr = {
            let mut sup = lock(&self.supervisor);
            if sup.generation != generation {
                return Health::Stale;
            }
            let Some(server) = sup.server.as_mut() else {
                return Health::Stale;
            };
            if let Some(status) = server.exited() {
                return Health::Failed(evidence(
                    server,
                    FailKind::Crash,
                    child::describe_status(status),
                ));
            }
            server.addr
        };
        let ping = child::ping(addr, self.settings.ping_timeout);
        let mut sup = lock(&self.supervisor);
        if sup.generation != generation {
            return Health::Stale;
        }
        let Some(server) = sup.server.as_mut() else {
            return Health::Stale;
        };
        check(server, ping, panics_before)
    }

    /// Saves the evidence, restarts the server, narrows the failure down and records it.
    /// Only the first report of a generation is handled; later ones find a new generation.
    fn handle_failure(&self, generation: u64, worker: usize, failure: Failure) {
        let mut sup = lock(&self.supervisor);
        if sup.generation != generation {
            return;
        }
        let mut failure = failure;
        if let Some(mut server) = sup.server.take() {
            server.kill();
            // The drained output is complete only now.
            failure.stderr = server.stderr();
            failure.stdout = server.stdout();
        }
        // The reporting worker's group first, then the others', newest first.
        let mut suspects: Vec<Group> = lock(&self.groups)
            .iter()
            .flat_map(|groups| {
                groups
                    .iter()
                    .filter(|g| g.generation == generation)
                    .cloned()
            })
            .collect();
        suspects.sort_by_key(|g| g.worker != worker);
        if !self.restart(&mut sup) {
            return;
        }
        let finding = self.triage(&mut sup, &suspects, failure);
        let context = format!(
            "seed {}, worker {worker}, server generation {generation}, {:.1} s into the run",
            self.settings.seed,
            self.elapsed().as_secs_f64()
        );
        let finding = Finding { context, ..finding };
        let (signature, new, path) = lock(&self.findings).record(&self.settings.findings, &finding);
        let place = path.map_or_else(|| "not saved".to_owned(), |p| p.display().to_string());
        if new {
            println!("finding: {signature}\n  saved to {place}");
        } else {
            println!("finding (again): {signature} (first saved to {place})");
        }
        if self.settings.stop_on_finding {
            self.stop();
        }
    }

    /// Starts a fresh server (new data directory, next generation); on failure the run stops.
    fn restart(&self, sup: &mut Supervisor) -> bool {
        sup.server = None;
        sup.dirty = false;
        sup.generation += 1;
        let dir = sup.data_root.join(format!("gen-{}", sup.generation));
        match Server::start(&self.settings.bin, dir) {
            Ok(server) => {
                sup.server = Some(server);
                self.stats.starts.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                *lock(&self.fatal) = Some(e);
                self.stop();
                false
            }
        }
    }

    /// Replays the suspects, each attempt on a fresh server (one starts in ~15 ms), to find
    /// what reproduces the failure, from the narrowest candidate to the widest: each input
    /// alone (the likeliest first), each input after a setup insert of sample documents into
    /// its collection (many failures need documents to act on), each group on one connection,
    /// then every suspect in order. A reproducing sequence is then shrunk by dropping inputs
    /// while it still fails.
    fn triage(&self, sup: &mut Supervisor, suspects: &[Group], original: Failure) -> Finding {
        let deadline = Instant::now() + self.settings.triage_budget;
        let kind = original.kind;
        // Groups still in flight before those that passed their check; within a group, the
        // likeliest input first (see `Group::suspects`).
        let mut singles: Vec<&Input> = Vec::new();
        for passed in [false, true] {
            for group in suspects.iter().filter(|g| g.passed == passed) {
                singles.extend(group.suspects());
            }
        }
        let sent = |g: &Group| g.inputs[..g.outcomes.len()].to_vec();
        let everything: Vec<Input> = suspects.iter().flat_map(sent).collect();
        let mut candidates: Vec<(Vec<Input>, Reproduced)> = Vec::new();
        candidates.extend(
            singles
                .iter()
                .map(|i| (vec![(*i).clone()], Reproduced::Alone)),
        );
        candidates.extend(singles.iter().filter_map(|i| {
            input::setup_for(&i.bytes)
                .map(|setup| (vec![setup, (*i).clone()], Reproduced::WithSetup))
        }));
        candidates.extend(
            suspects
                .iter()
                .filter(|g| g.outcomes.len() > 1)
                .map(|g| (sent(g), Reproduced::Group)),
        );
        if suspects.len() > 1 {
            candidates.push((everything.clone(), Reproduced::Group));
        }
        for (inputs, reproduced) in candidates {
            if Instant::now() >= deadline {
                break;
            }
            let Some(failure) = self.fresh_replay(sup, &inputs, kind) else {
                continue;
            };
            if reproduced != Reproduced::Group {
                return Finding {
                    failure,
                    inputs,
                    reproduced,
                    context: String::new(),
                };
            }
            let (inputs, failure) = self.shrink(sup, inputs, failure, deadline);
            let reproduced = if inputs.len() == 1 {
                Reproduced::Alone
            } else {
                Reproduced::Group
            };
            return Finding {
                failure,
                inputs,
                reproduced,
                context: String::new(),
            };
        }
        Finding {
            failure: original,
            inputs: everything,
            reproduced: Reproduced::No,
            context: String::new(),
        }
    }

    /// Drops chunks of `inputs` (halves, then quarters, … single inputs) as long as what is
    /// left still fails a fresh server; returns the smallest failing sequence found before
    /// `deadline` and its failure.
    fn shrink(
        &self,
        sup: &mut Supervisor,
        mut inputs: Vec<Input>,
        mut failure: Failure,
        deadline: Instant,
    ) -> (Vec<Input>, Failure) {
        let mut chunk = inputs.len().div_ceil(2);
        while chunk >= 1 && inputs.len() > 1 {
            let mut start = 0;
            while start < inputs.len() && inputs.len() > 1 {
                if Instant::now() >= deadline {
                    return (inputs, failure);
                }
                let end = (start + chunk).min(inputs.len());
                let mut rest = inputs[..start].to_vec();
                rest.extend_from_slice(&inputs[end..]);
                match self.fresh_replay(sup, &rest, failure.kind) {
                    Some(f) => {
                        inputs = rest;
                        failure = f;
                    }
                    None => start = end,
                }
            }
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
        (inputs, failure)
    }

    /// Sends `inputs` on one connection to a fresh server and checks it. On a failure the
    /// server is replaced by a fresh one and the failure (with the dead server's output)
    /// returned.
    fn fresh_replay(
        &self,
        sup: &mut Supervisor,
        inputs: &[Input],
        kind: FailKind,
    ) -> Option<Failure> {
        if (sup.dirty || sup.server.is_none()) && !self.restart(sup) {
            return None;
        }
        let server = sup.server.as_mut()?;
        let settle = if kind == FailKind::Panic {
            PANIC_SETTLE
        } else {
            Duration::ZERO
        };
        let failure = replay(
            server,
            inputs,
            self.settings.reply_timeout,
            self.settings.ping_timeout,
            settle,
        );
        self.stats
            .replays
            .fetch_add(u64::try_from(inputs.len()).unwrap_or(0), Ordering::Relaxed);
        sup.dirty = true;
        let mut failure = failure?;
        if let Some(mut server) = sup.server.take() {
            server.kill();
            failure.stderr = server.stderr();
            failure.stdout = server.stdout();
        }
        self.restart(sup);
        Some(failure)
    }
}

/// Sends `inputs` in order on one connection to `server`, then checks it as the workers do.
/// Returns the failure, if any (the server is left as it is).
pub(crate) fn replay(
    server: &mut Server,
    inputs: &[Input],
    reply_timeout: Duration,
    ping_timeout: Duration,
    settle: Duration,
) -> Option<Failure> {
    let panics = server.panics();
    let mut conn = None;
    let mut cursor_ids = CursorIds::default();
    for (i, input) in inputs.iter().enumerate() {
        let marker = 0x5200_0000 + i32::try_from(i).unwrap_or(0);
        let bytes = cursor_ids.fill(&input.bytes);
        let outcome = send::send(
            &mut conn,
            server.addr,
            &bytes,
            reply_timeout,
            marker,
            &mut |id| cursor_ids.remember(id),
        );
        if outcome == Outcome::Unreachable {
            break;
        }
    }
    drop(conn);
    // Lets the stderr drainer catch up with a panic message printed just before the close.
    std::thread::sleep(settle);
    if let Some(status) = server.exited() {
        return Some(evidence(
            server,
            FailKind::Crash,
            child::describe_status(status),
        ));
    }
    let ping = child::ping(server.addr, ping_timeout);
    match check(server, ping, panics) {
        Health::Failed(failure) => Some(failure),
        Health::Ok | Health::Stale => None,
    }
}

/// Turns a ping result into a health verdict: a process that exited is a crash (it may die
/// while the ping waits), a live process that did not answer is a hang, a new panic message
/// is a panic.
fn check(server: &mut Server, ping: Result<(), String>, panics_before: u64) -> Health {
    if let Err(e) = ping {
        if let Some(status) = server.wait_exit(Duration::from_millis(500)) {
            return Health::Failed(evidence(
                server,
                FailKind::Crash,
                child::describe_status(status),
            ));
        }
        return Health::Failed(evidence(
            server,
            FailKind::Hang,
            format!("alive, but ping on a fresh connection failed: {e}"),
        ));
    }
    if server.panics() > panics_before {
        return Health::Failed(evidence(
            server,
            FailKind::Panic,
            "alive and answering ping, but printed a panic".to_owned(),
        ));
    }
    Health::Ok
}

fn evidence(server: &Server, kind: FailKind, detail: String) -> Failure {
    Failure {
        kind,
        detail,
        stderr: server.stderr(),
        stdout: server.stdout(),
    }
}
