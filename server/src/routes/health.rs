//! Liveness and readiness.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use mongodb::bson::doc;

use crate::state::AppState;

/// How long `/readyz` waits for the database.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `200` while the process serves.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `200` when the database answers and the change stream is open, else `503`.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ping = state.repo.database().run_command(doc! { "ping": 1 });
    let database = matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)));
    let change_stream = state.hub.is_open();
    let status = if database && change_stream {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ready" } else { "unavailable" },
        "database": database,
        "changeStream": change_stream,
    });
    (status, Json(body))
}
