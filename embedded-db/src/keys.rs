//! Order-preserving byte encoding of BSON values, for `_id` keys and unique
//! index keys.
//!
//! Two values that MongoDB considers equal (`1`, `1.0` and `NumberLong(1)`)
//! encode to the same bytes, and the byte order of two encodings is MongoDB's
//! cross-type sort order. That lets the `_id` index be the primary key of the
//! document table and makes duplicate detection a key lookup.

use bson::{Bson, Document};

// Type brackets in MongoDB's cross-type order; 0 ends a document or an array.
const END: u8 = 0x00;
const MIN_KEY: u8 = 0x01;
const NULL: u8 = 0x05;
const NUMBER: u8 = 0x10;
const STRING: u8 = 0x20;
const OBJECT: u8 = 0x30;
const ARRAY: u8 = 0x38;
const BINARY: u8 = 0x40;
const OBJECT_ID: u8 = 0x50;
const BOOLEAN: u8 = 0x58;
const DATE: u8 = 0x60;
const TIMESTAMP: u8 = 0x68;
const REGEX: u8 = 0x70;
const CODE: u8 = 0x78;
const MAX_KEY: u8 = 0x7F;

/// Encodes `value` so that byte order is MongoDB's value order and equal values are equal bytes.
pub(crate) fn encode(value: &Bson) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    append(&mut out, value);
    out
}

/// Appends the encoding of several values (a compound index key) to one buffer.
pub(crate) fn encode_compound<'a>(values: impl IntoIterator<Item = &'a Bson>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    for value in values {
        append(&mut out, value);
    }
    out
}

fn append(out: &mut Vec<u8>, value: &Bson) {
    match value {
        Bson::MinKey => out.push(MIN_KEY),
        Bson::Null | Bson::Undefined => out.push(NULL),
        Bson::Int32(i) => append_number(out, f64::from(*i), i64::from(*i)),
        Bson::Int64(i) => {
            #[allow(clippy::cast_precision_loss)] // the exact remainder is appended below
            append_number(out, *i as f64, *i)
        }
        Bson::Double(f) => {
            #[allow(clippy::cast_possible_truncation)] // only used when the double is integral
            let exact = if f.is_finite() && f.fract() == 0.0 {
                *f as i64
            } else {
                0
            };
            append_number(out, *f, exact)
        }
        Bson::Decimal128(d) => {
            let f = d.to_string().parse::<f64>().unwrap_or(f64::NAN);
            append(out, &Bson::Double(f));
        }
        Bson::String(s) | Bson::Symbol(s) => {
            out.push(STRING);
            append_escaped(out, s.as_bytes());
        }
        Bson::Document(d) => {
            out.push(OBJECT);
            append_fields(out, d);
        }
        Bson::Array(items) => {
            out.push(ARRAY);
            for item in items {
                append(out, item);
            }
            out.push(END);
        }
        Bson::Binary(b) => {
            out.push(BINARY);
            let len = u32::try_from(b.bytes.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.push(u8::from(b.subtype));
            out.extend_from_slice(&b.bytes);
        }
        Bson::ObjectId(oid) => {
            out.push(OBJECT_ID);
            out.extend_from_slice(&oid.bytes());
        }
        Bson::Boolean(b) => {
            out.push(BOOLEAN);
            out.push(u8::from(*b));
        }
        Bson::DateTime(d) => {
            out.push(DATE);
            out.extend_from_slice(&flip_sign(d.timestamp_millis()));
        }
        Bson::Timestamp(ts) => {
            out.push(TIMESTAMP);
            out.extend_from_slice(&ts.time.to_be_bytes());
            out.extend_from_slice(&ts.increment.to_be_bytes());
        }
        Bson::RegularExpression(re) => {
            out.push(REGEX);
            append_escaped(out, re.pattern.as_bytes());
            append_escaped(out, re.options.as_bytes());
        }
        Bson::JavaScriptCode(code) => {
            out.push(CODE);
            append_escaped(out, code.as_bytes());
        }
        Bson::JavaScriptCodeWithScope(cws) => {
            out.push(CODE);
            append_escaped(out, cws.code.as_bytes());
            append_fields(out, &cws.scope);
        }
        Bson::DbPointer(_) => out.push(CODE),
        Bson::MaxKey => out.push(MAX_KEY),
    }
}

fn append_fields(out: &mut Vec<u8>, doc: &Document) {
    // MongoDB compares documents element by element: type bracket, then name, then value.
    for (name, value) in doc {
        let mut encoded = Vec::new();
        append(&mut encoded, value);
        let Some((&bracket, rest)) = encoded.split_first() else {
            continue;
        };
        out.push(bracket);
        append_escaped(out, name.as_bytes());
        out.extend_from_slice(rest);
    }
    out.push(END);
}

/// Numbers: the order-preserving bits of the double, then the exact integer remainder so that
/// 64-bit integers that a double cannot hold stay distinct and ordered.
fn append_number(out: &mut Vec<u8>, f: f64, exact: i64) {
    out.push(NUMBER);
    let bits = if f.is_nan() {
        0 // NaN sorts below every other number
    } else {
        let f = if f == 0.0 { 0.0 } else { f }; // -0.0 equals 0.0
        let bits = f.to_bits();
        if bits >> 63 == 1 {
            !bits
        } else {
            bits | (1 << 63)
        }
    };
    out.extend_from_slice(&bits.to_be_bytes());
    #[allow(clippy::cast_possible_truncation)]
    let remainder = if f.is_finite() && f.abs() < 9.3e18 {
        i128::from(exact) - (f as i64) as i128
    } else {
        0
    };
    let remainder = i64::try_from(remainder).unwrap_or(0);
    out.extend_from_slice(&flip_sign(remainder));
}

fn flip_sign(v: i64) -> [u8; 8] {
    #[allow(clippy::cast_sign_loss)]
    let u = (v as u64) ^ (1 << 63);
    u.to_be_bytes()
}

/// Strings end with `00 00`; a `00` inside is written `00 FF`, so prefixes sort first.
fn append_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// The values a document contributes to an index on `path`: one per array element when the
/// path meets an array (a multikey index), `null` when the field is missing.
pub(crate) fn index_values(doc: &Document, path: &str) -> Vec<Bson> {
    let mut found = path_values(doc, path);
    if found.is_empty() {
        found.push(Bson::Null);
    }
    found
}

/// The values found at a dotted `path`, looking into arrays of documents and expanding a
/// final array into its elements; empty when the path does not exist.
pub(crate) fn path_values(doc: &Document, path: &str) -> Vec<Bson> {
    let mut found = Vec::new();
    collect_in_document(doc, path, &mut found);
    found
}

fn split_path(path: &str) -> (&str, Option<&str>) {
    match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    }
}

