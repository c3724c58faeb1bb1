//! Load on the live feed, measured from outside against the real `server` binary, the way
//! browsers drive it; the results are in `docs/benchmarks.md`.
//!
//! The benchmark starts `target/<profile>/server` as a child process on free ports with the
//! embedded database in a temporary directory, then:
//!
//! 1. **Memory per idle stream.** Reads the server's RSS (`VmRSS`), opens `LOAD_STREAMS` event
//!    streams from worker processes (this same binary, each on its own 127.0.0.x source
//!    address), half of them on a kept-alive connection that first loaded the page (`GET /`,
//!    read to its end), as a browser does; once every stream has its `retry:` line and they
//!    have been idle a while, RSS again: per stream = (RSS with N streams − RSS before) / N.
//!    Kernel socket buffers are not in RSS; the kernel's `tcp_rmem`/`tcp_wmem` are printed
//!    beside the figure.
//! 2. **Memory given back.** Every stream closes; a while later, RSS against the idle
//!    baseline. Then `LOAD_CYCLES` cycles of `LOAD_CYCLE_STREAMS` streams connecting and
//!    leaving, RSS read after each once the allocator's purge has settled: RSS after the last
//!    cycle against the first.
//! 3. **Events and refetches, as the page does them.** `LOAD_CLIENTS` streams read off raw TCP,
//!    and `LOAD_CHANGES` inserts a few milliseconds apart through the official driver, every
//!    tenth one a device, the rest users, noting the instant just before each `insert_one`.
//!    Each client refetches, like the page, only the list an event names, through the server
//!    function the page calls (`POST /_server/users` or `/_server/lock_devices`, naming the
//!    event it refetches for) on a kept-alive pool, at most one refetch of a list in flight and
//!    one queued. Printed: commit → client latency p50/p99/max, missing and duplicate
//!    deliveries, refetches served and their latency, and every database command the phase
//!    caused (`find`, `getMore`, other commands such as `ping`, from
//!    `serverStatus.opcounters`), with the app's snapshot reads and hits.
//! 4. A summary table: figure, value, target, met/missed (the targets are constants in
//!    `phases.rs`).
//!
//! Run: `cargo bench -p server --bench load` (or `make bench-app`). `LOAD_SUITE=edge` (or
//! `make bench-edge`) runs the edge suite instead: abuse of connections, streams and shutdown
//! against the default settings (`edge.rs`).
//! Env: `LOAD_STREAMS`, `LOAD_CYCLES`, `LOAD_CYCLE_STREAMS`, `LOAD_CLIENTS`, `LOAD_CHANGES`
//! (smaller values for a quick run; the defaults are in `coordinate`), `LOAD_REFETCH=0` (no
//! refetches, to tell their cost apart). Server and benchmark share the machine's cores, so
//! latency includes the clients' work.
//!
//! Files: `phases.rs` (what is measured), `client.rs` (one browser of phase 3),
//! `process.rs` (the server under test and the worker processes), `edge.rs` (the edge suite).

mod client;
mod edge;
mod phases;
mod process;

use std::time::Duration;

use process::{start_server, wait_ready, worker};

fn main() {
    if let Ok(source) = std::env::var("LOAD_WORKER_SOURCE") {
        return worker(&source);
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if std::env::var("LOAD_SUITE").as_deref() == Ok("edge") {
        println!("edge: the server with its default settings, against cheap abuse");
        print_summary(runtime.block_on(edge::run()));
    } else {
        runtime.block_on(coordinate());
    }
}

/// Starts the server, runs the phases in order and prints the summary table.
async fn coordinate() {
    let streams = env_number("LOAD_STREAMS", 15_000);
    let cycles = env_number("LOAD_CYCLES", 10);
    let cycle_streams = env_number("LOAD_CYCLE_STREAMS", 8000);
    let clients = env_number("LOAD_CLIENTS", 1000);
    let changes = env_number("LOAD_CHANGES", 100);
    let refetch = env_number("LOAD_REFETCH", 1) != 0;
    let max_clients = streams.max(cycle_streams).max(clients) + 100;
    println!(
        "load: {streams} idle streams; {cycles} cycles of {cycle_streams}; {clients} clients × \
         {changes} changes, per-list refetch: {refetch}"
    );
    let kernel = ["tcp_rmem", "tcp_wmem"].map(|name| {
        let value =
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).unwrap_or_default();
        format!(
            "{name} = {}",
            value.split_whitespace().collect::<Vec<_>>().join(" ")
        )
    });
    println!("kernel socket buffers (not in RSS): {}", kernel.join(", "));

    let (server, site, db_addr) = start_server(&[
        ("SSE_MAX_CLIENTS", max_clients.to_string()),
        // The load comes from a few loopback addresses: no per-address shares (the rest of the
        // file budget goes to the other HTTP connections).
        ("SSE_MAX_CLIENTS_PER_IP", max_clients.to_string()),
        ("HTTP_MAX_CONNECTIONS_PER_IP", "1000000".to_owned()),
    ]);
    let pid = server.child.id();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .expect("an HTTP client can be built");
    wait_ready(&http, site, &server).await;
    let db = mongodb::Client::with_uri_str(format!("mongodb://{db_addr}/?directConnection=true"))
        .await
        .expect("the driver accepts the database URI");
    // One page load first, so the baseline includes what serving pages allocates once.
    let _ = http.get(format!("http://{site}/")).send().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut summary = Vec::new();

    let (baseline, row) = phases::idle_streams(&http, site, pid, streams).await;
    summary.push(row);
    let rows = phases::memory_given_back(&http, site, pid, baseline, cycles, cycle_streams).await;
    summary.extend(rows);
    let rows = phases::events_and_refetches(&http, site, &db, clients, changes, refetch).await;
    summary.extend(rows);
    db.shutdown().await;
    drop(server);
    print_summary(summary);
}

fn print_summary(rows: Vec<String>) {
    println!(
        "\n{:<34} {:>14}  {:<10} result",
        "figure", "value", "target"
    );
    for line in rows {
        println!("{line}");
    }
}

/// One line of the summary table.
fn row(figure: &str, value: impl std::fmt::Display, target: &str, met: bool) -> String {
    let result = if met { "met" } else { "MISSED" };
    format!(
        "{figure:<34} {:>14}  {target:<10} {result}",
        value.to_string()
    )
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}"))
    })
}
