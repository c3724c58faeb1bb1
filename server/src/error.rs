//! The one error type of the JSON routes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A failure while serving an `/api` route. The client sees only the contract's generic body;
/// the cause goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] mongodb::error::Error),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        tracing::error!(cause = %self, "request failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": "Internal server error" })),
        )
            .into_response()
    }
}
