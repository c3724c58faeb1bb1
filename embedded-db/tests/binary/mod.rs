//! Runs the `embedded-db` binary as a child process.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `embedded-db` process and the address it bound.
pub struct Process {
    pub child: Child,
    pub addr: String,
}

impl Process {
    /// Starts the binary on `127.0.0.1:0` over `path` and waits for its "listening" log line.
    pub fn start(path: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_embedded-db"))
            .args(["--addr", "127.0.0.1:0", "--path"])
            .arg(path)
            .env("RUST_LOG", "embedded_db=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn embedded-db");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("embedded-db printed its address before exiting")
                .expect("read log line");
            if let Some(rest) = line.split("addr=").nth(1) {
                if line.contains("listening") {
                    break rest.split_whitespace().next().expect("address").to_owned();
                }
            }
        };
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    /// A connection string for the process.
    pub fn uri(&self) -> String {
        format!(
            "mongodb://{}/?directConnection=true&serverSelectionTimeoutMS=5000",
            self.addr
        )
    }

    /// Sends SIGKILL: no shutdown code runs.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
