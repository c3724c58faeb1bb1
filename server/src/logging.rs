//! The log's format: every event is one line, whatever a client sent.
//!
//! Values from clients reach the log (an event stream's `lastEventId`, a refused request's
//! path, a database error quoting a document). Written as they are, a newline in one would
//! start a line of the client's choosing, and a long one would flood the log. So every field
//! value, of this crate and of every library, is written with its control characters escaped
//! (`\n`, `\u{1b}`) and cut after [`MAX_VALUE_CHARS`] characters; a value known to come from a
//! client is cut shorter at its call site with [`client_text`].

use std::fmt;

use tracing::field::Field;
use tracing::Subscriber;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{debug_fn, Writer};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Most characters of one field value a log line shows; the rest is cut, marked `…`.
pub const MAX_VALUE_CHARS: usize = 1024;

/// Most characters of a client-supplied value a log line shows (see [`client_text`]).
pub const MAX_CLIENT_CHARS: usize = 128;

/// The server's subscriber: `filter` chooses the events, each written as one line to
/// `writer`, with every field value escaped and cut (see the module docs).
pub fn subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(debug_fn(write_field).delimited(" "))
        .with_writer(writer)
        .finish()
}

/// `text` as a log field shows a value a client chose: control characters escaped, cut after
/// [`MAX_CLIENT_CHARS`] characters.
pub fn client_text(text: &str) -> String {
    escaped(text, MAX_CLIENT_CHARS)
}

/// Writes one field as `name=value` (the message as its text alone), escaped and cut.
fn write_field(writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    let text = escaped(&format!("{value:?}"), MAX_VALUE_CHARS);
    if field.name() == "message" {
        writer.write_str(&text)
    } else {
        write!(writer, "{}={text}", field.name())
    }
}

/// `text` with its control characters and line separators escaped, cut after `max` characters
/// (then ending in `…`).
fn escaped(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max * 2));
    for (shown, c) in text.chars().enumerate() {
        if shown == max {
            out.push('…');
            break;
        }
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_values_cut() {
        assert_eq!(
            escaped("a\nb\r\u{1b}[31m\u{2028}", 100),
            "a\\nb\\r\\u{1b}[31m\\u{2028}"
        );
        assert_eq!(escaped("é\"x", 100), "é\"x");
        assert_eq!(escaped("abcdef", 3), "abc…");
        assert_eq!(
            client_text(&"x".repeat(10_000)).chars().count(),
            MAX_CLIENT_CHARS + 1
        );
    }
}
