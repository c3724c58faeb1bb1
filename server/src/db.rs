//! The database connection: a real deployment from `MONGO_URI`, or the
//! embedded database started in-process (the app's pool then connects through the database's
//! private socket, which outside clients cannot reach); sample data on first start.

use std::time::Duration;

use app::edit::ssr::is_duplicate_key;
use app::repo::{DEVICES, USERS};
use mongodb::bson::{doc, oid::ObjectId, Document};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Database, IndexModel};

use crate::config::{Config, StartupError};

/// How long start-up waits for a deployment to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections the app's own driver pool opens to the in-process database at once
/// (the driver's `maxPoolSize`; with `MONGO_URI` the connection string's or the driver's
/// default applies). The hub's change stream holds one for its life, each replay of missed
/// events from the database holds one while it runs (at most four at once), and the rest
/// serve page loads, list refetches and writes, one command each; past it a request waits
/// for a connection to come free.
pub const APP_POOL_SIZE: u32 = 32;

/// Connections the driver keeps beside its pool: a monitor per server (the embedded database
/// is one), and a second one per server measuring round trips when the server announces
/// `topologyVersion` (the streaming protocol). embedded-db does not, so the driver polls on
/// one; both are counted so that the limit holds if it ever does.
pub const MONITOR_CONNECTIONS: usize = 2;

/// Connections the driver has closed but the database has not yet seen close: the driver
/// frees the pool's slot at once, the database when it reads the end of the stream, so a
/// connection opened right after a close (after a network error, say) may arrive first.
pub const CLOSING_CONNECTIONS: usize = 2;

/// The private socket's connection limit (`embedded_db::Config::private_connections`): the
/// app's pool, its monitors and the connections still closing, so the app is never refused.
/// Outside clients use the TCP port, under `EMBEDDED_DB_MAX_CONNECTIONS`, and cannot take
/// these slots.
pub const PRIVATE_CONNECTIONS: usize =
    APP_POOL_SIZE as usize + MONITOR_CONNECTIONS + CLOSING_CONNECTIONS;

/// Open files the private socket costs the process at most when the database runs in-process:
/// both ends of every private connection (the driver's and the database's) plus the listening
/// socket. (The TCP port costs its listening socket plus one file per outside connection.)
pub const PRIVATE_FILES: usize = 2 * PRIVATE_CONNECTIONS + 1;

/// A connected database, and the embedded server when one was started.
#[derive(Debug)]
pub struct Connection {
    /// The client every request uses.
    pub client: Client,
    /// The `MONGO_DB` database.
    pub db: Database,
    /// The in-process embedded database, when `MONGO_URI` is unset.
    pub embedded: Option<embedded_db::Server>,
}

impl Connection {
    /// Closes the client and stops the embedded database, if any.
    pub async fn close(self) {
        self.client.shutdown().await;
        if let Some(server) = self.embedded {
            server.shutdown().await;
        }
    }
}

