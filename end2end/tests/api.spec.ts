/**
 * (f) The JSON routes, through Playwright's request context: shapes, order, and the 405 of a
 * method other than GET.
 */
import { expect, newUser, test, type DeviceDoc, type UserDoc } from "./fixtures";

const HEX_ID = /^[0-9a-f]{24}$/;

test.describe("JSON API", () => {
  test("GET /api/users lists every user in _id order", async ({ request, db }) => {
    const extra = newUser("api");
    await db.collection<UserDoc>("users").insertOne(extra);
    try {
      const expected = await db.collection<UserDoc>("users").find().sort({ _id: 1 }).toArray();
      expect(expected.length).toBeGreaterThanOrEqual(6);

      const response = await request.get("/api/users");
      expect(response.status()).toBe(200);
      expect(response.headers()["content-type"]).toContain("application/json");
      const body: unknown = await response.json();
      expect(Array.isArray(body)).toBe(true);
      const users = body as Record<string, unknown>[];
      for (const user of users) {
        expect(Object.keys(user).sort()).toEqual(["fname", "id", "lname", "username"]);
        expect(user.id).toMatch(HEX_ID);
        for (const key of ["fname", "lname", "username"]) {
          expect(typeof user[key]).toBe("string");
        }
      }
      expect(users).toEqual(
        expected.map((u) => ({
          id: u._id.toHexString(),
          fname: u.fname,
          lname: u.lname,
          username: u.username,
        })),
      );
    } finally {
      await db.collection<UserDoc>("users").deleteOne({ _id: extra._id });
    }
  });

  test("GET /api/lockDevices lists the lock devices only", async ({ request, db }) => {
    const devices = db.collection<DeviceDoc>("devices");
    const expected = await devices.find({ type: "lock" }).sort({ _id: 1 }).toArray();
    // The seed: 5 devices, 3 of them locks.
    expect(expected.length).toBe(3);
    expect(await devices.countDocuments({ type: { $ne: "lock" } })).toBeGreaterThan(0);

    const response = await request.get("/api/lockDevices");
    expect(response.status()).toBe(200);
    expect(response.headers()["content-type"]).toContain("application/json");
    const body = (await response.json()) as Record<string, unknown>[];
    expect(Array.isArray(body)).toBe(true);
    for (const device of body) {
      expect(Object.keys(device).sort()).toEqual(["id", "locked", "name", "type"]);
      expect(device.id).toMatch(HEX_ID);
      expect(typeof device.name).toBe("string");
      expect(device.type).toBe("lock");
      expect(typeof device.locked).toBe("boolean");
    }
    expect(body).toEqual(
      expected.map((d) => ({
        id: d._id.toHexString(),
        name: d.name,
        type: d.type,
        locked: d.locked,
      })),
    );
  });

  test("POST /api/lockDevices is 405 with Allow: GET and a JSON message", async ({
    request,
  }) => {
    const response = await request.post("/api/lockDevices", { data: { locked: true } });
    expect(response.status()).toBe(405);
    expect(response.headers()["allow"]).toBe("GET");
    expect(response.headers()["content-type"]).toContain("application/json");
    expect(await response.json()).toEqual({ message: "Method not allowed" });

    for (const method of ["PUT", "PATCH", "DELETE"]) {
      const other = await request.fetch("/api/lockDevices", { method });
      expect(other.status(), method).toBe(405);
      expect(other.headers()["allow"], method).toBe("GET");
      expect(await other.json(), method).toEqual({ message: "Method not allowed" });
    }
  });
});
