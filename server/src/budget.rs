//! The file budget: the process's open-file limit, divided at start-up so that no kind of
//! connection can starve another and `accept` never fails for want of a descriptor.
//!
//! From the limit (its soft value is first raised to the hard one) come, in this order:
//!
//! 1. a reserve of [`RESERVE`] descriptors for files, logs, the runtimes and the listeners;
//! 2. the database: with the embedded database, its private socket for the app's own pool
//!    ([`db::PRIVATE_FILES`]: both ends of each connection are in this process), its TCP
//!    listener and the outside clients it serves (`EMBEDDED_DB_MAX_CONNECTIONS`, default
//!    [`embedded_db::DEFAULT_MAX_CONNECTIONS`], lowered to a tenth of the limit when that is
//!    smaller); with `MONGO_URI`, the app's pool and its monitors ([`EXTERNAL_POOL_FILES`]);
//! 3. what is left, split evenly between event streams (`SSE_MAX_CLIENTS`) and other HTTP
//!    connections (`HTTP_MAX_CONNECTIONS`), each at most [`DEFAULT_MAX_SHARE`]; a value that
//!    is set explicitly is taken as it is and the other gets the rest.
//!
//! A client address may hold an eighth of either share (`SSE_MAX_CLIENTS_PER_IP`,
//! `HTTP_MAX_CONNECTIONS_PER_IP`), at least [`MIN_PER_CLIENT`]: an office behind one NAT
//! gets in (at the default shares on a 20,000-file limit, about 1,100 streams and as many other
//! connections: a browser keeps one stream and a few request connections), while one host
//! can take no more than an eighth of the site.
//!
//! A configuration set explicitly that does not fit stops start-up with one line naming the
//! variables to lower (or the limit to raise).

use crate::config::{Config, StartupError};
use crate::db;

/// Descriptors kept for everything that is not a connection: data files, logs, the runtimes'
/// event fds, the listeners.
pub const RESERVE: u64 = 256;

/// The descriptors the app's database client is counted for with `MONGO_URI`: a pool of
/// [`db::APP_POOL_SIZE`] and its monitors (a connection string's larger `maxPoolSize` should
/// leave room through a lower `SSE_MAX_CLIENTS` or `HTTP_MAX_CONNECTIONS`).
pub const EXTERNAL_POOL_FILES: u64 = db::APP_POOL_SIZE as u64 + db::MONITOR_CONNECTIONS as u64;

/// The embedded database's files besides its outside clients: the private socket (both ends of
/// the app's connections, its listener) and the TCP listener.
const EMBEDDED_FILES: u64 = db::PRIVATE_FILES as u64 + 1;

/// The largest default share of streams or of other HTTP connections.
pub const DEFAULT_MAX_SHARE: usize = 10_000;

/// The smallest default share of one client address.
pub const MIN_PER_CLIENT: usize = 16;

/// The smallest share of streams or HTTP connections a budget leaves: below it the site
/// would refuse a handful of browsers, and start-up stops instead.
const MIN_SHARE: usize = 16;

/// How the open-file limit is spent (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The open-file limit divided; `None` when the system sets none.
    pub open_files: Option<u64>,
    /// `SSE_MAX_CLIENTS`.
    pub streams: usize,
    /// `SSE_MAX_CLIENTS_PER_IP`.
    pub streams_per_client: usize,
    /// `HTTP_MAX_CONNECTIONS`.
    pub http: usize,
    /// `HTTP_MAX_CONNECTIONS_PER_IP`.
    pub http_per_client: usize,
    /// `EMBEDDED_DB_MAX_CONNECTIONS` (outside clients of the embedded database).
    pub embedded: usize,
}

impl Budget {
    /// Divides `open_files` (`None`: no limit) as `config` asks.
    pub fn fit(config: &Config, open_files: Option<u64>) -> Result<Self, StartupError> {
        let embedded_db = config.mongo_uri.is_none();
        let limit = open_files.unwrap_or(u64::MAX);
        let pool = if embedded_db {
            EMBEDDED_FILES
        } else {
            EXTERNAL_POOL_FILES
        };
        let embedded = match config.embedded_max_connections {
            Some(explicit) => explicit,
            None => embedded_db::DEFAULT_MAX_CONNECTIONS.min(as_count(limit / 10)),
        };
        let database = pool + if embedded_db { embedded as u64 } else { 0 };
        let left = as_count(limit.saturating_sub(RESERVE + database));
        let (streams, http) = match (config.max_clients, config.http_max_connections) {
            (Some(streams), Some(http)) => (streams, http),
            (Some(streams), None) => (streams, left.saturating_sub(streams).min(DEFAULT_MAX_SHARE)),
            (None, Some(http)) => (left.saturating_sub(http).min(DEFAULT_MAX_SHARE), http),
            (None, None) => {
                let half = (left / 2).min(DEFAULT_MAX_SHARE);
                (half, half)
            }
        };
        let derived_too_small = (config.max_clients.is_none() && streams < MIN_SHARE)
            || (config.http_max_connections.is_none() && http < MIN_SHARE);
        if streams.saturating_add(http) > left || derived_too_small {
            let mut parts = vec![
                format!("a reserve ({RESERVE})"),
                format!("the app's database pool ({pool})"),
            ];
            if embedded_db {
                parts.push(format!("EMBEDDED_DB_MAX_CONNECTIONS ({embedded})"));
            }
            parts.push(format!("SSE_MAX_CLIENTS ({streams})"));
            parts.push(format!("HTTP_MAX_CONNECTIONS ({http})"));
            let variable = if config.max_clients.is_some() {
                "SSE_MAX_CLIENTS"
            } else if config.http_max_connections.is_some() {
                "HTTP_MAX_CONNECTIONS"
            } else if config.embedded_max_connections.is_some() {
                "EMBEDDED_DB_MAX_CONNECTIONS"
            } else {
                "RLIMIT_NOFILE"
            };
            return Err(StartupError::new(
                variable,
                format!(
                    "{} do not fit the open-file limit ({limit}, `ulimit -n`), each share at \
                     least {MIN_SHARE}: lower those set, or raise the limit",
                    parts.join(" + ")
                ),
            ));
        }
        Ok(Self {
            open_files,
            streams,
            streams_per_client: config
                .max_clients_per_ip
                .unwrap_or_else(|| per_client(streams)),
            http,
            http_per_client: config
                .http_max_connections_per_ip
                .unwrap_or_else(|| per_client(http)),
            embedded,
        })
    }
}

