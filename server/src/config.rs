//! The server's settings, read once from the environment (see the
//! configuration table in README).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::TrustedProxies;

/// Why the server did not start: a setting that could not be used, or what it named failed
/// (an address in use, a database out of reach, seeding, threads). Says which variable to fix
/// and why, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct StartupError {
    /// The environment variable to fix.
    pub variable: &'static str,
    /// What went wrong.
    pub message: String,
}

impl StartupError {
    /// An error about `variable`.
    pub fn new(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
        }
    }
}

/// `WRITE_RATE_PER_IP`: how fast one client address may write from the page, written
/// `<count>/s` or `<count>/min`, optionally followed by `,burst=<n>` (e.g. `10/s,burst=30`).
/// `count` writes come back per period, one at a time, up to `burst` (which defaults to
/// `count`) saved up by a quiet client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRate {
    /// Writes that come back per `period`.
    pub count: NonZeroU32,
    /// A second or a minute.
    pub period: Duration,
    /// Writes one address may make at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl Default for WriteRate {
    /// 10 per second, bursts of 30.
    fn default() -> Self {
        Self {
            count: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            period: Duration::from_secs(1),
            burst: NonZeroU32::new(30).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// The most writes per second `WRITE_RATE_PER_IP` may allow: one every microsecond, far past
/// anything a person does, and still a time span the limiter can count in.
const MAX_WRITES_PER_SECOND: u32 = 1_000_000;

impl WriteRate {
    /// The time one write takes to come back: `period / count`, at least 1 µs.
    pub fn interval(&self) -> Duration {
        (self.period / self.count.get()).max(Duration::from_micros(1))
    }

    /// Reads `<count>/s` or `<count>/min` with an optional `,burst=<n>`; `None` when `text`
    /// is not that, a number is 0, or the rate is over a million a second.
    fn parse(text: &str) -> Option<Self> {
        let (rate, burst) = match text.split_once(',') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (text, None),
        };
        let (count, unit) = rate.trim().split_once('/')?;
        let count: NonZeroU32 = count.trim().parse().ok()?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "min" => Duration::from_secs(60),
            _ => return None,
        };
        if period == Duration::from_secs(1) && count.get() > MAX_WRITES_PER_SECOND {
            return None;
        }
        let burst = match burst {
            None => count,
            Some(burst) => match burst.split_once('=')? {
                (key, n) if key.trim() == "burst" => n.trim().parse().ok()?,
                _ => return None,
            },
        };
        Some(Self {
            count,
            period,
            burst,
        })
    }
}

