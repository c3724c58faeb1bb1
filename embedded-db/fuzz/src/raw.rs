//! Byte-level inputs: random bytes, mutated frames (bit flips, truncation, length-field lies,
//! opcode and flag changes, bad section kinds, bogus document-sequence sizes), OP_QUERY variants
//! and huge declared lengths.

use crate::frame::{self, HEADER_LEN, MAX_MESSAGE_LEN, OP_MSG, OP_QUERY};
use crate::raw_bson::{self, field, s};
use crate::rng::Rng;
use crate::values;

/// Length values that sit on the server's checks: below a header, at the limits, negative.
fn interesting_len(rng: &mut Rng, actual: usize) -> i32 {
    let actual = i32::try_from(actual).unwrap_or(i32::MAX);
    *rng.pick(&[
        0,
        -1,
        4,
        15,
        16,
        17,
        20,
        21,
        actual - 1,
        actual + 1,
        actual + 100,
        actual / 2,
        i32::try_from(MAX_MESSAGE_LEN).unwrap_or(i32::MAX),
        i32::try_from(MAX_MESSAGE_LEN + 1).unwrap_or(i32::MAX),
        16 * 1024 * 1024 + 1,
        i32::MAX,
        i32::MIN,
    ])
}

fn put_i32(bytes: &mut [u8], at: usize, v: i32) {
    if let Some(slot) = bytes.get_mut(at..at + 4) {
        slot.copy_from_slice(&v.to_le_bytes());
    }
}

/// Applies 1 to 4 random byte-level mutations to `frame`; half of the time the length field is
/// fixed up afterwards, so the damage reaches the parser instead of the framing check.
pub(crate) fn mutate_frame(
    rng: &mut Rng,
    mut bytes: Vec<u8>,
    log: &mut Vec<&'static str>,
) -> Vec<u8> {
    for _ in 0..rng.range(1, 4) {
        let len = bytes.len();
        match rng.below(14) {
            0 if len > 0 => {
                log.push("bit-flip");
                for _ in 0..rng.range(1, 4) {
                    let i = rng.below(len);
                    bytes[i] ^= 1 << rng.below(8);
                }
            }
            1 if len > 0 => {
                log.push("byte-set");
                let i = rng.below(len);
                bytes[i] = *rng.pick(&[0, 1, 0x7F, 0x80, 0xFF, 2, 0x13]);
            }
            2 if len > 4 => {
                log.push("i32-set");
                let at = rng.below(len - 3);
                let v = interesting_len(rng, len);
                put_i32(&mut bytes, at, v);
            }
            3 => {
                log.push("truncate");
                bytes.truncate(rng.below(len + 1));
            }
            4 => {
                log.push("length-lie");
                let v = interesting_len(rng, len);
                put_i32(&mut bytes, 0, v);
                return bytes;
            }
            5 => {
                log.push("opcode");
                let op = *rng.pick(&[1, 2001, 2002, 2004, 2005, 2010, 2012, 2013, 0, -1, 2014]);
                put_i32(&mut bytes, 12, op);
            }
            6 => {
                log.push("flags");
                let flags = *rng.pick(&[
                    1u32,
                    2,
                    3,
                    4,
                    1 << 15,
                    1 << 16,
                    1 << 17,
                    u32::MAX,
                    0x0001_0002,
                ]);
                put_i32(&mut bytes, 16, i32::from_le_bytes(flags.to_le_bytes()));
            }
            7 if len > 20 => {
                log.push("section-kind");
                bytes[20] = *rng.pick(&[1, 2, 3, 9, 0x80, 0xFF]);
            }
            8 => {
                log.push("bogus-sequence");
                bytes.extend_from_slice(&bogus_sequence(rng));
            }
            9 => {
                log.push("second-kind0");
                bytes.push(0);
                bytes.extend_from_slice(&raw_bson::encode(&values::document(rng, 2)));
            }
            10 => {
                log.push("append-random");
                let n = rng.small(64);
                bytes.extend(rng.bytes(n));
            }
            11 if len > HEADER_LEN + 8 => {
                log.push("duplicate-chunk");
                let start = rng.range(HEADER_LEN, len - 1);
                let end = rng.range(start, len);
                let chunk = bytes[start..end].to_vec();
                let at = rng.range(HEADER_LEN, len);
                bytes.splice(at..at, chunk);
            }
            12 if len > HEADER_LEN + 8 => {
                log.push("delete-chunk");
                let start = rng.range(HEADER_LEN, len - 1);
                let end = rng.range(start, (start + 16).min(len));
                bytes.drain(start..end);
            }
            _ if len > 24 => {
                log.push("doc-length-lie");
                // The kind-0 document's own length (just after the section kind byte).
                let v = interesting_len(rng, len - 21);
                put_i32(&mut bytes, 21, v);
            }
            _ => {}
        }
    }
    if rng.percent(50) {
        frame::fix_len(&mut bytes);
    }
    bytes
}

