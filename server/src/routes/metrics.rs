//! `GET /metrics`: the feed's counters in Prometheus text format.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::ListReads;
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
    let open = state.sse_clients.load(Ordering::Relaxed);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state
            .hub
            .metrics()
            .render(open, state.hub.ring_bytes(), &lists),
    )
}