/// The default share of one client address of `share` slots.
fn per_client(share: usize) -> usize {
    (share / 8).max(MIN_PER_CLIENT.min(share))
}

fn as_count(files: u64) -> usize {
    usize::try_from(files).unwrap_or(usize::MAX)
}

/// The process's open-file limit after raising its soft value to the hard one (as far as the
/// system allows); `None` when there is none.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::warn!(cause = %e, "cannot raise the open-file limit to its hard value");
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_split_what_the_reserve_and_the_database_leave() {
        let budget = Budget::fit(&Config::default(), Some(20_000)).expect("fits");
        // 20,000 - 256 - (2 × 36 + 1 + 1) - 1,000 = 18,670, halved.
        assert_eq!(EMBEDDED_FILES, 74);
        assert_eq!(budget.embedded, 1_000);
        assert_eq!((budget.streams, budget.http), (9_335, 9_335));
        assert_eq!(
            (budget.streams_per_client, budget.http_per_client),
            (1_166, 1_166)
        );
        let total = RESERVE as usize + 74 + budget.embedded + budget.streams + budget.http;
        assert!(total <= 20_000, "{total}");
    }

    #[test]
    fn a_small_limit_lowers_every_default_and_no_limit_keeps_them() {
        let small = Budget::fit(&Config::default(), Some(1_024)).expect("fits");
        // 1,024 - 256 - 74 - 102 = 592, halved.
        assert_eq!(small.embedded, 102);
        assert_eq!((small.streams, small.http), (296, 296));
        assert_eq!(small.streams_per_client, 37);
        let unlimited = Budget::fit(&Config::default(), None).expect("fits");
        assert_eq!((unlimited.streams, unlimited.http), (10_000, 10_000));
        assert_eq!(unlimited.embedded, 1_000);
        let external = Config {
            mongo_uri: Some("mongodb://db.example:27017".to_owned()),
            ..Config::default()
        };
        let external = Budget::fit(&external, Some(20_000)).expect("fits");
        // No embedded database: the pool of 32 and its 2 monitors only.
        assert_eq!(external.streams, (20_000 - 256 - 34) / 2);
    }

    #[test]
    fn an_explicit_share_is_kept_and_the_other_gets_the_rest() {
        let config = Config {
            max_clients: Some(15_000),
            max_clients_per_ip: Some(15_000),
            ..Config::default()
        };
        let budget = Budget::fit(&config, Some(20_000)).expect("fits");
        assert_eq!(budget.streams, 15_000);
        assert_eq!(budget.streams_per_client, 15_000);
        assert_eq!(budget.http, 18_670 - 15_000);
        assert_eq!(budget.http_per_client, (18_670 - 15_000) / 8);
    }

    #[test]
    fn an_explicit_configuration_that_does_not_fit_names_its_variables() {
        let config = Config {
            max_clients: Some(15_000),
            http_max_connections: Some(9_000),
            ..Config::default()
        };
        let error = Budget::fit(&config, Some(20_000)).expect_err("too much");
        assert_eq!(error.variable, "SSE_MAX_CLIENTS");
        let line = error.to_string();
        for named in [
            "SSE_MAX_CLIENTS (15000)",
            "HTTP_MAX_CONNECTIONS (9000)",
            "EMBEDDED_DB_MAX_CONNECTIONS (1000)",
            "20000",
        ] {
            assert!(line.contains(named), "{line}");
        }
        assert!(!line.contains('\n'));
        let database = Config {
            embedded_max_connections: Some(50_000),
            ..Config::default()
        };
        let error = Budget::fit(&database, Some(20_000)).expect_err("too much");
        assert_eq!(error.variable, "EMBEDDED_DB_MAX_CONNECTIONS");
        let error = Budget::fit(&Config::default(), Some(300)).expect_err("too low");
        assert_eq!(error.variable, "RLIMIT_NOFILE");
    }
}
