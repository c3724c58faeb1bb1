// Smoke test: the official Node.js MongoDB driver (pinned in package.json) against embedded-db.
//
// Run by `cargo test -p embedded-db --test node_driver`, which starts a server and sets
// EMBEDDED_DB_URI_HOST. By hand, against a running server:
//   npm ci --prefix embedded-db/tests/node
//   EMBEDDED_DB_URI_HOST=127.0.0.1:27017 node --test embedded-db/tests/node/smoke.mjs
//
// Without `serverApi` the driver's first handshake is the legacy OP_QUERY `ismaster`, so the
// `?replicaSet=` connection below exercises that path plus replica-set discovery (the driver
// then dials the hosts the server advertises).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { MongoClient, MongoServerError, ObjectId } from 'mongodb';

const host = process.env.EMBEDDED_DB_URI_HOST;
if (!host) {
  throw new Error('set EMBEDDED_DB_URI_HOST to the server address, e.g. 127.0.0.1:27017');
}
const replicaSet = process.env.EMBEDDED_DB_REPLICA_SET ?? 'rs0';
// A fresh database per run, so a long-lived server can be reused.
const dbName = `node_smoke_${Date.now()}`;
const timeouts = { serverSelectionTimeoutMS: 5000, connectTimeoutMS: 5000 };
const TEST_TIMEOUT = { timeout: 20000 };

/** Replica-set client shared by the CRUD and change-stream tests. */
let client;
let db;
/** The last topology description the replica-set client reported. */
let topology;

before(async () => {
  client = new MongoClient(`mongodb://${host}/?replicaSet=${replicaSet}`, timeouts);
  client.on('topologyDescriptionChanged', (event) => {
    topology = event.newDescription;
  });
  await client.connect();
  db = client.db(dbName);
});

after(async () => {
  await db?.dropDatabase();
  await client?.close();
});

test('replicaSet connection: legacy ismaster handshake and discovery', TEST_TIMEOUT, async () => {
  const hello = await db.admin().command({ hello: 1 });
  assert.equal(hello.ok, 1);
  assert.equal(hello.setName, replicaSet);
  assert.equal(hello.isWritablePrimary, true);
  assert.ok(Array.isArray(hello.hosts) && hello.hosts.length === 1, 'one advertised host');
  assert.equal(topology?.type, 'ReplicaSetWithPrimary');
  assert.equal(topology.setName, replicaSet);
  const primaries = [...topology.servers.values()].filter((s) => s.type === 'RSPrimary');
  assert.deepEqual(
    primaries.map((s) => s.address),
    hello.hosts,
    'the discovered primary is the advertised host',
  );
  assert.equal((await db.command({ ping: 1 })).ok, 1);
});

test('directConnection=true connection', TEST_TIMEOUT, async () => {
  const direct = new MongoClient(`mongodb://${host}/?directConnection=true`, timeouts);
  let type;
  direct.on('topologyDescriptionChanged', (event) => {
    type = event.newDescription.type;
  });
  try {
    await direct.connect();
    assert.equal(type, 'Single');
    const coll = direct.db(dbName).collection('direct');
    const { insertedId } = await coll.insertOne({ via: 'direct' });
    assert.ok(insertedId instanceof ObjectId, 'the driver generates an ObjectId _id');
    // Visible through the other client: same server, same data.
    const seen = await db.collection('direct').findOne({ _id: insertedId });
    assert.deepEqual(seen, { _id: insertedId, via: 'direct' });
  } finally {
    await direct.close();
  }
});

const people = [
  { _id: 1, name: 'ada', age: 36, city: 'London' },
  { _id: 2, name: 'grace', age: 45, city: 'New York' },
  { _id: 3, name: 'alan', age: 41, city: 'London' },
  { _id: 4, name: 'edsger', age: 28, city: 'Austin' },
  { _id: 5, name: 'barbara', age: 52, city: 'Boston' },
];

