//! What stops the server: the process signals `main` waits for before it shuts down, and the
//! second one that ends a shutdown that takes too long.

/// A signal that asks the server to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl StopSignal {
    /// The exit code of a process ended at once by this signal, as a shell reports one killed
    /// by it: 128 + the signal's number (130, 143). Never 0.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

/// Listens for SIGINT and SIGTERM from the moment it is made, so that no signal between two
/// [`next`](Self::next) calls is lost (and none falls to the default handler, which would end
/// the process without a clean shutdown). A signal that cannot be listened for is never
/// reported, so the other one still stops the server.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts listening (inside a Tokio runtime).
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the next SIGINT or SIGTERM received since listening began.
    pub async fn next(&mut self) -> StopSignal {
        #[cfg(unix)]
        {
            let interrupt = received(self.interrupt.as_mut());
            let terminate = received(self.terminate.as_mut());
            tokio::select! {
                () = interrupt => StopSignal::Interrupt,
                () = terminate => StopSignal::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            StopSignal::Interrupt
        }
    }
}

/// Resolves when `signal` is received; never when there is no listener or it closed.
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    if let Some(signal) = signal {
        if signal.recv().await.is_some() {
            return;
        }
    }
    std::future::pending::<()>().await;
}