/// A kind-1 section whose size field lies (0, 3, 4, negative, past the end) or whose identifier
/// is unterminated or not UTF-8.
fn bogus_sequence(rng: &mut Rng) -> Vec<u8> {
    let doc = raw_bson::encode(&vec![field("_id", raw_bson::Val::Int32(1))]);
    let mut out = frame::sequence_section(b"documents", &[doc.clone(), doc]);
    match rng.below(5) {
        0 => {
            let size = *rng.pick(&[0, 3, 4, 5, -1, i32::MAX, 1000]);
            put_i32(&mut out, 1, size);
        }
        1 => {
            // No NUL after the identifier.
            out = vec![1, 14, 0, 0, 0];
            out.extend_from_slice(b"documentsXXXXX");
        }
        2 => {
            let bad = values::invalid_utf8(rng);
            out = frame::sequence_section(&bad, &[]);
        }
        3 => {
            // A document inside the sequence that overruns it.
            let n = out.len();
            put_i32(&mut out, n - 12, 200);
        }
        _ => {
            let size = i32::try_from(out.len() + rng.range(1, 9)).unwrap_or(0);
            put_i32(&mut out, 1, size);
        }
    }
    out
}

/// Random bytes, sometimes behind a plausible header.
pub(crate) fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let n = rng.small(128);
    let mut bytes = rng.bytes(n);
    if rng.percent(50) {
        let op = *rng.pick(&[OP_MSG, OP_QUERY, 1, 2010]);
        bytes = frame::frame(rng.next_u64() as i32, op, &bytes);
    }
    bytes
}

/// An OP_QUERY: odd collection names, skip/return values, `$query` wrapping, selectors,
/// handshake and non-handshake commands.
pub(crate) fn op_query(rng: &mut Rng) -> Vec<u8> {
    let collection: Vec<u8> = match rng.below(8) {
        0..=3 => b"admin.$cmd".to_vec(),
        4 => b"test.$cmd".to_vec(),
        5 => rng
            .pick(&[&b"admin.c"[..], b"", b".$cmd", b"$cmd", b"a.b.c.$cmd"])
            .to_vec(),
        6 => values::invalid_utf8(rng),
        _ => "x".repeat(rng.range(100, 10_000)).into_bytes(),
    };
    let name = *rng.pick(&[
        "isMaster", "ismaster", "hello", "find", "ping", "insert", "$query",
    ]);
    let mut query = vec![field(name, raw_bson::Val::Int32(1))];
    if rng.percent(40) {
        query.push(field("helloOk", raw_bson::Val::Bool(1)));
    }
    if rng.percent(30) {
        query.push(field("client", values::value(rng, 6)));
    }
    if rng.percent(30) {
        query = vec![
            field("$query", raw_bson::Val::Doc(query)),
            field(
                "$readPreference",
                raw_bson::Val::Doc(vec![field("mode", s("primaryPreferred"))]),
            ),
        ];
    }
    if rng.percent(20) {
        values::mutate_doc(rng, &mut query, 2);
    }
    let selector = rng
        .percent(15)
        .then(|| raw_bson::encode(&values::document(rng, 2)));
    let skip_return = (
        *rng.pick(&[0, 0, 1, -1, i32::MAX]),
        *rng.pick(&[-1, -1, 0, 1, i32::MIN, i32::MAX]),
    );
    let flags = *rng.pick(&[0, 4, 0x20, -1]);
    frame::op_query(
        rng.next_u64() as i32,
        flags,
        &collection,
        skip_return,
        &raw_bson::encode(&query),
        selector.as_deref(),
    )
}

/// A frame that declares a huge length: the server must refuse it or wait, never allocate
/// wildly. Only a prefix is sent (the harness then half-closes); rarely, a real 16 MiB+ body.
pub(crate) fn huge(rng: &mut Rng) -> Vec<u8> {
    if rng.one_in(400) {
        // A whole body just over the document limit, as one kind-0 section.
        let big = "x".repeat(16 * 1024 * 1024 + rng.below(1024));
        let body = raw_bson::encode(&vec![
            field("insert", s("c")),
            field(
                "documents",
                raw_bson::Val::Array(vec![raw_bson::Val::Doc(vec![field("s", s(&big))])]),
            ),
            field("$db", s("fuzz")),
        ]);
        return frame::op_msg(1, 0, &body, &[]);
    }
    let mut bytes = frame::ping(1);
    let declared = *rng.pick(&[
        i32::try_from(MAX_MESSAGE_LEN).unwrap_or(i32::MAX),
        i32::try_from(MAX_MESSAGE_LEN - 1).unwrap_or(i32::MAX),
        i32::try_from(MAX_MESSAGE_LEN + 1).unwrap_or(i32::MAX),
        i32::MAX,
        16 * 1024 * 1024 + 17,
    ]);
    put_i32(&mut bytes, 0, declared);
    let n = rng.small(4096);
    bytes.extend(rng.bytes(n));
    bytes
}
