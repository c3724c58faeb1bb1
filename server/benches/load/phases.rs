//! The phases the coordinator runs against the server, each returning its summary rows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mongodb::bson::{doc, oid::ObjectId, Document};
use tokio_util::sync::CancellationToken;

use crate::client::{fetch_list, run_client, List, Shared};
use crate::process::{
    metric, metrics_text, number, open_streams, rss_kib, server_status, wait_streams, Workers,
    STREAMS_PER_WORKER,
};
use crate::row;

const IDLE: Duration = Duration::from_secs(10);
const GIVE_BACK: Duration = Duration::from_secs(30);
const CYCLE_SETTLE: Duration = Duration::from_secs(12);
const CHANGE_GAP: Duration = Duration::from_millis(20);
const RSS_TARGET_KIB: f64 = 4.0;
const GIVE_BACK_TARGET_KIB: i64 = 20 * 1024;
const P99_TARGET_MS: f64 = 50.0;
/// Give up waiting for events or refetches after this long without progress.
const STALL: Duration = Duration::from_secs(15);

/// Phase 1, memory per idle stream: opens `streams` streams from worker processes and
/// compares the server's RSS before and after they sat idle. Returns the RSS before (the idle
/// baseline) and the summary row.
pub(crate) async fn idle_streams(
    http: &reqwest::Client,
    site: SocketAddr,
    pid: u32,
    streams: usize,
) -> (u64, String) {
    let baseline = rss_kib(pid);
    let started = Instant::now();
    let workers = Workers::open(site, streams, 11);
    println!(
        "{} of {streams} streams open in {:.1} s ({} failed)",
        workers.open,
        started.elapsed().as_secs_f64(),
        workers.failed
    );
    let gauge = open_streams(http, site).await;
    tokio::time::sleep(IDLE).await;
    let with_streams = rss_kib(pid);
    let per_stream = (with_streams as f64 - baseline as f64) / workers.open.max(1) as f64;
    println!(
        "server RSS: {baseline} KiB before, {with_streams} KiB with {} idle streams \
         (gauge {gauge}) after {} s → {per_stream:.2} KiB per stream",
        workers.open,
        IDLE.as_secs()
    );
    let dropped = workers.close();
    let row = row(
        &format!("RSS per idle stream, {streams}"),
        format!("{per_stream:.2} KiB"),
        "≤ 4 KiB",
        per_stream <= RSS_TARGET_KIB && dropped == 0,
    );
    (baseline, row)
}

/// Phase 2, memory given back: once every stream has left, the server's RSS against the idle
/// `baseline`; then `cycles` cycles of `cycle_streams` streams coming and going, the RSS after
/// the last against the first. Returns the summary rows.
pub(crate) async fn memory_given_back(
    http: &reqwest::Client,
    site: SocketAddr,
    pid: u32,
    baseline: u64,
    cycles: usize,
    cycle_streams: usize,
) -> Vec<String> {
    wait_streams(http, site, 0).await;
    tokio::time::sleep(GIVE_BACK).await;
    let after = rss_kib(pid);
    let kept = i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(baseline).unwrap_or(0);
    println!(
        "{} s after every stream left: {after} KiB ({kept:+} KiB against the idle baseline)",
        GIVE_BACK.as_secs()
    );
    let mut rows = vec![row(
        "RSS 30 s after all left",
        format!("{kept:+} KiB"),
        "≤ +20 MB",
        kept <= GIVE_BACK_TARGET_KIB,
    )];
    let mut after_cycle = Vec::with_capacity(cycles);
    for cycle in 0..cycles {
        // Fresh source addresses every cycle: closed connections linger in TIME_WAIT.
        let source = 40 + cycle * cycle_streams.div_ceil(STREAMS_PER_WORKER);
        let workers = Workers::open(site, cycle_streams, source);
        let opened = workers.open;
        workers.close();
        wait_streams(http, site, 0).await;
        // The allocator returns freed memory on a ~10 s decay: measure each cycle settled.
        tokio::time::sleep(CYCLE_SETTLE).await;
        let rss = rss_kib(pid);
        println!(
            "cycle {}: {opened} streams came and went; RSS {rss} KiB",
            cycle + 1
        );
        after_cycle.push(rss);
    }
    if let (Some(first), Some(last)) = (after_cycle.first(), after_cycle.last()) {
        let drift = (*last as f64 - *first as f64) / *first as f64 * 100.0;
        // Ending lower than the first cycle is memory given back, not a miss.
        rows.push(row(
            &format!("RSS after {cycles} cycles vs 1"),
            format!("{drift:+.1}%"),
            "≤ +5%",
            drift <= 5.0,
        ));
    }
    rows
}

