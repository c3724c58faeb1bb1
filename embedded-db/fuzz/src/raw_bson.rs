//! A BSON value tree that can hold what `bson::Bson` cannot: invalid UTF-8 in strings, keys and
//! regexes, booleans other than 0/1, duplicate keys. It encodes to raw BSON bytes itself, so
//! every BSON type (including the deprecated ones) can be put on the wire.

use bson::Bson;

/// A document: ordered fields, keys as raw bytes (a NUL in a key is replaced when encoding).
pub(crate) type Doc = Vec<(Vec<u8>, Val)>;

/// One BSON value, by element type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    /// 0x01
    Double(f64),
    /// 0x02, bytes as sent (not necessarily UTF-8).
    Str(Vec<u8>),
    /// 0x03
    Doc(Doc),
    /// 0x04, keys "0", "1", … written by the encoder.
    Array(Vec<Val>),
    /// 0x05: subtype and payload.
    Binary(u8, Vec<u8>),
    /// 0x06 (deprecated)
    Undefined,
    /// 0x07
    ObjectId([u8; 12]),
    /// 0x08; values other than 0 and 1 are invalid BSON.
    Bool(u8),
    /// 0x09, milliseconds since the epoch.
    DateTime(i64),
    /// 0x0A
    Null,
    /// 0x0B: pattern and options as C strings.
    Regex(Vec<u8>, Vec<u8>),
    /// 0x0C (deprecated): namespace and id.
    DbPointer(Vec<u8>, [u8; 12]),
    /// 0x0D
    JavaScript(Vec<u8>),
    /// 0x0E (deprecated)
    Symbol(Vec<u8>),
    /// 0x0F (deprecated): code and scope.
    CodeWithScope(Vec<u8>, Doc),
    /// 0x10
    Int32(i32),
    /// 0x11: increment, then seconds.
    Timestamp(u32, u32),
    /// 0x12
    Int64(i64),
    /// 0x13, the 16 raw bytes.
    Decimal128([u8; 16]),
    /// 0xFF
    MinKey,
    /// 0x7F
    MaxKey,
}

/// A field of a [`Doc`] from a string key.
pub(crate) fn field(key: &str, value: Val) -> (Vec<u8>, Val) {
    (key.as_bytes().to_vec(), value)
}

/// A string value.
pub(crate) fn s(text: &str) -> Val {
    Val::Str(text.as_bytes().to_vec())
}

impl From<&Bson> for Val {
    fn from(b: &Bson) -> Self {
        match b {
            Bson::Double(f) => Self::Double(*f),
            Bson::String(t) => s(t),
            Bson::Document(d) => Self::Doc(from_document(d)),
            Bson::Array(items) => Self::Array(items.iter().map(Self::from).collect()),
            Bson::Binary(bin) => Self::Binary(u8::from(bin.subtype), bin.bytes.clone()),
            Bson::Undefined => Self::Undefined,
            Bson::ObjectId(oid) => Self::ObjectId(oid.bytes()),
            Bson::Boolean(v) => Self::Bool(u8::from(*v)),
            Bson::DateTime(t) => Self::DateTime(t.timestamp_millis()),
            Bson::Null => Self::Null,
            Bson::RegularExpression(r) => {
                Self::Regex(r.pattern.as_bytes().to_vec(), r.options.as_bytes().to_vec())
            }
            Bson::DbPointer(_) => Self::DbPointer(b"db.c".to_vec(), [0; 12]),
            Bson::JavaScriptCode(code) => Self::JavaScript(code.as_bytes().to_vec()),
            Bson::JavaScriptCodeWithScope(c) => {
                Self::CodeWithScope(c.code.as_bytes().to_vec(), from_document(&c.scope))
            }
            Bson::Symbol(t) => Self::Symbol(t.as_bytes().to_vec()),
            Bson::Int32(i) => Self::Int32(*i),
            Bson::Int64(i) => Self::Int64(*i),
            Bson::Timestamp(t) => Self::Timestamp(t.increment, t.time),
            Bson::Decimal128(d) => Self::Decimal128(d.bytes()),
            Bson::MaxKey => Self::MaxKey,
            Bson::MinKey => Self::MinKey,
        }
    }
}

/// The [`Doc`] for a `bson::Document`, fields in order.
pub(crate) fn from_document(d: &bson::Document) -> Doc {
    d.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), Val::from(v)))
        .collect()
}

