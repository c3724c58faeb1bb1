//! Run with
//!
//! ```not_rust
//! cargo build --release -p server
//! cargo run --release -p server-fuzz -- --seconds 60 [--requests N] [--seed S] [--no-trickle]
//! make fuzz-http FUZZ_SECONDS=60 FUZZ_SEED=42     # the same through the Makefile
//! cargo run --release -p server-fuzz -- --replay server/fuzz/findings/001-…
//! ```
//!
//! Fuzzes the release `server` binary over HTTP/1 (see the library docs and docs/fuzzing.md).
//! The exit code is 1 when there were findings (a `5xx`, a hang, a dead process), 2 when the
//! harness could not run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use server_fuzz::child::{self, Launch, Server};
use server_fuzz::exchange::{self, Ending, Limits};
use server_fuzz::findings;
use server_fuzz::run::{self, Settings, Shared, Target};

/// Fuzzes the release server binary over HTTP; see the crate docs.
#[derive(Debug, Parser)]
struct Args {
    /// Stop after this many seconds (0: no time limit; then --requests is required).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Stop after this many requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Seed of the case streams (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Connections sending whole requests in parallel.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Connections trickling heads and bodies or holding them unfinished (the trickle mode).
    #[arg(long, default_value_t = 8)]
    slow_connections: usize,
    /// Turn the trickle mode off: no trickled or unfinished requests held open (for a server
    /// without header and body deadlines).
    #[arg(long)]
    no_trickle: bool,
    /// The server binary (default: `server` next to this harness in the target directory).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Fuzz a server already listening there instead of starting one.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Where findings are saved.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/findings"))]
    findings: PathBuf,
    /// The server's header deadline (passed as HTTP_HEADER_TIMEOUT_MS).
    #[arg(long, default_value_t = 2_000)]
    header_timeout_ms: u64,
    /// The server's body deadline (passed as HTTP_BODY_TIMEOUT_MS).
    #[arg(long, default_value_t = 3_000)]
    body_timeout_ms: u64,
    /// Slack on top of a deadline before a silent open connection counts as a hang.
    #[arg(long, default_value_t = 3_000)]
    margin_ms: u64,
    /// Silence after which a request of unknown framing is half-closed.
    #[arg(long, default_value_t = 300)]
    quiet_ms: u64,
    /// Stop at the first finding.
    #[arg(long)]
    stop_on_finding: bool,
    /// The server's WRITE_RATE_PER_IP (high, so writes are not all refused with 429).
    #[arg(long, default_value = "1000/s,burst=1000")]
    write_rate: String,
    /// More environment for the server, `NAME=value` (repeatable; wins over the defaults).
    #[arg(long = "server-env", value_name = "NAME=value")]
    server_env: Vec<String>,
    /// Instead of fuzzing: send the saved cases (finding directories or raw files) to a fresh
    /// server, one connection each, and report what happens (exit 1 if it fails again).
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let limits = Limits {
        header: Duration::from_millis(args.header_timeout_ms),
        body: Duration::from_millis(args.body_timeout_ms),
        margin: Duration::from_millis(args.margin_ms),
        quiet: Duration::from_millis(args.quiet_ms),
    };
    let target = match target(&args) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("fuzz-http: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fuzz-http: no runtime: {e}");
            return ExitCode::from(2);
        }
    };
    if !args.replay.is_empty() {
        return runtime.block_on(replay(&args.replay, &target, &limits));
    }
    if args.seconds == 0 && args.requests.is_none() {
        eprintln!("fuzz-http: --seconds 0 needs --requests, or the run would never end");
        return ExitCode::from(2);
    }
    // A fresh seed from the system's entropy unless one is given; printed either way.
    let seed = args.seed.unwrap_or_else(rand::random);
    let settings = Settings {
        target,
        seed,
        duration: (args.seconds > 0).then(|| Duration::from_secs(args.seconds)),
        requests: args.requests,
        connections: args.connections.max(1),
        slow_connections: if args.no_trickle {
            0
        } else {
            args.slow_connections
        },
        limits,
        findings: args.findings.clone(),
        stop_on_finding: args.stop_on_finding,
        progress: true,
    };
    println!(
        "fuzz-http: seed {seed}, {} + {} slow connections, trickle mode {}, deadlines head {} ms, body {} ms, margin {} ms",
        settings.connections,
        settings.slow_connections,
        if settings.slow_connections > 0 { "on" } else { "off" },
        args.header_timeout_ms,
        args.body_timeout_ms,
        args.margin_ms,
    );
    let shared = match Shared::new(settings) {
        Ok(shared) => Arc::new(shared),
        Err(e) => {
            eprintln!("fuzz-http: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run::fuzz(Arc::clone(&shared)));
    print!("{}", run::summary(&shared));
    shared.stop_server();
    if let Some(e) = shared.fatal.lock().ok().and_then(|f| f.clone()) {
        eprintln!("fuzz-http: stopped early: {e}");
        return ExitCode::from(2);
    }
    let failed = shared.findings.lock().map_or(true, |f| f.total > 0);
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The server to fuzz: `--addr`, or the binary with the environment the run needs.
fn target(args: &Args) -> Result<Target, String> {
    if let Some(addr) = args.addr {
        return Ok(Target::Address(addr));
    }
    let bin = args.bin.clone().unwrap_or_else(default_binary);
    if !bin.is_file() {
        return Err(format!(
            "{} not found; build it first: cargo build --release -p server (or pass --bin)",
            bin.display()
        ));
    }
    let mut env: Vec<(String, String)> = vec![
        ("WRITE_RATE_PER_IP".into(), args.write_rate.clone()),
        (
            "HTTP_HEADER_TIMEOUT_MS".into(),
            args.header_timeout_ms.to_string(),
        ),
        (
            "HTTP_BODY_TIMEOUT_MS".into(),
            args.body_timeout_ms.to_string(),
        ),
        // Every connection comes from 127.0.0.1: the per-address caps must not refuse them.
        ("HTTP_MAX_CONNECTIONS_PER_IP".into(), "100000".into()),
        ("SSE_MAX_CLIENTS_PER_IP".into(), "100000".into()),
        ("SSE_HEARTBEAT_MS".into(), "1000".into()),
    ];
    for pair in &args.server_env {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!("--server-env {pair}: expected NAME=value"));
        };
        env.push((name.to_owned(), value.to_owned()));
    }
    Ok(Target::Spawn(Launch { bin, env }))
}

/// `server` in the profile directory this harness was built into.
fn default_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or_else(|| Path::new("."));
    dir.join(format!("server{}", std::env::consts::EXE_SUFFIX))
}

