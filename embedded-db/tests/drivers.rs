//! Other official drivers against an in-process server: the Node.js driver (as used by
//! mongosh and mongoose; replica-set discovery through the legacy `ismaster` handshake) and
//! pymongo, each doing CRUD, a unique index and change streams with resume.
//!
//! They need their packages installed (`make test` does it first):
//! `npm ci --prefix embedded-db/tests/node` and `python3 -m pip install pymongo`.
//! A missing install fails the test rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long one driver's script may take before the test fails.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn tests_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

/// Runs `program args…` in `dir` against a fresh server and fails with its output unless it
/// succeeds.
async fn run_against_server(program: &str, args: &[&str], dir: &Path) {
    let data = tempfile::tempdir().expect("create a temporary data directory");
    let addr = "127.0.0.1:0".parse().expect("literal socket address");
    let server = embedded_db::Server::start(embedded_db::Config::new(addr, data.path()))
        .await
        .expect("start the server");
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("EMBEDDED_DB_URI_HOST", server.local_addr().to_string())
        .env("EMBEDDED_DB_REPLICA_SET", server.replica_set())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run `{program}`: {e}"));
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} still running after {SCRIPT_TIMEOUT:?}"))
        .expect("wait for the script");
    server.shutdown().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} smoke test failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
}

/// The Node.js driver: `tests/node/smoke.mjs` under `node --test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_driver_smoke() {
    let dir = tests_dir("node");
    assert!(
        dir.join("node_modules").join("mongodb").is_dir(),
        "the Node driver is not installed in {}: run `npm ci --prefix embedded-db/tests/node` \
         (from the workspace root) before `cargo test`",
        dir.display()
    );
    run_against_server("node", &["--test", "smoke.mjs"], &dir).await;
}

/// pymongo: `tests/python/smoke.py` under `unittest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_driver_smoke() {
    let dir = tests_dir("python");
    let probe = std::process::Command::new("python3")
        .args(["-c", "import pymongo"])
        .status()
        .expect("run python3");
    assert!(
        probe.success(),
        "pymongo is not installed: run `python3 -m pip install pymongo` before `cargo test`"
    );
    run_against_server("python3", &["-m", "unittest", "-v", "smoke"], &dir).await;
}
