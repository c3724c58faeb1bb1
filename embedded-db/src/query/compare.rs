//! MongoDB's BSON comparison order, value equality, type names and truthiness.

use std::cmp::Ordering;

use bson::{Bson, Document};

use super::num::Num;

/// The canonical type bracket of `b` in MongoDB's sort order: values of
/// different brackets compare by bracket alone. Null and undefined share one
/// bracket, as do all numeric types, and strings with symbols.
pub(crate) fn bracket(b: &Bson) -> u8 {
    match b {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::JavaScriptCodeWithScope(_) => 14,
        Bson::MaxKey => 15,
    }
}

/// Total order of BSON values as MongoDB sorts them (binary string order, no collation).
pub(crate) fn compare(a: &Bson, b: &Bson) -> Ordering {
    let by_bracket = bracket(a).cmp(&bracket(b));
    if by_bracket != Ordering::Equal {
        return by_bracket;
    }
    match (a, b) {
        (Bson::String(_) | Bson::Symbol(_), Bson::String(_) | Bson::Symbol(_)) => {
            text(a).cmp(text(b))
        }
        (Bson::Document(x), Bson::Document(y)) => compare_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = compare(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .cmp(&y.pattern)
            .then_with(|| x.options.cmp(&y.options)),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => x
            .code
            .cmp(&y.code)
            .then_with(|| compare_documents(&x.scope, &y.scope)),
        _ => match (Num::from_bson(a), Num::from_bson(b)) {
            (Some(x), Some(y)) => x.compare(y),
            _ => Ordering::Equal,
        },
    }
}

/// Documents compare field by field: value type bracket, then field name, then
/// value; a document that is a prefix of the other is smaller.
pub(crate) fn compare_documents(x: &Document, y: &Document) -> Ordering {
    for ((ka, va), (kb, vb)) in x.iter().zip(y) {
        let o = bracket(va)
            .cmp(&bracket(vb))
            .then_with(|| ka.cmp(kb))
            .then_with(|| compare(va, vb));
        if o != Ordering::Equal {
            return o;
        }
    }
    x.len().cmp(&y.len())
}

fn text(b: &Bson) -> &str {
    match b {
        Bson::String(s) | Bson::Symbol(s) => s,
        _ => "",
    }
}

/// MongoDB value equality: equal under [`compare`], so `1 == 1.0 == 1i64`;
/// documents are field-order sensitive.
pub(crate) fn values_equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

/// Byte-level identity: same types, same field order, same values (NaN is
/// identical to itself). This is what decides whether an update was a no-op.
pub(crate) fn identical(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => identical_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| identical(p, q))
        }
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// [`identical`] for documents.
pub(crate) fn identical_documents(x: &Document, y: &Document) -> bool {
    x.len() == y.len()
        && x.iter()
            .zip(y)
            .all(|((ka, va), (kb, vb))| ka == kb && identical(va, vb))
}

/// MongoDB's alias for the type of `b` (`"int"`, `"string"`, `"objectId"`, ...).
pub(crate) fn type_name(b: &Bson) -> &'static str {
    match b {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

/// MongoDB's numeric type code of `b` (`$type`): 1 double ... 19 decimal, -1 minKey, 127 maxKey.
pub(crate) fn type_code(b: &Bson) -> i32 {
    match b {
        Bson::MinKey => -1,
        other => i32::from(other.element_type() as u8),
    }
}

/// MongoDB truthiness of an option value: false, null, undefined and zero are false.
pub(crate) fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Null | Bson::Undefined => false,
        other => Num::from_bson(other).is_none_or(|n| !n.is_zero()),
    }
}

/// Aggregation truthiness: missing, null, false and zero are false.
pub(crate) fn is_true(v: Option<&Bson>) -> bool {
    v.is_some_and(truthy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, Binary, Timestamp};

    #[test]
    fn type_order_follows_mongodb() {
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            Bson::Double(f64::NAN),
            Bson::Int32(-5),
            Bson::Double(1.5),
            Bson::Int64(2),
            Bson::String("a".into()),
            Bson::String("b".into()),
            Bson::Document(doc! {}),
            Bson::Array(vec![]),
            Bson::Binary(Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![9],
            }),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(bson::DateTime::from_millis(0)),
            Bson::Timestamp(Timestamp {
                time: 1,
                increment: 0,
            }),
            Bson::RegularExpression(bson::Regex {
                pattern: "a".into(),
                options: String::new(),
            }),
            Bson::MaxKey,
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(&w[0], &w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
        }
        assert_eq!(compare(&Bson::Undefined, &Bson::Null), Ordering::Equal);
    }

    #[test]
    fn numbers_are_equal_across_types() {
        assert!(values_equal(&Bson::Int32(1), &Bson::Double(1.0)));
        assert!(values_equal(&Bson::Int64(1), &Bson::Int32(1)));
        assert!(!identical(&Bson::Int64(1), &Bson::Int32(1)));
        assert!(values_equal(
            &Bson::Double(f64::NAN),
            &Bson::Double(f64::NAN)
        ));
    }

    #[test]
    fn documents_and_arrays_compare_elementwise() {
        let a = Bson::Document(doc! { "a": 1, "b": 2 });
        let b = Bson::Document(doc! { "b": 2, "a": 1 });
        assert!(!values_equal(&a, &b));
        assert_eq!(compare(&a, &b), Ordering::Less);
        assert_eq!(
            compare(
                &Bson::Document(doc! { "a": "x" }),
                &Bson::Document(doc! { "a": 5 })
            ),
            Ordering::Greater
        );
        assert_eq!(
            compare(
                &Bson::Array(vec![1.into()]),
                &Bson::Array(vec![1.into(), 0.into()])
            ),
            Ordering::Less
        );
        let bin = |b: Vec<u8>, s: u8| {
            Bson::Binary(Binary {
                subtype: s.into(),
                bytes: b,
            })
        };
        assert_eq!(
            compare(&bin(vec![9], 0), &bin(vec![1, 1], 0)),
            Ordering::Less
        );
        assert_eq!(compare(&bin(vec![9], 0), &bin(vec![1], 5)), Ordering::Less);
    }

    #[test]
    fn type_names_and_codes() {
        assert_eq!(type_name(&Bson::Int32(1)), "int");
        assert_eq!(type_code(&Bson::Int64(1)), 18);
        assert_eq!(type_code(&Bson::MinKey), -1);
        assert_eq!(type_code(&Bson::MaxKey), 127);
    }
}
