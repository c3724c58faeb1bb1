//! The counters behind `GET /metrics` (Prometheus text format): the live feed, its clients and
//! the HTTP layer. Every counter only grows; gauges are read where they live.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the feed, the event-stream route and the connection layer.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Streams answered with only `retry:` because `SSE_MAX_CLIENTS` were open.
    pub streams_refused: AtomicU64,
    /// Streams cut off because they fell a whole buffer behind.
    pub cut_off_lag: AtomicU64,
    /// Streams cut off because their socket accepted nothing for `SSE_WRITE_TIMEOUT_MS`.
    pub cut_off_write_timeout: AtomicU64,
    /// Other HTTP connections closed for the same reason (pages, server functions).
    pub http_write_timeouts: AtomicU64,
    /// Connections accepted and closed at once: `HTTP_MAX_CONNECTIONS` were open, or their
    /// address held its `HTTP_MAX_CONNECTIONS_PER_IP`.
    pub http_connections_refused: AtomicU64,
    /// Connections closed because a request head was not whole within
    /// `HTTP_HEADER_TIMEOUT_MS`.
    pub http_header_timeouts: AtomicU64,
    /// Requests answered `408` because their body was not whole within `HTTP_BODY_TIMEOUT_MS`.
    pub http_body_timeouts: AtomicU64,
    /// Changes published by the feed.
    pub events_published: AtomicU64,
    /// `resync` messages issued: one per client told so when it subscribes or is cut off, one
    /// per feed-wide `resync` (a dropped collection, a fresh change stream).
    pub resyncs: AtomicU64,
    /// Reconnects whose missed changes were served from memory.
    pub catch_ups_memory: AtomicU64,
    /// Change-stream replays from the database (one serves every client waiting on its range).
    pub catch_ups_database: AtomicU64,
    /// Change streams opened on the database: the feed's own, and catch-up replays.
    pub change_streams_opened: AtomicU64,
}

/// Increments `counter` by one.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One list's snapshot reads, for `realtime_snapshot_*_total{list}`.
#[derive(Debug, Clone, Copy)]
pub struct ListReads {
    /// `users` or `devices`.
    pub list: &'static str,
    /// Requests that read the database.
    pub reads: u64,
    /// Requests served from the cached snapshot.
    pub hits: u64,
}

/// The gauges `/metrics` shows, read where they live.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Event streams open now.
    pub streams_open: usize,
    /// Other HTTP connections open now.
    pub http_open: usize,
    /// Bytes held by the ring of recent events.
    pub ring_bytes: usize,
}

impl Metrics {
    /// The Prometheus text exposition of every counter, with `gauges` and the snapshot reads of
    /// each list.
    pub fn render(&self, gauges: &Gauges, lists: &[ListReads]) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let gauge = |value: usize| u64::try_from(value).unwrap_or(u64::MAX);
        family(
            "realtime_sse_streams_open",
            "gauge",
            "Event streams open now.",
            &[("", gauge(gauges.streams_open))],
        );
        family(
            "realtime_http_connections_open",
            "gauge",
            "HTTP connections open now that are not event streams.",
            &[("", gauge(gauges.http_open))],
        );
        family(
            "realtime_ring_bytes",
            "gauge",
            "Bytes held by the ring of recent events kept for reconnecting streams.",
            &[("", gauge(gauges.ring_bytes))],
        );
        family(
            "realtime_sse_streams_refused_total",
            "counter",
            "Event streams turned away at SSE_MAX_CLIENTS or SSE_MAX_CLIENTS_PER_IP.",
            &[("", get(&self.streams_refused))],
        );
        family(
            "realtime_sse_streams_cut_off_total",
            "counter",
            "Event streams closed by the server because the client did not keep up.",
            &[
                ("{reason=\"lag\"}", get(&self.cut_off_lag)),
                (
                    "{reason=\"write_timeout\"}",
                    get(&self.cut_off_write_timeout),
                ),
            ],
        );
        family(
            "realtime_http_write_timeouts_total",
            "counter",
            "Other HTTP connections closed because their socket accepted nothing for SSE_WRITE_TIMEOUT_MS.",
            &[("", get(&self.http_write_timeouts))],
        );
        family(
            "realtime_http_connections_refused_total",
            "counter",
            "Connections closed at accept: HTTP_MAX_CONNECTIONS or the address's share were taken.",
            &[("", get(&self.http_connections_refused))],
        );
        family(
            "realtime_http_timeouts_total",
            "counter",
            "Requests whose head (HTTP_HEADER_TIMEOUT_MS) or body (HTTP_BODY_TIMEOUT_MS) came too late.",
            &[
                ("{part=\"head\"}", get(&self.http_header_timeouts)),
                ("{part=\"body\"}", get(&self.http_body_timeouts)),
            ],
        );
        family(
            "realtime_events_published_total",
            "counter",
            "Changes published by the feed.",
            &[("", get(&self.events_published))],
        );
        family(
            "realtime_resyncs_total",
            "counter",
            "Resync messages issued (per client, or once per feed-wide resync).",
            &[("", get(&self.resyncs))],
        );
        family(
            "realtime_catch_ups_total",
            "counter",
            "Reconnects served from memory, and change-stream replays from the database.",
            &[
                ("{source=\"memory\"}", get(&self.catch_ups_memory)),
                ("{source=\"database\"}", get(&self.catch_ups_database)),
            ],
        );
        family(
            "realtime_change_streams_opened_total",
            "counter",
            "Change streams opened on the database (the feed's and catch-up replays).",
            &[("", get(&self.change_streams_opened))],
        );
        let labelled = |f: fn(&ListReads) -> u64| -> Vec<(String, u64)> {
            lists
                .iter()
                .map(|l| (format!("{{list=\"{}\"}}", l.list), f(l)))
                .collect()
        };
        for (name, help, samples) in [
            (
                "realtime_snapshot_reads_total",
                "List requests that read the database.",
                labelled(|l| l.reads),
            ),
            (
                "realtime_snapshot_hits_total",
                "List requests served from the cached snapshot.",
                labelled(|l| l.hits),
            ),
        ] {
            let samples: Vec<(&str, u64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
            family(name, "counter", help, &samples);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_text_format() {
        let metrics = Metrics::default();
        bump(&metrics.cut_off_write_timeout);
        bump(&metrics.catch_ups_database);
        bump(&metrics.http_header_timeouts);
        let text = metrics.render(
            &Gauges {
                streams_open: 3,
                http_open: 7,
                ring_bytes: 4096,
            },
            &[ListReads {
                list: "users",
                reads: 2,
                hits: 5,
            }],
        );
        for line in [
            "realtime_sse_streams_open 3",
            "realtime_ring_bytes 4096",
            "realtime_http_connections_open 7",
            "realtime_http_timeouts_total{part=\"head\"} 1",
            "realtime_http_timeouts_total{part=\"body\"} 0",
            "realtime_http_connections_refused_total 0",
            "# TYPE realtime_ring_bytes gauge",
            "realtime_sse_streams_cut_off_total{reason=\"write_timeout\"} 1",
            "realtime_sse_streams_cut_off_total{reason=\"lag\"} 0",
            "realtime_catch_ups_total{source=\"database\"} 1",
            "realtime_snapshot_reads_total{list=\"users\"} 2",
            "realtime_snapshot_hits_total{list=\"users\"} 5",
            "# TYPE realtime_sse_streams_open gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
