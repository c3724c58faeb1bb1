//! Raw bytes on the wire: malformed input closes only the offending
//! connection, and the protocol details drivers rely on hold.

mod common;

use std::time::Duration;

use embedded_db::wire::MAX_NESTING_DEPTH;
use mongodb::bson::{doc, rawdoc, Document, RawArrayBuf, RawDocumentBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_MSG: i32 = 2013;

fn frame(request_id: i32, op_code: i32, body: &[u8]) -> Vec<u8> {
    let len = i32::try_from(16 + body.len()).expect("small");
    let mut out = Vec::new();
    for v in [len, request_id, 0, op_code] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(body);
    out
}

fn op_msg(request_id: i32, flags: u32, command: &Document) -> Vec<u8> {
    let mut body = flags.to_le_bytes().to_vec();
    body.push(0);
    command.to_writer(&mut body).expect("encode");
    frame(request_id, OP_MSG, &body)
}

fn op_query(request_id: i32, collection: &str, query: &Document) -> Vec<u8> {
    let mut body = 0i32.to_le_bytes().to_vec();
    body.extend_from_slice(collection.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i32.to_le_bytes());
    body.extend_from_slice(&(-1i32).to_le_bytes());
    query.to_writer(&mut body).expect("encode");
    frame(request_id, OP_QUERY, &body)
}

/// Reads one reply: (responseTo, opCode, document).
async fn read_reply(stream: &mut TcpStream) -> (i32, i32, Document) {
    let mut header = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header))
        .await
        .expect("reply in time")
        .expect("header");
    let field = |i: usize| i32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    let mut body = vec![0u8; usize::try_from(field(0)).expect("length") - 16];
    stream.read_exact(&mut body).await.expect("body");
    let doc_at = if field(12) == OP_REPLY { 20 } else { 5 };
    let doc = Document::from_reader(&body[doc_at..]).expect("reply document");
    (field(8), field(12), doc)
}

/// After a bad frame the server closes that connection (EOF), and only that one.
async fn assert_closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
        .await
        .expect("server reacts in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "connection closed, got {read:?}"
    );
}

async fn still_serves(server: &common::TestServer) {
    let reply = server
        .db()
        .run_command(doc! { "ping": 1 })
        .await
        .expect("server still serves");
    assert_eq!(reply.get_f64("ok"), Ok(1.0));
}

/// Garbage, an unknown opcode, an oversized length and a truncated frame each close their own
/// connection; the server keeps serving others.
#[tokio::test]
async fn malformed_bytes_close_only_that_connection() {
    let server = common::start().await;
    let addr = server.server.local_addr();
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        frame(1, 2010, &[0; 8]),
        i32::MAX.to_le_bytes().to_vec(),
        frame(1, OP_MSG, &[0, 0, 0, 0, 0, 200, 0, 0, 0, 1, 2]),
        frame(1, OP_MSG, &[0, 0, 0, 0, 7]),
    ];
    for bytes in cases {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(&bytes).await.expect("send");
        assert_closed(&mut stream).await;
        still_serves(&server).await;
    }
    // A frame cut short by the client closing its side.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let ping = op_msg(1, 0, &doc! { "ping": 1, "$db": "admin" });
    stream
        .write_all(&ping[..ping.len() / 2])
        .await
        .expect("send half");
    drop(stream);
    still_serves(&server).await;
}

/// Replies name the request in `responseTo`; `moreToCome` requests get no reply at all.
#[tokio::test]
async fn replies_follow_op_msg_rules() {
    let server = common::start().await;
    let mut stream = TcpStream::connect(server.server.local_addr())
        .await
        .expect("connect");
    let insert = doc! { "insert": "quiet", "documents": [{ "_id": 1 }], "$db": "test" };
    stream
        .write_all(&op_msg(10, 1 << 1, &insert))
        .await
        .expect("send w:0 insert");
    stream
        .write_all(&op_msg(11, 0, &doc! { "ping": 1, "$db": "admin" }))
        .await
        .expect("send ping");
    let (response_to, op_code, reply) = read_reply(&mut stream).await;
    assert_eq!(
        (response_to, op_code),
        (11, OP_MSG),
        "the first reply answers the ping"
    );
    assert_eq!(reply.get_f64("ok"), Ok(1.0));
    let found = server
        .db()
        .collection::<Document>("quiet")
        .find_one(doc! {})
        .await
        .expect("find");
    assert_eq!(
        found,
        Some(doc! { "_id": 1 }),
        "the unacknowledged insert was applied"
    );

    stream
        .write_all(&op_msg(12, 0, &doc! { "ping": 1 }))
        .await
        .expect("send");
    let (_, _, reply) = read_reply(&mut stream).await;
    assert_eq!(
        reply.get_i32("code"),
        Ok(9),
        "OP_MSG without $db is an error document"
    );
}

