//! What mongosh and driver users reach for, answered as mongod 7.0 answers it, through the
//! official Rust driver.
//!
//! One binary (integration binaries are expensive to link), a file per area beside this one.

#[path = "../common/mod.rs"]
mod common;

/// The code of a command error or of a write error; -1 for anything else.
fn code(err: &mongodb::error::Error) -> i32 {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Command(c) => c.code,
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code,
        _ => -1,
    }
}

// One module per area, in the order the areas landed.
mod documents;
mod expanded_events;
mod explain;
mod expr;
mod facet;
mod joins;
mod let_variables;
mod odd_field_names;
mod pipeline_updates;
mod read_concern;
mod reply_types;
mod write_stages;
