//! The non-page routes, grouped by resource.

mod api;
mod health;
mod metrics;
mod sse;

use axum::Router;

use crate::state::AppState;

/// `/api/users`, `/api/lockDevices`, `/api/sse`, `/healthz`, `/readyz`, `/metrics`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .merge(api::routes())
        .merge(sse::routes())
        .merge(health::routes())
        .merge(metrics::routes())
}
