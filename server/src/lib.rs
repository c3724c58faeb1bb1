//! The Axum server of the live MongoDB view: server-side rendering through
//! `leptos_axum`, the JSON routes, and the change-stream event feed.
//!
//! # Layout
//!
//! - `accept`: the accept loop: fair shares of connections, hyper's HTTP/1 with a head deadline.
//! - `budget`: the open-file limit divided between streams, connections and the database.
//! - `client`: the client address of a request (`TRUSTED_PROXIES`, `X-Forwarded-For`).
//! - `config`: the typed settings from the environment.
//! - `db`: connecting to `MONGO_URI` or starting `embedded-db`; sample data.
//! - `hub`: the one change stream and its fan-out to clients.
//! - `logging`: the log's format: one line per event, client-supplied values escaped and cut.
//! - `net`: a connection's write deadline, handing a connection over to its event stream.
//! - `rate`: the page's writes, limited per client address.
//! - `server_fns`: the server functions' edge: cross-site refusal, body limit, write rate,
//!   refusal statuses.
//! - `metrics`: the counters behind `/metrics`.
//! - `routes`: `/api/*` JSON, `/api/sse`, `/healthz`, `/readyz`, `/metrics`.
//! - `shares`: at most so many connections of a kind, and so many per client address.
//! - `shutdown`: the signals that stop the server.
//! - `state`, `error`: shared state, the error body.

pub mod accept;
pub mod budget;
pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod rate;
mod routes;
pub mod server_fns;
pub mod shares;
pub mod shutdown;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use app::repo::Repo;
use app::shell;
use axum::Router;
use leptos::prelude::*;
use leptos_axum::{AxumRouteListing, LeptosRoutes};
use leptos_router::{Method, SsrMode};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

pub use config::{Config, StartupError};
pub use state::AppState;

/// How long start-up waits for the change stream before serving anyway (it keeps retrying).
const STREAM_WAIT: Duration = Duration::from_secs(10);

/// The whole application: pages, server functions, JSON routes, the event stream.
pub fn router(state: AppState) -> Router {
    // The one page, rendered whole before it is sent (`SsrMode::Async`): the lists are in place
    // in the HTML, so the page is complete without scripts. Other paths fall through to the
    // file handler: a static file, else the app's "Page not found." with 404.
    let routes = vec![AxumRouteListing::new(
        app::HOME.to_owned(),
        SsrMode::Async,
        [Method::Get],
        Vec::new(),
    )];
    let repo = state.repo.clone();
    let options = state.leptos_options.clone();
    Router::new()
        .leptos_routes_with_context(
            &state,
            routes,
            move || provide_context(repo.clone()),
            move || shell(options.clone()),
        )
        .merge(routes::routes())
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            server_fns::guard,
        ))
        .layer(axum::middleware::from_fn(refuse_pathless_targets))
        // The default predicate never compresses text/event-stream, so the feed stays
        // uncompressed while pages are compressed.
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Answers `400` to a request whose target has no path (`GET host:port`, the form only
/// `CONNECT` uses): the page handler needs one (found by the HTTP fuzzer: `leptos_axum`'s
/// fallback panicked on it).
async fn refuse_pathless_targets(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if request.uri().path_and_query().is_none() {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "The request target has no path.",
        )
            .into_response();
    }
    next.run(request).await
}

/// Starts the runtime event streams are written on, on threads of its own: a burst of page
/// loads and refetches on the main runtime then shares the cores with the streams instead of
/// queueing their writes behind it. It stops (closing every stream) when `shutdown` is
/// cancelled.
pub fn start_stream_threads(
    shutdown: CancellationToken,
) -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
        .thread_name("sse")
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("sse-runtime".to_owned())
        .spawn(move || runtime.block_on(shutdown.cancelled()))?;
    Ok(handle)
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The bound HTTP address.
    pub addr: SocketAddr,
    /// The state handlers see (for tests and benchmarks: the hub, the repo's read counter).
    pub state: AppState,
    /// Address of the embedded database, when one was started.
    pub embedded_addr: Option<SocketAddr>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, ends open event streams, lets requests in flight finish for at most
    /// `SHUTDOWN_GRACE_MS`, then closes the connections left and the database (and the
    /// embedded server, whose files are closed cleanly). Returns once all that is done.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Connects to the database, seeds it, opens the change stream and starts serving on