test('insertOne, insertMany and find with filter/sort/projection/limit', TEST_TIMEOUT, async () => {
  const coll = db.collection('people_find');
  const one = await coll.insertOne({ ...people[0] });
  assert.equal(one.acknowledged, true);
  assert.equal(one.insertedId, 1);
  const many = await coll.insertMany(people.slice(1).map((p) => ({ ...p })));
  assert.equal(many.insertedCount, 4);
  assert.deepEqual(many.insertedIds, { 0: 2, 1: 3, 2: 4, 3: 5 });

  const found = await coll
    .find({ age: { $gte: 30 } })
    .sort({ age: -1 })
    .project({ _id: 0, name: 1, age: 1 })
    .limit(3)
    .toArray();
  assert.deepEqual(found, [
    { name: 'barbara', age: 52 },
    { name: 'grace', age: 45 },
    { name: 'alan', age: 41 },
  ]);
  const london = await coll.find({ city: 'London' }, { sort: { name: 1 } }).toArray();
  assert.deepEqual(london, [people[0], people[2]]);
  assert.deepEqual(await coll.find({ city: 'Paris' }).toArray(), []);

  // More documents than one batch: the cursor must page through getMore.
  const bulk = db.collection('people_bulk');
  await bulk.insertMany(Array.from({ length: 250 }, (_, i) => ({ _id: i, even: i % 2 === 0 })));
  const ids = (await bulk.find({}, { batchSize: 40, sort: { _id: 1 } }).toArray()).map((d) => d._id);
  assert.deepEqual(ids, Array.from({ length: 250 }, (_, i) => i));
  assert.equal((await bulk.find({ even: true }, { batchSize: 7 }).toArray()).length, 125);
});

test('updateOne with $set/$inc, replaceOne, deleteOne', TEST_TIMEOUT, async () => {
  const coll = db.collection('people_write');
  await coll.insertMany(people.map((p) => ({ ...p })));

  const updated = await coll.updateOne({ _id: 1 }, { $set: { city: 'Paris' }, $inc: { age: 2 } });
  assert.equal(updated.matchedCount, 1);
  assert.equal(updated.modifiedCount, 1);
  assert.deepEqual(await coll.findOne({ _id: 1 }), { _id: 1, name: 'ada', age: 38, city: 'Paris' });

  const missed = await coll.updateOne({ _id: 99 }, { $set: { x: 1 } });
  assert.equal(missed.matchedCount, 0);
  assert.equal(missed.modifiedCount, 0);
  const upserted = await coll.updateOne({ _id: 6 }, { $inc: { age: 1 } }, { upsert: true });
  assert.equal(upserted.upsertedId, 6);
  assert.deepEqual(await coll.findOne({ _id: 6 }), { _id: 6, age: 1 });

  const replaced = await coll.replaceOne({ _id: 2 }, { name: 'grace hopper', rank: 'admiral' });
  assert.equal(replaced.matchedCount, 1);
  assert.equal(replaced.modifiedCount, 1);
  assert.deepEqual(await coll.findOne({ _id: 2 }), { _id: 2, name: 'grace hopper', rank: 'admiral' });

  const deleted = await coll.deleteOne({ _id: 3 });
  assert.equal(deleted.deletedCount, 1);
  assert.equal(await coll.findOne({ _id: 3 }), null);
  assert.equal((await coll.deleteOne({ _id: 3 })).deletedCount, 0);
  assert.equal(await coll.countDocuments(), 5);
});

test('countDocuments, estimatedDocumentCount, distinct', TEST_TIMEOUT, async () => {
  const coll = db.collection('people_count');
  await coll.insertMany(people.map((p) => ({ ...p })));
  assert.equal(await coll.countDocuments(), 5);
  assert.equal(await coll.countDocuments({ city: 'London' }), 2);
  assert.equal(await coll.countDocuments({ age: { $gt: 40 } }), 3);
  assert.equal(await coll.countDocuments({}, { skip: 1, limit: 2 }), 2);
  assert.equal(await coll.estimatedDocumentCount(), 5);
  assert.equal(await db.collection('never_written').estimatedDocumentCount(), 0);

  const cities = await coll.distinct('city');
  assert.deepEqual([...cities].sort(), ['Austin', 'Boston', 'London', 'New York']);
  assert.deepEqual(await coll.distinct('name', { city: 'London' }).then((n) => n.sort()), ['ada', 'alan']);
});

