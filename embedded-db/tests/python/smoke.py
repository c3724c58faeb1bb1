"""pymongo against embedded-db: connection strings, CRUD, a unique index, change streams.

Run by `cargo test -p embedded-db --test drivers` with EMBEDDED_DB_URI_HOST=host:port.
"""

import os
import unittest

from pymongo import MongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

HOST = os.environ["EMBEDDED_DB_URI_HOST"]
REPLICA_SET = os.environ.get("EMBEDDED_DB_REPLICA_SET", "rs0")


class Smoke(unittest.TestCase):
    def client(self, query):
        client = MongoClient(f"mongodb://{HOST}/?{query}", serverSelectionTimeoutMS=5000)
        self.addCleanup(client.close)
        return client

    def test_replica_set_discovery_and_direct(self):
        rs = self.client(f"replicaSet={REPLICA_SET}")
        self.assertEqual(rs.admin.command("ping")["ok"], 1.0)
        self.assertEqual(rs.topology_description.topology_type_name, "ReplicaSetWithPrimary")
        direct = self.client("directConnection=true")
        self.assertTrue(direct.server_info()["version"].startswith("7.0."))

    def test_crud_and_unique_index(self):
        coll = self.client("directConnection=true").py.crud
        coll.drop()
        coll.create_index("email", unique=True)
        coll.insert_many([{"email": "a@x", "n": 1}, {"email": "b@x", "n": 2}])
        with self.assertRaises(DuplicateKeyError):
            coll.insert_one({"email": "a@x"})
        self.assertEqual(
            [d["email"] for d in coll.find({"n": {"$gt": 0}}).sort("n", -1)], ["b@x", "a@x"]
        )
        coll.update_one({"email": "a@x"}, {"$inc": {"n": 10}})
        updated = coll.find_one_and_update(
            {"email": "b@x"}, {"$set": {"n": 5}}, return_document=ReturnDocument.AFTER
        )
        self.assertEqual(updated["n"], 5)
        self.assertEqual(coll.count_documents({"n": {"$gte": 5}}), 2)
        self.assertEqual(coll.estimated_document_count(), 2)
        self.assertEqual(sorted(coll.distinct("email")), ["a@x", "b@x"])
        self.assertEqual(coll.delete_many({}).deleted_count, 2)
        with self.assertRaises(OperationFailure) as raised:
            coll.database.command("noSuchCommand")
        self.assertEqual(raised.exception.code, 59)

    def test_watch_and_resume(self):
        coll = self.client("directConnection=true").py.stream
        coll.drop()
        with coll.watch(full_document="updateLookup") as stream:
            coll.insert_one({"_id": 1, "v": 1})
            coll.update_one({"_id": 1}, {"$set": {"v": 2}})
            inserted, updated = stream.next(), stream.next()
            self.assertEqual(inserted["operationType"], "insert")
            self.assertEqual(updated["updateDescription"]["updatedFields"], {"v": 2})
            self.assertEqual(updated["fullDocument"], {"_id": 1, "v": 2})
            token = stream.resume_token
        coll.delete_one({"_id": 1})
        coll.insert_one({"_id": 2})
        with coll.watch(resume_after=token) as stream:
            missed = [stream.next()["operationType"], stream.next()["operationType"]]
        self.assertEqual(missed, ["delete", "insert"])


if __name__ == "__main__":
    unittest.main()