/// Typed configuration; every field has the contract's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `MONGO_URI`: a real deployment (replica set or Atlas); `None` starts the embedded database.
    pub mongo_uri: Option<String>,
    /// `MONGO_DB`: the database name.
    pub mongo_db: String,
    /// `EMBEDDED_DB_ADDR`: where the embedded database listens.
    pub embedded_addr: SocketAddr,
    /// `EMBEDDED_DB_PATH`: where the embedded database keeps its files.
    pub embedded_path: PathBuf,
    /// `LEPTOS_SITE_ADDR`: the HTTP address.
    pub site_addr: SocketAddr,
    /// `SSE_HEARTBEAT_MS`: idle time after which a `: heartbeat` comment is sent.
    pub heartbeat: Duration,
    /// `SSE_MAX_CLIENTS`: concurrent event streams; `None` derives it from the file budget
    /// ([`crate::budget`]).
    pub max_clients: Option<usize>,
    /// `SSE_MAX_CLIENTS_PER_IP`: event streams one client address may hold; `None` derives it.
    pub max_clients_per_ip: Option<usize>,
    /// `HTTP_MAX_CONNECTIONS`: connections that are not event streams; `None` derives it.
    pub http_max_connections: Option<usize>,
    /// `HTTP_MAX_CONNECTIONS_PER_IP`: of those, what one peer address may hold (a trusted
    /// proxy is exempt); `None` derives it.
    pub http_max_connections_per_ip: Option<usize>,
    /// `HTTP_HEADER_TIMEOUT_MS`: a whole request head must arrive within this of accept or of
    /// the end of the previous response (so it is also a kept-alive connection's idle limit).
    pub header_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT_MS`: a whole request body must arrive within this of its head.
    pub body_timeout: Duration,
    /// `TRUSTED_PROXIES`: reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// `SSE_WRITE_TIMEOUT_MS`: a connection with bytes pending, of which its socket accepted
    /// none for this long, is closed (an event stream's slot is freed).
    pub write_timeout: Duration,
    /// `EMBEDDED_DB_MAX_CONNECTIONS`: connections the embedded database serves its outside
    /// clients at once; at least 1; `None` derives it from the file budget.
    pub embedded_max_connections: Option<usize>,
    /// `EMBEDDED_DB_WRITE_TIMEOUT_MS`: time a database client has to read a reply whole.
    pub embedded_write_timeout: Duration,
    /// `EMBEDDED_DB_TEST_COMMANDS`: whether the embedded database offers `configureFailPoint`.
    pub embedded_test_commands: bool,
    /// `SHUTDOWN_GRACE_MS`: on a stop signal, how long requests in flight may still finish
    /// before their connections are closed (0 closes them at once).
    pub shutdown_grace: Duration,
    /// `SITE_HOSTS`: host names (lowercase, `name` or `name:port`) that writes may name in
    /// `Host` besides IP addresses and `localhost`; see [`crate::server_fns`].
    pub site_hosts: Vec<String>,
    /// `WRITE_RATE_PER_IP`: the page writes one client address may make; see [`WriteRate`].
    pub write_rate: WriteRate,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mongo_uri: None,
            mongo_db: "realtime".to_owned(),
            embedded_addr: SocketAddr::from(([127, 0, 0, 1], 27017)),
            embedded_path: PathBuf::from("./data/db"),
            site_addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            heartbeat: Duration::from_millis(5000),
            max_clients: None,
            max_clients_per_ip: None,
            http_max_connections: None,
            http_max_connections_per_ip: None,
            header_timeout: Duration::from_millis(20_000),
            body_timeout: Duration::from_millis(30_000),
            trusted_proxies: TrustedProxies::default(),
            write_timeout: Duration::from_millis(30_000),
            embedded_max_connections: None,
            embedded_write_timeout: embedded_db::DEFAULT_WRITE_TIMEOUT,
            embedded_test_commands: false,
            shutdown_grace: Duration::from_millis(10_000),
            site_hosts: Vec::new(),
            write_rate: WriteRate::default(),
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, StartupError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `get` (a variable's value, if set); unset or empty means default.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, StartupError> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let defaults = Self::default();
        let mongo_uri = var("MONGO_URI");
        if let Some(uri) = &mongo_uri {
            if !uri.starts_with("mongodb://") && !uri.starts_with("mongodb+srv://") {
                return Err(StartupError::new(
                    "MONGO_URI",
                    "must start with mongodb:// or mongodb+srv://",
                ));
            }
        }
        let mongo_db = match var("MONGO_DB") {
            Some(name) if name.contains(['/', '\\', '.', ' ', '"', '$']) || name.len() > 63 => {
                return Err(StartupError::new(
                    "MONGO_DB",
                    format!("invalid database name '{name}'"),
                ))
            }
            Some(name) => name,
            None => defaults.mongo_db,
        };
        Ok(Self {
            mongo_uri,
            mongo_db,
            embedded_addr: parse(
                var("EMBEDDED_DB_ADDR"),
                "EMBEDDED_DB_ADDR",
                defaults.embedded_addr,
                "socket address",
            )?,
            embedded_path: var("EMBEDDED_DB_PATH").map_or(defaults.embedded_path, PathBuf::from),
            site_addr: parse(
                var("LEPTOS_SITE_ADDR"),
                "LEPTOS_SITE_ADDR",
                defaults.site_addr,
                "socket address",
            )?,
            heartbeat: match parse(
                var("SSE_HEARTBEAT_MS"),
                "SSE_HEARTBEAT_MS",
                5000u64,
                "number of milliseconds",
            )? {
                0 => return Err(StartupError::new("SSE_HEARTBEAT_MS", "must be at least 1")),
                ms => Duration::from_millis(ms),
            },
            max_clients: count(var("SSE_MAX_CLIENTS"), "SSE_MAX_CLIENTS")?,
            max_clients_per_ip: count(var("SSE_MAX_CLIENTS_PER_IP"), "SSE_MAX_CLIENTS_PER_IP")?,
            http_max_connections: count(var("HTTP_MAX_CONNECTIONS"), "HTTP_MAX_CONNECTIONS")?,
            http_max_connections_per_ip: count(
                var("HTTP_MAX_CONNECTIONS_PER_IP"),
                "HTTP_MAX_CONNECTIONS_PER_IP",
            )?,
            header_timeout: millis(
                var("HTTP_HEADER_TIMEOUT_MS"),
                "HTTP_HEADER_TIMEOUT_MS",
                defaults.header_timeout,
            )?,
            body_timeout: millis(
                var("HTTP_BODY_TIMEOUT_MS"),
                "HTTP_BODY_TIMEOUT_MS",
                defaults.body_timeout,
            )?,
            trusted_proxies: match var("TRUSTED_PROXIES") {
                None => defaults.trusted_proxies,
                Some(text) => TrustedProxies::parse(&text).map_err(|entry| {
                    StartupError::new(
                        "TRUSTED_PROXIES",
                        format!(
                            "expected IP addresses or networks (10.0.0.0/8), comma-separated; \
                             '{entry}' is neither"
                        ),
                    )
                })?,
            },
            write_timeout: match parse(
                var("SSE_WRITE_TIMEOUT_MS"),
                "SSE_WRITE_TIMEOUT_MS",
                30_000u64,
                "number of milliseconds",
            )? {
                0 => {
                    return Err(StartupError::new(
                        "SSE_WRITE_TIMEOUT_MS",
                        "must be at least 1",
                    ))
                }
                ms => Duration::from_millis(ms),
            },
            embedded_max_connections: count(
                var("EMBEDDED_DB_MAX_CONNECTIONS"),
                "EMBEDDED_DB_MAX_CONNECTIONS",
            )?,
            embedded_write_timeout: match parse(
                var("EMBEDDED_DB_WRITE_TIMEOUT_MS"),
                "EMBEDDED_DB_WRITE_TIMEOUT_MS",
                defaults.embedded_write_timeout.as_millis(),
                "number of milliseconds",
            )? {
                0 => {
                    return Err(StartupError::new(
                        "EMBEDDED_DB_WRITE_TIMEOUT_MS",
                        "must be at least 1",
                    ))
                }
                ms => Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)),
            },
            shutdown_grace: Duration::from_millis(parse(
                var("SHUTDOWN_GRACE_MS"),
                "SHUTDOWN_GRACE_MS",
                10_000u64,
                "number of milliseconds",
            )?),
            site_hosts: var("SITE_HOSTS").map_or_else(Vec::new, |list| {
                list.split(',')
                    .map(|host| host.trim().to_ascii_lowercase())
                    .filter(|host| !host.is_empty())
                    .collect()
            }),
            write_rate: match var("WRITE_RATE_PER_IP") {
                None => defaults.write_rate,
                Some(text) => WriteRate::parse(&text).ok_or_else(|| {
                    StartupError::new(
                        "WRITE_RATE_PER_IP",
                        format!(
                            "expected <count>/s or <count>/min, optionally ,burst=<n> \
                             (e.g. 10/s,burst=30; at most {MAX_WRITES_PER_SECOND}/s), got '{text}'"
                        ),
                    )
                })?,
            },
            embedded_test_commands: match var("EMBEDDED_DB_TEST_COMMANDS") {
                None => defaults.embedded_test_commands,
                Some(text) => parse_switch(&text).ok_or_else(|| {
                    StartupError::new(
                        "EMBEDDED_DB_TEST_COMMANDS",
                        format!("expected 1/true or 0/false, got '{text}'"),
                    )
                })?,
            },
        })
    }
}

/// `1`/`true`/`yes`/`on` → on, `0`/`false`/`no`/`off` → off (any case), anything else → `None`.
fn parse_switch(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// An optional whole number of at least 1.
fn count(value: Option<String>, variable: &'static str) -> Result<Option<usize>, StartupError> {
    let Some(text) = value else {
        return Ok(None);
    };
    match parse(Some(text), variable, 0usize, "whole number")? {
        0 => Err(StartupError::new(variable, "must be at least 1")),
        n => Ok(Some(n)),
    }
}

/// A number of milliseconds of at least 1.
fn millis(
    value: Option<String>,
    variable: &'static str,
    default: Duration,
) -> Result<Duration, StartupError> {
    match value {
        None => Ok(default),
        Some(_) => match parse(value, variable, 0u64, "number of milliseconds")? {
            0 => Err(StartupError::new(variable, "must be at least 1")),
            ms => Ok(Duration::from_millis(ms)),
        },
    }
}

fn parse<T: std::str::FromStr>(
    value: Option<String>,
    variable: &'static str,
    default: T,
    what: &str,
) -> Result<T, StartupError> {
    match value {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| StartupError::new(variable, format!("invalid {what} '{text}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = Config::from_lookup(lookup(&[])).expect("defaults");
        assert_eq!(config, Config::default());
        assert_eq!(config.site_addr.to_string(), "127.0.0.1:3000");
        assert_eq!(config.embedded_addr.to_string(), "127.0.0.1:27017");
        assert_eq!(config.heartbeat, Duration::from_secs(5));
        // The connection shares come from the file budget (`budget`'s tests).
        assert_eq!(config.max_clients, None);
        assert_eq!(config.http_max_connections_per_ip, None);
        assert_eq!(config.header_timeout, Duration::from_secs(20));
        assert_eq!(config.body_timeout, Duration::from_secs(30));
        assert_eq!(config.trusted_proxies, TrustedProxies::default());
        assert_eq!(config.write_timeout, Duration::from_secs(30));
        assert_eq!(config.mongo_db, "realtime");
        assert_eq!(config.embedded_max_connections, None);
        assert!(!config.embedded_test_commands);
        assert!(config.site_hosts.is_empty());
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.write_rate.count.get(), 10);
        assert_eq!(config.write_rate.period, Duration::from_secs(1));
        assert_eq!(config.write_rate.burst.get(), 30);
    }

    #[test]
    fn the_write_rate_is_a_count_per_period_with_a_burst() {
        let rate = |text: &str| {
            let config =
                Config::from_lookup(lookup(&[("WRITE_RATE_PER_IP", text)])).expect("a write rate");
            let rate = config.write_rate;
            (rate.count.get(), rate.period.as_secs(), rate.burst.get())
        };
        assert_eq!(rate("10/s,burst=30"), (10, 1, 30));
        assert_eq!(rate(" 3/s , burst = 5 "), (3, 1, 5));
        assert_eq!(rate("1/s"), (1, 1, 1), "the burst defaults to the count");
        assert_eq!(rate("20/min,burst=1"), (20, 60, 1));
        assert_eq!(rate("1000000/s"), (1_000_000, 1, 1_000_000));
        let interval = Config::from_lookup(lookup(&[("WRITE_RATE_PER_IP", "4/s")]))
            .expect("a write rate")
            .write_rate
            .interval();
        assert_eq!(interval, Duration::from_millis(250));
        for bad in [
            "10",
            "10/h",
            "0/s",
            "-1/s",
            "ten/s",
            "10/s,30",
            "10/s,burst=0",
            "10/s,burst=",
            "1000001/s",
            "10/s,burst=30,x",
            "10/s,rate=30",
        ] {
            let err = Config::from_lookup(lookup(&[("WRITE_RATE_PER_IP", bad)])).expect_err(bad);
            assert_eq!(err.variable, "WRITE_RATE_PER_IP", "{bad}");
            assert!(err.to_string().starts_with("WRITE_RATE_PER_IP: "), "{err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn values_are_read() {
        let config = Config::from_lookup(lookup(&[
            ("MONGO_URI", "mongodb://db:27017/?replicaSet=rs0"),
            ("MONGO_DB", "app"),
            ("EMBEDDED_DB_ADDR", "0.0.0.0:27018"),
            ("EMBEDDED_DB_PATH", "/tmp/x"),
            ("LEPTOS_SITE_ADDR", "127.0.0.1:0"),
            ("SSE_HEARTBEAT_MS", "250"),
            ("SSE_MAX_CLIENTS", "3"),
            ("SSE_WRITE_TIMEOUT_MS", "500"),
            ("EMBEDDED_DB_MAX_CONNECTIONS", "20"),
            ("EMBEDDED_DB_TEST_COMMANDS", "1"),
            ("SITE_HOSTS", " Example.com, ,app.example.com:8443 "),
            ("SHUTDOWN_GRACE_MS", "1500"),
            ("SSE_MAX_CLIENTS_PER_IP", "4"),
            ("HTTP_MAX_CONNECTIONS", "50"),
            ("HTTP_MAX_CONNECTIONS_PER_IP", "5"),
            ("HTTP_HEADER_TIMEOUT_MS", "700"),
            ("HTTP_BODY_TIMEOUT_MS", "900"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
        ]))
        .expect("valid");
        assert_eq!(config.shutdown_grace, Duration::from_millis(1500));
        assert_eq!(config.site_hosts, ["example.com", "app.example.com:8443"]);
        assert_eq!(
            config.mongo_uri.as_deref(),
            Some("mongodb://db:27017/?replicaSet=rs0")
        );
        assert_eq!(config.mongo_db, "app");
        assert_eq!(config.embedded_addr.port(), 27018);
        assert_eq!(config.embedded_path, PathBuf::from("/tmp/x"));
        assert_eq!(config.heartbeat, Duration::from_millis(250));
        assert_eq!(config.max_clients, Some(3));
        assert_eq!(config.max_clients_per_ip, Some(4));
        assert_eq!(config.http_max_connections, Some(50));
        assert_eq!(config.http_max_connections_per_ip, Some(5));
        assert_eq!(config.header_timeout, Duration::from_millis(700));
        assert_eq!(config.body_timeout, Duration::from_millis(900));
        assert!(config
            .trusted_proxies
            .contains("10.1.2.3".parse().expect("v4")));
        assert_eq!(config.write_timeout, Duration::from_millis(500));
        assert_eq!(config.embedded_max_connections, Some(20));
        assert!(config.embedded_test_commands);
        for (value, on) in [
            ("true", true),
            ("TRUE", true),
            ("0", false),
            ("false", false),
        ] {
            let config = Config::from_lookup(lookup(&[("EMBEDDED_DB_TEST_COMMANDS", value)]))
                .expect("a switch");
            assert_eq!(config.embedded_test_commands, on, "{value}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("EMBEDDED_DB_ADDR", "x"),
            ("LEPTOS_SITE_ADDR", "localhost"),
            ("SSE_HEARTBEAT_MS", "soon"),
            ("SSE_HEARTBEAT_MS", "0"),
            ("SSE_MAX_CLIENTS", "-1"),
            ("SSE_WRITE_TIMEOUT_MS", "0"),
            ("MONGO_URI", "http://x"),
            ("MONGO_DB", "a.b"),
            ("EMBEDDED_DB_MAX_CONNECTIONS", "many"),
            ("EMBEDDED_DB_MAX_CONNECTIONS", "0"),
            ("EMBEDDED_DB_WRITE_TIMEOUT_MS", "0"),
            ("EMBEDDED_DB_TEST_COMMANDS", "maybe"),
            ("SHUTDOWN_GRACE_MS", "-1"),
            ("SHUTDOWN_GRACE_MS", "10s"),
            ("SSE_MAX_CLIENTS", "0"),
            ("SSE_MAX_CLIENTS_PER_IP", "0"),
            ("HTTP_MAX_CONNECTIONS", "lots"),
            ("HTTP_MAX_CONNECTIONS_PER_IP", "0"),
            ("HTTP_HEADER_TIMEOUT_MS", "0"),
            ("HTTP_BODY_TIMEOUT_MS", "1.5"),
            ("TRUSTED_PROXIES", "10.0.0.1, proxy"),
        ] {
            let err = Config::from_lookup(lookup(&[(name, value)])).expect_err(name);
            assert_eq!(err.variable, name);
            assert!(err.to_string().starts_with(&format!("{name}: ")), "{err}");
        }
    }
}
