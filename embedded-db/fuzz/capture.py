"""Regenerates the fuzzer's seed corpus (embedded-db/fuzz/corpus/*.bin) from real driver traffic.

Run with

    cargo build --release -p embedded-db
    python3 embedded-db/fuzz/capture.py target/release/embedded-db embedded-db/fuzz/corpus

It starts the binary on a temp dir, puts a recording TCP proxy in front of it, runs a pymongo
workload and (when the Node `mongodb` package is installed under embedded-db/tests/node) a Node
workload through the proxy, and writes every distinct client-to-server frame kind it saw, one raw
frame per file, named `<driver>-<command>[-n].bin`. A few hand-made frames that drivers do not
send on their own (checksum flag, `moreToCome`, OP_QUERY with `$query`) are added as `hand-*.bin`.
Needs pymongo 4 (`make py-deps`) and, for the Node frames, `make node-deps`.
"""

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading

import bson
from pymongo import MongoClient, ReturnDocument

OP_QUERY, OP_MSG = 2004, 2013
# Frames kept per (driver, command): the first few differ (handshake vs. monitoring hello,
# first find vs. a find with options), later ones repeat.
KEEP_PER_COMMAND = 2


class Recorder:
    """Collects client frames per driver label; thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.label = "unknown"
        self.frames = {}

    def add(self, frame):
        name = command_name(frame)
        with self.lock:
            key = (self.label, name)
            kept = self.frames.setdefault(key, [])
            if len(kept) < KEEP_PER_COMMAND and frame not in kept:
                kept.append(frame)


def command_name(frame):
    op = struct.unpack_from("<i", frame, 12)[0]
    try:
        if op == OP_MSG and frame[20] == 0:
            doc = bson.decode(frame[21 : 21 + struct.unpack_from("<i", frame, 21)[0]])
            name = next(iter(doc), "empty")
            stages = doc.get("pipeline") or [{}]
            if name == "aggregate" and "$changeStream" in stages[0]:
                return "aggregate-changeStream"
            return name
        if op == OP_QUERY:
            end = frame.index(b"\0", 20)
            doc = bson.decode(frame[end + 9 :])
            name = next(iter(doc), "empty")
            if name == "$query":
                name = next(iter(doc["$query"]), "empty")
            return f"opquery-{name}"
    except Exception:  # noqa: BLE001 - a frame we cannot name is still kept
        pass
    return f"op{op}"


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            return None
        out += chunk
    return out


def pipe_client(client, upstream, recorder):
    try:
        while True:
            head = read_exact(client, 4)
            if head is None:
                break
            rest = read_exact(client, struct.unpack("<i", head)[0] - 4)
            if rest is None:
                break
            recorder.add(head + rest)
            upstream.sendall(head + rest)
    except OSError:
        pass
    finally:
        for s in (client, upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def pipe_server(upstream, client):
    try:
        while True:
            data = upstream.recv(65536)
            if not data:
                break
            client.sendall(data)
    except OSError:
        pass


def proxy(listener, target, recorder):
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(target)
        threading.Thread(target=pipe_client, args=(client, upstream, recorder), daemon=True).start()
        threading.Thread(target=pipe_server, args=(upstream, client), daemon=True).start()


def pymongo_workload(uri):
    client = MongoClient(uri, serverSelectionTimeoutMS=5000)
    db = client.corpus
    coll = db.users
    coll.drop()
    coll.create_index([("email", 1)], unique=True)
    coll.insert_one({"_id": 1, "email": "a@x", "tags": ["a", "b"], "n": 1})
    coll.insert_many([{"email": f"{i}@x", "n": i, "arr": [{"x": i}]} for i in range(2, 12)])
    list(coll.find({"n": {"$gte": 2}}, {"email": 1, "_id": 0}).sort("n", -1).skip(1).limit(5))
    list(coll.find({"n": {"$in": [1, 2]}}).batch_size(2))
    cursor = coll.find({}).batch_size(2)
    next(cursor)
    cursor.close()
    coll.update_one({"email": "a@x"}, {"$set": {"tags.$[t]": "z"}}, array_filters=[{"t": "a"}])
    coll.update_many({"n": {"$lt": 5}}, {"$inc": {"n": 100}, "$push": {"tags": "p"}})
    coll.replace_one({"_id": 1}, {"email": "a@x", "replaced": True}, upsert=True)
    coll.find_one_and_update({"_id": 1}, {"$set": {"k": 1}}, return_document=ReturnDocument.AFTER)
    coll.find_one_and_delete({"n": 7})
    coll.count_documents({"n": {"$gt": 3}})
    coll.distinct("n", {"n": {"$gt": 3}})
    list(
        coll.aggregate(
            [
                {"$match": {"n": {"$gt": 1}}},
                {"$unwind": "$arr"},
                {"$group": {"_id": "$arr.x", "c": {"$sum": 1}}},
                {"$sort": {"_id": 1}},
                {"$limit": 3},
            ]
        )
    )
    coll.delete_many({"n": {"$gt": 100}})
    with coll.watch(full_document="updateLookup", max_await_time_ms=100) as stream:
        coll.insert_one({"email": "watch@x"})
        stream.try_next()
    db.list_collection_names()
    client.list_database_names()
    db.command("dbStats")
    client.admin.command("buildInfo")
    client.close()


NODE_WORKLOAD = r"""
const { MongoClient } = require('mongodb');
(async () => {
  const client = new MongoClient(process.argv[1], { serverSelectionTimeoutMS: 5000 });
  await client.connect();
  const coll = client.db('corpus').collection('devices');
  await coll.insertMany([{ name: 'door', type: 'lock', locked: false, a: [1, 2, 3] }, { name: 'lamp' }]);
  await coll.find({ type: 'lock' }, { projection: { name: 1 } }).sort({ name: 1 }).limit(2).toArray();
  await coll.updateOne({ name: 'door' }, { $set: { locked: true }, $currentDate: { at: true } });
  await coll.updateOne({ name: 'door' }, { $pull: { a: { $gt: 1 } } });
  await coll.findOneAndUpdate({ name: 'lamp' }, { $set: { on: 1 } }, { upsert: true, returnDocument: 'after' });
  await coll.deleteOne({ name: 'lamp' });
  await coll.countDocuments({});
  await coll.aggregate([{ $project: { name: 1, n: { $size: '$a' } } }, { $count: 'n' }]).toArray();
  const stream = coll.watch([{ $match: { operationType: 'insert' } }], { maxAwaitTimeMS: 100 });
  const next = stream.tryNext();
  await next;
  await stream.close();
  await client.db('corpus').dropDatabase();
  await client.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""


def hand_made(out_dir):
    """Frames drivers do not send by default: checksum flag, moreToCome, OP_QUERY with $query."""

    def frame(request_id, op, body):
        return struct.pack("<iiii", 16 + len(body), request_id, 0, op) + body

    def msg(flags, doc, trailer=b""):
        return frame(1, OP_MSG, struct.pack("<I", flags) + b"\0" + bson.encode(doc) + trailer)

    docs = b"".join(bson.encode({"_id": i, "v": "x" * i}) for i in range(3))
    seq = b"\1" + struct.pack("<i", 4 + len(b"documents\0") + len(docs)) + b"documents\0" + docs
    frames = {
        "hand-checksum-ping": msg(1, {"ping": 1, "$db": "admin"}, b"\1\2\3\4"),
        "hand-more-to-come-insert": msg(2, {"insert": "c", "$db": "fuzz", "documents": [{"a": 1}]}),
        "hand-exhaust-hello": msg(1 << 16, {"hello": 1, "$db": "admin", "maxAwaitTimeMS": 10}),
        "hand-sequence-insert": frame(
            2, OP_MSG, b"\0\0\0\0\0" + bson.encode({"insert": "c", "$db": "fuzz"}) + seq
        ),
        "hand-opquery-wrapped": frame(
            3,
            OP_QUERY,
            struct.pack("<i", 4)
            + b"admin.$cmd\0"
            + struct.pack("<ii", 0, -1)
            + bson.encode({"$query": {"isMaster": 1}, "$readPreference": {"mode": "primary"}}),
        ),
        "hand-getmore-int64": msg(
            0, {"getMore": bson.int64.Int64(1), "collection": "c", "$db": "fuzz", "batchSize": 2}
        ),
        "hand-killcursors": msg(
            0, {"killCursors": "c", "cursors": [bson.int64.Int64(1)], "$db": "fuzz"}
        ),
        "hand-changestream-cluster": msg(
            0,
            {
                "aggregate": 1,
                "pipeline": [{"$changeStream": {"allChangesForCluster": True}}],
                "cursor": {},
                "$db": "admin",
            },
        ),
    }
    for name, data in frames.items():
        with open(os.path.join(out_dir, f"{name}.bin"), "wb") as f:
            f.write(data)


def main():
    binary, out_dir = sys.argv[1], sys.argv[2]
    data_dir = tempfile.mkdtemp(prefix="embedded-db-capture-")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    proxy_port = listener.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--addr", "127.0.0.1:0", "--path", data_dir, "--advertise", f"127.0.0.1:{proxy_port}"],
        stdout=subprocess.PIPE,
        env={**os.environ, "RUST_LOG": "embedded_db=info", "NO_COLOR": "1"},
        text=True,
    )
    try:
        for line in server.stdout:
            if "listening" in line and "addr=" in line:
                host, port = line.split("addr=")[1].split()[0].rsplit(":", 1)
                break
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        recorder = Recorder()
        threading.Thread(target=proxy, args=(listener, (host, int(port)), recorder), daemon=True).start()
        uri = f"mongodb://127.0.0.1:{proxy_port}/?directConnection=true"
        recorder.label = "pymongo"
        pymongo_workload(uri)
        node_dir = os.path.join(os.path.dirname(__file__), "..", "tests", "node")
        if os.path.isdir(os.path.join(node_dir, "node_modules", "mongodb")):
            recorder.label = "node"
            subprocess.run(
                ["node", "-e", NODE_WORKLOAD, uri],
                check=True,
                env={**os.environ, "NODE_PATH": os.path.join(node_dir, "node_modules")},
            )
        os.makedirs(out_dir, exist_ok=True)
        with recorder.lock:
            for (label, name), frames in sorted(recorder.frames.items()):
                for i, data in enumerate(frames):
                    suffix = f"-{i + 1}" if i else ""
                    with open(os.path.join(out_dir, f"{label}-{name}{suffix}.bin"), "wb") as f:
                        f.write(data)
        hand_made(out_dir)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