/// `--replay`: each saved case on its own connection, in order, to a fresh server.
async fn replay(paths: &[PathBuf], target: &Target, limits: &Limits) -> ExitCode {
    let mut cases = Vec::new();
    for path in paths {
        match findings::load(path) {
            Ok(loaded) => cases.extend(loaded),
            Err(e) => {
                eprintln!("fuzz-http: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let (mut server, addr) = match target {
        Target::Address(addr) => (None, *addr),
        Target::Spawn(launch) => {
            let launch = launch.clone();
            match tokio::task::spawn_blocking(move || Server::start(&launch)).await {
                Ok(Ok(server)) => {
                    let addr = server.addr;
                    (Some(server), addr)
                }
                Ok(Err(e)) => {
                    eprintln!("fuzz-http: {e}");
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("fuzz-http: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let mut failed = false;
    for (i, case) in cases.iter().enumerate() {
        println!(
            "case {}: {} bytes, {}\n{}",
            i + 1,
            case.bytes.len(),
            case.label(),
            findings::escape(&case.bytes, 2000)
        );
        let outcome = exchange::run(addr, case, limits).await;
        println!(
            "  -> statuses {:?}, {}",
            outcome.statuses,
            match &outcome.ending {
                Ending::Answered => "answered".to_owned(),
                Ending::Closed => "closed by the server".to_owned(),
                Ending::Stream => "event stream opened".to_owned(),
                Ending::Hang {
                    waiting_for,
                    waited,
                } => format!(
                    "HANG: waited {:.1} s for {waiting_for}",
                    waited.as_secs_f64()
                ),
                Ending::Unreachable(e) => format!("unreachable: {e}"),
            }
        );
        failed |= outcome.failed();
    }
    if let Some(server) = server.as_mut() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if server.panics() > 0 {
            println!("the server printed a panic:");
            for line in server.output().iter().filter(|l| l.contains("panicked")) {
                println!("  {line}");
            }
            failed = true;
        }
        if let Some(status) = server.exited() {
            println!("the server died: {}", child::describe_status(status));
            for line in server.output().iter().rev().take(10).rev() {
                println!("  {line}");
            }
            failed = true;
        }
    }
    if failed {
        println!("reproduced");
        ExitCode::from(1)
    } else {
        println!("not reproduced: every answer below 500, no hang, the server alive");
        ExitCode::SUCCESS
    }
}