/// Connects as configured and checks the database answers; errors name the variable to fix.
/// An embedded database serves at most `embedded_max_connections` outside clients.
pub async fn connect(
    config: &Config,
    embedded_max_connections: usize,
) -> Result<Connection, StartupError> {
    let (uri, variable, embedded) = match &config.mongo_uri {
        Some(uri) => (uri.clone(), "MONGO_URI", None),
        None => {
            let settings = embedded_db::Config {
                max_connections: embedded_max_connections,
                private_connections: PRIVATE_CONNECTIONS,
                write_timeout: config.embedded_write_timeout,
                enable_test_commands: config.embedded_test_commands,
                ..embedded_db::Config::new(config.embedded_addr, &config.embedded_path)
            };
            let server = embedded_db::Server::start(settings)
                .await
                .map_err(|e| match e {
                    embedded_db::StartError::Bind { .. } => {
                        StartupError::new("EMBEDDED_DB_ADDR", e.to_string())
                    }
                    embedded_db::StartError::Storage { .. } => {
                        StartupError::new("EMBEDDED_DB_PATH", e.to_string())
                    }
                    // The private socket's directory goes under the temporary directory.
                    embedded_db::StartError::Private { .. } => {
                        StartupError::new("TMPDIR", e.to_string())
                    }
                    // Not a bad value: the system refused threads. `MONGO_URI` is the setting
                    // that avoids the embedded database altogether.
                    embedded_db::StartError::Runtime { .. } => StartupError::new(
                        "MONGO_URI",
                        format!("unset, and the embedded database cannot start: {e}"),
                    ),
                })?;
            // The pool goes through the private socket, so outside clients filling the TCP
            // port cannot lock the app out; off Unix there is none and it shares the port.
            let uri = server.private_uri().unwrap_or_else(|| server.uri());
            (uri, "EMBEDDED_DB_ADDR", Some(server))
        }
    };
    let mut options = ClientOptions::parse(&uri)
        .await
        .map_err(|e| StartupError::new(variable, format!("invalid connection string: {e}")))?;
    if embedded.is_some() {
        options.max_pool_size = Some(APP_POOL_SIZE);
    }
    options
        .server_selection_timeout
        .get_or_insert(CONNECT_TIMEOUT);
    options.app_name = Some("realtime".to_owned());
    let client = Client::with_options(options)
        .map_err(|e| StartupError::new(variable, format!("invalid client options: {e}")))?;
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .map_err(|e| StartupError::new(variable, format!("cannot reach the database: {e}")))?;
    let db = client.database(&config.mongo_db);
    Ok(Connection {
        client,
        db,
        embedded,
    })
}

/// The unique index on `users.username`.
pub const USERNAME_INDEX: &str = "username_1";

/// Creates the unique [`USERNAME_INDEX`] on `users` (nothing to do when it exists). Users that
/// already share a username do not stop start-up: one warning names one of them, and the index
/// is created on a later start once they are fixed. Returns whether the index is in place.
pub async fn ensure_username_index(db: &Database) -> Result<bool, mongodb::error::Error> {
    let index = IndexModel::builder()
        .keys(doc! { "username": 1 })
        .options(
            IndexOptions::builder()
                .name(USERNAME_INDEX.to_owned())
                .unique(true)
                .build(),
        )
        .build();
    match db.collection::<Document>(USERS).create_index(index).await {
        Ok(_) => Ok(true),
        Err(e) if is_duplicate_key(&e) => {
            tracing::warn!(
                cause = %e,
                "users share a username; the unique index {USERNAME_INDEX} waits until they are fixed"
            );
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Inserts sample users and devices into collections that are empty (so a restart, or data
/// written by someone else, is left alone). Returns how many documents were inserted.
pub async fn seed(db: &Database) -> Result<u64, mongodb::error::Error> {
    let mut inserted = 0;
    let samples = [(USERS, sample_users()), (DEVICES, sample_devices())];
    for (name, docs) in samples {
        let coll = db.collection::<Document>(name);
        if coll.estimated_document_count().await? == 0 {
            inserted += coll.insert_many(docs).await?.inserted_ids.len() as u64;
        }
    }
    Ok(inserted)
}

fn sample_users() -> Vec<Document> {
    [
        ("Ada", "Lovelace", "ada"),
        ("Alan", "Turing", "alan"),
        ("Grace", "Hopper", "grace"),
        ("Edsger", "Dijkstra", "edsger"),
        ("Barbara", "Liskov", "barbara"),
    ]
    .into_iter()
    .map(|(fname, lname, username)| {
        doc! { "_id": ObjectId::new(), "fname": fname, "lname": lname, "username": username }
    })
    .collect()
}

fn sample_devices() -> Vec<Document> {
    [
        ("Front door", "lock", true),
        ("Garage", "lock", false),
        ("Back door", "lock", true),
        ("Hallway camera", "camera", false),
        ("Garden camera", "camera", false),
    ]
    .into_iter()
    .map(|(name, kind, locked)| {
        doc! { "_id": ObjectId::new(), "name": name, "type": kind, "locked": locked }
    })
    .collect()
}