/// The legacy OP_QUERY handshake is answered with OP_REPLY; other OP_QUERY commands get 352.
#[tokio::test]
async fn op_query_handshake_only() {
    let server = common::start().await;
    let mut stream = TcpStream::connect(server.server.local_addr())
        .await
        .expect("connect");
    stream
        .write_all(&op_query(
            7,
            "admin.$cmd",
            &doc! { "ismaster": 1, "helloOk": true },
        ))
        .await
        .expect("send");
    let (response_to, op_code, reply) = read_reply(&mut stream).await;
    assert_eq!((response_to, op_code), (7, OP_REPLY));
    assert_eq!(reply.get_bool("ismaster"), Ok(true));
    assert_eq!(reply.get_bool("helloOk"), Ok(true));
    stream
        .write_all(&op_query(8, "test.$cmd", &doc! { "find": "c" }))
        .await
        .expect("send");
    let (_, op_code, reply) = read_reply(&mut stream).await;
    assert_eq!(op_code, OP_REPLY);
    assert_eq!(reply.get_i32("code"), Ok(352));
}

/// A document over 16 MiB is refused with an error reply, not a dropped connection.
#[tokio::test]
async fn oversized_document_is_an_error() {
    let server = common::start().await;
    let big = "x".repeat(16 * 1024 * 1024 + 1);
    let mut stream = TcpStream::connect(server.server.local_addr())
        .await
        .expect("connect");
    let mut body = 0u32.to_le_bytes().to_vec();
    body.push(0);
    doc! { "insert": "big", "$db": "test" }
        .to_writer(&mut body)
        .expect("encode");
    let mut docs = Vec::new();
    doc! { "_id": 1, "s": big }
        .to_writer(&mut docs)
        .expect("encode");
    body.push(1);
    let size = i32::try_from(4 + "documents".len() + 1 + docs.len()).expect("size");
    body.extend_from_slice(&size.to_le_bytes());
    body.extend_from_slice(b"documents\0");
    body.extend_from_slice(&docs);
    stream
        .write_all(&frame(3, OP_MSG, &body))
        .await
        .expect("send");
    let (_, _, reply) = read_reply(&mut stream).await;
    let errors = reply.get_array("writeErrors").expect("write error");
    let first = errors[0].as_document().expect("document");
    assert_eq!(first.get_i32("code"), Ok(10334));
    still_serves(&server).await;
}

/// The bytes of `{a: {a: … {leaf: 1}}}` nested `depth` levels deep, built without recursion:
/// this test thread has a 2 MiB stack, which decoding or encoding such a document
/// recursively in a debug build would overflow.
fn nested_bytes(depth: usize) -> RawDocumentBuf {
    let mut doc = Vec::new();
    doc! { "leaf": 1 }.to_writer(&mut doc).expect("encode");
    for _ in 1..depth {
        let len = i32::try_from(4 + 3 + doc.len() + 1).expect("small");
        let mut outer = len.to_le_bytes().to_vec();
        outer.extend_from_slice(&[0x03, b'a', 0]);
        outer.extend_from_slice(&doc);
        outer.push(0);
        doc = outer;
    }
    RawDocumentBuf::from_bytes(doc).expect("a document")
}

/// An OP_MSG request whose body is raw bytes (nothing decoded or encoded recursively here).
fn raw_op_msg(request_id: i32, body: &RawDocumentBuf) -> Vec<u8> {
    let mut bytes = 0u32.to_le_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(body.as_bytes());
    frame(request_id, OP_MSG, &bytes)
}

/// Reads one OP_MSG reply without decoding it (its documents may nest deeper than this
/// thread's stack allows).
async fn read_raw_reply(stream: &mut TcpStream) -> RawDocumentBuf {
    let mut header = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header))
        .await
        .expect("reply in time")
        .expect("header");
    let len = i32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let mut body = vec![0u8; usize::try_from(len).expect("length") - 16];
    stream.read_exact(&mut body).await.expect("body");
    RawDocumentBuf::from_bytes(body[5..].to_vec()).expect("reply document")
}