test('findOneAndUpdate returns the document before or after', TEST_TIMEOUT, async () => {
  const coll = db.collection('counters');
  await coll.insertOne({ _id: 'orders', seq: 10 });

  const before = await coll.findOneAndUpdate({ _id: 'orders' }, { $inc: { seq: 1 } });
  assert.deepEqual(before, { _id: 'orders', seq: 10 });
  const afterwards = await coll.findOneAndUpdate(
    { _id: 'orders' },
    { $inc: { seq: 1 }, $set: { touched: true } },
    { returnDocument: 'after', projection: { _id: 0, seq: 1 } },
  );
  assert.deepEqual(afterwards, { seq: 12 });
  assert.equal(await coll.findOneAndUpdate({ _id: 'missing' }, { $inc: { seq: 1 } }), null);
  const created = await coll.findOneAndUpdate(
    { _id: 'invoices' },
    { $inc: { seq: 1 } },
    { upsert: true, returnDocument: 'after' },
  );
  assert.deepEqual(created, { _id: 'invoices', seq: 1 });
  assert.deepEqual(await coll.findOne({ _id: 'orders' }), { _id: 'orders', seq: 12, touched: true });
});

test('unique index rejects a duplicate with code 11000', TEST_TIMEOUT, async () => {
  const coll = db.collection('users');
  assert.equal(await coll.createIndex({ email: 1 }, { unique: true }), 'email_1');
  const indexes = await coll.listIndexes().toArray();
  const email = indexes.find((i) => i.name === 'email_1');
  assert.ok(email, `email_1 listed in ${JSON.stringify(indexes)}`);
  assert.deepEqual(email.key, { email: 1 });
  assert.equal(email.unique, true);

  await coll.insertOne({ email: 'ada@example.com' });
  await assert.rejects(coll.insertOne({ email: 'ada@example.com' }), (err) => {
    assert.ok(err instanceof MongoServerError, `expected a server error, got ${err}`);
    assert.equal(err.code, 11000);
    return true;
  });
  // An update that would collide is rejected the same way.
  await coll.insertOne({ email: 'grace@example.com' });
  await assert.rejects(
    coll.updateOne({ email: 'grace@example.com' }, { $set: { email: 'ada@example.com' } }),
    (err) => err instanceof MongoServerError && err.code === 11000,
  );
  assert.equal(await coll.countDocuments({ email: 'ada@example.com' }), 1);
  assert.equal(await coll.countDocuments(), 2);
});

/** Reads the next `n` events from `stream`. */
async function take(stream, n) {
  const events = [];
  while (events.length < n) {
    events.push(await stream.next());
  }
  return events;
}

/** A change stream whose initial aggregate has run, so later writes are in it. */
async function openStream(coll, options = {}) {
  const stream = coll.watch([], { fullDocument: 'updateLookup', maxAwaitTimeMS: 200, ...options });
  // Starting a stream is lazy in the Node driver; tryNext runs the aggregate (and one getMore).
  assert.equal(await stream.tryNext(), null, 'no events before any write');
  return stream;
}

