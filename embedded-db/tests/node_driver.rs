//! Runs the official Node.js driver's smoke test (`tests/node/smoke.mjs`) against an in-process
//! server: replica-set discovery through the legacy `ismaster` handshake, CRUD, a unique
//! index and change streams with resume.
//!
//! Needs `node` on `PATH` and the pinned driver installed:
//! `npm ci --prefix embedded-db/tests/node` (the Makefile does this before `cargo test`).
//! A missing install fails the test rather than skipping it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// How long the whole Node script may take before the test fails.
const NODE_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_driver_smoke() {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("node");
    assert!(
        node_dir.join("node_modules").join("mongodb").is_dir(),
        "the Node driver is not installed in {}: run `npm ci --prefix embedded-db/tests/node` \
         (from the workspace root) before `cargo test`",
        node_dir.display()
    );

    let dir = tempfile::tempdir().expect("create a temporary data directory");
    let addr = "127.0.0.1:0".parse().expect("literal socket address");
    let server = embedded_db::Server::start(embedded_db::Config::new(addr, dir.path()))
        .await
        .expect("start the server");

    let child = tokio::process::Command::new("node")
        .arg("--test")
        .arg(node_dir.join("smoke.mjs"))
        .current_dir(&node_dir)
        .env("EMBEDDED_DB_URI_HOST", server.local_addr().to_string())
        .env("EMBEDDED_DB_REPLICA_SET", server.replica_set())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run `node` (is Node.js 18+ on PATH?)");
    let output = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node smoke test still running after {NODE_TIMEOUT:?}"))
        .expect("wait for node");
    server.shutdown().await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node smoke test failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
}