/// A command nested 150 levels deep is parsed, run and answered: the server decodes client data
/// on its own threads, whose stacks are sized for `MAX_NESTING_DEPTH`, not on the caller's.
#[tokio::test]
async fn deep_command_is_parsed() {
    let server = common::start().await;
    let mut stream = TcpStream::connect(server.server.local_addr())
        .await
        .expect("connect");
    // The body is level 1, so the nested value adds 149 more.
    let mut ping = RawDocumentBuf::new();
    ping.append("ping", 1);
    ping.append("$db", "admin");
    ping.append("deep", nested_bytes(149));
    stream.write_all(&raw_op_msg(1, &ping)).await.expect("send");
    let reply = read_raw_reply(&mut stream).await;
    assert_eq!(reply.get_f64("ok").expect("ok"), 1.0);
}

/// A document at the stored nesting limit (100 levels) is stored, found and returned byte for
/// byte; one at the message limit (200 with the command) is parsed and refused with 15; one
/// level more closes the connection (a hostile depth would otherwise exhaust the stack).
#[tokio::test]
async fn nesting_depth_is_bounded() {
    let server = common::start().await;
    let mut stream = TcpStream::connect(server.server.local_addr())
        .await
        .expect("connect");
    // The document (1) > `a` (2 … 100): the deepest document that may be stored.
    let mut deep = RawDocumentBuf::new();
    deep.append("_id", 1);
    deep.append("a", nested_bytes(99));
    let mut documents = RawArrayBuf::new();
    documents.push(deep.clone());
    let mut insert = RawDocumentBuf::new();
    insert.append("insert", "deep");
    insert.append("documents", documents);
    insert.append("$db", "test");
    stream
        .write_all(&raw_op_msg(1, &insert))
        .await
        .expect("send insert");
    let reply = read_raw_reply(&mut stream).await;
    let n = reply
        .get("n")
        .expect("valid reply")
        .and_then(|n| n.as_i64().or_else(|| n.as_i32().map(i64::from)));
    assert_eq!(n, Some(1), "inserted at the limit");

    let mut find = RawDocumentBuf::new();
    find.append("find", "deep");
    find.append("filter", rawdoc! { "_id": 1 });
    find.append("$db", "test");
    stream
        .write_all(&raw_op_msg(2, &find))
        .await
        .expect("send find");
    let reply = read_raw_reply(&mut stream).await;
    let found = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .expect("a cursor")
        .into_iter()
        .next()
        .expect("one document")
        .expect("valid")
        .as_document()
        .expect("a document")
        .to_raw_document_buf();
    assert_eq!(found.as_bytes(), deep.as_bytes(), "returned as stored");

    // insert command (1) > documents array (2) > the document (3 … 200): parsed, not stored.
    let mut at_wire_limit = RawDocumentBuf::new();
    at_wire_limit.append("insert", "deep");
    let mut documents = RawArrayBuf::new();
    documents.push(nested_bytes(MAX_NESTING_DEPTH - 2));
    at_wire_limit.append("documents", documents);
    at_wire_limit.append("$db", "test");
    stream
        .write_all(&raw_op_msg(3, &at_wire_limit))
        .await
        .expect("send");
    let reply = read_raw_reply(&mut stream).await;
    let code = reply
        .get_array("writeErrors")
        .ok()
        .and_then(|e| e.into_iter().next())
        .and_then(Result::ok)
        .and_then(|e| e.as_document())
        .and_then(|e| e.get_i32("code").ok());
    assert_eq!(code, Some(15), "deeper than 100 levels is not stored");

    let mut too_deep = RawDocumentBuf::new();
    too_deep.append("insert", "deep");
    let mut documents = RawArrayBuf::new();
    documents.push(nested_bytes(MAX_NESTING_DEPTH - 1));
    too_deep.append("documents", documents);
    too_deep.append("$db", "test");
    stream
        .write_all(&raw_op_msg(4, &too_deep))
        .await
        .expect("send");
    assert_closed(&mut stream).await;
    still_serves(&server).await;
}