fn collect_in_document(d: &Document, path: &str, found: &mut Vec<Bson>) {
    let (head, rest) = split_path(path);
    let Some(child) = d.get(head) else {
        return;
    };
    match rest {
        Some(rest) => collect(child, rest, found),
        None => match child {
            Bson::Array(items) => found.extend(items.iter().cloned()),
            other => found.push(other.clone()),
        },
    }
}

fn collect(value: &Bson, path: &str, found: &mut Vec<Bson>) {
    let (head, rest) = split_path(path);
    match value {
        Bson::Document(d) => collect_in_document(d, path, found),
        Bson::Array(items) => {
            if let Some(item) = head.parse::<usize>().ok().and_then(|i| items.get(i)) {
                match rest {
                    Some(rest) => collect(item, rest, found),
                    None => found.push(item.clone()),
                }
            } else {
                for item in items {
                    collect(item, path, found);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId};

    #[test]
    fn equal_numbers_encode_equally() {
        assert_eq!(encode(&Bson::Int32(1)), encode(&Bson::Double(1.0)));
        assert_eq!(encode(&Bson::Int64(1)), encode(&Bson::Int32(1)));
        assert_eq!(encode(&Bson::Double(-0.0)), encode(&Bson::Int32(0)));
        assert_ne!(
            encode(&Bson::Int64(1 << 60)),
            encode(&Bson::Int64((1 << 60) + 1))
        );
    }

    #[test]
    fn byte_order_is_mongodb_order() {
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            Bson::Double(f64::NAN),
            Bson::Double(-1e300),
            Bson::Int32(-5),
            Bson::Double(-0.5),
            Bson::Int32(0),
            Bson::Double(0.5),
            Bson::Int64(1 << 60),
            Bson::Int64((1 << 60) + 1),
            Bson::String(String::new()),
            Bson::String("a".into()),
            Bson::String("a\0".into()),
            Bson::String("ab".into()),
            Bson::Document(doc! {}),
            Bson::Document(doc! { "a": 1 }),
            Bson::Document(doc! { "a": 2 }),
            Bson::Document(doc! { "b": 1 }),
            Bson::Array(vec![]),
            Bson::Array(vec![Bson::Int32(1)]),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::ObjectId(ObjectId::from_bytes([1; 12])),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(bson::DateTime::from_millis(-1)),
            Bson::DateTime(bson::DateTime::from_millis(1)),
            Bson::MaxKey,
        ];
        for pair in ordered.windows(2) {
            assert!(
                encode(&pair[0]) < encode(&pair[1]),
                "{:?} < {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn index_values_expand_arrays_and_default_to_null() {
        let d = doc! { "a": [1, 2], "b": { "c": "x" }, "d": [{ "e": 1 }, { "e": 2 }] };
        assert_eq!(index_values(&d, "a"), vec![Bson::Int32(1), Bson::Int32(2)]);
        assert_eq!(index_values(&d, "b.c"), vec![Bson::String("x".into())]);
        assert_eq!(
            index_values(&d, "d.e"),
            vec![Bson::Int32(1), Bson::Int32(2)]
        );
        assert_eq!(index_values(&d, "missing"), vec![Bson::Null]);
    }
}
