/**
 * (d) A server restart: the open page shows `reconnecting`, comes back `live` by itself (no
 * reload), and a user inserted after the restart appears. The data survives the restart.
 *
 * This test runs its own server (ports and data dir of its own), so stopping it leaves the other
 * tests' server alone.
 */
import { expect, test } from "@playwright/test";
import { MongoClient } from "mongodb";

import { DB_NAME, newUser, userLine, type UserDoc } from "./fixtures";
import { AppServer } from "./server";

test("the page reconnects by itself after the server restarts", async ({ browser }) => {
  test.setTimeout(180_000);
  const server = await AppServer.start();
  try {
    const context = await browser.newContext({ baseURL: server.baseURL });
    const page = await context.newPage();
    const status = page.getByTestId("live-status");
    const items = page.getByTestId("user-list").getByTestId("user");

    await page.goto("/");
    await expect(status).toHaveAttribute("data-state", "live", { timeout: 20_000 });
    await expect(status).toHaveText("live");
    const before = await items.allTextContents();
    // The seed: 5 users on first start.
    expect(before).toHaveLength(5);
    await page.evaluate(() => {
      (window as unknown as { __e2eMark: number }).__e2eMark = 7;
    });

    await server.stop();
    await expect(status).toHaveAttribute("data-state", "reconnecting", { timeout: 10_000 });
    await expect(status).toHaveText("reconnecting");
    // The list stays on screen while the server is away.
    await expect(items).toHaveText(before);

    await server.launch(); // same ports, same data dir
    await expect(status).toHaveAttribute("data-state", "live", { timeout: 30_000 });
    expect(
      await page.evaluate(() => (window as unknown as { __e2eMark?: number }).__e2eMark),
    ).toBe(7);

    const client = new MongoClient(server.mongoUri, { serverSelectionTimeoutMS: 10_000 });
    try {
      const users = client.db(DB_NAME).collection<UserDoc>("users");
      // Same data dir: the data survived, and the seed did not run again.
      expect(await users.countDocuments()).toBe(5);
      const user = newUser("restart");
      await users.insertOne(user);
      await expect(
        page.locator(`[data-testid=user][data-id="${user._id.toHexString()}"]`),
      ).toHaveText(userLine(user), { timeout: 2_000 });
      await expect(items).toHaveText([...before, userLine(user)]);
      // The stream keeps going after the reconnect: a second change arrives too.
      await users.deleteOne({ _id: user._id });
      await expect(items).toHaveText(before, { timeout: 2_000 });
    } finally {
      await client.close();
    }
    await context.close();
  } finally {
    await server.dispose();
  }
});