test('change streams: events, close, resumeAfter', TEST_TIMEOUT, async () => {
  const coll = db.collection('events');
  const ns = { db: dbName, coll: 'events' };
  const stream = await openStream(coll);

  // One change at a time, so the update's lookup sees the document before the delete.
  await coll.insertOne({ _id: 'a', v: 1 });
  const inserted = await stream.next();
  assert.equal(inserted.operationType, 'insert');
  assert.deepEqual(inserted.ns, ns);
  assert.deepEqual(inserted.documentKey, { _id: 'a' });
  assert.deepEqual(inserted.fullDocument, { _id: 'a', v: 1 });

  await coll.updateOne({ _id: 'a' }, { $set: { v: 2 } });
  const updated = await stream.next();
  assert.equal(updated.operationType, 'update');
  assert.deepEqual(updated.ns, ns);
  assert.deepEqual(updated.documentKey, { _id: 'a' });
  assert.deepEqual(updated.updateDescription.updatedFields, { v: 2 });
  assert.deepEqual(updated.updateDescription.removedFields, []);
  assert.deepEqual(updated.fullDocument, { _id: 'a', v: 2 }, 'updateLookup returns the current document');

  await coll.deleteOne({ _id: 'a' });
  const deleted = await stream.next();
  assert.equal(deleted.operationType, 'delete');
  assert.deepEqual(deleted.ns, ns);
  assert.deepEqual(deleted.documentKey, { _id: 'a' });
  assert.equal(deleted.fullDocument, undefined);

  const ids = [inserted, updated, deleted].map((e) => e._id._data);
  assert.deepEqual([...ids].sort(), ids, 'resume tokens sort in stream order');
  assert.equal(new Set(ids).size, 3, 'resume tokens are distinct');

  const savedEventId = deleted._id;
  const savedStreamToken = stream.resumeToken;
  assert.ok(savedStreamToken, 'the stream exposes a resume token');
  await stream.close();
  assert.equal(stream.closed, true);

  // Changes nobody is watching.
  await coll.insertOne({ _id: 'b', v: 1 });
  await coll.updateOne({ _id: 'b' }, { $inc: { v: 10 } });
  await coll.insertOne({ _id: 'c', v: 3 });
  await coll.updateOne({ _id: 'c' }, { $unset: { v: '' } });
  await coll.deleteOne({ _id: 'c' });

  for (const token of [savedEventId, savedStreamToken]) {
    const resumed = coll.watch([], { resumeAfter: token, fullDocument: 'updateLookup', maxAwaitTimeMS: 200 });
    try {
      const missed = await take(resumed, 5);
      assert.deepEqual(
        missed.map((e) => [e.operationType, e.documentKey._id]),
        [
          ['insert', 'b'],
          ['update', 'b'],
          ['insert', 'c'],
          ['update', 'c'],
          ['delete', 'c'],
        ],
      );
      assert.deepEqual(missed[0].fullDocument, { _id: 'b', v: 1 });
      assert.deepEqual(missed[1].updateDescription.updatedFields, { v: 11 });
      assert.deepEqual(missed[1].fullDocument, { _id: 'b', v: 11 });
      assert.deepEqual(missed[2].fullDocument, { _id: 'c', v: 3 });
      assert.deepEqual(missed[3].updateDescription.removedFields, ['v']);
      // updateLookup happens at read time: 'c' is gone by then, so mongod sends null.
      assert.equal(missed[3].fullDocument, null);
      assert.equal(await resumed.tryNext(), null, 'nothing beyond the missed changes');
    } finally {
      await resumed.close();
    }
  }
});

test('what mongosh users reach for: explain, pipeline updates, $merge, expanded events', TEST_TIMEOUT, async () => {
  const coll = db.collection('fidelity');
  await coll.insertMany([
    { _id: 1, fname: 'Ada', lname: 'Lovelace' },
    { _id: 2, fname: 'Alan', lname: 'Turing' },
  ]);
  const plan = await coll.find({ _id: 1 }).explain();
  assert.equal(plan.queryPlanner.winningPlan.stage, 'IDHACK');
  const stats = await coll.find({ fname: 'Ada' }).explain('executionStats');
  assert.equal(stats.executionStats.nReturned, 1);

  const updated = await coll.updateOne({ _id: 1 }, [
    { $set: { full: { $concat: ['$fname', ' ', '$lname'] } } },
  ]);
  assert.equal(updated.modifiedCount, 1);
  assert.equal((await coll.findOne({ _id: 1 })).full, 'Ada Lovelace');

  const stream = await openStream(coll, { showExpandedEvents: true });
  try {
    await coll.aggregate([
      { $match: { _id: 2 } },
      { $set: { seen: true } },
      { $merge: { into: 'fidelity' } },
    ]).toArray();
    await coll.createIndex({ lname: 1 });
    const events = await take(stream, 2);
    assert.deepEqual(events.map((e) => e.operationType), ['update', 'createIndexes']);
    assert.deepEqual(events[0].updateDescription.updatedFields, { seen: true });
    assert.deepEqual(events[0].updateDescription.disambiguatedPaths, {});
    assert.ok(events[0].collectionUUID, 'collectionUUID with showExpandedEvents');
    assert.equal(events[1].operationDescription.indexes[0].name, 'lname_1');
  } finally {
    await stream.close();
  }
});
