//! Server functions: the lists as the page fetches them (SSR and refetches), each answered
//! from its snapshot's JSON, serialized once per snapshot.

use leptos::prelude::*;

use crate::model::{Device, Listed, User};

/// Every user, with the stream position the list was read at. `after`: the event id the
/// caller refetches for, if any (a snapshot at or after it is served without a database call).
#[server(prefix = "/_server", endpoint = "users")]
#[cfg_attr(feature = "ssr", tracing::instrument(skip_all))]
pub async fn get_users(after: Option<String>) -> Result<Listed<User>, ServerFnError> {
    use self::ssr::*;
    repo()?
        .users(after.as_deref())
        .await
        .map_err(|e| internal(&e))
}

/// Every lock device, with the stream position the list was read at; `after` as for
/// [`get_users`].
#[server(prefix = "/_server", endpoint = "lock_devices")]
#[cfg_attr(feature = "ssr", tracing::instrument(skip_all))]
pub async fn get_lock_devices(after: Option<String>) -> Result<Listed<Device>, ServerFnError> {
    use self::ssr::*;
    repo()?
        .lock_devices(after.as_deref())
        .await
        .map_err(|e| internal(&e))
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