impl Val {
    /// The BSON element type byte.
    fn type_byte(&self) -> u8 {
        match self {
            Self::Double(_) => 0x01,
            Self::Str(_) => 0x02,
            Self::Doc(_) => 0x03,
            Self::Array(_) => 0x04,
            Self::Binary(..) => 0x05,
            Self::Undefined => 0x06,
            Self::ObjectId(_) => 0x07,
            Self::Bool(_) => 0x08,
            Self::DateTime(_) => 0x09,
            Self::Null => 0x0A,
            Self::Regex(..) => 0x0B,
            Self::DbPointer(..) => 0x0C,
            Self::JavaScript(_) => 0x0D,
            Self::Symbol(_) => 0x0E,
            Self::CodeWithScope(..) => 0x0F,
            Self::Int32(_) => 0x10,
            Self::Timestamp(..) => 0x11,
            Self::Int64(_) => 0x12,
            Self::Decimal128(_) => 0x13,
            Self::MinKey => 0xFF,
            Self::MaxKey => 0x7F,
        }
    }
}

/// The raw BSON bytes of `doc`.
pub(crate) fn encode(doc: &Doc) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_doc(&mut out, doc.iter().map(|(k, v)| (k.as_slice(), v)));
    out
}

fn write_doc<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = (&'a [u8], &'a Val)>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for (key, value) in fields {
        out.push(value.type_byte());
        write_cstring(out, key);
        write_value(out, value);
    }
    out.push(0);
    patch_len(out, start);
}

fn patch_len(out: &mut [u8], start: usize) {
    let len = i32::try_from(out.len() - start).unwrap_or(i32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// A C string; an embedded NUL would end it early and desynchronise the document, so it is
/// replaced (raw-byte mutations are the place for that kind of damage).
fn write_cstring(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(bytes.iter().map(|b| if *b == 0 { b'0' } else { *b }));
    out.push(0);
}

fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = i32::try_from(bytes.len() + 1).unwrap_or(i32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    out.push(0);
}

fn write_value(out: &mut Vec<u8>, value: &Val) {
    match value {
        Val::Double(f) => out.extend_from_slice(&f.to_le_bytes()),
        Val::Str(b) | Val::JavaScript(b) | Val::Symbol(b) => write_string(out, b),
        Val::Doc(d) => write_doc(out, d.iter().map(|(k, v)| (k.as_slice(), v))),
        Val::Array(items) => {
            let keys: Vec<Vec<u8>> = (0..items.len())
                .map(|i| i.to_string().into_bytes())
                .collect();
            write_doc(out, keys.iter().map(Vec::as_slice).zip(items.iter()));
        }
        Val::Binary(subtype, bytes) => {
            let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.push(*subtype);
            out.extend_from_slice(bytes);
        }
        Val::Undefined | Val::Null | Val::MinKey | Val::MaxKey => {}
        Val::ObjectId(id) => out.extend_from_slice(id),
        Val::Bool(b) => out.push(*b),
        Val::DateTime(t) => out.extend_from_slice(&t.to_le_bytes()),
        Val::Regex(pattern, options) => {
            write_cstring(out, pattern);
            write_cstring(out, options);
        }
        Val::DbPointer(ns, id) => {
            write_string(out, ns);
            out.extend_from_slice(id);
        }
        Val::CodeWithScope(code, scope) => {
            let start = out.len();
            out.extend_from_slice(&[0; 4]);
            write_string(out, code);
            write_doc(out, scope.iter().map(|(k, v)| (k.as_slice(), v)));
            patch_len(out, start);
        }
        Val::Int32(i) => out.extend_from_slice(&i.to_le_bytes()),
        Val::Timestamp(increment, time) => {
            out.extend_from_slice(&increment.to_le_bytes());
            out.extend_from_slice(&time.to_le_bytes());
        }
        Val::Int64(i) => out.extend_from_slice(&i.to_le_bytes()),
        Val::Decimal128(b) => out.extend_from_slice(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn encodes_as_the_bson_crate_does() {
        let d = doc! { "a": 1, "b": [1.5, "x", { "c": null }], "d": bson::Bson::MinKey };
        assert_eq!(
            encode(&from_document(&d)),
            bson::to_vec(&d).expect("encodes")
        );
    }
}
