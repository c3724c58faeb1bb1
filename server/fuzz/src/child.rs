//! The server under test: the release `server` binary as a child process on the embedded
//! database, as `end2end/tests/server.ts` starts it (free ports, a temp data directory, no
//! `MONGO_URI`), with a temp site root holding a few static files, short HTTP deadlines and
//! high per-address caps. Its output is kept in a bounded buffer for findings.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::response::{self, Parsed};
use crate::routes::STATIC_FILES;

/// How long start-up may take until `/readyz` answers 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of output kept.
const OUTPUT_LINES: usize = 200;

/// How to start the server.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The binary.
    pub bin: PathBuf,
    /// Environment on top of the defaults ([`Launch::environment`]); later entries win.
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// The environment the server gets: the site and database on `site`/`db`, data in `dir`,
    /// then [`Launch::env`].
    fn environment(&self, site: SocketAddr, db: SocketAddr, dir: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("LEPTOS_OUTPUT_NAME", "realtime".to_owned()),
            ("LEPTOS_SITE_ADDR", site.to_string()),
            ("LEPTOS_SITE_ROOT", dir.join("site").display().to_string()),
            ("EMBEDDED_DB_ADDR", db.to_string()),
            ("EMBEDDED_DB_PATH", dir.join("db").display().to_string()),
            ("RUST_LOG", "warn".to_owned()),
            ("NO_COLOR", "1".to_owned()),
            ("RUST_BACKTRACE", "0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(self.env.iter().cloned());
        env
    }
}

/// Output lines, bounded, and the panic messages counted.
#[derive(Debug, Default)]
struct Output {
    lines: Mutex<VecDeque<String>>,
    panics: AtomicU64,
}

impl Output {
    fn push(&self, line: String) {
        if line.contains("panicked at") {
            self.panics.fetch_add(1, Ordering::SeqCst);
        }
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == OUTPUT_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}

/// A running server. Dropping it kills the process and removes its directory.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// The HTTP address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    output: Arc<Output>,
    drainers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Server {
    /// Starts the server in a fresh directory and waits until `/readyz` answers 200.
    pub fn start(launch: &Launch) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("server-fuzz-")
            .tempdir()
            .map_err(|e| format!("a temp directory: {e}"))?;
        write_site(&dir.path().join("site")).map_err(|e| format!("the site root: {e}"))?;
        // Both ports held until both are known, so they differ.
        let (site, db) = {
            let a = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let b = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            (
                a.local_addr().map_err(|e| e.to_string())?,
                b.local_addr().map_err(|e| e.to_string())?,
            )
        };
        let mut command = Command::new(&launch.bin);
        command
            .current_dir(dir.path())
            .env_remove("MONGO_URI")
            .env_remove("MONGO_DB")
            .envs(launch.environment(site, db, dir.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.bin.display()))?;
        let output = Arc::new(Output::default());
        let mut drainers = Vec::new();
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        for pipe in pipes.into_iter().flatten() {
            let output = Arc::clone(&output);
            drainers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    output.push(String::from_utf8_lossy(&line).trim_end().to_owned());
                    line.clear();
                }
            }));
        }
        let mut server = Self {
            child,
            addr: site,
            dir,
            output,
            drainers,
            status: None,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let mut last = String::from("no answer");
        while started.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.exited() {
                self.kill();
                return Err(format!(
                    "the server exited during start-up ({}): {}",
                    describe_status(status),
                    self.output().join(" | ")
                ));
            }
            match get_status(self.addr, "/readyz", Duration::from_secs(3)) {
                Ok(200) => return Ok(()),
                Ok(status) => last = format!("status {status}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
        Err(format!(
            "/readyz did not answer 200 within {READY_TIMEOUT:?} (last: {last}): {}",
            self.output().join(" | ")
        ))
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Panic messages printed so far.
    pub fn panics(&self) -> u64 {
        self.output.panics.load(Ordering::SeqCst)
    }

    /// The last lines the server printed (stdout and stderr).
    pub fn output(&self) -> Vec<String> {
        self.output
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Kills the process if it runs, reaps it, and waits for its output to be read.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        for drainer in self.drainers.drain(..) {
            let _ = drainer.join();
        }
    }

    /// The directory of the server's data and site root.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The static files, with `.gz` and `.br` copies of the first three (their content is not
/// compressed: the file handler only picks them by name).
fn write_site(root: &Path) -> std::io::Result<()> {
    for (i, (path, content)) in STATIC_FILES.iter().enumerate() {
        let file = root.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content)?;
        if i < 3 {
            for suffix in ["gz", "br"] {
                std::fs::write(root.join(format!("{path}.{suffix}")), content)?;
            }
        }
    }
    Ok(())
}

/// `GET path` on a fresh connection; the status, within `timeout`.
pub fn get_status(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match response::parse(&received, false) {
            Parsed::Whole { status, .. } | Parsed::Open { status, .. } => return Ok(status),
            Parsed::Garbage => return Err("not an HTTP answer".to_owned()),
            Parsed::Incomplete => {}
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed without an answer".to_owned()),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// An exit status in words: the signal on Unix, else the exit code.
pub fn describe_status(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    status.code().map_or_else(
        || "exited".to_owned(),
        |code| format!("exited with code {code}"),
    )
}
