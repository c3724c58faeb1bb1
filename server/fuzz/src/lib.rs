//! An HTTP fuzzing harness for the `server` binary, on stable Rust over real sockets
//! (`make fuzz-http`; docs/fuzzing.md).
//!
//! It starts the release binary as a child process on the embedded database (free ports, a temp
//! data directory, a temp site root with a few static files) and sends, from many connections
//! at once, requests built from the server's real routes and then bent: methods, targets,
//! header encodings, bodies (url-encoded forms, JSON, bytes that are not UTF-8), chunked
//! transfer encoding (valid and broken), several requests pipelined on one connection,
//! truncated heads and, in the trickle mode, heads and bodies sent too slowly or never
//! finished. A run fails on any `5xx`, on a connection that stays open and silent past the
//! server's deadlines plus a margin (a hang), and on a dead server process.
//!
//! # Layout
//!
//! - [`routes`]: the server's routes and the form fields of its server functions.
//! - [`generate`]: cases (the bytes of one connection and how they are delivered) from a seed.
//! - [`response`]: reading HTTP/1 responses off a byte stream, as far as they parse.
//! - [`exchange`]: one case over one connection, with the hang deadlines; what came back.
//! - [`child`]: the server process, its environment, readiness and output.
//! - [`findings`]: what failed, saved as the exact bytes plus the seed; replaying them.
//! - [`run`]: the connections in parallel, the counters, the supervisor and the summary.

pub mod child;
pub mod exchange;
pub mod findings;
pub mod generate;
pub mod response;
pub mod routes;
pub mod run;