/// An OP_MSG `{serverStatus: 1}` over `stream`, returning its `connections` document.
async fn raw_connections(stream: &mut TcpStream, request_id: i32) -> Document {
    stream
        .write_all(&op_msg(
            request_id,
            0,
            &doc! { "serverStatus": 1, "$db": "admin" },
        ))
        .await
        .expect("send serverStatus");
    let (_, _, reply) = read_reply(stream).await;
    reply
        .get_document("connections")
        .expect("connections")
        .clone()
}

/// A connection that answers a ping (so the server has taken it on).
async fn served(addr: std::net::SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    common::raw_command(&mut stream, 1, doc! { "ping": 1 }).await?;
    Some(stream)
}

/// At the connection limit the next connection is accepted and closed at once (EOF), as by
/// `mongod`; once a connection ends, a new one is served again, and `serverStatus` counts it all.
#[tokio::test]
async fn connection_limit_closes_extra_connections() {
    let (server, _dir) = common::start_bare(|c| c.max_connections = 2).await;
    let addr = server.local_addr();
    let mut first = served(addr).await.expect("first is served");
    let second = served(addr).await.expect("second is served");

    let mut third = TcpStream::connect(addr).await.expect("the kernel accepts");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte))
        .await
        .expect("the server closes it in time");
    assert_eq!(read.expect("an orderly close"), 0, "EOF for the third");

    let connections = raw_connections(&mut first, 2).await;
    assert_eq!(connections.get_i64("current"), Ok(2));
    assert_eq!(connections.get_i64("available"), Ok(0));
    assert_eq!(connections.get_i64("totalCreated"), Ok(2));
    assert_eq!(connections.get_i64("rejected"), Ok(1));

    // The server frees the slot when it sees the close; until then a newcomer is refused.
    drop(second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut refused = 1;
    let mut newcomer = loop {
        if let Some(stream) = served(addr).await {
            break stream;
        }
        refused += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed connection frees its slot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let connections = raw_connections(&mut newcomer, 2).await;
    assert_eq!(connections.get_i64("current"), Ok(2));
    assert_eq!(connections.get_i64("totalCreated"), Ok(3));
    assert_eq!(connections.get_i64("rejected"), Ok(refused));
    drop((first, newcomer));
    server.shutdown().await;
}

/// A message still incomplete after the frame timeout closes its connection; a connection
/// idle for longer than that, having sent nothing, stays open and is served afterwards.
#[tokio::test]
async fn frame_timeout_cuts_partial_messages_only() {
    const FRAME_TIMEOUT: Duration = Duration::from_millis(300);
    let server = common::start_with(|c| c.frame_timeout = FRAME_TIMEOUT).await;
    let addr = server.server.local_addr();
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let idle_since = tokio::time::Instant::now();

    let mut partial = TcpStream::connect(addr).await.expect("connect");
    let mut bytes = frame(1, OP_MSG, &[]);
    bytes[..4].copy_from_slice(&1_000_000i32.to_le_bytes());
    bytes.extend_from_slice(&[0; 10]);
    let sent = tokio::time::Instant::now();
    partial
        .write_all(&bytes)
        .await
        .expect("send a partial frame");
    assert_closed(&mut partial).await;
    assert!(
        sent.elapsed() >= FRAME_TIMEOUT,
        "closed only once the frame timeout passed"
    );

    assert!(idle_since.elapsed() >= FRAME_TIMEOUT);
    idle.write_all(&op_msg(2, 0, &doc! { "ping": 1, "$db": "admin" }))
        .await
        .expect("send ping");
    let (response_to, _, reply) = read_reply(&mut idle).await;
    assert_eq!((response_to, reply.get_f64("ok")), (2, Ok(1.0)));
}

/// Dropping a server without `shutdown`, inside an async context, does not panic (its runtime
/// is not dropped here) and stops it: open connections are cut.
#[tokio::test]
async fn dropping_a_server_stops_it() {
    let common::TestServer {
        server,
        dir: _dir,
        client,
    } = common::start().await;
    client.shutdown().await;
    let mut stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    stream
        .write_all(&op_msg(1, 0, &doc! { "ping": 1, "$db": "admin" }))
        .await
        .expect("send");
    let (_, _, reply) = read_reply(&mut stream).await;
    assert_eq!(reply.get_f64("ok"), Ok(1.0));

    drop(server);
    assert_closed(&mut stream).await;
}
