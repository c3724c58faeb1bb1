//! Run with
//!
//! ```not_rust
//! make run                 # installs the tools, builds, serves http://127.0.0.1:3000
//! cargo leptos watch       # development, once `make run` has installed the tools
//! ```
//!
//! Configuration comes from the environment (README, "Configuration").

use std::process::ExitCode;

use leptos::prelude::get_configuration;
use tracing_subscriber::util::SubscriberInitExt;

/// jemalloc, with its background threads purging freed memory on a timer, gives memory back to
/// the system once clients leave, even while the process is idle (glibc's malloc and mimalloc
/// kept what thousands of connections had used; `docs/benchmarks.md`, "Load on the live feed",
/// has the figures).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("realtime: jemalloc background threads unavailable ({e}); memory is still freed");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "server=info,embedded_db=info,tower_http=warn".into());
    if let Err(e) = server::logging::subscriber(filter, std::io::stdout).try_init() {
        eprintln!("realtime: cannot start logging ({e})");
    }
    // Listening from the start: a signal during start-up stops the server once it is up.
    let mut signals = server::shutdown::Signals::listen();
    let config = match server::Config::from_env() {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let options = match get_configuration(None) {
        Ok(conf) => conf.leptos_options,
        Err(e) => {
            eprintln!("realtime: Leptos configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match server::start(config, options).await {
        Ok(running) => running,
        Err(e) => return fail(&e),
    };
    let signal = signals.next().await;
    tracing::info!(?signal, "shutting down");
    // A second signal means: do not wait for the shutdown.
    tokio::spawn(async move {
        let signal = signals.next().await;
        eprintln!("realtime: {signal:?} during shutdown; exiting at once");
        std::process::exit(signal.exit_code());
    });
    running.shutdown().await;
    tracing::info!("shut down");
    ExitCode::SUCCESS
}

fn fail(err: &server::StartupError) -> ExitCode {
    eprintln!("realtime: {err}");
    ExitCode::FAILURE
}
