//! The `embedded-db` binary's start-up: clear one-line errors and a non-zero exit.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_embedded-db"))
        .args(args)
        .output()
        .expect("run embedded-db");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An address in use stops start-up with one line naming `EMBEDDED_DB_ADDR`.
#[test]
fn address_in_use_fails_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_str().expect("utf-8 path");
    let (ok, stderr) = run(&["--addr", &addr, "--path", path]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("EMBEDDED_DB_ADDR") && stderr.contains(&addr),
        "{stderr}"
    );
}

/// A data path that cannot be created stops start-up with one line naming `EMBEDDED_DB_PATH`.
#[test]
fn unusable_path_fails_clearly() {
    let file = tempfile::NamedTempFile::new().expect("file");
    let path = file.path().join("db");
    let (ok, stderr) = run(&[
        "--addr",
        "127.0.0.1:0",
        "--path",
        path.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("EMBEDDED_DB_PATH"), "{stderr}");
}

/// An unparsable address is refused by the argument parser, naming the flag.
#[test]
fn bad_address_is_refused() {
    let (ok, stderr) = run(&["--addr", "not-an-address"]);
    assert!(!ok);
    assert!(stderr.contains("--addr"), "{stderr}");
}

/// Connection limits and test commands are validated at start-up: a zero limit or write
/// timeout and a value of `EMBEDDED_DB_TEST_COMMANDS` that is not a boolean are refused,
/// naming what to fix.
#[test]
fn bad_limits_and_flags_are_refused() {
    let (ok, stderr) = run(&["--max-connections", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--max-connections"), "{stderr}");
    let (ok, stderr) = run(&["--write-timeout-ms", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--write-timeout-ms"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_embedded-db"))
        .env("EMBEDDED_DB_TEST_COMMANDS", "maybe")
        .output()
        .expect("run embedded-db");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--enable-test-commands"), "{stderr}");
    let help = Command::new(env!("CARGO_BIN_EXE_embedded-db"))
        .arg("--help")
        .output()
        .expect("run embedded-db --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for documented in [
        "EMBEDDED_DB_MAX_CONNECTIONS",
        "EMBEDDED_DB_WRITE_TIMEOUT_MS",
        "EMBEDDED_DB_TEST_COMMANDS",
    ] {
        assert!(
            help.contains(documented),
            "--help names {documented}: {help}"
        );
    }
}
