//! Server functions: the lists as the page fetches them (SSR and refetches), each answered
//! from its snapshot's JSON, serialized once per snapshot.

use leptos::prelude::*;

use crate::model::{Device, Listed, User};

/// Every user, with the stream position the list was read at.
#[server(prefix = "/_server", endpoint = "users")]
#[cfg_attr(feature = "ssr", tracing::instrument(skip_all))]
pub async fn get_users() -> Result<Listed<User>, ServerFnError> {
    use self::ssr::*;
    repo()?.users().await.map_err(|e| internal(&e))
}

/// Every lock device, with the stream position the list was read at.
#[server(prefix = "/_server", endpoint = "lock_devices")]
#[cfg_attr(feature = "ssr", tracing::instrument(skip_all))]
pub async fn get_lock_devices() -> Result<Listed<Device>, ServerFnError> {
    use self::ssr::*;
    repo()?.lock_devices().await.map_err(|e| internal(&e))
}

/// Server-side helpers of the server functions.
#[cfg(feature = "ssr")]
pub mod ssr {
    use leptos::prelude::*;

    pub use crate::repo::Repo;

    /// The cached reads, provided as context by the server.
    pub fn repo() -> Result<Repo, ServerFnError> {
        use_context::<Repo>().ok_or_else(|| ServerFnError::new("Repo missing from context"))
    }

    /// Logs a database failure and returns the generic error the client may see.
    pub fn internal(err: &mongodb::error::Error) -> ServerFnError {
        tracing::error!(cause = %err, "database read failed");
        ServerFnError::new("Internal server error")
    }
}
