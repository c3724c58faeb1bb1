/**
 * Shared fixtures: one server per worker (fresh embedded database, seeded on start), a Node
 * `mongodb` handle on its database, `baseURL` pointing at it, and a collector of the console
 * errors and page errors of every page the test opens.
 */
import {
  test as base,
  expect,
  type BrowserContext,
  type Locator,
  type Page,
} from "@playwright/test";
import { MongoClient, ObjectId, type Db } from "mongodb";

import { AppServer } from "./server";

export { expect };

/** The database the server uses (`MONGO_DB` default). */
export const DB_NAME = "realtime";

export interface UserDoc {
  _id: ObjectId;
  fname: string;
  lname: string;
  username: string;
}

export interface DeviceDoc {
  _id: ObjectId;
  name: string;
  type: string;
  locked: boolean;
}

/** How a user reads in the page and in the server-rendered HTML. */
export const userLine = (u: Pick<UserDoc, "fname" | "lname" | "username">) =>
  `${u.fname} ${u.lname} - ${u.username}`;

/** A new user with names no other test uses. */
export function newUser(tag: string): UserDoc {
  const suffix = `${tag}${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  return {
    _id: new ObjectId(),
    fname: "Katherine",
    lname: `Johnson${suffix}`,
    username: `kjohnson_${suffix}`,
  };
}

/** The deadline for a change to reach an open page. */
export const LIVE_MS = 2_000;

/** The line of user `id` in the users list (`fname lname - username`). */
export const userItem = (page: Page, id: string): Locator =>
  page.locator(`[data-testid=user-list] [data-testid=user][data-id="${id}"]`);

/** The row of lock device `id` in the devices list. */
export const deviceItem = (page: Page, id: string): Locator =>
  page.locator(`[data-testid=device-list] li[data-testid=device][data-id="${id}"]`);

/** Records `console.error` messages and uncaught page errors of a page. */
export function watchErrors(page: Page, errors: string[]): void {
  page.on("console", (message) => {
    if (message.type() === "error") {
      const { url, lineNumber } = message.location();
      errors.push(`console.error: ${message.text()} (${url}:${lineNumber})`);
    }
  });
  page.on("pageerror", (error) => {
    errors.push(`pageerror: ${error.name}: ${error.message}`);
  });
}

/** Records the errors of every page of `context`, present and future. */
export function watchContext(context: BrowserContext, errors: string[]): void {
  for (const page of context.pages()) {
    watchErrors(page, errors);
  }
  context.on("page", (page) => watchErrors(page, errors));
}

/** Opens `url` (default `/`) and waits until it is hydrated and its event stream is open. */
export async function openLive(page: Page, url = "/"): Promise<void> {
  await page.goto(url);
  await expect(page.getByTestId("live-status")).toHaveAttribute("data-state", "live", {
    timeout: 20_000,
  });
}

type TestFixtures = {
  /** Console errors and page errors of the test's pages (the default context's). */
  pageErrors: string[];
};

type WorkerFixtures = {
  server: AppServer;
  db: Db;
};

export const test = base.extend<TestFixtures, WorkerFixtures>({
  server: [
    // eslint-disable-next-line no-empty-pattern
    async ({}, use) => {
      const server = await AppServer.start();
      await use(server);
      await server.dispose();
    },
    { scope: "worker", timeout: 120_000 },
  ],
  db: [
    async ({ server }, use) => {
      const client = new MongoClient(server.mongoUri, { serverSelectionTimeoutMS: 10_000 });
      await client.connect();
      await use(client.db(DB_NAME));
      await client.close();
    },
    { scope: "worker" },
  ],
  baseURL: async ({ server }, use) => {
    await use(server.baseURL);
  },
  pageErrors: async ({ context }, use) => {
    const errors: string[] = [];
    watchContext(context, errors);
    await use(errors);
  },
});
