//! A fuzzing harness for the `embedded-db` binary, on stable Rust over real sockets.
//!
//! Run with
//!
//! ```not_rust
//! cargo build --release -p embedded-db
//! cargo run --release -p embedded-db-fuzz -- --seconds 120 [--inputs N] [--seed S]
//! make fuzz FUZZ_SECONDS=600            # the same through the Makefile
//! cargo run --release -p embedded-db-fuzz -- --replay embedded-db/fuzz/findings/001-…
//! ```
//!
//! It starts the release `embedded-db` binary (next to this one in the target directory,
//! or `--bin`) as a child process on `127.0.0.1:0` with a temp data directory, and sends from
//! several connections in parallel:
//!
//! - (a) raw bytes: random bytes, bit flips / truncations / length-field lies of valid frames,
//!   bad opcodes, flags and section kinds, bogus document-sequence sizes, OP_QUERY variants,
//!   huge declared lengths;
//! - (b) structurally valid OP_MSG frames around random or mutated BSON bodies: every BSON type,
//!   nesting up to 400 levels, dotted paths of up to 100,000 components, arrays of up to
//!   100,000 elements, invalid UTF-8 in strings, keys and regexes;
//! - (c) commands from a grammar (`find`, `insert`, `update`, `delete`, `findAndModify`,
//!   `aggregate` and `$changeStream`, `count`, `distinct`, `createIndexes`,
//!   `getMore`/`killCursors` with ids from earlier replies, admin commands), sometimes mutated.
//!
//! Raw and BSON inputs start from the seed corpus in `embedded-db/fuzz/corpus/` (frames
//! captured from pymongo and the Node driver, plus hand-made ones).
//!
//! After each group of 1 to `--group` inputs on one connection it checks that the process is
//! alive (`try_wait`), that a fresh connection answers `ping` within `--ping-timeout-ms`, and that
//! the server printed no panic. A failure is a finding: the supervisor restarts the server,
//! replays the suspect inputs on fresh servers to find the one (or the group) that reproduces
//! it, saves it under `--findings` (one directory per distinct signature: `input-N.bin` and
//! `note.txt`), prints it and continues (or stops with `--stop-on-finding`).
//!
//! Inputs are a function of `--seed` and the worker number (with `--workers 1` the whole input
//! sequence is). `getMore`/`killCursors` carry placeholder cursor ids that are filled in at
//! send time with ids from earlier replies on the same worker (or replay). The summary reports inputs sent,
//! inputs/s, replies, error replies, connections closed by the server and findings. The exit
//! code is 1 when there were findings, 2 when the harness could not run.

mod child;
mod findings;
mod frame;
mod grammar;
mod input;
mod raw;
mod raw_bson;
mod rng;
mod run;
mod send;
mod values;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::input::{Corpus, Input, Kind};
use crate::run::{Settings, Shared};

