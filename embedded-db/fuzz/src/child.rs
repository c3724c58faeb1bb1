//! The server under test: the release `embedded-db` binary as a child process on
//! `127.0.0.1:0` (it logs the port it bound) with its own data directory, its stdout and
//! stderr drained into bounded line buffers so a crash report can quote them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::frame;

/// How long the binary may take to print its "listening" line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of stderr (panic messages, fatal runtime errors) kept for a finding's note.
const STDERR_LINES: usize = 200;
/// Lines of the server's log (stdout) kept for a finding's note.
const STDOUT_LINES: usize = 30;

/// What the child printed, bounded, plus a count of panic messages on stderr.
#[derive(Debug, Default)]
pub(crate) struct Output {
    stderr: Mutex<VecDeque<String>>,
    stdout: Mutex<VecDeque<String>>,
    panics: AtomicU64,
}

impl Output {
    fn push(buffer: &Mutex<VecDeque<String>>, cap: usize, line: String) {
        let mut lines = buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lines.len() == cap {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn lines(buffer: &Mutex<VecDeque<String>>) -> Vec<String> {
        buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// A running `embedded-db` process. Dropping it kills the process and removes its data dir.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    /// The address the server bound.
    pub(crate) addr: SocketAddr,
    dir: PathBuf,
    output: Arc<Output>,
    drainers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Server {
    /// Starts `bin` over a fresh data directory `dir` and waits until it listens.
    pub(crate) fn start(bin: &Path, dir: PathBuf) -> Result<Self, String> {
        let mut child = Command::new(bin)
            .args(["--addr", "127.0.0.1:0", "--path"])
            .arg(&dir)
            .env("RUST_LOG", "embedded_db=info")
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let output = Arc::new(Output::default());
        let (addr_tx, addr_rx) = mpsc::channel();
        let mut drainers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let output = Arc::clone(&output);
            drainers.push(std::thread::spawn(move || {
                let mut addr_tx = Some(addr_tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("listening") {
                        let addr = line
                            .split("addr=")
                            .nth(1)
                            .and_then(|rest| rest.split_whitespace().next())
                            .and_then(|a| a.parse::<SocketAddr>().ok());
                        if let (Some(tx), Some(addr)) = (addr_tx.take(), addr) {
                            let _ = tx.send(addr);
                        }
                    }
                    Output::push(&output.stdout, STDOUT_LINES, line);
                }
            }));
        }
        if let Some(stderr) = child.stderr.take() {
            let output = Arc::clone(&output);
            drainers.push(std::thread::spawn(move || {
                // Lossy: a crash can print anything.
                let mut reader = BufReader::new(stderr);
                let mut buf = Vec::new();
                while reader
                    .read_until(b'\n', &mut buf)
                    .map(|n| n > 0)
                    .unwrap_or(false)
                {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    buf.clear();
                    if line.contains("panicked at") {
                        output.panics.fetch_add(1, Ordering::SeqCst);
                    }
                    Output::push(&output.stderr, STDERR_LINES, line);
                }
            }));
        }
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            output,
            drainers,
            status: None,
        };
        match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                server.addr = addr;
                Ok(server)
            }
            Err(_) => {
                server.kill();
                Err(format!(
                    "{} did not report a listening address within {START_TIMEOUT:?}; stderr: {}",
                    bin.display(),
                    server.stderr().join(" | ")
                ))
            }
        }
    }

    /// The exit status if the process has exited (`try_wait`).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process (if still running), reaps it and waits for its output to be drained,
    /// so [`Self::stderr`] holds everything it printed.
    pub(crate) fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        for drainer in self.drainers.drain(..) {
            let _ = drainer.join();
        }
    }

    /// Panic messages the process printed so far.
    pub(crate) fn panics(&self) -> u64 {
        self.output.panics.load(Ordering::SeqCst)
    }

    /// The last lines of stderr.
    pub(crate) fn stderr(&self) -> Vec<String> {
        Output::lines(&self.output.stderr)
    }

    /// The last lines of the server log (stdout).
    pub(crate) fn stdout(&self) -> Vec<String> {
        Output::lines(&self.output.stdout)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A human-readable exit status: the signal on Unix (`SIGABRT` for an abort or a stack
/// overflow, `SIGSEGV`, `SIGKILL` for the OOM killer), else the exit code.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                4 => "SIGILL",
                6 => "SIGABRT",
                7 => "SIGBUS",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                15 => "SIGTERM",
                _ => "signal",
            };
            return format!("killed by signal {signal} ({name})");
        }
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "exited".to_owned(),
    }
}

/// Sends `ping` on a fresh connection and waits for `ok: 1`, all within `timeout`.
pub(crate) fn ping(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(remaining))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(remaining))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&frame::ping(7))
        .map_err(|e| format!("send: {e}"))?;
    let mut header = [0u8; 16];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("reply: {e}"))?;
    let len = frame::read_i32(&header, 0)
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(0);
    if !(21..=1 << 20).contains(&len) {
        return Err(format!("reply length {len}"));
    }
    let mut body = vec![0u8; len - 16];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("reply body: {e}"))?;
    let ok = bson::RawDocument::from_bytes(&body[5..])
        .ok()
        .and_then(|d| d.get("ok").ok().flatten().and_then(|v| v.as_f64()));
    if ok == Some(1.0) {
        Ok(())
    } else {
        Err(format!("ping answered without ok: 1 ({ok:?})"))
    }
}
