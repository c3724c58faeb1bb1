//! The JSON routes: `GET /api/users` (every user) and `GET /api/lockDevices` (every device of
//! type `"lock"`), in `_id` order, read through the same cached snapshots as the page. Other
//! methods get `405`; other `/api` paths a JSON `404`.

use app::model::{Device, User};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::{Json, Router};

use crate::error::AppError;
use crate::state::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/users", get(users).fallback(method_not_allowed))
        .route(
            "/api/lockDevices",
            get(lock_devices).fallback(method_not_allowed),
        )
        .route("/api/{*rest}", any(not_found))
}

/// Every user, in `_id` order.
async fn users(State(state): State<AppState>) -> Result<Json<Vec<User>>, AppError> {
    Ok(Json(state.repo.users(None).await?.items.clone()))
}

/// Every device whose type is `"lock"`, in `_id` order.
async fn lock_devices(State(state): State<AppState>) -> Result<Json<Vec<Device>>, AppError> {
    Ok(Json(state.repo.lock_devices(None).await?.items.clone()))
}

/// `405` with `Allow: GET` and a JSON body.
async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET")],
        Json(serde_json::json!({ "message": "Method not allowed" })),
    )
}

/// Unknown `/api` paths answer JSON too, not the HTML 404 page.
async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "Not found" })),
    )
}
