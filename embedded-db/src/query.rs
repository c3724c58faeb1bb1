//! The pure query engine: BSON comparison, dotted paths, query filters,
//! projections, sorting, update operators and aggregation pipelines.
//!
//! Nothing here does I/O; every client mistake becomes a [`crate::error::CommandError`]
//! carrying the code `mongod` would answer with, never a panic.

pub(crate) mod aggregate;
pub(crate) mod compare;
pub(crate) mod expr;
pub(crate) mod filter;
pub(crate) mod num;
pub(crate) mod path;
pub(crate) mod projection;
pub(crate) mod sort;
pub(crate) mod update;
pub(crate) mod variables;