/// Progress lines appear this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Fuzzes the release `embedded-db` binary over TCP; see the module docs.
#[derive(Debug, Parser)]
struct Args {
    /// Stop after this many seconds (0: no time limit; then --inputs is required).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Stop after this many inputs.
    #[arg(long)]
    inputs: Option<u64>,
    /// Seed of the input generators (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Connections sending in parallel.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Most inputs sent on one connection between two health checks.
    #[arg(long, default_value_t = 6)]
    group: usize,
    /// The embedded-db binary (default: `embedded-db` in the target directory of this harness).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Seed corpus directory.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))]
    corpus: PathBuf,
    /// Where findings are saved.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/findings"))]
    findings: PathBuf,
    /// How long one input may go unanswered before it counts as a slow reply.
    #[arg(long, default_value_t = 5_000)]
    reply_timeout_ms: u64,
    /// How long the health-check ping may take before the server counts as hung.
    #[arg(long, default_value_t = 5_000)]
    ping_timeout_ms: u64,
    /// Time spent narrowing one failure down to its input(s).
    #[arg(long, default_value_t = 30)]
    triage_seconds: u64,
    /// Stop at the first finding instead of restarting the server and going on.
    #[arg(long)]
    stop_on_finding: bool,
    /// Instead of fuzzing: send these saved inputs (files, or a finding directory's
    /// `input-*.bin`) in order on one connection to a fresh server and report what happens.
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bin = args.bin.clone().unwrap_or_else(default_binary);
    if !bin.is_file() {
        eprintln!(
            "fuzz: {} not found; build it first: cargo build --release -p embedded-db (or pass --bin)",
            bin.display()
        );
        return ExitCode::from(2);
    }
    let data_root = tempfile::Builder::new()
        .prefix("embedded-db-fuzz-")
        .tempdir()
        .expect("a temp directory for the server's data");
    if !args.replay.is_empty() {
        return replay(&args, &bin, data_root.path());
    }
    if args.seconds == 0 && args.inputs.is_none() {
        eprintln!("fuzz: --seconds 0 needs --inputs, or the run would never end");
        return ExitCode::from(2);
    }
    let corpus = match Corpus::load(&args.corpus) {
        Ok(corpus) => corpus,
        Err(e) => {
            eprintln!("fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() ^ u64::from(d.subsec_nanos()))
    });
    let settings = Settings {
        bin,
        findings: args.findings.clone(),
        seed,
        duration: (args.seconds > 0).then(|| Duration::from_secs(args.seconds)),
        inputs: args.inputs,
        workers: args.workers.max(1),
        group: args.group.max(1),
        reply_timeout: Duration::from_millis(args.reply_timeout_ms),
        ping_timeout: Duration::from_millis(args.ping_timeout_ms),
        triage_budget: Duration::from_secs(args.triage_seconds),
        stop_on_finding: args.stop_on_finding,
    };
    println!(
        "fuzz: seed {seed}, {} workers, {} seed files, server {}; limits: {}{}",
        settings.workers,
        corpus.len(),
        settings.bin.display(),
        settings.duration.map_or_else(
            || "no time limit".to_owned(),
            |d| format!("{} s", d.as_secs())
        ),
        settings
            .inputs
            .map_or_else(String::new, |n| format!(", {n} inputs")),
    );
    let shared = match Shared::new(settings.clone(), corpus, data_root.path().to_owned()) {
        Ok(shared) => shared,
        Err(e) => {
            eprintln!("fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    std::thread::scope(|scope| {
        for worker in 0..settings.workers {
            let shared = &shared;
            std::thread::Builder::new()
                .name(format!("fuzz-{worker}"))
                // Generous: inputs nest a few hundred levels and are built recursively.
                .stack_size(64 << 20)
                .spawn_scoped(scope, move || shared.worker(worker))
                .expect("spawn a worker thread");
        }
        let mut next_progress = Instant::now() + PROGRESS_EVERY;
        while shared.active_workers() > 0 {
            std::thread::sleep(Duration::from_millis(100));
            if Instant::now() >= next_progress {
                next_progress += PROGRESS_EVERY;
                progress(&shared);
            }
        }
    });
    summary(&shared, &settings)
}

/// `embedded-db` in the profile directory this harness was built into
/// (`target/release/embedded-db-fuzz` → `target/release/embedded-db`).
fn default_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe.parent().unwrap_or_else(|| Path::new("."));
    profile_dir.join(format!("embedded-db{}", std::env::consts::EXE_SUFFIX))
}

fn progress(shared: &Shared) {
    let s = &shared.stats;
    let inputs = s.inputs.load(Ordering::Relaxed);
    let secs = shared.elapsed().as_secs_f64().max(0.001);
    eprintln!(
        "fuzz: {:>4.0} s  {inputs} inputs ({:.0}/s), {} closed by server, {} error replies, {} findings",
        secs,
        inputs as f64 / secs,
        s.closed.load(Ordering::Relaxed),
        s.error_replies.load(Ordering::Relaxed),
        shared.findings.lock().map_or(0, |f| f.total),
    );
}

fn summary(shared: &Shared, settings: &Settings) -> ExitCode {
    let s = &shared.stats;
    let secs = shared.elapsed().as_secs_f64().max(0.001);
    let inputs = s.inputs.load(Ordering::Relaxed);
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "\nfuzz summary: seed {}, {} workers, {secs:.1} s",
        settings.seed, settings.workers
    );
    println!(
        "  inputs sent                  {inputs} ({:.0}/s; raw {}, bson {}, grammar {}; {:.1} MB)",
        inputs as f64 / secs,
        n(&s.by_kind[0]),
        n(&s.by_kind[1]),
        n(&s.by_kind[2]),
        n(&s.bytes) as f64 / 1e6
    );
    println!("  replies                      {}", n(&s.replies));
    println!("  error replies (ok: 0)        {}", n(&s.error_replies));
    println!("  connections closed by server {}", n(&s.closed));
    println!(
        "  slow replies (> {} ms)     {}",
        settings.reply_timeout.as_millis(),
        n(&s.timeouts)
    );
    println!("  server starts                {}", n(&s.starts));
    println!("  triage replays               {}", n(&s.replays));
    let findings = shared
        .findings
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    println!(
        "  findings                     {} ({} distinct)",
        findings.total,
        findings.by_signature.len()
    );
    for (signature, (count, path)) in &findings.by_signature {
        let place = path
            .as_ref()
            .map_or_else(|| "not saved".to_owned(), |p| p.display().to_string());
        println!("    {count:>4} × {signature}\n           {place}");
    }
    if let Some(e) = shared.fatal.lock().ok().and_then(|f| f.clone()) {
        eprintln!("fuzz: stopped early: {e}");
        return ExitCode::from(2);
    }
    if findings.total > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `--replay`: the saved inputs, in order, on one connection to a fresh server.
fn replay(args: &Args, bin: &Path, data_root: &Path) -> ExitCode {
    let mut files = Vec::new();
    for path in &args.replay {
        if path.is_dir() {
            let mut inputs: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            inputs.retain(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("input-"))
            });
            // input-2.bin before input-10.bin.
            inputs.sort_by_key(|p| {
                let name = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name.trim_start_matches("input-")
                    .parse::<u64>()
                    .unwrap_or(u64::MAX)
            });
            files.extend(inputs);
        } else {
            files.push(path.clone());
        }
    }
    let mut inputs = Vec::new();
    for file in &files {
        match std::fs::read(file) {
            Ok(bytes) => inputs.push(Input {
                bytes,
                kind: Kind::Raw,
                origin: file.display().to_string(),
            }),
            Err(e) => {
                eprintln!("fuzz: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    }
    if inputs.is_empty() {
        eprintln!("fuzz: nothing to replay");
        return ExitCode::from(2);
    }
    let mut server = match child::Server::start(bin, data_root.join("replay")) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    for input in &inputs {
        println!(
            "replaying {} ({} bytes): {}",
            input.origin,
            input.bytes.len(),
            findings::describe(&input.bytes)
        );
    }
    let reply = Duration::from_millis(args.reply_timeout_ms);
    let ping = Duration::from_millis(args.ping_timeout_ms);
    match run::replay(&mut server, &inputs, reply, ping, run::PANIC_SETTLE) {
        Some(mut failure) => {
            server.kill();
            failure.stderr = server.stderr();
            println!(
                "reproduced: {}: {} ({})",
                failure.kind.name(),
                failure.reason(),
                failure.detail
            );
            for line in failure.stderr.iter().rev().take(10).rev() {
                println!("  {line}");
            }
            ExitCode::from(1)
        }
        None => {
            println!("not reproduced: the server is alive and answers ping");
            ExitCode::SUCCESS
        }
    }
}
