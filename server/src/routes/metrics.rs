//! `GET /metrics`: the feed's counters in Prometheus text format.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::{Gauges, ListReads};
use crate::state::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let users = state.repo.users_reads();
    let devices = state.repo.devices_reads();
    let lists = [
        ListReads {
            list: "users",
            reads: users.reads,
            hits: users.hits,
        },
        ListReads {
            list: "devices",
            reads: devices.reads,
            hits: devices.hits,
        },
    ];
    let gauges = Gauges {
        streams_open: state.stream_slots.open(),
        http_open: state.connection_slots.open(),
        ring_bytes: state.hub.ring_bytes(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.hub.metrics().render(&gauges, &lists),
    )
}
