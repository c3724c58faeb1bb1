/**
 * (b) (c) (e) The live view: writes made directly in the database show up in open pages within
 * 2 s, without reloading, and the pages log no console errors and throw no page errors.
 */
import type { Page } from "@playwright/test";

import {
  deviceItem,
  expect,
  LIVE_MS,
  newUser,
  openLive,
  test,
  userItem,
  userLine,
  watchErrors,
  type DeviceDoc,
  type UserDoc,
} from "./fixtures";

/** Marks the document so a later check can tell it was not reloaded. */
async function markDocument(page: Page): Promise<void> {
  await page.evaluate(() => {
    (window as unknown as { __e2eMark: number }).__e2eMark = 42;
  });
}

async function expectSameDocument(page: Page): Promise<void> {
  expect(
    await page.evaluate(() => (window as unknown as { __e2eMark?: number }).__e2eMark),
  ).toBe(42);
}

test.describe("live updates", () => {
  test("insert, update and delete of a user reach two open pages within 2 s each", async ({
    page,
    browser,
    baseURL,
    db,
    pageErrors,
  }) => {
    // A second, independent browser context: another visitor.
    const other = await browser.newContext({ baseURL });
    const page2 = await other.newPage();
    watchErrors(page2, pageErrors);
    try {
      const pages = [page, page2];
      await Promise.all(pages.map((p) => openLive(p)));
      await Promise.all(pages.map(markDocument));
      const users = db.collection<UserDoc>("users");
      const user = newUser("live");
      const id = user._id.toHexString();
      await Promise.all(pages.map((p) => expect(userItem(p, id)).toHaveCount(0)));

      await users.insertOne(user);
      await Promise.all(
        pages.map((p) => expect(userItem(p, id)).toHaveText(userLine(user), { timeout: LIVE_MS })),
      );

      const renamed = { ...user, fname: "Kathy", username: `${user.username}_x` };
      await users.updateOne(
        { _id: user._id },
        { $set: { fname: renamed.fname, username: renamed.username } },
      );
      await Promise.all(
        pages.map((p) =>
          expect(userItem(p, id)).toHaveText(userLine(renamed), { timeout: LIVE_MS }),
        ),
      );

      await users.deleteOne({ _id: user._id });
      await Promise.all(
        pages.map((p) => expect(userItem(p, id)).toHaveCount(0, { timeout: LIVE_MS })),
      );

      // The rest of the list is intact and in _id order, and nothing was reloaded.
      const expected = (await users.find().sort({ _id: 1 }).toArray()).map(userLine);
      for (const p of pages) {
        await expect(p.getByTestId("user-list").getByTestId("user")).toHaveText(expected);
        await expect(p.getByTestId("live-status")).toHaveAttribute("data-state", "live");
        await expectSameDocument(p);
      }
      expect(pageErrors).toEqual([]);
    } finally {
      await other.close();
    }
  });

  test("flipping a lock device's locked flag flips it in the page within 2 s", async ({
    page,
    db,
    pageErrors,
  }) => {
    const devices = db.collection<DeviceDoc>("devices");
    const locks = await devices.find({ type: "lock" }).sort({ _id: 1 }).toArray();
    expect(locks.length).toBeGreaterThan(0);
    await openLive(page);
    await markDocument(page);

    // The panel lists exactly the lock devices, each with its state.
    const items = page.getByTestId("device-list").getByTestId("device");
    await expect(items).toHaveCount(locks.length);
    for (const lock of locks) {
      const item = deviceItem(page, lock._id.toHexString());
      await expect(item).toHaveAttribute("data-locked", String(lock.locked));
      await expect(item).toContainText(lock.name);
      await expect(item.getByText(lock.locked ? "locked" : "unlocked", { exact: true })).toBeVisible();
    }

    const device = locks[0];
    const item = deviceItem(page, device._id.toHexString());
    for (const locked of [!device.locked, device.locked]) {
      await devices.updateOne({ _id: device._id }, { $set: { locked } });
      await expect(item).toHaveAttribute("data-locked", String(locked), { timeout: LIVE_MS });
      await expect(item.getByText(locked ? "locked" : "unlocked", { exact: true })).toBeVisible();
      await expect(item).toContainText(device.name);
    }
    await expectSameDocument(page);
    expect(pageErrors).toEqual([]);
  });

  test("a page logs no console errors and no page errors while it loads and updates", async ({
    page,
    db,
    pageErrors,
  }) => {
    const failed: string[] = [];
    page.on("requestfailed", (request) => {
      // The event stream is cut when the page closes; anything else is a real failure.
      if (!request.url().includes("/api/sse")) {
        failed.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`);
      }
    });
    page.on("response", (response) => {
      if (response.status() >= 400) {
        failed.push(`${response.status()} ${response.url()}`);
      }
    });
    await openLive(page);

    const users = db.collection<UserDoc>("users");
    const devices = db.collection<DeviceDoc>("devices");
    const user = newUser("quiet");
    const id = user._id.toHexString();
    await users.insertOne(user);
    await expect(userItem(page, id)).toHaveText(userLine(user), { timeout: LIVE_MS });
    const lock = await devices.findOne({ type: "lock" });
    expect(lock).not.toBeNull();
    await devices.updateOne({ _id: lock!._id }, { $set: { locked: !lock!.locked } });
    await expect(deviceItem(page, lock!._id.toHexString())).toHaveAttribute(
      "data-locked",
      String(!lock!.locked),
      { timeout: LIVE_MS },
    );
    await devices.updateOne({ _id: lock!._id }, { $set: { locked: lock!.locked } });
    await users.deleteOne({ _id: user._id });
    await expect(userItem(page, id)).toHaveCount(0, { timeout: LIVE_MS });
    await expect(deviceItem(page, lock!._id.toHexString())).toHaveAttribute(
      "data-locked",
      String(lock!.locked),
      { timeout: LIVE_MS },
    );
    // A few heartbeats (SSE_HEARTBEAT_MS=1000) pass without the stream erroring.
    await page.waitForTimeout(2_500);
    await expect(page.getByTestId("live-status")).toHaveAttribute("data-state", "live");

    expect(pageErrors).toEqual([]);
    expect(failed).toEqual([]);
  });

  test("a change refetches only the list it names, and a burst costs a few requests", async ({
    page,
    db,
    pageErrors,
  }) => {
    const fetched: string[] = [];
    page.on("request", (request) => {
      const path = new URL(request.url()).pathname;
      if (path.startsWith("/_server/")) {
        fetched.push(path);
      }
    });
    await openLive(page);
    const count = (path: string) => fetched.filter((p) => p === path).length;

    const users = db.collection<UserDoc>("users");
    const user = newUser("named");
    await users.insertOne(user);
    await expect(userItem(page, user._id.toHexString())).toHaveText(userLine(user), {
      timeout: LIVE_MS,
    });
    expect(count("/_server/users")).toBeGreaterThan(0);
    expect(count("/_server/lock_devices")).toBe(0);

    const devices = db.collection<DeviceDoc>("devices");
    const lock = await devices.findOne({ type: "lock" });
    expect(lock).not.toBeNull();
    const usersBefore = count("/_server/users");
    await devices.updateOne({ _id: lock!._id }, { $set: { locked: !lock!.locked } });
    await expect(deviceItem(page, lock!._id.toHexString())).toHaveAttribute(
      "data-locked",
      String(!lock!.locked),
      { timeout: LIVE_MS },
    );
    expect(count("/_server/lock_devices")).toBeGreaterThan(0);
    expect(count("/_server/users")).toBe(usersBefore);
    await devices.updateOne({ _id: lock!._id }, { $set: { locked: lock!.locked } });

    // 30 changes committed at once: one refetch in flight and one queued, not 30.
    const burst = Array.from({ length: 30 }, (_, i) => newUser(`burst${i}`));
    const beforeBurst = count("/_server/users");
    await users.insertMany(burst);
    const last = burst[burst.length - 1];
    await expect(userItem(page, last._id.toHexString())).toHaveText(userLine(last), {
      timeout: LIVE_MS,
    });
    expect(count("/_server/users") - beforeBurst).toBeLessThanOrEqual(5);
    expect(pageErrors).toEqual([]);
  });
});
