//! What every handler can reach.

use std::sync::Arc;

use app::repo::Repo;
use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use tokio_util::sync::CancellationToken;

use crate::client::TrustedProxies;
use crate::config::Config;
use crate::hub::Hub;
use crate::rate::WriteLimiter;
use crate::shares::Shares;

/// Shared application state (cheap to clone).
#[derive(Debug, Clone, FromRef)]
pub struct AppState {
    /// Leptos site options (output name, site root, …).
    pub leptos_options: LeptosOptions,
    /// Cached list reads.
    pub repo: Repo,
    /// The live feed.
    pub hub: Hub,
    /// The settings.
    pub config: Arc<Config>,
    /// Cancelled when the server shuts down; open event streams end on it.
    pub shutdown: CancellationToken,
    /// Event streams open now, against `SSE_MAX_CLIENTS` and `SSE_MAX_CLIENTS_PER_IP`.
    #[from_ref(skip)]
    pub stream_slots: Shares,
    /// Other HTTP connections open now, against `HTTP_MAX_CONNECTIONS` and
    /// `HTTP_MAX_CONNECTIONS_PER_IP`.
    #[from_ref(skip)]
    pub connection_slots: Shares,
    /// What each client address may still write from the page (`WRITE_RATE_PER_IP`).
    pub writes: WriteLimiter,
    /// The runtime event streams are written on (see [`crate::start_stream_threads`]).
    pub streams: tokio::runtime::Handle,
}

impl FromRef<AppState> for TrustedProxies {
    fn from_ref(state: &AppState) -> Self {
        state.config.trusted_proxies.clone()
    }
}