/// Phase 3, events and refetches: `clients` streams, `changes` inserts, each client refetching
/// the list an event names (when `refetch`). Returns the summary rows.
pub(crate) async fn events_and_refetches(
    http: &reqwest::Client,
    site: SocketAddr,
    db: &mongodb::Client,
    clients: usize,
    changes: usize,
    refetch: bool,
) -> Vec<String> {
    let shared = Arc::new(Shared {
        http: http.clone(),
        site,
        refetch,
        connected: AtomicUsize::new(0),
        ended_early: AtomicUsize::new(0),
        deliveries: AtomicU64::new(0),
        refetches_ok: AtomicU64::new(0),
        refetches_failed: AtomicU64::new(0),
        refetches_pending: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(run_client(Arc::clone(&shared), stop.clone())))
        .collect();
    let opened = Instant::now();
    while shared.connected.load(Ordering::Relaxed) + shared.ended_early.load(Ordering::Relaxed)
        < clients
        && opened.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = shared.connected.load(Ordering::Relaxed);
    // A browser that loaded the page holds a kept-alive connection: warm the pool so the first
    // event does not also measure a thousand TCP handshakes.
    if refetch {
        let warm: Vec<_> = (0..connected)
            .map(|_| {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move { fetch_list(&shared, List::Users, None).await })
            })
            .collect();
        for task in warm {
            let _ = task.await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = server_status(db).await;
    let app_before = metrics_text(http, site).await;
    let realtime = db.database("realtime");
    let users = realtime.collection::<Document>("users");
    let devices = realtime.collection::<Document>("devices");
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(changes);
    let mut pace = tokio::time::interval(CHANGE_GAP);
    for i in 0..changes {
        pace.tick().await;
        let id = ObjectId::new();
        let (collection, doc) = if i % 10 == 9 {
            let doc = doc! { "_id": id, "name": format!("Load lock {i}"), "type": "lock", "locked": true };
            (&devices, doc)
        } else {
            let doc = doc! {
                "_id": id, "fname": format!("Load{i}"), "lname": "Bench", "username": format!("load{i}"),
            };
            (&users, doc)
        };
        let at = Instant::now();
        collection
            .insert_one(doc)
            .await
            .expect("insert_one succeeds");
        sent.insert(id.to_hex(), at);
    }
    let expected = (connected * changes) as u64;
    let drained = drain(&shared, expected).await;
    println!("all events and refetches settled {drained:.2} s after the last insert");
    let after = server_status(db).await;
    let app_after = metrics_text(http, site).await;
    let delta = |path: &[&str]| number(&after, path) - number(&before, path);
    let (finds, getmores, commands) = (
        delta(&["opcounters", "query"]),
        delta(&["opcounters", "getmore"]),
        delta(&["opcounters", "command"]),
    );
    let app_delta = |sample: &str| metric(&app_after, sample) - metric(&app_before, sample);

    stop.cancel();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut refetch_us = latency.clone();
    let (mut delivered, mut duplicates, mut strays) = (0u64, 0u64, 0u64);
    for task in tasks {
        let (seen, refetches) = task.await.expect("client task does not panic");
        for (id, instants) in seen {
            let Some(at) = sent.get(&id) else {
                strays += instants.len() as u64;
                continue;
            };
            delivered += 1;
            duplicates += instants.len() as u64 - 1;
            let us = instants[0].saturating_duration_since(*at).as_micros();
            latency.saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
        }
        for us in refetches {
            refetch_us.saturating_record(us);
        }
    }
    let missing = expected.saturating_sub(delivered);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{connected} clients; delivery latency over {delivered} deliveries: p50 {:.2} ms, \
         p99 {:.2} ms, max {:.2} ms",
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        latency.max() as f64 / 1000.0
    );
    println!(
        "missing deliveries: {missing}, duplicates: {duplicates}, other events: {strays}, \
         streams ended early: {}",
        shared.ended_early.load(Ordering::Relaxed)
    );
    let served = shared.refetches_ok.load(Ordering::Relaxed);
    println!(
        "refetches: {served} served ({} failed); latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        shared.refetches_failed.load(Ordering::Relaxed),
        ms(&refetch_us, 0.5),
        ms(&refetch_us, 0.99),
        refetch_us.max() as f64 / 1000.0
    );
    println!(
        "database commands during the phase: {finds} find, {getmores} getMore, {commands} other \
         (ping, ...) for {changes} changes; the app's snapshots: users {} reads / {} hits, \
         devices {} reads / {} hits",
        app_delta("realtime_snapshot_reads_total{list=\"users\"}"),
        app_delta("realtime_snapshot_hits_total{list=\"users\"}"),
        app_delta("realtime_snapshot_reads_total{list=\"devices\"}"),
        app_delta("realtime_snapshot_hits_total{list=\"devices\"}"),
    );
    let per_change = (finds + getmores + commands) as f64 / changes.max(1) as f64;
    let p99 = ms(&latency, 0.99);
    vec![
        row(
            &format!("delivery p99, {connected} clients"),
            format!("{p99:.2} ms"),
            "< 50 ms",
            delivered > 0 && p99 < P99_TARGET_MS,
        ),
        row("missing deliveries", missing, "0", missing == 0),
        row("duplicate deliveries", duplicates, "0", duplicates == 0),
        row(
            "DB commands per change",
            format!("{per_change:.2}"),
            "—",
            true,
        ),
        row(
            "refetch p99",
            format!("{:.2} ms", ms(&refetch_us, 0.99)),
            "—",
            true,
        ),
    ]
}

/// Waits until `expected` events have arrived and no refetch is pending, or nothing moves for
/// `STALL`; returns the seconds it took.
async fn drain(shared: &Shared, expected: u64) -> f64 {
    let started = Instant::now();
    let progress = || {
        (
            shared.deliveries.load(Ordering::Relaxed),
            shared.refetches_ok.load(Ordering::Relaxed)
                + shared.refetches_failed.load(Ordering::Relaxed),
        )
    };
    let (mut last, mut moved) = (progress(), Instant::now());
    loop {
        let now = progress();
        if now.0 >= expected && shared.refetches_pending.load(Ordering::Relaxed) == 0 {
            break;
        }
        if now != last {
            (last, moved) = (now, Instant::now());
        } else if moved.elapsed() > STALL {
            println!(
                "gave up waiting: {} events, {} refetches answered",
                now.0, now.1
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed().as_secs_f64()
}