/// `config.site_addr`. Errors are one line naming the variable to fix.
pub async fn start(
    config: Config,
    mut leptos_options: LeptosOptions,
) -> Result<Running, StartupError> {
    // Bind first: a taken address must stop start-up before anything else is started.
    let listener = accept::bind(config.site_addr).map_err(|e| {
        StartupError::new(
            "LEPTOS_SITE_ADDR",
            format!("cannot listen on {}: {e}", config.site_addr),
        )
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartupError::new("LEPTOS_SITE_ADDR", e.to_string()))?;
    let budget = budget::Budget::fit(&config, budget::open_file_limit())?;
    tracing::info!(
        open_files = ?budget.open_files,
        streams = budget.streams,
        streams_per_client = budget.streams_per_client,
        http = budget.http,
        http_per_client = budget.http_per_client,
        embedded_db = budget.embedded,
        "file budget"
    );
    let connection = db::connect(&config, budget.embedded).await?;
    let embedded_addr = connection
        .embedded
        .as_ref()
        .map(embedded_db::Server::local_addr);
    let database_variable = if config.mongo_uri.is_some() {
        "MONGO_URI"
    } else {
        "EMBEDDED_DB_PATH"
    };
    db::ensure_username_index(&connection.db)
        .await
        .map_err(|e| {
            StartupError::new(
                database_variable,
                format!("cannot create the {} index: {e}", db::USERNAME_INDEX),
            )
        })?;
    let inserted = db::seed(&connection.db).await.map_err(|e| {
        StartupError::new(database_variable, format!("cannot seed the database: {e}"))
    })?;
    if inserted > 0 {
        tracing::info!(inserted, "seeded sample users and devices");
    }
    leptos_options.site_addr = addr;
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(metrics::Metrics::default());
    let hub = hub::Hub::start(
        connection.db.clone(),
        Arc::clone(&metrics),
        config.heartbeat,
        shutdown.clone(),
    );
    if !hub.wait_open(STREAM_WAIT).await {
        tracing::warn!("change stream not open yet; serving anyway, /readyz says 503 until it is");
    }
    let streams = start_stream_threads(shutdown.clone()).map_err(|e| {
        StartupError::new(
            "SSE_MAX_CLIENTS",
            format!("cannot start the event-stream threads: {e}"),
        )
    })?;
    let writes = rate::WriteLimiter::new(config.write_rate);
    writes.sweep_until(shutdown.clone());
    let state = AppState {
        leptos_options,
        repo: Repo::new(connection.db.clone(), hub.position()),
        hub,
        config: Arc::new(config),
        shutdown: shutdown.clone(),
        stream_slots: shares::Shares::new(budget.streams, budget.streams_per_client),
        connection_slots: shares::Shares::new(budget.http, budget.http_per_client),
        writes,
        streams,
    };
    let closing = net::Closing::default();
    let site = accept::Site {
        listener,
        router: router(state.clone()),
        shares: state.connection_slots.clone(),
        trusted: state.config.trusted_proxies.clone(),
        header_timeout: state.config.header_timeout,
        write_timeout: state.config.write_timeout,
        metrics,
        closing: closing.clone(),
    };
    let grace = state.config.shutdown_grace;
    let task = tokio::spawn(async move {
        let served = accept::serve(site, shutdown.clone());
        // The loop waits for every connection to finish its request, however long a client
        // takes (a body trickled in): past the grace period the ones left are closed.
        let grace_over = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = served => {}
            () = grace_over => {
                tracing::warn!(
                    grace_ms = grace.as_millis(),
                    "requests still in flight after the grace period are cut off"
                );
                closing.close();
            }
        }
        connection.close().await;
    });
    tracing::info!(%addr, "listening");
    Ok(Running {
        addr,
        state,
        embedded_addr,
        task,
    })
}
